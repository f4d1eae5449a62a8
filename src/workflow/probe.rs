//! Reading an input image's header far enough to know its format and its size in pixels, without
//! decoding it. This is what lets a submit refuse random bytes behind a PNG signature (422) and a
//! decompression bomb, a small file that claims 100000 x 100000 pixels (413), before a backend
//! spends gigabytes decoding it.
//!
//! Per format: PNG, the signature then the IHDR chunk with its CRC; JPEG, the markers up to the first
//! start-of-frame; WebP, the RIFF header then its VP8, VP8L or VP8X chunk; GIF, the logical screen
//! descriptor. Everything after the header is left to ComfyUI.

/// What an image's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// Format as a file extension: "png", "jpg", "webp" or "gif".
    pub ext: &'static str,
    /// Width in pixels (at least 1).
    pub width: u32,
    /// Height in pixels (at least 1).
    pub height: u32,
}

/// Why bytes are not an image comfyd accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// No known signature.
    #[error("not a PNG, JPEG, WEBP or GIF image")]
    UnknownFormat,
    /// A known signature, then a header that does not hold.
    #[error("not a valid {format} image: {reason}")]
    Invalid {
        /// "PNG", "JPEG", "WEBP" or "GIF".
        format: &'static str,
        /// What is wrong with the header.
        reason: &'static str,
    },
}

/// The largest image accepted at submit (config section `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Longest side, in pixels.
    pub max_side: u32,
    /// Most pixels (width x height).
    pub max_pixels: u64,
}

impl ImageInfo {
    /// Why the image is larger than `limits` allow, if it is (the reason for a 413).
    pub fn too_large(&self, limits: &ImageLimits) -> Option<String> {
        let pixels = u64::from(self.width) * u64::from(self.height);
        (self.width > limits.max_side || self.height > limits.max_side || pixels > limits.max_pixels)
            .then(|| {
                format!(
                    "the image is {} x {} pixels; the limit is {} pixels a side and {} pixels in all",
                    self.width, self.height, limits.max_side, limits.max_pixels
                )
            })
    }
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Reads one format's header: its (width, height), or what is wrong.
type HeaderReader = fn(&[u8]) -> Result<(u32, u32), &'static str>;

/// The format and dimensions of `bytes`, read from its header only.
pub fn probe(bytes: &[u8]) -> Result<ImageInfo, ProbeError> {
    let (ext, format, header): (_, _, HeaderReader) = if bytes.starts_with(PNG_SIGNATURE) {
        ("png", "PNG", png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        ("jpg", "JPEG", jpeg)
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        ("gif", "GIF", gif)
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        ("webp", "WEBP", webp)
    } else {
        return Err(ProbeError::UnknownFormat);
    };
    let (width, height) = header(bytes).map_err(|reason| ProbeError::Invalid { format, reason })?;
    if width == 0 || height == 0 {
        return Err(ProbeError::Invalid {
            format,
            reason: "its width or height is zero",
        });
    }
    Ok(ImageInfo { ext, width, height })
}

fn be16(b: &[u8]) -> u32 {
    u32::from(b[0]) << 8 | u32::from(b[1])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn le16(b: &[u8]) -> u32 {
    u32::from(b[0]) | u32::from(b[1]) << 8
}

fn le24(b: &[u8]) -> u32 {
    u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// PNG: the first chunk must be a 13-byte IHDR whose CRC matches (random bytes after a signature
/// fail here), with a bit depth and colour type the specification allows.
fn png(b: &[u8]) -> Result<(u32, u32), &'static str> {
    // Signature (8), chunk length (4), "IHDR" (4), its 13 bytes, CRC (4).
    let ihdr = b.get(8..33).ok_or("too short to hold an IHDR chunk")?;
    if be32(&ihdr[0..4]) != 13 || &ihdr[4..8] != b"IHDR" {
        return Err("the first chunk is not a 13-byte IHDR");
    }
    if crc32fast::hash(&ihdr[4..21]) != be32(&ihdr[21..25]) {
        return Err("the IHDR chunk's CRC does not match");
    }
    let (width, height) = (be32(&ihdr[8..12]), be32(&ihdr[12..16]));
    // The specification caps both at 2^31 - 1.
    if width > i32::MAX as u32 || height > i32::MAX as u32 {
        return Err("its width or height is above 2^31 - 1");
    }
    let (depth, color) = (ihdr[16], ihdr[17]);
    let depth_ok = match color {
        0 => matches!(depth, 1 | 2 | 4 | 8 | 16),
        3 => matches!(depth, 1 | 2 | 4 | 8),
        2 | 4 | 6 => matches!(depth, 8 | 16),
        _ => false,
    };
    if !depth_ok {
        return Err("its colour type and bit depth are not a valid pair");
    }
    if ihdr[18] != 0 || ihdr[19] != 0 || ihdr[20] > 1 {
        return Err("unknown compression, filter or interlace method");
    }
    Ok((width, height))
}

/// JPEG: the segments after SOI are walked (each one's length skips it) until a start-of-frame
/// marker, which holds the dimensions; a scan or the end before it is an error.
fn jpeg(b: &[u8]) -> Result<(u32, u32), &'static str> {
    const CUT_SHORT: &str = "it ends before its frame header";
    let mut i = 2;
    loop {
        if *b.get(i).ok_or(CUT_SHORT)? != 0xFF {
            return Err("a segment does not start with a marker");
        }
        // Any number of 0xFF fill bytes may precede a marker.
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let marker = *b.get(i).ok_or(CUT_SHORT)?;
        i += 1;
        match marker {
            // Markers without a length: TEM, RST0..7.
            0x01 | 0xD0..=0xD7 => continue,
            0xDA => return Err("its scan starts before a frame header"),
            0xD9 => return Err(CUT_SHORT),
            0x00 | 0xD8 => return Err("a segment does not start with a marker"),
            _ => {}
        }
        let len = be16(b.get(i..i + 2).ok_or(CUT_SHORT)?) as usize;
        if len < 2 {
            return Err("a segment's length is below 2");
        }
        // SOF0..15, except DHT (C4), JPG (C8) and DAC (CC), which share the range.
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let frame = b.get(i + 2..i + len).ok_or(CUT_SHORT)?;
            if frame.len() < 6 || frame.len() != 6 + 3 * usize::from(frame[5]) || frame[5] == 0 {
                return Err("its frame header has a wrong length");
            }
            // A height of 0 defers it to a DNL marker after the first scan; no encoder in use
            // writes that, and without it the size is unknown, so it is refused.
            return Ok((be16(&frame[3..5]), be16(&frame[1..3])));
        }
        i += len;
    }
}

/// GIF: the logical screen descriptor right after the 6-byte signature.
fn gif(b: &[u8]) -> Result<(u32, u32), &'static str> {
    let lsd = b
        .get(6..13)
        .ok_or("too short to hold its screen descriptor")?;
    Ok((le16(&lsd[0..2]), le16(&lsd[2..4])))
}

/// WebP: a RIFF size that fits the data, then the first chunk: VP8 (lossy, a key frame's start code
/// and 14-bit sizes), VP8L (lossless, signature 0x2F and 14-bit sizes minus one) or VP8X (extended,
/// 24-bit canvas sizes minus one).
fn webp(b: &[u8]) -> Result<(u32, u32), &'static str> {
    const CUT_SHORT: &str = "it ends inside its first chunk";
    let riff_size = le32(&b[4..8]) as usize;
    if riff_size < 4 + 8 || riff_size.saturating_add(8) > b.len() + 1 {
        // (+1: a writer may leave out the pad byte of an odd last chunk.)
        return Err("its RIFF size does not match its length");
    }
    let chunk = b.get(12..16).ok_or(CUT_SHORT)?;
    let data = &b[20.min(b.len())..];
    match chunk {
        b"VP8 " => {
            let d = data.get(..10).ok_or(CUT_SHORT)?;
            if d[0] & 1 != 0 || d[3..6] != [0x9D, 0x01, 0x2A] {
                return Err("its VP8 chunk does not start with a key frame");
            }
            Ok((le16(&d[6..8]) & 0x3FFF, le16(&d[8..10]) & 0x3FFF))
        }
        b"VP8L" => {
            let d = data.get(..5).ok_or(CUT_SHORT)?;
            let bits = le32(&d[1..5]);
            if d[0] != 0x2F || bits >> 29 != 0 {
                return Err("its VP8L chunk has a wrong signature or version");
            }
            Ok(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
        }
        b"VP8X" => {
            let d = data.get(..10).ok_or(CUT_SHORT)?;
            Ok((le24(&d[4..7]) + 1, le24(&d[7..10]) + 1))
        }
        _ => Err("its first chunk is not VP8, VP8L or VP8X"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A PNG header (signature and IHDR with a correct CRC) claiming `width` x `height`, followed by
    /// `tail` (not decoded by `probe`).
    pub(crate) fn png_header(width: u32, height: u32, tail: &[u8]) -> Vec<u8> {
        let mut out = PNG_SIGNATURE.to_vec();
        out.extend_from_slice(&13u32.to_be_bytes());
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&width.to_be_bytes());
        chunk.extend_from_slice(&height.to_be_bytes());
        chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc32fast::hash(&chunk).to_be_bytes());
        out.extend_from_slice(tail);
        out
    }

    /// The start of a baseline JPEG: SOI, an APP0 segment, then SOF0 with 3 components.
    pub(crate) fn jpeg_header(width: u16, height: u16) -> Vec<u8> {
        let mut out = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10];
        out.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        out.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 8]);
        out.extend_from_slice(&height.to_be_bytes());
        out.extend_from_slice(&width.to_be_bytes());
        out.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        out
    }

    fn riff(chunk: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&((4 + 8 + data.len()) as u32).to_le_bytes());
        out.extend_from_slice(b"WEBP");
        out.extend_from_slice(chunk);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    fn real_png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Grayscale);
        let mut writer = encoder.write_header().expect("png header");
        writer
            .write_image_data(&vec![0; (width * height) as usize])
            .expect("png data");
        drop(writer);
        out
    }

    fn info(ext: &'static str, width: u32, height: u32) -> Result<ImageInfo, ProbeError> {
        Ok(ImageInfo { ext, width, height })
    }

    fn invalid(format: &'static str, reason: &'static str) -> Result<ImageInfo, ProbeError> {
        Err(ProbeError::Invalid { format, reason })
    }

    #[test]
    fn images_past_either_limit_are_too_large() {
        let limits = ImageLimits {
            max_side: 16384,
            max_pixels: 64 << 20,
        };
        let size = |width, height| ImageInfo {
            ext: "png",
            width,
            height,
        };
        assert_eq!(size(8192, 8192).too_large(&limits), None);
        assert_eq!(size(16384, 1).too_large(&limits), None);
        assert!(size(16385, 1).too_large(&limits).is_some());
        assert!(size(8193, 8192).too_large(&limits).is_some());
        assert!(size(u32::MAX, u32::MAX).too_large(&limits).is_some());
    }

    #[test]
    fn a_real_png_gives_its_dimensions() {
        assert_eq!(probe(&real_png(3, 2)), info("png", 3, 2));
        assert_eq!(
            probe(&png_header(100_000, 100_000, &[])),
            info("png", 100_000, 100_000)
        );
    }

    #[test]
    fn random_bytes_after_a_png_signature_are_refused() {
        let mut bytes = PNG_SIGNATURE.to_vec();
        bytes.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        assert_eq!(
            probe(&bytes),
            invalid("PNG", "the first chunk is not a 13-byte IHDR")
        );
        let mut bad_crc = png_header(64, 64, &[]);
        bad_crc[20] ^= 1;
        assert_eq!(
            probe(&bad_crc),
            invalid("PNG", "the IHDR chunk's CRC does not match")
        );
        assert_eq!(
            probe(PNG_SIGNATURE),
            invalid("PNG", "too short to hold an IHDR chunk")
        );
        assert_eq!(
            probe(&png_header(0, 5, &[])),
            invalid("PNG", "its width or height is zero")
        );
    }

    #[test]
    fn a_jpeg_gives_the_dimensions_of_its_frame_header() {
        assert_eq!(probe(&jpeg_header(640, 480)), info("jpg", 640, 480));
        // Fill bytes before a marker, and a progressive frame (SOF2).
        let mut j = jpeg_header(7, 9);
        j.insert(2, 0xFF);
        let sof = j.iter().rposition(|&b| b == 0xC0).expect("SOF0");
        j[sof] = 0xC2;
        assert_eq!(probe(&j), info("jpg", 7, 9));
        // DHT (C4) shares the SOF range and is skipped, not read as a frame.
        let mut dht = vec![0xFF, 0xD8, 0xFF, 0xC4, 0x00, 0x04, 0, 0];
        dht.extend_from_slice(&jpeg_header(5, 6)[2..]);
        assert_eq!(probe(&dht), info("jpg", 5, 6));
    }

    #[test]
    fn broken_jpegs_are_refused() {
        assert_eq!(
            probe(&[0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 4]),
            invalid("JPEG", "it ends before its frame header")
        );
        assert_eq!(
            probe(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]),
            invalid("JPEG", "its scan starts before a frame header")
        );
        assert_eq!(
            probe(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]),
            invalid("JPEG", "a segment's length is below 2")
        );
        let mut bytes = vec![0xFF, 0xD8, 0xFF];
        bytes.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8));
        assert!(probe(&bytes).is_err());
    }

    #[test]
    fn webp_variants_give_their_dimensions() {
        let vp8 = [0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00];
        assert_eq!(probe(&riff(b"VP8 ", &vp8)), info("webp", 320, 240));
        // 14 bits width - 1, 14 bits height - 1: 100 x 50.
        let bits: u32 = 99 | 49 << 14;
        let mut vp8l = vec![0x2F];
        vp8l.extend_from_slice(&bits.to_le_bytes());
        assert_eq!(probe(&riff(b"VP8L", &vp8l)), info("webp", 100, 50));
        let vp8x = [0, 0, 0, 0, 0x9F, 0x86, 0x01, 0x9F, 0x86, 0x01];
        assert_eq!(probe(&riff(b"VP8X", &vp8x)), info("webp", 100_000, 100_000));
    }

    #[test]
    fn broken_webps_are_refused() {
        assert_eq!(
            probe(b"RIFF\x24\x00\x00\x00WEBPVP8 "),
            invalid("WEBP", "its RIFF size does not match its length")
        );
        assert_eq!(
            probe(&riff(b"VP8 ", &[0; 10])),
            invalid("WEBP", "its VP8 chunk does not start with a key frame")
        );
        assert_eq!(
            probe(&riff(b"ALPH", &[0; 10])),
            invalid("WEBP", "its first chunk is not VP8, VP8L or VP8X")
        );
    }

    #[test]
    fn gifs_give_their_screen_size_and_other_bytes_no_format() {
        assert_eq!(
            probe(b"GIF89a\x0a\x00\x05\x00\x00\x00\x00"),
            info("gif", 10, 5)
        );
        assert_eq!(
            probe(b"GIF87a\x01\x00"),
            invalid("GIF", "too short to hold its screen descriptor")
        );
        assert_eq!(probe(b"<svg xmlns="), Err(ProbeError::UnknownFormat));
        assert_eq!(probe(b""), Err(ProbeError::UnknownFormat));
        assert_eq!(
            probe(b"RIFF\x24\x00\x00\x00WAVEfmt "),
            Err(ProbeError::UnknownFormat)
        );
    }
}

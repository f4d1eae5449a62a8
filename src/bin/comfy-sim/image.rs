//! Simulated image tensors and their PNG encoding.
//!
//! An [`Image`] is a batch of RGB frames described lazily (a solid colour, a seeded pattern, or
//! decoded pixels sampled to the wanted size), so a 1024² graph costs almost nothing until a save
//! node encodes it. The executor (`exec.rs`) builds these values; `files.rs` writes the PNGs.

use std::io::Cursor;
use std::sync::Arc;

/// Where the pixels of an [`Image`] come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Every pixel has this colour.
    Solid([u8; 3]),
    /// A cheap deterministic pattern derived from a seed (diffusion output).
    Pattern(u64),
    /// Decoded RGB pixels of `width`×`height`, sampled (nearest) to the image size.
    Pixels {
        width: u32,
        height: u32,
        rgb: Arc<Vec<u8>>,
    },
}

/// A batch of RGB images (ComfyUI's `IMAGE`, shape `[batch, height, width, 3]`).
#[derive(Debug, Clone)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub batch: u32,
    pub source: Source,
    /// Applied by `ImageInvert`; toggles.
    pub inverted: bool,
}

impl Image {
    /// A solid-colour batch, `color` as 0xRRGGBB like `EmptyImage`.
    pub fn solid(width: u32, height: u32, batch: u32, color: u32) -> Self {
        let rgb = [(color >> 16) as u8, (color >> 8) as u8, color as u8];
        Self {
            width,
            height,
            batch,
            source: Source::Solid(rgb),
            inverted: false,
        }
    }

    /// A stable 64-bit digest of what this image looks like (used to seed derived values).
    pub fn digest(&self) -> u64 {
        let mut h = fnv(&[
            self.width as u64,
            self.height as u64,
            self.batch as u64,
            self.inverted as u64,
        ]);
        h = match &self.source {
            Source::Solid(c) => mix(
                h,
                u64::from(c[0]) << 16 | u64::from(c[1]) << 8 | u64::from(c[2]),
            ),
            Source::Pattern(s) => mix(h, *s ^ 0x5bd1_e995),
            Source::Pixels { rgb, .. } => rgb.iter().fold(h, |acc, b| mix(acc, u64::from(*b))),
        };
        h
    }

    /// Fills `out` (3 × width bytes) with row `y` of frame `frame`.
    fn row(&self, frame: u32, y: u32, out: &mut [u8]) {
        match &self.source {
            Source::Solid(c) => {
                for px in out.chunks_exact_mut(3) {
                    px.copy_from_slice(c);
                }
            }
            Source::Pattern(seed) => {
                // Smooth bands whose colours depend on the seed and the frame: cheap, varied bytes.
                let s = mix(*seed, u64::from(frame));
                let base = [(s >> 8) as u8, (s >> 24) as u8, (s >> 40) as u8];
                for (x, px) in out.chunks_exact_mut(3).enumerate() {
                    let x = x as u32;
                    px[0] = base[0].wrapping_add((x / 8) as u8);
                    px[1] = base[1].wrapping_add((y / 8) as u8);
                    px[2] = base[2].wrapping_add(((x + y) / 16) as u8);
                }
            }
            Source::Pixels { width, height, rgb } => {
                let sy =
                    (u64::from(y) * u64::from(*height) / u64::from(self.height.max(1))) as usize;
                for (x, px) in out.chunks_exact_mut(3).enumerate() {
                    let sx = (x as u64 * u64::from(*width) / u64::from(self.width.max(1))) as usize;
                    let i = (sy * *width as usize + sx) * 3;
                    match rgb.get(i..i + 3) {
                        Some(p) => px.copy_from_slice(p),
                        None => px.fill(0),
                    }
                }
            }
        }
        if self.inverted {
            for b in out.iter_mut() {
                *b = 255 - *b;
            }
        }
    }

    /// Encodes frame `frame` as a PNG, with optional `tEXt` chunks (ComfyUI writes `prompt`).
    pub fn encode_png(
        &self,
        frame: u32,
        text: &[(&str, String)],
    ) -> Result<Vec<u8>, png::EncodingError> {
        let mut buf = Vec::new();
        {
            let mut enc =
                png::Encoder::new(Cursor::new(&mut buf), self.width.max(1), self.height.max(1));
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Fast);
            for (k, v) in text {
                enc.add_text_chunk((*k).to_string(), v.clone())?;
            }
            let mut writer = enc.write_header()?;
            // The whole image at once: png then compresses it with fdeflate, whereas its stream
            // writer sets up a full zlib compressor for every image (most of a small image's cost).
            let stride = self.width.max(1) as usize * 3;
            let mut data = vec![0u8; stride * self.height.max(1) as usize];
            for (y, row) in data.chunks_exact_mut(stride).enumerate() {
                self.row(frame, y as u32, row);
            }
            writer.write_image_data(&data)?;
            writer.finish()?;
        }
        Ok(buf)
    }
}

/// Decodes a PNG file into RGB pixels; `None` when the bytes are not a PNG this can read.
pub fn decode_png(bytes: &[u8]) -> Option<Image> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().ok()?;
    let mut raw = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut raw).ok()?;
    let (w, h) = (info.width, info.height);
    let channels = info.color_type.samples();
    let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..h as usize {
        let line = &raw[y * info.line_size..(y + 1) * info.line_size];
        for x in 0..w as usize {
            let p = &line[x * channels..x * channels + channels];
            match channels {
                1 | 2 => rgb.extend_from_slice(&[p[0], p[0], p[0]]),
                _ => rgb.extend_from_slice(&p[..3]),
            }
        }
    }
    Some(Image {
        width: w,
        height: h,
        batch: 1,
        source: Source::Pixels {
            width: w,
            height: h,
            rgb: Arc::new(rgb),
        },
        inverted: false,
    })
}

/// FNV-1a over words: a small stable hash (std's hasher is randomly keyed per process).
pub fn fnv(words: &[u64]) -> u64 {
    words.iter().fold(0xcbf2_9ce4_8422_2325, |h, w| mix(h, *w))
}

/// Folds one word into a running hash.
pub fn mix(h: u64, w: u64) -> u64 {
    let mut h = h;
    for b in w.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Hashes a string with [`mix`].
pub fn hash_str(s: &str) -> u64 {
    s.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| mix(h, u64::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solid_png_round_trips_with_its_size_and_colour() {
        let img = Image::solid(7, 5, 1, 0xff8000);
        let bytes = img
            .encode_png(0, &[("prompt", "{}".into())])
            .expect("encode");
        let back = decode_png(&bytes).expect("decode");
        assert_eq!((back.width, back.height), (7, 5));
        match back.source {
            Source::Pixels { rgb, .. } => assert_eq!(&rgb[..3], &[0xff, 0x80, 0x00]),
            other => panic!("unexpected source {other:?}"),
        }
    }

    #[test]
    fn patterns_from_different_seeds_differ() {
        let a = Image {
            width: 16,
            height: 16,
            batch: 1,
            source: Source::Pattern(1),
            inverted: false,
        };
        let b = Image {
            source: Source::Pattern(2),
            ..a.clone()
        };
        assert_ne!(
            a.encode_png(0, &[]).expect("a"),
            b.encode_png(0, &[]).expect("b")
        );
    }
}

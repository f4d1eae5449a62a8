//! Image parameters: decoding what a client sends (base64, a `data:` URL, or an http(s) URL),
//! recognising image formats by their headers ([`super::probe`]), and setting an uploaded image's
//! name in a graph.
//!
//! Fetching URLs is not done here: the caller does it through `outbound`, with its limits.

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde_json::Value;

use super::params::json_type_name;
use super::probe::probe;
use super::{Graph, Target};

/// Reason given for undecodable base64.
pub(crate) const INVALID_BASE64: &str = "invalid base64";

/// Clients pad or not, so padding is optional; both alphabets are tried (standard first).
const PADDING_INDIFFERENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, PADDING_INDIFFERENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, PADDING_INDIFFERENT);

/// Where an image param's image comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Decoded from base64, with a valid image header.
    Bytes {
        /// The image file's bytes.
        bytes: Vec<u8>,
        /// Its format as a file extension: "png", "jpg", "webp" or "gif".
        ext: &'static str,
    },
    /// An `http://` or `https://` URL that the caller must fetch (and then sniff) itself.
    Url(String),
}

impl fmt::Debug for ImageSource {
    // The bytes can be megabytes; their length is what a log or test failure needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Bytes { bytes, ext } => f
                .debug_struct("Bytes")
                .field("len", &bytes.len())
                .field("ext", ext)
                .finish(),
            ImageSource::Url(url) => f.debug_tuple("Url").field(url).finish(),
        }
    }
}

/// One image param of a validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageParam {
    /// Name of the param.
    pub param: String,
    /// Where the image comes from.
    pub source: ImageSource,
    /// The graph inputs (usually `LoadImage.image`) that receive the uploaded file's name.
    pub targets: Vec<Target>,
}

/// The image format of `bytes` by its magic bytes, as a file extension ("png", "jpg", "webp",
/// "gif"); `None` when it is none of them.
pub fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("gif")
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else {
        None
    }
}

/// Sets an uploaded image's name (as ComfyUI returned it, subfolder included) at each target.
/// Targets whose node or inputs are missing are skipped: the loader has already checked them.
pub fn set_image(graph: &mut Graph, targets: &[Target], name: &str) {
    for target in targets {
        if let Some(inputs) = graph
            .get_mut(&target.node)
            .and_then(|node| node.get_mut("inputs"))
            .and_then(Value::as_object_mut)
        {
            inputs.insert(target.input.clone(), Value::String(name.to_owned()));
        }
    }
}

/// Reads an image param's value: base64 (plain or `data:...;base64,` URL) is decoded and its header
/// checked;
/// an http(s) URL is passed on. The error is the reason for the client.
pub(crate) fn parse_image(value: &Value) -> Result<ImageSource, String> {
    let Value::String(text) = value else {
        return Err(format!(
            "expected a base64 string, a data URL or an http(s) URL, got {}",
            json_type_name(value)
        ));
    };
    let text = text.trim();

    let payload = if let Some(rest) = strip_prefix_ignore_case(text, "data:") {
        let Some((header, data)) = rest.split_once(',') else {
            return Err("invalid data URL: no comma".into());
        };
        if !header.to_ascii_lowercase().ends_with(";base64") {
            return Err("data URL must be base64-encoded (`;base64,`)".into());
        }
        data
    } else if text.contains(':') {
        // ':' is not in any base64 alphabet, so this can only be meant as a URL.
        let url = url::Url::parse(text).map_err(|e| format!("invalid URL: {e}"))?;
        return match url.scheme() {
            "http" | "https" => Ok(ImageSource::Url(url.to_string())),
            other => Err(format!(
                "URL scheme `{other}` is not accepted: use http or https"
            )),
        };
    } else {
        text
    };

    let bytes = decode_base64(payload).ok_or_else(|| INVALID_BASE64.to_string())?;
    // The header only: whether the image is too large for the limits is the caller's check (413).
    let ext = probe(&bytes).map_err(|e| e.to_string())?.ext;
    Ok(ImageSource::Bytes { bytes, ext })
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Decodes base64 that may be wrapped in lines (as MIME encoders do) and may lack padding.
fn decode_base64(payload: &str) -> Option<Vec<u8>> {
    // A copy without the line breaks only when there are some: payloads are tens of megabytes.
    let compact: Vec<u8>;
    let text = if payload.bytes().any(|b| b.is_ascii_whitespace()) {
        compact = payload
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        &compact[..]
    } else {
        payload.as_bytes()
    };
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

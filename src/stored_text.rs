//! Text from outside (a ComfyUI server's error messages and `node_errors`, an S3 or HTTP error) made
//! fit to be stored. PostgreSQL refuses NUL in a `text` column (SQLSTATE 22021) and `\u0000` in
//! `jsonb` (22P05); neither is an outage, so the Recorder does not retry the write, but the task it
//! would have ended stays unfinished. Details are stored as JSON text, where NUL is escaped and
//! accepted, but are cleaned alike for whoever reads them into jsonb or a C string. A server can also
//! send megabytes of it: both are bounded. Applied where a failure becomes the task's
//! `error_message`, `error_details`, `failed` event and webhook
//! ([`crate::postprocess::Finisher::finish_failed`], and the uploader's own failures), and to the
//! reason of a `requeued` event.

use serde_json::{Map, Value};

/// Longest stored message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 << 10;
/// Longest stored details, in bytes of their JSON.
pub const MAX_DETAILS_BYTES: usize = 64 << 10;

/// What replaces a NUL: visible, and accepted by every database.
const NUL_STANDS_IN: char = '\u{FFFD}';

/// `s` without NUL, cut at a character boundary to at most `max` bytes plus a note saying how much
/// was cut.
pub fn text(s: &str, max: usize) -> String {
    let clean: std::borrow::Cow<str> = if s.contains('\0') {
        s.replace('\0', &NUL_STANDS_IN.to_string()).into()
    } else {
        s.into()
    };
    if clean.len() <= max {
        return clean.into_owned();
    }
    let note = format!("... ({} bytes cut)", clean.len());
    let mut end = max.saturating_sub(note.len());
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &clean[..end])
}

/// A message: no NUL, at most [`MAX_MESSAGE_BYTES`].
pub fn message(s: &str) -> String {
    text(s, MAX_MESSAGE_BYTES)
}

/// Details: no NUL in any key or string, each string at most [`MAX_MESSAGE_BYTES`]; details whose
/// JSON is still over [`MAX_DETAILS_BYTES`] are replaced by their cut JSON text under `truncated`.
pub fn details(v: Value) -> Value {
    let v = clean(v);
    let len = serde_json::to_string(&v).map_or(0, |s| s.len());
    if len <= MAX_DETAILS_BYTES {
        return v;
    }
    // Quoting the cut text escapes it again (a quote becomes two bytes, a control character six):
    // cut shorter until it fits.
    let full = v.to_string();
    let mut max = MAX_DETAILS_BYTES - 1024;
    loop {
        let head = Value::String(text(&full, max));
        if head.to_string().len() <= MAX_DETAILS_BYTES - 1024 || max < 1024 {
            return serde_json::json!({ "truncated": head, "bytes": len });
        }
        max /= 2;
    }
}

fn clean(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(message(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(clean).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (text(&k, 1024), clean(v)))
                .collect::<Map<String, Value>>(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_is_replaced_and_short_text_is_kept() {
        assert_eq!(message("a\0b"), "a\u{FFFD}b");
        assert_eq!(message("plain"), "plain");
        assert_eq!(message(""), "");
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary_within_the_bound() {
        let long = "é".repeat(20_000);
        let m = message(&long);
        assert!(m.len() <= MAX_MESSAGE_BYTES, "{}", m.len());
        assert!(
            m.ends_with("... (40000 bytes cut)"),
            "{}",
            &m[m.len() - 40..]
        );
        assert!(m.starts_with("éé"));
        let t = text("abcdef", 3);
        assert!(!t.contains('\0'));
    }

    #[test]
    fn details_have_no_nul_anywhere_and_stay_bounded() {
        let d = details(json!({"node_errors": {"1\u{0}": {"errors": [
            {"message": "bad\u{0}value", "details": "x".repeat(100_000)}]}}, "n": 3}));
        let s = d.to_string();
        assert!(!s.contains('\0') && !s.contains("\\u0000"), "{s}");
        assert_eq!(d["n"], 3);
        let e = &d["node_errors"]["1\u{FFFD}"]["errors"][0];
        assert_eq!(e["message"], "bad\u{FFFD}value");
        assert!(e["details"].as_str().expect("kept").len() <= MAX_MESSAGE_BYTES);

        let many: Vec<Value> = (0..100).map(|_| json!("y".repeat(10_000))).collect();
        let d = details(json!({ "traceback": many }));
        assert!(
            d.to_string().len() <= MAX_DETAILS_BYTES,
            "{}",
            d.to_string().len()
        );
        assert!(d["bytes"].as_u64().expect("size") > MAX_DETAILS_BYTES as u64);
        assert!(d["truncated"]
            .as_str()
            .expect("head")
            .starts_with("{\"traceback\""));
        assert_eq!(details(Value::Null), Value::Null);
    }
}

//! The hash that tells a retried submit (same `client_task_id`, same request) from a conflicting one.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::fields::Fields;

/// SHA-256 of the canonical JSON `{"callback", "params", "priority", "workflow"}` (keys in
/// serde_json's map order, so hashes recorded before stay valid), written straight into the
/// hasher rather than built as a copy of params that may hold megabytes of base64.
pub(super) fn request_hash(workflow: &str, s: &Fields) -> String {
    #[derive(serde::Serialize)]
    struct Canonical<'a> {
        callback: &'a Option<String>,
        params: &'a Value,
        priority: i32,
        workflow: &'a str,
    }
    struct HashWriter(Sha256);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hasher = HashWriter(Sha256::new());
    let canonical = Canonical {
        callback: &s.client_callback_url,
        params: &s.params,
        priority: s.priority,
        workflow,
    };
    // Serializing a Value into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut hasher, &canonical);
    hex(&hasher.0.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_request_hash_is_the_one_recorded_before() {
        let s = Fields {
            client_task_id: Some("t".into()),
            client_callback_url: Some("http://h/x".into()),
            params: json!({"prompt": "a \"cat\"", "steps": 20, "cfg": 7.5, "z": null, "a": [1]}),
            priority: -3,
        };
        // How it was computed up to now: a JSON copy of the request, then its text.
        let before = json!({
            "workflow": "text2img", "params": s.params,
            "callback": s.client_callback_url, "priority": s.priority,
        });
        assert_eq!(
            request_hash("text2img", &s),
            hex(&Sha256::digest(before.to_string().as_bytes()))
        );
    }
}

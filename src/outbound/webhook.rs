//! Webhook deliveries: [`Outbound::post_webhook`] (one POST, its status whatever it is) and the
//! Standard Webhooks signature the `Notifier` puts on each ([`sign_webhook`]).

use std::time::Duration;

use awc::http::header::{self, HeaderName, HeaderValue};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::time::{timeout_at, Instant};

use super::{Outbound, OutboundError};

/// Bytes of a webhook response body read (and discarded) before the connection is dropped.
const WEBHOOK_RESPONSE_DRAIN_BYTES: usize = 64 * 1024;

impl Outbound {
    /// POSTs a webhook JSON body with the given extra headers and returns the HTTP status, whatever
    /// it is (the caller decides what counts as delivered); errors only when no status arrived within
    /// `webhook_timeout_ms`. Redirects are not followed. Up to 64 KiB of the response body is read
    /// and discarded.
    pub async fn post_webhook(
        &self,
        url: &str,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Result<u16, OutboundError> {
        let url = self.check_url(url)?;
        let deadline = Instant::now() + Duration::from_millis(self.settings.webhook_timeout_ms);
        let mut request = self
            .client()
            .post(url.as_str())
            .insert_header((header::CONTENT_TYPE, "application/json"));
        for (name, value) in headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| OutboundError::BadHeader(name.clone()))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| OutboundError::BadHeader(name.to_string()))?;
            request = request.insert_header((name, value));
        }
        let mut response = timeout_at(deadline, request.send_body(body))
            .await
            .map_err(|_| OutboundError::Timeout)??;
        let status = response.status().as_u16();
        // Reading a little of the body lets a well-behaved receiver finish its answer; errors and
        // slowness here change nothing, since the status is already known.
        let _ = timeout_at(deadline, async {
            let mut read = 0;
            while let Some(Ok(chunk)) = response.next().await {
                read += chunk.len();
                if read >= WEBHOOK_RESPONSE_DRAIN_BYTES {
                    break;
                }
            }
        })
        .await;
        Ok(status)
    }
}

/// Standard Webhooks signature (<https://www.standardwebhooks.com>): HMAC-SHA256 over
/// `"{msg_id}.{timestamp}.{body}"`, returned as the `webhook-signature` header value `v1,<base64>`.
///
/// A secret `whsec_<base64>` is base64-decoded; any other secret (or one whose base64 does not
/// decode) is used as raw bytes.
pub fn sign_webhook(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        })
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    #[allow(clippy::expect_used)]
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{signature}")
}

//! Input images fetched by URL: [`Outbound::fetch_image`] (and its budgeted form), following
//! redirects by hand so that every hop passes the URL policy, within one deadline and one size limit.

use std::time::Duration;

use awc::http::header;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use tokio::time::{timeout_at, Instant};

use super::{Outbound, OutboundError};
use crate::budget::Reservation;

/// Redirects followed by [`Outbound::fetch_image`]; every hop passes [`Outbound::check_url`] again.
const MAX_REDIRECTS: usize = 5;

impl Outbound {
    /// Fetches an input image. Refuses early on a too-large `Content-Length` and again while
    /// streaming; the whole call (redirects included) must end within `fetch_timeout_ms`; the
    /// content type must be `image/*` (the caller still sniffs the bytes). Returns the bytes and
    /// the content type without parameters (`image/png`).
    pub async fn fetch_image(&self, url: &str) -> Result<(Bytes, String), OutboundError> {
        self.fetch_image_within(url, None).await
    }

    /// [`Self::fetch_image`], with the bytes buffered counted in `held` (grown as they arrive, to
    /// the announced length at once when there is one): a request's share of the memory budget.
    pub async fn fetch_image_within(
        &self,
        url: &str,
        held: Option<&mut Reservation>,
    ) -> Result<(Bytes, String), OutboundError> {
        let url = self.check_url(url)?;
        let deadline = Instant::now() + Duration::from_millis(self.settings.fetch_timeout_ms);
        timeout_at(deadline, self.fetch_image_from(url, held))
            .await
            .map_err(|_| OutboundError::Timeout)?
    }

    async fn fetch_image_from(
        &self,
        mut url: url::Url,
        mut held: Option<&mut Reservation>,
    ) -> Result<(Bytes, String), OutboundError> {
        let limit = self.settings.fetch_max_bytes;
        let client = self.client();
        for _ in 0..=MAX_REDIRECTS {
            let mut response = client
                .get(url.as_str())
                .insert_header((header::ACCEPT, "image/*"))
                .send()
                .await?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or(OutboundError::Status(status.as_u16()))?;
                let next = url
                    .join(location)
                    .map_err(|e| OutboundError::BadUrl(format!("bad redirect: {e}")))?;
                url = self.check_parsed(next)?;
                continue;
            }
            if !status.is_success() {
                return Err(OutboundError::Status(status.as_u16()));
            }
            let content_type = image_content_type(response.headers())?;
            let declared = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|length| length > limit) {
                return Err(OutboundError::TooLarge { limit });
            }
            let start = held.as_ref().map_or(0, |r| r.bytes());
            if let (Some(held), Some(length)) = (held.as_deref_mut(), declared) {
                held.grow(length).await?;
            }
            let mut body = BytesMut::new();
            while let Some(chunk) = response.next().await {
                let chunk = chunk.map_err(|e| OutboundError::Connect(e.to_string()))?;
                let len = (body.len() + chunk.len()) as u64;
                if len > limit {
                    return Err(OutboundError::TooLarge { limit });
                }
                if let Some(held) = held.as_deref_mut() {
                    let reserved = held.bytes() - start;
                    if len > reserved {
                        // Doubling keeps the number of waits for the budget logarithmic.
                        let target = (2 * reserved).min(limit).max(len);
                        held.grow(target - reserved).await?;
                    }
                }
                body.extend_from_slice(&chunk);
            }
            return Ok((body.freeze(), content_type));
        }
        Err(OutboundError::TooManyRedirects)
    }
}

/// The `image/*` content type of a response, without parameters, lower-cased.
fn image_content_type(headers: &header::HeaderMap) -> Result<String, OutboundError> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let essence = raw
        .as_deref()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match essence.strip_prefix("image/") {
        Some(subtype) if !subtype.is_empty() => Ok(essence),
        _ => Err(OutboundError::BadContentType(
            raw.unwrap_or_else(|| "none".into()),
        )),
    }
}

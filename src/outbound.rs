//! Every HTTP call to a URL that a client gave comfyd: webhook deliveries and input-image fetches.
//!
//! Keeping them in one place keeps the URL policy, the size and time limits, and (later)
//! per-destination API keys in one place too. The policy ([`address`]): a URL is checked when it is
//! given ([`Outbound::check_url`], and [`Outbound::check_destination`], which resolves its host), and
//! again on every call and every redirect hop, where awc connects only to addresses the policy
//! resolver looked up and checked. The `Notifier` calls
//! [`Outbound::post_webhook`] (with a [`sign_webhook`] signature); the job routes call
//! [`Outbound::fetch_image`] for image inputs given by URL.
//!
//! `awc::Client` is `!Send`, so [`Outbound`] holds only settings and each thread builds its own
//! client on first use. Calls must run on an actix runtime (an actix System, an actix-web worker or
//! `#[actix_web::test]`), because awc's connection pool spawns local tasks.

mod address;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use awc::error::SendRequestError;
use awc::http::header::{self, HeaderName, HeaderValue};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use tokio::time::{timeout_at, Instant};

pub use address::{classify, AddressClass, AddressPolicy, LookupError};
use address::{Lookup, PolicyResolver};

/// Longest URL accepted from a client; longer ones are refused before any parsing work.
const MAX_URL_LEN: usize = 8 * 1024;
/// Redirects followed by [`Outbound::fetch_image`]; every hop passes [`Outbound::check_url`] again.
const MAX_REDIRECTS: usize = 5;
/// Bytes of a webhook response body read (and discarded) before the connection is dropped.
const WEBHOOK_RESPONSE_DRAIN_BYTES: usize = 64 * 1024;
/// Time allowed to open a TCP connection (and again for the TLS handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Limits for outbound calls (config section `[outbound]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundSettings {
    /// Largest input image fetched by URL, in bytes; larger ones are refused (HTTP 413 to the client).
    pub fetch_max_bytes: u64,
    /// Time allowed for a whole image fetch (connect, headers and body), in milliseconds.
    pub fetch_timeout_ms: u64,
    /// Time allowed for a webhook delivery to answer with a status, in milliseconds.
    pub webhook_timeout_ms: u64,
    /// Whether URLs may reach private networks and reserved ranges (see [`AddressClass::Private`]).
    pub allow_private_addresses: bool,
    /// Whether URLs may reach loopback addresses (127.0.0.0/8, ::1).
    pub allow_loopback_addresses: bool,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        OutboundSettings {
            fetch_max_bytes: 20 * 1024 * 1024,
            fetch_timeout_ms: 10_000,
            webhook_timeout_ms: 10_000,
            allow_private_addresses: true,
            allow_loopback_addresses: true,
        }
    }
}

impl OutboundSettings {
    fn policy(&self) -> AddressPolicy {
        AddressPolicy {
            allow_private: self.allow_private_addresses,
            allow_loopback: self.allow_loopback_addresses,
        }
    }
}

/// A failed outbound call. Messages never include the URL (it may carry tokens) or bodies.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The URL is malformed (or not http/https).
    #[error("URL refused: {0}")]
    BadUrl(String),
    /// The URL's host is, or resolves to, an address the policy refuses.
    #[error("address refused: {0}")]
    Refused(String),
    /// The body is larger than the limit (answer 413).
    #[error("response larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The call did not finish in time.
    #[error("timed out")]
    Timeout,
    /// The response is not an image (the content type is shown, or "none").
    #[error("content type {0} is not an image")]
    BadContentType(String),
    /// The server answered with a non-success status.
    #[error("server answered HTTP {0}")]
    Status(u16),
    /// Connecting, sending or receiving failed.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The server redirected more than 5 times.
    #[error("too many redirects")]
    TooManyRedirects,
    /// A header given by the caller is not a valid HTTP header.
    #[error("invalid header {0:?}")]
    BadHeader(String),
}

impl OutboundError {
    /// Whether trying again later may succeed (network trouble, timeouts, 5xx, 408 and 429, and a
    /// refused address: a name may resolve elsewhere later, and the policy may change).
    pub fn is_transient(&self) -> bool {
        match self {
            OutboundError::Timeout | OutboundError::Connect(_) | OutboundError::Refused(_) => true,
            OutboundError::Status(status) => matches!(status, 408 | 429 | 500..=599),
            OutboundError::BadUrl(_)
            | OutboundError::TooLarge { .. }
            | OutboundError::BadContentType(_)
            | OutboundError::TooManyRedirects
            | OutboundError::BadHeader(_) => false,
        }
    }
}

impl From<SendRequestError> for OutboundError {
    fn from(err: SendRequestError) -> Self {
        match err {
            SendRequestError::Timeout => OutboundError::Timeout,
            SendRequestError::Url(e) => OutboundError::BadUrl(e.to_string()),
            // The policy resolver's refusal comes back through awc as a resolver error.
            SendRequestError::Connect(awc::error::ConnectError::Resolver(e)) => {
                match e.downcast_ref::<LookupError>() {
                    Some(refused @ LookupError::Refused { .. }) => {
                        OutboundError::Refused(refused.to_string())
                    }
                    Some(failed) => OutboundError::Connect(failed.to_string()),
                    None => OutboundError::Connect(format!("could not resolve the host: {e}")),
                }
            }
            other => OutboundError::Connect(other.to_string()),
        }
    }
}

/// Makes outbound HTTP calls under one policy. Cheap to clone; `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Outbound {
    settings: OutboundSettings,
    lookup: Lookup,
}

/// A client built for one actix System and one policy.
struct CachedClient {
    system: Option<usize>,
    policy: AddressPolicy,
    client: awc::Client,
}

thread_local! {
    /// This thread's clients: a client is tied to the runtime that spawned its pool tasks (so a new
    /// System gets a new client) and its resolver to one policy (tests run several at once).
    static CLIENTS: RefCell<Vec<CachedClient>> = const { RefCell::new(Vec::new()) };
}

fn build_client(policy: AddressPolicy, lookup: Lookup) -> awc::Client {
    // awc's rustls setup panics when no process-wide crypto provider can be chosen; comfyd uses
    // ring everywhere. Err means one is installed already, which is what we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Names are resolved by the policy resolver, and awc connects to the addresses it returned.
    let tcp =
        actix_tls::connect::Connector::new(actix_tls::connect::Resolver::custom(PolicyResolver {
            policy,
            lookup,
        }))
        .service();
    let connector = awc::Connector::new()
        .connector(tcp)
        .timeout(CONNECT_TIMEOUT)
        .handshake_timeout(CONNECT_TIMEOUT);
    awc::Client::builder()
        .connector(connector)
        // Our own deadlines cover the whole call, body included (see fetch_image, post_webhook).
        .disable_timeout()
        // Redirects are followed by hand so that each hop passes the URL policy.
        .disable_redirects()
        .add_default_header((
            header::USER_AGENT,
            concat!("comfyd/", env!("CARGO_PKG_VERSION")),
        ))
        .finish()
}

impl Outbound {
    /// An outbound caller with these limits. Builds nothing yet; clients are made per thread.
    pub fn new(settings: OutboundSettings) -> Outbound {
        Outbound {
            settings,
            lookup: Lookup::System,
        }
    }

    /// Looks names up in `hosts` only, never in DNS or /etc/hosts (tests: names for the loopback
    /// test servers). A name missing from the table does not resolve.
    pub fn with_hosts<'a>(
        mut self,
        hosts: impl IntoIterator<Item = (&'a str, IpAddr)>,
    ) -> Outbound {
        let mut table: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in hosts {
            table.entry(name.to_ascii_lowercase()).or_default().push(ip);
        }
        self.lookup = Lookup::Table(Arc::new(table));
        self
    }

    /// The limits in force.
    pub fn settings(&self) -> &OutboundSettings {
        &self.settings
    }

    /// This thread's awc client for this policy, built on first use.
    fn client(&self) -> awc::Client {
        let policy = self.settings.policy();
        if let Lookup::Table(_) = self.lookup {
            // Tests only; not worth a cache keyed on the table.
            return build_client(policy, self.lookup.clone());
        }
        let system = actix_rt::System::try_current().map(|s| s.id());
        CLIENTS.with(|cell| {
            let mut clients = cell.borrow_mut();
            clients.retain(|c| c.system == system);
            if let Some(c) = clients.iter().find(|c| c.policy == policy) {
                return c.client.clone();
            }
            let client = build_client(policy, Lookup::System);
            clients.push(CachedClient {
                system,
                policy,
                client: client.clone(),
            });
            client
        })
    }

    /// The policy check for any client-given URL, without a lookup: http or https only, with a
    /// host, and, when the host is an address, one the policy allows. (`url` has already turned
    /// decimal, octal, hex and short IPv4 forms into dotted quads.) Names are checked when they are
    /// resolved: by [`Outbound::check_destination`] and on every connection.
    pub fn check_url(&self, url: &str) -> Result<url::Url, OutboundError> {
        if url.len() > MAX_URL_LEN {
            return Err(OutboundError::BadUrl(format!(
                "longer than {MAX_URL_LEN} bytes"
            )));
        }
        let parsed =
            url::Url::parse(url).map_err(|e| OutboundError::BadUrl(format!("not a URL: {e}")))?;
        self.check_parsed(parsed)
    }

    fn check_parsed(&self, url: url::Url) -> Result<url::Url, OutboundError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(OutboundError::BadUrl("scheme must be http or https".into()));
        }
        let ip = match url.host() {
            Some(url::Host::Domain("")) | None => {
                return Err(OutboundError::BadUrl("no host".into()))
            }
            Some(url::Host::Domain(_)) => None,
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        };
        if let Some(ip) = ip {
            self.settings
                .policy()
                .check(ip)
                .map_err(OutboundError::Refused)?;
        }
        Ok(url)
    }

    /// [`Outbound::check_url`], and for a host name a lookup now, refused when any address it
    /// resolves to is refused: what the submit routes call, so a client hears at once. A lookup
    /// that fails is not refused here: the call itself will fail (and a webhook be retried).
    pub async fn check_destination(&self, url: &str) -> Result<url::Url, OutboundError> {
        let url = self.check_url(url)?;
        if let Some(url::Host::Domain(name)) = url.host() {
            match self
                .lookup
                .resolve_checked(self.settings.policy(), name)
                .await
            {
                Err(refused @ LookupError::Refused { .. }) => {
                    return Err(OutboundError::Refused(refused.to_string()))
                }
                Err(failed) => tracing::debug!(error = %failed, "client URL host did not resolve"),
                Ok(_) => {}
            }
        }
        Ok(url)
    }

    /// Fetches an input image. Refuses early on a too-large `Content-Length` and again while
    /// streaming; the whole call (redirects included) must end within `fetch_timeout_ms`; the
    /// content type must be `image/*` (the caller still sniffs the bytes). Returns the bytes and
    /// the content type without parameters (`image/png`).
    pub async fn fetch_image(&self, url: &str) -> Result<(Bytes, String), OutboundError> {
        let url = self.check_url(url)?;
        let deadline = Instant::now() + Duration::from_millis(self.settings.fetch_timeout_ms);
        timeout_at(deadline, self.fetch_image_from(url))
            .await
            .map_err(|_| OutboundError::Timeout)?
    }

    async fn fetch_image_from(&self, mut url: url::Url) -> Result<(Bytes, String), OutboundError> {
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
            let mut body = BytesMut::new();
            while let Some(chunk) = response.next().await {
                let chunk = chunk.map_err(|e| OutboundError::Connect(e.to_string()))?;
                if (body.len() + chunk.len()) as u64 > limit {
                    return Err(OutboundError::TooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            return Ok((body.freeze(), content_type));
        }
        Err(OutboundError::TooManyRedirects)
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    use std::sync::{Arc, Mutex};

    #[test]
    fn sign_webhook_matches_the_standard_webhooks_test_vector() {
        // The test vector published with the Standard Webhooks specification (and reproduced by
        // python3: hmac.new(b64decode(key), b"msg_p5j...1614265330.{...}", sha256)).
        let signature = sign_webhook(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn sign_webhook_uses_unprefixed_secrets_as_raw_bytes() {
        // python3 -c "import hmac,hashlib,base64;print(base64.b64encode(hmac.new(b'raw-secret',
        //   b'msg_1.1700000000.{}', hashlib.sha256).digest()).decode())"
        assert_eq!(
            sign_webhook("raw-secret", "msg_1", 1_700_000_000, b"{}"),
            "v1,7Rv5rarZl2vsfTZ63g0x/CLPPNgG3Bvf71kHvMd/swg="
        );
        assert_ne!(
            sign_webhook("raw-secret", "msg_1", 1_700_000_000, b"{}"),
            sign_webhook("raw-secret", "msg_1", 1_700_000_001, b"{}")
        );
    }

    fn outbound(allow: bool) -> Outbound {
        Outbound::new(OutboundSettings {
            allow_private_addresses: allow,
            allow_loopback_addresses: allow,
            ..OutboundSettings::default()
        })
    }

    #[test]
    fn check_url_accepts_http_and_https_with_a_host() {
        let out = outbound(false);
        for url in [
            "https://example.com/a.png",
            "http://example.com:8080/x?y=1",
            "https://8.8.8.8/i.png",
            "https://[2606:4700::1111]/i.png",
            // Names are checked when they are resolved, not here.
            "http://localhost:8080/",
        ] {
            assert!(out.check_url(url).is_ok(), "{url} should pass");
        }
        assert!(outbound(true).check_url("http://127.0.0.1:8188/x").is_ok());
    }

    #[test]
    fn check_url_refuses_other_schemes_and_malformed_urls() {
        let out = outbound(true);
        for url in [
            "ftp://example.com/a.png",
            "file:///etc/passwd",
            "data:image/png;base64,AAAA",
            "javascript:alert(1)",
            "example.com/a.png",
            "http://",
            "",
        ] {
            assert!(
                matches!(out.check_url(url), Err(OutboundError::BadUrl(_))),
                "{url:?} should be refused"
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(out.check_url(&long).is_err());
    }

    #[test]
    fn check_url_refuses_private_and_loopback_addresses_when_not_allowed() {
        let out = outbound(false);
        for url in [
            "http://127.0.0.1/",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://172.16.0.1/",
            "http://100.64.0.1/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            // Forms `url` turns into 127.0.0.1: decimal, octal, hex, short.
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.0.0.1/",
            "http://0x7f000001/",
            "http://127.1/",
            // IPv4-compatible and NAT64 forms of loopback.
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
        ] {
            assert!(
                matches!(out.check_url(url), Err(OutboundError::Refused(_))),
                "{url} should be refused: {:?}",
                out.check_url(url)
            );
        }
    }

    #[test]
    fn check_url_always_refuses_link_local_metadata_and_unspecified_addresses() {
        let out = outbound(true);
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:169.254.169.254]/latest/meta-data",
            "http://[::ffff:a9fe:a9fe]/",
            "http://2852039166/latest/meta-data",
            "http://0251.0376.0251.0376/",
            "http://169.254.1.1/",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://100.100.100.200/",
            "http://0.0.0.0:8188/",
            "http://0/",
            "http://[::]/",
            "http://255.255.255.255/",
            "http://224.0.0.1/",
            "http://[ff02::1]/",
        ] {
            match out.check_url(url) {
                Err(OutboundError::Refused(reason)) => {
                    assert!(!reason.contains("url_policy"), "{url}: {reason}")
                }
                other => panic!("{url} should be refused, got {other:?}"),
            }
        }
    }

    #[actix_web::test]
    async fn check_destination_resolves_names_and_names_the_reason() {
        let hosts = [
            ("hooks.example.test", "127.0.0.1".parse().expect("ip")),
            (
                "metadata.example.test",
                "169.254.169.254".parse().expect("ip"),
            ),
            ("public.example.test", "93.184.216.34".parse().expect("ip")),
        ];
        let strict = outbound(false).with_hosts(hosts);
        match strict
            .check_destination("http://hooks.example.test/h")
            .await
        {
            Err(OutboundError::Refused(reason)) => {
                assert!(
                    reason.contains("hooks.example.test resolves to 127.0.0.1"),
                    "{reason}"
                );
                assert!(reason.contains("loopback"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(strict
            .check_destination("https://public.example.test/")
            .await
            .is_ok());
        // A name that does not resolve is left to the call itself (a webhook is retried).
        assert!(strict
            .check_destination("https://nowhere.example.test/")
            .await
            .is_ok());
        let open = outbound(true).with_hosts(hosts);
        assert!(open
            .check_destination("http://hooks.example.test/h")
            .await
            .is_ok());
        assert!(matches!(
            open.check_destination("http://metadata.example.test/")
                .await,
            Err(OutboundError::Refused(_))
        ));
    }

    #[test]
    fn settings_default_and_deserialize() {
        let defaults = OutboundSettings::default();
        assert_eq!(defaults.fetch_max_bytes, 20 * 1024 * 1024);
        assert_eq!(defaults.fetch_timeout_ms, 10_000);
        assert!(defaults.allow_private_addresses && defaults.allow_loopback_addresses);
        let parsed: OutboundSettings =
            serde_json::from_str(r#"{"fetch_max_bytes": 5}"#).expect("valid");
        assert_eq!(parsed.fetch_max_bytes, 5);
        assert_eq!(parsed.webhook_timeout_ms, 10_000);
        assert!(serde_json::from_str::<OutboundSettings>(r#"{"fetch_max_byte": 5}"#).is_err());
    }

    #[test]
    fn error_transience() {
        assert!(OutboundError::Timeout.is_transient());
        assert!(OutboundError::Status(503).is_transient());
        assert!(!OutboundError::Status(404).is_transient());
        assert!(!OutboundError::TooLarge { limit: 1 }.is_transient());
    }

    /// A 1x1 PNG.
    const PNG: &[u8] = &[
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f,
        0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00,
        0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49,
        0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ];
    /// Size limit used by the tests; the "big" routes serve more than this.
    const TEST_LIMIT: u64 = 1000;

    /// Webhook deliveries the test server received: (signature header, body).
    type Received = Arc<Mutex<Vec<(Option<String>, Bytes)>>>;

    async fn hook(req: HttpRequest, body: Bytes, received: web::Data<Received>) -> HttpResponse {
        let signature = req
            .headers()
            .get("webhook-signature")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        received.lock().expect("lock").push((signature, body));
        match req.match_info().get("outcome") {
            Some("ok") => HttpResponse::NoContent().finish(),
            // A large error body: post_webhook must still return promptly with the status.
            _ => HttpResponse::InternalServerError().body(vec![b'x'; 1024 * 1024]),
        }
    }

    /// Starts the test server on a free port and returns its base URL and what it received.
    fn start_server() -> (String, Received) {
        let received: Received = Arc::default();
        let data = web::Data::new(received.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(
                    "/image.png",
                    web::get()
                        .to(|| async { HttpResponse::Ok().content_type("image/png").body(PNG) }),
                )
                .route(
                    "/big-declared.png",
                    web::get().to(|| async {
                        HttpResponse::Ok().content_type("image/png").body(vec![
                            0u8;
                            TEST_LIMIT as usize
                                + 1
                        ])
                    }),
                )
                .route(
                    "/big-streamed.png",
                    web::get().to(|| async {
                        // Chunked, no Content-Length: only the streaming check can catch it.
                        let chunks =
                            (0..20).map(|_| Ok::<_, actix_web::Error>(Bytes::from(vec![0u8; 100])));
                        HttpResponse::Ok()
                            .content_type("image/png")
                            .streaming(futures_util::stream::iter(chunks))
                    }),
                )
                .route(
                    "/page.html",
                    web::get().to(|| async {
                        HttpResponse::Ok()
                            .content_type("text/html; charset=utf-8")
                            .body("<p>hi</p>")
                    }),
                )
                .route(
                    "/slow.png",
                    web::get().to(|| async {
                        actix_rt::time::sleep(Duration::from_secs(5)).await;
                        HttpResponse::Ok().content_type("image/png").body(PNG)
                    }),
                )
                .route("/missing.png", web::get().to(HttpResponse::NotFound))
                .route(
                    "/redirect",
                    web::get().to(|| async {
                        HttpResponse::Found()
                            .insert_header((header::LOCATION, "/image.png"))
                            .finish()
                    }),
                )
                .route(
                    "/redirect-to",
                    web::get().to(
                        |q: web::Query<std::collections::HashMap<String, String>>| async move {
                            HttpResponse::Found()
                                .insert_header((
                                    header::LOCATION,
                                    q.get("to").cloned().unwrap_or_default(),
                                ))
                                .finish()
                        },
                    ),
                )
                .route(
                    "/redirect-loop",
                    web::get().to(|| async {
                        HttpResponse::Found()
                            .insert_header((header::LOCATION, "/redirect-loop"))
                            .finish()
                    }),
                )
                .route(
                    "/redirect-file",
                    web::get().to(|| async {
                        HttpResponse::Found()
                            .insert_header((header::LOCATION, "file:///etc/passwd"))
                            .finish()
                    }),
                )
                .route("/hook/{outcome}", web::post().to(hook))
                .route(
                    "/hook-slow",
                    web::post().to(|| async {
                        actix_rt::time::sleep(Duration::from_secs(5)).await;
                        HttpResponse::Ok().finish()
                    }),
                )
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("bind a free port");
        let port = server.addrs()[0].port();
        actix_rt::spawn(server.run());
        (format!("http://127.0.0.1:{port}"), received)
    }

    fn test_outbound() -> Outbound {
        Outbound::new(OutboundSettings {
            fetch_max_bytes: TEST_LIMIT,
            fetch_timeout_ms: 500,
            webhook_timeout_ms: 500,
            allow_private_addresses: true,
            allow_loopback_addresses: true,
        })
    }

    /// `test_outbound` where `hooks.test` resolves to the test server (127.0.0.1) and loopback
    /// is allowed or not.
    fn named_outbound(allow_loopback: bool) -> Outbound {
        let mut out = test_outbound();
        out.settings.allow_loopback_addresses = allow_loopback;
        out.with_hosts([("hooks.test", IpAddr::from([127, 0, 0, 1]))])
    }

    /// The test server's base URL with its address replaced by `hooks.test`.
    fn by_name(base: &str) -> String {
        base.replace("127.0.0.1", "hooks.test")
    }

    #[actix_web::test]
    async fn a_name_that_resolves_to_loopback_is_reached_only_when_loopback_is_allowed() {
        let (base, received) = start_server();
        let url = format!("{}/hook/ok", by_name(&base));

        let refused = named_outbound(false)
            .post_webhook(&url, Bytes::from_static(b"{}"), &[])
            .await;
        match &refused {
            Err(OutboundError::Refused(reason)) => {
                assert!(
                    reason.contains("hooks.test resolves to 127.0.0.1"),
                    "{reason}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(refused
            .as_ref()
            .err()
            .is_some_and(OutboundError::is_transient));
        assert!(
            received.lock().expect("lock").is_empty(),
            "nothing was sent"
        );
        let fetched = named_outbound(false)
            .fetch_image(&format!("{}/image.png", by_name(&base)))
            .await;
        assert!(
            matches!(fetched, Err(OutboundError::Refused(_))),
            "{fetched:?}"
        );

        let status = named_outbound(true)
            .post_webhook(&url, Bytes::from_static(b"{}"), &[])
            .await
            .expect("delivered by name");
        assert_eq!(status, 204);
        assert_eq!(received.lock().expect("lock").len(), 1);
    }

    #[actix_web::test]
    async fn every_redirect_hop_is_resolved_and_checked() {
        // Hop one is the (loopback, allowed) test server; hop two is refused before any connection.
        let (base, _) = start_server();
        let out = test_outbound().with_hosts([
            ("hooks.test", IpAddr::from([127, 0, 0, 1])),
            ("metadata.test", IpAddr::from([169, 254, 169, 254])),
        ]);
        for target in [
            "http://metadata.test/latest/meta-data",
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:a9fe:a9fe]/latest/meta-data",
        ] {
            let to: String = url::form_urlencoded::byte_serialize(target.as_bytes()).collect();
            let url = format!("{}/redirect-to?to={to}", by_name(&base));
            match out.fetch_image(&url).await {
                Err(OutboundError::Refused(reason)) => {
                    assert!(reason.contains("169.254.169.254"), "{target}: {reason}")
                }
                other => panic!("{target}: expected a refusal, got {other:?}"),
            }
        }
        let url = format!(
            "{}/redirect-to?to={}/image.png",
            by_name(&base),
            by_name(&base)
        );
        let (bytes, _) = out
            .fetch_image(&url)
            .await
            .expect("an allowed hop is followed");
        assert_eq!(&bytes[..], PNG);
    }

    #[actix_web::test]
    async fn fetch_image_returns_bytes_and_content_type() {
        let (base, _) = start_server();
        let (bytes, content_type) = test_outbound()
            .fetch_image(&format!("{base}/image.png"))
            .await
            .expect("image");
        assert_eq!(&bytes[..], PNG);
        assert_eq!(content_type, "image/png");
    }

    #[actix_web::test]
    async fn fetch_image_follows_a_redirect_but_checks_each_hop() {
        let (base, _) = start_server();
        let out = test_outbound();
        let (bytes, _) = out
            .fetch_image(&format!("{base}/redirect"))
            .await
            .expect("redirected image");
        assert_eq!(&bytes[..], PNG);
        assert!(matches!(
            out.fetch_image(&format!("{base}/redirect-file")).await,
            Err(OutboundError::BadUrl(_))
        ));
        assert!(matches!(
            out.fetch_image(&format!("{base}/redirect-loop")).await,
            Err(OutboundError::TooManyRedirects)
        ));
    }

    #[actix_web::test]
    async fn fetch_image_refuses_too_large_bodies_declared_or_streamed() {
        let (base, _) = start_server();
        let out = test_outbound();
        for path in ["/big-declared.png", "/big-streamed.png"] {
            let result = out.fetch_image(&format!("{base}{path}")).await;
            assert!(
                matches!(result, Err(OutboundError::TooLarge { limit: TEST_LIMIT })),
                "{path}: {result:?}"
            );
        }
    }

    #[actix_web::test]
    async fn fetch_image_refuses_wrong_content_type_and_error_status() {
        let (base, _) = start_server();
        let out = test_outbound();
        match out.fetch_image(&format!("{base}/page.html")).await {
            Err(OutboundError::BadContentType(ct)) => assert!(ct.starts_with("text/html"), "{ct}"),
            other => panic!("expected BadContentType, got {other:?}"),
        }
        assert!(matches!(
            out.fetch_image(&format!("{base}/missing.png")).await,
            Err(OutboundError::Status(404))
        ));
    }

    #[actix_web::test]
    async fn fetch_image_times_out_on_a_slow_server() {
        let (base, _) = start_server();
        let started = std::time::Instant::now();
        let result = test_outbound()
            .fetch_image(&format!("{base}/slow.png"))
            .await;
        assert!(matches!(result, Err(OutboundError::Timeout)), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[actix_web::test]
    async fn fetch_image_reports_connection_refused() {
        // Bind then drop a listener: its port is (almost certainly) closed right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let result = test_outbound()
            .fetch_image(&format!("http://127.0.0.1:{port}/x.png"))
            .await;
        assert!(
            matches!(result, Err(OutboundError::Connect(_))),
            "{result:?}"
        );
    }

    #[actix_web::test]
    async fn post_webhook_delivers_body_and_headers_and_returns_any_status() {
        // Arrange
        let (base, received) = start_server();
        let out = test_outbound();
        let body = Bytes::from_static(br#"{"type":"job.completed"}"#);
        let signature = sign_webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_1", 1, &body);
        let headers = vec![
            ("webhook-id".to_owned(), "msg_1".to_owned()),
            ("webhook-signature".to_owned(), signature.clone()),
        ];

        // Act
        let ok = out
            .post_webhook(&format!("{base}/hook/ok"), body.clone(), &headers)
            .await
            .expect("delivered");
        let failed = out
            .post_webhook(&format!("{base}/hook/fail"), body.clone(), &headers)
            .await
            .expect("a status, even an error one");

        // Assert
        assert_eq!(ok, 204);
        assert_eq!(failed, 500);
        let received = received.lock().expect("lock");
        assert_eq!(received.len(), 2);
        assert_eq!(received[0], (Some(signature), body));
    }

    #[actix_web::test]
    async fn post_webhook_times_out_and_refuses_bad_headers() {
        let (base, _) = start_server();
        let out = test_outbound();
        let result = out
            .post_webhook(&format!("{base}/hook-slow"), Bytes::from_static(b"{}"), &[])
            .await;
        assert!(matches!(result, Err(OutboundError::Timeout)), "{result:?}");
        let bad = [("bad header".to_owned(), "x".to_owned())];
        let result = out
            .post_webhook(&format!("{base}/hook/ok"), Bytes::from_static(b"{}"), &bad)
            .await;
        assert!(
            matches!(result, Err(OutboundError::BadHeader(_))),
            "{result:?}"
        );
    }
}

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
//! Layout: `mod.rs` the settings, the error, the per-thread client and the URL checks; `fetch.rs`
//! input images by URL; `webhook.rs` deliveries and their signature; `address.rs` the address policy
//! and the resolver that enforces it on every connection.
//!
//! `awc::Client` is `!Send`, so [`Outbound`] holds only settings and each thread builds its own
//! client on first use. Calls must run on an actix runtime (an actix System, an actix-web worker or
//! `#[actix_web::test]`), because awc's connection pool spawns local tasks.

mod address;
mod fetch;
#[cfg(test)]
mod tests;
mod webhook;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use awc::error::SendRequestError;
use awc::http::header;
use serde::Deserialize;

use crate::budget::BudgetError;
pub use address::{classify, AddressClass, AddressPolicy, LookupError};
use address::{Lookup, PolicyResolver};
pub use webhook::sign_webhook;

/// Longest URL accepted from a client; longer ones are refused before any parsing work.
const MAX_URL_LEN: usize = 8 * 1024;
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
    /// The request's share of the memory budget could not hold the image.
    #[error("{0}")]
    Budget(#[from] BudgetError),
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
            OutboundError::Budget(e) => *e == BudgetError::Busy,
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
}

//! API keys: who may call which route.
//!
//! Off unless keys exist (comfyd stays a drop-in for the service it replaces, which had none): with no
//! key in `[auth] keys` and none ever added to the database, every route is open. Otherwise a request
//! carries `Authorization: Bearer <key>`, and each handler names what it needs by taking one of the
//! extractors: [`Submitter`] (a `submit` or `admin` key: submit, the workflows, and its own tasks) or
//! [`Admin`] (an `admin` key: every task, redeliveries, backends, and whatever operator route comes
//! next). `/healthz` takes neither. A missing or unknown key is 401 with `WWW-Authenticate: Bearer`, a
//! submit key on an admin route 403, and another key's task 404, as if it did not exist, so task
//! ids cannot be probed.
//!
//! Keys are held as SHA-256 hashes only (keys are random 256-bit strings, so a plain hash is enough),
//! compared in constant time against every key in force. Database keys (`comfyd keys add`) are read
//! at start and again every [`REFRESH_EVERY`], so an added or revoked key takes effect within that.

use std::future::{ready, Ready};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use sea_orm::{ConnectionTrait, DbErr};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::config::AuthSettings;
use crate::db;
use crate::entity::task;

/// How often keys added or revoked in the database are picked up.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Submit, list and read its own tasks, cancel them; read the workflows.
    Submit,
    /// Everything.
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "submit" => Some(Scope::Submit),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }
}

/// The SHA-256 of a key, as stored (lower-case hex).
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One key in force: its name, scope and hash.
#[derive(Clone, Debug)]
struct KeyEntry {
    name: String,
    scope: Scope,
    hash: [u8; 32],
}

impl KeyEntry {
    fn new(name: &str, scope: &str, hex_hash: &str) -> Option<KeyEntry> {
        let mut hash = [0u8; 32];
        if hex_hash.len() != 64 {
            return None;
        }
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex_hash.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(KeyEntry {
            name: name.to_string(),
            scope: Scope::parse(scope)?,
            hash,
        })
    }
}

#[derive(Debug, Default)]
struct FromDatabase {
    /// Keys not revoked.
    active: Vec<KeyEntry>,
    /// Whether the database ever held a key: revoking the last one closes the API, not opens it.
    any: bool,
}

/// The keys in force: the configuration's, and the database's as last read. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    config: Arc<Vec<KeyEntry>>,
    db: Arc<RwLock<FromDatabase>>,
}

impl ApiKeys {
    /// The configured keys (already validated by `Settings`; an entry that does not parse is skipped).
    pub fn from_settings(settings: &AuthSettings) -> ApiKeys {
        let config = settings
            .keys
            .iter()
            .filter_map(|k| KeyEntry::new(&k.name, &k.scope, &k.sha256))
            .collect();
        ApiKeys {
            config: Arc::new(config),
            db: Arc::default(),
        }
    }

    /// Reads the database's keys again.
    pub async fn refresh<C: ConnectionTrait>(&self, db: &C) -> Result<(), DbErr> {
        let rows = db::api_keys::all(db).await?;
        let fresh = FromDatabase {
            any: !rows.is_empty(),
            active: rows
                .iter()
                .filter(|k| k.revoked_at.is_none())
                .filter_map(|k| KeyEntry::new(&k.name, &k.scope, &k.key_hash))
                .collect(),
        };
        match self.db.write() {
            Ok(mut g) => *g = fresh,
            Err(p) => *p.into_inner() = fresh,
        }
        Ok(())
    }

    /// Whether requests must carry a key.
    pub fn enabled(&self) -> bool {
        !self.config.is_empty() || self.read_db(|d| d.any)
    }

    fn read_db<T>(&self, f: impl FnOnce(&FromDatabase) -> T) -> T {
        // A poisoned lock only means a refresh panicked; the keys it holds are still whole.
        match self.db.read() {
            Ok(g) => f(&g),
            Err(p) => f(&p.into_inner()),
        }
    }

    /// The key in force whose hash is the presented key's. Every key is compared, in constant time.
    fn find(&self, presented: &str) -> Option<(String, Scope)> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        let mut check = |k: &KeyEntry| {
            if bool::from(k.hash.ct_eq(&hash)) && found.is_none() {
                found = Some((k.name.clone(), k.scope));
            }
        };
        self.config.iter().for_each(&mut check);
        self.read_db(|d| d.active.iter().for_each(&mut check));
        found
    }

    /// Who is calling, and whether a route needing `needs` lets them in.
    fn authorize(&self, req: &HttpRequest, needs: Scope) -> Result<Caller, ApiError> {
        if !self.enabled() {
            return Ok(Caller::Anyone);
        }
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(header) = header else {
            return Err(ApiError::Unauthorized {
                message: "an API key is required: Authorization: Bearer <key>".into(),
                invalid: false,
            });
        };
        let key = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .ok_or_else(|| ApiError::Unauthorized {
                message: "the Authorization header must be `Bearer <key>`".into(),
                invalid: true,
            })?;
        let (name, scope) = self.find(key).ok_or_else(|| ApiError::Unauthorized {
            message: "unknown or revoked API key".into(),
            invalid: true,
        })?;
        if needs == Scope::Admin && scope != Scope::Admin {
            return Err(ApiError::Forbidden(format!(
                "this route needs an admin key; {name:?} is a submit key"
            )));
        }
        Ok(Caller::Key { name, scope })
    }
}

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No keys are in use: anyone may do anything.
    Anyone,
    /// A key, by its name and scope.
    Key { name: String, scope: Scope },
}

impl Caller {
    /// The owner recorded on tasks this caller submits: the key's name.
    pub fn owner(&self) -> Option<String> {
        match self {
            Caller::Anyone => None,
            Caller::Key { name, .. } => Some(name.clone()),
        }
    }

    /// Whether the caller sees every task (no keys in use, or an admin key).
    pub fn sees_every_task(&self) -> bool {
        matches!(
            self,
            Caller::Anyone
                | Caller::Key {
                    scope: Scope::Admin,
                    ..
                }
        )
    }

    /// The owner a task listing is limited to: None for those who see every task.
    pub fn listing_owner(&self) -> Option<String> {
        if self.sees_every_task() {
            None
        } else {
            self.owner()
        }
    }

    /// Whether the caller may read and cancel this task.
    pub fn may_see(&self, task: &task::Model) -> bool {
        match self {
            _ if self.sees_every_task() => true,
            Caller::Key { name, .. } => task.owner.as_deref() == Some(name.as_str()),
            Caller::Anyone => true,
        }
    }
}

/// The task with this comfyd id or client_task_id, if the caller may see it; another key's task is
/// "not found", exactly as a task that does not exist.
pub async fn visible_task(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<task::Model, ApiError> {
    db::tasks::find(&state.db, id)
        .await?
        .filter(|t| caller.may_see(t))
        .ok_or_else(|| ApiError::NotFound(format!("no task with id or client_task_id {id:?}")))
}

fn authorize(req: &HttpRequest, needs: Scope) -> Result<Caller, ApiError> {
    let state = req.app_data::<web::Data<AppState>>().ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!("AppState is missing from the app data"))
    })?;
    state.keys.authorize(req, needs)
}

/// A route for `submit` keys (and `admin` ones): submitting, the workflows, one's own tasks.
pub struct Submitter(pub Caller);

impl FromRequest for Submitter {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authorize(req, Scope::Submit).map(Submitter))
    }
}

/// A route for `admin` keys only.
pub struct Admin(pub Caller);

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authorize(req, Scope::Admin).map(Admin))
    }
}

/// Whether the listen address can only be reached from this host (no warning about open access).
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKeySetting;
    use actix_web::test::TestRequest;

    fn keys() -> ApiKeys {
        ApiKeys::from_settings(&AuthSettings {
            keys: vec![
                ApiKeySetting {
                    name: "app".into(),
                    scope: "submit".into(),
                    sha256: hash_key("k-app"),
                },
                ApiKeySetting {
                    name: "ops".into(),
                    scope: "admin".into(),
                    sha256: hash_key("k-ops"),
                },
            ],
        })
    }

    fn with(header: Option<&str>) -> HttpRequest {
        let mut req = TestRequest::default();
        if let Some(h) = header {
            req = req.insert_header(("authorization", h));
        }
        req.to_http_request()
    }

    #[test]
    fn hash_key_is_the_sha256_in_hex() {
        // printf abc | sha256sum
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn no_keys_means_open() {
        let open = ApiKeys::default();
        assert!(!open.enabled());
        assert_eq!(
            open.authorize(&with(None), Scope::Admin).ok(),
            Some(Caller::Anyone)
        );
    }

    #[test]
    fn keys_are_checked_by_scope() {
        let keys = keys();
        assert!(keys.enabled());
        for (header, invalid) in [
            (None, false),
            (Some("Bearer nope"), true),
            (Some("Basic k-app"), true),
            (Some("Bearer"), true),
        ] {
            match keys.authorize(&with(header), Scope::Submit) {
                Err(ApiError::Unauthorized { invalid: i, .. }) => {
                    assert_eq!(i, invalid, "{header:?}")
                }
                other => panic!("{header:?}: expected 401, got {other:?}"),
            }
        }
        let app = keys
            .authorize(&with(Some("Bearer k-app")), Scope::Submit)
            .expect("submit key on a submit route");
        assert_eq!(app.listing_owner().as_deref(), Some("app"));
        assert!(matches!(
            keys.authorize(&with(Some("bearer k-app")), Scope::Admin),
            Err(ApiError::Forbidden(_))
        ));
        let ops = keys
            .authorize(&with(Some("Bearer k-ops")), Scope::Admin)
            .expect("admin key");
        assert!(ops.sees_every_task());
        assert_eq!(ops.owner().as_deref(), Some("ops"));
    }

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1", "::1", "[::1]", "localhost", "127.1.2.3"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["0.0.0.0", "::", "10.0.0.1", "example.com"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}

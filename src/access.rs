//! API keys and callers: the access domain, free of HTTP. Who talks to it: `routes::auth` (the
//! extractors that ask it who is calling), `startup` (loads and refreshes the keys), `cli::keys`
//! (makes and stores keys) and the submit service (`intake`, which records a task's owner).
//!
//! Keys are held as SHA-256 hashes only (keys are random 256-bit strings, so a plain hash is enough),
//! compared in constant time against every key in force. Database keys (`comfyd keys add`) are read
//! at start and again every [`REFRESH_EVERY`], so an added or revoked key takes effect within that.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use rand::RngCore;
use sea_orm::{ConnectionTrait, DbErr};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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

/// A new random key: `cfd_` and 256 random bits, base64url.
pub fn new_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "cfd_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
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
    pub fn find(&self, presented: &str) -> Option<(String, Scope)> {
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

    #[test]
    fn hash_key_is_the_sha256_in_hex() {
        // printf abc | sha256sum
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
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

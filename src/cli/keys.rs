//! `comfyd keys`: API keys, made and stored by the operator. A key is shown once, when it is made;
//! only its SHA-256 is kept (in the database, or in the configuration entry `generate` prints).

use anyhow::{bail, Context};
use chrono::Utc;

use crate::access::{hash_key, new_key, Scope};
use crate::config::Settings;
use crate::db;
use crate::entity::api_key;

fn check(name: &str, scope: &str) -> anyhow::Result<Scope> {
    if name.trim().is_empty() || name.len() > 64 {
        bail!("--name must be 1 to 64 characters");
    }
    Scope::parse(scope).with_context(|| format!("--scope must be submit or admin, not {scope:?}"))
}

/// `comfyd keys generate`: a key and the configuration entry for it; nothing is stored.
pub fn generate(name: &str, scope: &str) -> anyhow::Result<()> {
    let scope = check(name, scope)?;
    let key = new_key();
    let hash = hash_key(&key);
    println!("key (shown only now): {key}");
    println!("config/*.toml, [auth] keys:");
    println!(
        "  {{ name = {name:?}, scope = \"{}\", sha256 = \"{hash}\" }}",
        scope.as_str()
    );
    println!("or COMFYD_API_KEYS={name}:{}:{hash}", scope.as_str());
    Ok(())
}

/// `comfyd keys add`: stores a new key's hash in the database and prints the key once.
pub async fn add(settings: &Settings, name: &str, scope: &str) -> anyhow::Result<()> {
    let scope = check(name, scope)?;
    let db = db::connect::open(&settings.database_url(), 1).await?;
    let key = new_key();
    let id = uuid::Uuid::new_v4().to_string();
    db::api_keys::insert(
        &db,
        api_key::Model {
            id: id.clone(),
            name: name.to_string(),
            scope: scope.as_str().to_string(),
            key_hash: hash_key(&key),
            created_at: Utc::now(),
            revoked_at: None,
        },
    )
    .await?;
    println!("added {} key {name:?} (id {id})", scope.as_str());
    println!("key (shown only now): {key}");
    println!("a running comfyd accepts it within a few seconds");
    Ok(())
}

/// `comfyd keys list`: the database's keys (never the keys themselves).
pub async fn list(settings: &Settings) -> anyhow::Result<()> {
    let db = db::connect::open(&settings.database_url(), 1).await?;
    let keys = db::api_keys::all(&db).await?;
    println!(
        "{:<36}  {:<6}  {:<20}  {:<25}  revoked",
        "id", "scope", "name", "created"
    );
    for k in keys {
        let revoked = k
            .revoked_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<36}  {:<6}  {:<20}  {:<25}  {revoked}",
            k.id,
            k.scope,
            k.name,
            k.created_at.to_rfc3339()
        );
    }
    if !settings.auth.keys.is_empty() {
        println!(
            "(and {} keys in the configuration)",
            settings.auth.keys.len()
        );
    }
    Ok(())
}

/// `comfyd keys revoke`: the key with this id, or every key with this name, stops working.
pub async fn revoke(settings: &Settings, id_or_name: &str) -> anyhow::Result<u64> {
    let db = db::connect::open(&settings.database_url(), 1).await?;
    let n = db::api_keys::revoke(&db, id_or_name).await?;
    if n == 0 {
        bail!("no active key with id or name {id_or_name:?}");
    }
    println!("revoked {n} key(s); a running comfyd refuses them within a few seconds");
    Ok(n)
}

//! `comfyd release publish|list|show|check`: releases from the command line, on the database of the
//! configuration (the same rows `POST {prefix}/releases` writes; `check` is the readiness route's
//! `crate::readiness`, on the configuration's backends).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::db::{self, releases::NewRelease, releases::Outcome};
use crate::readiness::{self, ReadinessError};
use crate::release::{self, CheckOptions, PublishError, ReleaseRecord, Snapshot};

/// `comfyd release publish [--from URL] [--note TEXT]`: snapshots the workflows folder into a
/// release; exit code 1, with every problem listed, when it cannot.
pub async fn publish(
    settings: &Settings,
    dir: &Path,
    from: Option<&str>,
    note: Option<String>,
) -> anyhow::Result<ExitCode> {
    let snapshot = match Snapshot::of_dir(dir) {
        Ok(s) => s,
        Err(e) => {
            println!("FAILED: workflows in {} do not load:\n{e}", dir.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let draft = match release::prepare(snapshot, from, note).await {
        Ok(d) => d,
        Err(PublishError::Missing { server, missing }) => {
            println!("FAILED: {server} lacks what the workflows need:");
            for p in missing.problems() {
                println!("  - {p}");
            }
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            println!("FAILED: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let db = db::connect::open(&settings.database_url(), 1).await?;
    let row = NewRelease::of(&draft).context("encoding the release")?;
    let (stored, outcome) = db::releases::insert_or_existing(&db, row).await?;
    match outcome {
        Outcome::Created => println!(
            "published release {} {} (new; {} workflows)",
            stored.version,
            stored.content_hash,
            draft.snapshot.files.len()
        ),
        Outcome::Existing => println!(
            "release {} {} (unchanged: the same content as version {})",
            stored.version, stored.content_hash, stored.version
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `comfyd release list`: the newest releases first.
pub async fn list(settings: &Settings, limit: u64) -> anyhow::Result<()> {
    let db = db::connect::open(&settings.database_url(), 1).await?;
    println!(
        "{:>7}  {:<25}  {:<20}  {:<30}  note",
        "version", "created", "hash", "workflows"
    );
    for row in db::releases::list(&db, limit).await? {
        let r = ReleaseRecord::of(&row, false).context("reading a stored release")?;
        let short: String = r.content_hash.chars().take(19).collect();
        println!(
            "{:>7}  {:<25}  {:<20}  {:<30}  {}",
            r.version,
            r.created_at.to_rfc3339(),
            short,
            r.workflows.join(","),
            r.note.unwrap_or_default()
        );
    }
    Ok(())
}

/// `comfyd release show N`: one release as JSON (its files included).
pub async fn show(settings: &Settings, version: i32) -> anyhow::Result<ExitCode> {
    let db = db::connect::open(&settings.database_url(), 1).await?;
    let Some(row) = db::releases::get(&db, version).await? else {
        println!("no release {version}");
        return Ok(ExitCode::FAILURE);
    };
    let r = ReleaseRecord::of(&row, true).context("reading a stored release")?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(ExitCode::SUCCESS)
}

/// `comfyd release check N [--smoke-timeout-secs S]`: every configured backend against release N,
/// one block per backend (recorded in `backend_checks`); exit code 0 when all are ready, 1 otherwise.
pub async fn check(
    settings: &Settings,
    version: i32,
    smoke_timeout_secs: u64,
) -> anyhow::Result<ExitCode> {
    let max = release::check::MAX_SMOKE_TIMEOUT.as_secs();
    if !(1..=max).contains(&smoke_timeout_secs) {
        println!("--smoke-timeout-secs must be 1 to {max}");
        return Ok(ExitCode::FAILURE);
    }
    let options = CheckOptions {
        smoke_timeout: std::time::Duration::from_secs(smoke_timeout_secs),
    };
    let db = db::connect::open(&settings.database_url(), 1).await?;
    let r = match readiness::check_release(&db, settings, version, options).await {
        Ok(r) => r,
        Err(ReadinessError::NotFound(n)) => {
            println!("no release {n}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    println!("release {}", r.release);
    for b in &r.backends {
        println!(
            "{}: {} (ComfyUI {}, checked {})",
            b.backend,
            if b.ready { "ready" } else { "NOT READY" },
            b.comfyui_version.as_deref().unwrap_or("?"),
            b.checked_at.to_rfc3339()
        );
        for reason in &b.reasons {
            println!("  - {reason}");
        }
    }
    Ok(if r.all_ready() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

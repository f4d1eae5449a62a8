//! `comfyd release publish|list|show`: releases from the command line, on the database of the
//! configuration (the same rows `POST {prefix}/releases` writes).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::Settings;
use crate::db::{self, releases::NewRelease, releases::Outcome};
use crate::release::{self, PublishError, ReleaseRecord, Snapshot};

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

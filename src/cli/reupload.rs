//! `comfyd reupload`: stores again every output kept in the fallback folder (after a storage outage)
//! and brings its task up to date: once all of a task's outputs are stored, a task that failed with
//! error_code 2 becomes `done` with error_code 0 and its `s3_key`. Safe to run while comfyd runs and to
//! run twice: an output is marked stored before its fallback file is removed.
//!
//! It sends no second webhook: the client was told error_code 2 once, and `GET /tasks/{id}` now says
//! `done`. (A client that wants a push can be sent one with the redeliver API.)

use std::path::PathBuf;

use anyhow::Context;
use chrono::Utc;
use sea_orm::TransactionTrait;
use serde_json::json;

use crate::config::Settings;
use crate::db::{self, events::Event, outputs::OutputMark, tasks::TaskPatch};
use crate::task::{error_code, Status};

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub stored: usize,
    pub still_failing: usize,
    pub tasks_done: usize,
}

pub async fn run(settings: &Settings) -> anyhow::Result<Report> {
    let db = db::connect::open(&settings.database_url(), settings.database.max_connections).await?;
    let storage = crate::startup::build_store(settings)?;
    let mut report = Report::default();
    let fallback_dir = settings.fallback_dir();
    let mut tasks = std::collections::BTreeSet::new();
    for o in db::outputs::in_fallback(&db).await? {
        let Some(path) = o.fallback_path.clone().map(PathBuf::from) else {
            continue;
        };
        // The recorded path is read and then removed: only ever one in the fallback folder.
        let path = match crate::paths::check_under(&fallback_dir, &path) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{}: {e}", o.storage_key);
                report.still_failing += 1;
                continue;
            }
        };
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{}: cannot read {}: {e}", o.storage_key, path.display());
                report.still_failing += 1;
                continue;
            }
        };
        match storage
            .put(&o.storage_key, bytes.into(), &o.content_type)
            .await
        {
            Ok(()) => {
                let mark = OutputMark {
                    node_id: o.node_id.clone(),
                    idx: o.idx,
                    stored: true,
                    content_type: o.content_type.clone(),
                    size: o.size,
                    fallback_path: None,
                };
                db::outputs::mark(&db, &o.task_id, &mark).await?;
                // Recorded as stored first: a crash here leaves a stray file, never a lost output.
                if let Err(e) = tokio::fs::remove_file(&path).await {
                    eprintln!(
                        "stored {}, but could not remove {}: {e}",
                        o.storage_key,
                        path.display()
                    );
                }
                println!("stored {}", o.storage_key);
                report.stored += 1;
                tasks.insert(o.task_id.clone());
            }
            Err(e) => {
                eprintln!("{}: still cannot store: {e}", o.storage_key);
                report.still_failing += 1;
            }
        }
    }
    for task_id in tasks {
        let outputs = db::outputs::for_task(&db, &task_id).await?;
        if outputs.is_empty() || outputs.iter().any(|o| !o.stored) {
            continue;
        }
        let Some(task) = db::tasks::get(&db, &task_id).await? else {
            continue;
        };
        if task.status != Status::Failed.as_str() || task.error_code != error_code::UPLOAD_FAILED {
            continue;
        }
        let patch = TaskPatch {
            s3_key: Some(outputs[0].storage_key.clone()),
            error_code: Some(error_code::OK),
            clear_error: true,
            finished_at: Some(Utc::now()),
            ..Default::default()
        };
        let event = Event::new("reuploaded", json!({ "outputs": outputs.len() }));
        let txn = db.begin().await?;
        let mut appends = db::appends::Appends::default();
        let updated = db::tasks::transition(
            &txn,
            &task_id,
            &[Status::Failed],
            Status::Done,
            &patch,
            Some(&event),
            &mut appends,
        )
        .await
        .context("updating task")?;
        appends.write(&txn).await?;
        txn.commit().await?;
        if updated {
            println!("task {task_id}: done");
            report.tasks_done += 1;
        }
    }
    Ok(report)
}

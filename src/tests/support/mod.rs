//! Helpers shared by the integration tests: real servers started for a test and stopped after.
//!
//! - [`s3`]: an S3-compatible server (s3s-fs);
//! - [`sim`]: ComfyUI simulators (the `comfy-sim` binary of this repository);
//! - [`webhook`]: a webhook receiver that can answer any status, or hang;
//! - [`db`]: a fresh SQLite file or PostgreSQL database;
//! - [`daemon`]: the real `comfyd` binary, as its own process, with typed API helpers.

pub mod daemon;
pub mod db;
pub mod images;
pub mod s3;
pub mod sim;
pub mod webhook;

use std::net::TcpListener;

use chrono::Utc;
use comfyd::db::tasks::NewTask;
use serde_json::json;

/// A port that was free a moment ago (the caller binds it right away).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind :0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A new task of the `solid` workflow with an empty graph, for tests that write the store without
/// the HTTP API; `callback` is its webhook URL.
pub fn new_task(id: &str, callback: Option<&str>) -> NewTask {
    NewTask {
        id: id.to_owned(),
        client_task_id: None,
        client_callback_url: callback.map(str::to_owned),
        workflow: "solid".into(),
        request_hash: "0".repeat(64),
        params: json!({}),
        graph: json!({}),
        inputs: json!([]),
        output_nodes: json!(["9"]),
        priority: 0,
        deadline_at: Utc::now() + chrono::Duration::minutes(5),
        owner: None,
        prompt_id: None,
        release_version: None,
    }
}

/// Polls `check` every 50 ms until it returns Some, or panics with `what` after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The task ended exactly once: one terminal event (`stored`, `failed` or `cancelled`) in the database.
pub async fn assert_one_terminal_event(db: &sea_orm::DatabaseConnection, id: &str) {
    let events = comfyd::db::events::for_task(db, id).await.expect("events");
    let terminal = events
        .iter()
        .filter(|e| matches!(e.kind.as_str(), "stored" | "failed" | "cancelled"))
        .count();
    assert_eq!(
        terminal,
        1,
        "task {id}: {:?}",
        events.iter().map(|e| &e.kind).collect::<Vec<_>>()
    );
}

/// A copy of the shipped workflows folder in a temporary folder: a draft a test may change and
/// publish as a release.
pub fn workflows_draft() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("draft dir");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
    for entry in std::fs::read_dir(shipped).expect("workflows dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
    }
    dir
}

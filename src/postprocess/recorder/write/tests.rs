//! The batched write path and the one-by-one path leave the same rows.
//!
//! The same writes (new tasks and a retried submit, claims, a running mark, executed records with
//! outputs, terminal states with output marks and webhooks, a requeue, a cancel, a webhook attempt,
//! a redelivery, events, a finish that no longer applies) are written into two fresh databases: once
//! as one batch ([`write_batch`]: its new tasks in a transaction, the rest in another, a task's start,
//! executed record and end combined by [`plan`] into one UPDATE), once one write per transaction
//! ([`write_alone`], what the Recorder falls back to when a batch fails). Then every table is read
//! and compared, and so is what each write answered. On SQLite (a temp file) and on PostgreSQL (a
//! fresh database on the local server).
//!
//! Only what must differ between two runs is left out of the comparison: row ids the database
//! numbers, the ids of webhooks (random), and the times the write functions take from the clock
//! (`created_at`, `updated_at`, an `accepted` or `notified` event's time, a delivery's
//! `next_attempt_at` after a redelivery, `delivered_at`, an attempt's time). Every time the writes
//! carry is fixed, and compared.

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use chrono::{DateTime, TimeZone, Utc};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbErr, EntityTrait};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::super::messages::{
    Claim, Finish, MarkStarted, RecordEvent, RecordExecuted, Redeliver, Transition,
};
use super::{plan, write_alone, write_batch, Outcome, Step, Write, Written};
use crate::db::{
    self,
    deliveries::AttemptOutcome,
    events::Event,
    outputs::{NewOutput, OutputMark},
    tasks::{Inserted, NewTask, TaskPatch},
};
use crate::entity::{api_key, delivery, delivery_attempt, output, task, task_event};
use crate::postprocess::recorder::batch::Pending;
use crate::task::Status;

/// `secs` seconds after a fixed moment: every time a write carries.
fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0)
        .single()
        .expect("a valid time")
}

/// What a time from the clock is replaced with before comparing.
fn clock() -> DateTime<Utc> {
    at(-1_000_000)
}

fn event(kind: &'static str, details: Value, secs: i64) -> Event {
    Event {
        kind,
        details,
        at: at(secs),
    }
}

fn new_task(id: &str, client_task_id: Option<&str>, callback: bool) -> NewTask {
    NewTask {
        id: id.into(),
        client_task_id: client_task_id.map(Into::into),
        client_callback_url: callback.then(|| "http://127.0.0.1:9/hook".into()),
        workflow: "w".into(),
        request_hash: format!("hash of {}", client_task_id.unwrap_or(id)),
        params: json!({ "prompt": "a cat" }),
        graph: json!({ "9": { "class_type": "SaveImage" } }),
        inputs: json!([]),
        output_nodes: json!(["9"]),
        priority: 0,
        deadline_at: at(3600),
        owner: Some("key-1".into()),
        prompt_id: Some(format!("p-{id}")),
        release_version: None,
    }
}

fn new_output(node_id: &str, idx: i32) -> NewOutput {
    NewOutput {
        node_id: node_id.into(),
        idx,
        kind: "images".into(),
        filename: format!("out_{idx}.png"),
        subfolder: "comfyd/t".into(),
        folder_type: "output".into(),
        content_type: "image/png".into(),
        storage_key: format!("t/out_{idx}.png"),
    }
}

fn claim(task_id: &str, secs: i64) -> Write {
    Write::Claim(Claim {
        task_id: task_id.into(),
        may_wait: false,
        patch: TaskPatch {
            backend: Some(Some("b0".into())),
            comfyui_task_id: Some(Some(format!("p-{task_id}"))),
            count_attempt: true,
            dispatched_at: Some(at(secs)),
            ..Default::default()
        },
        event: event("dispatched", json!({ "backend": "b0" }), secs),
    })
}

fn executed(task_id: &str, outputs: Vec<NewOutput>, secs: i64) -> Write {
    Write::RecordExecuted(RecordExecuted {
        task_id: task_id.into(),
        from: Status::ON_BACKEND.to_vec(),
        outputs,
        event: event("executed", json!({ "backend": "b0" }), secs),
    })
}

fn done(task_id: &str, marks: Vec<OutputMark>, secs: i64) -> Write {
    Write::Finish(Finish {
        task_id: task_id.into(),
        from: vec![Status::Executed],
        to: Status::Done,
        patch: TaskPatch {
            s3_key: Some(format!("{task_id}/out_0.png")),
            comfyui_filepath: Some("comfyd/t/out_0.png".into()),
            finished_at: Some(at(secs)),
            ..Default::default()
        },
        outputs: marks,
        event: event("stored", json!({ "outputs": 2 }), secs),
        give_up_at: at(secs + 86_400),
    })
}

fn note(task_id: &str, secs: i64) -> Write {
    Write::RecordEvent(RecordEvent {
        task_id: task_id.into(),
        event: event("note", json!({ "upload_retry": 1 }), secs),
    })
}

fn stored(node_id: &str, idx: i32) -> OutputMark {
    OutputMark {
        node_id: node_id.into(),
        idx,
        stored: true,
        content_type: "image/webp".into(),
        size: 1234,
        fallback_path: None,
    }
}

fn kept(node_id: &str, idx: i32) -> OutputMark {
    OutputMark {
        node_id: node_id.into(),
        idx,
        stored: false,
        content_type: "image/png".into(),
        size: 99,
        fallback_path: Some("/fallback/t/out_1.png".into()),
    }
}

/// Before the writes compared, in both databases alike: a task that failed with a webhook, whose
/// delivery the writes then attempt and redeliver. Answers that delivery's id.
async fn before(db: &DatabaseConnection) -> String {
    let writes = [
        Write::InsertTask(new_task("t0", None, true)),
        claim("t0", 1),
        Write::Finish(Finish {
            task_id: "t0".into(),
            from: Status::ON_BACKEND.to_vec(),
            to: Status::Failed,
            patch: TaskPatch {
                error_code: Some(10),
                error_message: Some("boom".into()),
                finished_at: Some(at(2)),
                ..Default::default()
            },
            outputs: vec![],
            event: event("failed", json!({ "error_code": 10 }), 2),
            give_up_at: at(86_400),
        }),
    ];
    for w in &writes {
        write_alone(db, w).await.expect("setup write");
    }
    let deliveries = db::deliveries::for_task(db, "t0")
        .await
        .expect("deliveries");
    deliveries[0].id.clone()
}

/// The writes compared, in the order they are sent; new tasks first, as a batch has them.
fn writes(delivery_id: &str) -> Vec<Write> {
    vec![
        Write::InsertTask(new_task("t1", Some("c1"), true)),
        Write::InsertTask(new_task("t2", None, true)),
        Write::InsertTask(new_task("t3", None, false)),
        // A retried submit of t1 (same client_task_id, same request): the existing task.
        Write::InsertTask(NewTask {
            id: "t1-again".into(),
            ..new_task("t1", Some("c1"), true)
        }),
        // t1: claimed, started, executed and stored (its start, executed record and end combined in
        // the batch), then an event.
        claim("t1", 10),
        Write::MarkStarted(MarkStarted {
            task_id: "t1".into(),
            backend: "b0".into(),
            prompt_id: "p-t1".into(),
            at: at(11),
        }),
        executed("t1", vec![new_output("9", 0), new_output("9", 1)], 12),
        done("t1", vec![stored("9", 0), kept("9", 1)], 13),
        note("t1", 14),
        // t2: claimed, executed and stored (executed record and end combined in the batch).
        claim("t2", 20),
        executed("t2", vec![new_output("9", 0)], 21),
        done("t2", vec![stored("9", 0)], 22),
        // t3: claimed, requeued, then cancelled from the queue (no callback URL: no webhook).
        claim("t3", 30),
        Write::Transition(Transition {
            task_id: "t3".into(),
            from: Status::ON_BACKEND.to_vec(),
            to: Status::Queued,
            patch: TaskPatch {
                backend: Some(None),
                comfyui_task_id: Some(Some("p-t3-next".into())),
                ..Default::default()
            },
            event: Some(event("requeued", json!({ "reason": "lost" }), 31)),
        }),
        Write::Finish(Finish {
            task_id: "t3".into(),
            from: vec![Status::Queued],
            to: Status::Cancelled,
            patch: TaskPatch {
                error_code: Some(10),
                error_message: Some("cancelled".into()),
                finished_at: Some(at(32)),
                ..Default::default()
            },
            outputs: vec![],
            event: event("cancelled", json!({}), 32),
            give_up_at: at(86_400),
        }),
        // t0's webhook answered, then redelivered.
        Write::RecordAttempt(AttemptOutcome {
            delivery_id: delivery_id.into(),
            task_id: "t0".into(),
            status_code: Some(204),
            error: None,
            duration_ms: 7,
            new_status: "delivered",
            next_attempt_at: at(40),
        }),
        Write::Redeliver(Redeliver {
            delivery_id: delivery_id.into(),
            give_up_at: at(41 + 86_400),
        }),
        note("t2", 42),
        // t1 again: it has ended, so this finish does not apply.
        done("t1", vec![], 43),
        Write::Flush,
    ]
}

/// What a write answered, as text to compare.
fn answer(w: &Written) -> String {
    match w {
        Written::Inserted(Inserted::New(t)) => format!("new {}", t.id),
        Written::Inserted(Inserted::Existing(t)) => format!("existing {}", t.id),
        Written::Inserted(Inserted::Conflict(t)) => format!("conflict {}", t.id),
        Written::Claimed(t) => format!("claimed {:?}", t.as_ref().map(|t| &t.id)),
        Written::Applied(a) => format!("applied {a}"),
        Written::Finished(f) => format!(
            "finished {} with webhook {}",
            f.applied,
            f.delivery.is_some()
        ),
        Written::Done => "done".into(),
    }
}

/// The writes as queued, with where each is answered.
#[allow(clippy::type_complexity)] // a test's pair of lists
fn pending(writes: Vec<Write>) -> (Vec<Pending>, Vec<oneshot::Receiver<Result<Written, DbErr>>>) {
    writes
        .into_iter()
        .map(|write| {
            let (reply, rx) = oneshot::channel();
            let p = Pending {
                write,
                reply,
                queued_at: Instant::now(),
            };
            (p, rx)
        })
        .unzip()
}

/// Writes all as one batch, as the Recorder writes a batch.
async fn batched(db: &DatabaseConnection, writes: Vec<Write>) -> Vec<String> {
    let (batch, answers) = pending(writes);
    assert!(matches!(
        write_batch(db, batch).await,
        Outcome::Answered { wrote: true }
    ));
    let mut out = Vec::new();
    for rx in answers {
        out.push(answer(&rx.await.expect("answered").expect("written")));
    }
    out
}

/// Writes each on its own, one transaction each.
async fn one_by_one(db: &DatabaseConnection, writes: Vec<Write>) -> Vec<String> {
    let mut out = Vec::new();
    for w in &writes {
        out.push(answer(&write_alone(db, w).await.expect("written")));
    }
    out
}

/// Every table's rows, in a stable order, with what must differ between two runs replaced.
#[derive(Debug, PartialEq)]
struct Rows {
    tasks: Vec<task::Model>,
    /// Each task's events, in the order they were written (their ids').
    events: Vec<task_event::Model>,
    outputs: Vec<output::Model>,
    deliveries: Vec<delivery::Model>,
    attempts: Vec<delivery_attempt::Model>,
    api_keys: Vec<api_key::Model>,
}

async fn rows(db: &DatabaseConnection) -> Rows {
    let mut tasks = task::Entity::find().all(db).await.expect("tasks");
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    for t in &mut tasks {
        t.created_at = clock();
        t.updated_at = clock();
    }
    let mut outputs = output::Entity::find().all(db).await.expect("outputs");
    outputs.sort_by(|a, b| (&a.task_id, &a.node_id, a.idx).cmp(&(&b.task_id, &b.node_id, b.idx)));
    for o in &mut outputs {
        o.id = 0;
        o.created_at = clock();
    }
    // A webhook's id is random: each is named by its task (one webhook per task here).
    let mut deliveries = delivery::Entity::find().all(db).await.expect("deliveries");
    deliveries.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let mut names = HashMap::new();
    for d in &mut deliveries {
        let name = format!("webhook of {}", d.task_id);
        names.insert(d.id.clone(), name.clone());
        d.id = name;
        d.created_at = clock();
        d.next_attempt_at = clock();
        d.delivered_at = d.delivered_at.map(|_| clock());
        let mut payload: Value = serde_json::from_str(&d.payload).expect("payload is JSON");
        payload["created_at"] = Value::Null;
        d.payload = payload.to_string();
    }
    let mut events = task_event::Entity::find().all(db).await.expect("events");
    events.sort_by(|a, b| (&a.task_id, a.id).cmp(&(&b.task_id, b.id)));
    for e in &mut events {
        e.id = 0;
        if matches!(e.kind.as_str(), "accepted" | "notified") {
            e.at = clock();
        }
        if e.kind == "notified" {
            let mut details: Value = serde_json::from_str(&e.details).expect("details are JSON");
            let id = details["delivery_id"]
                .as_str()
                .expect("a delivery id")
                .to_owned();
            details["delivery_id"] = json!(names[&id]);
            e.details = details.to_string();
        }
    }
    let mut attempts = delivery_attempt::Entity::find()
        .all(db)
        .await
        .expect("attempts");
    attempts.sort_by_key(|a| a.id);
    for a in &mut attempts {
        a.id = 0;
        a.delivery_id = names[&a.delivery_id].clone();
        a.at = clock();
    }
    let api_keys = api_key::Entity::find().all(db).await.expect("api keys");
    Rows {
        tasks,
        events,
        outputs,
        deliveries,
        attempts,
        api_keys,
    }
}

async fn the_batched_and_the_one_by_one_path_leave_the_same_rows(
    batch_db: &DatabaseConnection,
    alone_db: &DatabaseConnection,
) {
    // Arrange
    let batch_delivery = before(batch_db).await;
    let alone_delivery = before(alone_db).await;

    // The batch combines what the one-by-one path writes in three steps: t1's start, executed
    // record and end in one, t2's executed record and end in another.
    let steps = plan(&pending(writes(&batch_delivery)).0[4..]);
    assert!(steps.contains(&Step::Executed {
        started: Some(1),
        executed: 2,
        finish: Some(3)
    }));
    assert!(steps.contains(&Step::Executed {
        started: None,
        executed: 6,
        finish: Some(7)
    }));

    // Act
    let batch_answers = batched(batch_db, writes(&batch_delivery)).await;
    let alone_answers = one_by_one(alone_db, writes(&alone_delivery)).await;

    // Assert
    assert_eq!(batch_answers, alone_answers);
    let (batch_rows, alone_rows) = (rows(batch_db).await, rows(alone_db).await);
    // Not vacuous: every table but the keys has rows, and the writes all applied.
    assert_eq!(batch_rows.tasks.len(), 4);
    assert_eq!(batch_rows.outputs.len(), 3);
    assert_eq!(batch_rows.deliveries.len(), 3);
    assert_eq!(batch_rows.attempts.len(), 1);
    assert!(batch_rows.events.iter().any(|e| e.kind == "notified"));
    assert_eq!(batch_rows.tasks[1].status, "done");
    assert_eq!(batch_rows.tasks[1].started_at, Some(at(11)));
    assert_eq!(batch_rows.tasks[3].status, "cancelled");
    assert_eq!(batch_rows.tasks, alone_rows.tasks);
    assert_eq!(batch_rows.events, alone_rows.events);
    assert_eq!(batch_rows.outputs, alone_rows.outputs);
    assert_eq!(batch_rows.deliveries, alone_rows.deliveries);
    assert_eq!(batch_rows.attempts, alone_rows.attempts);
    assert_eq!(batch_rows.api_keys, alone_rows.api_keys);
}

#[actix_rt::test]
async fn the_batched_and_the_one_by_one_path_leave_the_same_rows_with_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = |name: &str| format!("sqlite://{}?mode=rwc", dir.path().join(name).display());
    let batch_db = db::connect::open(&url("batch.db"), 1)
        .await
        .expect("database");
    let alone_db = db::connect::open(&url("alone.db"), 1)
        .await
        .expect("database");
    the_batched_and_the_one_by_one_path_leave_the_same_rows(&batch_db, &alone_db).await;
}

#[actix_rt::test]
async fn the_batched_and_the_one_by_one_path_leave_the_same_rows_with_postgres() {
    let (batch, alone) = (FreshPostgres::new().await, FreshPostgres::new().await);
    let batch_db = db::connect::open(&batch.url, 1).await.expect("database");
    let alone_db = db::connect::open(&alone.url, 1).await.expect("database");
    the_batched_and_the_one_by_one_path_leave_the_same_rows(&batch_db, &alone_db).await;
}

/// A database of its own on the local PostgreSQL (trust auth; `PG_ADMIN_URL` overrides), dropped
/// after the test, as `src/tests/support/db.rs` makes them for the integration tests.
struct FreshPostgres {
    name: String,
    url: String,
}

impl FreshPostgres {
    async fn new() -> FreshPostgres {
        let admin_url = std::env::var("PG_ADMIN_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("comfyd_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(admin_url.as_str())
            .await
            .expect("connect to local PostgreSQL");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(a, _)| a);
        let url = format!("{base}/{name}");
        FreshPostgres { name, url }
    }
}

impl Drop for FreshPostgres {
    fn drop(&mut self) {
        // Drop runs outside any async context: psql is the simplest synchronous client here.
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-q", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

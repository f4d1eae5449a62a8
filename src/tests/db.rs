//! The store's write functions on their own, on both databases: what a transaction appends (events,
//! a finished job's outputs, the outbox row of a webhook, a webhook's attempt) goes in at its end,
//! with SQLite as one text of several statements, with PostgreSQL one statement each.

use chrono::Utc;
use comfyd::db::{
    self,
    appends::Appends,
    deliveries::AttemptOutcome,
    events::Event,
    outputs::{NewOutput, OutputMark},
    tasks::{NewTask, TaskPatch},
};
use comfyd::task::Status;
use sea_orm::TransactionTrait;
use serde_json::json;

use crate::support::{self, db::TestDb};

/// A new task whose end makes a webhook.
fn new_task(id: &str) -> NewTask {
    support::new_task(id, Some("http://127.0.0.1:9/hook"))
}

async fn appends_are_written_at_the_end_of_their_transaction(db: TestDb) {
    let conn = db::connect::open(db.url(), 2).await.expect("database");
    let id = format!("t_{}", uuid::Uuid::new_v4().simple());
    let task = new_task(&id);

    // A task accepted and failed in one transaction: two events and one webhook, appended.
    let txn = conn.begin().await.expect("begin");
    let mut appends = Appends::default();
    db::tasks::insert(&txn, &[&task], &mut appends)
        .await
        .expect("insert");
    let patch = TaskPatch {
        error_code: Some(10),
        error_message: Some("gave up".into()),
        finished_at: Some(Utc::now()),
        ..Default::default()
    };
    let finished = db::tasks::finish(
        &txn,
        &id,
        &[Status::Queued],
        Status::Failed,
        &patch,
        &[],
        &Event::new("failed", json!({ "reason": "test" })),
        Utc::now() + chrono::Duration::hours(1),
        &mut appends,
    )
    .await
    .expect("finish");
    assert!(finished.applied);
    let delivery = finished
        .delivery
        .expect("a webhook for a task with a callback URL");
    appends.write(&txn).await.expect("appends written");
    txn.commit().await.expect("commit");

    let kinds = |events: Vec<comfyd::entity::task_event::Model>| {
        events.into_iter().map(|e| e.kind).collect::<Vec<_>>()
    };
    let events = db::events::for_task(&conn, &id).await.expect("events");
    assert_eq!(kinds(events), ["accepted", "failed"]);
    let deliveries = db::deliveries::for_task(&conn, &id)
        .await
        .expect("deliveries");
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].id, delivery.id);
    assert_eq!(deliveries[0].status, "pending");
    let payload: serde_json::Value =
        serde_json::from_str(&deliveries[0].payload).expect("payload is JSON");
    assert_eq!(payload["id"], id);
    assert_eq!(payload["error_code"], 10);

    // Its webhook answered: the attempt and the `notified` event appended, the delivery updated.
    let txn = conn.begin().await.expect("begin");
    let mut appends = Appends::default();
    let outcome = AttemptOutcome {
        delivery_id: delivery.id.clone(),
        task_id: id.clone(),
        status_code: Some(204),
        error: None,
        duration_ms: 3,
        new_status: "delivered",
        next_attempt_at: Utc::now(),
    };
    db::deliveries::record_attempt(&txn, &outcome, &mut appends)
        .await
        .expect("attempt");
    appends.write(&txn).await.expect("appends written");
    txn.commit().await.expect("commit");

    let attempts = db::deliveries::attempts(&conn, &delivery.id)
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status_code, Some(204));
    let deliveries = db::deliveries::for_task(&conn, &id)
        .await
        .expect("deliveries");
    assert_eq!(deliveries[0].status, "delivered");
    let events = db::events::for_task(&conn, &id).await.expect("events");
    assert_eq!(kinds(events), ["accepted", "failed", "notified"]);

    // Nothing appended: writing is a no-op.
    let txn = conn.begin().await.expect("begin");
    Appends::default()
        .write(&txn)
        .await
        .expect("nothing to write");
    txn.commit().await.expect("commit");
}

#[actix_web::test]
async fn appends_are_written_at_the_end_of_their_transaction_with_sqlite() {
    appends_are_written_at_the_end_of_their_transaction(TestDb::sqlite()).await;
}

#[actix_web::test]
async fn appends_are_written_at_the_end_of_their_transaction_with_postgres() {
    appends_are_written_at_the_end_of_their_transaction(TestDb::postgres().await).await;
}

/// A job's outputs recorded as it ends (`db::tasks::complete`) go in with the appends: the rows read as
/// the webhook's payload lists them, in (node, index) order, with what storing each came to.
async fn a_job_recorded_as_it_ends_has_its_outputs_as_its_webhook_lists_them(db: TestDb) {
    let conn = db::connect::open(db.url(), 2).await.expect("database");
    let id = format!("t_{}", uuid::Uuid::new_v4().simple());
    let txn = conn.begin().await.expect("begin");
    let mut appends = Appends::default();
    db::tasks::insert(&txn, &[&new_task(&id)], &mut appends)
        .await
        .expect("insert");
    let claim = TaskPatch {
        backend: Some(Some("b0".into())),
        comfyui_task_id: Some(Some("p1".into())),
        dispatched_at: Some(Utc::now()),
        ..Default::default()
    };
    let claimed = db::tasks::claim(
        &txn,
        &id,
        &claim,
        &Event::new("dispatched", json!({})),
        &mut appends,
    )
    .await
    .expect("claim");
    assert!(claimed.is_some());
    appends.write(&txn).await.expect("appends written");
    txn.commit().await.expect("commit");

    // Two images of node 9, reported out of order; the second was kept in the fallback folder.
    let output = |idx: i32| NewOutput {
        node_id: "9".into(),
        idx,
        kind: "images".into(),
        filename: format!("solid_{idx}.png"),
        subfolder: String::new(),
        folder_type: "output".into(),
        content_type: "image/png".into(),
        storage_key: format!("jobs/{id}/9_{idx}.png"),
    };
    let marks = [
        OutputMark {
            node_id: "9".into(),
            idx: 0,
            stored: true,
            content_type: "image/png".into(),
            size: 120,
            fallback_path: None,
        },
        OutputMark {
            node_id: "9".into(),
            idx: 1,
            stored: false,
            content_type: "image/png".into(),
            size: 0,
            fallback_path: Some("/var/lib/comfyd/failed/x.png".into()),
        },
    ];
    let done = TaskPatch {
        error_code: Some(0),
        s3_key: Some(format!("jobs/{id}/9_0.png")),
        finished_at: Some(Utc::now()),
        ..Default::default()
    };
    let txn = conn.begin().await.expect("begin");
    let mut appends = Appends::default();
    let finished = db::tasks::complete(
        &txn,
        &id,
        None,
        &Status::ON_BACKEND,
        &[output(1), output(0)],
        &Event::new("executed", json!({})),
        Status::Done,
        &done,
        &marks,
        &Event::new("done", json!({})),
        Utc::now() + chrono::Duration::hours(1),
        &mut appends,
    )
    .await
    .expect("complete")
    .expect("the task was dispatched");
    appends.write(&txn).await.expect("appends written");
    txn.commit().await.expect("commit");

    let rows = db::outputs::for_task(&conn, &id).await.expect("outputs");
    let listed: Vec<_> = rows
        .iter()
        .map(|o| (o.idx, o.stored, o.size, o.fallback_path.clone()))
        .collect();
    assert_eq!(
        listed,
        [
            (0, true, 120, None),
            (1, false, 0, Some("/var/lib/comfyd/failed/x.png".into()))
        ]
    );
    let delivery = finished.delivery.expect("a webhook");
    let payload: serde_json::Value = serde_json::from_str(&delivery.payload).expect("JSON");
    let expected: Vec<_> = rows.iter().map(comfyd::task::OutputInfo::from).collect();
    assert_eq!(
        payload["outputs"],
        serde_json::to_value(&expected).expect("JSON")
    );
    assert_eq!(payload["outputs"][0]["key"], format!("jobs/{id}/9_0.png"));
    assert_eq!(payload["outputs"][1]["key"], "");
    assert_eq!(payload["status"], "done");
}

#[actix_web::test]
async fn a_job_recorded_as_it_ends_has_its_outputs_as_its_webhook_lists_them_with_sqlite() {
    a_job_recorded_as_it_ends_has_its_outputs_as_its_webhook_lists_them(TestDb::sqlite()).await;
}

#[actix_web::test]
async fn a_job_recorded_as_it_ends_has_its_outputs_as_its_webhook_lists_them_with_postgres() {
    a_job_recorded_as_it_ends_has_its_outputs_as_its_webhook_lists_them(TestDb::postgres().await)
        .await;
}

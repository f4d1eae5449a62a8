//! The store's write functions on their own, on both databases: what a transaction appends (events,
//! the outbox row of a webhook, a webhook's attempt) goes in at its end, with SQLite as one text of
//! several statements, with PostgreSQL one statement each.

use chrono::Utc;
use comfyd::store::{self, Appends, AttemptOutcome, Event, NewTask, TaskPatch};
use comfyd::task::Status;
use sea_orm::TransactionTrait;
use serde_json::json;

use crate::support::db::TestDb;

async fn appends_are_written_at_the_end_of_their_transaction(db: TestDb) {
    let conn = store::connect(db.url(), 2).await.expect("database");
    let id = format!("t_{}", uuid::Uuid::new_v4().simple());
    let task = NewTask {
        id: id.clone(),
        client_task_id: None,
        client_callback_url: Some("http://127.0.0.1:9/hook".into()),
        workflow: "solid".into(),
        request_hash: "0".repeat(64),
        params: json!({}),
        graph: json!({}),
        inputs: json!([]),
        output_nodes: json!(["9"]),
        priority: 0,
        deadline_at: Utc::now() + chrono::Duration::minutes(5),
    };

    // A task accepted and failed in one transaction: two events and one webhook, appended.
    let txn = conn.begin().await.expect("begin");
    let mut appends = Appends::default();
    store::insert_tasks(&txn, &[&task], &mut appends)
        .await
        .expect("insert");
    let patch = TaskPatch {
        error_code: Some(10),
        error_message: Some("gave up".into()),
        finished_at: Some(Utc::now()),
        ..Default::default()
    };
    let finished = store::finish(
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
    let events = store::task_events(&conn, &id).await.expect("events");
    assert_eq!(kinds(events), ["accepted", "failed"]);
    let deliveries = store::task_deliveries(&conn, &id)
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
    store::record_attempt(&txn, &outcome, &mut appends)
        .await
        .expect("attempt");
    appends.write(&txn).await.expect("appends written");
    txn.commit().await.expect("commit");

    let attempts = store::delivery_attempts(&conn, &delivery.id)
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status_code, Some(204));
    let deliveries = store::task_deliveries(&conn, &id)
        .await
        .expect("deliveries");
    assert_eq!(deliveries[0].status, "delivered");
    let events = store::task_events(&conn, &id).await.expect("events");
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

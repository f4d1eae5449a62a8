//! The `delivery` table (the webhook outbox: one row per webhook of a task that ended) and
//! `delivery_attempt` (each attempt to send one). The Recorder puts a webhook in the outbox with its
//! task's end ([`put_webhook`]) and records attempts; the `Notifier` reads what is due, the routes a
//! task's deliveries.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::appends::Appends;
use super::events::Event;
use crate::entity::{delivery, delivery_attempt};
use crate::task::{OutputInfo, RecordRow, TaskRecord};

/// Deliveries due now, oldest first.
pub async fn due(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<delivery::Model>, DbErr> {
    delivery::Entity::find()
        .filter(delivery::Column::Status.eq("pending"))
        .filter(delivery::Column::NextAttemptAt.lte(now))
        .order_by_asc(delivery::Column::NextAttemptAt)
        .limit(limit)
        .all(db)
        .await
}

/// A task's deliveries, oldest first.
pub async fn for_task(
    db: &DatabaseConnection,
    task_id: &str,
) -> Result<Vec<delivery::Model>, DbErr> {
    delivery::Entity::find()
        .filter(delivery::Column::TaskId.eq(task_id))
        .order_by_asc(delivery::Column::CreatedAt)
        .all(db)
        .await
}

/// A delivery's attempts, oldest first.
pub async fn attempts(
    db: &DatabaseConnection,
    delivery_id: &str,
) -> Result<Vec<delivery_attempt::Model>, DbErr> {
    delivery_attempt::Entity::find()
        .filter(delivery_attempt::Column::DeliveryId.eq(delivery_id))
        .order_by_asc(delivery_attempt::Column::Id)
        .all(db)
        .await
}

/// What one delivery attempt came to.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub delivery_id: String,
    pub task_id: String,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i64,
    /// The delivery's new status: delivered, pending (retry at `next_attempt_at`) or failed.
    pub new_status: &'static str,
    pub next_attempt_at: DateTime<Utc>,
}

/// Records an attempt and its consequence for the delivery; a delivered webhook also gets a `notified`
/// event on its task. Only a pending delivery changes, so a late duplicate attempt cannot undo a success.
pub async fn record_attempt<C: ConnectionTrait>(
    txn: &C,
    a: &AttemptOutcome,
    appends: &mut Appends,
) -> Result<(), DbErr> {
    let now = Utc::now();
    appends.attempt(delivery_attempt::ActiveModel {
        id: NotSet,
        delivery_id: Set(a.delivery_id.clone()),
        status_code: Set(a.status_code),
        error: Set(a.error.clone()),
        duration_ms: Set(a.duration_ms),
        at: Set(now),
    });
    let mut q = delivery::Entity::update_many()
        .col_expr(delivery::Column::Status, Expr::value(a.new_status))
        .col_expr(
            delivery::Column::Attempts,
            Expr::col(delivery::Column::Attempts).add(1),
        )
        .col_expr(
            delivery::Column::NextAttemptAt,
            Expr::value(a.next_attempt_at),
        )
        .col_expr(delivery::Column::LastStatusCode, Expr::value(a.status_code))
        .col_expr(delivery::Column::LastError, Expr::value(a.error.clone()));
    if a.new_status == "delivered" {
        q = q.col_expr(delivery::Column::DeliveredAt, Expr::value(Some(now)));
    }
    let res = q
        .filter(delivery::Column::Id.eq(a.delivery_id.as_str()))
        .filter(delivery::Column::Status.eq("pending"))
        .exec(txn)
        .await?;
    if res.rows_affected == 1 && a.new_status != "pending" {
        let kind = if a.new_status == "delivered" {
            "notified"
        } else {
            "notify_failed"
        };
        appends.event(
            &a.task_id,
            &Event::new(
                kind,
                serde_json::json!({ "delivery_id": a.delivery_id, "status_code": a.status_code, "error": a.error }),
            ),
        );
    }
    Ok(())
}

/// Puts a delivery back in the outbox, due now (the redeliver API).
pub async fn redeliver<C: ConnectionTrait>(
    db: &C,
    id: &str,
    give_up_at: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let now = Utc::now();
    let res = delivery::Entity::update_many()
        .col_expr(delivery::Column::Status, Expr::value("pending"))
        .col_expr(delivery::Column::NextAttemptAt, Expr::value(now))
        .col_expr(delivery::Column::GiveUpAt, Expr::value(give_up_at))
        .filter(delivery::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Puts the webhook of a task that just ended in the outbox (with the transaction's appends), when it
/// has a callback URL. Its payload is the task's final record: `outputs` when the caller has them,
/// else read in the same transaction.
pub(super) async fn put_webhook<C: ConnectionTrait>(
    txn: &C,
    task: RecordRow,
    outputs: Option<Vec<OutputInfo>>,
    give_up_at: DateTime<Utc>,
    appends: &mut Appends,
) -> Result<Option<delivery::Model>, DbErr> {
    let Some(url) = task.client_callback_url.clone().filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let outputs = match outputs {
        Some(o) => o,
        None => super::outputs::for_task(txn, &task.id)
            .await?
            .iter()
            .map(OutputInfo::from)
            .collect(),
    };
    let task_id = task.id.clone();
    let payload = serde_json::to_string(&TaskRecord::from_row(task, outputs))
        .map_err(|e| DbErr::Custom(format!("webhook payload: {e}")))?;
    let now = Utc::now();
    let model = delivery::Model {
        id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        task_id,
        url,
        payload,
        status: "pending".into(),
        attempts: 0,
        next_attempt_at: now,
        give_up_at,
        last_status_code: None,
        last_error: None,
        created_at: now,
        delivered_at: None,
    };
    appends.delivery(model.clone());
    Ok(Some(model))
}

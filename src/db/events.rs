//! The `task_event` table: what happened to a task, in order. Events are written with the write they
//! belong to, through [`super::appends::Appends`]; the routes read them here.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder};
use serde_json::Value;

use crate::entity::task_event;

/// An event to record with a transition.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    pub details: Value,
    /// When it happened (not when it was written: a write may wait for its transaction).
    pub at: DateTime<Utc>,
}

impl Event {
    pub fn new(kind: &'static str, details: Value) -> Event {
        Event {
            kind,
            details,
            at: Utc::now(),
        }
    }
}

/// A task's events, oldest first.
pub async fn for_task(
    db: &DatabaseConnection,
    task_id: &str,
) -> Result<Vec<task_event::Model>, DbErr> {
    task_event::Entity::find()
        .filter(task_event::Column::TaskId.eq(task_id))
        .order_by_asc(task_event::Column::Id)
        .all(db)
        .await
}

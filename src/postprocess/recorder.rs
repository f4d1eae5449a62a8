//! `Recorder`: the only writer to the database. Each message is one short transaction, applied one at a
//! time in arrival order (`AtomicResponse`), so writes are ordered and SQLite never sees two writers.
//! Readers (routes, recovery) query through `crate::store` directly.

use actix::prelude::*;
use sea_orm::{DatabaseConnection, DbErr};

use crate::store::{self, AttemptOutcome, Event, Finished, Inserted, NewOutput, NewTask, TaskPatch};
use crate::task::Status;

pub struct Recorder {
    db: DatabaseConnection,
}

impl Recorder {
    pub fn new(db: DatabaseConnection) -> Recorder {
        Recorder { db }
    }
}

impl Actor for Recorder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Every task goes through here several times; senders await their answer, so the mailbox
        // only fills under real load, and then it is better to queue than to refuse.
        ctx.set_mailbox_capacity(1 << 16);
    }
}

/// Writes one message's transaction with the actor blocked until it commits.
macro_rules! write_handler {
    ($msg:ty, $ret:ty, |$db:ident, $m:ident| $body:expr) => {
        impl Handler<$msg> for Recorder {
            type Result = AtomicResponse<Self, Result<$ret, DbErr>>;

            fn handle(&mut self, $m: $msg, _ctx: &mut Context<Self>) -> Self::Result {
                let $db = self.db.clone();
                AtomicResponse::new(Box::pin(async move { $body }.into_actor(self)))
            }
        }
    };
}

/// Records a newly accepted task (or finds the task a retried submit refers to).
#[derive(Message)]
#[rtype(result = "Result<Inserted, DbErr>")]
pub struct InsertTask(pub NewTask);
write_handler!(InsertTask, Inserted, |db, m| store::insert_task(&db, m.0).await);

/// A status change with its event; answers whether it applied (the task was in one of `from`).
#[derive(Message, Debug)]
#[rtype(result = "Result<bool, DbErr>")]
pub struct Transition {
    pub task_id: String,
    pub from: Vec<Status>,
    pub to: Status,
    pub patch: TaskPatch,
    pub event: Option<Event>,
}
write_handler!(Transition, bool, |db, m| store::transition(&db, &m.task_id, &m.from, m.to, m.patch, m.event)
    .await);

/// A prompt finished: its outputs are recorded and the task moves to `executed`.
#[derive(Message, Debug)]
#[rtype(result = "Result<bool, DbErr>")]
pub struct RecordExecuted {
    pub task_id: String,
    pub from: Vec<Status>,
    pub outputs: Vec<NewOutput>,
    pub event: Event,
}
write_handler!(RecordExecuted, bool, |db, m| store::record_executed(
    &db, &m.task_id, &m.from, m.outputs, m.event
)
.await);

/// One output was stored, or kept in the fallback folder.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), DbErr>")]
pub struct MarkOutput {
    pub output_id: i64,
    pub stored: bool,
    pub content_type: String,
    pub size: i64,
    pub fallback_path: Option<String>,
}
write_handler!(MarkOutput, (), |db, m| store::mark_output(
    &db,
    m.output_id,
    m.stored,
    &m.content_type,
    m.size,
    m.fallback_path
)
.await);

/// The terminal transition of a task, with its webhook put in the outbox in the same transaction.
#[derive(Message, Debug)]
#[rtype(result = "Result<Finished, DbErr>")]
pub struct Finish {
    pub task_id: String,
    pub from: Vec<Status>,
    pub to: Status,
    pub patch: TaskPatch,
    pub event: Event,
    /// When the webhook, if any, stops being retried.
    pub give_up_at: chrono::DateTime<chrono::Utc>,
}
write_handler!(Finish, Finished, |db, m| store::finish(
    &db, &m.task_id, &m.from, m.to, m.patch, m.event, m.give_up_at
)
.await);

/// One webhook attempt and what it means for its delivery.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), DbErr>")]
pub struct RecordAttempt(pub AttemptOutcome);
write_handler!(RecordAttempt, (), |db, m| store::record_attempt(&db, m.0).await);

/// Puts a delivery back in the outbox (the redeliver API).
#[derive(Message, Debug)]
#[rtype(result = "Result<bool, DbErr>")]
pub struct Redeliver {
    pub delivery_id: String,
    pub give_up_at: chrono::DateTime<chrono::Utc>,
}
write_handler!(Redeliver, bool, |db, m| store::redeliver(&db, &m.delivery_id, m.give_up_at).await);

/// A step worth recording that changes no status (e.g. an upload retry).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), DbErr>")]
pub struct RecordEvent {
    pub task_id: String,
    pub event: Event,
}
write_handler!(RecordEvent, (), |db, m| store::insert_event(&db, &m.task_id, m.event.kind, m.event.details)
    .await);

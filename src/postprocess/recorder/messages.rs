//! The Recorder's messages: one per kind of write, each answered once its transaction committed
//! (or with why it did not). Sent by the submit service (new tasks), the routes (redeliveries), the
//! Dispatcher (claims, transitions, running marks, flushes), the uploader (executed records,
//! events), the `Finisher` (terminal states) and the `Notifier` (webhook attempts). A write that
//! was not done answers a [`RecordError`] saying why.

use actix::prelude::*;
use chrono::{DateTime, Utc};
use sea_orm::DbErr;

use super::write::{Write, Written};
use super::Recorder;
use crate::db::{
    deliveries::AttemptOutcome,
    events::Event,
    outputs::{NewOutput, OutputMark},
    tasks::{Finished, Inserted, NewTask, TaskPatch},
};
use crate::db_health::is_unreachable;
use crate::entity::task;
use crate::task::ids::{BackendName, PromptId, TaskId};
use crate::task::Status;

/// Why the Recorder did not do a write. What its senders tell apart: a database that cannot be
/// reached now (the routes answer 503, and the same request may succeed later) from a write the
/// database refused or that failed otherwise (500: the same write would fail again), and from a
/// Recorder that is gone. Writes other than new tasks are held and retried through an outage
/// rather than answered [`RecordError::Unreachable`] (see the Recorder).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// The database could not be reached ([`is_unreachable`]): a new task while it is down.
    #[error(transparent)]
    Unreachable(DbErr),
    /// The database refused the write (a constraint, a value it does not take) or it failed for
    /// another reason than reachability.
    #[error(transparent)]
    Refused(DbErr),
    /// The Recorder stopped before the write was done.
    #[error("recorder stopped before the write")]
    Stopped,
}

impl From<DbErr> for RecordError {
    /// Sorted the way the routes always sorted a failed write (`db_health::is_unreachable`).
    fn from(e: DbErr) -> RecordError {
        if is_unreachable(&e) {
            RecordError::Unreachable(e)
        } else {
            RecordError::Refused(e)
        }
    }
}

/// Defines a write message: its handler queues it and answers once its transaction committed.
macro_rules! write_message {
    ($msg:ty => $ret:ty, |$m:ident| $write:expr, $pat:pat => $val:expr) => {
        impl Handler<$msg> for Recorder {
            type Result = ResponseFuture<Result<$ret, RecordError>>;

            fn handle(&mut self, $m: $msg, ctx: &mut Context<Self>) -> Self::Result {
                let rx = self.submit($write, ctx);
                Box::pin(async move {
                    match rx.await {
                        Ok(Ok($pat)) => Ok($val),
                        // Each write answers its own kind (`Write::apply`): cannot happen.
                        Ok(Ok(_)) => Err(RecordError::Refused(DbErr::Custom(
                            "recorder: unexpected answer".into(),
                        ))),
                        Ok(Err(e)) => Err(e.into()),
                        Err(_) => Err(RecordError::Stopped),
                    }
                })
            }
        }
    };
}

/// Records a newly accepted task (or finds the task a retried submit refers to).
#[derive(Message)]
#[rtype(result = "Result<Inserted, RecordError>")]
pub struct InsertTask(pub NewTask);
write_message!(InsertTask => Inserted, |m| Write::InsertTask(m.0), Written::Inserted(v) => v);

/// A status change with its event; answers whether it applied (the task was in one of `from`).
#[derive(Message, Debug)]
#[rtype(result = "Result<bool, RecordError>")]
pub struct Transition {
    pub task_id: TaskId,
    pub from: Vec<Status>,
    pub to: Status,
    pub patch: TaskPatch,
    pub event: Option<Event>,
}
write_message!(Transition => bool, |m| Write::Transition(m), Written::Applied(v) => v);

/// Claims a queued task for dispatch (status `dispatched`, with its backend and prompt id); answers the
/// task's row, or None when it was no longer queued (cancelled meanwhile).
#[derive(Message, Debug)]
#[rtype(result = "Result<Option<task::Model>, RecordError>")]
pub struct Claim {
    pub task_id: TaskId,
    /// The backend has other work queued, so the claim may wait [`super::batch::LINGER`] to share a commit.
    pub may_wait: bool,
    pub patch: TaskPatch,
    pub event: Event,
}
write_message!(Claim => Option<task::Model>, |m| Write::Claim(m), Written::Claimed(v) => v);

/// A prompt finished: its outputs are recorded and the task moves to `executed`. Answers whether it
/// applied (false: the task was no longer on a backend). It may linger: the uploader sends it without
/// waiting and stores the outputs meanwhile, so it usually commits together with the task's `Finish`.
#[derive(Message, Debug)]
#[rtype(result = "Result<bool, RecordError>")]
pub struct RecordExecuted {
    pub task_id: TaskId,
    pub from: Vec<Status>,
    pub outputs: Vec<NewOutput>,
    pub event: Event,
}
write_message!(RecordExecuted => bool, |m| Write::RecordExecuted(m), Written::Applied(v) => v);

/// The terminal transition of a task, with what became of its outputs and its webhook put in the
/// outbox, in one transaction.
#[derive(Message, Debug)]
#[rtype(result = "Result<Finished, RecordError>")]
pub struct Finish {
    pub task_id: TaskId,
    pub from: Vec<Status>,
    pub to: Status,
    pub patch: TaskPatch,
    pub outputs: Vec<OutputMark>,
    pub event: Event,
    /// When the webhook, if any, stops being retried.
    pub give_up_at: DateTime<Utc>,
}
write_message!(Finish => Finished, |m| Write::Finish(m), Written::Finished(v) => v);

/// One webhook attempt and what it means for its delivery.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), RecordError>")]
pub struct RecordAttempt(pub AttemptOutcome);
write_message!(RecordAttempt => (), |m| Write::RecordAttempt(m.0), Written::Done => ());

/// Puts a delivery back in the outbox (the redeliver API).
#[derive(Message, Debug)]
#[rtype(result = "Result<bool, RecordError>")]
pub struct Redeliver {
    pub delivery_id: String,
    pub give_up_at: DateTime<Utc>,
}
write_message!(Redeliver => bool, |m| Write::Redeliver(m), Written::Applied(v) => v);

/// A step worth recording that changes no status (e.g. an upload retry).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), RecordError>")]
pub struct RecordEvent {
    pub task_id: TaskId,
    pub event: Event,
}
write_message!(RecordEvent => (), |m| Write::RecordEvent(m), Written::Done => ());

/// ComfyUI started executing a task: `dispatched` → `running`, with its `started` event.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), RecordError>")]
pub struct MarkStarted {
    pub task_id: TaskId,
    pub backend: BackendName,
    pub prompt_id: PromptId,
    pub at: DateTime<Utc>,
}
write_message!(MarkStarted => (), |m| Write::MarkStarted(m), Written::Done => ());

impl MarkStarted {
    /// The task's `started` event, at the time ComfyUI said it started.
    pub(super) fn event(&self) -> Event {
        let mut event = Event::new(
            "started",
            serde_json::json!({ "backend": self.backend, "prompt_id": self.prompt_id }),
        );
        event.at = self.at;
        event
    }
}

/// Answers once the writes queued before it committed: at shutdown, with nothing else arriving,
/// nothing is left lingering. (Under a backlog of new tasks larger than a batch, some of those could
/// still wait for the next batch; see `take_batch`.)
#[derive(Message, Debug)]
#[rtype(result = "Result<(), RecordError>")]
pub struct Flush;
write_message!(Flush => (), |_m| Write::Flush, Written::Done => ());

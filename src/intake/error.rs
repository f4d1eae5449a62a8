//! `IntakeError`: every way a submit is refused, in the submit service's own terms. The HTTP routes
//! turn it into their answer in one place (`routes/error.rs`, `From<IntakeError> for ApiError`);
//! another contract (the Comfy API v2) would map it its own way.

use sea_orm::DbErr;

use crate::budget::BudgetError;
use crate::postprocess::recorder::RecordError;
use crate::task::TaskRecord;
use crate::workflow::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The body is not a JSON object.
    #[error("body must be a JSON object")]
    NotAnObject,
    /// The route names a workflow that is not loaded (an unknown `service_type` is a field error).
    #[error("no workflow named {0:?}")]
    UnknownWorkflow(String),
    /// One or more fields are wrong; every one is listed, each naming its field.
    #[error("invalid request: {}", FieldError::summary(.0))]
    Invalid(Vec<FieldError>),
    /// An input image is too large: its bytes (fetched by URL) or its pixels.
    #[error("{}: {}", .0.field, .0.reason)]
    TooLarge(FieldError),
    /// Fetching an image by URL could not reserve its share of the memory budget.
    #[error(transparent)]
    Budget(BudgetError),
    /// The `client_task_id` is already used by another API key's task, which is not shown.
    #[error("client_task_id is already used by another API key's task")]
    TakenByAnotherKey,
    /// The `client_task_id` is already used by a task with a different request: that task.
    #[error("client_task_id is already used by a task with a different request")]
    Conflict(Box<TaskRecord>),
    /// comfyd is shutting down and takes no more tasks.
    #[error("comfyd is shutting down; retry on another instance or later")]
    ShuttingDown,
    /// The database is unreachable now (the Recorder says so), or the task's write took longer than
    /// `database_outage.submit_wait_ms`.
    #[error("the database is unreachable; retry later")]
    DatabaseUnreachable,
    /// A read, or the Recorder's write, failed. Whether the database was unreachable is the
    /// error's to tell (`db_health::is_unreachable`).
    #[error(transparent)]
    Database(DbErr),
    /// The Recorder could not be asked (its mailbox is closed).
    #[error(transparent)]
    Mailbox(#[from] actix::MailboxError),
    /// Anything else (writing the input files, the Recorder dropping the request): the cause is
    /// logged where it is answered, not told.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A read of a retried submit's task that failed.
impl From<DbErr> for IntakeError {
    fn from(e: DbErr) -> Self {
        IntakeError::Database(e)
    }
}

/// The Recorder's answer to `InsertTask`, when it did not record the task: the database's error
/// keeps telling whether it was unreachable (503) or refused the write (500), as a read's does.
impl From<RecordError> for IntakeError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Unreachable(e) | RecordError::Refused(e) => IntakeError::Database(e),
            RecordError::Stopped => IntakeError::Internal(e.into()),
        }
    }
}

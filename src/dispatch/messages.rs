//! The messages of dispatch, as plain data: what the routes and startup send the `Dispatcher`, what
//! the `Dispatcher` and the `Backend` actors send each other, and the settings a backend starts with.
//!
//! They live apart from both actors so that neither imports the other for its vocabulary: a `Backend`
//! knows the `Dispatcher` only as the three [`Reports`] recipients, and the `Dispatcher` knows a
//! backend as an `Addr<Backend>` it started itself.
//!
//! - routes → Dispatcher: [`Enqueue`], [`CancelTask`] (answers [`CancelOutcome`] or
//!   [`DispatchError`]), [`Snapshot`] (answers [`SnapshotView`]);
//! - startup → Dispatcher: [`AttachBackends`] (once, before any task), [`StopDispatching`];
//! - Dispatcher → itself: [`Reconcile`] (a database outage ended);
//! - Dispatcher → Backend: [`Run`], [`Adopt`], [`Cancel`];
//! - Backend → Dispatcher: [`BackendState`], [`JobStarted`], [`JobEnded`] (with a [`JobOutcome`]).

use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::comfy::protocol::ExecutionError;
use crate::comfy::{FileRef, Limits};
use crate::task::ids::{BackendName, PromptId, TaskId};
use crate::task::InputFile;

// ---- routes and startup → Dispatcher ----

/// Settings of one backend actor.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: BackendName,
    pub url: String,
    pub http_timeout: Duration,
    pub reconnect_max: Duration,
    /// Jobs of a backend unreachable this long are reported lost.
    pub lost_after: Duration,
    /// How much is read from the server at most.
    pub limits: Limits,
    /// Files are cleaned off this server (where it has the cleaner node, checked at each connect).
    pub cleanup: bool,
}

/// Starts the backend actors; sent once by startup before any task.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachBackends(pub Vec<BackendConfig>);

/// A task was accepted and recorded as queued.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Enqueue {
    pub task_id: TaskId,
    pub priority: i32,
    /// The prompt id recorded with the task at submit.
    pub prompt_id: Option<PromptId>,
    /// The release it was accepted under (None: runs on any backend).
    pub release: Option<i32>,
}

/// From the deployer: `backend` is being checked (out of traffic: no new job) or no longer.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Checking {
    pub backend: BackendName,
    pub checking: bool,
}

/// From the deployer (and startup, from the database): whether `backend` may run tasks of
/// `release` (it passed that release's check in a deployment, or failed it since).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ReleaseGate {
    pub backend: BackendName,
    pub release: i32,
    pub passed: bool,
}

/// What a cancel came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    Cancelled,
    /// Already done, failed or cancelled.
    AlreadyFinished,
}

/// Why the Dispatcher could not answer a message.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The cancel's terminal state could not be written (the Recorder or the database failed); the
    /// task was left as it was.
    #[error("could not record the cancel")]
    CancelNotRecorded(#[source] anyhow::Error),
}

impl DispatchError {
    pub fn cancel_not_recorded(e: impl Into<anyhow::Error>) -> DispatchError {
        DispatchError::CancelNotRecorded(e.into())
    }
}

/// Cancels a task: removed from comfyd's queue, or deleted/interrupted on its backend.
#[derive(Message, Debug)]
#[rtype(result = "Result<CancelOutcome, DispatchError>")]
pub struct CancelTask {
    pub task_id: TaskId,
}

/// Asks for the Dispatcher's view of things (`/healthz`, `/backends`, the watchdog).
#[derive(Message)]
#[rtype(result = "SnapshotView")]
pub struct Snapshot;

/// One backend as `/healthz` and `/backends` show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BackendView {
    #[schema(value_type = String)]
    pub name: BackendName,
    pub up: bool,
    pub in_flight: usize,
    pub queue_remaining: u32,
}

/// The dispatcher's view of things.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SnapshotView {
    pub queued: usize,
    /// `queued` by priority (for `/metrics`; not part of the JSON answers).
    #[serde(skip)]
    pub queued_by_priority: std::collections::BTreeMap<i32, usize>,
    pub accepting: bool,
    pub backends: Vec<BackendView>,
}

/// Shutdown: hand out no more work (what is queued stays queued in the database for the next start).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDispatching;

/// A database outage ended: reconcile (see `Dispatcher::reconcile`).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Reconcile;

// ---- Dispatcher → Backend ----

/// Runs a task's graph: uploads its input images, then queues the prompt under `prompt_id`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Run {
    pub task_id: TaskId,
    pub prompt_id: PromptId,
    pub graph: Map<String, Value>,
    /// Input images with the path of their bytes in comfyd's data folder.
    pub inputs: Vec<(InputFile, PathBuf)>,
    /// Output nodes whose files are collected (all output nodes when empty).
    pub output_nodes: Vec<String>,
}

/// Takes over a prompt queued before comfyd restarted; it is settled like any in-flight prompt.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Adopt {
    pub task_id: TaskId,
    pub prompt_id: PromptId,
    pub output_nodes: Vec<String>,
}

/// Stops a prompt: removed from the ComfyUI queue if pending, interrupted if running.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Cancel {
    pub prompt_id: PromptId,
}

// ---- Backend → Dispatcher ----

/// Where a backend reports: the Dispatcher, as the three messages it takes from backends.
#[derive(Clone)]
pub struct Reports {
    pub state: Recipient<BackendState>,
    pub started: Recipient<JobStarted>,
    pub ended: Recipient<JobEnded>,
}

/// A backend's health or load changed.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct BackendState {
    pub backend: BackendName,
    pub up: bool,
    pub queue_remaining: u32,
}

/// ComfyUI started executing a task.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct JobStarted {
    pub backend: BackendName,
    pub task_id: TaskId,
    pub prompt_id: PromptId,
}

/// How a job ended on its backend.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    /// Executed; these are the files of its output nodes.
    Success(Vec<FileRef>),
    /// ComfyUI raised an error while executing it.
    Failed(ExecutionError),
    Interrupted,
    /// ComfyUI refused the prompt (validation): no other backend would accept it either.
    Rejected {
        message: String,
        details: Value,
    },
    /// The backend could not take it (down, HTTP error).
    Unavailable(String),
    /// It vanished from the backend (restart, or unreachable too long).
    Lost(String),
    /// The backend answered with a name comfyd refuses to use (see `comfy::names`): error_code 3.
    UnsafeName(String),
}

/// A job left its backend, one way or another.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct JobEnded {
    pub backend: BackendName,
    pub task_id: TaskId,
    pub prompt_id: PromptId,
    pub outcome: JobOutcome,
}

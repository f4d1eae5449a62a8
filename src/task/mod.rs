//! What a task is: its statuses, its error codes, and the record the API and webhooks answer with.
//!
//! A task's life: `queued → dispatched → running → executed → done`, or `failed` / `cancelled`.
//! Each transition is written before the next step starts, so after a crash the stored status says what
//! to do next: queued = dispatch; dispatched/running = ask the backend about the prompt id; executed =
//! fetch and store the outputs recorded for it; a terminal status = nothing (its webhook has its own outbox).

pub mod ids;

use serde::{Deserialize, Serialize};

use crate::entity::{output, task};
use crate::workflow::Target;

pub use ids::{BackendName, PromptId, TaskId};

/// A task's status, stored as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Accepted and waiting in comfyd's queue.
    Queued,
    /// Handed to a backend under a prompt id; not yet seen running.
    Dispatched,
    /// ComfyUI started executing it.
    Running,
    /// ComfyUI finished it; its outputs are recorded and being stored.
    Executed,
    /// Outputs stored (error_code 0).
    Done,
    /// Ended with an error (error_code says which kind).
    Failed,
    /// Cancelled by the client.
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Dispatched,
        Status::Running,
        Status::Executed,
        Status::Done,
        Status::Failed,
        Status::Cancelled,
    ];
    /// Statuses in which a prompt may exist on a backend.
    pub const ON_BACKEND: [Status; 2] = [Status::Dispatched, Status::Running];
    /// Statuses before ComfyUI finished the job: a task in one of them can be cancelled, and fails
    /// when its deadline passes (an executed task is left to finish storing).
    pub const BEFORE_STORING: [Status; 3] = [Status::Queued, Status::Dispatched, Status::Running];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Dispatched => "dispatched",
            Status::Running => "running",
            Status::Executed => "executed",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The original service's error codes, kept as they were for its clients.
pub mod error_code {
    pub const OK: i32 = 0;
    /// ComfyUI refused the prompt (validation), or no backend took it within the attempt limit.
    pub const QUEUEING_FAILED: i32 = 1;
    /// An output could not be stored; it is in the fallback folder.
    pub const UPLOAD_FAILED: i32 = 2;
    /// An output could not be fetched from ComfyUI.
    pub const RETRIEVAL_FAILED: i32 = 3;
    /// Anything else: an execution error, an interrupt, a deadline.
    pub const OTHER: i32 = 10;
}

/// An input image kept in comfyd's data folder until the job that uses it has run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputFile {
    pub param: String,
    /// File name inside the task's input folder.
    pub file: String,
    /// Name to upload it under on ComfyUI (unique to the task).
    pub upload_name: String,
    pub targets: Vec<Target>,
}

/// One output of a task, as the API and the webhook describe it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct OutputInfo {
    pub node_id: String,
    pub kind: String,
    pub filename: String,
    pub subfolder: String,
    #[serde(rename = "type")]
    pub folder_type: String,
    pub content_type: String,
    pub size: i64,
    /// Where it is stored (S3 key or path under the local store); empty when it was not stored.
    pub key: String,
    pub stored: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_path: Option<String>,
    /// Where a stored output can be fetched: a presigned GET URL (S3 store; it expires after
    /// `storage.presign_expiry_secs`) or the API path `{prefix}/tasks/{id}/outputs/{n}` (local
    /// store). Absent when the output was not stored. Added by comfyd; not in the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl From<&output::Model> for OutputInfo {
    fn from(o: &output::Model) -> Self {
        OutputInfo {
            node_id: o.node_id.clone(),
            kind: o.kind.clone(),
            filename: o.filename.clone(),
            subfolder: o.subfolder.clone(),
            folder_type: o.folder_type.clone(),
            content_type: o.content_type.clone(),
            size: o.size,
            key: if o.stored {
                o.storage_key.clone()
            } else {
                String::new()
            },
            stored: o.stored,
            fallback_path: o.fallback_path.clone(),
            url: None,
        }
    }
}

/// The record a submit answers with and a webhook carries: the original service's fields first
/// (`id … error_code`), then comfyd's additions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct TaskRecord {
    pub id: String,
    pub client_task_id: Option<String>,
    pub client_callback_url: Option<String>,
    pub comfyui_task_id: Option<String>,
    pub comfyui_filepath: Option<String>,
    pub s3_key: Option<String>,
    /// 0 ok, 1 queueing failed, 2 storing an output failed (it is in the fallback folder), 3 fetching
    /// an output from ComfyUI failed, 10 other (an execution error, an interrupt, a deadline).
    pub error_code: i32,
    pub status: Status,
    pub workflow: String,
    pub priority: i32,
    pub backend: Option<String>,
    pub attempts: i32,
    pub error_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_details: Option<serde_json::Value>,
    pub outputs: Vec<OutputInfo>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl TaskRecord {
    pub fn new(t: &task::Model, outputs: &[output::Model]) -> TaskRecord {
        TaskRecord::from_row(
            RecordRow::from(t),
            outputs.iter().map(OutputInfo::from).collect(),
        )
    }

    pub fn from_row(t: RecordRow, outputs: Vec<OutputInfo>) -> TaskRecord {
        TaskRecord {
            id: t.id,
            client_task_id: t.client_task_id,
            client_callback_url: t.client_callback_url,
            comfyui_task_id: t.comfyui_task_id,
            comfyui_filepath: t.comfyui_filepath,
            s3_key: t.s3_key,
            error_code: t.error_code,
            status: Status::parse(&t.status).unwrap_or(Status::Failed),
            workflow: t.workflow,
            priority: t.priority,
            backend: t.backend,
            attempts: t.attempts,
            error_message: t.error_message,
            error_details: t
                .error_details
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok()),
            outputs,
            created_at: t.created_at,
            finished_at: t.finished_at,
        }
    }
}

/// The columns of a task that its [`TaskRecord`] is made of: what a terminal transition reads back
/// for the webhook, without the graph and parameters the task ran with.
#[derive(Debug, Clone, sea_orm::FromQueryResult)]
pub struct RecordRow {
    pub id: String,
    pub client_task_id: Option<String>,
    pub client_callback_url: Option<String>,
    pub comfyui_task_id: Option<String>,
    pub comfyui_filepath: Option<String>,
    pub s3_key: Option<String>,
    pub error_code: i32,
    pub status: String,
    pub workflow: String,
    pub priority: i32,
    pub backend: Option<String>,
    pub attempts: i32,
    pub error_message: Option<String>,
    pub error_details: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl RecordRow {
    /// The columns to select (or return) for a `RecordRow`, in its fields' order.
    pub const COLUMNS: [task::Column; 16] = [
        task::Column::Id,
        task::Column::ClientTaskId,
        task::Column::ClientCallbackUrl,
        task::Column::ComfyuiTaskId,
        task::Column::ComfyuiFilepath,
        task::Column::S3Key,
        task::Column::ErrorCode,
        task::Column::Status,
        task::Column::Workflow,
        task::Column::Priority,
        task::Column::Backend,
        task::Column::Attempts,
        task::Column::ErrorMessage,
        task::Column::ErrorDetails,
        task::Column::CreatedAt,
        task::Column::FinishedAt,
    ];
}

impl From<&task::Model> for RecordRow {
    fn from(t: &task::Model) -> RecordRow {
        RecordRow {
            id: t.id.clone(),
            client_task_id: t.client_task_id.clone(),
            client_callback_url: t.client_callback_url.clone(),
            comfyui_task_id: t.comfyui_task_id.clone(),
            comfyui_filepath: t.comfyui_filepath.clone(),
            s3_key: t.s3_key.clone(),
            error_code: t.error_code,
            status: t.status.clone(),
            workflow: t.workflow.clone(),
            priority: t.priority,
            backend: t.backend.clone(),
            attempts: t.attempts,
            error_message: t.error_message.clone(),
            error_details: t.error_details.clone(),
            created_at: t.created_at,
            finished_at: t.finished_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).expect("serialize"), s.as_str());
        }
        assert_eq!(Status::parse("nope"), None);
    }
}

//! Shapes of request and answer bodies that the handlers read or write as plain JSON (`serde_json`),
//! described here for the OpenAPI document only; nothing constructs these types. The integration test
//! `tests::openapi` checks the real answers against them, so a drift fails there.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::task::TaskRecord;

/// A client's own id for its task: a string (1 to 255 characters) or a number, as the original
/// service's clients sent both. Submitting the same id with the same body again returns the existing
/// task; with a different body, 409.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ClientTaskId {
    Text(String),
    Number(i64),
}

/// `POST {prefix}`: the original service's submit. `service_type` names the workflow.
#[derive(ToSchema)]
pub struct OriginalSubmit {
    /// The workflow to run (see `GET {prefix}/workflows`).
    #[schema(example = "solid")]
    pub service_type: String,
    pub client_task_id: Option<ClientTaskId>,
    /// Where the task's record is POSTed when it ends (see the `taskEnded` webhook); empty or
    /// absent: no webhook.
    #[schema(format = "uri")]
    pub client_callback_url: Option<String>,
    /// The workflow's parameters, checked against its JSON Schema (`GET {prefix}/workflows/{name}`).
    #[schema(value_type = Option<Object>)]
    pub params: Option<BTreeMap<String, Value>>,
    /// Higher runs first; first come first served within a priority.
    #[schema(minimum = -1000, maximum = 1000, default = 0)]
    pub priority: Option<i32>,
}

/// `POST {prefix}/workflows/{name}/tasks`: a typed submit; the workflow is named by the path.
#[derive(ToSchema)]
pub struct TypedSubmit {
    /// The workflow's parameters, checked against its JSON Schema. Each loaded workflow's own route
    /// below shows its parameters.
    #[schema(value_type = Option<Object>)]
    pub params: Option<BTreeMap<String, Value>>,
    pub client_task_id: Option<ClientTaskId>,
    /// Where the task's record is POSTed when it ends (see the `taskEnded` webhook).
    #[schema(format = "uri")]
    pub client_callback_url: Option<String>,
    /// Higher runs first; first come first served within a priority.
    #[schema(minimum = -1000, maximum = 1000, default = 0)]
    pub priority: Option<i32>,
}

/// `GET {prefix}/workflows`
#[derive(ToSchema)]
pub struct WorkflowList {
    /// Sorted by name.
    pub workflows: Vec<WorkflowDescription>,
}

/// `GET {prefix}/releases`
#[derive(ToSchema)]
pub struct ReleaseList {
    /// Newest first, without their files.
    pub releases: Vec<crate::release::ReleaseRecord>,
}

/// One workflow and how to call it.
#[derive(ToSchema)]
pub struct WorkflowDescription {
    pub name: String,
    pub description: String,
    /// The `params` object as a JSON Schema (draft 2020-12).
    #[schema(value_type = Object)]
    pub params: Value,
    /// Ids of the graph's nodes whose files become the task's outputs.
    pub outputs: Vec<String>,
}

/// `GET {prefix}/tasks`: newest first.
#[derive(ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskRecord>,
    /// How many tasks match the filter, over all pages.
    pub total: u64,
    pub limit: u64,
    pub offset: u64,
}

/// `GET {prefix}/tasks/{id}/events`
#[derive(ToSchema)]
pub struct TaskEvents {
    /// comfyd's id of the task (also when it was asked for by `client_task_id`).
    pub task_id: String,
    /// Oldest first.
    pub events: Vec<TaskEvent>,
}

/// One step of a task's flow.
#[derive(ToSchema)]
pub struct TaskEvent {
    /// `accepted`, `dispatched`, `started`, `executed`, `stored`, `notified`, or `requeued`,
    /// `failed`, `cancelled`, `outputs_discarded`, ...
    pub kind: String,
    pub at: DateTime<Utc>,
    /// What is worth knowing about the step (a backend, a prompt id, an error, ...).
    #[schema(value_type = Object)]
    pub details: Value,
}

/// Where a webhook stands.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not delivered yet; retried until `give_up_at`.
    Pending,
    /// A 2xx answered it.
    Delivered,
    /// Given up at the retry horizon.
    Failed,
}

/// `GET {prefix}/tasks/{id}/deliveries`
#[derive(ToSchema)]
pub struct TaskDeliveries {
    pub task_id: String,
    pub deliveries: Vec<Delivery>,
}

/// One webhook of a task, with every attempt to deliver it.
#[derive(ToSchema)]
pub struct Delivery {
    /// Also the `webhook-id` header, the same on every attempt.
    pub id: String,
    pub url: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub give_up_at: DateTime<Utc>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// Oldest first.
    pub history: Vec<DeliveryAttempt>,
}

/// One attempt to deliver a webhook.
#[derive(ToSchema)]
pub struct DeliveryAttempt {
    pub at: DateTime<Utc>,
    /// The receiver's answer; absent when it did not answer.
    pub status_code: Option<i32>,
    /// Why the attempt failed (a timeout, a refused connection, a non-2xx status).
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// `POST {prefix}/deliveries/{id}/redeliver`
#[derive(ToSchema)]
pub struct Redelivery {
    pub id: String,
    /// Always `pending`: the delivery is sent again now.
    #[schema(example = "pending")]
    pub status: DeliveryStatus,
}

/// `GET /healthz`
#[derive(ToSchema)]
pub struct Health {
    /// `ok` while serving, `stopping` once shutdown began (answered with 503).
    #[schema(example = "ok")]
    pub status: String,
    /// Tasks waiting in comfyd's queue.
    pub queued: u64,
    pub backends_up: u64,
    pub backends: u64,
}

/// What a webhook carries: the task's record, the same JSON as `GET {prefix}/tasks/{id}`.
#[derive(ToSchema)]
pub struct WebhookPayload(pub TaskRecord);

/// `GET /readyz`: the same fields whether ready (200) or not (503); a 503 adds `error`, `message`
/// and `reasons`.
#[derive(ToSchema)]
pub struct Readiness {
    /// `ready`; only on a 200.
    #[schema(example = "ready")]
    pub status: Option<String>,
    /// `ok` or `unreachable`.
    #[schema(example = "ok")]
    pub database: String,
    pub backends_up: u64,
    pub backends: u64,
    /// Tasks waiting in comfyd's queue.
    pub queued: u64,
    /// `not_ready`; only on a 503.
    #[schema(example = "not_ready")]
    pub error: Option<String>,
    /// Every reason in one readable line; only on a 503.
    pub message: Option<String>,
    /// Only on a 503.
    pub reasons: Option<Vec<ReadinessReason>>,
}

/// Why comfyd is not ready.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessReason {
    ShuttingDown,
    DatabaseUnreachable,
    NoBackendUp,
}

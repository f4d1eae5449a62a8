//! Task status, listing, events and cancel.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::{self, Submitter};
use super::input::query_int;
use super::{ApiError, AppState};
use crate::access::Caller;
use crate::db::{self, tasks::TaskFilter};
use crate::dispatch::messages::{CancelOutcome, CancelTask};
use crate::intake::check_storable;
use crate::task::{Status, TaskRecord};

async fn record(state: &AppState, caller: &Caller, id: &str) -> Result<TaskRecord, ApiError> {
    let task = auth::visible_task(state, caller, id).await?;
    let outputs = db::outputs::for_task(&state.db, &task.id).await?;
    let mut record = TaskRecord::new(&task, &outputs);
    with_urls(state, &mut record).await?;
    Ok(record)
}

/// Sets the outputs' `url`s of a record about to be answered (fresh ones: presigned URLs expire).
async fn with_urls(state: &AppState, record: &mut TaskRecord) -> Result<(), ApiError> {
    state
        .urls
        .fill(record)
        .await
        .map_err(|e| ApiError::Internal(e.into()))
}

/// `GET {prefix}/tasks/{id}`: by comfyd id or client_task_id.
#[utoipa::path(
    get,
    path = "/tasks/{id}",
    tag = "Tasks",
    operation_id = "get_task",
    summary = "A task's status and outputs",
    params(("id" = String, Path, description = "comfyd's task id, or the client's `client_task_id`")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The task", body = crate::task::TaskRecord),
        (status = 404, description = "No task has that id or client_task_id", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn get(
    state: web::Data<AppState>,
    Submitter(caller): Submitter,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(record(&state, &caller, &id).await?))
}

/// Filters and paging of `GET {prefix}/tasks`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tasks in this status.
    #[param(value_type = Option<crate::task::Status>)]
    status: Option<String>,
    /// Only tasks of this workflow.
    workflow: Option<String>,
    /// Page size.
    #[param(value_type = Option<u64>, minimum = 1, maximum = 500, default = 50)]
    // Integers as text, range-checked by `query_int`: a 422 naming them, whatever they hold.
    limit: Option<String>,
    /// Tasks to skip, newest first.
    #[param(value_type = Option<u64>, default = 0)]
    offset: Option<String>,
}

/// Largest `offset`: the databases take a signed 64-bit integer (sea-query's SQLite binding would
/// panic on a larger one).
const MAX_OFFSET: u64 = i64::MAX as u64;

/// `GET {prefix}/tasks?status=&workflow=&limit=50&offset=0`, newest first.
#[utoipa::path(
    get,
    path = "/tasks",
    tag = "Tasks",
    operation_id = "list_tasks",
    summary = "Tasks, newest first, with the total count",
    params(ListQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "One page of tasks", body = crate::routes::openapi::schemas::TaskList),
        (status = 400, description = "The query string is malformed (an unknown parameter, a non-number)", body = crate::routes::error::ErrorBody),
        (status = 422, description = "`status` is not a status, or `limit` is out of range", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn list(
    state: web::Data<AppState>,
    Submitter(caller): Submitter,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::field("status", format!("must be one of {}", all.join(", ")))
        })?),
    };
    let limit = query_int("limit", q.limit.as_deref(), 50, 1..=500)?;
    let offset = query_int("offset", q.offset.as_deref(), 0, 0..=MAX_OFFSET)?;
    if let Some(w) = &q.workflow {
        check_storable("workflow", w).map_err(|e| ApiError::Invalid(vec![e]))?;
    }
    let filter = TaskFilter {
        status,
        workflow: q.workflow.clone(),
        limit,
        offset,
        owner: caller.listing_owner(),
    };
    let (rows, total) = db::tasks::list(&state.db, &filter).await?;
    let mut tasks = Vec::with_capacity(rows.len());
    for t in &rows {
        let outputs = db::outputs::for_task(&state.db, &t.id).await?;
        let mut record = TaskRecord::new(t, &outputs);
        with_urls(&state, &mut record).await?;
        tasks.push(record);
    }
    Ok(HttpResponse::Ok()
        .json(json!({ "tasks": tasks, "total": total, "limit": limit, "offset": filter.offset })))
}

/// `GET {prefix}/tasks/{id}/events`: the task's flow, step by step.
#[utoipa::path(
    get,
    path = "/tasks/{id}/events",
    tag = "Tasks",
    operation_id = "task_events",
    summary = "A task's flow, step by step",
    params(("id" = String, Path, description = "comfyd's task id, or the client's `client_task_id`")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The task's events, oldest first", body = crate::routes::openapi::schemas::TaskEvents),
        (status = 404, description = "No task has that id or client_task_id", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn events(
    state: web::Data<AppState>,
    Submitter(caller): Submitter,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    // The task, not its record: its outputs' URLs are not answered here.
    let task = auth::visible_task(&state, &caller, &id).await?;
    let events: Vec<_> = db::events::for_task(&state.db, &task.id)
        .await?
        .into_iter()
        .map(|e| {
            let details: serde_json::Value = serde_json::from_str(&e.details).unwrap_or_default();
            json!({ "kind": e.kind, "at": e.at, "details": details })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "task_id": task.id, "events": events })))
}

/// `POST {prefix}/tasks/{id}/cancel`: 200 with the cancelled task, 409 if it had already ended.
#[utoipa::path(
    post,
    path = "/tasks/{id}/cancel",
    tag = "Tasks",
    operation_id = "cancel_task",
    summary = "Cancel a task",
    description = "A queued task is removed, a dispatched one deleted from the ComfyUI queue, a running \
one interrupted. A cancel that lands just as ComfyUI finishes wins: what was stored meanwhile is removed.",
    params(("id" = String, Path, description = "comfyd's task id, or the client's `client_task_id`")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The cancelled task", body = crate::task::TaskRecord),
        (status = 404, description = "No task has that id or client_task_id", body = crate::routes::error::ErrorBody),
        (status = 409, description = "The task had already ended (or its outputs are being stored); `task` holds it", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn cancel(
    state: web::Data<AppState>,
    Submitter(caller): Submitter,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let task = record(&state, &caller, &id).await?;
    // Not queued behind a database outage: the client retries.
    super::outage::check(&state)?;
    match state
        .dispatcher
        .send(CancelTask {
            task_id: task.id.clone().into(),
        })
        .await??
    {
        CancelOutcome::Cancelled => {
            Ok(HttpResponse::Ok().json(record(&state, &caller, &task.id).await?))
        }
        CancelOutcome::AlreadyFinished => {
            let now = record(&state, &caller, &task.id).await?;
            Err(ApiError::Conflict {
                message: format!("task already ended: {}", now.status),
                task: Some(Box::new(now)),
            })
        }
    }
}

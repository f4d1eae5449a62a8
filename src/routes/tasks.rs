//! Task status, listing, events and cancel.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::input::{check_storable, query_int};
use super::{ApiError, AppState};
use crate::dispatch::supervisor::{CancelOutcome, CancelTask};
use crate::store::{self, TaskFilter};
use crate::task::{Status, TaskRecord};

async fn record(state: &AppState, id: &str) -> Result<TaskRecord, ApiError> {
    let task = store::find_task(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no task with id or client_task_id {id:?}")))?;
    let outputs = store::task_outputs(&state.db, &task.id).await?;
    Ok(TaskRecord::new(&task, &outputs))
}

/// `GET {prefix}/tasks/{id}`: by comfyd id or client_task_id.
pub async fn get(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(record(&state, &id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    workflow: Option<String>,
    // Integers as text, range-checked by `query_int`: a 422 naming them, whatever they hold.
    limit: Option<String>,
    offset: Option<String>,
}

/// Largest `offset`: the databases take a signed 64-bit integer (sea-query's SQLite binding would
/// panic on a larger one).
const MAX_OFFSET: u64 = i64::MAX as u64;

/// `GET {prefix}/tasks?status=&workflow=&limit=50&offset=0`, newest first.
pub async fn list(
    state: web::Data<AppState>,
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
    };
    let (rows, total) = store::list_tasks(&state.db, &filter).await?;
    let mut tasks = Vec::with_capacity(rows.len());
    for t in &rows {
        let outputs = store::task_outputs(&state.db, &t.id).await?;
        tasks.push(TaskRecord::new(t, &outputs));
    }
    Ok(HttpResponse::Ok()
        .json(json!({ "tasks": tasks, "total": total, "limit": limit, "offset": filter.offset })))
}

/// `GET {prefix}/tasks/{id}/events`: the task's flow, step by step.
pub async fn events(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let task = record(&state, &id).await?;
    let events: Vec<_> = store::task_events(&state.db, &task.id)
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
pub async fn cancel(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let task = record(&state, &id).await?;
    match state
        .supervisor
        .send(CancelTask {
            task_id: task.id.clone(),
        })
        .await??
    {
        CancelOutcome::Cancelled => Ok(HttpResponse::Ok().json(record(&state, &task.id).await?)),
        CancelOutcome::AlreadyFinished => {
            let now = record(&state, &task.id).await?;
            Err(ApiError::Conflict {
                message: format!("task already ended: {}", now.status),
                task: Some(Box::new(now)),
            })
        }
    }
}

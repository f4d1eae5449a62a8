//! The webhook outbox as clients see it: a task's deliveries with every attempt, and redelivery.

use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde_json::json;

use super::auth::{self, Admin, Submitter};
use super::{ApiError, AppState};
use crate::db;
use crate::postprocess::notifier::PollNow;
use crate::postprocess::recorder::Redeliver;

/// `GET {prefix}/tasks/{id}/deliveries`
#[utoipa::path(
    get,
    path = "/tasks/{id}/deliveries",
    tag = "Deliveries",
    operation_id = "task_deliveries",
    summary = "A task's webhooks, each with every attempt",
    params(("id" = String, Path, description = "comfyd's task id, or the client's `client_task_id`")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The task's deliveries", body = crate::routes::openapi::schemas::TaskDeliveries),
        (status = 404, description = "No task has that id or client_task_id", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn for_task(
    state: web::Data<AppState>,
    Submitter(caller): Submitter,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let task = auth::visible_task(&state, &caller, &id).await?;
    let mut out = Vec::new();
    for d in db::deliveries::for_task(&state.db, &task.id).await? {
        let attempts: Vec<_> = db::deliveries::attempts(&state.db, &d.id)
            .await?
            .into_iter()
            .map(|a| json!({ "at": a.at, "status_code": a.status_code, "error": a.error, "duration_ms": a.duration_ms }))
            .collect();
        out.push(json!({
            "id": d.id, "url": d.url, "status": d.status, "attempts": d.attempts,
            "next_attempt_at": d.next_attempt_at, "give_up_at": d.give_up_at,
            "last_status_code": d.last_status_code, "last_error": d.last_error,
            "created_at": d.created_at, "delivered_at": d.delivered_at, "history": attempts,
        }));
    }
    Ok(HttpResponse::Ok().json(json!({ "task_id": task.id, "deliveries": out })))
}

/// `POST {prefix}/deliveries/{id}/redeliver`: sends the same message (same webhook-id) again now,
/// with a fresh retry horizon, whatever its state.
#[utoipa::path(
    post,
    path = "/deliveries/{id}/redeliver",
    tag = "Deliveries",
    operation_id = "redeliver",
    summary = "Send a webhook again now",
    description = "The same message with the same `webhook-id`, with a fresh retry horizon, whatever \
the delivery's state.",
    params(("id" = String, Path, description = "The delivery's id (its `webhook-id`)")),
    security(("api_key" = ["admin"])),
    responses(
        (status = 202, description = "Queued for sending now", body = crate::routes::openapi::schemas::Redelivery),
        (status = 404, description = "No delivery has that id", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 403, description = "API keys are configured and the key is a submit key: this route needs an admin key", body = crate::routes::error::ErrorBody),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn redeliver(
    state: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    // No delivery id holds a NUL, and PostgreSQL would fail the query on one.
    if id.contains('\0') {
        return Err(ApiError::NotFound(format!("no delivery {:?}", id.as_str())));
    }
    let horizon = chrono::Duration::seconds(
        state
            .settings
            .webhooks
            .retry_horizon_secs
            .min(i64::MAX as u64) as i64,
    );
    // Not queued behind a database outage: the client retries.
    super::outage::check(&state)?;
    let found = state
        .recorder
        .send(Redeliver {
            delivery_id: id.to_string(),
            give_up_at: Utc::now() + horizon,
        })
        .await??;
    if !found {
        return Err(ApiError::NotFound(format!("no delivery {:?}", id.as_str())));
    }
    state.notifier.do_send(PollNow);
    Ok(HttpResponse::Accepted().json(json!({ "id": id.as_str(), "status": "pending" })))
}

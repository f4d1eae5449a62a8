//! Liveness, readiness and the backends' state.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use sea_orm::ConnectionTrait;
use serde_json::json;

use super::auth::Admin;
use super::{ApiError, AppState};
use crate::dispatch::messages::Snapshot;

/// Longest `/readyz` waits for the database to answer its probe.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /healthz`: 200 while comfyd serves and its dispatcher answers (even with every backend down:
/// tasks are still accepted and queued), 503 while shutting down.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "Service",
    operation_id = "healthz",
    summary = "Liveness",
    description = "200 while comfyd serves and its dispatcher answers, even with every backend down \
(tasks are still accepted and queued); 503 while shutting down.",
    responses(
        (status = 200, description = "Serving", body = crate::routes::openapi::schemas::Health),
        (status = 503, description = "Shutting down (`status` is `stopping`)", body = crate::routes::openapi::schemas::Health),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
    )
)]
pub async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let snap = state.dispatcher.send(Snapshot).await?;
    let up = snap.backends.iter().filter(|b| b.up).count();
    let body = json!({
        "status": if state.accepting() { "ok" } else { "stopping" },
        "queued": snap.queued,
        "backends_up": up,
        "backends": snap.backends.len(),
    });
    Ok(if state.accepting() {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    }
    .json(body))
}

/// `GET {prefix}/backends`
#[utoipa::path(
    get,
    path = "/backends",
    tag = "Service",
    operation_id = "backends",
    summary = "Each ComfyUI server, up or down, with its jobs",
    security(("api_key" = ["admin"])),
    responses(
        (status = 200, description = "The dispatcher's view", body = crate::dispatch::messages::SnapshotView),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 403, description = "API keys are configured and the key is a submit key: this route needs an admin key", body = crate::routes::error::ErrorBody),
    )
)]
pub async fn backends(state: web::Data<AppState>, _: Admin) -> Result<HttpResponse, ApiError> {
    let snap = state.dispatcher.send(Snapshot).await?;
    Ok(HttpResponse::Ok().json(snap))
}

/// `GET /readyz`: 200 when comfyd can take and run tasks now; else 503 (with `Retry-After`) in the
/// API's error shape, saying why: shutting down, database unreachable (the Recorder's last write
/// failed for want of it, or it does not answer a query within a second), or no backend up. For a
/// load balancer: unlike `/healthz`, which stays 200 while the process serves.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "Service",
    operation_id = "readyz",
    summary = "Readiness, for a load balancer",
    description = "200 when comfyd can take and run tasks now; 503 otherwise, saying why in `reasons`: \
shutting down, the database unreachable (the last write failed for want of it, or it does not answer \
a query within a second), no backend up. Unlike `/healthz`, which stays 200 while the process serves.",
    responses(
        (status = 200, description = "Ready (`status` is `ready`)", body = crate::routes::openapi::schemas::Readiness),
        (status = 503, description = "Not ready (`error` is `not_ready`; `reasons` and `message` say why); retry after `Retry-After` seconds",
            body = crate::routes::openapi::schemas::Readiness,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again"))),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let snap = state.dispatcher.send(Snapshot).await?;
    let up = snap.backends.iter().filter(|b| b.up).count();
    let mut reasons = Vec::new();
    let mut details = Vec::new();
    if !state.accepting() {
        reasons.push("shutting_down");
        details.push("comfyd is shutting down".to_string());
    }
    let database = match state.db_health.unreachable() {
        Some(why) => Err(why),
        None => match actix_rt::time::timeout(
            READY_PROBE_TIMEOUT,
            state.db.execute_unprepared("SELECT 1"),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("database unreachable: {e}")),
            Err(_) => Err(format!(
                "database unreachable: no answer within {} ms",
                READY_PROBE_TIMEOUT.as_millis()
            )),
        },
    };
    if let Err(why) = &database {
        reasons.push("database_unreachable");
        details.push(why.clone());
    }
    if up == 0 {
        reasons.push("no_backend_up");
        details.push(format!(
            "none of the {} backends is up",
            snap.backends.len()
        ));
    }
    let mut body = json!({
        "database": if database.is_ok() { "ok" } else { "unreachable" },
        "backends_up": up,
        "backends": snap.backends.len(),
        "queued": snap.queued,
    });
    if reasons.is_empty() {
        body["status"] = json!("ready");
        return Ok(HttpResponse::Ok().json(body));
    }
    body["error"] = json!("not_ready");
    body["message"] = json!(format!("not ready: {}", details.join("; ")));
    body["reasons"] = json!(reasons);
    Ok(HttpResponse::ServiceUnavailable()
        .insert_header((
            actix_web::http::header::RETRY_AFTER,
            super::error::RETRY_AFTER_SECS.to_string(),
        ))
        .json(body))
}

/// `GET /metrics`: comfyd's Prometheus metrics in the text exposition format. The gauges (queue,
/// backends) are read from the dispatcher's snapshot now; the counters and histograms are kept by
/// the actors as things happen (see `crate::metrics`). Open like `/healthz`: no task ids or secrets.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "Service",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "The metrics in Prometheus' text exposition format (0.0.4): tasks accepted and \
finished, queue depth, backends, dispatch/execution/store/webhook latency histograms, webhook \
attempts and uploads. Labels are bounded (no task ids).",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "text/plain"),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
    )
)]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let snap = state.dispatcher.send(Snapshot).await?;
    crate::metrics::set_queue(&snap.queued_by_priority);
    crate::metrics::set_backends(snap.backends.iter().map(|b| crate::metrics::BackendGauges {
        name: b.name.as_str(),
        up: b.up,
        in_flight: b.in_flight,
        queue_remaining: b.queue_remaining,
    }));
    Ok(HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(crate::metrics::render()))
}

//! Liveness and the backends' state.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::Admin;
use super::{ApiError, AppState};
use crate::dispatch::supervisor::Snapshot;

/// `GET /healthz`: 200 while comfyd serves and its supervisor answers (even with every backend down:
/// tasks are still accepted and queued), 503 while shutting down.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "Service",
    operation_id = "healthz",
    summary = "Liveness",
    description = "200 while comfyd serves and its supervisor answers, even with every backend down \
(tasks are still accepted and queued); 503 while shutting down.",
    responses(
        (status = 200, description = "Serving", body = crate::routes::openapi::schemas::Health),
        (status = 503, description = "Shutting down (`status` is `stopping`)", body = crate::routes::openapi::schemas::Health),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
    )
)]
pub async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let snap = state.supervisor.send(Snapshot).await?;
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
    responses(
        (status = 200, description = "The supervisor's view", body = crate::dispatch::supervisor::SnapshotView),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
    )
)]
pub async fn backends(state: web::Data<AppState>, _: Admin) -> Result<HttpResponse, ApiError> {
    let snap = state.supervisor.send(Snapshot).await?;
    Ok(HttpResponse::Ok().json(snap))
}

//! Liveness and the backends' state.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::Admin;
use super::{ApiError, AppState};
use crate::dispatch::supervisor::Snapshot;

/// `GET /healthz`: 200 while comfyd serves and its supervisor answers (even with every backend down:
/// tasks are still accepted and queued), 503 while shutting down.
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
pub async fn backends(state: web::Data<AppState>, _: Admin) -> Result<HttpResponse, ApiError> {
    let snap = state.supervisor.send(Snapshot).await?;
    Ok(HttpResponse::Ok().json(snap))
}

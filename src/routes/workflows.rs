//! Workflow discovery: every workflow with its parameter schema (JSON Schema).

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::Submitter;
use super::{ApiError, AppState};

/// `GET {prefix}/workflows`
pub async fn list(state: web::Data<AppState>, _: Submitter) -> HttpResponse {
    let set = state.workflows.current();
    let all: Vec<_> = set.iter().map(|w| w.describe()).collect();
    HttpResponse::Ok().json(json!({ "workflows": all }))
}

/// `GET {prefix}/workflows/{name}`
pub async fn get(
    state: web::Data<AppState>,
    _: Submitter,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let set = state.workflows.current();
    let w = set
        .get(name.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("no workflow named {:?}", name.as_str())))?;
    Ok(HttpResponse::Ok().json(w.describe()))
}

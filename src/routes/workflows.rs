//! Workflow discovery: every workflow with its parameter schema (JSON Schema).

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::Submitter;
use super::{ApiError, AppState};

/// `GET {prefix}/workflows`
#[utoipa::path(
    get,
    path = "/workflows",
    tag = "Workflows",
    operation_id = "list_workflows",
    summary = "Every loaded workflow with its parameters as a JSON Schema",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The workflows, sorted by name", body = crate::routes::openapi::schemas::WorkflowList),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
    )
)]
pub async fn list(state: web::Data<AppState>, _: Submitter) -> HttpResponse {
    let set = state.workflows.current();
    let all: Vec<_> = set.iter().map(|w| w.describe()).collect();
    HttpResponse::Ok().json(json!({ "workflows": all }))
}

/// `GET {prefix}/workflows/{name}`
#[utoipa::path(
    get,
    path = "/workflows/{name}",
    tag = "Workflows",
    operation_id = "get_workflow",
    summary = "One workflow with its parameters as a JSON Schema",
    params(("name" = String, Path, description = "The workflow's name")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The workflow", body = crate::routes::openapi::schemas::WorkflowDescription),
        (status = 404, description = "No workflow has that name", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
    )
)]
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

//! Deployments over HTTP (admin keys): start one (a release checked on every configured backend by
//! the deployer, `crate::deploy`), list them newest first, show one with its per-backend results,
//! cancel one. The rows are `db::deployments`'s. One at a time: a second start while one is not
//! terminal is a 409 naming the running one. A rollback is a deployment of an earlier release.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::Admin;
use super::input::{positive_path_int, query_int};
use super::{ApiError, AppState};
use crate::db::{self, deployments::Created, deployments::State};
use crate::entity::{deployment, deployment_backend};

/// The body of `POST {prefix}/deployments`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    /// The release to deploy (its version).
    #[schema(minimum = 1, example = 2)]
    pub release: i64,
    /// How many backends are checked at once (the others keep serving meanwhile).
    #[schema(minimum = 1, maximum = 100, default = 1)]
    pub max_unavailable: Option<i64>,
}

/// One backend's part in a deployment.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeploymentBackend {
    /// The backend's name: its configured URL without a trailing `/`.
    pub backend: String,
    /// `pending`, `checking`, `passed`, `failed` or `switched`.
    pub state: String,
    /// Why it failed.
    pub reason: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// A deployment, as answered.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeploymentRecord {
    pub id: i64,
    /// The release deployed.
    pub release: i32,
    /// The release served when it was created (null: the workflows folder).
    pub previous_release: Option<i32>,
    /// `pending`, `checking`, `rolling`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    pub max_unavailable: i32,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// Each backend, in the configuration's order (in the list: omitted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<DeploymentBackend>>,
}

/// `GET {prefix}/deployments`
#[derive(utoipa::ToSchema)]
pub struct DeploymentList {
    /// Newest first, without their backends.
    pub deployments: Vec<DeploymentRecord>,
}

impl DeploymentRecord {
    fn of(d: deployment::Model, backends: Option<Vec<deployment_backend::Model>>) -> Self {
        DeploymentRecord {
            id: d.id,
            release: d.release_version,
            previous_release: d.previous_version,
            state: d.state,
            max_unavailable: d.max_unavailable,
            reason: d.reason,
            created_at: d.created_at,
            started_at: d.started_at,
            ended_at: d.ended_at,
            updated_at: d.updated_at,
            backends: backends.map(|rows| {
                rows.into_iter()
                    .map(|b| DeploymentBackend {
                        backend: b.backend,
                        state: b.state,
                        reason: b.reason,
                        started_at: b.started_at,
                        ended_at: b.ended_at,
                    })
                    .collect()
            }),
        }
    }
}

async fn full(state: &AppState, d: deployment::Model) -> Result<DeploymentRecord, ApiError> {
    let backends = db::deployments::backends(&state.db, d.id).await?;
    Ok(DeploymentRecord::of(d, Some(backends)))
}

/// A 409 naming the deployment that is not terminal.
fn running(message: String, d: DeploymentRecord) -> HttpResponse {
    HttpResponse::Conflict().json(json!({
        "error": "conflict",
        "message": message,
        "deployment": d,
    }))
}

/// `POST {prefix}/deployments`
#[utoipa::path(
    post,
    path = "/deployments",
    tag = "Deployments",
    operation_id = "create_deployment",
    summary = "Deploy a release to the configured backends",
    description = "Starts a deployment: every configured backend is checked against the release \
(as readiness does: node classes, model files, smoke runs), `max_unavailable` at a time, and each \
result recorded. It ends `succeeded` when at least one backend passed (those that did not are \
listed `failed`, with why) and `failed` when none did. One deployment at a time: while one is not \
terminal, another is refused with 409 naming it. A rollback is a deployment of an earlier release.",
    request_body(content = DeployBody, content_type = "application/json"),
    security(("api_key" = ["admin"])),
    responses(
        (status = 202, description = "The deployment, pending; follow it with `GET {prefix}/deployments/{id}`", body = DeploymentRecord),
        (status = 400, description = "The body is not the JSON object it should be", body = crate::routes::error::ErrorBody),
        (status = 409, description = "A deployment is not terminal: `{error, message, deployment}` with that one", body = crate::routes::error::ErrorBody),
        (status = 422, description = "`release` is not a published release, or `max_unavailable` is out of range", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 403, description = "API keys are configured and the key is a submit key: this route needs an admin key", body = crate::routes::error::ErrorBody),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn create(
    state: web::Data<AppState>,
    _: Admin,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: DeployBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    let release = i32::try_from(body.release)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::field("release", "must be a positive integer".to_string()))?;
    let max_unavailable = match body.max_unavailable {
        None => 1,
        Some(n @ 1..=100) => n as i32,
        Some(_) => {
            return Err(ApiError::field(
                "max_unavailable",
                "must be an integer from 1 to 100".to_string(),
            ))
        }
    };
    if db::releases::get(&state.db, release).await?.is_none() {
        return Err(ApiError::field("release", format!("no release {release}")));
    }
    let backends = state.deployer.backend_names();
    match db::deployments::create(&state.db, release, max_unavailable, &backends).await? {
        Created::New(d) => {
            state.deployer.start(d.id);
            let record = full(&state, d).await?;
            Ok(HttpResponse::Accepted().json(record))
        }
        Created::Running(d) => {
            let message = format!(
                "deployment {} of release {} is {}: one at a time (cancel it, or wait for it)",
                d.id, d.release_version, d.state
            );
            Ok(running(message, full(&state, d).await?))
        }
    }
}

/// Paging of `GET {prefix}/deployments`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// How many, newest first.
    #[param(value_type = Option<u64>, minimum = 1, maximum = 100, default = 20)]
    // Text, range-checked by `query_int`: a 422 naming it, whatever it holds.
    limit: Option<String>,
}

/// `GET {prefix}/deployments?limit=20`, newest first.
#[utoipa::path(
    get,
    path = "/deployments",
    tag = "Deployments",
    operation_id = "list_deployments",
    summary = "Deployments, newest first",
    params(ListQuery),
    security(("api_key" = ["admin"])),
    responses(
        (status = 200, description = "The newest deployments (without their backends)", body = DeploymentList),
        (status = 400, description = "The query string is malformed (an unknown parameter)", body = crate::routes::error::ErrorBody),
        (status = 422, description = "`limit` is out of range", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 403, description = "API keys are configured and the key is a submit key: this route needs an admin key", body = crate::routes::error::ErrorBody),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn list(
    state: web::Data<AppState>,
    _: Admin,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query_int("limit", q.limit.as_deref(), 20, 1..=100)?;
    let rows = db::deployments::list(&state.db, limit).await?;
    let deployments: Vec<DeploymentRecord> = rows
        .into_iter()
        .map(|d| DeploymentRecord::of(d, None))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "deployments": deployments })))
}

/// `GET {prefix}/deployments/{id}`
#[utoipa::path(
    get,
    path = "/deployments/{id}",
    tag = "Deployments",
    operation_id = "get_deployment",
    summary = "One deployment, with each backend's result",
    params(("id" = i64, Path, minimum = 1, description = "The deployment's id")),
    security(("api_key" = ["admin"])),
    responses(
        (status = 200, description = "The deployment, with each backend's state, times and reason", body = DeploymentRecord),
        (status = 400, description = "`id` is not a positive integer", body = crate::routes::error::ErrorBody),
        (status = 404, description = "No deployment has that id", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 403, description = "API keys are configured and the key is a submit key: this route needs an admin key", body = crate::routes::error::ErrorBody),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn get(
    state: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = positive_path_int::<i64>("id", &id)?;
    let d = db::deployments::get(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no deployment {id}")))?;
    Ok(HttpResponse::Ok().json(full(&state, d).await?))
}

/// `POST {prefix}/deployments/{id}/cancel`
#[utoipa::path(
    post,
    path = "/deployments/{id}/cancel",
    tag = "Deployments",
    operation_id = "cancel_deployment",
    summary = "Cancel a deployment that is not terminal",
    description = "The deployment becomes `cancelled` and stops before its next backend; the \
release served before it keeps serving. A terminal one is a 409.",
    params(("id" = i64, Path, minimum = 1, description = "The deployment's id")),
    security(("api_key" = ["admin"])),
    responses(
        (status = 200, description = "The deployment, cancelled", body = DeploymentRecord),
        (status = 400, description = "`id` is not a positive integer", body = crate::routes::error::ErrorBody),
        (status = 404, description = "No deployment has that id", body = crate::routes::error::ErrorBody),
        (status = 409, description = "The deployment is already terminal: `{error, message, deployment}`", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 403, description = "API keys are configured and the key is a submit key: this route needs an admin key", body = crate::routes::error::ErrorBody),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn cancel(
    state: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = positive_path_int::<i64>("id", &id)?;
    let cancelled = db::deployments::transition(
        &state.db,
        id,
        &State::RUNNING,
        State::Cancelled,
        Some("cancelled by an operator"),
    )
    .await?;
    let d = db::deployments::get(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no deployment {id}")))?;
    if !cancelled {
        let message = format!("deployment {id} is already {}", d.state);
        return Ok(running(message, full(&state, d).await?));
    }
    Ok(HttpResponse::Ok().json(full(&state, d).await?))
}

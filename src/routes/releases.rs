//! Releases over HTTP (admin keys): publish the workflows folder as a release, list releases, show
//! one, check every configured backend against one (readiness, `crate::readiness`). The checks and the snapshot are `release`'s, the rows `db::releases`'s; the same as
//! `comfyd release` (`cli::release`). Publishing changes nothing that is served: a deployment
//! does (`routes::deployments`).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::Admin;
use super::input::{positive_path_int, query_int};
use super::{ApiError, AppState};
use crate::db::{self, releases::NewRelease, releases::Outcome};
use crate::readiness::{self, ReadinessError};
use crate::release::{self, PublishError, ReleaseRecord, Snapshot};
use crate::workflow::FieldError;

/// The body of `POST {prefix}/releases` (optional: an empty body publishes with neither).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// A development ComfyUI (http or https, no credentials) whose environment is recorded; the
    /// publish is refused if it lacks a node class or model file the workflows use.
    #[schema(format = "uri", example = "http://dev-comfyui:8188")]
    pub from: Option<String>,
    /// A note kept with the release (at most 2000 characters).
    pub note: Option<String>,
}

fn record(
    row: &crate::entity::release::Model,
    with_files: bool,
) -> Result<ReleaseRecord, ApiError> {
    ReleaseRecord::of(row, with_files)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("reading a stored release")))
}

fn fields(field: &str, problems: impl IntoIterator<Item = String>) -> ApiError {
    ApiError::Invalid(
        problems
            .into_iter()
            .map(|reason| FieldError {
                field: field.into(),
                reason,
            })
            .collect(),
    )
}

/// `POST {prefix}/releases`
#[utoipa::path(
    post,
    path = "/releases",
    tag = "Releases",
    operation_id = "publish_release",
    summary = "Publish the workflows folder as a release",
    description = "Snapshots every workflow (manifest and graph) into an immutable release with a \
version number and a content hash, with the node classes and model files its graphs use. With \
`from`, the development ComfyUI's environment is recorded too, and a draft needing what it lacks is \
refused. The same content published again is the same release (200). Publishing changes nothing that \
is served.",
    request_body(content = Option<PublishBody>, content_type = "application/json"),
    security(("api_key" = ["admin"])),
    responses(
        (status = 201, description = "A new release", body = ReleaseRecord),
        (status = 200, description = "A release with this content already exists: that one, unchanged", body = ReleaseRecord),
        (status = 400, description = "The body is not the JSON object it should be", body = crate::routes::error::ErrorBody),
        (status = 422, description = "The workflows do not load (`workflows`, every problem), `from` is not a usable URL, cannot be read or lacks what the workflows need (`from`, each missing node class or model), or `note` is too long", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 403, description = "API keys are configured and the key is a submit key: this route needs an admin key", body = crate::routes::error::ErrorBody),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn publish(
    state: web::Data<AppState>,
    _: Admin,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: PublishBody = if body.iter().all(u8::is_ascii_whitespace) {
        PublishBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?
    };
    let dir = state.settings.workflows.dir.clone();
    // Reading the folder is blocking file IO: off the server's threads.
    let snapshot = web::block(move || Snapshot::of_dir(&dir))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("reading the workflows: {e}")))?
        .map_err(|e| fields("workflows", e.problems))?;
    let draft = release::prepare(snapshot, body.from.as_deref(), body.note)
        .await
        .map_err(|e| match e {
            PublishError::Load(e) => fields("workflows", e.problems),
            PublishError::Note(reason) => ApiError::field("note", reason),
            PublishError::Environment(e) => ApiError::field("from", e.to_string()),
            PublishError::Missing { server, missing } => fields(
                "from",
                missing
                    .problems()
                    .into_iter()
                    .map(|p| format!("{server}: {p}")),
            ),
        })?;
    let row = NewRelease::of(&draft)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("encoding a release")))?;
    let (stored, outcome) = db::releases::insert_or_existing(&state.db, row).await?;
    let answer = record(&stored, false)?;
    Ok(match outcome {
        Outcome::Created => HttpResponse::Created().json(answer),
        Outcome::Existing => HttpResponse::Ok().json(answer),
    })
}

/// Paging of `GET {prefix}/releases`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// How many, newest first.
    #[param(value_type = Option<u64>, minimum = 1, maximum = 100, default = 20)]
    // Text, range-checked by `query_int`: a 422 naming it, whatever it holds.
    limit: Option<String>,
}

/// `GET {prefix}/releases?limit=20`, newest first.
#[utoipa::path(
    get,
    path = "/releases",
    tag = "Releases",
    operation_id = "list_releases",
    summary = "Releases, newest first",
    params(ListQuery),
    security(("api_key" = ["admin"])),
    responses(
        (status = 200, description = "The newest releases (without their files)", body = crate::routes::openapi::schemas::ReleaseList),
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
    let rows = db::releases::list(&state.db, limit).await?;
    let releases = rows
        .iter()
        .map(|r| record(r, false))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(json!({ "releases": releases })))
}

/// `GET {prefix}/releases/{version}`
#[utoipa::path(
    get,
    path = "/releases/{version}",
    tag = "Releases",
    operation_id = "get_release",
    summary = "One release, with its files",
    params(("version" = i32, Path, minimum = 1, description = "The release's version")),
    security(("api_key" = ["admin"])),
    responses(
        (status = 200, description = "The release, with every workflow's manifest and graph", body = ReleaseRecord),
        (status = 400, description = "`version` is not a positive integer", body = crate::routes::error::ErrorBody),
        (status = 404, description = "No release has that version", body = crate::routes::error::ErrorBody),
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
    version: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let n = positive_path_int::<i32>("version", &version)?;
    let row = db::releases::get(&state.db, n)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no release {n}")))?;
    Ok(HttpResponse::Ok().json(record(&row, true)?))
}

/// Options of `GET {prefix}/releases/{version}/readiness`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadinessQuery {
    /// How long each smoke run may take, in seconds.
    #[param(value_type = Option<u64>, minimum = 1, maximum = 600, default = 60)]
    // Text, range-checked by `query_int`: a 422 naming it, whatever it holds.
    smoke_timeout_secs: Option<String>,
}

/// `GET {prefix}/releases/{version}/readiness`
#[utoipa::path(
    get,
    path = "/releases/{version}/readiness",
    tag = "Releases",
    operation_id = "release_readiness",
    summary = "Check every backend against a release, now",
    description = "Checks every configured ComfyUI server against the release, in parallel: it must \
answer `/system_stats`, have every node class (`/object_info`) and model file (`/models/{folder}`) \
the release's graphs use, and run each workflow's `[smoke]` input to success (one with an image \
URL is not run). Each result is recorded. Being ready does not gate traffic yet.",
    params(
        ("version" = i32, Path, minimum = 1, description = "The release's version"),
        ReadinessQuery,
    ),
    security(("api_key" = ["admin"])),
    responses(
        (status = 200, description = "Each configured backend, ready or not and why", body = crate::readiness::Readiness),
        (status = 400, description = "`version` is not a positive integer, or the query string is malformed", body = crate::routes::error::ErrorBody),
        (status = 404, description = "No release has that version", body = crate::routes::error::ErrorBody),
        (status = 422, description = "`smoke_timeout_secs` is out of range", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 403, description = "API keys are configured and the key is a submit key: this route needs an admin key", body = crate::routes::error::ErrorBody),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn readiness(
    state: web::Data<AppState>,
    _: Admin,
    version: web::Path<String>,
    q: web::Query<ReadinessQuery>,
) -> Result<HttpResponse, ApiError> {
    let n = positive_path_int::<i32>("version", &version)?;
    let max = release::check::MAX_SMOKE_TIMEOUT.as_secs();
    let default = release::check::SMOKE_TIMEOUT.as_secs();
    let secs = query_int(
        "smoke_timeout_secs",
        q.smoke_timeout_secs.as_deref(),
        default,
        1..=max,
    )?;
    let options = release::CheckOptions {
        smoke_timeout: std::time::Duration::from_secs(secs),
    };
    let answer = readiness::check_release(&state.db, &state.settings, n, options)
        .await
        .map_err(|e| match e {
            ReadinessError::NotFound(n) => ApiError::NotFound(format!("no release {n}")),
            ReadinessError::Db(e) => ApiError::from(e),
            e @ ReadinessError::Stored { .. } => ApiError::Internal(anyhow::Error::new(e)),
        })?;
    Ok(HttpResponse::Ok().json(answer))
}

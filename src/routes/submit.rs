//! Submitting tasks over HTTP: the original service's `POST {prefix}` and the typed
//! `POST {prefix}/workflows/{name}/tasks`. Each handler reads the body (within its limits), hands it
//! to the submit service ([`crate::intake`]) and answers with what it says; how a refusal is
//! answered is `routes/error.rs`'s (`From<IntakeError> for ApiError`).

use actix_web::{web, HttpResponse};

use super::auth::Submitter;
use super::input::JsonBody;
use super::{ApiError, AppState};
use crate::intake::{Submission, Target};

/// `POST {prefix}`: `{service_type, client_task_id, client_callback_url, params, priority?}`.
#[utoipa::path(
    post,
    path = "/",
    tag = "Submit",
    operation_id = "submit",
    summary = "Submit a task (the original service's format)",
    description = "Validates the parameters against the workflow named by `service_type`, records the \
task and answers as soon as it is recorded, with status 200 whether the task is new or the same submit \
was already accepted. Image parameters take base64, a `data:image/...;base64,` URL, or an http(s) URL \
that comfyd fetches.",
    request_body(content = crate::routes::openapi::schemas::OriginalSubmit, content_type = "application/json"),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The task, recorded (new, or the one this submit already made)", body = crate::task::TaskRecord),
        (status = 400, description = "The body is not a JSON object (or not JSON)", body = crate::routes::error::ErrorBody),
        (status = 409, description = "`client_task_id` is already used by a task with a different request; `task` holds it", body = crate::routes::error::ErrorBody),
        (status = 413, description = "The body, or an image fetched by URL, is too large", body = crate::routes::error::ErrorBody),
        (status = 422, description = "Fields are wrong (an unknown workflow, a parameter out of range, ...); `fields` lists every one", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 503, description = "comfyd is shutting down, the database is unreachable, or other requests hold the memory budget for bodies and images (`busy`); retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn submit_original(
    state: web::Data<AppState>,
    Submitter(caller): Submitter,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    // The reservation is held until the answer: it covers the images decoded from the body.
    let JsonBody {
        value: body,
        reservation: mut held,
    } = body;
    let accepted = state
        .intake
        .submit(Submission {
            target: Target::ServiceType,
            body,
            caller,
            held: &mut held,
        })
        .await?;
    // The original answered 200 with the record whether or not the task was new.
    Ok(HttpResponse::Ok().json(accepted.record))
}

/// `POST {prefix}/workflows/{name}/tasks`: `{params, client_task_id?, client_callback_url?, priority?}`.
#[utoipa::path(
    post,
    path = "/workflows/{name}/tasks",
    tag = "Submit",
    operation_id = "submit_typed",
    summary = "Submit a task to a named workflow",
    description = "Like the original submit, with the workflow named in the path. Each loaded \
workflow also has its own route in this document, with its parameters spelled out.",
    params(("name" = String, Path, description = "The workflow's name")),
    request_body(content = crate::routes::openapi::schemas::TypedSubmit, content_type = "application/json"),
    security(("api_key" = [])),
    responses(
        (status = 202, description = "Accepted: the task is recorded and queued", body = crate::task::TaskRecord),
        (status = 200, description = "The same submit was already accepted: that task", body = crate::task::TaskRecord),
        (status = 400, description = "The body is not a JSON object (or not JSON)", body = crate::routes::error::ErrorBody),
        (status = 404, description = "No workflow has that name", body = crate::routes::error::ErrorBody),
        (status = 409, description = "`client_task_id` is already used by a task with a different request; `task` holds it", body = crate::routes::error::ErrorBody),
        (status = 413, description = "The body, or an image fetched by URL, is too large", body = crate::routes::error::ErrorBody),
        (status = 422, description = "Fields are wrong; `fields` lists every one", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 503, description = "comfyd is shutting down, the database is unreachable, or other requests hold the memory budget for bodies and images (`busy`); retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn submit_typed(
    state: web::Data<AppState>,
    Submitter(caller): Submitter,
    name: web::Path<String>,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    // The reservation is held until the answer: it covers the images decoded from the body.
    let JsonBody {
        value: body,
        reservation: mut held,
    } = body;
    let accepted = state
        .intake
        .submit(Submission {
            target: Target::Named(name.into_inner()),
            body,
            caller,
            held: &mut held,
        })
        .await?;
    Ok(if accepted.created {
        HttpResponse::Accepted()
    } else {
        HttpResponse::Ok()
    }
    .json(accepted.record))
}

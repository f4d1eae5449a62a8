//! `ApiError`: every way a request can fail, rendered as one JSON shape:
//! `{"error": "<kind>", "message": "...", "fields": [{"field", "reason"}]?, "task": {...}?}`.
//! A 500 says nothing about its cause; the cause is logged once, here.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::intake::IntakeError;
use crate::task::TaskRecord;
use crate::workflow::FieldError;

/// Retry-After of a [`ApiError::Busy`] answer: a burst of large submits drains in about that.
const BUSY_RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not the JSON it should be.
    #[error("{0}")]
    BadRequest(String),
    /// One or more fields are wrong; every one is listed.
    #[error("invalid request: {}", FieldError::summary(.0))]
    Invalid(Vec<FieldError>),
    /// An input is too large (an image fetched by URL, say).
    #[error("{}: {}", .0.field, .0.reason)]
    TooLarge(FieldError),
    /// No API key, or one not in force (401 with `WWW-Authenticate: Bearer`); `invalid` when a key
    /// was given.
    #[error("{message}")]
    Unauthorized { message: String, invalid: bool },
    /// The key's scope does not cover the route.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the task's state (a different body for a known client_task_id,
    /// cancelling a finished task).
    #[error("{message}")]
    Conflict {
        message: String,
        task: Option<Box<TaskRecord>>,
    },
    /// Shutting down, or the database is unreachable: answered with `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
    /// Other requests hold the memory budget for request bodies and images (503 with Retry-After).
    #[error("{0}")]
    Busy(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// The first thing wrong, for a one-line log: `field: reason`, or the message.
    fn first_problem(&self) -> String {
        match self {
            ApiError::Invalid(fields) => match fields.first() {
                Some(f) if fields.len() > 1 => {
                    format!("{}: {} (and {} more)", f.field, f.reason, fields.len() - 1)
                }
                Some(f) => format!("{}: {}", f.field, f.reason),
                None => self.to_string(),
            },
            other => other.to_string(),
        }
    }

    pub fn field(field: &str, reason: impl Into<String>) -> ApiError {
        ApiError::Invalid(vec![FieldError {
            field: field.into(),
            reason: reason.into(),
        }])
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Invalid(_) => "invalid_request",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Busy(_) => "busy",
            ApiError::Internal(_) => "internal",
        }
    }
}

/// Seconds a client is told to wait (`Retry-After`) before it tries a 503 again: long enough not
/// to hammer a database that is coming back, short enough that clients resume soon after it is.
pub const RETRY_AFTER_SECS: u64 = 2;

impl ApiError {
    /// The database cannot be reached now (see [`crate::db_health`]).
    pub fn database_unreachable() -> ApiError {
        ApiError::Unavailable("the database is unreachable; retry later".into())
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        if crate::db_health::is_unreachable(&e) {
            tracing::debug!(error = %e, "request failed: database unreachable");
            return ApiError::database_unreachable();
        }
        ApiError::Internal(e.into())
    }
}

/// How the HTTP API answers a refused submit (the submit service's [`IntakeError`]).
impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> Self {
        let message = e.to_string();
        match e {
            IntakeError::NotAnObject => ApiError::BadRequest(message),
            IntakeError::UnknownWorkflow(_) => ApiError::NotFound(message),
            IntakeError::Invalid(fields) => ApiError::Invalid(fields),
            IntakeError::TooLarge(field) => ApiError::TooLarge(field),
            IntakeError::Budget(e) => super::input::budget_error(e),
            IntakeError::TakenByAnotherKey => ApiError::Conflict {
                message,
                task: None,
            },
            IntakeError::Conflict(task) => ApiError::Conflict {
                message,
                task: Some(task),
            },
            IntakeError::ShuttingDown => ApiError::Unavailable(message),
            IntakeError::DatabaseUnreachable => ApiError::database_unreachable(),
            IntakeError::Database(e) => e.into(),
            IntakeError::Mailbox(e) => e.into(),
            IntakeError::Internal(e) => ApiError::Internal(e),
        }
    }
}

/// A write the Recorder did not do: 503 while the database is unreachable (the client retries), else
/// 500 (see [`crate::postprocess::recorder::RecordError`]).
impl From<crate::postprocess::recorder::RecordError> for ApiError {
    fn from(e: crate::postprocess::recorder::RecordError) -> Self {
        use crate::postprocess::recorder::RecordError;
        match e {
            RecordError::Unreachable(e) => {
                tracing::debug!(error = %e, "request failed: database unreachable");
                ApiError::database_unreachable()
            }
            RecordError::Refused(e) => ApiError::Internal(e.into()),
            RecordError::Stopped => ApiError::Internal(e.into()),
        }
    }
}

impl From<crate::dispatch::messages::DispatchError> for ApiError {
    fn from(e: crate::dispatch::messages::DispatchError) -> Self {
        ApiError::Internal(e.into())
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ApiError::Internal(e.into())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unavailable(_) | ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({ "error": self.kind(), "message": self.to_string() });
        match self {
            ApiError::Invalid(fields) => body["fields"] = json!(fields),
            ApiError::TooLarge(field) => body["fields"] = json!([field]),
            ApiError::Conflict { task: Some(t), .. } => body["task"] = json!(t),
            ApiError::Internal(e) => {
                tracing::error!(error.cause_chain = ?e, error.message = %e, "request failed");
            }
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Unauthorized { invalid, .. } = self {
            // RFC 6750: the scheme, and whether the token given was the trouble.
            response.insert_header((
                actix_web::http::header::WWW_AUTHENTICATE,
                if *invalid {
                    r#"Bearer realm="comfyd", error="invalid_token""#
                } else {
                    r#"Bearer realm="comfyd""#
                },
            ));
        }
        if let ApiError::Busy(_) = self {
            response.insert_header((actix_web::http::header::RETRY_AFTER, BUSY_RETRY_AFTER_SECS));
        }
        if matches!(self, ApiError::Unavailable(_)) {
            response.insert_header((
                actix_web::http::header::RETRY_AFTER,
                RETRY_AFTER_SECS.to_string(),
            ));
        }
        response.json(body)
    }
}

/// Logs every failed request as one short line: method, route, status and the first problem
/// (`POST /api/v1 422 params.prompt: required parameter is missing`). A 500 of ours is logged in
/// full where it is rendered (above); the request body is never logged.
pub async fn log_errors(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let method = req.method().clone();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| req.path().to_string());
    let res = next.call(req).await?;
    let status = res.status();
    if status.is_client_error() || status.is_server_error() {
        let (problem, ours_500) = match res.response().error() {
            Some(e) => match e.as_error::<ApiError>() {
                Some(api) => (api.first_problem(), matches!(api, ApiError::Internal(_))),
                None => (e.to_string(), false),
            },
            None => (String::new(), false),
        };
        let problem = one_line(&problem);
        let code = status.as_u16();
        if status.is_client_error() {
            tracing::warn!(http.method = %method, http.route = %route, http.status_code = code, "{method} {route} {code} {problem}");
        } else if !ours_500 {
            tracing::error!(http.method = %method, http.route = %route, http.status_code = code, "{method} {route} {code} {problem}");
        }
    }
    Ok(res)
}

/// The first line of `s`, at most 200 characters.
fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > 200 {
        format!("{}...", line.chars().take(200).collect::<String>())
    } else {
        line.to_string()
    }
}

/// Turns actix-web's own rejections (malformed JSON, wrong content type, body too large, bad path)
/// into the same JSON shape.
pub fn json_error(
    err: actix_web::error::JsonPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let api = match &err {
        E::OverflowKnownLength { .. } | E::Overflow { .. } => ApiError::TooLarge(FieldError {
            field: "body".into(),
            reason: "request body is too large".into(),
        }),
        E::ContentType => ApiError::BadRequest("Content-Type must be application/json".into()),
        E::Deserialize(e) => ApiError::BadRequest(format!("body is not valid JSON: {e}")),
        other => ApiError::BadRequest(format!("could not read the body: {other}")),
    };
    actix_web::error::InternalError::from_response(err, api.error_response()).into()
}

/// Same for query strings.
pub fn query_error(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    let api = ApiError::BadRequest(format!("invalid query string: {err}"));
    actix_web::error::InternalError::from_response(err, api.error_response()).into()
}

/// The body of every error answer, as [`ApiError::error_response`] writes it; described for the
/// OpenAPI document (`routes/openapi`), whose unit tests check it against what each variant renders.
#[derive(utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorKind,
    /// Readable by the client's developer; for 422, every field's problem in one line.
    pub message: String,
    /// Every rejected field (422), or the one that is too large (413).
    pub fields: Option<Vec<FieldError>>,
    /// The task in question, for a 409 (a known `client_task_id` with a different body, or a
    /// cancel of a task that had already ended).
    pub task: Option<TaskRecord>,
}

/// The `error` of an [`ErrorBody`], one per status: 400 `bad_request` (the body or query is not
/// what it should be), 422 `invalid_request` (fields are wrong; all are listed), 413 `too_large`,
/// 401 `unauthorized` (API keys are configured and the request has none, or one not in force),
/// 403 `forbidden` (a submit key on an admin route), 404 `not_found`, 409 `conflict`,
/// 503 `unavailable` (shutting down or the database unreachable, with `Retry-After`), 503 `busy`
/// (other requests hold the memory budget for bodies and images, with `Retry-After`), 500 `internal`
/// (nothing said about the cause; it is logged).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    InvalidRequest,
    TooLarge,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    Unavailable,
    Busy,
    Internal,
}

/// Same for path segments that do not decode (a `%FF` where text is expected): nothing can have
/// that id, so 404, in the same JSON shape.
pub fn path_error(
    err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    let api = ApiError::NotFound(format!("invalid path: {err}"));
    actix_web::error::InternalError::from_response(err, api.error_response()).into()
}

#[cfg(test)]
mod tests {
    use super::ApiError;

    #[test]
    fn the_api_answers_503_for_an_unreachable_database_and_500_otherwise() {
        use actix_web::http::StatusCode;
        use actix_web::ResponseError;
        use sea_orm::DbErr;

        use crate::postprocess::recorder::RecordError;
        let status = |e: RecordError| ApiError::from(e).status_code();
        let unreachable = DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout);
        assert_eq!(
            status(RecordError::from(unreachable)),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(RecordError::from(DbErr::RecordNotInserted)),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(RecordError::Stopped),
            StatusCode::INTERNAL_SERVER_ERROR
        );

        // A submit's write goes through the intake's error: the same answers.
        use crate::intake::IntakeError;
        let via_intake = |e: RecordError| ApiError::from(IntakeError::from(e)).status_code();
        let unreachable = DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout);
        assert_eq!(
            via_intake(RecordError::from(unreachable)),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            via_intake(RecordError::from(DbErr::RecordNotInserted)),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            via_intake(RecordError::Stopped),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}

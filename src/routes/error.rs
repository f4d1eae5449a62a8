//! `ApiError`: every way a request can fail, rendered as one JSON shape:
//! `{"error": "<kind>", "message": "...", "fields": [{"field", "reason"}]?, "task": {...}?}`.
//! A 500 says nothing about its cause; the cause is logged once, here.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::task::TaskRecord;
use crate::workflow::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not the JSON it should be.
    #[error("{0}")]
    BadRequest(String),
    /// One or more fields are wrong; every one is listed.
    #[error("invalid request: {}", summary(.0))]
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
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

fn summary(fields: &[FieldError]) -> String {
    fields
        .iter()
        .map(|f| format!("{}: {}", f.field, f.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
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
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
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
        if matches!(self, ApiError::Unavailable(_)) {
            response.insert_header((
                actix_web::http::header::RETRY_AFTER,
                RETRY_AFTER_SECS.to_string(),
            ));
        }
        response.json(body)
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
/// 503 `unavailable` (shutting down or the database unreachable, with `Retry-After`), 500 `internal`
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
    Internal,
}

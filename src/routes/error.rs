//! `ApiError`: every way a request can fail, rendered as one JSON shape:
//! `{"error": "<kind>", "message": "...", "fields": [{"field", "reason"}]?, "task": {...}?}`.
//! A 500 says nothing about its cause; the cause is logged once, here.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

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
    #[error("invalid request: {}", summary(.0))]
    Invalid(Vec<FieldError>),
    /// An input is too large (an image fetched by URL, say).
    #[error("{}: {}", .0.field, .0.reason)]
    TooLarge(FieldError),
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the task's state (a different body for a known client_task_id,
    /// cancelling a finished task).
    #[error("{message}")]
    Conflict {
        message: String,
        task: Option<Box<TaskRecord>>,
    },
    /// Shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// Other requests hold the memory budget for request bodies and images (503 with Retry-After).
    #[error("{0}")]
    Busy(String),
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
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Busy(_) => "busy",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
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
        if let ApiError::Busy(_) = self {
            response.insert_header((actix_web::http::header::RETRY_AFTER, BUSY_RETRY_AFTER_SECS));
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

/// Same for path segments that do not decode (a `%FF` where text is expected): nothing can have
/// that id, so 404, in the same JSON shape.
pub fn path_error(
    err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    let api = ApiError::NotFound(format!("invalid path: {err}"));
    actix_web::error::InternalError::from_response(err, api.error_response()).into()
}

//! `GET {prefix}/tasks/{id}/outputs/{n}`: one stored output of a task, the `n`th of its record's
//! `outputs`. The local store's file is streamed from disk; with S3 the answer is a 302 to a fresh
//! presigned URL (see `blob::urls`). The same access rule as `GET {prefix}/tasks/{id}`.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::auth::{self, Submitter};
use super::{ApiError, AppState};
use crate::blob::BlobStore;
use crate::db;
use crate::task::OutputInfo;

/// `GET {prefix}/tasks/{id}/outputs/{n}`.
#[utoipa::path(
    get,
    path = "/tasks/{id}/outputs/{n}",
    tag = "Tasks",
    operation_id = "get_task_output",
    summary = "One stored output of a task",
    description = "The `n`th output of the task's record (from 0). With the local store its bytes, with a \
content type from its file name; with the S3 store a 302 to a presigned GET URL.",
    params(
        ("id" = String, Path, description = "comfyd's task id, or the client's `client_task_id`"),
        ("n" = u32, Path, description = "The output's place in the record's `outputs`, from 0"),
    ),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The output's bytes (local store)", content_type = "application/octet-stream"),
        (status = 302, description = "Redirect to a presigned GET URL (S3 store)", headers(("Location" = String, description = "The presigned URL"))),
        (status = 400, description = "`n` is not a non-negative integer", body = crate::routes::error::ErrorBody),
        (status = 404, description = "No task has that id or client_task_id, or it has no stored output `n`", body = crate::routes::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged, not answered)", body = crate::routes::error::ErrorBody),
        (status = 401, description = "API keys are configured and the request carries none, or one not in force (answered with `WWW-Authenticate: Bearer`)", body = crate::routes::error::ErrorBody,
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge: `Bearer realm=\"comfyd\"`, with `error=\"invalid_token\"` when a key was given"))),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds", body = crate::routes::error::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn get(
    state: web::Data<AppState>,
    Submitter(caller): Submitter,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, n) = path.into_inner();
    let task = auth::visible_task(&state, &caller, &id).await?;
    let n: usize = n.parse().map_err(|_| {
        ApiError::BadRequest(format!("n must be a non-negative integer, not {n:?}"))
    })?;
    let outputs = db::outputs::for_task(&state.db, &task.id).await?;
    let output = outputs
        .get(n)
        .map(OutputInfo::from)
        .filter(|o| o.stored && !o.key.is_empty())
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "task {:?} has no stored output n = {n} (it has {} outputs)",
                task.id,
                outputs.len()
            ))
        })?;
    let urls = &state.urls;
    if matches!(urls.store(), BlobStore::Local { .. }) {
        // The path comes from the stored key only, through `paths::join_under` (it asks the disk).
        let (store, key) = (urls.clone(), output.key.clone());
        let path = tokio::task::spawn_blocking(move || store.store().local_path(&key))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the local store has no path")))?
            .map_err(|e| ApiError::Internal(e.into()))?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::NotFound(format!(
                    "output n = {n} of task {:?} is no longer in the store",
                    task.id
                )))
            }
            Err(e) => return Err(ApiError::Internal(e.into())),
        };
        let length = file.metadata().await.map(|m| m.len()).ok();
        let mime = mime_guess::from_path(&output.filename).first_or_octet_stream();
        let mut answer = HttpResponse::Ok();
        answer.content_type(mime.essence_str());
        if let Some(length) = length {
            answer.no_chunking(length);
        }
        return Ok(answer.streaming(tokio_util::io::ReaderStream::new(file)));
    }
    let url = urls
        .url(&task.id, n, &output)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no URL for a stored S3 output")))?;
    Ok(HttpResponse::Found()
        .insert_header((header::LOCATION, url))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

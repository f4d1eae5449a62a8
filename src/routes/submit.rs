//! Submitting tasks: the original service's `POST {prefix}` and `POST {prefix}/workflows/{name}/tasks`.
//!
//! A submit is answered only after the task is in the database (status queued), so an accepted task
//! survives anything that happens next. Parameters are checked against the workflow's manifest and set
//! in its graph as JSON values; input images are fetched (URLs) or decoded (base64) now, kept in the
//! data folder, and uploaded to whichever backend runs the task, just before it runs.

use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::auth::{Caller, Submitter};
use super::input::{budget_error, check_storable, JsonBody};
use super::{ApiError, AppState};
use crate::budget::Reservation;
use crate::db::{
    self,
    tasks::{Inserted, NewTask},
};
use crate::dispatch::messages::Enqueue;
use crate::outbound::OutboundError;
use crate::task::{InputFile, TaskRecord};
use crate::workflow::{list_unknown, probe, FieldError, ImageLimits, ImageSource, Workflow};

/// The fields of a submit, once their JSON types are checked.
struct Submit {
    client_task_id: Option<String>,
    client_callback_url: Option<String>,
    params: Value,
    priority: i32,
}

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
        value: mut body,
        reservation: mut held,
    } = body;
    let obj = body
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("body must be a JSON object".into()))?;
    let mut errors = Vec::new();
    let workflow = match obj.get("service_type") {
        Some(Value::String(s)) => {
            let found = state.workflows.current().get(s).cloned();
            if found.is_none() {
                let known: Vec<String> = state
                    .workflows
                    .current()
                    .iter()
                    .map(|w| w.name.clone())
                    .collect();
                // The name is the client's text, perhaps megabytes of it: echoed cut short.
                let shown: String = s.chars().take(64).collect();
                errors.push(field_err(
                    "service_type",
                    format!("unknown workflow {shown:?}; known: {}", known.join(", ")),
                ));
            }
            found
        }
        None | Some(Value::Null) => {
            errors.push(field_err("service_type", "required"));
            None
        }
        Some(_) => {
            errors.push(field_err("service_type", "must be a string"));
            None
        }
    };
    let submit = read_common(&state, obj, &["service_type"], &mut errors);
    let (Some(workflow), Some(submit)) = (workflow, submit) else {
        return Err(ApiError::Invalid(errors));
    };
    // The original answered 200 with the record whether or not the task was new.
    let (record, _created) = accept(&state, &caller, &workflow, submit, errors, &mut held).await?;
    Ok(HttpResponse::Ok().json(record))
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
    let workflow = state
        .workflows
        .current()
        .get(name.as_str())
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("no workflow named {:?}", name.as_str())))?;
    // The reservation is held until the answer: it covers the images decoded from the body.
    let JsonBody {
        value: mut body,
        reservation: mut held,
    } = body;
    let obj = body
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("body must be a JSON object".into()))?;
    let mut errors = Vec::new();
    let Some(submit) = read_common(&state, obj, &[], &mut errors) else {
        return Err(ApiError::Invalid(errors));
    };
    let (record, created) = accept(&state, &caller, &workflow, submit, errors, &mut held).await?;
    Ok(if created {
        HttpResponse::Accepted()
    } else {
        HttpResponse::Ok()
    }
    .json(record))
}

fn field_err(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks the fields both submit routes share; collects every problem in `errors`. Takes `params`
/// out of `obj` (it may hold megabytes of base64, not worth a copy).
fn read_common(
    state: &AppState,
    obj: &mut Map<String, Value>,
    extra: &[&str],
    errors: &mut Vec<FieldError>,
) -> Option<Submit> {
    const KNOWN: [&str; 4] = [
        "client_task_id",
        "client_callback_url",
        "params",
        "priority",
    ];
    let unknown = obj
        .keys()
        .filter(|key| !KNOWN.contains(&key.as_str()) && !extra.contains(&key.as_str()));
    list_unknown(unknown, "body", "unknown field", errors);
    let client_task_id = match obj.get("client_task_id") {
        None | Some(Value::Null) => None,
        // The original's clients sent numbers as well as strings.
        Some(Value::String(s)) if s.contains('\0') => {
            errors.extend(check_storable("client_task_id", s).err());
            None
        }
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            errors.push(field_err(
                "client_task_id",
                "must be a non-empty string of at most 255 characters",
            ));
            None
        }
    };
    let client_callback_url = match obj.get("client_callback_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if s.contains('\0') => {
            errors.extend(check_storable("client_callback_url", s).err());
            None
        }
        Some(Value::String(s)) => match state.outbound.check_url(s) {
            Ok(_) => Some(s.clone()),
            Err(e) => {
                errors.push(field_err("client_callback_url", e.to_string()));
                None
            }
        },
        Some(_) => {
            errors.push(field_err(
                "client_callback_url",
                "must be an http(s) URL string",
            ));
            None
        }
    };
    let params = match obj.get_mut("params") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.take(),
        Some(_) => {
            errors.push(field_err("params", "must be an object"));
            Value::Object(Map::new())
        }
    };
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => match n.as_i64().filter(|p| (-1000..=1000).contains(p)) {
            Some(p) => p as i32,
            None => {
                errors.push(field_err(
                    "priority",
                    "must be an integer from -1000 to 1000",
                ));
                0
            }
        },
        Some(_) => {
            errors.push(field_err(
                "priority",
                "must be an integer from -1000 to 1000",
            ));
            0
        }
    };
    Some(Submit {
        client_task_id,
        client_callback_url,
        params,
        priority,
    })
}

/// Validates the params, fetches images, records the task and hands it to the dispatcher.
/// Returns the record and whether it is new (false: the same submit was already accepted).
/// Fetched images are counted in `held`, the request's share of the memory budget.
async fn accept(
    state: &AppState,
    caller: &Caller,
    workflow: &Workflow,
    s: Submit,
    mut errors: Vec<FieldError>,
    held: &mut Reservation,
) -> Result<(TaskRecord, bool), ApiError> {
    if !state.accepting() {
        return Err(ApiError::Unavailable(
            "comfyd is shutting down; retry on another instance or later".into(),
        ));
    }
    // The callback's host is resolved now, so a refused address is a 422 rather than a webhook
    // that never arrives.
    if let Some(url) = &s.client_callback_url {
        if let Err(e) = state.outbound.check_destination(url).await {
            errors.push(field_err("client_callback_url", e.to_string()));
        }
    }
    let mut resolved = match workflow.validate(&s.params) {
        Ok(r) if errors.is_empty() => r,
        Ok(_) => return Err(ApiError::Invalid(errors)),
        Err(mut e) => {
            errors.append(&mut e);
            return Err(ApiError::Invalid(errors));
        }
    };
    let request_hash = request_hash(&workflow.name, &s);
    // The params' base64 text is decoded in `resolved` now: free it before any image is fetched.
    let mut s = s;
    s.params = Value::Null;
    // A retried submit is answered before any image is fetched again. (Without URL images the insert
    // below finds the earlier task just as well, so the extra read is saved.)
    let fetches = resolved
        .images
        .iter()
        .any(|i| matches!(i.source, ImageSource::Url(_)));
    if let Some(ctid) = s.client_task_id.as_ref().filter(|_| fetches) {
        if let Some(existing) = db::tasks::find(&state.db, ctid)
            .await?
            .filter(|t| t.client_task_id.as_ref() == Some(ctid))
        {
            return same_or_conflict(state, caller, existing, &request_hash).await;
        }
    }

    let task_id = uuid::Uuid::new_v4().to_string();
    let limits = ImageLimits {
        max_side: state.settings.limits.max_image_side,
        max_pixels: state.settings.limits.max_image_pixels,
    };
    let mut images = Vec::new();
    for img in &mut resolved.images {
        let field = format!("params.{}", img.param);
        let (bytes, ext) = match &mut img.source {
            // Taken, not copied: the graph is rendered from the values alone.
            ImageSource::Bytes { bytes, ext } => (bytes::Bytes::from(std::mem::take(bytes)), *ext),
            ImageSource::Url(url) => match state.outbound.fetch_image_within(url, Some(held)).await
            {
                Ok((bytes, _content_type)) => match probe(&bytes) {
                    Ok(info) => (bytes, info.ext),
                    Err(e) => {
                        return Err(ApiError::field(
                            &field,
                            format!("the URL did not serve an image comfyd accepts: {e}"),
                        ))
                    }
                },
                Err(OutboundError::TooLarge { limit }) => {
                    return Err(ApiError::TooLarge(field_err(
                        &field,
                        format!("the image at the URL is larger than {limit} bytes"),
                    )))
                }
                Err(OutboundError::Budget(e)) => return Err(budget_error(e)),
                Err(e) => {
                    return Err(ApiError::field(
                        &field,
                        format!("could not fetch the image: {e}"),
                    ))
                }
            },
        };
        // Checked from the header before anything decodes it: a small file can claim a huge
        // size (a decompression bomb), which a backend would try to allocate.
        match probe(&bytes).map(|info| info.too_large(&limits)) {
            Ok(None) => {}
            Ok(Some(reason)) => return Err(ApiError::TooLarge(field_err(&field, reason))),
            Err(e) => return Err(ApiError::field(&field, e.to_string())),
        }
        images.push((&*img, bytes, ext));
    }

    // Input images wait in the data folder until their task has run (they survive a restart).
    let dir = state.settings.inputs_dir().join(&task_id);
    let mut inputs = Vec::new();
    if !images.is_empty() {
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(anyhow::Error::from)?;
    }
    for (img, bytes, ext) in images {
        let file = format!("{}.{ext}", img.param);
        // Through the one path helper, like every file comfyd writes (src/paths.rs).
        let path =
            crate::paths::join_under(&state.settings.inputs_dir(), &format!("{task_id}/{file}"))
                .map_err(anyhow::Error::from)?;
        // Owned `Bytes`: tokio writes them without a copy (a borrowed slice would be copied).
        tokio::fs::write(path, bytes)
            .await
            .map_err(anyhow::Error::from)?;
        inputs.push(InputFile {
            param: img.param.clone(),
            file,
            upload_name: format!("comfyd_{}_{}.{ext}", task_id.replace('-', ""), img.param),
            targets: img.targets.clone(),
        });
    }

    let graph = workflow.render(&resolved, &task_id);
    let stored_params = json!({
        "values": resolved.values,
        "images": inputs.iter().map(|i| &i.param).collect::<Vec<_>>(),
    });
    let deadline = Utc::now()
        + chrono::Duration::seconds(
            state
                .settings
                .comfyui
                .task_deadline_secs
                .min(i64::MAX as u64) as i64,
        );
    let new = NewTask {
        id: task_id.clone(),
        client_task_id: s.client_task_id,
        client_callback_url: s.client_callback_url,
        workflow: workflow.name.clone(),
        request_hash: request_hash.clone(),
        params: stored_params,
        graph: Value::Object(graph),
        inputs: serde_json::to_value(&inputs).map_err(anyhow::Error::from)?,
        output_nodes: json!(workflow.output_nodes),
        priority: s.priority,
        deadline_at: deadline,
        owner: caller.owner(),
        // Chosen now, so the answer carries the id the task runs under (the original's answer did).
        prompt_id: Some(uuid::Uuid::new_v4().to_string()),
    };
    let inserted = super::outage::insert_task(state, new).await?;
    match inserted {
        Inserted::New(task) => {
            state.dispatcher.do_send(Enqueue {
                task_id: task.id.clone().into(),
                priority: task.priority,
                prompt_id: task.comfyui_task_id.clone().map(Into::into),
            });
            tracing::info!(task.id = %task.id, workflow = %task.workflow, "task {} accepted", task.id);
            Ok((TaskRecord::new(&task, &[]), true))
        }
        // Lost a race with the same client_task_id: this copy's files are not needed.
        Inserted::Existing(task) | Inserted::Conflict(task) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            same_or_conflict(state, caller, task, &request_hash).await
        }
    }
}

async fn same_or_conflict(
    state: &AppState,
    caller: &Caller,
    existing: crate::entity::task::Model,
    request_hash: &str,
) -> Result<(TaskRecord, bool), ApiError> {
    // client_task_ids are unique across keys: another key's task is not shown, only refused.
    if !caller.may_see(&existing) {
        return Err(ApiError::Conflict {
            message: "client_task_id is already used by another API key's task".into(),
            task: None,
        });
    }
    let outputs = db::outputs::for_task(&state.db, &existing.id).await?;
    let record = TaskRecord::new(&existing, &outputs);
    if existing.request_hash == request_hash {
        Ok((record, false))
    } else {
        Err(ApiError::Conflict {
            message: "client_task_id is already used by a task with a different request".into(),
            task: Some(Box::new(record)),
        })
    }
}

/// The hash that tells a retried submit (same `client_task_id`, same request) from a conflicting
/// one: SHA-256 of the canonical JSON `{"callback", "params", "priority", "workflow"}` (keys in
/// serde_json's map order, so hashes recorded before stay valid), written straight into the
/// hasher rather than built as a copy of params that may hold megabytes of base64.
fn request_hash(workflow: &str, s: &Submit) -> String {
    #[derive(serde::Serialize)]
    struct Canonical<'a> {
        callback: &'a Option<String>,
        params: &'a Value,
        priority: i32,
        workflow: &'a str,
    }
    struct HashWriter(Sha256);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hasher = HashWriter(Sha256::new());
    let canonical = Canonical {
        callback: &s.client_callback_url,
        params: &s.params,
        priority: s.priority,
        workflow,
    };
    // Serializing a Value into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut hasher, &canonical);
    hex(&hasher.0.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_hash_is_the_one_recorded_before() {
        let s = Submit {
            client_task_id: Some("t".into()),
            client_callback_url: Some("http://h/x".into()),
            params: json!({"prompt": "a \"cat\"", "steps": 20, "cfg": 7.5, "z": null, "a": [1]}),
            priority: -3,
        };
        // How it was computed up to now: a JSON copy of the request, then its text.
        let before = json!({
            "workflow": "text2img", "params": s.params,
            "callback": s.client_callback_url, "priority": s.priority,
        });
        assert_eq!(
            request_hash("text2img", &s),
            hex(&Sha256::digest(before.to_string().as_bytes()))
        );
    }
}

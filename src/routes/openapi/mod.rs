//! The OpenAPI 3.1 document of the API, served at `GET /openapi.json` (and `{prefix}/openapi.json`).
//!
//! It is generated from the code: each handler carries a `#[utoipa::path]` attribute (paths written
//! relative to the route prefix, see [`ROOT_PATHS`]), the types it reads and answers with derive
//! `ToSchema` (or, for bodies the handlers build as plain JSON, are described in [`schemas`]), and
//! [`ApiDoc`] lists the handlers. [`document`] then puts the configured prefix in front of the paths,
//! adds the webhook comfyd sends (`webhooks`, with its Standard Webhooks headers) and one typed route
//! per loaded workflow (`POST {prefix}/workflows/<name>/tasks`) described with that workflow's own
//! parameter schema. It is built once per workflow set (a reload brings a new set, so the document
//! follows SIGHUP reloads) and kept serialised: building it takes about 16 ms in a debug build.

pub mod schemas;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, Weak};

use actix_web::{web, HttpResponse};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, Paths};
use utoipa::OpenApi;

use super::AppState;
use crate::workflow::WorkflowSet;

/// Paths of the document that are mounted at the root rather than under the route prefix.
pub const ROOT_PATHS: [&str; 6] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/ui.js",
];

/// The handlers and what they say about themselves. Paths are relative to the route prefix, except
/// [`ROOT_PATHS`]; `/` is the prefix itself (the original service's submit).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "comfyd",
        description = "Runs ComfyUI workflows on a fleet of ComfyUI servers: submit a task, follow it, \
get its outputs (stored in S3 or a local folder) and a webhook when it ends.\n\n\
Errors are JSON (`ErrorBody`): `{\"error\", \"message\", \"fields\": [{\"field\", \"reason\"}]}`. \
Every typed route `POST {prefix}/workflows/<name>/tasks` below is one loaded workflow, with its \
parameters; the document follows the workflow set in force (reloaded on SIGHUP).\n\n\
When API keys are configured, operations marked with the `api_key` security requirement need \
`Authorization: Bearer <key>`: a submit key for most, an admin key where the requirement names \
the `admin` role. `/healthz`, `/readyz`, `/metrics`, this document and `/docs` stay open."
    ),
    modifiers(&BearerKeys),
    paths(
        super::submit::submit_original,
        super::submit::submit_typed,
        super::workflows::list,
        super::workflows::get,
        super::tasks::list,
        super::tasks::get,
        super::tasks::events,
        super::tasks::cancel,
        super::outputs::get,
        super::deliveries::for_task,
        super::deliveries::redeliver,
        super::health::backends,
        super::releases::publish,
        super::releases::list,
        super::releases::get,
        super::releases::readiness,
        super::deployments::create,
        super::deployments::list,
        super::deployments::get,
        super::deployments::cancel,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        openapi_json,
        super::docs::page,
        super::docs::script,
    ),
    components(schemas(crate::routes::error::ErrorKind)),
    tags(
        (name = "Submit", description = "Start a task"),
        (name = "Workflow tasks", description = "One route per loaded workflow, with its parameters"),
        (name = "Tasks", description = "Follow, list and cancel tasks"),
        (name = "Deliveries", description = "The webhooks comfyd sent for a task"),
        (name = "Workflows", description = "What can be run"),
        (name = "Releases", description = "Immutable snapshots of the workflows folder"),
        (name = "Deployments", description = "A release checked on each backend, one deployment at a time"),
        (name = "Service", description = "comfyd itself and its ComfyUI servers"),
        (name = "Docs", description = "This document and its page"),
    )
)]
pub struct ApiDoc;

/// The name of the API keys' security scheme, as the handlers' `security(..)` attributes spell it.
pub const SECURITY_SCHEME: &str = "api_key";

/// Adds the API keys' scheme (`Authorization: Bearer <key>`, see `routes/auth.rs`) to the components.
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, doc: &mut Document) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API key (`comfyd keys add`, or `[auth] keys`), when keys are configured; \
without any, every route is open.",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(SECURITY_SCHEME, SecurityScheme::Http(scheme));
    }
}

/// The webhook, described as an operation the client's server answers (OpenAPI `webhooks`).
#[derive(OpenApi)]
#[openapi(paths(task_ended))]
struct WebhookDoc;

/// The key of comfyd's one webhook in the document's `webhooks`.
pub const WEBHOOK_NAME: &str = "taskEnded";

/// When a task ends (done, failed or cancelled), comfyd POSTs its record to the task's
/// `client_callback_url`. Any 2xx is delivered, whatever the body; anything else (or no answer) is
/// retried with exponential backoff and jitter until the retry horizon (24 hours by default).
/// Headers follow Standard Webhooks: de-duplicate on `webhook-id`, which is the same on every retry
/// and on a redelivery.
#[utoipa::path(
    post,
    path = "/taskEnded",
    operation_id = "task_ended",
    summary = "A task ended",
    params(
        ("webhook-id" = String, Header, description = "The delivery's id, the same on every attempt: de-duplicate on it"),
        ("webhook-timestamp" = String, Header, description = "When this attempt was sent, in seconds since the Unix epoch"),
        ("webhook-signature" = Option<String>, Header,
            description = "Sent when comfyd has a webhook secret: `v1,<base64 of HMAC-SHA256 over \"{webhook-id}.{webhook-timestamp}.{body}\">`, keyed with the secret (the bytes of the base64 after `whsec_`)"),
    ),
    request_body(content = schemas::WebhookPayload, content_type = "application/json"),
    responses(
        (status = "2XX", description = "Delivered; the body is ignored"),
        (status = "default", description = "Not delivered: retried later with the same `webhook-id`"),
    )
)]
#[allow(dead_code)] // describes the client's endpoint; comfyd never calls it as a function
fn task_ended() {}

/// `GET /openapi.json`
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "Docs",
    operation_id = "openapi_json",
    summary = "This document (OpenAPI 3.1)",
    description = "Also served at `{prefix}/openapi.json`. Follows the workflow set in force.",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
pub async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    let set = state.workflows.current();
    let prefix = &state.settings.server.route_prefix;
    HttpResponse::Ok()
        .content_type("application/json")
        .body(cached(prefix, &set))
}

/// The last document built, for the set (held weakly, so a replaced set is freed) and prefix it
/// was built for.
type Cached = Option<(Weak<WorkflowSet>, String, Bytes)>;
static CACHE: Mutex<Cached> = Mutex::new(None);

/// The serialised document for this prefix and set, built on the first request after a reload.
fn cached(prefix: &str, set: &Arc<WorkflowSet>) -> Bytes {
    // A poisoned lock only means a build panicked; the cache is then rebuilt below.
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((built_for, built_prefix, bytes)) = cache.as_ref() {
        if built_prefix == prefix && built_for.upgrade().is_some_and(|s| Arc::ptr_eq(&s, set)) {
            return bytes.clone();
        }
    }
    let bytes = Bytes::from(serde_json::to_vec(&document(prefix, set)).unwrap_or_default());
    *cache = Some((Arc::downgrade(set), prefix.to_string(), bytes.clone()));
    bytes
}

/// The document for a route prefix (as the config normalises it: no trailing slash, possibly empty)
/// and a workflow set.
pub fn document(prefix: &str, workflows: &WorkflowSet) -> Value {
    let mut doc = ApiDoc::openapi();
    let mut hooks = WebhookDoc::openapi();
    let mut webhooks = Paths::new();
    for (path, item) in std::mem::take(&mut hooks.paths.paths) {
        webhooks
            .paths
            .insert(path.trim_start_matches('/').to_string(), item);
    }
    doc.merge(hooks);
    doc.webhooks = Some(webhooks);
    prefix_paths(&mut doc, prefix);
    // Serialising utoipa's own types cannot fail (string keys, no non-finite floats); `Null` would be
    // the answer if it ever did, which the tests would catch.
    let mut doc = serde_json::to_value(&doc).unwrap_or_default();
    add_workflow_routes(&mut doc, prefix, workflows);
    doc
}

/// The full path of a path as written in a handler's attribute.
pub fn full_path(prefix: &str, path: &str) -> String {
    if ROOT_PATHS.contains(&path) {
        return path.to_string();
    }
    let joined = format!("{prefix}{}", path.trim_end_matches('/'));
    if joined.is_empty() {
        "/".into()
    } else {
        joined
    }
}

fn prefix_paths(doc: &mut Document, prefix: &str) {
    let paths = std::mem::take(&mut doc.paths.paths);
    for (path, item) in paths {
        doc.paths.paths.insert(full_path(prefix, &path), item);
    }
}

/// One `POST {prefix}/workflows/<name>/tasks` per workflow: the generic typed submit's operation with
/// `params` replaced by the workflow's JSON Schema. OpenAPI matches such concrete paths before the
/// templated `/workflows/{name}/tasks`, which stays for clients that pick the name at run time.
fn add_workflow_routes(doc: &mut Value, prefix: &str, workflows: &WorkflowSet) {
    let generic_path = full_path(prefix, "/workflows/{name}/tasks");
    let Some(generic) = doc["paths"][&generic_path]["post"].as_object().cloned() else {
        return;
    };
    let Some(body) = doc["components"]["schemas"]["TypedSubmit"]
        .as_object()
        .cloned()
    else {
        return;
    };
    for w in workflows.iter() {
        let mut params = w.json_schema();
        if let Some(p) = params.as_object_mut() {
            // The document's dialect is already draft 2020-12; a nested `$schema` adds nothing.
            p.remove("$schema");
        }
        let has_required = params["required"].as_array().is_some_and(|r| !r.is_empty());
        let mut schema = body.clone();
        schema.insert("title".into(), format!("Submit {}", w.name).into());
        schema["properties"]["params"] = params;
        if has_required {
            schema.insert("required".into(), json!(["params"]));
        }
        let mut op: Map<String, Value> = generic.clone();
        op.insert("tags".into(), json!(["Workflow tasks"]));
        op.insert("operationId".into(), format!("submit_{}", w.name).into());
        op.insert(
            "summary".into(),
            format!("Submit a task to `{}`", w.name).into(),
        );
        op.insert("description".into(), w.description.clone().into());
        op.remove("parameters");
        op.insert(
            "requestBody".into(),
            json!({
                "required": true,
                "content": { "application/json": { "schema": schema } },
            }),
        );
        let path = full_path(prefix, &format!("/workflows/{}/tasks", w.name));
        doc["paths"][&path] = json!({ "post": op });
    }
}

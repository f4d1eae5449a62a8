//! The document on its own: valid, stable, complete in its references, prefixed as configured, with
//! one typed route per workflow; and the error shape it describes is the one `ApiError` renders.

use std::collections::BTreeSet;
use std::path::Path;

use actix_web::body::MessageBody;
use actix_web::ResponseError;
use serde_json::Value;

use super::*;
use crate::routes::error::ApiError;
use crate::workflow::FieldError;

fn shipped() -> WorkflowSet {
    WorkflowSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows"))
        .expect("the shipped workflows load")
}

/// Every `$ref` in `v`, anywhere.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn document_is_openapi_3_1_json_and_the_same_every_time() {
    let set = shipped();
    let a = serde_json::to_string(&document("/api/v1", &set)).expect("serialize");
    let b = serde_json::to_string(&document("/api/v1", &set)).expect("serialize");
    assert_eq!(a, b, "two builds of the document differ");
    let doc: Value = serde_json::from_str(&a).expect("the document is JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "openapi = {}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "comfyd");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    // operationIds are unique (clients generated from the document name methods after them).
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(!id.is_empty(), "{method} {path} has no operationId");
            assert!(ids.insert(id.clone()), "operationId {id} is used twice");
        }
    }
}

#[test]
fn every_reference_resolves() {
    let doc = document("/api/v1", &shipped());
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "$ref {r} points at nothing"
        );
    }
}

#[test]
fn paths_carry_the_configured_prefix_and_root_routes_stay_at_the_root() {
    let set = shipped();
    for (prefix, submit) in [("/api/v1", "/api/v1"), ("/svc/v2", "/svc/v2"), ("", "/")] {
        let doc = document(prefix, &set);
        let paths = doc["paths"].as_object().expect("paths");
        assert!(
            paths[submit]["post"].is_object(),
            "{prefix:?}: no POST {submit}"
        );
        for p in [
            "/tasks/{id}",
            "/tasks",
            "/deliveries/{id}/redeliver",
            "/backends",
        ] {
            assert!(
                paths.contains_key(&format!("{prefix}{p}")),
                "{prefix:?}: {p} missing"
            );
        }
        for p in ROOT_PATHS {
            assert!(paths.contains_key(p), "{prefix:?}: {p} not at the root");
        }
        for p in paths.keys() {
            assert!(
                ROOT_PATHS.contains(&p.as_str()) || p.starts_with(submit),
                "{prefix:?}: {p} is neither a root route nor under the prefix"
            );
        }
    }
}

#[test]
fn each_workflow_has_its_typed_route_with_its_own_parameter_schema() {
    let set = shipped();
    assert!(!set.is_empty());
    let doc = document("/api/v1", &set);
    for w in set.iter() {
        let op = &doc["paths"][format!("/api/v1/workflows/{}/tasks", w.name)]["post"];
        assert_eq!(op["operationId"], format!("submit_{}", w.name));
        let schema = &op["requestBody"]["content"]["application/json"]["schema"];
        let mut expected = w.json_schema();
        expected
            .as_object_mut()
            .expect("schema object")
            .remove("$schema");
        assert_eq!(schema["properties"]["params"], expected, "{}", w.name);
        // The rest of the body is the generic typed submit's.
        for field in ["client_task_id", "client_callback_url", "priority"] {
            assert!(
                schema["properties"][field].is_object(),
                "{}: {field}",
                w.name
            );
        }
        assert!(op["responses"]["202"].is_object());
    }
    // A smaller set gives a smaller document: it follows the set, not the shipped files.
    let one = WorkflowSet::from_workflows(set.iter().take(1).map(|w| (**w).clone()));
    let doc = document("/api/v1", &one);
    let typed = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .filter(|p| p.starts_with("/api/v1/workflows/") && !p.contains('{'))
        .count();
    assert_eq!(typed, 1);
}

#[test]
fn the_webhook_is_described_with_its_standard_webhooks_headers() {
    let doc = document("/api/v1", &shipped());
    let op = &doc["webhooks"][WEBHOOK_NAME]["post"];
    assert_eq!(
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/WebhookPayload"
    );
    let headers: Vec<(&str, bool)> = op["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter(|p| p["in"] == "header")
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default(),
                p["required"] == true,
            )
        })
        .collect();
    assert_eq!(
        headers,
        [
            ("webhook-id", true),
            ("webhook-timestamp", true),
            ("webhook-signature", false)
        ]
    );
}

/// Renders an error as the API does.
fn rendered(e: ApiError) -> (u16, Value) {
    let resp = e.error_response();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().try_into_bytes().expect("a full body");
    (status, serde_json::from_slice(&bytes).expect("JSON body"))
}

/// One `ApiError` of each variant. The match has no catch-all, so a new variant does not compile
/// until it is listed here, and then the test below asks for its kind and status to be documented.
fn one_of_each() -> Vec<ApiError> {
    let field = || FieldError {
        field: "params.steps".into(),
        reason: "must be at most 100".into(),
    };
    let errors = vec![
        ApiError::BadRequest("no".into()),
        ApiError::Invalid(vec![field()]),
        ApiError::TooLarge(field()),
        ApiError::Unauthorized {
            message: "no".into(),
            invalid: false,
        },
        ApiError::Forbidden("no".into()),
        ApiError::NotFound("no".into()),
        ApiError::Conflict {
            message: "no".into(),
            task: None,
        },
        ApiError::Unavailable("no".into()),
        ApiError::Busy("no".into()),
        ApiError::Internal(anyhow::anyhow!("boom")),
    ];
    for e in &errors {
        match e {
            ApiError::BadRequest(_)
            | ApiError::Invalid(_)
            | ApiError::TooLarge(_)
            | ApiError::Unauthorized { .. }
            | ApiError::Forbidden(_)
            | ApiError::NotFound(_)
            | ApiError::Conflict { .. }
            | ApiError::Unavailable(_)
            | ApiError::Busy(_)
            | ApiError::Internal(_) => {}
        }
    }
    errors
}

#[test]
fn the_error_body_schema_is_what_every_api_error_renders() {
    let doc = document("/api/v1", &shipped());
    let schemas = &doc["components"]["schemas"];
    let body = &schemas["ErrorBody"];
    let kinds: Vec<&str> = schemas["ErrorKind"]["enum"]
        .as_array()
        .expect("ErrorKind enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let errors = one_of_each();
    // Statuses that some operation documents with an ErrorBody.
    let mut documented = BTreeSet::new();
    for item in doc["paths"].as_object().expect("paths").values() {
        for op in item.as_object().expect("item").values() {
            for (status, resp) in op["responses"].as_object().expect("responses") {
                if resp["content"]["application/json"]["schema"]["$ref"]
                    == "#/components/schemas/ErrorBody"
                {
                    documented.insert(status.clone());
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for e in errors {
        let (status, json) = rendered(e);
        let kind = json["error"].as_str().expect("error is a string");
        assert!(
            kinds.contains(&kind),
            "{kind} is not in ErrorKind {kinds:?}"
        );
        seen.insert(kind.to_string());
        assert!(json["message"].is_string());
        for key in json.as_object().expect("object").keys() {
            assert!(
                body["properties"][key].is_object(),
                "{kind} renders {key}, which ErrorBody does not describe"
            );
        }
        if let Some(fields) = json.get("fields") {
            assert_eq!(fields[0]["field"], "params.steps");
            assert!(schemas["FieldError"]["properties"]["reason"].is_object());
        }
        assert!(
            documented.contains(&status.to_string()),
            "{kind} answers {status}, which no operation documents"
        );
    }
    assert_eq!(
        seen.len(),
        kinds.len(),
        "ErrorKind lists a kind nothing renders"
    );
}

/// Every operation as (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            out.push((path.clone(), method.clone(), op.clone()));
        }
    }
    out
}

#[test]
fn keyed_operations_say_so_and_document_401_and_403_where_they_answer_it() {
    let doc = document("/api/v1", &shipped());
    let scheme = &doc["components"]["securitySchemes"][SECURITY_SCHEME];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    assert!(doc["security"].is_null(), "no document-wide requirement");
    let error_body = |op: &Value, status: &str| {
        op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            == "#/components/schemas/ErrorBody"
    };
    let mut keyed = 0;
    for (path, method, op) in operations(&doc) {
        let name = format!("{method} {path}");
        if ROOT_PATHS.contains(&path.as_str()) {
            // These must stay reachable without a key (a load balancer, a browser on /docs).
            assert!(op["security"].is_null(), "{name} asks for a key");
            assert!(op["responses"]["401"].is_null(), "{name} documents 401");
            continue;
        }
        let reqs = op["security"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no security requirement"));
        assert_eq!(reqs.len(), 1, "{name}: {reqs:?}");
        let roles = reqs[0][SECURITY_SCHEME]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: not the {SECURITY_SCHEME} scheme: {reqs:?}"));
        keyed += 1;
        assert!(error_body(&op, "401"), "{name} does not document 401");
        assert!(
            op["responses"]["401"]["headers"]["WWW-Authenticate"].is_object(),
            "{name}: 401 without its WWW-Authenticate"
        );
        // Only an admin route refuses a valid key (a submit key); elsewhere another key's task is
        // a 404, so a 403 there would be untrue.
        let admin = roles == &[Value::from("admin")];
        assert!(admin || roles.is_empty(), "{name}: roles {roles:?}");
        assert_eq!(
            error_body(&op, "403"),
            admin,
            "{name}: 403 documented iff the route needs an admin key"
        );
    }
    assert!(keyed > 10, "only {keyed} keyed operations");
}

#[test]
fn each_503_with_retry_after_documents_the_header() {
    let doc = document("/api/v1", &shipped());
    let header = |op: &Value| op["responses"]["503"]["headers"]["Retry-After"].clone();
    // Routes that read or write the database answer 503 with Retry-After while it is unreachable.
    for (path, method) in [
        ("/api/v1", "post"),
        ("/api/v1/workflows/{name}/tasks", "post"),
        ("/api/v1/tasks", "get"),
        ("/api/v1/tasks/{id}", "get"),
        ("/api/v1/tasks/{id}/events", "get"),
        ("/api/v1/tasks/{id}/cancel", "post"),
        ("/api/v1/tasks/{id}/deliveries", "get"),
        ("/api/v1/deliveries/{id}/redeliver", "post"),
        ("/readyz", "get"),
    ] {
        let h = header(&doc["paths"][path][method]);
        assert_eq!(h["schema"]["type"], "integer", "{method} {path}: {h}");
    }
    // And no 503 claims a Retry-After that is not sent (/healthz's 503 has none).
    assert!(header(&doc["paths"]["/healthz"]["get"]).is_null());
    let r = &doc["paths"]["/readyz"]["get"]["responses"];
    for status in ["200", "503"] {
        assert_eq!(
            r[status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Readiness"
        );
    }
}

#[test]
fn the_docs_page_loads_only_what_comfyd_serves() {
    let page = include_str!("../docs_ui/index.html");
    assert!(page.contains(&format!(
        r#"<script src="docs/ui.js?v={}">"#,
        crate::routes::docs::REDOC_VERSION
    )));
    assert!(page.contains(r#"spec-url="openapi.json""#));
    for needle in ["http:", "https:", "//"] {
        for attr in ["src=\"", "href=\"", "spec-url=\""] {
            assert!(
                !page.contains(&format!("{attr}{needle}")),
                "the page loads something from elsewhere: {attr}{needle}"
            );
        }
    }
}

#[test]
fn the_served_document_is_kept_per_workflow_set() {
    let set = Arc::new(shipped());
    let first = cached("/api/v1", &set);
    assert_eq!(
        serde_json::from_slice::<Value>(&first).expect("JSON"),
        document("/api/v1", &set)
    );
    // The same set: the same bytes, not a new build.
    assert_eq!(cached("/api/v1", &set).as_ptr(), first.as_ptr());
    // A reload (a new set, even with the same workflows) or another prefix: built again.
    let reloaded = Arc::new(shipped());
    assert_ne!(cached("/api/v1", &reloaded).as_ptr(), first.as_ptr());
    let other = cached("/svc", &reloaded);
    assert!(
        serde_json::from_slice::<Value>(&other).expect("JSON")["paths"]["/svc/tasks"].is_object()
    );
}

#[test]
fn outputs_carry_an_optional_url_and_their_route_is_documented() {
    let doc = document("/api/v1", &shipped());
    let output = &doc["components"]["schemas"]["OutputInfo"];
    assert!(output["properties"]["url"].is_object(), "{output}");
    let required: BTreeSet<&str> = output["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(!required.contains("url"), "url is optional: {required:?}");
    // The original's fields stay required as they were.
    for field in ["node_id", "filename", "key", "stored"] {
        assert!(required.contains(field), "{field} in {required:?}");
    }
    let op = &doc["paths"]["/api/v1/tasks/{id}/outputs/{n}"]["get"];
    assert_eq!(op["operationId"], "get_task_output");
    let statuses: BTreeSet<&str> = op["responses"]
        .as_object()
        .expect("responses")
        .keys()
        .map(String::as_str)
        .collect();
    for status in ["200", "302", "400", "404"] {
        assert!(statuses.contains(status), "{status} in {statuses:?}");
    }
    assert!(op["responses"]["302"]["headers"]["Location"].is_object());
}

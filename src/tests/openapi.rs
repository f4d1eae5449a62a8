//! `GET /openapi.json` and `GET /docs` against the real daemon, run with a route prefix that is not
//! the default: every route mounted in `routes::configure` (read from its source, so a new route
//! without docs fails here) is in the document with its method and under the configured prefix;
//! every documented operation exists on the daemon; the answers of a real task's life, its webhook
//! and its errors match the schemas the document gives them; the typed route of each workflow
//! follows a SIGHUP reload; and the docs page loads nothing that comfyd does not serve itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::pipeline::{env, webhooks, Env, EnvOpts};
use crate::support::eventually;

const PREFIX: &str = "/svc/v2";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn start(workflows_dir: Option<std::path::PathBuf>) -> Env {
    let mut vars = std::collections::HashMap::new();
    vars.insert("ROUTE_PREFIX".to_string(), PREFIX.to_string());
    vars.insert("COMFYD_WEBHOOK_SECRET".to_string(), SECRET.to_string());
    env(EnvOpts {
        exec_ms: 50,
        env: vars,
        workflows_dir,
        ..Default::default()
    })
    .await
}

/// A request to the daemon by method and path (from the root); answers status, headers and body.
async fn call(
    env: &Env,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    call_with_key(env, None, method, path, body).await
}

/// [`call`], with `Authorization: Bearer <key>` when a key is given.
async fn call_with_key(
    env: &Env,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    let url = format!("{}{path}", env.daemon.base);
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let req = match method {
        "get" => client.get(&url),
        "post" => client.post(&url),
        other => panic!("no test request for method {other}"),
    };
    let req = match key {
        Some(k) => req.insert_header(("Authorization", format!("Bearer {k}"))),
        None => req,
    };
    let mut resp = match body {
        Some(b) => req.send_json(b).await,
        None => req.send().await,
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let bytes = resp
        .body()
        .limit(16 << 20)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: body: {e}"));
    (resp.status().as_u16(), headers, bytes.to_vec())
}

async fn call_json(env: &Env, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let (status, _, bytes) = call(env, method, path, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn openapi(env: &Env) -> Value {
    let (status, doc) = call_json(env, "get", "/openapi.json", None).await;
    assert_eq!(status, 200, "GET /openapi.json: {doc}");
    doc
}

/// The routes `routes::configure` mounts, as (method, path relative to the root or to the prefix,
/// under the prefix?), read from its source: every `.route("<path>", web::<method>()` before
/// `web::scope(prefix)` is at the root, every one after it under the prefix.
fn configured_routes() -> Vec<(String, String, bool)> {
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/routes/mod.rs"))
            .expect("read src/routes/mod.rs");
    let start = src
        .find("pub fn configure(")
        .expect("routes::configure in src/routes/mod.rs");
    let body = &src[start..];
    let body = &body[..body.find("\n}\n").expect("end of configure")];
    let scope_at = body.find("web::scope(prefix)").expect("the prefix scope");
    let mut out = Vec::new();
    let mut rest = body;
    let mut offset = 0;
    while let Some(i) = rest.find(".route(") {
        let after = &rest[i + ".route(".len()..];
        let text: String = after.chars().take(200).collect();
        let squeezed: String = text.split_whitespace().collect();
        // `"<path>",web::<method>()`
        let path = squeezed
            .strip_prefix('"')
            .and_then(|s| s.split_once('"'))
            .map(|(p, _)| p.to_string())
            .unwrap_or_else(|| panic!("a .route( whose path is not a literal: {text}"));
        let method = squeezed
            .split_once("web::")
            .and_then(|(_, m)| m.split_once('('))
            .map(|(m, _)| m.to_string())
            .unwrap_or_else(|| panic!("a .route( without web::<method>(): {text}"));
        out.push((method, path, offset + i > scope_at));
        offset += i + ".route(".len();
        rest = after;
    }
    out
}

fn schema_of<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {r}"));
            let s = &doc["components"]["schemas"][name];
            assert!(s.is_object(), "$ref {r} points at nothing");
            schema_of(doc, s)
        }
        None => schema,
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => false,
    }
}

/// Checks `v` against `schema` as far as the document uses JSON Schema (types, `$ref`, `oneOf`,
/// `anyOf`, `allOf`, `enum`, `properties`, `required`, `items`). Unlike JSON Schema's default, an
/// object with `properties` may have no key they do not describe: an undocumented field is drift.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let schema = schema_of(doc, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = schema[key].as_array() {
            let ok = alts.iter().any(|alt| {
                let mut e = Vec::new();
                check(doc, alt, v, at, &mut e);
                e.is_empty()
            });
            if !ok {
                errs.push(format!("{at}: {v} matches none of {key}"));
            }
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            check(doc, s, v, at, errs);
        }
    }
    match &schema["type"] {
        Value::String(t) if !type_ok(t, v) => errs.push(format!("{at}: {v} is not {t}")),
        Value::Array(ts) if !ts.iter().any(|t| type_ok(t.as_str().unwrap_or(""), v)) => {
            errs.push(format!("{at}: {v} is none of {ts:?}"))
        }
        _ => {}
    }
    if let Some(values) = schema["enum"].as_array() {
        if !values.contains(v) && !v.is_null() {
            errs.push(format!("{at}: {v} is not one of {values:?}"));
        }
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), v.as_object()) {
        for (k, val) in obj {
            match props.get(k) {
                Some(s) => check(doc, s, val, &format!("{at}.{k}"), errs),
                None => errs.push(format!("{at}: {k} is not documented")),
            }
        }
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap_or_default();
            if !obj.contains_key(r) {
                errs.push(format!("{at}: required {r} is missing"));
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            check(doc, items, item, &format!("{at}[{i}]"), errs);
        }
    }
}

/// Asserts that an answer of `method path` (a path of the document) with `status` is documented
/// and that its body matches the documented schema.
fn assert_documented(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not in the document");
    let resp = &op["responses"][status.to_string()];
    assert!(
        resp.is_object(),
        "{method} {path} answered {status}, which it does not document: {body}"
    );
    let schema = &resp["content"]["application/json"]["schema"];
    if schema.is_object() {
        let mut errs = Vec::new();
        check(doc, schema, body, "body", &mut errs);
        assert!(
            errs.is_empty(),
            "{method} {path} {status} does not match its schema:\n{}\n{body}",
            errs.join("\n")
        );
    }
}

#[actix_web::test]
async fn every_configured_route_is_documented_under_the_prefix_and_answers_as_documented() {
    // Arrange
    let env = start(None).await;
    let doc = openapi(&env).await;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "openapi = {}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");

    // Every route configure mounts is in the document with its method, at its full path. Under the
    // prefix, a trailing `/` is the prefix's own route again, and a root route mounted under the
    // prefix too (the docs) is the same route, which must answer the same.
    let routes = configured_routes();
    assert!(routes.len() >= 15, "read only {routes:?} from configure");
    let root: BTreeSet<&str> = routes
        .iter()
        .filter(|r| !r.2)
        .map(|r| r.1.as_str())
        .collect();
    for (method, path, scoped) in &routes {
        if *scoped && root.contains(path.as_str()) {
            let (s1, _, b1) = call(&env, method, path, None).await;
            let (s2, _, b2) = call(&env, method, &format!("{PREFIX}{path}"), None).await;
            assert_eq!(
                (s1, s2),
                (200, 200),
                "{method} {path} at the root and under the prefix"
            );
            assert!(b1 == b2, "{path} answers differently under the prefix");
            continue;
        }
        let full = if *scoped {
            format!("{PREFIX}{}", path.trim_end_matches('/'))
        } else {
            path.clone()
        };
        assert!(
            paths
                .get(&full)
                .is_some_and(|item| item[method].is_object()),
            "{} {full} (mounted in routes::configure) is not in /openapi.json",
            method.to_uppercase()
        );
    }

    // Every documented operation exists on the daemon (a route actix does not know answers 404 with
    // an empty body; comfyd's own 404s are JSON) and answers a harmless request as documented.
    for (path, item) in paths {
        assert!(
            root.contains(path.as_str()) || path.starts_with(PREFIX),
            "{path} is neither a root route nor under the prefix"
        );
        for (method, _) in item.as_object().expect("path item") {
            let concrete = path
                .replace("{id}", "no-such-id")
                .replace("{name}", "no-such-workflow");
            // An unknown field: refused before anything is recorded.
            let body = (method == "post").then(|| json!({ "no_such_field": true }));
            let (status, headers, bytes) = call(&env, method, &concrete, body.as_ref()).await;
            assert!(
                !(status == 404 && bytes.is_empty()) && status != 405,
                "{method} {concrete} is documented but not served ({status})"
            );
            if headers
                .get("content-type")
                .is_some_and(|c| c.starts_with("application/json"))
            {
                let json: Value = serde_json::from_slice(&bytes).expect("JSON answer");
                if path != "/openapi.json" {
                    assert_documented(&doc, method, path, status, &json);
                }
            }
        }
    }

    // Components: the task record, the error body, the webhook.
    let schemas = &doc["components"]["schemas"];
    for name in [
        "TaskRecord",
        "ErrorBody",
        "FieldError",
        "WebhookPayload",
        "OutputInfo",
    ] {
        assert!(
            schemas[name].is_object(),
            "components.schemas.{name} missing"
        );
    }
    let hook = &doc["webhooks"]["taskEnded"]["post"];
    let headers: BTreeSet<&str> = hook["parameters"]
        .as_array()
        .expect("the webhook's headers")
        .iter()
        .filter(|p| p["in"] == "header")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        headers,
        BTreeSet::from(["webhook-id", "webhook-signature", "webhook-timestamp"])
    );

    // Act: a real task's life, through the original submit under the prefix.
    let submit = json!({
        "service_type": "solid", "client_task_id": "openapi-1",
        "client_callback_url": env.hook.url, "params": { "width": 8, "height": 8 },
    });
    let (status, task) = call_json(&env, "post", PREFIX, Some(&submit)).await;
    assert_documented(&doc, "post", PREFIX, status, &task);
    let id = task["id"].as_str().expect("task id").to_string();
    let got = webhooks(&env, &id, 1).await;

    // Assert: every answer and the webhook match their documented schemas.
    let hook_body = &got[0].body;
    let mut errs = Vec::new();
    check(
        &doc,
        &hook["requestBody"]["content"]["application/json"]["schema"],
        hook_body,
        "webhook",
        &mut errs,
    );
    assert!(
        errs.is_empty(),
        "the webhook does not match: {errs:?}\n{hook_body}"
    );
    assert_eq!(hook_body["status"], "done", "{hook_body}");
    for h in &headers {
        assert!(got[0].header(h).is_some(), "the webhook came without {h}");
    }
    let gets = [
        format!("{PREFIX}/tasks/{{id}}"),
        format!("{PREFIX}/tasks/{{id}}/events"),
        format!("{PREFIX}/tasks/{{id}}/deliveries"),
        format!("{PREFIX}/tasks"),
        format!("{PREFIX}/workflows"),
        format!("{PREFIX}/workflows/{{name}}"),
        format!("{PREFIX}/backends"),
        "/healthz".to_string(),
    ];
    // The attempt is recorded a moment after the receiver answered; its history is then checked too.
    eventually(10, "the delivery attempt recorded", || async {
        let (_, body) = call_json(
            &env,
            "get",
            &format!("{PREFIX}/tasks/{id}/deliveries"),
            None,
        )
        .await;
        (body["deliveries"][0]["status"] == "delivered"
            && body["deliveries"][0]["history"]
                .as_array()
                .is_some_and(|h| !h.is_empty()))
        .then_some(())
    })
    .await;
    let mut delivery = None;
    for path in &gets {
        let concrete = path.replace("{id}", &id).replace("{name}", "solid");
        let (status, body) = call_json(&env, "get", &concrete, None).await;
        assert_eq!(status, 200, "GET {concrete}: {body}");
        assert_documented(&doc, "get", path, status, &body);
        if path.ends_with("/deliveries") {
            delivery = body["deliveries"][0]["id"].as_str().map(str::to_string);
        }
    }
    let delivery = delivery.expect("the task's delivery");
    let path = format!("{PREFIX}/deliveries/{{id}}/redeliver");
    let (status, body) = call_json(&env, "post", &path.replace("{id}", &delivery), None).await;
    assert_eq!(status, 202, "{body}");
    assert_documented(&doc, "post", &path, status, &body);
    // Errors: a conflict carries the task, invalid fields are listed, all as documented.
    let path = format!("{PREFIX}/tasks/{{id}}/cancel");
    let (status, body) = call_json(&env, "post", &path.replace("{id}", &id), None).await;
    assert_eq!(status, 409, "{body}");
    assert_documented(&doc, "post", &path, status, &body);
    assert_eq!(body["task"]["id"], id.as_str());
    let path = format!("{PREFIX}/workflows/solid/tasks");
    let bad = json!({ "params": { "width": 0, "nope": 1 } });
    let (status, body) = call_json(&env, "post", &path, Some(&bad)).await;
    assert_eq!(status, 422, "{body}");
    assert_documented(&doc, "post", &path, status, &body);
    assert!(
        body["fields"].as_array().is_some_and(|f| f.len() == 2),
        "{body}"
    );
    let (status, body) = call_json(&env, "post", &path, Some(&json!({ "params": {} }))).await;
    assert_eq!(status, 202, "{body}");
    assert_documented(&doc, "post", &path, status, &body);
}

#[actix_web::test]
async fn each_workflows_typed_route_carries_its_schema_and_follows_a_reload() {
    // Arrange: a copy of the shipped workflows, so one can be added.
    let dir = tempfile::tempdir().expect("workflows dir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
    for entry in std::fs::read_dir(&shipped).expect("read workflows/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|x| x == "toml" || x == "json") {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name")))
                .expect("copy workflow");
        }
    }
    let env = start(Some(dir.path().to_path_buf())).await;
    let doc = openapi(&env).await;

    // Assert: each listed workflow has its route, with the params schema GET /workflows gives.
    let (_, list) = call_json(&env, "get", &format!("{PREFIX}/workflows"), None).await;
    let names: Vec<String> = list["workflows"]
        .as_array()
        .expect("workflows")
        .iter()
        .map(|w| {
            let name = w["name"].as_str().expect("name").to_string();
            let op = &doc["paths"][format!("{PREFIX}/workflows/{name}/tasks")]["post"];
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            let mut expected = w["params"].clone();
            expected.as_object_mut().expect("schema").remove("$schema");
            assert_eq!(schema["properties"]["params"], expected, "{name}");
            name
        })
        .collect();
    assert!(names.contains(&"solid".to_string()), "{names:?}");
    assert!(doc["paths"][format!("{PREFIX}/workflows/copy/tasks")].is_null());

    // Act: add a workflow (a copy of solid) and reload.
    let toml = std::fs::read_to_string(shipped.join("solid.toml")).expect("solid.toml");
    std::fs::write(
        dir.path().join("copy.toml"),
        toml.replacen("name = \"solid\"", "name = \"copy\"", 1),
    )
    .expect("write copy.toml");
    std::fs::copy(shipped.join("solid.json"), dir.path().join("copy.json")).expect("copy.json");
    env.daemon.sighup();

    // Assert: the document now has its route.
    let doc = eventually(10, "the reloaded document", || async {
        let doc = openapi(&env).await;
        doc["paths"][format!("{PREFIX}/workflows/copy/tasks")]["post"]
            .is_object()
            .then_some(doc)
    })
    .await;
    assert_eq!(
        doc["paths"][format!("{PREFIX}/workflows/copy/tasks")]["post"]["operationId"],
        "submit_copy"
    );
}

/// `src` and `href` attribute values of a page.
/// With API keys configured, every operation the document marks with the `api_key` requirement
/// answers 401 without a key (403 with a submit key where it documents 403), as documented; the
/// ones it leaves open (the document, its page, the health checks) answer without one.
#[actix_web::test]
async fn with_api_keys_the_document_says_which_routes_need_one_and_the_docs_stay_open() {
    // Arrange
    let (submit_key, admin_key) = ("key-of-app-0123456789", "key-of-ops-0123456789");
    let mut vars = std::collections::HashMap::new();
    vars.insert("ROUTE_PREFIX".to_string(), PREFIX.to_string());
    vars.insert(
        "COMFYD_API_KEYS".to_string(),
        format!(
            "app:submit:{},ops:admin:{}",
            comfyd::access::hash_key(submit_key),
            comfyd::access::hash_key(admin_key)
        ),
    );
    let env = env(EnvOpts {
        exec_ms: 50,
        env: vars,
        ..Default::default()
    })
    .await;

    // Act + Assert: the document and its page are open, at the root and under the prefix.
    let doc = openapi(&env).await;
    for path in [
        "/openapi.json".to_string(),
        "/docs".to_string(),
        "/docs/ui.js".to_string(),
        format!("{PREFIX}/openapi.json"),
        format!("{PREFIX}/docs"),
    ] {
        let (status, _, _) = call(&env, "get", &path, None).await;
        assert_eq!(status, 200, "GET {path} without a key");
    }
    let (status, _, _) = call(&env, "get", &format!("{PREFIX}/tasks"), None).await;
    assert_eq!(status, 401, "GET {PREFIX}/tasks without a key");

    // Every documented operation, without a key, and with a submit key where a 403 is documented.
    let mut keyed = 0;
    let mut admin_only = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        // Any id will do: the key is checked before the path is looked at.
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for (method, op) in item.as_object().expect("path item") {
            let body = (method == "post").then(|| json!({}));
            let (status, headers, bytes) = call(&env, method, &concrete, body.as_ref()).await;
            let reply: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if op["security"].is_null() {
                assert_ne!(status, 401, "{method} {path} is documented open: {reply}");
                assert_ne!(status, 403, "{method} {path} is documented open: {reply}");
                if reply.is_object() {
                    assert_documented(&doc, method, path, status, &reply);
                }
                continue;
            }
            keyed += 1;
            assert_eq!(status, 401, "{method} {concrete} without a key: {reply}");
            assert_eq!(
                headers.get("www-authenticate").map(String::as_str),
                Some(r#"Bearer realm="comfyd""#),
                "{method} {path}"
            );
            assert_documented(&doc, method, path, status, &reply);
            let (status, _, bytes) =
                call_with_key(&env, Some(submit_key), method, &concrete, body.as_ref()).await;
            let reply: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if op["responses"]["403"].is_object() {
                admin_only += 1;
                assert_eq!(
                    status, 403,
                    "{method} {concrete} with a submit key: {reply}"
                );
                assert_documented(&doc, method, path, status, &reply);
                let (status, _, bytes) =
                    call_with_key(&env, Some(admin_key), method, &concrete, body.as_ref()).await;
                assert!(
                    status != 401 && status != 403,
                    "{method} {concrete} with an admin key: {status} {}",
                    String::from_utf8_lossy(&bytes)
                );
            } else {
                assert!(
                    status != 401 && status != 403,
                    "{method} {concrete} with a submit key: {status} {reply}"
                );
            }
        }
    }
    assert!(
        keyed > 10 && admin_only >= 2,
        "{keyed} keyed, {admin_only} admin-only"
    );
}

fn links(page: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=\"", "href=\"", "spec-url=\""] {
        for (i, _) in page.match_indices(attr) {
            let rest = &page[i + attr.len()..];
            out.push(rest[..rest.find('"').expect("closing quote")].to_string());
        }
    }
    out
}

#[actix_web::test]
async fn the_docs_page_loads_only_what_comfyd_serves_at_the_root_and_under_the_prefix() {
    let env = start(None).await;
    for base in ["", PREFIX] {
        // Arrange + Act
        let page_path = format!("{base}/docs");
        let (status, headers, page) = call(&env, "get", &page_path, None).await;
        let page = String::from_utf8(page).expect("UTF-8 page");

        // Assert
        assert_eq!(status, 200, "GET {page_path}");
        assert!(
            headers["content-type"].starts_with("text/html"),
            "{headers:?}"
        );
        // The policy lets the browser load nothing from elsewhere, whatever the script asks for
        // (Redoc's footer names a logo on its vendor's CDN; it is not shown).
        let csp = &headers["content-security-policy"];
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        for directive in csp.split(';') {
            for source in directive.split_whitespace().skip(1) {
                assert!(
                    ["'self'", "'none'", "'unsafe-inline'", "data:", "blob:"].contains(&source),
                    "the page's policy allows {source}: {csp}"
                );
            }
        }
        let found = links(&page);
        assert!(
            found
                .iter()
                .any(|l| l.ends_with(".js") || l.contains(".js?")),
            "{page}"
        );
        for link in found {
            assert!(
                !link.contains("://") && !link.starts_with("//") && !link.starts_with('/'),
                "{page_path} loads {link}, which is not relative to comfyd"
            );
            // Relative to the page's folder, as a browser resolves it.
            let url = format!("{base}/{link}");
            let (status, headers, bytes) = call(&env, "get", &url, None).await;
            assert_eq!(
                status, 200,
                "{page_path} loads {url}, which answers {status}"
            );
            assert!(!bytes.is_empty(), "{url} is empty");
            if !link.ends_with(".json") {
                assert!(
                    headers["content-type"].starts_with("text/javascript"),
                    "{headers:?}"
                );
                assert!(
                    headers["cache-control"].contains("max-age=31536000"),
                    "{headers:?}"
                );
            } else {
                assert!(
                    headers["content-type"].starts_with("application/json"),
                    "{url}"
                );
            }
        }
    }
}

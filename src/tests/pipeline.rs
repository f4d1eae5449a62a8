//! The whole pipeline, end to end: the real daemon, simulated backends, a real S3-compatible server,
//! SQLite and PostgreSQL, and a real webhook receiver.

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine;
use serde_json::{json, Value};

use crate::support::daemon::{Daemon, DaemonConfig};
use crate::support::db::TestDb;
use crate::support::s3::S3Server;
use crate::support::sim::Sim;
use crate::support::webhook::WebhookReceiver;
use crate::support::{eventually, free_port};
use comfyd::db;

pub const BUCKET: &str = "comfyd-test";

/// Everything one test runs against.
pub struct Env {
    pub s3: Option<S3Server>,
    pub sims: Vec<Sim>,
    pub hook: WebhookReceiver,
    pub db: TestDb,
    pub daemon: Daemon,
}

#[derive(Default)]
pub struct EnvOpts {
    pub backends: usize,
    pub exec_ms: u64,
    pub s3: bool,
    pub postgres: bool,
    /// Endpoints added after the simulators' (e.g. a closed port).
    pub extra_endpoints: Vec<String>,
    pub env: HashMap<String, String>,
    pub workflows_dir: Option<PathBuf>,
}

pub async fn env(opts: EnvOpts) -> Env {
    let mut sims = Vec::new();
    for _ in 0..opts.backends.max(1) {
        sims.push(Sim::start(opts.exec_ms).await);
    }
    let s3 = if opts.s3 {
        let s3 = S3Server::start().await;
        s3.create_bucket(BUCKET).await;
        Some(s3)
    } else {
        None
    };
    let hook = WebhookReceiver::start().await;
    let db = if opts.postgres {
        TestDb::postgres().await
    } else {
        TestDb::sqlite()
    };
    let mut endpoints: Vec<String> = sims.iter().map(|s| s.url.clone()).collect();
    endpoints.extend(opts.extra_endpoints);
    let mut env = opts.env;
    // Cleanup is on by default, and its prompts would mix into the simulators' prompt lists that
    // these tests count; the tests of cleanup turn it on (and `original::` runs with the default).
    env.entry("COMFYD_CLEANUP".into())
        .or_insert_with(|| "false".into());
    if let Some(s3) = &s3 {
        env.insert("S3_BUCKET".into(), BUCKET.into());
        env.insert("S3_REGION_NAME".into(), "us-east-1".into());
        env.insert("AWS_ACCESS_KEY_ID".into(), s3.access_key.clone());
        env.insert("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key.clone());
        env.insert("COMFYD_S3_ENDPOINT_URL".into(), s3.endpoint.clone());
    }
    let daemon = Daemon::start(DaemonConfig {
        endpoints,
        database_url: db.url().to_string(),
        env,
        workflows_dir: opts.workflows_dir,
        dotenv: None,
    })
    .await;
    Env {
        s3,
        sims,
        hook,
        db,
        daemon,
    }
}

/// A small real PNG, base64-encoded.
pub fn png_base64(w: u32, h: u32) -> String {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        let mut writer = enc.write_header().expect("png header");
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
        writer.write_image_data(&data).expect("png data");
    }
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// The kinds of a task's recorded events, in order.
pub async fn event_kinds(env: &Env, id: &str) -> Vec<String> {
    let db = env.db.connect().await;
    db::events::for_task(&db, id)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

/// Waits for the task's webhook and returns every request received for it.
pub async fn webhooks(env: &Env, id: &str, n: usize) -> Vec<crate::support::webhook::Received> {
    eventually(20, &format!("{n} webhook(s) for {id}"), || async {
        let got = env.hook.for_task(id);
        (got.len() >= n).then_some(got)
    })
    .await
}

async fn text2img_end_to_end(postgres: bool) {
    // Arrange
    let env = env(EnvOpts {
        backends: 2,
        exec_ms: 30,
        s3: true,
        postgres,
        ..Default::default()
    })
    .await;

    // Act
    let reply = env
        .daemon
        .submit(json!({
            "service_type": "text2img",
            "client_task_id": format!("ct-{}", uuid::Uuid::new_v4()),
            "client_callback_url": env.hook.url,
            "params": { "prompt": "a lighthouse at dusk", "width": 256, "height": 192, "steps": 4 }
        }))
        .await;
    let id = reply["id"].as_str().expect("id").to_string();
    assert_eq!(reply["status"], "queued");
    assert_eq!(reply["error_code"], 0);
    let task = env.daemon.wait_terminal(&id, 30).await;

    // Assert: the task
    assert_eq!(task["status"], "done", "{task}\n{}", env.daemon.log());
    assert_eq!(task["error_code"], 0);
    let key = task["s3_key"].as_str().expect("s3_key");
    assert!(key.starts_with(&id), "key {key} names the task");
    assert!(task["comfyui_filepath"]
        .as_str()
        .expect("path")
        .contains(&id));
    // The object really is in the bucket, as a PNG.
    let s3 = env.s3.as_ref().expect("s3");
    assert_eq!(s3.list_keys(BUCKET).await, vec![key.to_string()]);
    let (bytes, content_type) = s3.get(BUCKET, key).await;
    assert_eq!(content_type, "image/png");
    assert!(bytes.starts_with(b"\x89PNG"));
    // The rows really are in the database.
    let db = env.db.connect().await;
    let row = db::tasks::get(&db, &id).await.expect("query").expect("row");
    assert_eq!(row.status, "done");
    assert_eq!(row.workflow, "text2img");
    let outputs = db::outputs::for_task(&db, &id).await.expect("outputs");
    assert_eq!(outputs.len(), 1);
    assert!(outputs[0].stored);
    assert_eq!(outputs[0].size as usize, bytes.len());
    // The webhook really was received, with the original's fields and the outputs.
    let hooks = webhooks(&env, &id, 1).await;
    let body = &hooks[0].body;
    for field in [
        "id",
        "client_task_id",
        "client_callback_url",
        "comfyui_task_id",
        "comfyui_filepath",
        "s3_key",
        "error_code",
    ] {
        assert!(body.get(field).is_some(), "webhook lacks {field}: {body}");
    }
    assert_eq!(body["s3_key"], key);
    assert_eq!(body["error_code"], 0);
    // The payload is the task's final record, field for field (the task was read back only in
    // part when it finished).
    assert_eq!(body, &task, "webhook body and GET /tasks/{{id}} differ");
    assert_eq!(body["outputs"].as_array().map(Vec::len), Some(1));
    // The payload tells what storing the output came to, as the rows do.
    assert_eq!(body["outputs"][0]["stored"], true);
    assert_eq!(body["outputs"][0]["key"], key);
    assert_eq!(body["outputs"][0]["size"], outputs[0].size);
    assert_eq!(body["outputs"][0]["content_type"], "image/png");
    assert!(hooks[0].header("webhook-id").is_some());
    let kinds = eventually(10, "notified event", || async {
        let k = event_kinds(&env, &id).await;
        k.contains(&"notified".to_string()).then_some(k)
    })
    .await;
    for step in [
        "accepted",
        "dispatched",
        "started",
        "executed",
        "stored",
        "notified",
    ] {
        assert!(
            kinds.contains(&step.to_string()),
            "{step} missing from {kinds:?}"
        );
    }
}

#[actix_web::test]
async fn text2img_end_to_end_with_sqlite() {
    text2img_end_to_end(false).await;
}

#[actix_web::test]
async fn text2img_end_to_end_with_postgres() {
    text2img_end_to_end(true).await;
}

#[actix_web::test]
async fn img2img_uploads_its_image_and_runs_with_the_name_comfyui_returned() {
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 20,
        s3: true,
        ..Default::default()
    })
    .await;
    let reply = env
        .daemon
        .submit(json!({
            "service_type": "img2img",
            "client_task_id": "img-1",
            "client_callback_url": env.hook.url,
            "params": { "image": png_base64(16, 16), "prompt": "make it blue", "denoise": 0.5 }
        }))
        .await;
    let id = reply["id"].as_str().expect("id").to_string();
    let task = env.daemon.wait_terminal(&id, 30).await;
    assert_eq!(task["status"], "done", "{task}\n{}", env.daemon.log());

    // The graph ComfyUI ran loads the uploaded file under the name it returned.
    let prompt_id = task["comfyui_task_id"].as_str().expect("prompt id");
    let graph = env.sims[0].graph_of(prompt_id).await;
    let loaded = graph["1"]["inputs"]["image"]
        .as_str()
        .expect("LoadImage.image")
        .to_string();
    assert!(
        loaded.contains(&id.replace('-', "")),
        "upload name {loaded} is unique to the task"
    );
    assert!(env.sims[0].data_dir().join("input").join(&loaded).exists());
    assert_eq!(graph["3"]["inputs"]["denoise"], 0.5);
    let keys = env.s3.as_ref().expect("s3").list_keys(BUCKET).await;
    assert_eq!(keys.len(), 1);
    webhooks(&env, &id, 1).await;
    // comfyd's own copy of the input image goes once the task has ended.
    let inputs = env.daemon.data_dir().join("inputs").join(&id);
    eventually(10, "input files removed", || async {
        (!inputs.exists()).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn a_batch_of_three_stores_three_objects() {
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 10,
        s3: true,
        ..Default::default()
    })
    .await;
    let reply = env
        .daemon
        .submit(
            json!({ "service_type": "batch3", "client_callback_url": env.hook.url, "params": {} }),
        )
        .await;
    let id = reply["id"].as_str().expect("id").to_string();
    let task = env.daemon.wait_terminal(&id, 30).await;
    assert_eq!(task["status"], "done", "{task}");
    assert_eq!(task["outputs"].as_array().map(Vec::len), Some(3));
    let keys = env.s3.as_ref().expect("s3").list_keys(BUCKET).await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with(&id)));
    let hooks = webhooks(&env, &id, 1).await;
    assert_eq!(hooks[0].body["outputs"].as_array().map(Vec::len), Some(3));
}

#[actix_web::test]
async fn a_runtime_error_fails_the_task_with_comfyuis_error_and_still_notifies() {
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 10,
        ..Default::default()
    })
    .await;
    env.sims[0].script(json!({ "fail_next": 1 })).await;
    let reply = env
        .daemon
        .submit(json!({ "service_type": "solid", "client_callback_url": env.hook.url, "params": { "width": 8, "height": 8 } }))
        .await;
    let id = reply["id"].as_str().expect("id").to_string();
    let task = env.daemon.wait_terminal(&id, 30).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error_code"], 10);
    assert_eq!(
        task["error_details"]["exception_type"], "RuntimeError",
        "{task}"
    );
    assert!(task["error_details"]["node_id"].is_string(), "{task}");
    let hooks = webhooks(&env, &id, 1).await;
    assert_eq!(hooks[0].body["error_code"], 10);
    assert_eq!(hooks[0].body["status"], "failed");
}

#[actix_web::test]
async fn bad_requests_get_a_json_error_naming_the_field_and_queue_nothing() {
    let env = env(EnvOpts {
        backends: 1,
        ..Default::default()
    })
    .await;
    let d = &env.daemon;
    let cases = [
        (
            json!({ "service_type": "nope", "params": {} }),
            "service_type",
        ),
        (json!({ "params": {} }), "service_type"),
        (
            json!({ "service_type": "text2img", "params": {} }),
            "params.prompt",
        ),
        (
            json!({ "service_type": "text2img", "params": { "prompt": "x", "steps": "many" } }),
            "params.steps",
        ),
        (
            json!({ "service_type": "text2img", "params": { "prompt": "x", "steps": 100000 } }),
            "params.steps",
        ),
        (
            json!({ "service_type": "text2img", "params": { "prompt": "x", "colour": 1 } }),
            "params.colour",
        ),
        (
            json!({ "service_type": "img2img", "params": { "prompt": "x", "image": "!!!not base64!!!" } }),
            "params.image",
        ),
        (
            json!({ "service_type": "solid", "client_callback_url": "ftp://example.com/x", "params": {} }),
            "client_callback_url",
        ),
        (json!({ "service_type": "solid", "params": [] }), "params"),
        (
            json!({ "service_type": "solid", "priority": "high" }),
            "priority",
        ),
    ];
    for (body, field) in cases {
        let (status, reply) = d.post("", &body).await;
        assert_eq!(status, 422, "{body} → {reply}");
        let fields: Vec<&str> = reply["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .filter_map(|f| f["field"].as_str())
            .collect();
        assert!(
            fields.contains(&field),
            "{body}: expected {field} in {reply}"
        );
        assert_eq!(reply["error"], "invalid_request");
    }
    // Every bad field at once.
    let (_, reply) = d
        .post(
            "",
            &json!({ "service_type": "text2img", "params": { "steps": 0, "cfg": "x" } }),
        )
        .await;
    assert_eq!(reply["fields"].as_array().map(Vec::len), Some(3), "{reply}");
    // Not JSON at all.
    let mut resp = awc::Client::new()
        .post(&d.api)
        .insert_header(("content-type", "application/json"))
        .send_body("{not json")
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.expect("json error body");
    assert_eq!(body["error"], "bad_request");
    // Nothing was queued.
    let (_, list) = d.get("/tasks").await;
    assert_eq!(list["total"], 0, "{list}");
    assert!(env.sims[0].prompts().await.is_empty());
}

#[actix_web::test]
async fn a_prompt_comfyui_rejects_fails_with_error_code_1() {
    // A workflow whose checkpoint the backend does not have: ComfyUI answers 400 with node_errors.
    let dir = tempfile::tempdir().expect("workflows dir");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workflows");
    let graph = std::fs::read_to_string(repo.join("text2img.json")).expect("graph");
    std::fs::write(
        dir.path().join("nockpt.json"),
        graph.replace("v1-5-pruned-emaonly.safetensors", "missing.safetensors"),
    )
    .expect("write graph");
    let manifest = std::fs::read_to_string(repo.join("text2img.toml")).expect("manifest");
    std::fs::write(
        dir.path().join("nockpt.toml"),
        manifest.replace("name = \"text2img\"", "name = \"nockpt\""),
    )
    .expect("write manifest");
    let env = env(EnvOpts {
        backends: 1,
        workflows_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;

    let reply = env
        .daemon
        .submit(json!({ "service_type": "nockpt", "client_callback_url": env.hook.url, "params": { "prompt": "x" } }))
        .await;
    let id = reply["id"].as_str().expect("id").to_string();
    let task = env.daemon.wait_terminal(&id, 30).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error_code"], 1, "{task}");
    assert!(task["error_details"]["node_errors"].is_object(), "{task}");
    assert_eq!(webhooks(&env, &id, 1).await[0].body["error_code"], 1);
}

#[actix_web::test]
async fn quotes_backslashes_and_unicode_reach_the_graph_unchanged() {
    let env = env(EnvOpts {
        backends: 1,
        ..Default::default()
    })
    .await;
    let nasty = "He said \"stop\" \\ then }, {\"4\": {\"class_type\": \"Evil\"}} ünïcødé 🎨\n\ttab";
    let reply = env
        .daemon
        .submit(json!({ "service_type": "text2img", "params": { "prompt": nasty } }))
        .await;
    let id = reply["id"].as_str().expect("id").to_string();
    let task = env.daemon.wait_terminal(&id, 30).await;
    assert_eq!(task["status"], "done", "{task}");
    let graph = env.sims[0]
        .graph_of(task["comfyui_task_id"].as_str().expect("prompt id"))
        .await;
    assert_eq!(graph["6"]["inputs"]["text"], nasty);
    assert_eq!(graph["4"]["class_type"], "CheckpointLoaderSimple");
    assert_eq!(
        graph.as_object().map(|g| g.len()),
        Some(7),
        "no node added: {graph}"
    );
}

#[actix_web::test]
async fn with_s3_down_the_output_goes_to_the_fallback_folder_with_error_code_2() {
    let mut env = env(EnvOpts {
        backends: 1,
        s3: true,
        env: HashMap::from([("COMFYD_UPLOAD_ATTEMPTS".to_string(), "2".to_string())]),
        ..Default::default()
    })
    .await;
    env.s3.as_mut().expect("s3").stop();
    let reply = env
        .daemon
        .submit(json!({ "service_type": "solid", "client_callback_url": env.hook.url, "params": { "width": 8, "height": 8 } }))
        .await;
    let id = reply["id"].as_str().expect("id").to_string();
    let task = env.daemon.wait_terminal(&id, 60).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error_code"], 2);
    let out = &task["outputs"][0];
    assert_eq!(out["stored"], false);
    let fallback = PathBuf::from(out["fallback_path"].as_str().expect("fallback path"));
    assert!(
        fallback.starts_with(env.daemon.fallback_dir()),
        "{}",
        fallback.display()
    );
    assert!(fallback.ends_with(format!(
        "{}/{}",
        out["subfolder"].as_str().unwrap_or(""),
        out["filename"].as_str().unwrap_or("")
    )));
    assert!(std::fs::read(&fallback)
        .expect("fallback file")
        .starts_with(b"\x89PNG"));
    assert_eq!(webhooks(&env, &id, 1).await[0].body["error_code"], 2);
}

#[actix_web::test]
async fn a_204_webhook_is_delivered_once() {
    let env = env(EnvOpts {
        backends: 1,
        ..Default::default()
    })
    .await;
    env.hook.answer(204);
    let reply = env
        .daemon
        .submit(json!({ "service_type": "solid", "client_callback_url": env.hook.url, "params": { "width": 8, "height": 8 } }))
        .await;
    let id = reply["id"].as_str().expect("id").to_string();
    env.daemon.wait_terminal(&id, 30).await;
    let delivery = eventually(10, "delivery delivered", || async {
        let (_, d) = env.daemon.get(&format!("/tasks/{id}/deliveries")).await;
        let first = d["deliveries"][0].clone();
        (first["status"] == "delivered").then_some(first)
    })
    .await;
    assert_eq!(delivery["attempts"], 1);
    assert_eq!(delivery["history"][0]["status_code"], 204);
    actix_rt::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(env.hook.for_task(&id).len(), 1, "no redelivery after a 204");
}

#[actix_web::test]
async fn a_burst_spreads_over_the_backends() {
    let env = env(EnvOpts {
        backends: 3,
        exec_ms: 100,
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..24 {
        let r = env.daemon.submit(json!({ "service_type": "solid", "params": { "width": 8, "height": 8, "color": i } })).await;
        ids.push(r["id"].as_str().expect("id").to_string());
    }
    for id in &ids {
        assert_eq!(env.daemon.wait_terminal(id, 60).await["status"], "done");
    }
    let mut counts = Vec::new();
    for s in &env.sims {
        counts.push(s.prompts().await.len());
    }
    assert_eq!(counts.iter().sum::<usize>(), 24, "{counts:?}");
    assert!(counts.iter().all(|&c| c >= 6), "uneven spread: {counts:?}");
}

#[actix_web::test]
async fn a_backend_that_is_down_at_start_gets_nothing() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 10,
        extra_endpoints: vec![dead.clone()],
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let r = env
            .daemon
            .submit(json!({ "service_type": "solid", "params": { "width": 8, "height": 8 } }))
            .await;
        ids.push(r["id"].as_str().expect("id").to_string());
    }
    for id in &ids {
        let t = env.daemon.wait_terminal(id, 30).await;
        assert_eq!(t["status"], "done");
        assert_eq!(t["backend"], env.sims[0].url);
        assert_eq!(t["attempts"], 1);
    }
    let (_, backends) = env.daemon.get("/backends").await;
    let down: Vec<&Value> = backends["backends"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|b| b["up"] == false)
        .collect();
    assert_eq!(down.len(), 1);
    assert_eq!(down[0]["name"], dead);
}

#[actix_web::test]
async fn cleanup_removes_the_input_after_the_job_and_the_outputs_after_storing() {
    let env = env(EnvOpts {
        backends: 1,
        s3: true,
        env: HashMap::from([("COMFYD_CLEANUP".to_string(), "true".to_string())]),
        ..Default::default()
    })
    .await;
    let reply = env
        .daemon
        .submit(json!({ "service_type": "invert", "params": { "image": png_base64(8, 8) } }))
        .await;
    let id = reply["id"].as_str().expect("id").to_string();
    let task = env.daemon.wait_terminal(&id, 30).await;
    assert_eq!(task["status"], "done", "{task}");
    let sim_dir = env.sims[0].data_dir();
    let output = sim_dir
        .join("output")
        .join(task["comfyui_filepath"].as_str().expect("path"));
    let graph = env.sims[0]
        .graph_of(task["comfyui_task_id"].as_str().expect("prompt id"))
        .await;
    let input = sim_dir.join("input").join(
        graph["1"]["inputs"]["image"]
            .as_str()
            .expect("LoadImage.image"),
    );
    eventually(10, "files removed from the ComfyUI host", || async {
        (!output.exists() && !input.exists()).then_some(())
    })
    .await;
    // The stored copy is what remains.
    assert_eq!(
        env.s3.as_ref().expect("s3").list_keys(BUCKET).await.len(),
        1
    );
    // The cleaner prompts ran with comfyd's client id and succeeded.
    let cleans: Vec<Value> = env.sims[0].prompts().await.into_iter().skip(1).collect();
    assert_eq!(cleans.len(), 2, "{cleans:?}");
    assert!(
        cleans.iter().all(|p| p["outcome"] == "success"),
        "{cleans:?}"
    );
}

#[actix_web::test]
async fn without_cleanup_files_stay_on_the_comfyui_host() {
    let env = env(EnvOpts {
        backends: 1,
        env: HashMap::from([("COMFYD_CLEANUP".to_string(), "false".to_string())]),
        ..Default::default()
    })
    .await;
    let reply = env
        .daemon
        .submit(json!({ "service_type": "solid", "params": { "width": 8, "height": 8 } }))
        .await;
    let task = env
        .daemon
        .wait_terminal(reply["id"].as_str().expect("id"), 30)
        .await;
    actix_rt::time::sleep(std::time::Duration::from_millis(300)).await;
    let output = env.sims[0]
        .data_dir()
        .join("output")
        .join(task["comfyui_filepath"].as_str().expect("path"));
    assert!(output.exists(), "{}", output.display());
    assert_eq!(env.sims[0].prompts().await.len(), 1, "no cleaner prompt");
}

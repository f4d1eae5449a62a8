//! Workflows as data, against the real daemon: discovery (`GET /workflows`), typed submits
//! (`POST /workflows/{name}/tasks`) whose values land in the graph ComfyUI ran with the right JSON
//! type, image inputs (base64, data URL, http URL with size/type/time limits), outputs (temp files,
//! batches, S3 content types), per-task output prefixes and the simulator's cache, random seeds,
//! SIGHUP reloads, `comfyd workflows check`, and a daemon refusing to start on broken workflows.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::pipeline::{env, png_base64, Env, EnvOpts, BUCKET};
use crate::support::daemon::Daemon;
use crate::support::db::TestDb;
use crate::support::eventually;
use crate::support::images::{ImageServer, ImageServerConfig};
use crate::support::sim::Sim;

/// The repository's shipped workflows.
fn repo_workflows() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows")
}

/// Names of the shipped workflows, from their manifests' file names.
fn shipped_names() -> BTreeSet<String> {
    std::fs::read_dir(repo_workflows())
        .expect("read workflows/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect()
}

/// A temp copy of the shipped manifests and graphs (not the README).
fn workflows_copy() -> TempDir {
    let dir = tempfile::tempdir().expect("workflows dir");
    for entry in std::fs::read_dir(repo_workflows()).expect("read workflows/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|x| x == "toml" || x == "json") {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("file name")))
                .expect("copy workflow");
        }
    }
    dir
}

/// A model-free workflow with a boolean param (no shipped workflow has one). ComfyUI ignores inputs a
/// node class does not declare, so `EmptyImage.invert` travels to the backend untouched.
const FLAGS_TOML: &str = r#"
name = "flags"
description = "A solid image with a boolean flag"
[outputs]
nodes = ["2"]
[params.invert]
type = "boolean"
default = true
targets = [{ node = "1", input = "invert" }]
"#;
const FLAGS_JSON: &str = r#"{
  "1": { "class_type": "EmptyImage", "inputs": { "width": 8, "height": 8, "batch_size": 1, "color": 0, "invert": true } },
  "2": { "class_type": "SaveImage", "inputs": { "images": ["1", 0], "filename_prefix": "flags" } }
}"#;

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap_or_else(|e| panic!("write {file}: {e}"));
}

/// The shipped workflows plus `flags`.
fn workflows_with_flags() -> TempDir {
    let dir = workflows_copy();
    write(dir.path(), "flags.toml", FLAGS_TOML);
    write(dir.path(), "flags.json", FLAGS_JSON);
    dir
}

/// A copy of `solid` under another name (its SaveImage prefix becomes the name too).
fn solid_as(dir: &Path, name: &str) {
    let manifest =
        std::fs::read_to_string(repo_workflows().join("solid.toml")).expect("solid.toml");
    let graph = std::fs::read_to_string(repo_workflows().join("solid.json")).expect("solid.json");
    write(
        dir,
        &format!("{name}.toml"),
        &manifest.replace("name = \"solid\"", &format!("name = \"{name}\"")),
    );
    write(
        dir,
        &format!("{name}.json"),
        &graph.replace(
            "\"filename_prefix\": \"solid\"",
            &format!("\"filename_prefix\": \"{name}\""),
        ),
    );
}

/// `POST /workflows/{name}/tasks {"params": params}`.
async fn submit_typed(d: &Daemon, name: &str, params: Value) -> (u16, Value) {
    d.post(
        &format!("/workflows/{name}/tasks"),
        &json!({ "params": params }),
    )
    .await
}

/// Submits, expects 202, waits for `done`, and returns the task with the graph ComfyUI ran.
async fn run_done(env: &Env, name: &str, params: Value) -> (Value, Value) {
    let (status, reply) = submit_typed(&env.daemon, name, params.clone()).await;
    assert_eq!(status, 202, "{name} {params} → {reply}");
    assert_eq!(reply["status"], "queued", "{reply}");
    let id = reply["id"].as_str().expect("task id");
    let task = env.daemon.wait_terminal(id, 20).await;
    assert_eq!(
        task["status"],
        "done",
        "{name}: {task}\n{}",
        env.daemon.log()
    );
    let graph = graph_ran(env, &task).await;
    (task, graph)
}

/// The graph the backend that ran `task` executed (from its `/history`).
async fn graph_ran(env: &Env, task: &Value) -> Value {
    let prompt_id = task["comfyui_task_id"].as_str().expect("comfyui_task_id");
    for sim in &env.sims {
        let graph = sim.graph_of(prompt_id).await;
        if graph.is_object() {
            return graph;
        }
    }
    panic!("no simulator ran prompt {prompt_id}");
}

/// The `field` names of a 422/413 body.
fn fields(reply: &Value) -> Vec<String> {
    reply["fields"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that nothing reached the backend and no task was recorded.
async fn assert_nothing_queued(env: &Env) {
    let (_, list) = env.daemon.get("/tasks").await;
    assert_eq!(list["total"], 0, "no task recorded: {list}");
    assert!(
        env.sims[0].prompts().await.is_empty(),
        "no prompt reached the backend"
    );
}

// 1. Discovery

#[actix_web::test]
async fn the_listing_describes_every_shipped_workflow_with_a_json_schema() {
    // Arrange
    let env = env(EnvOpts {
        backends: 1,
        ..Default::default()
    })
    .await;

    // Act
    let (status, list) = env.daemon.get("/workflows").await;

    // Assert
    assert_eq!(status, 200);
    let listed: BTreeSet<String> = list["workflows"]
        .as_array()
        .expect("workflows array")
        .iter()
        .map(|w| w["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(listed, shipped_names());
    for w in list["workflows"].as_array().expect("array") {
        let schema = &w["params"];
        assert_eq!(schema["type"], "object", "{w}");
        assert_eq!(schema["additionalProperties"], false, "{w}");
        assert!(
            schema["$schema"]
                .as_str()
                .is_some_and(|s| s.contains("json-schema.org")),
            "{w}"
        );
        assert!(schema["properties"].is_object(), "{w}");
        assert!(
            w["outputs"].as_array().is_some_and(|o| !o.is_empty()),
            "{w}"
        );
    }

    let (status, t2i) = env.daemon.get("/workflows/text2img").await;
    assert_eq!(status, 200);
    assert_eq!(t2i["name"], "text2img");
    let schema = &t2i["params"];
    // `prompt` may also come as `text` (the original's name): exactly one of the two is required.
    assert_eq!(schema["required"], json!([]), "{schema}");
    assert_eq!(
        schema["allOf"],
        json!([{ "oneOf": [{ "required": ["prompt"] }, { "required": ["text"] }] }]),
        "{schema}"
    );
    assert_eq!(schema["properties"]["prompt"]["x-aliases"], json!(["text"]));
    assert_eq!(schema["properties"]["text"]["x-alias-of"], "prompt");
    assert_eq!(schema["properties"]["text"]["maxLength"], 4000);
    let props = &schema["properties"];
    assert_eq!(props["prompt"]["type"], "string");
    assert_eq!(props["prompt"]["maxLength"], 4000);
    assert_eq!(props["width"]["type"], "integer");
    assert_eq!(props["width"]["minimum"], 64);
    assert_eq!(props["width"]["default"], 512);
    assert_eq!(props["cfg"]["type"], "number");
    assert_eq!(
        props["sampler"]["enum"].as_array().map(Vec::len),
        Some(8),
        "{props}"
    );
    assert_eq!(props["seed"]["type"], "integer");
    assert!(
        props["seed"].get("default").is_none(),
        "a random seed has no default: {props}"
    );
    let (_, i2i) = env.daemon.get("/workflows/img2img").await;
    assert_eq!(i2i["params"]["properties"]["image"]["type"], "string");
    let required: BTreeSet<&str> = i2i["params"]["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, BTreeSet::from(["image"]));
    assert_eq!(
        i2i["params"]["allOf"][0]["oneOf"][1],
        json!({ "required": ["text"] })
    );

    for path in ["/workflows/nope", "/workflows/TEXT2IMG"] {
        let (status, body) = env.daemon.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"], "not_found", "{path}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    let (status, body) = submit_typed(&env.daemon, "nope", json!({})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_found");
    assert_nothing_queued(&env).await;
}

// 2. Typed params

#[actix_web::test]
async fn good_values_of_every_param_type_land_in_the_graph_with_their_json_type() {
    // Arrange
    let dir = workflows_with_flags();
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 5,
        workflows_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let max_seed = comfyd::workflow::MAX_SEED;

    // Act: string, integer, float (sent as an integer), enum and seed in one text2img task.
    let (_, g) = run_done(
        &env,
        "text2img",
        json!({ "prompt": "a red fox", "negative_prompt": "", "width": 320, "steps": 3, "cfg": 7, "sampler": "heun", "seed": max_seed }),
    )
    .await;

    // Assert
    assert_eq!(g["6"]["inputs"]["text"], "a red fox");
    assert_eq!(
        g["7"]["inputs"]["text"], "",
        "an empty string is a value, not an absence"
    );
    assert!(g["5"]["inputs"]["width"].is_u64(), "{}", g["5"]);
    assert_eq!(g["5"]["inputs"]["width"], 320);
    assert_eq!(g["5"]["inputs"]["height"], 512, "default");
    assert_eq!(g["3"]["inputs"]["steps"], 3);
    assert!(
        g["3"]["inputs"]["cfg"].is_f64(),
        "a float param is a float in the graph: {}",
        g["3"]
    );
    assert_eq!(g["3"]["inputs"]["cfg"].as_f64(), Some(7.0));
    assert_eq!(g["3"]["inputs"]["sampler_name"], "heun");
    assert_eq!(
        g["3"]["inputs"]["seed"].as_u64(),
        Some(max_seed),
        "{}",
        g["3"]
    );
    // Links are untouched.
    assert_eq!(g["3"]["inputs"]["model"], json!(["4", 0]));

    // Boolean, both ways (the graph's literal is true).
    let (_, g) = run_done(&env, "flags", json!({ "invert": false })).await;
    assert_eq!(g["1"]["inputs"]["invert"], json!(false));
    let (_, g) = run_done(&env, "flags", json!({})).await;
    assert_eq!(g["1"]["inputs"]["invert"], json!(true));

    // A float with a fraction, and an integer at its bounds.
    let (_, g) = run_done(
        &env,
        "text2img",
        json!({ "prompt": "x", "cfg": 6.5, "width": 2048, "steps": 1, "seed": 0 }),
    )
    .await;
    assert_eq!(g["3"]["inputs"]["cfg"].as_f64(), Some(6.5));
    assert_eq!(g["5"]["inputs"]["width"], 2048);
    assert_eq!(g["3"]["inputs"]["seed"], 0);
}

#[actix_web::test]
async fn bad_values_get_422_naming_each_field_and_nothing_is_queued() {
    // Arrange
    let dir = workflows_with_flags();
    let env = env(EnvOpts {
        backends: 1,
        workflows_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let p = "a prompt";
    let cases = [
        // string
        ("text2img", json!({ "prompt": 5 }), "params.prompt"),
        (
            "text2img",
            json!({ "prompt": "x".repeat(4001) }),
            "params.prompt",
        ),
        ("text2img", json!({}), "params.prompt"),
        // integer
        (
            "text2img",
            json!({ "prompt": p, "width": "wide" }),
            "params.width",
        ),
        (
            "text2img",
            json!({ "prompt": p, "width": 64.5 }),
            "params.width",
        ),
        (
            "text2img",
            json!({ "prompt": p, "width": 4096 }),
            "params.width",
        ),
        (
            "text2img",
            json!({ "prompt": p, "steps": 0 }),
            "params.steps",
        ),
        // float
        (
            "text2img",
            json!({ "prompt": p, "cfg": "high" }),
            "params.cfg",
        ),
        (
            "text2img",
            json!({ "prompt": p, "cfg": 30.5 }),
            "params.cfg",
        ),
        // boolean
        ("flags", json!({ "invert": "yes" }), "params.invert"),
        ("flags", json!({ "invert": 1 }), "params.invert"),
        // enum
        (
            "text2img",
            json!({ "prompt": p, "sampler": "bogus" }),
            "params.sampler",
        ),
        (
            "text2img",
            json!({ "prompt": p, "sampler": 3 }),
            "params.sampler",
        ),
        // image
        (
            "img2img",
            json!({ "prompt": p, "image": 42 }),
            "params.image",
        ),
        (
            "img2img",
            json!({ "prompt": p, "image": "bm90IGFuIGltYWdl" }),
            "params.image",
        ),
        (
            "img2img",
            json!({ "prompt": p, "image": "ftp://example.com/a.png" }),
            "params.image",
        ),
        ("img2img", json!({ "prompt": p }), "params.image"),
        // seed
        (
            "text2img",
            json!({ "prompt": p, "seed": -1 }),
            "params.seed",
        ),
        (
            "text2img",
            json!({ "prompt": p, "seed": comfyd::workflow::MAX_SEED + 1 }),
            "params.seed",
        ),
        (
            "text2img",
            json!({ "prompt": p, "seed": "42" }),
            "params.seed",
        ),
        (
            "text2img",
            json!({ "prompt": p, "seed": 1.5 }),
            "params.seed",
        ),
        // not a param
        (
            "text2img",
            json!({ "prompt": p, "colour": 1 }),
            "params.colour",
        ),
        ("solid", json!([1, 2]), "params"),
    ];

    // Act + Assert: one bad field at a time, each named alone.
    for (name, params, field) in cases {
        let (status, reply) = submit_typed(&env.daemon, name, params.clone()).await;
        assert_eq!(status, 422, "{name} {params} → {reply}");
        assert_eq!(reply["error"], "invalid_request", "{reply}");
        assert_eq!(
            fields(&reply),
            vec![field.to_string()],
            "{name} {params} → {reply}"
        );
        let reason = reply["fields"][0]["reason"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "{reply}");
    }

    // Several bad fields at once: every one is listed.
    let (status, reply) = submit_typed(
        &env.daemon,
        "text2img",
        json!({ "width": "x", "cfg": -1, "sampler": "nope", "seed": -5, "extra": true }),
    )
    .await;
    assert_eq!(status, 422);
    let got: BTreeSet<String> = fields(&reply).into_iter().collect();
    let want: BTreeSet<String> = ["prompt", "width", "cfg", "sampler", "seed", "extra"]
        .iter()
        .map(|f| format!("params.{f}"))
        .collect();
    assert_eq!(got, want, "{reply}");

    // Bad fields of the envelope and of params together.
    let (status, reply) = env
        .daemon
        .post(
            "/workflows/text2img/tasks",
            &json!({ "params": { "steps": 0 }, "priority": "high" }),
        )
        .await;
    assert_eq!(status, 422);
    let got: BTreeSet<String> = fields(&reply).into_iter().collect();
    assert_eq!(
        got,
        BTreeSet::from([
            "priority".into(),
            "params.prompt".into(),
            "params.steps".into()
        ]),
        "{reply}"
    );

    assert_nothing_queued(&env).await;
}

// 3. Images in

/// The simulator that ran `task` (by its `backend` name).
fn sim_of<'a>(env: &'a Env, task: &Value) -> &'a Sim {
    env.sims
        .iter()
        .find(|s| task["backend"] == s.url)
        .unwrap_or_else(|| panic!("no simulator ran {task}"))
}

#[actix_web::test]
async fn images_arrive_as_base64_data_urls_and_http_urls_within_limits() {
    // Arrange
    let png_b64 = png_base64(16, 16);
    let png = base64::engine::general_purpose::STANDARD
        .decode(&png_b64)
        .expect("png");
    let limit = 4096;
    assert!(png.len() < limit, "the good PNG fits the limit");
    let images = ImageServer::start(ImageServerConfig {
        png: png.clone(),
        big_len: 5 * limit,
        stall: Duration::from_secs(4),
    })
    .await;
    let env = env(EnvOpts {
        backends: 2,
        exec_ms: 5,
        env: HashMap::from([
            ("COMFYD_FETCH_MAX_BYTES".to_string(), limit.to_string()),
            ("COMFYD_FETCH_TIMEOUT_MS".to_string(), "1000".to_string()),
        ]),
        ..Default::default()
    })
    .await;

    // Act + Assert: good images, each uploaded to the backend that ran the task (and only there),
    // under a name unique to the task.
    let good = [
        ("base64", png_b64.clone()),
        ("data URL", format!("data:image/png;base64,{png_b64}")),
        ("http URL", images.url("/ok.png")),
        ("redirect to the PNG", images.url("/redirect.png")),
    ];
    let mut loaded_names = BTreeSet::new();
    for (what, image) in good {
        let (task, graph) = run_done(&env, "invert", json!({ "image": image })).await;
        let id = task["id"].as_str().expect("id");
        let loaded = graph["1"]["inputs"]["image"]
            .as_str()
            .expect("LoadImage.image")
            .to_string();
        assert!(
            loaded.contains(&id.replace('-', "")),
            "{what}: upload name {loaded} is unique to task {id}"
        );
        let ran = sim_of(&env, &task);
        let uploaded =
            std::fs::read(ran.data_dir().join("input").join(&loaded)).expect("uploaded file");
        assert_eq!(uploaded, png, "{what}: the backend got the client's bytes");
        for other in env.sims.iter().filter(|s| s.url != ran.url) {
            assert!(
                !other.data_dir().join("input").join(&loaded).exists(),
                "{what}: uploaded only where it ran"
            );
        }
        assert_eq!(task["outputs"].as_array().map(Vec::len), Some(1), "{task}");
        loaded_names.insert(loaded);
    }
    assert_eq!(loaded_names.len(), 4);
    assert_eq!(
        images.hits("/ok.png"),
        2,
        "fetched once directly, once through the redirect"
    );

    // Bad URLs: refused at submit, naming params.image.
    let bad = [
        ("/big.png", 413),
        ("/big-chunked.png", 413),
        ("/page.html", 422),
        ("/fake.png", 422),
        ("/missing.png", 422),
        ("/slow.png", 422),
    ];
    for (path, want) in bad {
        let started = Instant::now();
        let (status, reply) =
            submit_typed(&env.daemon, "invert", json!({ "image": images.url(path) })).await;
        let took = started.elapsed();
        assert_eq!(status, want, "{path} → {reply}");
        assert_eq!(
            fields(&reply),
            vec!["params.image".to_string()],
            "{path} → {reply}"
        );
        assert_eq!(
            reply["error"],
            if want == 413 {
                "too_large"
            } else {
                "invalid_request"
            },
            "{reply}"
        );
        assert_eq!(images.hits(path), 1, "{path} was fetched once");
        if path == "/slow.png" {
            let reason = reply["fields"][0]["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("timed out"), "{reply}");
            assert!(
                took < Duration::from_millis(2500),
                "the fetch gave up after ~1 s, not {took:?}"
            );
        }
    }
    // A redirect loop ends after a few hops.
    let (status, reply) = submit_typed(
        &env.daemon,
        "invert",
        json!({ "image": images.url("/loop.png") }),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(fields(&reply), vec!["params.image".to_string()]);
    assert!(
        (2..=10).contains(&images.hits("/loop.png")),
        "{} hops",
        images.hits("/loop.png")
    );

    let (_, list) = env.daemon.get("/tasks").await;
    assert_eq!(
        list["total"], 4,
        "only the good submits were recorded: {list}"
    );
    let mut prompts = 0;
    for sim in &env.sims {
        prompts += sim.prompts().await.len();
    }
    assert_eq!(prompts, 4);
    images.stop().await;
}

#[actix_web::test]
async fn a_retried_submit_is_answered_from_the_first_without_fetching_again() {
    // Arrange
    let png = base64::engine::general_purpose::STANDARD
        .decode(png_base64(8, 8))
        .expect("png");
    let images = ImageServer::start(ImageServerConfig {
        png,
        big_len: 1,
        stall: Duration::ZERO,
    })
    .await;
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 5,
        ..Default::default()
    })
    .await;
    let body = json!({ "client_task_id": "retry-1", "params": { "image": images.url("/ok.png") } });

    // Act
    let (first_status, first) = env.daemon.post("/workflows/invert/tasks", &body).await;
    let (again_status, again) = env.daemon.post("/workflows/invert/tasks", &body).await;
    let other =
        json!({ "client_task_id": "retry-1", "params": { "image": images.url("/redirect.png") } });
    let (conflict_status, conflict) = env.daemon.post("/workflows/invert/tasks", &other).await;

    // Assert
    assert_eq!(first_status, 202, "{first}");
    assert_eq!(
        again_status, 200,
        "the same submit again is not new: {again}"
    );
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        images.hits("/ok.png"),
        1,
        "the retry did not fetch the image again"
    );
    assert_eq!(conflict_status, 409, "{conflict}");
    assert_eq!(conflict["task"]["id"], first["id"]);
    assert_eq!(images.hits("/redirect.png"), 0);
    let task = env
        .daemon
        .wait_terminal(first["id"].as_str().expect("id"), 20)
        .await;
    assert_eq!(task["status"], "done", "{task}");
    assert_eq!(env.sims[0].prompts().await.len(), 1);
    images.stop().await;
}

// 4. Outputs

#[actix_web::test]
async fn temp_and_batch_outputs_are_stored_with_matching_content_types() {
    // Arrange
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 5,
        s3: true,
        ..Default::default()
    })
    .await;
    let s3 = env.s3.as_ref().expect("s3");

    // Act
    let (preview, _) = run_done(&env, "preview", json!({ "width": 12, "height": 10 })).await;
    let (batch, graph) = run_done(&env, "batch3", json!({ "color": 255 })).await;

    // Assert: the preview is a temp output, collected and stored.
    let outs = preview["outputs"].as_array().expect("outputs");
    assert_eq!(outs.len(), 1, "{preview}");
    assert_eq!(outs[0]["type"], "temp", "{preview}");
    assert_eq!(outs[0]["stored"], true);
    let key = outs[0]["key"].as_str().expect("key");
    assert_eq!(preview["s3_key"], key);
    let (bytes, content_type) = s3.get(BUCKET, key).await;
    assert!(bytes.starts_with(b"\x89PNG"));
    assert_eq!(
        content_type,
        outs[0]["content_type"].as_str().expect("content_type")
    );
    assert_eq!(content_type, "image/png");
    assert_eq!(outs[0]["size"].as_u64(), Some(bytes.len() as u64));

    // The batch: three distinct files, each stored with its content type.
    let id = batch["id"].as_str().expect("id");
    assert_eq!(graph["1"]["inputs"]["color"], 255);
    let outs = batch["outputs"].as_array().expect("outputs");
    assert_eq!(outs.len(), 3, "{batch}");
    let names: BTreeSet<&str> = outs.iter().filter_map(|o| o["filename"].as_str()).collect();
    assert_eq!(names.len(), 3, "{batch}");
    for o in outs {
        assert_eq!(o["type"], "output");
        assert_eq!(o["subfolder"], format!("comfyd/{id}"), "{o}");
        let key = o["key"].as_str().expect("key");
        assert!(key.contains(id), "{key}");
        let (bytes, content_type) = s3.get(BUCKET, key).await;
        assert_eq!(
            content_type,
            o["content_type"].as_str().expect("content_type"),
            "{o}"
        );
        assert_eq!(o["size"].as_u64(), Some(bytes.len() as u64));
    }
    let keys = s3.list_keys(BUCKET).await;
    assert_eq!(keys.len(), 4, "{keys:?}");
}

// 5. Unique prefixes, the backend's cache, random seeds

#[actix_web::test]
async fn identical_requests_both_run_and_each_gets_its_own_file() {
    // Arrange
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 5,
        ..Default::default()
    })
    .await;
    let params = json!({ "width": 8, "height": 8, "color": 4660 });

    // Act: the same request twice, one after the other (so the backend's cache holds the first).
    let (first, g1) = run_done(&env, "solid", params.clone()).await;
    let (second, g2) = run_done(&env, "solid", params).await;

    // Assert
    let ids = [
        first["id"].as_str().expect("id"),
        second["id"].as_str().expect("id"),
    ];
    assert_ne!(ids[0], ids[1]);
    for (id, g) in ids.iter().zip([&g1, &g2]) {
        assert_eq!(
            g["2"]["inputs"]["filename_prefix"],
            format!("comfyd/{id}/solid")
        );
    }
    // The EmptyImage node of the second prompt may come from the cache; the save still ran.
    let history = env.sims[0]
        .get(&format!(
            "/history/{}",
            second["comfyui_task_id"].as_str().expect("pid")
        ))
        .await;
    let cached: Vec<Value> = history
        .as_object()
        .and_then(|h| h.values().next())
        .and_then(|e| e["status"]["messages"].as_array())
        .into_iter()
        .flatten()
        .filter(|m| m[0] == "execution_cached")
        .flat_map(|m| m[1]["nodes"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(
        cached.contains(&json!("1")),
        "the simulator served node 1 from its cache: {history}"
    );

    let mut files = Vec::new();
    for (task, id) in [&first, &second].iter().zip(ids) {
        let outs = task["outputs"].as_array().expect("outputs");
        assert_eq!(outs.len(), 1, "{task}");
        assert_eq!(outs[0]["subfolder"], format!("comfyd/{id}"));
        assert_eq!(outs[0]["stored"], true);
        let key = outs[0]["key"].as_str().expect("key");
        assert!(key.contains(id), "{key}");
        let stored = env.daemon.data_dir().join("outputs").join(key);
        assert!(
            std::fs::read(&stored)
                .expect("stored output")
                .starts_with(b"\x89PNG"),
            "{}",
            stored.display()
        );
        let on_backend = env.sims[0]
            .data_dir()
            .join("output")
            .join(format!("comfyd/{id}"))
            .join(outs[0]["filename"].as_str().expect("filename"));
        assert!(on_backend.is_file(), "{}", on_backend.display());
        files.push(key.to_string());
    }
    assert_ne!(files[0], files[1]);
}

#[actix_web::test]
async fn a_seed_left_out_is_fresh_for_every_task() {
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 5,
        ..Default::default()
    })
    .await;
    let mut seeds = BTreeSet::new();
    for _ in 0..2 {
        let (_, g) = run_done(
            &env,
            "text2img",
            json!({ "prompt": "same prompt", "steps": 1 }),
        )
        .await;
        let seed = g["3"]["inputs"]["seed"].as_u64().expect("an integer seed");
        assert!(seed <= comfyd::workflow::MAX_SEED);
        assert_ne!(seed, 156680208700286, "not the graph's literal seed");
        seeds.insert(seed);
    }
    assert_eq!(seeds.len(), 2, "two tasks without a seed got {seeds:?}");
}

// 6. Reload

/// Waits until the daemon log holds `needle` at least `n` times.
async fn log_count(d: &Daemon, needle: &str, n: usize) -> String {
    eventually(
        10,
        &format!("{n}× {needle:?} in the daemon log"),
        || async {
            let log = d.log();
            (log.matches(needle).count() >= n).then_some(log)
        },
    )
    .await
}

async fn listed(d: &Daemon) -> BTreeSet<String> {
    let (_, list) = d.get("/workflows").await;
    list["workflows"]
        .as_array()
        .expect("workflows")
        .iter()
        .filter_map(|w| w["name"].as_str().map(String::from))
        .collect()
}

#[actix_web::test]
async fn sighup_adds_workflows_and_keeps_the_previous_set_when_a_manifest_breaks() {
    // Arrange
    let dir = workflows_copy();
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 5,
        workflows_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let d = &env.daemon;
    assert!(!listed(d).await.contains("hello"));
    let (status, _) = submit_typed(d, "hello", json!({})).await;
    assert_eq!(status, 404);

    // Act: a new workflow, then SIGHUP.
    solid_as(dir.path(), "hello");
    d.sighup();

    // Assert: it is listed and runs.
    eventually(10, "hello listed after SIGHUP", || async {
        listed(d).await.contains("hello").then_some(())
    })
    .await;
    assert_eq!(
        listed(d).await,
        shipped_names()
            .into_iter()
            .chain(["hello".to_string()])
            .collect()
    );
    let (_, schema) = d.get("/workflows/hello").await;
    assert_eq!(schema["params"]["properties"]["width"]["default"], 512);
    let (task, g) = run_done(&env, "hello", json!({ "width": 8, "height": 8 })).await;
    assert_eq!(
        g["2"]["inputs"]["filename_prefix"],
        format!("comfyd/{}/hello", task["id"].as_str().expect("id"))
    );

    // Act: a broken manifest, then SIGHUP.
    let graph = std::fs::read_to_string(repo_workflows().join("solid.json")).expect("graph");
    write(dir.path(), "broken.json", &graph);
    let manifest = std::fs::read_to_string(repo_workflows().join("solid.toml")).expect("manifest");
    write(
        dir.path(),
        "broken.toml",
        &manifest
            .replace("name = \"solid\"", "name = \"broken\"")
            .replacen("default = 512", "default = 0", 1),
    );
    d.sighup();

    // Assert: the log names the file and the problem; the previous set stays and still runs.
    let log = log_count(d, "not reloaded", 1).await;
    let line = log
        .lines()
        .skip_while(|l| !l.contains("not reloaded"))
        .take(4)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        log.contains("broken.toml") && log.contains("below min"),
        "log names the file and problem:\n{line}"
    );
    let now = listed(d).await;
    assert!(now.contains("hello") && !now.contains("broken"), "{now:?}");
    assert_eq!(submit_typed(d, "broken", json!({})).await.0, 404);
    run_done(&env, "hello", json!({ "width": 8, "height": 8 })).await;

    // Fixing the file and reloading again picks everything up.
    std::fs::remove_file(dir.path().join("broken.toml")).expect("remove broken.toml");
    solid_as(dir.path(), "fixed");
    d.sighup();
    eventually(10, "fixed listed", || async {
        listed(d).await.contains("fixed").then_some(())
    })
    .await;
}

#[actix_web::test]
async fn a_task_keeps_the_graph_it_was_accepted_with_across_a_reload() {
    // Arrange: a paused backend, so the first task waits while its workflow changes.
    let dir = workflows_copy();
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 5,
        workflows_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let d = &env.daemon;
    env.sims[0].config(json!({ "paused": true })).await;
    let (status, before) = submit_typed(d, "batch3", json!({})).await;
    assert_eq!(status, 202, "{before}");
    let (status, removed) = submit_typed(d, "preview", json!({ "width": 4, "height": 4 })).await;
    assert_eq!(status, 202, "{removed}");

    // Act: batch3's graph now makes 2 images instead of 3, and preview is gone; reload.
    let path = dir.path().join("batch3.json");
    let graph = std::fs::read_to_string(&path).expect("batch3.json");
    assert!(graph.contains("\"batch_size\": 3"));
    std::fs::write(
        &path,
        graph.replace("\"batch_size\": 3", "\"batch_size\": 2"),
    )
    .expect("rewrite batch3.json");
    std::fs::remove_file(dir.path().join("preview.toml")).expect("remove preview.toml");
    d.sighup();
    log_count(d, "SIGHUP: reloaded", 1).await;
    assert_eq!(d.get("/workflows/preview").await.0, 404);
    let (status, after) = submit_typed(d, "batch3", json!({})).await;
    assert_eq!(status, 202, "{after}");
    env.sims[0].config(json!({ "paused": false })).await;

    // Assert: a task of a workflow removed since it was accepted still runs as accepted.
    let task = d
        .wait_terminal(removed["id"].as_str().expect("id"), 20)
        .await;
    assert_eq!(task["status"], "done", "{task}");
    assert_eq!(graph_ran(&env, &task).await["1"]["inputs"]["width"], 4);

    for (reply, batch) in [(&before, 3), (&after, 2)] {
        let task = d.wait_terminal(reply["id"].as_str().expect("id"), 20).await;
        assert_eq!(task["status"], "done", "{task}");
        let g = graph_ran(&env, &task).await;
        assert_eq!(g["1"]["inputs"]["batch_size"], batch, "{task}");
        assert_eq!(
            task["outputs"].as_array().map(Vec::len),
            Some(batch as usize),
            "{task}"
        );
    }
}

// 7. `comfyd workflows check`

/// Runs `comfyd workflows check --dir DIR [--backend URL]` with an empty environment; returns the
/// exit code and stdout + stderr.
fn workflows_check(dir: &Path, backend: Option<&str>) -> (i32, String) {
    let cwd = tempfile::tempdir().expect("cwd");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfyd"));
    cmd.current_dir(cwd.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["workflows", "check", "--dir"])
        .arg(dir);
    if let Some(url) = backend {
        cmd.args(["--backend", url]);
    }
    let out = cmd.output().expect("run comfyd workflows check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The model-free shipped workflows only (whatever a backend without models can run).
fn model_free_workflows() -> TempDir {
    let dir = tempfile::tempdir().expect("dir");
    for name in ["solid", "batch3", "preview", "invert"] {
        for ext in ["toml", "json"] {
            let file = format!("{name}.{ext}");
            std::fs::copy(repo_workflows().join(&file), dir.path().join(&file)).expect("copy");
        }
    }
    dir
}

#[actix_web::test]
async fn workflows_check_passes_offline_and_against_a_simulator() {
    let sim = Sim::start(5).await;

    let (code, out) = workflows_check(&repo_workflows(), None);
    assert_eq!(code, 0, "{out}");
    for name in shipped_names() {
        assert!(out.contains(&name), "{name} in the report:\n{out}");
    }

    let dir = model_free_workflows();
    let (code, out) = workflows_check(dir.path(), Some(&sim.url));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&sim.url), "{out}");

    // A backend that does not answer fails the check, naming it.
    let dead = format!("http://127.0.0.1:{}", crate::support::free_port());
    let (code, out) = workflows_check(dir.path(), Some(&dead));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&dead), "{out}");

    // So does a folder that does not exist.
    let (code, out) = workflows_check(&dir.path().join("nowhere"), None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nowhere"), "{out}");
}

#[actix_web::test]
async fn the_shipped_workflows_pass_the_check_against_a_simulator() {
    let sim = Sim::start(5).await;
    let (code, out) = workflows_check(&repo_workflows(), Some(&sim.url));
    assert_eq!(code, 0, "{out}");
}

#[actix_web::test]
async fn workflows_check_fails_naming_what_the_backend_lacks() {
    let sim = Sim::start(5).await;
    // Arrange: a checkpoint the backend does not have (a literal), and a sampler it does not offer
    // (an enum param value).
    let dir = tempfile::tempdir().expect("dir");
    let graph = std::fs::read_to_string(repo_workflows().join("text2img.json")).expect("graph");
    let manifest =
        std::fs::read_to_string(repo_workflows().join("text2img.toml")).expect("manifest");
    write(
        dir.path(),
        "t2i.json",
        &graph.replace(
            "v1-5-pruned-emaonly.safetensors",
            "missing-model.safetensors",
        ),
    );
    write(
        dir.path(),
        "t2i.toml",
        &manifest.replace("name = \"text2img\"", "name = \"t2i\"").replace(
            "values = [\"euler\", \"euler_ancestral\", \"heun\", \"dpm_2\", \"dpmpp_2m\", \"dpmpp_sde\", \"ddim\", \"uni_pc\"]",
            "values = [\"euler\", \"no_such_sampler\"]",
        ),
    );
    assert!(std::fs::read_to_string(dir.path().join("t2i.toml"))
        .expect("t2i")
        .contains("no_such_sampler"));

    // Act
    let (offline, out_offline) = workflows_check(dir.path(), None);
    let (code, out) = workflows_check(dir.path(), Some(&sim.url));

    // Assert
    assert_eq!(
        offline, 0,
        "offline, the workflow is consistent:\n{out_offline}"
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("missing-model.safetensors"),
        "names the checkpoint:\n{out}"
    );
    assert!(out.contains("ckpt_name"), "names the input:\n{out}");
    assert!(
        out.contains("no_such_sampler") && out.contains("`sampler`"),
        "names the sampler param:\n{out}"
    );
    assert!(out.contains("t2i"), "names the workflow:\n{out}");
}

#[actix_web::test]
async fn workflows_check_fails_on_a_broken_manifest_naming_the_file() {
    let dir = model_free_workflows();
    write(
        dir.path(),
        "solid.toml",
        &std::fs::read_to_string(dir.path().join("solid.toml"))
            .expect("solid")
            .replace(
                "node = \"1\", input = \"width\"",
                "node = \"7\", input = \"width\"",
            ),
    );
    let (code, out) = workflows_check(dir.path(), None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("solid.toml"), "{out}");
    assert!(out.contains("`7`"), "names the missing node:\n{out}");
}

// 8. A broken workflows folder stops the daemon at boot

/// Starts the daemon on `workflows_dir` and expects it to exit on its own within 15 s; returns
/// the exit status and its stderr.
async fn daemon_exit(workflows_dir: &Path) -> (std::process::ExitStatus, String) {
    let sim = Sim::start(5).await;
    let db = TestDb::sqlite();
    let data = tempfile::tempdir().expect("data");
    let log_path = data.path().join("comfyd.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_comfyd"))
        .current_dir(data.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SERVICE_PORT", crate::support::free_port().to_string())
        .env("COMFYD_HOST", "127.0.0.1")
        .env("COMFYUI_ENDPOINTS", &sim.url)
        .env("DATABASE_URL", db.url())
        .env("COMFYD_DATA_DIR", data.path())
        .env("COMFYD_WORKFLOWS_DIR", workflows_dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn comfyd");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "comfyd kept running with workflows from {}:\n{}",
                workflows_dir.display(),
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    (
        status,
        std::fs::read_to_string(&log_path).unwrap_or_default(),
    )
}

#[actix_web::test]
async fn the_daemon_refuses_to_start_with_a_broken_workflows_folder() {
    // A manifest that is not TOML, next to good workflows.
    let dir = model_free_workflows();
    write(
        dir.path(),
        "bad.toml",
        "name = \"bad\"\n[outputs\nnodes = [\"2\"]\n",
    );
    write(dir.path(), "bad.json", FLAGS_JSON);
    let (status, stderr) = daemon_exit(dir.path()).await;
    assert!(!status.success(), "{status:?}\n{stderr}");
    assert!(stderr.contains("bad.toml"), "names the file:\n{stderr}");
    assert!(
        stderr.contains("line 2"),
        "says where the TOML breaks:\n{stderr}"
    );

    // A manifest whose output node is not in its graph.
    let dir = model_free_workflows();
    let solid = std::fs::read_to_string(dir.path().join("solid.toml")).expect("solid.toml");
    write(
        dir.path(),
        "solid.toml",
        &solid.replace("nodes = [\"2\"]", "nodes = [\"9\"]"),
    );
    let (status, stderr) = daemon_exit(dir.path()).await;
    assert!(!status.success(), "{status:?}\n{stderr}");
    assert!(
        stderr.contains("solid.toml") && stderr.contains("output node `9`"),
        "{stderr}"
    );

    // No folder at all.
    let gone = dir.path().join("does-not-exist");
    let (status, stderr) = daemon_exit(&gone).await;
    assert!(!status.success(), "{status:?}\n{stderr}");
    assert!(stderr.contains("does-not-exist"), "{stderr}");
}

/// PreviewImage has no filename_prefix, so identical preview prompts are served whole from the
/// backend's cache and share one temp file; with cleanup on, each task must still store its output.
#[actix_web::test]
async fn identical_preview_requests_each_store_their_output_even_with_cleanup() {
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 5,
        env: HashMap::from([("COMFYD_CLEANUP".to_string(), "true".to_string())]),
        ..Default::default()
    })
    .await;
    let params = json!({ "width": 6, "height": 6 });
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (status, reply) = submit_typed(&env.daemon, "preview", params.clone()).await;
        assert_eq!(status, 202, "{reply}");
        ids.push(reply["id"].as_str().expect("id").to_string());
    }
    let mut keys = BTreeSet::new();
    for id in &ids {
        let t = env.daemon.wait_terminal(id, 20).await;
        assert_eq!(t["status"], "done", "{t}\n{}", env.daemon.log());
        let out = &t["outputs"][0];
        assert_eq!(out["type"], "temp");
        let key = out["key"].as_str().expect("key");
        assert!(key.starts_with(id.as_str()), "{key}");
        let stored =
            std::fs::read(env.daemon.data_dir().join("outputs").join(key)).expect("stored output");
        assert!(stored.starts_with(b"\x89PNG"));
        keys.insert(key.to_string());
    }
    assert_eq!(keys.len(), 4);
}

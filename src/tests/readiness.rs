//! Release readiness from outside: four simulators (complete, without a node class a shipped
//! workflow uses, without a checkpoint a shipped workflow names, and one whose smoke run fails)
//! checked against a published release over HTTP and with the CLI; each result answered, naming
//! exactly what is missing, and recorded in `backend_checks`; on SQLite and PostgreSQL.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::daemon::{self, Daemon, DaemonConfig};
use crate::support::db::TestDb;
use crate::support::sim::Sim;
use comfyd::access::hash_key;

const OPS: &str = "key-of-ops-0123456789";
const APP: &str = "key-of-app-0123456789";
const CHECKPOINT: &str = "v1-5-pruned-emaonly.safetensors";

async fn get(d: &Daemon, path: &str, key: &str) -> (u16, Value) {
    let (status, _, body) = daemon::call(d, "GET", path, Some(key), None).await;
    (status, body)
}

async fn publish(d: &Daemon) -> i64 {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let mut resp = client
        .post(format!("{}/releases", d.api))
        .insert_header(("authorization", format!("Bearer {OPS}")))
        .send_json(&json!({}))
        .await
        .expect("publish");
    assert_eq!(resp.status().as_u16(), 201);
    let body: Value = resp.json().await.expect("json");
    body["version"].as_i64().expect("version")
}

fn name(sim: &Sim) -> String {
    sim.url.trim_end_matches('/').to_string()
}

fn entry<'a>(answer: &'a Value, sim: &Sim) -> &'a Value {
    answer["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["backend"] == name(sim).as_str())
        .unwrap_or_else(|| panic!("{} not in {answer}", name(sim)))
}

/// Runs `comfyd release ...` on the test database with these backends; (success, output).
fn release_cli(db_url: &str, endpoints: &[&str], args: &[&str]) -> (bool, String) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
    let endpoints = endpoints.join(",");
    let args: Vec<&str> = ["release"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    daemon::cli(
        &args,
        &[
            ("DATABASE_URL", db_url.as_ref()),
            ("COMFYD_WORKFLOWS_DIR", shipped.as_os_str()),
            ("COMFYUI_ENDPOINTS", endpoints.as_ref()),
        ],
    )
}

async fn readiness_names_what_each_backend_lacks(db: TestDb) {
    // Arrange: four simulators; the last fails its next prompt (the `solid` workflow's smoke run).
    let complete = Sim::start(20).await;
    let no_node = Sim::start_with(20, &["--without-node", "VAEDecode"]).await;
    let without = format!("checkpoints/{CHECKPOINT}");
    let no_model = Sim::start_with(20, &["--without-model", &without]).await;
    let failing = Sim::start(20).await;
    failing.script(json!({"fail_next": 1})).await;
    let keys = format!("ops:admin:{},app:submit:{}", hash_key(OPS), hash_key(APP));
    let d = Daemon::start(DaemonConfig {
        endpoints: vec![
            complete.url.clone(),
            no_node.url.clone(),
            no_model.url.clone(),
            failing.url.clone(),
        ],
        database_url: db.url().to_string(),
        env: [("COMFYD_API_KEYS".to_string(), keys)].into(),
        ..Default::default()
    })
    .await;
    let v = publish(&d).await;

    // Act
    let (status, answer) = get(&d, &format!("/releases/{v}/readiness"), OPS).await;

    // Assert: one entry per configured backend, in the configuration's order.
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["release"], v);
    let order: Vec<&str> = answer["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter_map(|b| b["backend"].as_str())
        .collect();
    assert_eq!(
        order,
        [
            name(&complete),
            name(&no_node),
            name(&no_model),
            name(&failing)
        ]
    );
    let ok = entry(&answer, &complete);
    assert_eq!(ok["ready"], true, "{ok}");
    assert_eq!(ok["reasons"], json!([]));
    assert_eq!(
        ok["missing"],
        json!({"node_classes": [], "models": []}),
        "{ok}"
    );
    assert_eq!(ok["comfyui_version"], "0.3.64");
    assert!(ok["checked_at"].is_string(), "{ok}");

    let lacks_node = entry(&answer, &no_node);
    assert_eq!(lacks_node["ready"], false, "{lacks_node}");
    assert_eq!(
        lacks_node["missing"],
        json!({"node_classes": ["VAEDecode"], "models": []}),
        "{lacks_node}"
    );
    assert_eq!(
        lacks_node["reasons"],
        json!(["node class `VAEDecode` is not installed"])
    );

    let lacks_model = entry(&answer, &no_model);
    assert_eq!(lacks_model["ready"], false, "{lacks_model}");
    assert_eq!(
        lacks_model["missing"],
        json!({"node_classes": [], "models": [{"input": "ckpt_name", "file": CHECKPOINT}]}),
        "{lacks_model}"
    );

    let smoke_failed = entry(&answer, &failing);
    assert_eq!(smoke_failed["ready"], false, "{smoke_failed}");
    assert_eq!(
        smoke_failed["missing"],
        json!({"node_classes": [], "models": []})
    );
    let reasons = smoke_failed["reasons"].as_array().expect("reasons");
    assert_eq!(reasons.len(), 1, "{smoke_failed}");
    assert!(
        reasons[0]
            .as_str()
            .unwrap_or("")
            .starts_with("smoke run of `solid` failed"),
        "{smoke_failed}"
    );
    // The complete one ran the smoke input for real.
    assert_eq!(complete.prompts().await.len(), 1);

    // Each result is recorded.
    let conn = db.connect().await;
    let rows = comfyd::db::backend_checks::latest_per_backend(&conn, v as i32)
        .await
        .expect("rows");
    let mut recorded: Vec<(String, bool)> =
        rows.iter().map(|r| (r.backend.clone(), r.passed)).collect();
    recorded.sort();
    let mut expected = vec![
        (name(&complete), true),
        (name(&no_node), false),
        (name(&no_model), false),
        (name(&failing), false),
    ];
    expected.sort();
    assert_eq!(recorded, expected);
    let node_row = rows
        .iter()
        .find(|r| r.backend == name(&no_node))
        .expect("row");
    let missing: Value = serde_json::from_str(&node_row.missing).expect("missing JSON");
    assert_eq!(missing["node_classes"], json!(["VAEDecode"]));
    let reasons: Vec<String> = serde_json::from_str(&node_row.reasons).expect("reasons JSON");
    assert_eq!(reasons.len(), 1);
    assert_eq!(node_row.comfyui_version.as_deref(), Some("0.3.64"));

    // A second check adds rows; the newest is the backend's state (the failing one now passes).
    let (_, again) = get(&d, &format!("/releases/{v}/readiness"), OPS).await;
    assert_eq!(entry(&again, &failing)["ready"], true, "{again}");
    let latest = comfyd::db::backend_checks::latest(&conn, v as i32, &name(&failing))
        .await
        .expect("latest")
        .expect("a row");
    assert!(latest.passed);

    // Unknown release, bad version, bad option, submit key.
    let (status, body) = get(&d, "/releases/999999/readiness", OPS).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) = get(&d, "/releases/abc/readiness", OPS).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("version"));
    let (status, _) = get(
        &d,
        &format!("/releases/{v}/readiness?smoke_timeout_secs=0"),
        OPS,
    )
    .await;
    assert_eq!(status, 422);
    let (status, _) = get(&d, &format!("/releases/{v}/readiness"), APP).await;
    assert_eq!(status, 403);

    // The CLI: the same per backend, exit 0 only when all are ready.
    let (ok, out) = release_cli(db.url(), &[&complete.url], &["check", &v.to_string()]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("{}: ready", name(&complete))),
        "{out}"
    );
    let (ok, out) = release_cli(
        db.url(),
        &[&complete.url, &no_model.url],
        &["check", &v.to_string()],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("{}: NOT READY", name(&no_model)))
            && out.contains(&format!("model file `{CHECKPOINT}`")),
        "{out}"
    );
    let (ok, out) = release_cli(db.url(), &[&complete.url], &["check", "999999"]);
    assert!(!ok && out.contains("no release 999999"), "{out}");
}

#[actix_web::test]
async fn readiness_names_what_each_backend_lacks_sqlite() {
    readiness_names_what_each_backend_lacks(TestDb::sqlite()).await;
}

#[actix_web::test]
async fn readiness_names_what_each_backend_lacks_postgres() {
    readiness_names_what_each_backend_lacks(TestDb::postgres().await).await;
}

/// A smoke input with an image (base64 in the manifest) is uploaded first, as a task's input
/// image is, and its name set in the graph before the run.
#[actix_web::test]
async fn a_smoke_input_with_an_image_is_uploaded_and_run() {
    // Arrange: a draft whose `invert` carries a smoke image.
    let dir = tempfile::tempdir().expect("draft");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
    for f in ["invert.toml", "invert.json"] {
        std::fs::copy(shipped.join(f), dir.path().join(f)).expect("copy");
    }
    let manifest = std::fs::read_to_string(dir.path().join("invert.toml")).expect("read");
    std::fs::write(
        dir.path().join("invert.toml"),
        format!(
            "{manifest}\n[smoke]\nimage = \"{}\"\n",
            crate::pipeline::png_base64(4, 4)
        ),
    )
    .expect("write");
    let db = TestDb::sqlite();
    let sim = Sim::start(20).await;
    let keys = format!("ops:admin:{}", hash_key(OPS));
    let d = Daemon::start(DaemonConfig {
        endpoints: vec![sim.url.clone()],
        database_url: db.url().to_string(),
        workflows_dir: Some(dir.path().to_path_buf()),
        env: [("COMFYD_API_KEYS".to_string(), keys)].into(),
        ..Default::default()
    })
    .await;
    let v = publish(&d).await;

    // Act
    let (status, answer) = get(&d, &format!("/releases/{v}/readiness"), OPS).await;

    // Assert: ready, the image uploaded under a smoke name and loaded by the graph.
    assert_eq!(status, 200, "{answer}");
    assert_eq!(entry(&answer, &sim)["ready"], true, "{answer}");
    let prompts = sim.prompts().await;
    assert_eq!(prompts.len(), 1, "{prompts:?}");
    let id = prompts[0]["prompt_id"].as_str().expect("prompt id");
    let graph = sim.graph_of(id).await;
    let loaded = graph["1"]["inputs"]["image"].as_str().unwrap_or("");
    assert!(
        loaded.starts_with("comfyd_smoke_") && loaded.ends_with("_image.png"),
        "{graph}"
    );
    assert!(sim.data_dir().join("input").join(loaded).is_file());
}

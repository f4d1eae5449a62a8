//! comfyd as a drop-in successor of the original service (Poseidon-fan/ComfyUI-server): its README's
//! `.env`, written as the file `.env` in the daemon's working folder (only hosts, ports, the database
//! and the S3 credentials changed to the test servers'), its documented request and answer, and its
//! client's flow (submit, immediate answer with the prompt id, webhook), against the real daemon.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::pipeline::png_base64;
use crate::support::daemon::{Daemon, DaemonConfig};
use crate::support::db::TestDb;
use crate::support::eventually;
use crate::support::s3::S3Server;
use crate::support::sim::Sim;
use crate::support::webhook::WebhookReceiver;

/// The original README's `.env`, verbatim.
const ORIGINAL_ENV: &str = include_str!("fixtures/original.env");

/// The fields of the original's answer and webhook.
const ORIGINAL_FIELDS: [&str; 7] = [
    "client_task_id",
    "comfyui_task_id",
    "s3_key",
    "client_callback_url",
    "comfyui_filepath",
    "id",
    "error_code",
];

/// The `.env` text with the quoted value of `key` replaced (its spacing and comment kept).
fn set(env: &str, key: &str, value: &str) -> String {
    let mut found = false;
    let out: Vec<String> = env
        .lines()
        .map(|line| {
            let prefix = format!("{key} = \"");
            if let Some(after) = line.strip_prefix(&prefix) {
                found = true;
                let close = after.find('"').expect("closing quote");
                format!("{prefix}{value}\"{}", &after[close + 1..])
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(found, "{key} is not in the original .env");
    out.join("\n") + "\n"
}

struct Original {
    sims: Vec<Sim>,
    s3: S3Server,
    hook: WebhookReceiver,
    _db: TestDb,
    daemon: Daemon,
}

async fn start() -> Original {
    let sims = vec![Sim::start(20).await, Sim::start(20).await];
    let s3 = S3Server::start().await;
    s3.create_bucket("comfyui-server").await;
    let hook = WebhookReceiver::start().await;
    let db = TestDb::postgres().await;
    let TestDb::Postgres { name, .. } = &db else {
        unreachable!("a PostgreSQL database")
    };
    let endpoints: Vec<String> = sims
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let mut env = ORIGINAL_ENV.to_string();
    for (key, value) in [
        ("COMFYUI_ENDPOINTS", endpoints.join(",").as_str()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.as_str()),
        ("AWS_ACCESS_KEY_ID", s3.access_key.as_str()),
        ("RDB_USERNAME", "postgres"),
        ("RDB_HOST", "127.0.0.1"),
        ("RDB_NAME", name.as_str()),
        ("SERVICE_PORT", "{port}"),
    ] {
        env = set(&env, key, value);
    }
    // The original's example targets AWS; this one the S3-compatible test server.
    let daemon = Daemon::start(DaemonConfig {
        env: HashMap::from([("COMFYD_S3_ENDPOINT_URL".to_string(), s3.endpoint.clone())]),
        dotenv: Some(env),
        ..Default::default()
    })
    .await;
    Original {
        sims,
        s3,
        hook,
        _db: db,
        daemon,
    }
}

/// Submits as the original's client did and checks the immediate answer; returns it.
async fn submit(o: &Original, service_type: &str, params: Value) -> Value {
    let client_task_id = uuid::Uuid::new_v4().to_string();
    let (status, reply) = o
        .daemon
        .post(
            "",
            &json!({
                "service_type": service_type,
                "client_callback_url": o.hook.url,
                "params": params,
                "client_task_id": client_task_id,
            }),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    for field in ORIGINAL_FIELDS {
        assert!(
            reply.get(field).is_some(),
            "the answer lacks {field}: {reply}"
        );
    }
    assert_eq!(reply["client_task_id"], client_task_id.as_str());
    assert_eq!(reply["client_callback_url"], o.hook.url.as_str());
    assert_eq!(reply["error_code"], 0);
    assert!(
        reply["comfyui_task_id"]
            .as_str()
            .is_some_and(|p| uuid::Uuid::parse_str(p).is_ok()),
        "the immediate answer carries the prompt id: {reply}"
    );
    reply
}

/// Waits for the task's webhook and checks it as the original's client would.
async fn webhook_of(o: &Original, reply: &Value) -> Value {
    let id = reply["id"].as_str().expect("id");
    let hooks = eventually(30, "the webhook", || async {
        let got = o.hook.for_task(id);
        (!got.is_empty()).then_some(got)
    })
    .await;
    let body = hooks[0].body.clone();
    for field in ORIGINAL_FIELDS {
        assert!(
            body.get(field).is_some(),
            "the webhook lacks {field}: {body}"
        );
    }
    assert_eq!(body["error_code"], 0, "{body}");
    assert_eq!(body["client_task_id"], reply["client_task_id"]);
    assert_eq!(
        body["comfyui_task_id"], reply["comfyui_task_id"],
        "the task ran under the prompt id it was answered with"
    );
    let key = body["s3_key"].as_str().expect("s3_key");
    assert!(
        o.s3.list_keys("comfyui-server")
            .await
            .contains(&key.to_string()),
        "{key} is in the bucket"
    );
    let (bytes, _) = o.s3.get("comfyui-server", key).await;
    assert!(bytes.starts_with(b"\x89PNG"));
    assert!(
        body["comfyui_filepath"]
            .as_str()
            .is_some_and(|p| p.ends_with(".png")),
        "{body}"
    );
    body
}

#[actix_web::test]
async fn the_originals_env_request_answer_and_webhook_work_unchanged() {
    // Arrange: the original's .env in the working folder, host:port endpoints, PostgreSQL by RDB_*.
    let o = start().await;

    // Act + Assert: text2img with only `text`, img2img with `text` and a base64 `image`.
    let t2i = submit(&o, "text2img", json!({ "text": "2capys" })).await;
    let i2i = submit(
        &o,
        "img2img",
        json!({ "text": "2capys", "image": png_base64(16, 16) }),
    )
    .await;
    let body = webhook_of(&o, &t2i).await;
    webhook_of(&o, &i2i).await;

    // The prompt really ran with the text where the original put it.
    let prompt_id = body["comfyui_task_id"].as_str().expect("prompt id");
    let mut graph = Value::Null;
    for sim in &o.sims {
        let g = sim.graph_of(prompt_id).await;
        if !g.is_null() {
            graph = g;
        }
    }
    assert_eq!(graph["6"]["inputs"]["text"], "2capys", "{graph}");

    // Cleanup is on by default (the simulators have the cleaner node): the output leaves the host.
    let path = body["comfyui_filepath"].as_str().expect("path").to_string();
    eventually(10, "the output removed from the ComfyUI host", || async {
        o.sims
            .iter()
            .all(|s| !s.data_dir().join("output").join(&path).exists())
            .then_some(())
    })
    .await;

    // The README's literal example sends `image` (not base64) to text2img, whose graph has no
    // image: the original ignored it, and so does comfyd's text2img (`ignored` in its manifest).
    let literal = submit(
        &o,
        "text2img",
        json!({ "text": "2capys", "image": "base64_format " }),
    )
    .await;
    webhook_of(&o, &literal).await;
    // A name and its alias at once: 422 naming both.
    let (status, err) = o
        .daemon
        .post(
            "",
            &json!({"service_type": "text2img", "params": {"text": "a", "prompt": "b"}}),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    let reason = err["fields"][0]["reason"].as_str().expect("reason");
    assert!(
        reason.contains("`prompt`") && reason.contains("`text`"),
        "{err}"
    );
    // Each 4xx is one short log line: method, route, status, first field error; no Debug print.
    let log = o.daemon.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("POST /api/v1 422"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("POST /api/v1 422 params."),
        "{}",
        lines[0]
    );
    assert!(!log.contains("Invalid([FieldError"), "{log}");
}

#[actix_web::test]
async fn a_backend_without_the_cleaner_node_is_warned_about_once_and_gets_no_cleanup() {
    // Arrange: cleanup left at its default, the only backend lacks the node.
    let sim = Sim::start_with(10, &["--without-cleaner"]).await;
    let db = TestDb::sqlite();
    let mut daemon = Daemon::start(DaemonConfig {
        endpoints: vec![format!("127.0.0.1:{}", sim.port)],
        database_url: db.url().to_string(),
        ..Default::default()
    })
    .await;

    // Act
    let reply = daemon
        .submit(json!({ "service_type": "solid", "params": { "width": 8, "height": 8 } }))
        .await;
    let task = daemon
        .wait_terminal(reply["id"].as_str().expect("id"), 30)
        .await;
    assert_eq!(task["status"], "done", "{task}");
    actix_rt::time::sleep(std::time::Duration::from_millis(300)).await;

    // Assert: the file stays, no cleaner prompt was sent, one warning names the backend and the node.
    let output = sim
        .data_dir()
        .join("output")
        .join(task["comfyui_filepath"].as_str().expect("path"));
    assert!(output.exists(), "{}", output.display());
    assert_eq!(sim.prompts().await.len(), 1, "no cleaner prompt");
    let log = daemon.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("lacks the node `Clean input and output file`"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains(&sim.url), "{}", warnings[0]);
    daemon.terminate();
}

//! A ComfyUI server is untrusted input: the simulator in hostile mode reports unsafe output and
//! upload names, sends garbage and oversized frames and events for prompts nobody sent. Each test
//! checks that tasks end as they should, that nothing lands outside comfyd's folders, and that
//! comfyd neither panics nor stops.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::pipeline::{env, png_base64, webhooks, Env, EnvOpts};
use crate::support::eventually;

/// The unsafe names the tests script, as (names as the server reports them, what the task's
/// error message must show of them).
fn traversal_forms() -> Vec<(Value, &'static str)> {
    let long = format!("{}.png", "a".repeat(2000));
    vec![
        (
            json!({"filename": "../../../../hostile.png"}),
            "\"../../../../hostile.png\"",
        ),
        (
            json!({"filename": "/etc/hostile.png", "subfolder": ""}),
            "\"/etc/hostile.png\"",
        ),
        (
            json!({"subfolder": "a\\..\\..\\..\\..\\x"}),
            "\"a\\\\..\\\\..\\\\..\\\\..\\\\x\"",
        ),
        (
            json!({"filename": "hostile\u{0}.png"}),
            "\"hostile\\0.png\"",
        ),
        (json!({"filename": long}), "(2004 bytes)"),
        (json!({"type": "../x"}), "\"../x\""),
        (json!({"subfolder": "C:\\Windows"}), "\"C:\\\\Windows\""),
    ]
}

/// Every file under `dir` (symlinks are listed, not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => out.extend(files_under(&path)),
            Ok(_) => out.push(path),
            Err(_) => {}
        }
    }
    out
}

/// A hostile test's environment: the fallback folder sits deep inside a canary folder, so that a
/// name climbing out of it would land in the canary, where the scan finds it.
struct Setup {
    env: Env,
    canary: tempfile::TempDir,
    fallback: PathBuf,
}

async fn setup(exec_ms: u64, postgres: bool) -> Setup {
    let canary = tempfile::tempdir().expect("canary dir");
    let fallback = canary.path().join("d1/d2/d3/d4/failed");
    let mut vars = HashMap::new();
    vars.insert(
        "DEFAULT_FAILED_IMAGE_PATH".into(),
        fallback.display().to_string(),
    );
    let env = env(EnvOpts {
        backends: 1,
        exec_ms,
        postgres,
        env: vars,
        ..Default::default()
    })
    .await;
    Setup {
        env,
        canary,
        fallback,
    }
}

impl Setup {
    /// Files comfyd wrote outside its own folders: anything in the canary folder outside the
    /// fallback folder, anything in the data folder but the database, the log and its folders.
    fn files_outside(&self) -> Vec<PathBuf> {
        let data = self.env.daemon.data_dir();
        let mut stray: Vec<PathBuf> = files_under(self.canary.path())
            .into_iter()
            .filter(|p| !p.starts_with(&self.fallback))
            .collect();
        stray.extend(files_under(data).into_iter().filter(|p| {
            let rel = p.strip_prefix(data).expect("under the data dir");
            let first = rel
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default();
            !(first.starts_with("comfyd.db")
                || first == "comfyd.log"
                || (rel.components().count() > 1
                    && matches!(first.as_str(), "outputs" | "inputs" | "failed")))
        }));
        stray
    }

    fn assert_no_panic(&self) {
        let log = self.env.daemon.log();
        assert!(!log.contains("panicked"), "comfyd panicked:\n{log}");
    }

    async fn submit(&self, body: Value) -> String {
        let r = self.env.daemon.submit(body).await;
        r["id"].as_str().expect("id").to_string()
    }

    async fn solid(&self, i: usize) -> String {
        self.submit(
            json!({"service_type": "solid", "client_task_id": format!("solid-{i}"),
            "client_callback_url": self.env.hook.url, "params": {"color": i}}),
        )
        .await
    }
}

/// Checks one task that got unsafe names: failed with error_code 3, a message naming the value,
/// its webhook sent with the same; returns its message.
async fn assert_refused(s: &Setup, id: &str) -> String {
    let t = s.env.daemon.wait_terminal(id, 60).await;
    assert_eq!(t["status"], "failed", "{t}\n{}", s.env.daemon.log());
    assert_eq!(t["error_code"], 3, "{t}");
    let msg = t["error_message"]
        .as_str()
        .expect("error_message")
        .to_string();
    assert!(msg.contains("ComfyUI reported an unsafe"), "{msg}");
    assert!(!msg.contains('\0'), "the message is escaped: {msg:?}");
    let hooks = webhooks(&s.env, id, 1).await;
    assert_eq!(hooks[0].body["status"], "failed");
    assert_eq!(hooks[0].body["error_code"], 3);
    assert_eq!(hooks[0].body["error_message"], msg.as_str());
    msg
}

/// Each traversal form's message shows up in exactly one of the tasks' messages.
fn assert_each_form_named(messages: &[String]) {
    for (_, shown) in traversal_forms() {
        let n = messages.iter().filter(|m| m.contains(shown)).count();
        assert_eq!(n, 1, "{shown} named by {n} messages: {messages:#?}");
    }
}

#[actix_web::test]
async fn unsafe_output_names_fail_their_task_with_error_code_3_and_write_nothing_outside() {
    unsafe_output_names(false).await;
}

/// PostgreSQL refuses NUL in text: the refused output's record must be escaped for it too.
#[actix_web::test]
async fn unsafe_output_names_are_recorded_escaped_on_postgres() {
    unsafe_output_names(true).await;
}

async fn unsafe_output_names(postgres: bool) {
    // Arrange: one unsafe form for each of the next prompts, then an ordinary one.
    let s = setup(30, postgres).await;
    let forms: Vec<Value> = traversal_forms().into_iter().map(|(f, _)| f).collect();
    s.env.sims[0].hostile(json!({ "names_next": forms })).await;

    // Act: one task per form (one backend runs them in order), then one more.
    let mut ids = Vec::new();
    for i in 0..forms.len() {
        ids.push(s.solid(i).await);
    }
    let mut messages = Vec::new();
    for id in &ids {
        messages.push(assert_refused(&s, id).await);
    }
    let fine = s.solid(99).await;

    // Assert: every form refused by name; the refused output is recorded but never stored or kept.
    assert_each_form_named(&messages);
    for id in &ids {
        let t = s.env.daemon.task(id).await;
        let outputs = t["outputs"].as_array().expect("outputs");
        assert_eq!(outputs.len(), 1, "{t}");
        assert_eq!(outputs[0]["stored"], false);
        assert_eq!(outputs[0]["key"], "");
        assert!(outputs[0].get("fallback_path").is_none(), "{t}");
        assert!(t["s3_key"].is_null(), "{t}");
    }
    // Other tasks on the same backend are unaffected.
    let t = s.env.daemon.wait_terminal(&fine, 60).await;
    assert_eq!(t["status"], "done", "{t}\n{}", s.env.daemon.log());
    let stray = s.files_outside();
    assert!(
        stray.is_empty(),
        "files outside comfyd's folders: {stray:?}"
    );
    assert!(files_under(&s.fallback).is_empty(), "nothing is kept");
    assert!(!Path::new("/etc/hostile.png").exists());
    s.assert_no_panic();
}

#[actix_web::test]
async fn unsafe_upload_answers_fail_their_task_with_error_code_3() {
    // Arrange: the next uploads are answered with unsafe names (`filename` is the answer's `name`).
    let s = setup(30, false).await;
    let forms: Vec<Value> = traversal_forms().into_iter().map(|(f, _)| f).collect();
    s.env.sims[0]
        .hostile(json!({ "uploads_next": forms }))
        .await;

    // Act: one image task per form, one after the other (each takes one upload answer).
    let image = png_base64(8, 8);
    let mut messages = Vec::new();
    for i in 0..forms.len() {
        let id = s
            .submit(
                json!({"service_type": "invert", "client_task_id": format!("inv-{i}"),
                "client_callback_url": s.env.hook.url, "params": {"image": image}}),
            )
            .await;
        messages.push(assert_refused(&s, &id).await);
    }
    let fine = s
        .submit(
            json!({"service_type": "invert", "client_task_id": "inv-fine",
            "client_callback_url": s.env.hook.url, "params": {"image": image}}),
        )
        .await;

    // Assert
    assert_each_form_named(&messages);
    let t = s.env.daemon.wait_terminal(&fine, 60).await;
    assert_eq!(t["status"], "done", "{t}\n{}", s.env.daemon.log());
    // No prompt was queued with a refused name.
    let stats = s.env.sims[0].prompts().await;
    assert_eq!(stats.len(), 1, "only the fine task's prompt ran: {stats:?}");
    let stray = s.files_outside();
    assert!(
        stray.is_empty(),
        "files outside comfyd's folders: {stray:?}"
    );
    s.assert_no_panic();
}

#[actix_web::test]
async fn garbage_frames_and_foreign_events_leave_the_backends_tasks_succeeding() {
    // Arrange
    let s = setup(100, false).await;
    s.env.sims[0]
        .hostile(json!({ "garbage_next": 3, "foreign_next": 3 }))
        .await;

    // Act
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(s.solid(i).await);
    }

    // Assert: every task done with its own single output, nothing of the foreign prompt's.
    for id in &ids {
        let t = s.env.daemon.wait_terminal(id, 60).await;
        assert_eq!(t["status"], "done", "{t}\n{}", s.env.daemon.log());
        assert_eq!(t["error_code"], 0);
        let outputs = t["outputs"].as_array().expect("outputs");
        assert_eq!(outputs.len(), 1, "{t}");
        assert!(
            !outputs[0]["filename"]
                .as_str()
                .unwrap_or("")
                .contains("foreign"),
            "{t}"
        );
        webhooks(&s.env, id, 1).await;
    }
    let log = s.env.daemon.log();
    let warned = log.matches("unreadable frame from ComfyUI skipped").count();
    // Logged once per connection, not once per frame (3 prompts x 20 garbage frames were sent).
    assert!((1..=3).contains(&warned), "{warned} warnings:\n{log}");
    assert!(
        !log.contains("reconnecting"),
        "garbage is skipped, not a reason to reconnect:\n{log}"
    );
    let stray = s.files_outside();
    assert!(
        stray.is_empty(),
        "files outside comfyd's folders: {stray:?}"
    );
    s.assert_no_panic();
}

#[actix_web::test]
async fn an_oversized_frame_makes_comfyd_reconnect_and_the_task_still_ends() {
    // Arrange: a 64 MiB text frame at the start of the first prompt (the limit is 16 MiB).
    let s = setup(600, false).await;
    s.env.sims[0].hostile(json!({ "oversized_next": 1 })).await;

    // Act
    let first = s.solid(0).await;
    let t = s.env.daemon.wait_terminal(&first, 60).await;

    // Assert: the connection was dropped and made again, the task ended (done, or run again).
    assert_eq!(t["status"], "done", "{t}\n{}", s.env.daemon.log());
    let log = s.env.daemon.log();
    assert!(
        log.contains("websocket protocol error; reconnecting"),
        "the oversized frame dropped the connection:\n{log}"
    );
    assert!(
        log.matches("connected to ComfyUI").count() >= 2,
        "comfyd reconnected:\n{log}"
    );
    // comfyd is up and the backend takes work again.
    eventually(20, "the backend up again", || async {
        let (_, b) = s.env.daemon.get("/backends").await;
        let up = b.as_array().or_else(|| b["backends"].as_array())?[0]["up"] == true;
        up.then_some(())
    })
    .await;
    let second = s.solid(1).await;
    let t = s.env.daemon.wait_terminal(&second, 60).await;
    assert_eq!(t["status"], "done", "{t}\n{}", s.env.daemon.log());
    webhooks(&s.env, &first, 1).await;
    s.assert_no_panic();
}

/// Checks one task that failed on a server's NUL-laden error text: failed in seconds with `code`,
/// its message readable (NUL replaced, within 16 KiB), the same in its webhook and `failed` event,
/// and no NUL anywhere in what was stored; returns the task.
async fn assert_failed_readably(s: &Setup, id: &str, code: i64) -> Value {
    let t = s.env.daemon.wait_terminal(id, 15).await;
    assert_eq!(t["status"], "failed", "{t}\n{}", s.env.daemon.log());
    assert_eq!(t["error_code"], code, "{t}");
    let msg = t["error_message"].as_str().expect("error_message");
    assert!(msg.contains("hostile\u{FFFD}message\u{FFFD}"), "{msg:.200}");
    assert!(!msg.contains('\0'), "{msg:.200}");
    assert!(msg.len() <= 16 << 10, "{} bytes", msg.len());
    assert!(
        msg.ends_with("bytes cut)"),
        "the cut is said: {}",
        &msg[msg.len() - 60..]
    );
    let stored = t.to_string();
    assert!(!stored.contains("\\u0000"), "NUL stored: {stored:.400}");
    assert!(
        stored.len() < (16 + 64 + 16) << 10,
        "{} bytes",
        stored.len()
    );
    let hooks = webhooks(&s.env, id, 1).await;
    assert_eq!(hooks[0].body["status"], "failed");
    assert_eq!(hooks[0].body["error_code"], code);
    assert_eq!(hooks[0].body["error_message"], msg);
    let (status, ev) = s.env.daemon.get(&format!("/tasks/{id}/events")).await;
    assert_eq!(status, 200, "{ev}");
    let failed: Vec<&Value> = ev["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{ev:.400}");
    assert_eq!(failed[0]["details"]["message"], msg);
    t
}

/// PostgreSQL refuses NUL in text and jsonb, and not as an outage: a server's error text stored as
/// sent would make the task's last write fail for good and leave the task running.
#[actix_web::test]
async fn nul_in_a_servers_error_text_is_replaced_and_bounded_on_postgres() {
    // Arrange: the first POST /prompt is refused (400) with NUL in its message and node_errors,
    // the first prompt that runs fails with NUL in its execution_error; both messages are 256 KiB.
    let s = setup(30, true).await;
    s.env.sims[0]
        .hostile(json!({ "nul_rejects_next": 1, "nul_errors_next": 1 }))
        .await;

    // Act: one task per hostile answer (one backend takes them in order), then an ordinary one.
    let refused = s.solid(0).await;
    let t = assert_failed_readably(&s, &refused, 1).await;
    let failed = s.solid(1).await;
    let f = assert_failed_readably(&s, &failed, 10).await;
    let fine = s.solid(2).await;

    // Assert: the details are kept, NUL replaced in keys and values.
    let node = &t["error_details"]["node_errors"]["1\u{FFFD}"];
    assert_eq!(node["class_type"], "Save\u{FFFD}Image", "{t:.600}");
    assert_eq!(node["errors"][0]["details"], "x\u{FFFD}y");
    assert_eq!(f["error_details"]["exception_type"], "Runtime\u{FFFD}Error");
    assert_eq!(f["error_details"]["node_type"], "Save\u{FFFD}Image");
    assert!(f["error_message"]
        .as_str()
        .is_some_and(|m| m.starts_with("Runtime\u{FFFD}Error: hostile")));
    let t = s.env.daemon.wait_terminal(&fine, 30).await;
    assert_eq!(t["status"], "done", "{t}\n{}", s.env.daemon.log());
    s.assert_no_panic();
    s.env.daemon.assert_no_panics();
}

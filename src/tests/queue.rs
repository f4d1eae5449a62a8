//! comfyd's own queue: idempotent submits, priority, cancel, status and listing, deadlines.

use std::collections::HashMap;

use serde_json::json;

use crate::pipeline::{env, webhooks, EnvOpts};
use crate::support::eventually;

fn one_in_flight() -> HashMap<String, String> {
    HashMap::from([("COMFYD_MAX_IN_FLIGHT".to_string(), "1".to_string())])
}

async fn resubmitting_a_client_task_id_returns_the_task_or_409(postgres: bool) {
    let env = env(EnvOpts {
        backends: 1,
        postgres,
        ..Default::default()
    })
    .await;
    let body = json!({ "service_type": "solid", "client_task_id": "same", "params": { "width": 8, "height": 8 } });
    let first = env.daemon.submit(body.clone()).await;
    let again = env.daemon.submit(body).await;
    assert_eq!(first["id"], again["id"]);
    let (status, reply) = env
        .daemon
        .post("", &json!({ "service_type": "solid", "client_task_id": "same", "params": { "width": 16, "height": 8 } }))
        .await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["task"]["id"], first["id"]);
    // By client_task_id as well as by id.
    assert_eq!(env.daemon.task("same").await["id"], first["id"]);
    env.daemon.wait_terminal("same", 30).await;
    assert_eq!(
        env.sims[0].prompts().await.len(),
        1,
        "the retried submit did not run twice"
    );
}

#[actix_web::test]
async fn resubmitting_a_client_task_id_returns_the_task_or_409_with_sqlite() {
    resubmitting_a_client_task_id_returns_the_task_or_409(false).await;
}

#[actix_web::test]
async fn resubmitting_a_client_task_id_returns_the_task_or_409_with_postgres() {
    resubmitting_a_client_task_id_returns_the_task_or_409(true).await;
}

#[actix_web::test]
async fn higher_priority_runs_first_and_fifo_within_a_priority() {
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 5,
        env: one_in_flight(),
        ..Default::default()
    })
    .await;
    env.sims[0].config(json!({ "paused": true })).await;
    for (name, priority) in [
        ("first", 0),
        ("low-1", -5),
        ("low-2", -5),
        ("mid", 0),
        ("high", 10),
    ] {
        env.daemon
            .submit(json!({ "service_type": "solid", "client_task_id": name, "priority": priority, "params": { "color": priority + 100 } }))
            .await;
        // "first" is handed to the (paused) backend before the others arrive.
        if name == "first" {
            eventually(10, "first dispatched", || async {
                (env.sims[0].prompts().await.len() == 1).then_some(())
            })
            .await;
        }
    }
    env.sims[0].config(json!({ "paused": false })).await;
    for name in ["first", "low-1", "low-2", "mid", "high"] {
        env.daemon.wait_terminal(name, 30).await;
    }
    let mut order = Vec::new();
    for p in env.sims[0].prompts().await {
        let task = env.daemon.get("/tasks?limit=50").await.1["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .find(|t| t["comfyui_task_id"] == p["prompt_id"])
            .map(|t| t["client_task_id"].as_str().unwrap_or("").to_string());
        order.push(task.unwrap_or_default());
    }
    assert_eq!(order, vec!["first", "high", "mid", "low-1", "low-2"]);
}

#[actix_web::test]
async fn cancel_removes_queued_deletes_pending_interrupts_running_and_409s_finished() {
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 5,
        env: one_in_flight(),
        ..Default::default()
    })
    .await;
    let sim = &env.sims[0];

    // Running: the backend hangs on it until interrupted.
    sim.script(json!({ "hang_next": 1 })).await;
    let submitted = env.daemon.submit(json!({ "service_type": "solid", "client_callback_url": env.hook.url, "params": { "color": 1 } })).await;
    let running_id = submitted["id"].as_str().expect("id").to_string();
    let running = eventually(10, "running", || async {
        let t = env.daemon.task(&running_id).await;
        (t["status"] == "running").then_some(t)
    })
    .await;
    // Queued in comfyd (the backend holds one job at a time).
    let queued = env
        .daemon
        .submit(json!({ "service_type": "solid", "params": { "color": 2 } }))
        .await;
    let queued_id = queued["id"].as_str().expect("id").to_string();
    let (status, t) = env
        .daemon
        .post(&format!("/tasks/{queued_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["status"], "cancelled");
    let (status, t) = env
        .daemon
        .post(&format!("/tasks/{running_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["status"], "cancelled");
    let outcome = eventually(10, "interrupt on the backend", || async {
        let p = sim.prompts().await;
        let o = p
            .iter()
            .find(|p| p["prompt_id"] == running["comfyui_task_id"])
            .cloned();
        o.filter(|o| !o["outcome"].is_null())
            .map(|o| o["outcome"].clone())
    })
    .await;
    assert_eq!(outcome, "interrupted");
    // The cancelled webhook goes out for the task that had a callback.
    assert_eq!(
        webhooks(&env, &running_id, 1).await[0].body["status"],
        "cancelled"
    );

    // Pending on the backend: paused, one dispatched there, then cancelled → deleted from its queue.
    sim.config(json!({ "paused": true })).await;
    let submitted = env
        .daemon
        .submit(json!({ "service_type": "solid", "params": { "color": 3 } }))
        .await;
    let pending_id = submitted["id"].as_str().expect("id").to_string();
    let pending = eventually(10, "dispatched", || async {
        let t = env.daemon.task(&pending_id).await;
        (t["status"] == "dispatched").then_some(t)
    })
    .await;
    let (status, _) = env
        .daemon
        .post(&format!("/tasks/{pending_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let deleted = eventually(10, "deleted on the backend", || async {
        let p = sim.prompts().await;
        p.iter()
            .find(|p| p["prompt_id"] == pending["comfyui_task_id"])
            .filter(|p| !p["outcome"].is_null())
            .cloned()
    })
    .await;
    assert_eq!(deleted["outcome"], "deleted", "{deleted}");
    sim.config(json!({ "paused": false })).await;

    // Finished: 409 with the task.
    let done = env
        .daemon
        .submit(json!({ "service_type": "solid", "params": { "color": 4 } }))
        .await;
    let done_id = done["id"].as_str().expect("id").to_string();
    assert_eq!(
        env.daemon.wait_terminal(&done_id, 30).await["status"],
        "done"
    );
    let (status, reply) = env
        .daemon
        .post(&format!("/tasks/{done_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["task"]["status"], "done");
    // Unknown task: 404 JSON.
    let (status, reply) = env.daemon.post("/tasks/nope/cancel", &json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(reply["error"], "not_found");
    // Nothing cancelled ever ran.
    let ran: Vec<_> = sim
        .prompts()
        .await
        .into_iter()
        .filter(|p| p["outcome"] == "success")
        .collect();
    assert_eq!(ran.len(), 1, "{ran:?}");
}

#[actix_web::test]
async fn tasks_are_listed_with_filters_and_pages() {
    let env = env(EnvOpts {
        backends: 1,
        ..Default::default()
    })
    .await;
    for i in 0..5 {
        let r = env
            .daemon
            .submit(json!({ "service_type": "solid", "params": { "color": i } }))
            .await;
        env.daemon
            .wait_terminal(r["id"].as_str().expect("id"), 30)
            .await;
    }
    env.daemon
        .submit(json!({ "service_type": "batch3", "params": {} }))
        .await;
    let (_, page) = env
        .daemon
        .get("/tasks?workflow=solid&limit=2&offset=1")
        .await;
    assert_eq!(page["total"], 5);
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(2));
    let (_, done) = env.daemon.get("/tasks?status=done&workflow=solid").await;
    assert_eq!(done["total"], 5);
    let (status, bad) = env.daemon.get("/tasks?status=nope").await;
    assert_eq!(status, 422);
    assert_eq!(bad["fields"][0]["field"], "status");
    let (status, _) = env.daemon.get("/tasks?limit=0").await;
    assert_eq!(status, 422);
}

#[actix_web::test]
async fn a_task_past_its_deadline_fails_and_is_notified() {
    let env = env(EnvOpts {
        backends: 1,
        env: HashMap::from([("COMFYD_TASK_DEADLINE_SECS".to_string(), "1".to_string())]),
        ..Default::default()
    })
    .await;
    env.sims[0].config(json!({ "paused": true })).await;
    let r = env
        .daemon
        .submit(
            json!({ "service_type": "solid", "client_callback_url": env.hook.url, "params": {} }),
        )
        .await;
    let id = r["id"].as_str().expect("id").to_string();
    let t = env.daemon.wait_terminal(&id, 20).await;
    assert_eq!(t["status"], "failed");
    assert_eq!(t["error_code"], 10);
    assert!(
        t["error_message"]
            .as_str()
            .unwrap_or("")
            .contains("deadline"),
        "{t}"
    );
    assert_eq!(webhooks(&env, &id, 1).await[0].body["error_code"], 10);
    // It was taken off the backend's queue too.
    let outcome = eventually(10, "deleted on the backend", || async {
        let p = env.sims[0].prompts().await;
        p.first()
            .filter(|p| !p["outcome"].is_null())
            .map(|p| p["outcome"].clone())
    })
    .await;
    assert_eq!(outcome, "deleted");
}

#[actix_web::test]
async fn sigterm_stops_cleanly_and_the_next_start_resumes_the_queue() {
    let mut env = env(EnvOpts {
        backends: 1,
        exec_ms: 5,
        ..Default::default()
    })
    .await;
    env.sims[0].config(json!({ "paused": true })).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = env.daemon.submit(json!({ "service_type": "solid", "client_callback_url": env.hook.url, "params": { "color": i } })).await;
        ids.push(r["id"].as_str().expect("id").to_string());
    }
    let status = env.daemon.terminate().expect("exit status");
    assert!(status.success(), "{status:?}\n{}", env.daemon.log());
    env.sims[0].config(json!({ "paused": false })).await;
    env.daemon.restart().await;
    for id in &ids {
        assert_eq!(env.daemon.wait_terminal(id, 30).await["status"], "done");
        webhooks(&env, id, 1).await;
    }
}

//! Nothing lost: backends that die or restart, comfyd killed with -9, a webhook receiver that is down,
//! an S3 server that is down. Each test counts what it got.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::pipeline::{env, webhooks, EnvOpts, BUCKET};
use crate::support::eventually;
use crate::support::webhook::WebhookReceiver;
use comfyd::db;

fn envs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn submit_n(env: &crate::pipeline::Env, n: usize, workflow: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = env
            .daemon
            .submit(
                json!({ "service_type": workflow, "client_task_id": format!("c-{i}"),
                            "client_callback_url": env.hook.url, "params": { "color": i } }),
            )
            .await;
        ids.push(r["id"].as_str().expect("id").to_string());
    }
    ids
}

/// Every task ended exactly once: one terminal event in the database and one distinct webhook id.
async fn assert_each_ended_once(env: &crate::pipeline::Env, ids: &[String]) {
    let db = env.db.connect().await;
    for id in ids {
        crate::support::assert_one_terminal_event(&db, id).await;
        let hooks = webhooks(env, id, 1).await;
        let distinct: HashSet<&str> = hooks
            .iter()
            .filter_map(|h| h.header("webhook-id"))
            .collect();
        assert_eq!(
            distinct.len(),
            1,
            "task {id} notified as {} different messages",
            distinct.len()
        );
    }
}

#[actix_web::test]
async fn a_backend_killed_mid_job_has_its_jobs_finish_elsewhere() {
    let mut env = env(EnvOpts {
        backends: 2,
        exec_ms: 400,
        env: envs(&[("COMFYD_LOST_AFTER_SECS", "1")]),
        ..Default::default()
    })
    .await;
    let ids = submit_n(&env, 6, "solid").await;
    // Wait until the first backend is running one of them, then kill it.
    eventually(10, "a job running on backend 0", || async {
        env.sims[0]
            .prompts()
            .await
            .iter()
            .any(|p| !p["started_ms"].is_null())
            .then_some(())
    })
    .await;
    env.sims[0].kill();
    let mut moved = 0;
    for id in &ids {
        let t = env.daemon.wait_terminal(id, 60).await;
        assert_eq!(t["status"], "done", "{t}\n{}", env.daemon.log());
        assert_eq!(t["backend"], env.sims[1].url);
        if t["attempts"] == 2 {
            moved += 1;
        }
    }
    assert!(moved >= 1, "at least the running job was re-dispatched");
    assert_each_ended_once(&env, &ids).await;
}

#[actix_web::test]
async fn a_backend_that_restarts_and_forgets_its_queue_gets_its_jobs_again() {
    let mut env = env(EnvOpts {
        backends: 1,
        exec_ms: 300,
        ..Default::default()
    })
    .await;
    let ids = submit_n(&env, 4, "solid").await;
    eventually(10, "jobs on the backend", || async {
        (!env.sims[0].prompts().await.is_empty()).then_some(())
    })
    .await;
    env.sims[0].restart().await;
    for id in &ids {
        let t = env.daemon.wait_terminal(id, 60).await;
        assert_eq!(t["status"], "done", "{t}\n{}", env.daemon.log());
    }
    let db = env.db.connect().await;
    let mut requeued = 0;
    for id in &ids {
        requeued += db::events::for_task(&db, id)
            .await
            .expect("events")
            .iter()
            .filter(|e| e.kind == "requeued")
            .count();
    }
    assert!(requeued >= 1, "the forgotten jobs were re-dispatched");
    assert_each_ended_once(&env, &ids).await;
}

#[actix_web::test]
async fn comfyd_killed_with_sigkill_resumes_every_task_from_where_it_was() {
    let mut env = env(EnvOpts {
        backends: 2,
        exec_ms: 80,
        ..Default::default()
    })
    .await;
    env.hook.answer(500); // some deliveries are still pending when comfyd dies
    let ids = submit_n(&env, 50, "solid").await;
    // Let some tasks finish while others run and most still wait.
    eventually(20, "a few tasks done", || async {
        let (_, l) = env.daemon.get("/tasks?status=done&limit=1").await;
        (l["total"].as_u64().unwrap_or(0) >= 5).then_some(())
    })
    .await;
    let (_, before) = env.daemon.get("/tasks?limit=500").await;
    let states: HashSet<String> = before["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["status"].as_str().map(String::from))
        .collect();
    env.daemon.kill9();
    // The backends finish what they hold while comfyd is down.
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    env.hook.answer(200);
    env.daemon.restart().await;
    for id in &ids {
        let t = env.daemon.wait_terminal(id, 90).await;
        assert_eq!(t["status"], "done", "{t}\n{}", env.daemon.log());
    }
    assert!(
        states.len() >= 2,
        "tasks were in several states when killed: {states:?}"
    );
    assert_each_ended_once(&env, &ids).await;
    // Every prompt ran once: those queued before the kill were found again by their prompt id.
    let mut ran = 0;
    for s in &env.sims {
        ran += s
            .prompts()
            .await
            .iter()
            .filter(|p| p["outcome"] == "success")
            .count();
    }
    assert_eq!(ran, 50, "prompts run for 50 tasks");
}

#[actix_web::test]
async fn webhooks_reach_a_receiver_that_was_down_signed_and_with_a_stable_id() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut env = env(EnvOpts {
        backends: 1,
        env: envs(&[("COMFYD_WEBHOOK_SECRET", secret)]),
        ..Default::default()
    })
    .await;
    // First it answers 503, then it is not there at all.
    env.hook.answer(503);
    let ids = submit_n(&env, 5, "solid").await;
    for id in &ids {
        env.daemon.wait_terminal(id, 30).await;
    }
    eventually(20, "a 503 recorded", || async {
        let (_, d) = env
            .daemon
            .get(&format!("/tasks/{}/deliveries", ids[0]))
            .await;
        (d["deliveries"][0]["history"][0]["status_code"] == 503).then_some(())
    })
    .await;
    let port: u16 = env
        .hook
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches("/hook").parse().ok())
        .expect("port");
    env.hook.stop().await;
    let d = eventually(20, "a refused connection recorded", || async {
        let (_, d) = env
            .daemon
            .get(&format!("/tasks/{}/deliveries", ids[0]))
            .await;
        let history = d["deliveries"][0]["history"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        history
            .iter()
            .any(|a| a["status_code"].is_null() && a["error"].is_string())
            .then_some(d)
    })
    .await;
    assert_eq!(d["deliveries"][0]["status"], "pending", "{d}");
    // Back up, on the same address.
    let first_receiver_got: usize = ids.iter().map(|id| env.hook.for_task(id).len()).sum();
    assert!(first_receiver_got >= 5);
    env.hook = WebhookReceiver::start_on(port).await;
    for id in &ids {
        eventually(20, "delivered", || async {
            let (_, d) = env.daemon.get(&format!("/tasks/{id}/deliveries")).await;
            (d["deliveries"][0]["status"] == "delivered").then_some(())
        })
        .await;
    }
    for id in &ids {
        let hooks = env.hook.for_task(id);
        assert_eq!(
            hooks.len(),
            1,
            "task {id}: delivered once to the receiver that answered"
        );
        let (_, d) = env.daemon.get(&format!("/tasks/{id}/deliveries")).await;
        assert_eq!(
            hooks[0].header("webhook-id"),
            d["deliveries"][0]["id"].as_str(),
            "one webhook-id across retries"
        );
        let h = &hooks[0];
        let msg_id = h.header("webhook-id").expect("id");
        let ts: i64 = h
            .header("webhook-timestamp")
            .expect("timestamp")
            .parse()
            .expect("number");
        let expected = comfyd::outbound::sign_webhook(secret, msg_id, ts, &h.raw);
        assert_eq!(h.header("webhook-signature"), Some(expected.as_str()));
    }
    // Redelivery sends the same message again.
    let (_, d) = env
        .daemon
        .get(&format!("/tasks/{}/deliveries", ids[0]))
        .await;
    let delivery_id = d["deliveries"][0]["id"]
        .as_str()
        .expect("delivery id")
        .to_string();
    let (status, _) = env
        .daemon
        .post(&format!("/deliveries/{delivery_id}/redeliver"), &json!({}))
        .await;
    assert_eq!(status, 202);
    eventually(10, "redelivered", || async {
        (env.hook.for_task(&ids[0]).len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        env.hook.for_task(&ids[0])[1].header("webhook-id"),
        Some(delivery_id.as_str())
    );
    assert_each_ended_once(&env, &ids).await;
}

#[actix_web::test]
async fn a_webhook_receiver_that_hangs_times_out_and_is_retried() {
    let env = env(EnvOpts {
        backends: 1,
        env: envs(&[("COMFYD_WEBHOOK_TIMEOUT_MS", "300")]),
        ..Default::default()
    })
    .await;
    env.hook.delay(Duration::from_secs(2));
    let id = submit_n(&env, 1, "solid").await.remove(0);
    env.daemon.wait_terminal(&id, 30).await;
    eventually(20, "a timeout recorded", || async {
        let (_, d) = env.daemon.get(&format!("/tasks/{id}/deliveries")).await;
        let first = d["deliveries"][0]["history"][0].clone();
        (first["error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")))
        .then_some(())
    })
    .await;
    env.hook.delay(Duration::ZERO);
    eventually(20, "delivered", || async {
        let (_, d) = env.daemon.get(&format!("/tasks/{id}/deliveries")).await;
        (d["deliveries"][0]["status"] == "delivered").then_some(())
    })
    .await;
}

#[actix_web::test]
async fn an_s3_outage_leaves_files_in_the_fallback_folder_and_reupload_completes_the_tasks() {
    let mut env = env(EnvOpts {
        backends: 1,
        s3: true,
        env: envs(&[("COMFYD_UPLOAD_ATTEMPTS", "2")]),
        ..Default::default()
    })
    .await;
    env.s3.as_mut().expect("s3").stop();
    let ids = submit_n(&env, 3, "solid").await;
    for id in &ids {
        let t = env.daemon.wait_terminal(id, 60).await;
        assert_eq!(t["error_code"], 2, "{t}");
    }
    env.s3.as_mut().expect("s3").restart().await;

    // Act: the operator's command, with the daemon's own settings.
    let s3 = env.s3.as_ref().expect("s3");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_comfyd"))
        .arg("reupload")
        .current_dir(env.daemon.data_dir())
        .env_clear()
        .env("DATABASE_URL", env.db.url())
        .env("COMFYD_DATA_DIR", env.daemon.data_dir())
        .env("S3_BUCKET", BUCKET)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .env("COMFYD_S3_ENDPOINT_URL", &s3.endpoint)
        .output()
        .expect("run comfyd reupload");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let keys = s3.list_keys(BUCKET).await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    for id in &ids {
        let t = env.daemon.task(id).await;
        assert_eq!(t["status"], "done", "{t}");
        assert_eq!(t["error_code"], 0);
        assert!(t["error_message"].is_null());
        let key = t["s3_key"].as_str().expect("s3_key");
        assert!(keys.contains(&key.to_string()));
        let fallback = t["outputs"][0]["fallback_path"].clone();
        assert_eq!(fallback, Value::Null, "fallback file no longer referenced");
    }
    let left: Vec<_> = walk(&env.daemon.fallback_dir());
    assert!(left.is_empty(), "fallback folder emptied: {left:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                files.extend(walk(&p));
            } else {
                files.push(p);
            }
        }
    }
    files
}

#[actix_web::test]
async fn a_job_no_backend_accepts_fails_after_the_attempt_limit_and_is_notified() {
    let env = env(EnvOpts {
        backends: 2,
        env: envs(&[("COMFYD_MAX_ATTEMPTS", "3")]),
        ..Default::default()
    })
    .await;
    // Both backends answer 500 to every prompt.
    for s in &env.sims {
        s.script(json!({ "reject_next": 100 })).await;
    }
    let id = submit_n(&env, 1, "solid").await.remove(0);
    let t = env.daemon.wait_terminal(&id, 30).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["error_code"], 1);
    assert_eq!(t["attempts"], 3);
    assert!(
        t["error_message"]
            .as_str()
            .unwrap_or("")
            .contains("3 attempts"),
        "{t}"
    );
    let hooks = webhooks(&env, &id, 1).await;
    assert_eq!(hooks[0].body["error_code"], 1);
    let db = env.db.connect().await;
    let kinds: Vec<String> = db::events::for_task(&db, &id)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "dispatched").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "requeued").count(),
        2,
        "{kinds:?}"
    );
}

#[actix_web::test]
async fn jobs_a_backend_refuses_run_on_another_backend() {
    let env = env(EnvOpts {
        backends: 2,
        exec_ms: 20,
        ..Default::default()
    })
    .await;
    env.sims[0].script(json!({ "reject_next": 1000 })).await;
    let ids = submit_n(&env, 6, "solid").await;
    for id in &ids {
        let t = env.daemon.wait_terminal(id, 30).await;
        assert_eq!(t["status"], "done", "{t}");
        assert_eq!(t["backend"], env.sims[1].url);
        assert!(t["attempts"].as_i64().unwrap_or(9) <= 2, "{t}");
    }
    assert_each_ended_once(&env, &ids).await;
}

/// Submits one task and answers its id and the prompt id the immediate answer promised.
async fn submit_one(env: &crate::pipeline::Env) -> (String, String) {
    let r = env
        .daemon
        .submit(
            json!({ "service_type": "solid", "client_callback_url": env.hook.url,
                        "params": { "color": 1 } }),
        )
        .await;
    let id = r["id"].as_str().expect("id").to_string();
    let p1 = r["comfyui_task_id"]
        .as_str()
        .filter(|p| uuid::Uuid::parse_str(p).is_ok())
        .unwrap_or_else(|| panic!("the immediate answer carries the prompt id: {r}"))
        .to_string();
    (id, p1)
}

/// A task whose first attempt under `p1` was lost ended `done` under a new prompt id, the one the
/// simulator ran it under, and its record, webhook and `requeued` event all name that id.
async fn assert_ran_under_a_new_prompt_id(
    env: &crate::pipeline::Env,
    sim: &crate::support::sim::Sim,
    id: &str,
    p1: &str,
) {
    let t = env.daemon.wait_terminal(id, 60).await;
    assert_eq!(t["status"], "done", "{t}\n{}", env.daemon.log());
    assert_eq!(t["attempts"], 2, "{t}");
    let p2 = t["comfyui_task_id"]
        .as_str()
        .expect("prompt id")
        .to_string();
    assert_ne!(p2, p1, "a re-dispatch runs under a new prompt id");
    let ran: Vec<(String, Value)> = sim
        .prompts()
        .await
        .into_iter()
        .map(|p| {
            (
                p["prompt_id"].as_str().unwrap_or("").to_string(),
                p["outcome"].clone(),
            )
        })
        .collect();
    assert_eq!(
        ran,
        vec![(p2.clone(), json!("success"))],
        "the simulator ran the job once, under the id the record shows"
    );
    let hooks = webhooks(env, id, 1).await;
    assert_eq!(
        hooks[0].body["comfyui_task_id"],
        p2.as_str(),
        "{}",
        hooks[0].body
    );
    assert_eq!(hooks[0].body["status"], "done", "{}", hooks[0].body);
    let (status, events) = env.daemon.get(&format!("/tasks/{id}/events")).await;
    assert_eq!(status, 200, "{events}");
    let events = events["events"].as_array().cloned().unwrap_or_default();
    let requeued: Vec<&Value> = events.iter().filter(|e| e["kind"] == "requeued").collect();
    assert_eq!(requeued.len(), 1, "{events:?}");
    assert_eq!(requeued[0]["details"]["next_prompt_id"], p2.as_str());
    let dispatched: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "dispatched")
        .map(|e| &e["details"]["prompt_id"])
        .collect();
    assert_eq!(dispatched, vec![&json!(p1), &json!(p2)], "{events:?}");
}

#[actix_web::test]
async fn a_job_its_restarted_backend_forgot_runs_again_under_a_new_prompt_id() {
    let mut env = env(EnvOpts {
        backends: 1,
        exec_ms: 1500,
        ..Default::default()
    })
    .await;
    let (id, p1) = submit_one(&env).await;
    eventually(10, "the first attempt running", || async {
        env.sims[0]
            .prompts()
            .await
            .iter()
            .any(|p| p["prompt_id"] == p1.as_str() && !p["started_ms"].is_null())
            .then_some(())
    })
    .await;
    // The restarted simulator knows nothing of the first attempt: what it reports afterwards is
    // only what comfyd sent it again.
    env.sims[0].restart().await;
    assert_ran_under_a_new_prompt_id(&env, &env.sims[0], &id, &p1).await;
}

#[actix_web::test]
async fn a_job_its_backend_refused_runs_under_a_new_prompt_id() {
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 20,
        ..Default::default()
    })
    .await;
    // A refused `POST /prompt` is not recorded by the simulator, so only the retry shows there.
    env.sims[0].script(json!({ "reject_next": 1 })).await;
    let (id, p1) = submit_one(&env).await;
    assert_ran_under_a_new_prompt_id(&env, &env.sims[0], &id, &p1).await;
}

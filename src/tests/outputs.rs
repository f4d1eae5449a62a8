//! Output URLs: each stored output's `url` in the task record and the webhook (presigned for the S3
//! store, the API path for the local store), and `GET {prefix}/tasks/{id}/outputs/{n}`, against the
//! real daemon, s3s-fs, the simulator and a real webhook receiver.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::pipeline::{env, webhooks, EnvOpts, BUCKET};
use crate::support::daemon::{call, Daemon, DaemonConfig};
use crate::support::db::TestDb;
use crate::support::eventually;
use crate::support::sim::Sim;
use crate::support::webhook::WebhookReceiver;
use comfyd::access::hash_key;

/// A plain GET (no redirects followed, optional bearer key): status, headers, body bytes.
async fn fetch(url: &str, key: Option<&str>) -> (u16, HashMap<String, String>, Vec<u8>) {
    let client = awc::Client::builder()
        .disable_redirects()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut req = client.get(url);
    if let Some(k) = key {
        req = req.insert_header(("authorization", format!("Bearer {k}")));
    }
    let mut resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body = resp.body().limit(64 << 20).await.expect("body").to_vec();
    (resp.status().as_u16(), headers, body)
}

#[actix_web::test]
async fn s3_outputs_carry_presigned_urls_that_serve_the_stored_bytes() {
    // Arrange
    let env = env(EnvOpts {
        backends: 1,
        exec_ms: 20,
        s3: true,
        env: HashMap::from([("COMFYD_PRESIGN_EXPIRY_SECS".into(), "120".into())]),
        ..Default::default()
    })
    .await;
    let s3 = env.s3.as_ref().expect("s3");

    // Act
    let reply = env
        .daemon
        .submit(json!({
            "service_type": "solid",
            "client_task_id": "urls-s3",
            "client_callback_url": env.hook.url,
            "params": { "width": 8, "height": 8, "color": 7 }
        }))
        .await;
    let id = reply["id"].as_str().expect("id").to_string();
    let task = env.daemon.wait_terminal(&id, 30).await;
    assert_eq!(task["status"], "done", "{task}\n{}", env.daemon.log());
    let key = task["outputs"][0]["key"].as_str().expect("key").to_string();
    let (stored, _) = s3.get(BUCKET, &key).await;

    // Assert: the record's URL is a presigned GET of the key, lasting the setting (plus the minute
    // it is stable for), and a plain client gets the stored bytes with it.
    let url = task["outputs"][0]["url"].as_str().expect("url").to_string();
    assert!(
        url.starts_with(&format!("{}/{BUCKET}/{key}?", s3.endpoint)),
        "{url}"
    );
    for part in ["X-Amz-Signature=", "X-Amz-Expires=180", "X-Amz-Credential="] {
        assert!(url.contains(part), "{part} in {url}");
    }
    let (status, _, bytes) = fetch(&url, None).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(bytes, stored.to_vec());
    // A tampered signature is refused: s3s-fs does check presigned URLs.
    let tampered = url.replace("X-Amz-Expires=180", "X-Amz-Expires=181");
    let (status, _, _) = fetch(&tampered, None).await;
    assert_eq!(status, 403, "a tampered URL");
    // The webhook's URL works too.
    let hooks = webhooks(&env, &id, 1).await;
    let hook_url = hooks[0].body["outputs"][0]["url"]
        .as_str()
        .expect("the webhook's url");
    let (status, _, bytes) = fetch(hook_url, None).await;
    assert_eq!(status, 200);
    assert_eq!(bytes, stored.to_vec());
    // The route redirects to a fresh presigned URL.
    let route = format!("{}/tasks/{id}/outputs/0", env.daemon.api);
    let (status, headers, _) = fetch(&route, None).await;
    assert_eq!(status, 302);
    let location = headers.get("location").expect("Location");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let (status, _, bytes) = fetch(location, None).await;
    assert_eq!(status, 200);
    assert_eq!(bytes, stored.to_vec());
}

#[actix_web::test]
async fn local_outputs_are_served_by_the_api_and_only_to_their_submitter() {
    // Arrange: two submit keys, the local store.
    let sim = Sim::start(20).await;
    let db = TestDb::sqlite();
    let hook = WebhookReceiver::start().await;
    let (app, other) = ("key-of-app-0123456789", "key-of-other-0123456789");
    let keys = format!(
        "app:submit:{},other:submit:{}",
        hash_key(app),
        hash_key(other)
    );
    let d = Daemon::start(DaemonConfig {
        endpoints: vec![sim.url.clone()],
        database_url: db.url().to_string(),
        env: HashMap::from([
            ("COMFYD_API_KEYS".to_string(), keys),
            ("COMFYD_CLEANUP".to_string(), "false".to_string()),
        ]),
        ..Default::default()
    })
    .await;

    // Act
    let submit = json!({
        "service_type": "solid",
        "client_task_id": "urls-local",
        "client_callback_url": hook.url,
        "params": { "width": 8, "height": 8, "color": 9 }
    });
    let (status, _, reply) = call(&d, "POST", "", Some(app), Some(submit)).await;
    assert_eq!(status, 200, "{reply}");
    let id = reply["id"].as_str().expect("id").to_string();
    let task: Value = eventually(20, "the task done", || async {
        let (_, _, t) = call(&d, "GET", &format!("/tasks/{id}"), Some(app), None).await;
        (t["status"] == "done").then_some(t)
    })
    .await;

    // Assert: the record's url is the API path, which serves the stored file as it is on disk.
    let out = &task["outputs"][0];
    let path = format!("/api/v1/tasks/{id}/outputs/0");
    assert_eq!(out["url"], path.as_str(), "{task}");
    let key = out["key"].as_str().expect("key");
    let on_disk = std::fs::read(d.data_dir().join("outputs").join(key)).expect("stored file");
    let (status, headers, bytes) = fetch(&format!("{}{path}", d.base), Some(app)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(bytes, on_disk);
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("image/png")
    );
    // The webhook carries the same url.
    let got = eventually(20, "the webhook", || async {
        let got = hook.for_task(&id);
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(got[0].body["outputs"][0]["url"], path.as_str());
    // No output 9: a 404 naming `n`; `n` not a number: a 400 naming it.
    let (status, _, body) = call(
        &d,
        "GET",
        &format!("/tasks/{id}/outputs/9"),
        Some(app),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_found");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("n = 9")),
        "{body}"
    );
    let (status, _, body) = call(
        &d,
        "GET",
        &format!("/tasks/{id}/outputs/x"),
        Some(app),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("n ")),
        "{body}"
    );
    // Another submit key sees neither the task nor its output; no key is a 401.
    let (status, _, body) = call(
        &d,
        "GET",
        &format!("/tasks/{id}/outputs/0"),
        Some(other),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_found");
    let (status, _, _) = call(&d, "GET", &format!("/tasks/{id}/outputs/0"), None, None).await;
    assert_eq!(status, 401);
    d.assert_no_panics();
}

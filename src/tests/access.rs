//! Access: API keys (none configured: open as before; configured: 401/403/404 by key and scope, a
//! submit key sees only its own tasks) and the URL policy for client URLs as the daemon applies it
//! (names resolved at submit and at delivery).

use std::collections::HashMap;
use std::process::Command;

use comfyd::entity::{api_key, task};
use sea_orm::EntityTrait;
use serde_json::{json, Value};

use crate::support::daemon::{call, Daemon, DaemonConfig};
use crate::support::db::TestDb;
use crate::support::eventually;
use crate::support::sim::Sim;
use crate::support::webhook::WebhookReceiver;
use comfyd::access::hash_key;

/// Runs `comfyd keys ...` against the test database; returns its standard output.
fn keys_cli(db_url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_comfyd"))
        .arg("keys")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db_url)
        .output()
        .expect("run comfyd keys");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "comfyd keys {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The key in `comfyd keys add`/`generate` output.
fn printed_key(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("key (shown only now): "))
        .unwrap_or_else(|| panic!("no key in {stdout:?}"))
        .trim()
        .to_string()
}

async fn daemon(sim: &Sim, db: &TestDb, env: &[(&str, String)]) -> Daemon {
    Daemon::start(DaemonConfig {
        endpoints: vec![sim.url.clone()],
        database_url: db.url().to_string(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    })
    .await
}

fn solid(ctid: &str) -> Value {
    json!({
        "service_type": "solid",
        "client_task_id": ctid,
        "params": { "width": 8, "height": 8, "color": 255 }
    })
}

#[actix_web::test]
async fn without_keys_every_route_is_open_and_a_public_listener_is_warned_about() {
    // Arrange: no keys; listening on every interface (reached here through 127.0.0.1 all the same).
    let sim = Sim::start(20).await;
    let db = TestDb::sqlite();
    let d = daemon(&sim, &db, &[("COMFYD_HOST", "0.0.0.0".into())]).await;

    // Act
    let (status, _, task) = call(&d, "POST", "", None, Some(solid("open-1"))).await;
    assert_eq!(status, 200, "{task}");
    let id = task["id"].as_str().expect("id").to_string();
    let done = d.wait_terminal(&id, 20).await;

    // Assert
    assert_eq!(done["status"], "done", "{done}");
    for path in [
        format!("/tasks/{id}"),
        "/tasks".into(),
        format!("/tasks/{id}/events"),
        format!("/tasks/{id}/deliveries"),
        "/backends".into(),
        "/workflows".into(),
    ] {
        let (status, _, body) = call(&d, "GET", &path, None, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
    }
    let (status, _, body) = call(&d, "POST", &format!("/tasks/{id}/cancel"), None, None).await;
    assert_eq!(status, 409, "the task had ended: {body}");
    let (status, _, body) = call(&d, "POST", "/deliveries/nope/redeliver", None, None).await;
    assert_eq!(status, 404, "open, and the delivery does not exist: {body}");
    let warnings = d.log().matches("no API keys").count();
    assert_eq!(warnings, 1, "one warning at start:\n{}", d.log());
}

#[actix_web::test]
async fn a_loopback_listener_without_keys_is_not_warned_about() {
    let sim = Sim::start(20).await;
    let db = TestDb::sqlite();
    let d = daemon(&sim, &db, &[]).await;
    let (status, _, _) = call(&d, "GET", "/tasks", None, None).await;
    assert_eq!(status, 200);
    assert!(!d.log().contains("no API keys"), "{}", d.log());
}

#[actix_web::test]
async fn keys_decide_who_sees_and_cancels_which_task_sqlite() {
    keys_decide_who_sees_and_cancels_which_task(TestDb::sqlite()).await;
}

#[actix_web::test]
async fn keys_decide_who_sees_and_cancels_which_task_postgres() {
    keys_decide_who_sees_and_cancels_which_task(TestDb::postgres().await).await;
}

async fn keys_decide_who_sees_and_cancels_which_task(db: TestDb) {
    // Arrange: two submit keys and an admin key in the configuration (as hashes), and one more
    // submit key added to the database with the CLI. Jobs run long, so tasks can be cancelled.
    let sim = Sim::start(30_000).await;
    let (app, other, ops) = (
        "key-of-app-0123456789",
        "key-of-other-0123456789",
        "key-of-ops-0123456789",
    );
    let configured = format!(
        "app:submit:{},other:submit:{},ops:admin:{}",
        hash_key(app),
        hash_key(other),
        hash_key(ops)
    );
    let added = keys_cli(db.url(), &["add", "--name", "cli", "--scope", "submit"]);
    let cli = printed_key(&added);
    let d = daemon(&sim, &db, &[("COMFYD_API_KEYS", configured.clone())]).await;

    // Assert: 401 without a key, with a wrong one, and with another scheme; /healthz stays open.
    for (key, challenge) in [
        (None, r#"Bearer realm="comfyd""#),
        (
            Some("wrong"),
            r#"Bearer realm="comfyd", error="invalid_token""#,
        ),
    ] {
        for (method, path) in [
            ("GET", "/tasks"),
            ("POST", ""),
            ("GET", "/backends"),
            ("GET", "/workflows"),
        ] {
            let body = (method == "POST").then(|| solid("never"));
            let (status, www, reply) = call(&d, method, path, key, body).await;
            assert_eq!(status, 401, "{method} {path} with {key:?}: {reply}");
            assert_eq!(www.as_deref(), Some(challenge), "{method} {path}");
            assert_eq!(reply["error"], "unauthorized", "{reply}");
        }
    }
    let healthz = awc::Client::new()
        .get(format!("{}/healthz", d.base))
        .send()
        .await
        .expect("healthz")
        .status();
    assert_eq!(healthz.as_u16(), 200, "/healthz needs no key");

    // A submit key on admin routes: 403.
    for (method, path) in [("GET", "/backends"), ("POST", "/deliveries/x/redeliver")] {
        let (status, _, reply) = call(&d, method, path, Some(app), None).await;
        assert_eq!(status, 403, "{method} {path}: {reply}");
        assert_eq!(reply["error"], "forbidden", "{reply}");
    }
    let (status, _, _) = call(&d, "GET", "/backends", Some(ops), None).await;
    assert_eq!(status, 200);

    // Each submit key submits a task, by both submit routes.
    let (status, _, mine) = call(&d, "POST", "", Some(app), Some(solid("ct-app"))).await;
    assert_eq!(status, 200, "{mine}");
    let (status, _, theirs) = call(
        &d,
        "POST",
        "/workflows/solid/tasks",
        Some(other),
        Some(json!({ "client_task_id": "ct-other", "params": { "width": 8, "height": 8, "color": 1 } })),
    )
    .await;
    assert_eq!(status, 202, "{theirs}");
    let (status, _, cli_task) = call(&d, "POST", "", Some(&cli), Some(solid("ct-cli"))).await;
    assert_eq!(status, 200, "the CLI's key works: {cli_task}");
    let mine_id = mine["id"].as_str().expect("id").to_string();
    let theirs_id = theirs["id"].as_str().expect("id").to_string();

    // A submit key sees its own task, and another key's task as not found, by either id.
    let (status, _, _) = call(&d, "GET", &format!("/tasks/{mine_id}"), Some(app), None).await;
    assert_eq!(status, 200);
    for path in [
        format!("/tasks/{theirs_id}"),
        "/tasks/ct-other".to_string(),
        format!("/tasks/{theirs_id}/events"),
        format!("/tasks/{theirs_id}/deliveries"),
    ] {
        let (status, _, reply) = call(&d, "GET", &path, Some(app), None).await;
        assert_eq!(status, 404, "GET {path}: {reply}");
        assert_eq!(reply["error"], "not_found");
    }
    let (status, _, _) = call(
        &d,
        "POST",
        &format!("/tasks/{theirs_id}/cancel"),
        Some(app),
        None,
    )
    .await;
    assert_eq!(status, 404, "another key's task cannot be cancelled");
    let (status, _, reply) = call(&d, "POST", "", Some(app), Some(solid("ct-other"))).await;
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply.get("task").is_none(),
        "another key's task is not shown: {reply}"
    );

    // Listings: a submit key's own tasks only; admin sees all.
    let (_, _, list) = call(&d, "GET", "/tasks", Some(app), None).await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["tasks"][0]["id"], mine_id.as_str());
    let (_, _, list) = call(&d, "GET", "/tasks", Some(other), None).await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["tasks"][0]["id"], theirs_id.as_str());
    let (_, _, list) = call(&d, "GET", "/tasks", Some(ops), None).await;
    assert_eq!(list["total"], 3, "{list}");
    let (status, _, _) = call(&d, "GET", &format!("/tasks/{theirs_id}"), Some(ops), None).await;
    assert_eq!(status, 200, "admin reads any task");

    // Cancel: a submit key its own task; admin anyone's.
    let (status, _, reply) = call(
        &d,
        "POST",
        &format!("/tasks/{mine_id}/cancel"),
        Some(app),
        None,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "cancelled");
    let (status, _, reply) = call(
        &d,
        "POST",
        &format!("/tasks/{theirs_id}/cancel"),
        Some(ops),
        None,
    )
    .await;
    assert_eq!(status, 200, "{reply}");

    // Stored hashed: the owner is the key's name; no key is in the database, only its hash.
    let conn = db.connect().await;
    let mut owners: Vec<String> = task::Entity::find()
        .all(&conn)
        .await
        .expect("tasks")
        .into_iter()
        .filter_map(|t| t.owner)
        .collect();
    owners.sort();
    assert_eq!(owners, ["app", "cli", "other"]);
    let keys = api_key::Entity::find().all(&conn).await.expect("api_keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key_hash, hash_key(&cli));
    let dump = format!("{:?}", keys[0]);
    assert!(!dump.contains(&cli), "the key itself is not stored: {dump}");
    for key in [app, other, ops] {
        assert!(
            !configured.contains(key),
            "the configuration holds hashes only"
        );
    }
    let listed = keys_cli(db.url(), &["list"]);
    assert!(listed.contains("cli") && !listed.contains(&cli), "{listed}");

    // Revoked with the CLI: the running daemon refuses the key within seconds.
    keys_cli(db.url(), &["revoke", "cli"]);
    eventually(15, "the revoked key to be refused", || async {
        let (status, _, _) = call(&d, "GET", "/tasks", Some(&cli), None).await;
        (status == 401).then_some(())
    })
    .await;
    let (status, _, _) = call(&d, "GET", "/tasks", Some(app), None).await;
    assert_eq!(status, 200, "other keys still work");
}

#[actix_web::test]
async fn keys_in_the_database_alone_close_the_api_and_revoking_them_keeps_it_closed() {
    // Arrange: no configured keys; a key is added while the daemon runs.
    let sim = Sim::start(20).await;
    let db = TestDb::sqlite();
    let d = daemon(&sim, &db, &[]).await;
    let (status, _, _) = call(&d, "GET", "/tasks", None, None).await;
    assert_eq!(status, 200, "open while there are no keys");

    // Act
    let admin = printed_key(&keys_cli(
        db.url(),
        &["add", "--name", "root", "--scope", "admin"],
    ));

    // Assert
    eventually(15, "the API to close once a key exists", || async {
        let (status, _, _) = call(&d, "GET", "/tasks", None, None).await;
        (status == 401).then_some(())
    })
    .await;
    let (status, _, _) = call(&d, "GET", "/backends", Some(&admin), None).await;
    assert_eq!(status, 200);
    keys_cli(db.url(), &["revoke", "root"]);
    eventually(15, "the revoked key to be refused", || async {
        let (status, _, _) = call(&d, "GET", "/backends", Some(&admin), None).await;
        (status == 401).then_some(())
    })
    .await;
    let (status, _, _) = call(&d, "GET", "/tasks", None, None).await;
    assert_eq!(status, 401, "revoking the last key does not open the API");
}

/// `url` with its host 127.0.0.1 named `localhost` (which /etc/hosts maps to 127.0.0.1).
fn by_name(url: &str) -> String {
    url.replace("127.0.0.1", "localhost")
}

#[actix_web::test]
async fn a_callback_name_that_resolves_to_loopback_is_refused_at_submit_unless_loopback_is_allowed()
{
    let sim = Sim::start(20).await;
    let hook = WebhookReceiver::start().await;
    let db = TestDb::sqlite();
    let strict = daemon(&sim, &db, &[("COMFYD_ALLOW_LOOPBACK_URLS", "false".into())]).await;

    for (callback, why) in [
        (by_name(&hook.url), "localhost resolves to 127.0.0.1"),
        (hook.url.clone(), "127.0.0.1 is a loopback address"),
        (
            "http://2130706433/hook".into(),
            "127.0.0.1 is a loopback address",
        ),
        (
            "http://169.254.169.254/latest/meta-data".into(),
            "cloud metadata",
        ),
    ] {
        let mut body = solid("refused");
        body["client_callback_url"] = json!(callback);
        let (status, _, reply) = call(&strict, "POST", "", None, Some(body)).await;
        assert_eq!(status, 422, "{callback}: {reply}");
        assert_eq!(
            reply["fields"][0]["field"], "client_callback_url",
            "{reply}"
        );
        let reason = reply["fields"][0]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(why), "{callback}: {reason}");
    }
    let (status, _, reply) = call(
        &strict,
        "POST",
        "/workflows/invert/tasks",
        None,
        Some(json!({ "params": { "image": by_name(&format!("{}/x.png", hook.url)) } })),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["fields"][0]["field"], "params.image", "{reply}");
    assert!(
        reply["fields"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("loopback"),
        "{reply}"
    );
    assert!(hook.received().is_empty(), "nothing reached the receiver");

    // With loopback allowed (the default) the same name is resolved, reached and delivered to.
    let open = daemon(&sim, &TestDb::sqlite(), &[]).await;
    let mut body = solid("by-name");
    body["client_callback_url"] = json!(by_name(&hook.url));
    let (status, _, task) = call(&open, "POST", "", None, Some(body)).await;
    assert_eq!(status, 200, "{task}");
    let id = task["id"].as_str().expect("id").to_string();
    eventually(20, "the webhook by name", || async {
        (!hook.for_task(&id).is_empty()).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn a_webhook_to_a_refused_address_is_a_failed_attempt_and_retried() {
    // Arrange: a task accepted with a callback by name while loopback was allowed; comfyd is
    // killed and comes back with loopback refused before the webhook is sent.
    let sim = Sim::start(1_500).await;
    let hook = WebhookReceiver::start().await;
    let db = TestDb::sqlite();
    let mut first = daemon(&sim, &db, &[]).await;
    let mut body = solid("later-refused");
    body["client_callback_url"] = json!(by_name(&hook.url));
    let (status, _, task) = call(&first, "POST", "", None, Some(body)).await;
    assert_eq!(status, 200, "{task}");
    let id = task["id"].as_str().expect("id").to_string();
    first.kill9();

    // Act
    let strict = daemon(&sim, &db, &[("COMFYD_ALLOW_LOOPBACK_URLS", "false".into())]).await;
    let done = strict.wait_terminal(&id, 30).await;
    assert_eq!(done["status"], "done", "{done}");

    // Assert: attempts fail with the reason and stay pending (retried as usual).
    let deliveries = eventually(20, "two refused attempts", || async {
        let (_, _, reply) = call(
            &strict,
            "GET",
            &format!("/tasks/{id}/deliveries"),
            None,
            None,
        )
        .await;
        let d = reply["deliveries"][0].clone();
        (d["attempts"].as_i64().unwrap_or(0) >= 2).then_some(d)
    })
    .await;
    assert_eq!(deliveries["status"], "pending", "{deliveries}");
    let error = deliveries["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("address refused") && error.contains("localhost resolves to 127.0.0.1"),
        "{error}"
    );
    assert!(
        hook.for_task(&id).is_empty(),
        "nothing reached the receiver"
    );
}

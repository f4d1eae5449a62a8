//! Deployments from outside (#19): a release deployed to three simulators where one lacks a node
//! class the release uses (succeeded, that backend failed and why), one at a time (a second start
//! is a 409 naming the running one), history newest first, a rollback, a cancel, a deployment no
//! backend passes (failed), and kill -9 mid-deployment (resumed to a terminal state on restart);
//! what is served (the newest succeeded deployment's release) and the release tasks are stamped with;
//! a task no up backend passed waits and says why; on SQLite and PostgreSQL where it matters.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::daemon::{self, Daemon, DaemonConfig};
use crate::support::db::TestDb;
use crate::support::sim::Sim;
use crate::support::workflows_draft;
use comfyd::access::hash_key;

const OPS: &str = "key-of-ops-0123456789";
const APP: &str = "key-of-app-0123456789";

async fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (status, _, body) = daemon::call(d, method, path, Some(key), body).await;
    (status, body)
}

fn name(sim: &Sim) -> String {
    sim.url.trim_end_matches('/').to_string()
}

async fn daemon(db: &TestDb, sims: &[&Sim], workflows: &Path) -> Daemon {
    let keys = format!("ops:admin:{},app:submit:{}", hash_key(OPS), hash_key(APP));
    Daemon::start(DaemonConfig {
        endpoints: sims.iter().map(|s| s.url.clone()).collect(),
        database_url: db.url().to_string(),
        env: [("COMFYD_API_KEYS".to_string(), keys)].into(),
        workflows_dir: Some(workflows.to_path_buf()),
        ..Default::default()
    })
    .await
}

async fn publish(d: &Daemon) -> i64 {
    let (status, body) = call(d, "POST", "/releases", OPS, Some(json!({}))).await;
    assert_eq!(status, 201, "{body}");
    body["version"].as_i64().expect("version")
}

async fn deploy(d: &Daemon, body: Value) -> (u16, Value) {
    call(d, "POST", "/deployments", OPS, Some(body)).await
}

/// Polls deployment `id` until it is terminal; its record.
async fn until_terminal(d: &Daemon, id: i64) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = call(d, "GET", &format!("/deployments/{id}"), OPS, None).await;
        assert_eq!(status, 200, "{body}");
        if matches!(
            body["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "deployment {id} not terminal: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Submits a `solid` task with the submit key; its id.
async fn submit(d: &Daemon) -> String {
    let body = json!({"params": {"width": 8, "height": 8, "color": 1}});
    let (status, answer) = call(d, "POST", "/workflows/solid/tasks", APP, Some(body)).await;
    assert_eq!(status, 202, "{answer}");
    answer["id"].as_str().expect("id").to_string()
}

/// The release a task was stamped with, from its row.
async fn stamped(conn: &sea_orm::DatabaseConnection, id: &str) -> Option<i64> {
    comfyd::db::tasks::get(conn, id)
        .await
        .expect("read")
        .expect("task row")
        .release_version
        .map(i64::from)
}

/// Waits until every task in `ids` is done; their rows.
async fn all_done(
    d: &Daemon,
    conn: &sea_orm::DatabaseConnection,
    ids: &[String],
) -> Vec<comfyd::entity::task::Model> {
    let started = Instant::now();
    for id in ids {
        loop {
            let (status, body) = call(d, "GET", &format!("/tasks/{id}"), APP, None).await;
            assert_eq!(status, 200, "{body}");
            match body["status"].as_str() {
                Some("done") => break,
                Some("failed" | "cancelled") => panic!("task {id} ended: {body}"),
                _ => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "task {id} not done: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut rows = Vec::new();
    for id in ids {
        rows.push(
            comfyd::db::tasks::get(conn, id)
                .await
                .expect("read")
                .expect("row"),
        );
    }
    rows
}

/// The served `solid` workflow's description.
async fn solid_description(d: &Daemon) -> String {
    let (status, body) = call(d, "GET", "/workflows/solid", APP, None).await;
    assert_eq!(status, 200, "{body}");
    body["description"].as_str().unwrap_or_default().to_string()
}

fn backend<'a>(record: &'a Value, sim: &Sim) -> &'a Value {
    record["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["backend"] == name(sim).as_str())
        .unwrap_or_else(|| panic!("{} not in {record}", name(sim)))
}

async fn a_release_is_deployed_one_at_a_time_and_rolled_back(db: TestDb) {
    // Arrange: three simulators, the last without a node class `text2img` uses; the first slow,
    // so that a deployment lasts long enough to be met by a second one.
    let slow = Sim::start(1500).await;
    let fast = Sim::start(20).await;
    let no_node = Sim::start_with(20, &["--without-node", "VAEDecode"]).await;
    let dir = workflows_draft();
    let mut d = daemon(&db, &[&slow, &fast, &no_node], dir.path()).await;
    let conn = db.connect().await;
    let v1 = publish(&d).await;
    // Before any deployment the folder is served: tasks carry no release.
    let before = submit(&d).await;
    assert_eq!(stamped(&conn, &before).await, None);
    all_done(&d, &conn, std::slice::from_ref(&before)).await;

    // Act: deploy it, and at once another.
    let (status, first) = deploy(&d, json!({"release": v1})).await;
    let (again, refused) = deploy(&d, json!({"release": v1})).await;

    // Assert: accepted pending with every backend; the second is a 409 naming the first.
    assert_eq!(status, 202, "{first}");
    let id1 = first["id"].as_i64().expect("id");
    assert_eq!(first["release"], v1);
    assert_eq!(first["previous_release"], Value::Null);
    assert_eq!(first["max_unavailable"], 1);
    assert_eq!(
        first["backends"].as_array().map(Vec::len),
        Some(3),
        "{first}"
    );
    assert_eq!(
        (again, refused["error"].as_str()),
        (409, Some("conflict")),
        "{refused}"
    );
    assert_eq!(refused["deployment"]["id"], id1, "{refused}");
    assert!(refused["message"]
        .as_str()
        .unwrap_or("")
        .contains(&id1.to_string()));

    let done = until_terminal(&d, id1).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        done["started_at"].is_string() && done["ended_at"].is_string(),
        "{done}"
    );
    assert_eq!(backend(&done, &slow)["state"], "switched", "{done}");
    assert_eq!(backend(&done, &fast)["state"], "switched", "{done}");
    let failed = backend(&done, &no_node);
    assert_eq!(failed["state"], "failed", "{done}");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap_or("")
            .contains("VAEDecode"),
        "{failed}"
    );
    assert!(failed["ended_at"].is_string(), "{failed}");
    // Served now: submits are stamped with it, and never run on the backend that failed it.
    let seen_by_failing = no_node.prompts().await.len();
    let mut after = Vec::new();
    for _ in 0..6 {
        after.push(submit(&d).await);
    }
    for row in all_done(&d, &conn, &after).await {
        assert_eq!(row.release_version, Some(v1 as i32));
        assert_ne!(
            row.backend.as_deref(),
            Some(name(&no_node).as_str()),
            "{row:?}"
        );
    }
    assert_eq!(no_node.prompts().await.len(), seen_by_failing);
    assert!(solid_description(&d)
        .await
        .starts_with("A solid-colour image"));
    // Each check is recorded as readiness records it.
    let rows = comfyd::db::backend_checks::latest_per_backend(&conn, v1 as i32)
        .await
        .expect("rows");
    let mut recorded: Vec<(String, bool)> =
        rows.iter().map(|r| (r.backend.clone(), r.passed)).collect();
    recorded.sort();
    let mut expected = vec![
        (name(&slow), true),
        (name(&fast), true),
        (name(&no_node), false),
    ];
    expected.sort();
    assert_eq!(recorded, expected);

    // A second release, all backends at once; then a rollback: a deployment of the first.
    let solid = dir.path().join("solid.toml");
    let original = std::fs::read_to_string(&solid).expect("read");
    std::fs::write(
        &solid,
        original.replace("A solid-colour image", "A plain image"),
    )
    .expect("write");
    let v2 = publish(&d).await;
    let (status, second) = deploy(&d, json!({"release": v2, "max_unavailable": 3})).await;
    assert_eq!(status, 202, "{second}");
    let id2 = second["id"].as_i64().expect("id");
    assert_eq!(second["previous_release"], v1, "{second}");
    // Steady submits while it runs: every one done, none lost.
    let mut during = Vec::new();
    for _ in 0..5 {
        during.push(submit(&d).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(until_terminal(&d, id2).await["state"], "succeeded");
    for row in all_done(&d, &conn, &during).await {
        assert!(row.release_version.is_some(), "{row:?}");
        assert_ne!(
            row.backend.as_deref(),
            Some(name(&no_node).as_str()),
            "{row:?}"
        );
    }
    assert!(solid_description(&d).await.starts_with("A plain image"));
    let task = submit(&d).await;
    assert_eq!(stamped(&conn, &task).await, Some(v2));
    // While a release is served, SIGHUP does not serve the folder.
    std::fs::write(
        &solid,
        original.replace("A solid-colour image", "A folder image"),
    )
    .expect("write");
    d.sighup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(solid_description(&d).await.starts_with("A plain image"));
    let (status, third) = deploy(&d, json!({"release": v1})).await;
    assert_eq!(status, 202, "{third}");
    let id3 = third["id"].as_i64().expect("id");
    assert_eq!(third["previous_release"], v2, "{third}");
    assert_eq!(until_terminal(&d, id3).await["state"], "succeeded");
    assert!(solid_description(&d)
        .await
        .starts_with("A solid-colour image"));
    let task = submit(&d).await;
    assert_eq!(stamped(&conn, &task).await, Some(v1));
    assert_eq!(
        comfyd::db::deployments::served(&conn)
            .await
            .expect("served"),
        Some(v1 as i32)
    );

    // History, newest first, without the backends.
    let (status, list) = call(&d, "GET", "/deployments", OPS, None).await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<i64> = list["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .filter_map(|x| x["id"].as_i64())
        .collect();
    assert_eq!(ids, [id3, id2, id1]);
    assert!(list["deployments"][0].get("backends").is_none(), "{list}");
    let (_, one) = call(&d, "GET", "/deployments?limit=1", OPS, None).await;
    assert_eq!(one["deployments"].as_array().map(Vec::len), Some(1));

    // A cancel: the deployment stops, the release served before keeps serving, the next may start.
    let (status, fourth) = deploy(&d, json!({"release": v2})).await;
    assert_eq!(status, 202, "{fourth}");
    let id4 = fourth["id"].as_i64().expect("id");
    let (status, cancelled) =
        call(&d, "POST", &format!("/deployments/{id4}/cancel"), OPS, None).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (_, later) = call(&d, "GET", &format!("/deployments/{id4}"), OPS, None).await;
    assert_eq!(later["state"], "cancelled", "{later}");
    assert_eq!(
        comfyd::db::deployments::served(&conn)
            .await
            .expect("served"),
        Some(v1 as i32)
    );
    let (status, body) = call(&d, "POST", &format!("/deployments/{id4}/cancel"), OPS, None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["deployment"]["id"], id4);

    // Refusals, each naming what is wrong.
    let (status, body) = deploy(&d, json!({"release": 999999})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["fields"][0]["field"], "release", "{body}");
    let (status, body) = deploy(&d, json!({"release": v1, "max_unavailable": 0})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["fields"][0]["field"], "max_unavailable", "{body}");
    let (status, body) = deploy(&d, json!({"version": v1})).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = call(
        &d,
        "POST",
        "/deployments",
        APP,
        Some(json!({"release": v1})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(&d, "GET", "/deployments", APP, None).await;
    assert_eq!(status, 403);
    let (status, body) = call(&d, "GET", "/deployments/999999", OPS, None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, _) = call(&d, "GET", "/deployments/abc", OPS, None).await;
    assert_eq!(status, 400);

    // After a restart the served release is still the newest succeeded deployment's.
    d.restart().await;
    assert!(solid_description(&d)
        .await
        .starts_with("A solid-colour image"));
    let task = submit(&d).await;
    assert_eq!(stamped(&conn, &task).await, Some(v1));
}

#[actix_web::test]
async fn a_release_is_deployed_one_at_a_time_and_rolled_back_sqlite() {
    a_release_is_deployed_one_at_a_time_and_rolled_back(TestDb::sqlite()).await;
}

#[actix_web::test]
async fn a_release_is_deployed_one_at_a_time_and_rolled_back_postgres() {
    a_release_is_deployed_one_at_a_time_and_rolled_back(TestDb::postgres().await).await;
}

/// No backend passes: the deployment fails, and what was served before still is.
#[actix_web::test]
async fn a_deployment_no_backend_passes_fails() {
    let no_node = Sim::start_with(20, &["--without-node", "VAEDecode"]).await;
    let dir = workflows_draft();
    let db = TestDb::sqlite();
    let d = daemon(&db, &[&no_node], dir.path()).await;
    let v = publish(&d).await;

    let (status, started) = deploy(&d, json!({"release": v})).await;
    assert_eq!(status, 202, "{started}");
    let done = until_terminal(&d, started["id"].as_i64().expect("id")).await;

    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(
        done["reason"].as_str(),
        Some(format!("no backend passed release {v}").as_str())
    );
    assert_eq!(backend(&done, &no_node)["state"], "failed");
    let conn = db.connect().await;
    assert_eq!(
        comfyd::db::deployments::served(&conn)
            .await
            .expect("served"),
        None
    );
    let task = submit(&d).await;
    assert_eq!(stamped(&conn, &task).await, None);
}

/// kill -9 while a backend is being checked: on restart the deployment is re-run from its checks
/// to a terminal state, with a record of each backend.
#[actix_web::test]
async fn a_deployment_killed_midway_is_resumed_on_restart() {
    let slow = Sim::start(3000).await;
    let dir = workflows_draft();
    let db = TestDb::sqlite();
    let mut d = daemon(&db, &[&slow], dir.path()).await;
    let v = publish(&d).await;
    let (status, started) = deploy(&d, json!({"release": v})).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_i64().expect("id");
    let since = Instant::now();
    loop {
        let (_, now) = call(&d, "GET", &format!("/deployments/{id}"), OPS, None).await;
        if now["backends"][0]["state"] == "checking" {
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(30), "{now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    d.kill9();
    let conn = db.connect().await;
    let midway = comfyd::db::deployments::get(&conn, id)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(midway.state, "checking");
    d.restart().await;

    let done = until_terminal(&d, id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(backend(&done, &slow)["state"], "switched", "{done}");
    let checks = comfyd::db::backend_checks::latest(&conn, v as i32, &name(&slow))
        .await
        .expect("read")
        .expect("a check recorded");
    assert!(checks.passed);
    let task = submit(&d).await;
    assert_eq!(stamped(&conn, &task).await, Some(v));
    let (status, body) = deploy(&d, json!({"release": v})).await;
    assert_eq!(status, 202, "{body}");
}

/// A backend that failed a later deployment of the served release no longer runs its tasks: a task
/// then waits, with one `waiting` event saying why, and runs once a deployment passes it again.
#[actix_web::test]
async fn a_task_no_up_backend_passed_waits_and_says_why() {
    let sim = Sim::start(20).await;
    let dir = workflows_draft();
    let db = TestDb::sqlite();
    let d = daemon(&db, &[&sim], dir.path()).await;
    let conn = db.connect().await;
    let v = publish(&d).await;
    let (_, first) = deploy(&d, json!({"release": v})).await;
    let first = until_terminal(&d, first["id"].as_i64().expect("id")).await;
    assert_eq!(first["state"], "succeeded", "{first}");
    // Its smoke run fails this time: it no longer passes v, which stays served.
    sim.script(json!({"fail_next": 1})).await;
    let (_, second) = deploy(&d, json!({"release": v})).await;
    let second = until_terminal(&d, second["id"].as_i64().expect("id")).await;
    assert_eq!(second["state"], "failed", "{second}");

    let task = submit(&d).await;
    assert_eq!(stamped(&conn, &task).await, Some(v));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (_, record) = call(&d, "GET", &format!("/tasks/{task}"), APP, None).await;
    assert_eq!(record["status"], "queued", "{record}");
    let events = comfyd::db::events::for_task(&conn, &task)
        .await
        .expect("events");
    let waiting: Vec<_> = events.iter().filter(|e| e.kind == "waiting").collect();
    assert_eq!(waiting.len(), 1, "{events:?}");
    assert!(
        waiting[0]
            .details
            .contains(&format!("no up backend passed release {v}")),
        "{:?}",
        waiting[0]
    );

    let (_, third) = deploy(&d, json!({"release": v})).await;
    let third = until_terminal(&d, third["id"].as_i64().expect("id")).await;
    assert_eq!(third["state"], "succeeded", "{third}");
    let rows = all_done(&d, &conn, std::slice::from_ref(&task)).await;
    assert_eq!(rows[0].backend.as_deref(), Some(name(&sim).as_str()));
}

//! Releases from outside: publishing the daemon's workflows folder over HTTP (new, unchanged, changed,
//! refused), listing and showing releases, admin keys only, `from` a simulator (its environment
//! recorded, or the publish refused naming what it lacks), on SQLite and PostgreSQL; and the CLI.

use std::path::Path;

use serde_json::{json, Value};

use crate::support::daemon::{self, Daemon, DaemonConfig};
use crate::support::db::TestDb;
use crate::support::sim::Sim;
use crate::support::workflows_draft;
use comfyd::access::hash_key;

const OPS: &str = "key-of-ops-0123456789";
const APP: &str = "key-of-app-0123456789";

/// A request with an optional bearer key; (status, body).
async fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let (status, _, body) = daemon::call(d, method, path, key, body).await;
    (status, body)
}

/// A workflow using the simulator's cleaner node class (which `--without-cleaner` lacks).
fn add_cleaner_workflow(dir: &Path) {
    std::fs::write(
        dir.join("clean.toml"),
        "name = \"clean\"\ndescription = \"uses the cleaner node\"\n[outputs]\nnodes = [\"2\"]\n",
    )
    .expect("write manifest");
    std::fs::write(
        dir.join("clean.json"),
        json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
            "3": {"class_type": "Clean input and output file", "inputs": {"images": ["1", 0]}},
        })
        .to_string(),
    )
    .expect("write graph");
}

fn field_reasons(body: &Value, field: &str) -> Vec<String> {
    body["fields"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .filter(|f| f["field"] == field)
                .filter_map(|f| f["reason"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn releases_are_published_listed_and_shown(db: TestDb) {
    // Arrange: a daemon serving a copy of the workflows, with an admin and a submit key; two
    // simulators, one without the cleaner node class.
    let sim = Sim::start(50).await;
    let bare = Sim::start_with(50, &["--without-cleaner"]).await;
    let dir = workflows_draft();
    let keys = format!("ops:admin:{},app:submit:{}", hash_key(OPS), hash_key(APP));
    let d = Daemon::start(DaemonConfig {
        endpoints: vec![sim.url.clone()],
        database_url: db.url().to_string(),
        workflows_dir: Some(dir.path().to_path_buf()),
        env: [("COMFYD_API_KEYS".to_string(), keys)].into(),
        ..Default::default()
    })
    .await;
    let (_, served_before) = call(&d, "GET", "/workflows/solid", Some(OPS), None).await;
    let admin = Some(OPS);

    // Act + Assert: the first publish makes release 1.
    let (status, first) = call(
        &d,
        "POST",
        "/releases",
        admin,
        Some(json!({"note": "first"})),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    let v1 = first["version"].as_i64().expect("version");
    let h1 = first["content_hash"].as_str().expect("hash").to_string();
    assert!(h1.starts_with("sha256:"), "{first}");
    assert_eq!(first["note"], "first");
    assert!(first["workflows"]
        .as_array()
        .expect("workflows")
        .contains(&json!("solid")));
    assert!(first["needs"]["node_classes"]
        .as_array()
        .expect("classes")
        .contains(&json!("EmptyImage")));
    assert!(first["needs"]["models"]
        .as_array()
        .expect("models")
        .contains(&json!({"input": "ckpt_name", "file": "v1-5-pruned-emaonly.safetensors"})));
    assert!(first["environment"].is_null());
    assert!(first.get("files").is_none(), "{first}");

    // The same content again: the same release, unchanged (its note too); an empty body is fine.
    let (status, again) = call(
        &d,
        "POST",
        "/releases",
        admin,
        Some(json!({"note": "again"})),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["version"].as_i64(), again["content_hash"].as_str()),
        (Some(v1), Some(h1.as_str()))
    );
    assert_eq!(again["note"], "first");
    let (status, _) = call(&d, "POST", "/releases", admin, None).await;
    assert_eq!(status, 200);

    // A changed draft: a new version and hash; what is served does not change.
    let solid = dir.path().join("solid.toml");
    let original = std::fs::read_to_string(&solid).expect("read");
    std::fs::write(
        &solid,
        original.replace("A solid-colour image", "A plain image"),
    )
    .expect("write");
    let (status, second) = call(&d, "POST", "/releases", admin, Some(json!({}))).await;
    assert_eq!(status, 201, "{second}");
    let v2 = second["version"].as_i64().expect("version");
    assert!(v2 > v1);
    assert_ne!(second["content_hash"].as_str(), Some(h1.as_str()));
    let (_, served_after) = call(&d, "GET", "/workflows/solid", Some(OPS), None).await;
    assert_eq!(served_after, served_before);

    // From a simulator: its environment is recorded.
    std::fs::write(
        dir.path().join("batch3.toml"),
        std::fs::read_to_string(dir.path().join("batch3.toml")).expect("read") + "\n",
    )
    .expect("write");
    let (status, third) = call(
        &d,
        "POST",
        "/releases",
        admin,
        Some(json!({"from": sim.url, "note": "from sim"})),
    )
    .await;
    assert_eq!(status, 201, "{third}");
    let v3 = third["version"].as_i64().expect("version");
    assert_eq!(third["source"], sim.url.as_str());
    let env = &third["environment"];
    assert_eq!(env["comfyui_version"], "0.3.64", "{env}");
    assert!(env["node_class_count"].as_u64().unwrap_or(0) > 10, "{env}");
    assert!(env["node_classes"]
        .as_array()
        .expect("classes")
        .contains(&json!("Clean input and output file")));
    assert!(
        env["models"]["checkpoints"]
            .as_array()
            .expect("checkpoints")
            .contains(&json!("v1-5-pruned-emaonly.safetensors")),
        "{env}"
    );

    // A draft using a node class the dev server lacks is refused, naming it; nothing is stored.
    add_cleaner_workflow(dir.path());
    let (status, refused) = call(
        &d,
        "POST",
        "/releases",
        admin,
        Some(json!({"from": bare.url})),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    let reasons = field_reasons(&refused, "from");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("`Clean input and output file`")),
        "{refused}"
    );
    // A bad URL is refused naming the field.
    let (status, bad_url) = call(
        &d,
        "POST",
        "/releases",
        admin,
        Some(json!({"from": "http://u:p@host:8188"})),
    )
    .await;
    assert_eq!(status, 422, "{bad_url}");
    assert_eq!(field_reasons(&bad_url, "from").len(), 1, "{bad_url}");
    // A body that is not the object it should be: 400.
    let (status, _) = call(&d, "POST", "/releases", admin, Some(json!({"fron": "x"}))).await;
    assert_eq!(status, 400);

    // A draft that does not load: 422 listing its problems.
    std::fs::write(dir.path().join("broken.toml"), "name = \"broken\"\n").expect("write");
    let (status, broken) = call(&d, "POST", "/releases", admin, Some(json!({}))).await;
    assert_eq!(status, 422, "{broken}");
    assert!(
        field_reasons(&broken, "workflows")
            .iter()
            .any(|r| r.contains("broken.toml")),
        "{broken}"
    );
    std::fs::remove_file(dir.path().join("broken.toml")).expect("remove");

    // Listed newest first, nothing stored by the refused publishes.
    let (status, list) = call(&d, "GET", "/releases", admin, None).await;
    assert_eq!(status, 200, "{list}");
    let versions: Vec<i64> = list["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .filter_map(|r| r["version"].as_i64())
        .collect();
    assert_eq!(versions, [v3, v2, v1]);
    let (_, one) = call(&d, "GET", "/releases?limit=1", admin, None).await;
    assert_eq!(one["releases"].as_array().map(Vec::len), Some(1));
    let (status, _) = call(&d, "GET", "/releases?limit=0", admin, None).await;
    assert_eq!(status, 422);

    // Shown with its files: release 1 holds the draft as it was then.
    let (status, shown) = call(&d, "GET", &format!("/releases/{v1}"), admin, None).await;
    assert_eq!(status, 200, "{shown}");
    let files = shown["files"].as_array().expect("files");
    let solid_then = files.iter().find(|f| f["name"] == "solid").expect("solid");
    assert_eq!(solid_then["manifest"], original.as_str());
    assert_eq!(shown["content_hash"], h1.as_str());
    let (status, missing) = call(&d, "GET", "/releases/999999", admin, None).await;
    assert_eq!(
        (status, missing["error"].as_str()),
        (404, Some("not_found")),
        "{missing}"
    );
    for bad in ["abc", "0", "-1", "1.5"] {
        let (status, body) = call(&d, "GET", &format!("/releases/{bad}"), admin, None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains("version"),
            "{body}"
        );
    }

    // Admin keys only.
    for (method, path) in [
        ("POST", "/releases"),
        ("GET", "/releases"),
        ("GET", "/releases/1"),
    ] {
        let (status, _) = call(&d, method, path, Some(APP), Some(json!({}))).await;
        assert_eq!(status, 403, "{method} {path} with a submit key");
        let (status, _) = call(&d, method, path, None, Some(json!({}))).await;
        assert_eq!(status, 401, "{method} {path} without a key");
    }
}

#[actix_web::test]
async fn releases_are_published_listed_and_shown_sqlite() {
    releases_are_published_listed_and_shown(TestDb::sqlite()).await;
}

#[actix_web::test]
async fn releases_are_published_listed_and_shown_postgres() {
    releases_are_published_listed_and_shown(TestDb::postgres().await).await;
}

/// Runs `comfyd release ...` on the test database and draft; (success, its output).
fn release_cli(db_url: &str, draft: &Path, args: &[&str]) -> (bool, String) {
    let args: Vec<&str> = ["release"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    daemon::cli(
        &args,
        &[
            ("DATABASE_URL", db_url.as_ref()),
            ("COMFYD_WORKFLOWS_DIR", draft.as_os_str()),
        ],
    )
}

#[actix_web::test]
async fn the_cli_publishes_and_lists_releases() {
    // Arrange
    let db = TestDb::sqlite();
    let dir = workflows_draft();

    // Act + Assert: a new release, then the same one.
    let (ok, out) = release_cli(db.url(), dir.path(), &["publish", "--note", "from the cli"]);
    assert!(ok, "{out}");
    assert!(out.contains("published release 1 sha256:"), "{out}");
    let (ok, out) = release_cli(db.url(), dir.path(), &["publish"]);
    assert!(ok, "{out}");
    assert!(out.contains("the same content as version 1"), "{out}");

    let (ok, out) = release_cli(db.url(), dir.path(), &["list"]);
    assert!(ok, "{out}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(
        rows[0].trim_start().starts_with("1 ") && rows[0].contains("from the cli"),
        "{out}"
    );

    let (ok, out) = release_cli(db.url(), dir.path(), &["show", "1"]);
    assert!(ok, "{out}");
    let shown: Value = serde_json::from_str(&out).expect("show prints JSON");
    assert_eq!(shown["version"], 1);

    // A draft that does not load: exit code 1, every problem listed.
    std::fs::write(dir.path().join("broken.toml"), "name = \"broken\"\n").expect("write");
    let (ok, out) = release_cli(db.url(), dir.path(), &["publish"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAILED") && out.contains("broken.toml"),
        "{out}"
    );
}

/// Two publishes of the same content at once (two instances on one database, say) meet at the
/// unique index: one new version, and both get it.
async fn the_same_content_published_at_once_is_one_release(db: TestDb) {
    use comfyd::db::releases::{self, NewRelease, Outcome};
    // Arrange
    let conn = comfyd::db::connect::open(db.url(), 4).await.expect("open");
    let row = |note: &str| NewRelease {
        content_hash: "sha256:same".into(),
        note: Some(note.into()),
        source: None,
        files: "[]".into(),
        needs: r#"{"node_classes":[],"models":[]}"#.into(),
        environment: None,
        created_at: chrono::Utc::now(),
    };
    // Act
    let (a, b) = futures_util::join!(
        releases::insert_or_existing(&conn, row("a")),
        releases::insert_or_existing(&conn, row("b"))
    );
    let (a, b) = (a.expect("a"), b.expect("b"));
    // Assert
    assert_eq!(a.0.version, b.0.version);
    let mut outcomes = [a.1, b.1];
    outcomes.sort_by_key(|o| *o == Outcome::Existing);
    assert_eq!(outcomes, [Outcome::Created, Outcome::Existing]);
    assert_eq!(releases::list(&conn, 10).await.expect("list").len(), 1);
    let latest = releases::latest(&conn).await.expect("latest").expect("one");
    assert_eq!(latest.version, a.0.version);
}

#[actix_web::test]
async fn the_same_content_published_at_once_is_one_release_sqlite() {
    the_same_content_published_at_once_is_one_release(TestDb::sqlite()).await;
}

#[actix_web::test]
async fn the_same_content_published_at_once_is_one_release_postgres() {
    the_same_content_published_at_once_is_one_release(TestDb::postgres().await).await;
}

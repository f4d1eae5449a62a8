//! Database outages mid-run: a PostgreSQL server of the test's own stopped (immediate mode) for
//! 15 s, and the SQLite file made unwritable for 15 s, while tasks are submitted at about 20 a
//! second to two simulators. Submits must answer within 2 s throughout (503 with Retry-After while
//! the database is gone), `/readyz` must say 503 during and 200 after, `/healthz` 200 all along,
//! and every accepted task must end exactly once, with its webhook, within 30 s of the database's
//! return.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::daemon::{Daemon, DaemonConfig};
use crate::support::db::TestDb;
use crate::support::free_port;
use crate::support::sim::Sim;
use crate::support::webhook::WebhookReceiver;

/// Tasks submitted in a run, at [`SUBMIT_EVERY`]; the outage begins once [`BEFORE_OUTAGE`] are in.
const TASKS: usize = 120;
const BEFORE_OUTAGE: usize = 40;
const SUBMIT_EVERY: Duration = Duration::from_millis(50);
const OUTAGE: Duration = Duration::from_secs(15);
/// Longest a submit may take, outage or not.
const SUBMIT_BOUND: Duration = Duration::from_secs(2);
/// Every accepted task ends within this after the database is back.
const SETTLE_BOUND: Duration = Duration::from_secs(30);

/// A PostgreSQL cluster of the test's own on a free port, so that it can be stopped and started.
/// Its binaries run as the `postgres` user when the test runs as root (PostgreSQL refuses root).
struct PgCluster {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PgCluster {
    /// The newest installed server's binaries, if any.
    fn bin_dir() -> Option<PathBuf> {
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, bin)| bin)
    }

    /// initdb and start; None when no PostgreSQL binaries are installed.
    fn start() -> Option<PgCluster> {
        let bin = Self::bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("comfyd-pg-")
            .tempdir()
            .expect("cluster dir");
        let as_postgres =
            String::from_utf8_lossy(&Command::new("id").arg("-u").output().expect("id -u").stdout)
                .trim()
                == "0";
        if as_postgres {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path()));
        }
        let cluster = PgCluster {
            dir,
            bin,
            port: free_port(),
            as_postgres,
        };
        let data = cluster.data();
        run(cluster
            .pg("initdb")
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data));
        cluster.pg_start();
        Some(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn pg_start(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(self
            .pg("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"]));
    }

    /// Stops the server at once: every connection is cut, nothing is shut down cleanly.
    fn stop_immediate(&self) {
        run(self
            .pg("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"]));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self
            .pg("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// Runs a command; panics with its output unless it succeeds.
fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes SQLite's database file and its write-ahead log immutable (`chattr +i`), which stops every
/// write to them even for root, who ignores file modes. The `-shm` index is left alone: SQLite
/// maps it into memory, and a write to a mapping of an immutable file kills the process (SIGBUS).
/// Undone on drop, so the folder can be removed after a failed test.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// Whether `chattr +i` works in `dir`'s filesystem (ext4 does, tmpfs and overlayfs may not).
    fn supported(dir: &Path) -> Result<(), String> {
        let probe = dir.join("chattr-probe");
        std::fs::write(&probe, b"x").map_err(|e| e.to_string())?;
        let out = Command::new("chattr")
            .arg("+i")
            .arg(&probe)
            .output()
            .map_err(|e| format!("running chattr: {e}"))?;
        let _ = Command::new("chattr").arg("-i").arg(&probe).output();
        let _ = std::fs::remove_file(&probe);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn set(db: &Path) -> Immutable {
        let files = vec![
            db.to_path_buf(),
            PathBuf::from(format!("{}-wal", db.display())),
        ];
        for f in &files {
            run(Command::new("chattr").arg("+i").arg(f));
        }
        Immutable(files)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(f).output();
        }
    }
}

/// One submit attempt and how it was answered.
struct Attempt {
    at: Instant,
    took: Duration,
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

/// One look at `/readyz` and `/healthz`.
struct Look {
    at: Instant,
    ready: u16,
    ready_body: Value,
    health: u16,
}

async fn get(url: &str) -> (u16, Value) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    match client.get(url).send().await {
        Ok(mut resp) => (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        ),
        Err(_) => (0, Value::Null),
    }
}

/// Looks at `/readyz` and `/healthz` every 200 ms until `done`.
async fn watch_readiness(base: String, done: Rc<std::cell::Cell<bool>>) -> Vec<Look> {
    let mut looks = Vec::new();
    while !done.get() {
        let at = Instant::now();
        let (ready, ready_body) = get(&format!("{base}/readyz")).await;
        let (health, _) = get(&format!("{base}/healthz")).await;
        looks.push(Look {
            at,
            ready,
            ready_body,
            health,
        });
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    looks
}

async fn submit(api: &str, hook: &str, i: usize) -> Attempt {
    let body = json!({ "service_type": "solid", "client_task_id": format!("outage-{i}"),
        "client_callback_url": hook, "params": { "width": 8, "height": 8, "color": i } });
    let at = Instant::now();
    let sent = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish()
        .post(api)
        .send_json(&body)
        .await;
    match sent {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = resp.json().await.unwrap_or(Value::Null);
            Attempt {
                at,
                took: at.elapsed(),
                status,
                retry_after,
                body,
            }
        }
        Err(e) => Attempt {
            at,
            took: at.elapsed(),
            status: 0,
            retry_after: None,
            body: json!({ "client_error": e.to_string() }),
        },
    }
}

/// What a run observed.
struct Run {
    attempts: Vec<Attempt>,
    looks: Vec<Look>,
    /// comfyd ids of the accepted tasks, in submit order.
    ids: Vec<String>,
    outage: (Instant, Instant),
}

/// Submits [`TASKS`] tasks at about 20 a second (a task answered 503 is tried again at the next
/// tick, with the same client_task_id, as a client honouring the 503 would), runs `begin` once
/// [`BEFORE_OUTAGE`] are accepted and `end` [`OUTAGE`] later, and watches readiness meanwhile.
async fn run_through_outage(
    daemon: &Daemon,
    hook: &WebhookReceiver,
    begin: impl FnOnce(),
    end: impl FnOnce(),
) -> Run {
    let done = Rc::new(std::cell::Cell::new(false));
    let watcher = actix_rt::spawn(watch_readiness(daemon.base.clone(), done.clone()));
    let mut attempts = Vec::new();
    let mut ids = Vec::new();
    let mut begin = Some(begin);
    let mut end = Some(end);
    let mut outage_start = None;
    let mut outage_end = None;
    let started = Instant::now();
    let mut next = started;
    while ids.len() < TASKS || end.is_some() {
        if ids.len() == BEFORE_OUTAGE {
            if let Some(b) = begin.take() {
                b();
                outage_start = Some(Instant::now());
            }
        }
        if outage_start.is_some_and(|s| s.elapsed() >= OUTAGE) {
            if let Some(e) = end.take() {
                e();
                outage_end = Some(Instant::now());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "submitting took over 120 s ({} accepted)\n{}",
            ids.len(),
            daemon.log()
        );
        if ids.len() < TASKS {
            let a = submit(&daemon.api, &hook.url, ids.len()).await;
            if a.status == 200 {
                ids.push(a.body["id"].as_str().expect("id").to_string());
            }
            attempts.push(a);
        }
        next += SUBMIT_EVERY;
        let now = Instant::now();
        if next > now {
            actix_rt::time::sleep(next - now).await;
        } else {
            next = now;
        }
    }
    done.set(true);
    let looks = watcher.await.expect("readiness watcher");
    Run {
        attempts,
        looks,
        ids,
        outage: (
            outage_start.expect("outage began"),
            outage_end.expect("outage ended"),
        ),
    }
}

/// Everything the outage must not have broken.
async fn assert_outage_handled(run: &Run, daemon: &Daemon, hook: &WebhookReceiver, db_url: &str) {
    let (down, back) = run.outage;
    let log_tail = || {
        let log = daemon.log();
        if std::env::var_os("COMFYD_TEST_SHOW_LOG").is_some() {
            return log;
        }
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };

    // Every submit answered within the bound: 200, or 503 with Retry-After in the API's error shape.
    let slowest = run
        .attempts
        .iter()
        .map(|a| a.took)
        .max()
        .unwrap_or_default();
    assert!(
        slowest < SUBMIT_BOUND,
        "a submit took {slowest:?}\n{}",
        log_tail()
    );
    for a in &run.attempts {
        match a.status {
            200 => {}
            503 => {
                assert_eq!(a.body["error"], "unavailable", "{}", a.body);
                assert!(a.body["message"].is_string(), "{}", a.body);
                assert!(
                    a.retry_after
                        .as_deref()
                        .is_some_and(|v| v.parse::<u64>().is_ok()),
                    "503 without Retry-After: {:?}",
                    a.retry_after
                );
            }
            other => panic!("submit answered {other}: {}\n{}", a.body, log_tail()),
        }
    }
    // While the database was gone, nothing could be recorded: every submit then was refused.
    let during: Vec<&Attempt> = run
        .attempts
        .iter()
        .filter(|a| a.at > down && a.at + a.took < back)
        .collect();
    assert!(
        during.len() > 100,
        "only {} submits during the outage, taking {:?}\n{}",
        during.len(),
        during
            .iter()
            .map(|a| (a.status, a.took.as_millis()))
            .collect::<Vec<_>>(),
        log_tail()
    );
    assert!(
        during.iter().all(|a| a.status == 503),
        "a submit was accepted while the database was gone"
    );

    // /readyz: 503 saying why during (after a moment for the first failure to be seen), 200 after;
    // /healthz: 200 all along.
    let grace = Duration::from_secs(2);
    let looks_during: Vec<&Look> = run
        .looks
        .iter()
        .filter(|l| l.at > down + grace && l.at < back)
        .collect();
    assert!(looks_during.len() > 10, "too few looks at /readyz");
    for l in &looks_during {
        assert_eq!(l.ready, 503, "/readyz during the outage: {}", l.ready_body);
        assert!(
            l.ready_body["reasons"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("database_unreachable"))),
            "{}",
            l.ready_body
        );
        assert_eq!(l.ready_body["error"], "not_ready");
    }
    assert!(
        run.looks.iter().all(|l| l.health == 200),
        "/healthz was not 200 all along"
    );
    let ready_again = run
        .looks
        .iter()
        .find(|l| l.at > back && l.ready == 200)
        .map(|l| l.at - back);
    assert!(
        ready_again.is_some_and(|d| d < Duration::from_secs(10)),
        "/readyz not 200 within 10 s of the database's return: {ready_again:?}"
    );
    assert_eq!(run.looks.last().map(|l| l.ready), Some(200));

    // Every accepted task ends, once, with one webhook, within the bound after the database is back.
    assert_eq!(run.ids.len(), TASKS);
    let deadline = back + SETTLE_BOUND;
    for id in &run.ids {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .max(1);
        let t = daemon.wait_terminal(id, left).await;
        assert_eq!(t["status"], "done", "{t}\n{}", log_tail());
    }
    eprintln!(
        "{} submits, {} refused while the database was gone, slowest {slowest:?}; /readyz 200 again \
         {ready_again:?} and every task ended {:?} after the database's return",
        run.attempts.len(),
        during.len(),
        back.elapsed()
    );
    if std::env::var_os("COMFYD_TEST_SHOW_LOG").is_some() {
        eprintln!("{}", daemon.log());
    }
    let db = sea_orm::Database::connect(db_url).await.expect("connect");
    let (_, all) = daemon.get("/tasks?limit=1").await;
    assert_eq!(all["total"], TASKS, "tasks recorded: {all}");
    for id in &run.ids {
        crate::support::assert_one_terminal_event(&db, id).await;
        let hooks = crate::support::eventually(
            deadline
                .saturating_duration_since(Instant::now())
                .as_secs()
                .max(1),
            &format!("the webhook of {id}"),
            || async {
                let got = hook.for_task(id);
                (!got.is_empty()).then_some(got)
            },
        )
        .await;
        let distinct: HashSet<&str> = hooks
            .iter()
            .filter_map(|h| h.header("webhook-id"))
            .collect();
        assert_eq!(distinct.len(), 1, "task {id} notified as {distinct:?}");
        assert!(hooks.iter().all(|h| h.body["status"] == "done"));
    }
}

async fn start_daemon(sims: &[Sim], database_url: String) -> Daemon {
    Daemon::start(DaemonConfig {
        endpoints: sims.iter().map(|s| s.url.clone()).collect(),
        database_url,
        ..Default::default()
    })
    .await
}

#[actix_web::test]
async fn postgres_stopped_mid_run_refuses_submits_quickly_and_loses_no_task() {
    let Some(pg) = PgCluster::start() else {
        eprintln!(
            "SKIPPED: no PostgreSQL binaries in /usr/lib/postgresql/*/bin (apt-get install postgresql)"
        );
        return;
    };
    let sims = vec![Sim::start(200).await, Sim::start(200).await];
    let hook = WebhookReceiver::start().await;
    let daemon = start_daemon(&sims, pg.url()).await;

    let run = run_through_outage(&daemon, &hook, || pg.stop_immediate(), || pg.pg_start()).await;

    assert_outage_handled(&run, &daemon, &hook, &pg.url()).await;
}

#[actix_web::test]
async fn an_unwritable_sqlite_file_refuses_submits_quickly_and_loses_no_task() {
    let db = TestDb::sqlite();
    let path = PathBuf::from(
        db.url()
            .strip_prefix("sqlite://")
            .and_then(|p| p.split('?').next())
            .expect("sqlite path"),
    );
    if let Err(why) = Immutable::supported(path.parent().expect("db folder")) {
        eprintln!(
            "SKIPPED: cannot make the SQLite file unwritable here: `chattr +i` failed in {} ({why}); \
             this test needs root and a filesystem with the immutable attribute (ext4, xfs, btrfs)",
            path.parent().map(|p| p.display().to_string()).unwrap_or_default()
        );
        return;
    }
    let sims = vec![Sim::start(200).await, Sim::start(200).await];
    let hook = WebhookReceiver::start().await;
    let daemon = start_daemon(&sims, db.url().to_string()).await;

    let guard = std::cell::RefCell::new(None);
    let run = run_through_outage(
        &daemon,
        &hook,
        || *guard.borrow_mut() = Some(Immutable::set(&path)),
        || drop(guard.borrow_mut().take()),
    )
    .await;

    assert_outage_handled(&run, &daemon, &hook, db.url()).await;
}

//! The real `comfyd` binary as its own process on a free port, configured through environment
//! variables (the original service's names where they exist), with helpers for its API.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::{eventually, free_port};

/// How a test wants its daemon.
#[derive(Clone, Default)]
pub struct DaemonConfig {
    pub endpoints: Vec<String>,
    pub database_url: String,
    /// Extra environment variables (S3_BUCKET, COMFYD_MAX_IN_FLIGHT, ...).
    pub env: HashMap<String, String>,
    /// Workflows folder; default: the repository's `workflows/`.
    pub workflows_dir: Option<PathBuf>,
    /// A `.env` written into the daemon's working folder (`{port}` becomes its port). With one, the
    /// endpoints, port and database come from that file instead of environment variables.
    pub dotenv: Option<String>,
}

pub struct Daemon {
    pub port: u16,
    pub base: String,
    pub api: String,
    pub data: TempDir,
    cfg: DaemonConfig,
    child: Option<Child>,
}

impl Daemon {
    pub async fn start(cfg: DaemonConfig) -> Daemon {
        let data = tempfile::tempdir().expect("daemon data dir");
        let port = free_port();
        let mut d = Daemon {
            port,
            base: format!("http://127.0.0.1:{port}"),
            api: format!("http://127.0.0.1:{port}/api/v1"),
            data,
            cfg,
            child: None,
        };
        d.spawn().await;
        d
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    pub fn fallback_dir(&self) -> PathBuf {
        self.data.path().join("failed")
    }

    async fn spawn(&mut self) {
        let workflows = self
            .cfg
            .workflows_dir
            .clone()
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("comfyd.log"))
            .expect("daemon log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfyd"));
        cmd.current_dir(self.data.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("COMFYD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        match &self.cfg.dotenv {
            Some(text) => std::fs::write(
                self.data.path().join(".env"),
                text.replace("{port}", &self.port.to_string()),
            )
            .expect("write .env"),
            None => {
                cmd.env("SERVICE_PORT", self.port.to_string())
                    .env("COMFYUI_ENDPOINTS", self.cfg.endpoints.join(","))
                    .env("DATABASE_URL", &self.cfg.database_url);
            }
        }
        cmd.env("COMFYD_HOST", "127.0.0.1")
            .env("COMFYD_DATA_DIR", self.data.path())
            .env("COMFYD_WORKFLOWS_DIR", workflows)
            .env("COMFYD_HTTP_WORKERS", "2")
            .env("COMFYD_RECONNECT_MAX_MS", "500")
            .env("COMFYD_WEBHOOK_FIRST_BACKOFF_MS", "200")
            .env("COMFYD_WEBHOOK_MAX_BACKOFF_SECS", "1")
            .envs(&self.cfg.env)
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn comfyd"));
        let health = format!("{}/healthz", self.base);
        let log_path = self.data.path().join("comfyd.log");
        eventually(
            30,
            &format!("comfyd /healthz (log: {})", log_path.display()),
            || {
                let url = health.clone();
                async move {
                    let resp = awc::Client::new().get(url).send().await.ok()?;
                    resp.status().is_success().then_some(())
                }
            },
        )
        .await;
    }

    /// The daemon's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("comfyd.log")).unwrap_or_default()
    }

    /// The process id while the daemon runs (to send it signals).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGHUP (reload the workflows); panics when the daemon is not running.
    pub fn sighup(&self) {
        let pid = self.pid().expect("daemon is running");
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP {pid} failed");
    }

    /// SIGKILL: no shutdown, nothing flushed beyond what was committed.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().ok()
    }

    /// Starts the same daemon again (same port, data folder and database).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let mut resp = awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish()
            .post(format!("{}{path}", self.api))
            .send_json(body)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.json().limit(64 << 20).await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let mut resp = awc::Client::new()
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.json().limit(64 << 20).await.unwrap_or(Value::Null);
        (status, body)
    }

    /// `POST {prefix}` with the original body; panics unless accepted.
    pub async fn submit(&self, body: Value) -> Value {
        let (status, reply) = self.post("", &body).await;
        assert_eq!(status, 200, "submit refused: {reply}");
        reply
    }

    pub async fn task(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/tasks/{id}")).await;
        assert_eq!(status, 200, "GET task {id}: {body}");
        body
    }

    /// Waits until the task is done, failed or cancelled, and returns it; on timeout the panic shows
    /// the task and the end of the daemon's log.
    pub async fn wait_terminal(&self, id: &str, secs: u64) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.task(id).await;
            if matches!(t["status"].as_str(), Some("done" | "failed" | "cancelled")) {
                return t;
            }
            if std::time::Instant::now() > deadline {
                let log = self.log();
                let tail: Vec<&str> = log
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!(
                    "task {id} did not end in {secs} s: {t}\n--- comfyd log (tail) ---\n{}",
                    tail.join("\n")
                );
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What a Rust process writes to stderr when it panics or aborts: any of these in a daemon's log
/// fails the test that ran it.
const PANIC_MARKS: [&str; 4] = [
    "panicked at",
    "fatal runtime error",
    "has overflowed its stack",
    "RUST_BACKTRACE",
];

impl Daemon {
    /// Every line of the daemon's log (all its runs) that shows a panic or an abort.
    pub fn panics(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| PANIC_MARKS.iter().any(|mark| line.contains(mark)))
            .map(str::to_owned)
            .collect()
    }

    /// Fails the test if the daemon's log shows a panic so far.
    pub fn assert_no_panics(&self) {
        let panics = self.panics();
        assert!(
            panics.is_empty(),
            "comfyd panicked (log: {}):\n{}",
            self.data.path().join("comfyd.log").display(),
            panics.join("\n")
        );
    }

    /// The daemon's memory from /proc: (VmHWM, VmRSS) in bytes, peak and current resident set.
    pub fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
        };
        Some((field("VmHWM:")?, field("VmRSS:")?))
    }
}

/// A request to the daemon's API (`path` after the route prefix) with an optional bearer key and
/// JSON body; answers (status, `WWW-Authenticate`, body as JSON or `null`). Bounded: a 120 s
/// timeout, a 16 MiB body.
pub async fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(120))
        .finish();
    let url = format!("{}{path}", d.api);
    let mut req = match method {
        "POST" => client.post(url),
        _ => client.get(url),
    };
    if let Some(k) = key {
        req = req.insert_header(("authorization", format!("Bearer {k}")));
    }
    let mut resp = match body {
        Some(b) => req.send_json(&b).await,
        None => req.send().await,
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.json().limit(16 << 20).await.unwrap_or(Value::Null);
    (status, challenge, body)
}

/// Runs `comfyd <args>` from an empty working folder with only PATH and `env` set; answers
/// (success, standard output followed by standard error).
pub fn cli(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> (bool, String) {
    let cwd = tempfile::tempdir().expect("cwd");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_comfyd"));
    cmd.args(args)
        .current_dir(cwd.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run comfyd");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Every test that ran a daemon checks its log, whatever it asserted itself. Not while the
        // test is already failing: a panic during that unwinding would abort the whole run.
        if !std::thread::panicking() {
            self.assert_no_panics();
        }
    }
}

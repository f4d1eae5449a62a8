//! ComfyUI simulators: the `comfy-sim` binary, each in its own process so a test can kill it (-9)
//! and start it again on the same port and data folder, as a real ComfyUI restart would.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

pub struct Sim {
    pub port: u16,
    pub url: String,
    data: TempDir,
    exec_ms: u64,
    child: Option<Child>,
}

impl Sim {
    /// Starts a simulator whose prompts take `exec_ms` each.
    pub async fn start(exec_ms: u64) -> Sim {
        let data = tempfile::tempdir().expect("sim data dir");
        let mut sim = Sim {
            port: 0,
            url: String::new(),
            data,
            exec_ms,
            child: None,
        };
        sim.spawn(0);
        sim
    }

    fn spawn(&mut self, port: u16) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_comfy-sim"))
            .args([
                "--port",
                &port.to_string(),
                "--exec-ms",
                &self.exec_ms.to_string(),
            ])
            .arg("--data-dir")
            .arg(self.data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn comfy-sim");
        let stdout = child.stdout.take().expect("sim stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("sim banner");
        let port: u16 = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected comfy-sim banner {line:?}"));
        self.port = port;
        self.url = format!("http://127.0.0.1:{port}");
        self.child = Some(child);
    }

    /// Kills the process at once (SIGKILL): sockets drop, queue and history are gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and data folder (files survive, nothing else does).
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port;
        for _ in 0..50 {
            // The port is free again once the old process is fully gone.
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        self.spawn(port);
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.path().to_path_buf()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let mut resp = awc::Client::new()
            .post(format!("{}{path}", self.url))
            .send_json(&body)
            .await
            .unwrap_or_else(|e| panic!("sim {path}: {e}"));
        resp.json().limit(64 << 20).await.unwrap_or(Value::Null)
    }

    pub async fn get(&self, path: &str) -> Value {
        let mut resp = awc::Client::new()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("sim {path}: {e}"));
        resp.json().limit(64 << 20).await.unwrap_or(Value::Null)
    }

    /// `POST /sim/config` (`exec_ms`, `paused`).
    pub async fn config(&self, body: Value) {
        self.post("/sim/config", body).await;
    }

    /// `POST /sim/script` (`fail_next`, `reject_next`, `hang_next`).
    pub async fn script(&self, body: Value) {
        self.post("/sim/script", body).await;
    }

    /// `POST /sim/hostile` (hostile mode: `names_next`, `uploads_next`, `garbage_next`,
    /// `oversized_next`, `foreign_next`, ...; see the simulator's hostile.rs).
    pub async fn hostile(&self, body: Value) {
        self.post("/sim/hostile", body).await;
    }

    /// The prompts this simulator received (`GET /sim/stats`).
    pub async fn prompts(&self) -> Vec<Value> {
        self.get("/sim/stats").await["prompts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The graph a prompt ran with, from `/history/{id}`.
    pub async fn graph_of(&self, prompt_id: &str) -> Value {
        self.get(&format!("/history/{prompt_id}")).await[prompt_id]["prompt"][2].clone()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill();
    }
}

//! A real S3-compatible server for tests: `s3s-fs` on a free port over a temporary folder.
//!
//! The binary comes from `S3S_FS_BIN`, else `s3s-fs` on `PATH`, else `~/.cargo/bin/s3s-fs`
//! (`.ci/run` installs it; by hand: `cargo install s3s-fs@0.14.1 --features binary --locked`).
//! It checks request signatures, so a test with wrong keys fails as it would against S3.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use comfyd::blob::S3Settings;
use tempfile::TempDir;

/// How long `start`/`restart` wait for the server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `s3s-fs`; killed on drop.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Access key the server accepts.
    pub access_key: String,
    /// Secret key the server accepts.
    pub secret_key: String,
    /// Holds the data folder (`data/`) and the server's log (`s3s-fs.log`).
    root: TempDir,
    port: u16,
    child: Option<Child>,
}

impl S3Server {
    /// Starts a server on a free port over a new temporary folder and waits until it answers.
    pub async fn start() -> S3Server {
        let root = tempfile::tempdir().expect("temporary folder for s3s-fs");
        std::fs::create_dir(root.path().join("data")).expect("data folder");
        let mut server = S3Server {
            endpoint: String::new(),
            access_key: format!("AK{}", rand::random::<u32>()),
            secret_key: format!("SK{}", uuid::Uuid::new_v4().simple()),
            root,
            port: 0,
            child: None,
        };
        // The free port can be taken between our probe and the server's bind: try a few.
        for _ in 0..5 {
            server.port = free_port();
            server.endpoint = format!("http://127.0.0.1:{}", server.port);
            if server.spawn_and_wait().await {
                return server;
            }
        }
        panic!("s3s-fs did not start; see {}", server.log_path().display());
    }

    /// Settings for a comfyd `BlobStore::s3` that writes to `bucket` on this server.
    pub fn settings(&self, bucket: &str) -> S3Settings {
        S3Settings {
            bucket: bucket.to_owned(),
            region: "us-east-1".to_owned(),
            endpoint_url: Some(self.endpoint.clone()),
            force_path_style: true,
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(self.secret_key.clone()),
            key_prefix: String::new(),
        }
    }

    fn client(&self) -> aws_sdk_s3::Client {
        self.settings("unused").client()
    }

    /// Creates a bucket.
    pub async fn create_bucket(&self, name: &str) {
        self.client()
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {name}: {e:?}"));
    }

    /// Every key in `bucket`, sorted.
    pub async fn list_keys(&self, bucket: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut pages = self
            .client()
            .list_objects_v2()
            .bucket(bucket)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|e| panic!("list {bucket}: {e:?}"));
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        keys.sort();
        keys
    }

    /// An object's bytes and content type (empty if the server stored none).
    pub async fn get(&self, bucket: &str, key: &str) -> (Bytes, String) {
        let object = self
            .client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("get {bucket}/{key}: {e:?}"));
        let content_type = object.content_type().unwrap_or_default().to_owned();
        let bytes = object
            .body
            .collect()
            .await
            .expect("read object body")
            .into_bytes();
        (bytes, content_type)
    }

    /// Kills the server (an outage); the data stays for [`S3Server::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port over the same data.
    pub async fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn_and_wait().await,
            "s3s-fs did not restart on port {}; see {}",
            self.port,
            self.log_path().display()
        );
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("s3s-fs.log")
    }

    /// Spawns on `self.port`; true once it accepts connections, false if it exited first.
    async fn spawn_and_wait(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("s3s-fs log file");
        let child = Command::new(binary())
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--access-key")
            .arg(&self.access_key)
            .arg("--secret-key")
            .arg(&self.secret_key)
            .arg(self.root.path().join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary().display()));
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.stop();
        false
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe for a free port")
        .port()
}

/// The `s3s-fs` binary: `S3S_FS_BIN`, else on `PATH`, else in `~/.cargo/bin`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("S3S_FS_BIN") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("s3s-fs"))
            .find(|candidate| candidate.is_file())
    });
    if let Some(path) = on_path {
        return path;
    }
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|dir| dir.join("bin/s3s-fs"));
    match cargo_bin {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "s3s-fs not found: set S3S_FS_BIN, or run .ci/run, or \
             `cargo install s3s-fs@0.14.1 --features binary --locked`"
        ),
    }
}

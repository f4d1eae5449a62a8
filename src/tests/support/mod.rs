//! Helpers shared by the integration tests: real servers started for a test and stopped after.
//!
//! - [`s3`]: an S3-compatible server (s3s-fs);
//! - [`sim`]: ComfyUI simulators (the `comfy-sim` binary of this repository);
//! - [`webhook`]: a webhook receiver that can answer any status, or hang;
//! - [`db`]: a fresh SQLite file or PostgreSQL database;
//! - [`daemon`]: the real `comfyd` binary, as its own process, with typed API helpers.

pub mod daemon;
pub mod db;
pub mod images;
pub mod s3;
pub mod sim;
pub mod webhook;

use std::net::TcpListener;

/// A port that was free a moment ago (the caller binds it right away).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind :0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Polls `check` every 50 ms until it returns Some, or panics with `what` after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

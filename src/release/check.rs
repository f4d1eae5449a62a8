//! Whether one backend can serve a release (#19 "health gate", its check only: nothing is gated
//! on it yet). The pure part, [`judge`] and [`smoke_runs`], decides from what the backend offers;
//! [`check_backend`] asks the backend through a [`ComfyClient`] and runs the smoke inputs.
//! Called by the readiness route and `comfyd release check` (which record the result in
//! `db::backend_checks`).
//!
//! A backend is untrusted input: its environment is read with [`environment::read_from`] (every
//! answer bounded and checked), the whole read within [`environment::READ_TIMEOUT`], each smoke
//! run within [`CheckOptions::smoke_timeout`]; every failure becomes a reason naming the call.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::environment::{self, missing, Environment, EnvironmentError, Missing};
use super::Snapshot;
use crate::comfy::protocol::{history_outcome, HistoryOutcome};
use crate::comfy::ComfyClient;
use crate::workflow::{set_image, Graph, ImageSource, Target, Workflow};

/// Default bound of one smoke run, queueing to its end in `/history`.
pub const SMOKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest smoke bound an operator may ask for.
pub const MAX_SMOKE_TIMEOUT: Duration = Duration::from_secs(600);
/// How often `/history` is asked about a smoke run.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// The websocket client id smoke prompts are queued under (no socket is opened: history is polled).
const CLIENT_ID: &str = "comfyd-release-check";

/// How a check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Bound of each smoke run.
    pub smoke_timeout: Duration,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            smoke_timeout: SMOKE_TIMEOUT,
        }
    }
}

/// The result of checking one backend against one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendCheck {
    /// True when the backend answered, has everything the release needs, and every smoke input ran.
    pub passed: bool,
    /// Why not, one line each (empty when passed).
    pub reasons: Vec<String>,
    /// The node classes and model files it lacks (empty when it could not be read).
    pub missing: Missing,
    /// `/system_stats`' `comfyui_version`, when it answered.
    pub comfyui_version: Option<String>,
    pub checked_at: DateTime<Utc>,
}

/// The static verdict: the environment (or why it could not be read) against the release's needs.
/// `passed` here means only that nothing is missing; smoke runs come after.
pub fn judge(snapshot: &Snapshot, env: Result<&Environment, &EnvironmentError>) -> BackendCheck {
    let checked_at = Utc::now();
    match env {
        Err(e) => BackendCheck {
            passed: false,
            reasons: vec![e.to_string()],
            missing: Missing::default(),
            comfyui_version: None,
            checked_at,
        },
        Ok(env) => {
            let missing = missing(&snapshot.needs, env);
            BackendCheck {
                passed: missing.is_empty(),
                reasons: missing.problems(),
                missing,
                comfyui_version: env.comfyui_version.clone(),
                checked_at,
            }
        }
    }
}

/// One smoke run to make: the workflow's name, its graph rendered with its `[smoke]` params, and
/// the images to upload first.
#[derive(Debug, Clone, PartialEq)]
pub struct SmokeRun {
    pub workflow: String,
    pub graph: Graph,
    pub images: Vec<SmokeImage>,
}

/// An image param of a smoke input (base64 in the manifest), uploaded before the run as a task's
/// input image is.
#[derive(Debug, Clone, PartialEq)]
pub struct SmokeImage {
    /// The upload's name: `comfyd_smoke_<id>_<param>.<ext>`.
    pub name: String,
    pub bytes: Vec<u8>,
    pub content_type: String,
    /// The graph inputs that take the uploaded name.
    pub targets: Vec<Target>,
}

/// The smoke runs of a release: every workflow with a `[smoke]` table, rendered as a task's graph
/// would be (its outputs under `comfyd/smoke-<id>/`). A smoke input that does not validate (it did
/// at publish; a release is immutable, so only a changed comfyd could make it fail) is a reason.
/// Smoke inputs with an image given by URL are not run (fetching it is `outbound`'s, which this
/// layer may not use): they are listed in the third vector, by workflow name.
pub fn smoke_runs(snapshot: &Snapshot) -> (Vec<SmokeRun>, Vec<String>, Vec<String>) {
    let mut runs = Vec::new();
    let mut reasons = Vec::new();
    let mut skipped = Vec::new();
    let set = match snapshot.workflow_set() {
        Ok(set) => set,
        Err(e) => {
            reasons.push(format!("the release's workflows do not load: {e}"));
            return (runs, reasons, skipped);
        }
    };
    for w in set.iter() {
        let Some(params) = &w.smoke else { continue };
        match smoke_graph(w, params) {
            Ok(Some(run)) => runs.push(run),
            Ok(None) => skipped.push(w.name.clone()),
            Err(reason) => reasons.push(reason),
        }
    }
    (runs, reasons, skipped)
}

fn smoke_graph(w: &Workflow, params: &Value) -> Result<Option<SmokeRun>, String> {
    let resolved = w.validate(params).map_err(|errors| {
        let shown: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.reason))
            .collect();
        format!(
            "smoke input of `{}` does not validate: {}",
            w.name,
            shown.join("; ")
        )
    })?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut images = Vec::new();
    for img in &resolved.images {
        match &img.source {
            ImageSource::Bytes { bytes, ext } => images.push(SmokeImage {
                name: format!("comfyd_smoke_{id}_{}.{ext}", img.param),
                bytes: bytes.clone(),
                content_type: mime_guess::from_ext(ext)
                    .first_or_octet_stream()
                    .to_string(),
                targets: img.targets.clone(),
            }),
            ImageSource::Url(_) => return Ok(None),
        }
    }
    Ok(Some(SmokeRun {
        workflow: w.name.clone(),
        graph: w.render(&resolved, &format!("smoke-{id}")),
        images,
    }))
}

/// Checks the backend behind `client` against a release: its environment, then (when nothing is
/// missing) each smoke run in turn.
pub async fn check_backend(
    client: &ComfyClient,
    snapshot: &Snapshot,
    options: CheckOptions,
) -> BackendCheck {
    let env = match tokio::time::timeout(environment::READ_TIMEOUT, environment::read_from(client))
        .await
    {
        Ok(result) => result,
        Err(_) => Err(EnvironmentError::Call {
            call: "reading the environment".into(),
            detail: format!("took longer than {} s", environment::READ_TIMEOUT.as_secs()),
        }),
    };
    let mut check = judge(snapshot, env.as_ref());
    if !check.passed {
        // A run would fail on what is missing (or on a backend that does not answer).
        return check;
    }
    let (runs, mut reasons, skipped) = smoke_runs(snapshot);
    if !skipped.is_empty() {
        tracing::info!(
            "smoke inputs with an image URL are not run: {}",
            skipped.join(", ")
        );
    }
    for run in runs {
        if let Err(reason) = smoke(client, &run, options.smoke_timeout).await {
            reasons.push(reason);
        }
    }
    check.passed = reasons.is_empty();
    check.reasons = reasons;
    check.checked_at = Utc::now();
    check
}

/// Queues one smoke run and polls `/history` until it ends, within `timeout`.
async fn smoke(client: &ComfyClient, run: &SmokeRun, timeout: Duration) -> Result<(), String> {
    let prompt_id = uuid::Uuid::new_v4().to_string();
    let name = &run.workflow;
    let mut graph = run.graph.clone();
    for img in &run.images {
        let uploaded = client
            .upload_image(&img.name, img.bytes.clone().into(), &img.content_type)
            .await
            .map_err(|e| format!("smoke run of `{name}`: POST /upload/image: {e}"))?;
        set_image(&mut graph, &img.targets, &uploaded);
    }
    client
        .queue_prompt(&graph, CLIENT_ID, &prompt_id)
        .await
        .map_err(|e| format!("smoke run of `{name}`: POST /prompt: {e}"))?;
    let waited = tokio::time::timeout(timeout, async {
        loop {
            match client.history(&prompt_id).await {
                Ok(Some(entry)) => return Ok(entry),
                Ok(None) => {}
                Err(e) => return Err(format!("smoke run of `{name}`: GET /history: {e}")),
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    })
    .await;
    let entry = match waited {
        Ok(entry) => entry?,
        Err(_) => {
            // Best effort: the backend should not keep running a check nobody waits for.
            let _ = client
                .delete_from_queue(std::slice::from_ref(&prompt_id))
                .await;
            let _ = client.interrupt(&prompt_id).await;
            return Err(format!(
                "smoke run of `{name}` did not end within {} s",
                timeout.as_secs()
            ));
        }
    };
    match history_outcome(&entry) {
        HistoryOutcome::Success(_) => Ok(()),
        HistoryOutcome::Interrupted => Err(format!("smoke run of `{name}` was interrupted")),
        HistoryOutcome::Error(e) => {
            let message: String = e.exception_message.chars().take(300).collect();
            Err(format!(
                "smoke run of `{name}` failed: {}: {}",
                e.exception_type, message
            ))
        }
    }
}

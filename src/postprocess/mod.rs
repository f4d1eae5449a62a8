//! Post-processing actors: what happens after ComfyUI executed a prompt.
//!
//! - [`uploader::Uploader`] fetches outputs from `/view` and stores them (S3 or local), with retries and
//!   the fallback folder;
//! - [`recorder::Recorder`] is the single database writer;
//! - [`notifier::Notifier`] delivers webhooks from the outbox with retries;
//! - [`cleaner::Cleaner`] removes inputs and outputs from the ComfyUI hosts.
//!
//! Every step is idempotent by task id (conditional status changes, outputs keyed by task/node/index),
//! which is what makes crash recovery a replay rather than a special case.

pub mod cleaner;
pub mod notifier;
pub mod recorder;
pub mod uploader;

use std::path::PathBuf;
use std::time::Duration;

use actix::Addr;
use chrono::Utc;
use serde_json::{json, Value};

use crate::db::{events::Event, outputs::OutputMark, tasks::TaskPatch};
use crate::stored_text;
use crate::task::{error_code, Status};
use recorder::{Finish, Recorder};

/// Ends tasks: the terminal transition and its webhook in one transaction, then an immediate delivery
/// attempt and the removal of the task's input files from comfyd's data folder.
#[derive(Clone)]
pub struct Finisher {
    pub recorder: Addr<Recorder>,
    pub notifier: Addr<notifier::Notifier>,
    pub inputs_dir: PathBuf,
    pub webhook_horizon: Duration,
}

impl Finisher {
    /// Returns whether this call ended the task (false: it had already ended).
    pub async fn finish(
        &self,
        task_id: &str,
        from: &[Status],
        to: Status,
        patch: TaskPatch,
        outputs: Vec<OutputMark>,
        event: Event,
    ) -> anyhow::Result<bool> {
        let give_up_at = Utc::now()
            + chrono::Duration::from_std(self.webhook_horizon).unwrap_or(chrono::Duration::days(1));
        let code = patch.error_code.unwrap_or(error_code::OK);
        let finished = self
            .recorder
            .send(Finish {
                task_id: task_id.into(),
                from: from.to_vec(),
                to,
                patch,
                outputs,
                event,
                give_up_at,
            })
            .await??;
        if finished.applied {
            crate::metrics::task_finished(&finished.workflow, to.as_str(), code);
        }
        if let Some(d) = finished.delivery {
            self.notifier.do_send(notifier::Deliver(d));
        }
        // Most tasks have no input images: one quick look on this thread spares them a trip to the
        // blocking pool.
        let dir = self.inputs_dir.join(task_id);
        if finished.applied && std::fs::symlink_metadata(&dir).is_ok() {
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(task.id = %task_id, error = %e, "could not remove input files");
                }
            }
        }
        Ok(finished.applied)
    }

    pub async fn finish_failed(
        &self,
        task_id: &str,
        from: &[Status],
        code: i32,
        message: String,
        details: Value,
    ) -> anyhow::Result<bool> {
        // Every failure passes here, whatever its source: the one place where outside text (a
        // ComfyUI error, node_errors, an S3 error) becomes a stored message, event and webhook.
        let message = stored_text::message(&message);
        let details = stored_text::details(details);
        tracing::info!(task.id = %task_id, error_code = code, "task {task_id} failed: {message}");
        let patch = TaskPatch {
            error_code: Some(code),
            error_message: Some(message.clone()),
            error_details: (!details.is_null()).then_some(details),
            finished_at: Some(Utc::now()),
            ..Default::default()
        };
        let event = Event::new("failed", json!({ "error_code": code, "message": message }));
        self.finish(task_id, from, Status::Failed, patch, Vec::new(), event)
            .await
    }

    pub async fn finish_cancelled(&self, task_id: &str, from: &[Status]) -> anyhow::Result<bool> {
        let patch = TaskPatch {
            error_code: Some(error_code::OTHER),
            error_message: Some("cancelled".into()),
            finished_at: Some(Utc::now()),
            ..Default::default()
        };
        self.finish(
            task_id,
            from,
            Status::Cancelled,
            patch,
            Vec::new(),
            Event::new("cancelled", json!({})),
        )
        .await
    }
}

/// Handles on every post-processing actor, for the dispatcher and the routes.
#[derive(Clone)]
pub struct Pipeline {
    pub finisher: Finisher,
    pub recorder: Addr<Recorder>,
    pub uploader: Addr<uploader::Uploader>,
    pub cleaner: Addr<cleaner::Cleaner>,
    /// Whether the database takes writes (the Recorder's view; see [`crate::db_health`]).
    pub health: crate::db_health::DbHealth,
}

/// Delay before retry number `attempt` (1-based): exponential from `first`, capped at `max`, with
/// "equal jitter" (half fixed, half random from `rand01` in [0, 1)) so that many clients retrying
/// after one outage do not come back in lockstep.
pub fn retry_delay(attempt: u32, first: Duration, max: Duration, rand01: f64) -> Duration {
    let exp = first.saturating_mul(
        1u32.checked_shl(attempt.saturating_sub(1).min(30))
            .unwrap_or(u32::MAX),
    );
    let base = exp.min(max);
    base.mul_f64(0.5 + 0.5 * rand01.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_caps_and_jitters() {
        let first = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        assert_eq!(retry_delay(1, first, max, 1.0), Duration::from_secs(1));
        assert_eq!(retry_delay(2, first, max, 1.0), Duration::from_secs(2));
        assert_eq!(retry_delay(4, first, max, 1.0), Duration::from_secs(8));
        assert_eq!(retry_delay(4, first, max, 0.0), Duration::from_secs(4));
        assert_eq!(retry_delay(30, first, max, 1.0), max);
        assert_eq!(retry_delay(1000, first, max, 1.0), max);
    }
}

//! What the Dispatcher does when a backend reports on a job: its start is recorded; its end goes on
//! by outcome: outputs to the Uploader, a failure to the Finisher, a job that did not run back in the
//! queue (avoiding that backend, which cools down when it refused the job) or failed after the
//! attempt limit. Either way the job's uploaded inputs are cleaned off that backend.

use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use serde_json::{json, Value};
use tracing::{error, warn};

use super::{Dispatcher, Held};
use crate::db::{self, events::Event, tasks::TaskPatch};
use crate::dispatch::messages::{JobEnded, JobOutcome, JobStarted};
use crate::postprocess::recorder::{MarkStarted, Transition};
use crate::postprocess::uploader::StoreOutputs;
use crate::task::ids::{PromptId, TaskId};
use crate::task::{error_code, Status};

/// A backend that failed to take a job (HTTP error, connection refused) gets none for this long, so the
/// job goes to another backend rather than straight back.
const BACKEND_COOLDOWN: Duration = Duration::from_secs(1);

impl Dispatcher {
    /// A job that did not run (backend gone, prompt lost): back in the queue, or failed after the
    /// attempt limit.
    pub(super) fn retry_or_fail(
        &mut self,
        task_id: TaskId,
        reason: String,
        ctx: &mut Context<Self>,
    ) {
        let db = self.db.clone();
        let recorder = self.pipeline.recorder.clone();
        let max = self.cfg.max_attempts;
        async move {
            let Some(task) = db::tasks::get(&db, task_id.as_str()).await? else {
                return Ok(None);
            };
            if task.attempts >= max {
                return Ok(Some((task, false, None)));
            }
            // A new id for the next attempt: the old one may still come back from the backend that
            // lost it. Recorded now, so the task shows the id it will run under.
            let next = PromptId::new();
            let requeued = recorder
                .send(Transition {
                    task_id: task_id.clone(),
                    from: Status::ON_BACKEND.to_vec(),
                    to: Status::Queued,
                    patch: TaskPatch {
                        backend: Some(None),
                        comfyui_task_id: Some(Some(next.clone().into())),
                        ..Default::default()
                    },
                    event: Some(Event::new(
                        "requeued",
                        json!({ "reason": crate::stored_text::message(&reason), "next_prompt_id": next }),
                    )),
                })
                .await
                .map_err(|e| anyhow::anyhow!(e))??;
            Ok::<_, anyhow::Error>(requeued.then_some((task, true, Some(next))))
        }
        .into_actor(self)
        .map(|res, act, ctx| match res {
            Ok(Some((task, true, next))) => {
                act.push(task.id.into(), task.priority, next, task.release_version);
                act.dispatch(ctx);
            }
            Ok(Some((task, false, _))) => {
                act.queue.clear_avoid(&task.id);
                let msg = format!("no backend ran it in {} attempts", task.attempts);
                act.fail(
                    task.id.into(),
                    &Status::ON_BACKEND,
                    error_code::QUEUEING_FAILED,
                    msg,
                    Value::Null,
                    ctx,
                );
            }
            Ok(None) => {}
            Err(e) => error!(error = %e, "requeue failed"),
        })
        .spawn(ctx);
    }

    fn release(&mut self, backend: &str, task_id: &str) -> Option<(usize, Held)> {
        let i = self.slots.iter().position(|s| s.name == backend)?;
        self.slots[i].held.remove(task_id).map(|h| (i, h))
    }
}

impl Handler<JobStarted> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: JobStarted, ctx: &mut Context<Self>) {
        let recorder = self.pipeline.recorder.clone();
        async move {
            let _ = recorder
                .send(MarkStarted {
                    task_id: msg.task_id,
                    backend: msg.backend,
                    prompt_id: msg.prompt_id,
                    at: Utc::now(),
                })
                .await;
        }
        .into_actor(self)
        .spawn(ctx);
    }
}

impl Handler<JobEnded> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: JobEnded, ctx: &mut Context<Self>) {
        let held = self.release(msg.backend.as_str(), msg.task_id.as_str());
        let task_id = msg.task_id;
        match msg.outcome {
            JobOutcome::Success(files) => {
                self.pipeline.uploader.do_send(StoreOutputs {
                    task_id: task_id.clone(),
                    backend: msg.backend.clone(),
                    files: Some(files),
                });
            }
            JobOutcome::Failed(e) => {
                let message = format!("{}: {}", e.exception_type, e.exception_message);
                let details = json!({ "node_id": e.node_id, "node_type": e.node_type,
                    "exception_type": e.exception_type, "exception_message": e.exception_message });
                self.fail(
                    task_id.clone(),
                    &Status::ON_BACKEND,
                    error_code::OTHER,
                    message,
                    details,
                    ctx,
                );
            }
            JobOutcome::Interrupted => {
                // A cancelled task is already terminal, so this changes nothing for it.
                self.fail(
                    task_id.clone(),
                    &Status::ON_BACKEND,
                    error_code::OTHER,
                    "interrupted on ComfyUI".into(),
                    Value::Null,
                    ctx,
                );
            }
            JobOutcome::UnsafeName(message) => {
                self.fail(
                    task_id.clone(),
                    &Status::ON_BACKEND,
                    error_code::RETRIEVAL_FAILED,
                    message,
                    Value::Null,
                    ctx,
                );
            }
            JobOutcome::Rejected { message, details } => {
                self.fail(
                    task_id.clone(),
                    &Status::ON_BACKEND,
                    error_code::QUEUEING_FAILED,
                    message,
                    details,
                    ctx,
                );
            }
            JobOutcome::Unavailable(reason) => {
                warn!(task.id = %task_id, backend.name = %msg.backend, %reason, "backend did not take the job; re-dispatching");
                if let Some((i, _)) = &held {
                    self.slots[*i].cool_until = Some(Instant::now() + BACKEND_COOLDOWN);
                    self.queue.avoid(task_id.clone(), *i);
                    ctx.run_later(BACKEND_COOLDOWN, |act, ctx| act.dispatch(ctx));
                }
                self.retry_or_fail(task_id.clone(), reason, ctx);
            }
            JobOutcome::Lost(reason) => {
                warn!(task.id = %task_id, backend.name = %msg.backend, %reason, "job did not run; re-dispatching");
                if let Some((i, _)) = &held {
                    self.queue.avoid(task_id.clone(), *i);
                }
                self.retry_or_fail(task_id.clone(), reason, ctx);
            }
        }
        if let Some((i, held)) = held {
            self.clean_uploads(i, &task_id, held.uploads);
        }
        self.dispatch(ctx);
    }
}

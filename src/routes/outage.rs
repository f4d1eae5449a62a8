//! How the API answers while the database cannot be reached: 503 with `Retry-After` at once
//! (see [`crate::db_health`]), and a bounded wait for a submit's write.

use std::time::Duration;

use tokio::sync::oneshot;

use super::{ApiError, AppState};
use crate::db::tasks::{Inserted, NewTask};
use crate::dispatch::messages::Enqueue;
use crate::postprocess::recorder::InsertTask;

/// 503 at once while the Recorder finds the database unreachable, rather than queueing a write
/// behind the outage.
pub fn check(state: &AppState) -> Result<(), ApiError> {
    match state.db_health.unreachable() {
        Some(_) => Err(ApiError::database_unreachable()),
        None => Ok(()),
    }
}

/// Records a new task through the Recorder, waiting at most `database_outage.submit_wait_ms`.
///
/// During an outage the Recorder answers new tasks with the error at once, so this answers 503
/// well within the wait; the wait only bounds a write under way when the outage began. If such a
/// write commits after the submit was answered 503, the task is enqueued all the same, as any
/// recorded task is (the client that retries with the same `client_task_id` gets it; one without
/// gets a second task).
pub async fn insert_task(state: &AppState, new: NewTask) -> Result<Inserted, ApiError> {
    check(state)?;
    let task_id = new.id.clone();
    let (tx, rx) = oneshot::channel();
    let recorder = state.recorder.clone();
    let dispatcher = state.dispatcher.clone();
    // On a task of its own, so that the answer is awaited even after the submit gave up on it.
    actix_rt::spawn(async move {
        let written = recorder.send(InsertTask(new)).await;
        if let Err(Ok(Ok(Inserted::New(task)))) = tx.send(written) {
            tracing::warn!(task.id = %task.id, "task {} was recorded after its submit was answered 503; running it", task.id);
            dispatcher.do_send(Enqueue {
                prompt_id: task.comfyui_task_id.clone().map(Into::into),
                task_id: task.id.into(),
                priority: task.priority,
            });
        }
    });
    let wait = Duration::from_millis(state.settings.database_outage.submit_wait_ms);
    match actix_rt::time::timeout(wait, rx).await {
        Ok(Ok(Ok(Ok(inserted)))) => Ok(inserted),
        // An unreachable database becomes a 503 (see `From<RecordError>`).
        Ok(Ok(Ok(Err(e)))) => Err(e.into()),
        Ok(Ok(Err(mailbox))) => Err(mailbox.into()),
        Ok(Err(_)) => Err(ApiError::Internal(anyhow::anyhow!(
            "the recorder dropped task {task_id}"
        ))),
        Err(_) => {
            tracing::warn!(task.id = %task_id, wait_ms = wait.as_millis() as u64,
                "recording task {task_id} took longer than database_outage.submit_wait_ms; answering 503");
            Err(ApiError::database_unreachable())
        }
    }
}

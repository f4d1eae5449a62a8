//! The task as it is recorded: the `NewTask` built from an accepted submit, and its write through
//! the Recorder (the only database writer), bounded in time while the database is unreachable.

use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::fields::Fields;
use super::{Intake, IntakeError};
use crate::db::tasks::{Inserted, NewTask};
use crate::dispatch::messages::Enqueue;
use crate::postprocess::recorder::InsertTask;
use crate::task::InputFile;
use crate::workflow::{Resolved, Workflow};

/// What a task is recorded with besides its workflow and params.
pub(super) struct Recorded<'a> {
    pub task_id: &'a str,
    pub fields: Fields,
    pub request_hash: &'a str,
    pub inputs: &'a [InputFile],
    pub owner: Option<String>,
    /// The served release it is accepted under (None: the workflows folder).
    pub release: Option<i32>,
}

/// The row of a newly accepted task: its graph rendered, its params as stored (values and the names
/// of its image params), its deadline from now.
pub(super) fn new_task(
    intake: &Intake,
    workflow: &Workflow,
    resolved: &Resolved,
    r: Recorded<'_>,
) -> Result<NewTask, IntakeError> {
    let graph = workflow.render(resolved, r.task_id);
    let stored_params = json!({
        "values": resolved.values,
        "images": r.inputs.iter().map(|i| &i.param).collect::<Vec<_>>(),
    });
    let deadline = Utc::now()
        + chrono::Duration::seconds(intake.limits.task_deadline_secs.min(i64::MAX as u64) as i64);
    Ok(NewTask {
        id: r.task_id.to_string(),
        client_task_id: r.fields.client_task_id,
        client_callback_url: r.fields.client_callback_url,
        workflow: workflow.name.clone(),
        request_hash: r.request_hash.to_string(),
        params: stored_params,
        graph: Value::Object(graph),
        inputs: serde_json::to_value(r.inputs).map_err(anyhow::Error::from)?,
        output_nodes: json!(workflow.output_nodes),
        priority: r.fields.priority,
        deadline_at: deadline,
        owner: r.owner,
        // Chosen now, so the answer carries the id the task runs under (the original's answer did).
        prompt_id: Some(uuid::Uuid::new_v4().to_string()),
        release_version: r.release,
    })
}

impl Intake {
    /// Records a new task through the Recorder, waiting at most `database_outage.submit_wait_ms`.
    ///
    /// During an outage the Recorder answers new tasks with the error at once, so this answers
    /// "unreachable" well within the wait; the wait only bounds a write under way when the outage
    /// began. If such a write commits after the submit was refused, the task is enqueued all the
    /// same, as any recorded task is (the client that retries with the same `client_task_id` gets
    /// it; one without gets a second task).
    pub(super) async fn insert(&self, new: NewTask) -> Result<Inserted, IntakeError> {
        // Refused at once while the Recorder finds the database unreachable, rather than queueing
        // a write behind the outage.
        if self.db_health.unreachable().is_some() {
            return Err(IntakeError::DatabaseUnreachable);
        }
        let task_id = new.id.clone();
        let (tx, rx) = oneshot::channel();
        let recorder = self.recorder.clone();
        let dispatcher = self.dispatcher.clone();
        // On a task of its own, so that the answer is awaited even after the submit gave up on it.
        actix_rt::spawn(async move {
            let written = recorder.send(InsertTask(new)).await;
            if let Err(Ok(Ok(Inserted::New(task)))) = tx.send(written) {
                tracing::warn!(task.id = %task.id, "task {} was recorded after its submit was answered 503; running it", task.id);
                dispatcher.do_send(Enqueue {
                    prompt_id: task.comfyui_task_id.clone().map(Into::into),
                    task_id: task.id.into(),
                    priority: task.priority,
                    release: task.release_version,
                });
            }
        });
        let wait = self.limits.submit_wait;
        match actix_rt::time::timeout(wait, rx).await {
            Ok(Ok(Ok(Ok(inserted)))) => Ok(inserted),
            // The Recorder's error, mapped in one place (`From` in error.rs).
            Ok(Ok(Ok(Err(e)))) => Err(e.into()),
            Ok(Ok(Err(mailbox))) => Err(mailbox.into()),
            Ok(Err(_)) => Err(IntakeError::Internal(anyhow::anyhow!(
                "the recorder dropped task {task_id}"
            ))),
            Err(_) => {
                tracing::warn!(task.id = %task_id, wait_ms = wait.as_millis() as u64,
                    "recording task {task_id} took longer than database_outage.submit_wait_ms; answering 503");
                Err(IntakeError::DatabaseUnreachable)
            }
        }
    }
}

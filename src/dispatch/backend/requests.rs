//! The messages a backend handles, each one or more HTTP calls to its server: `Run` (upload the
//! inputs, queue the prompt), `Adopt` (take over a prompt of the previous process), `Cancel` (delete
//! from the queue, interrupt) and `Clean` (queue the cleaner node's prompt for each file).

use actix::prelude::*;
use serde_json::{Map, Value};
use tracing::{debug, warn};

use super::{Backend, Job, CLEANER_CLASS};
use crate::comfy::ComfyError;
use crate::dispatch::messages::{Adopt, Cancel, JobOutcome, Run};
use crate::postprocess::cleaner::Clean;
use crate::task::ids::PromptId;

impl Handler<Run> for Backend {
    type Result = ();

    fn handle(&mut self, msg: Run, ctx: &mut Context<Self>) {
        let Run {
            task_id,
            prompt_id,
            mut graph,
            inputs,
            output_nodes,
        } = msg;
        // Known before the POST, so events that race the HTTP answer are matched.
        self.jobs.insert(
            prompt_id.clone(),
            Job {
                task_id,
                output_nodes,
                files: Vec::new(),
                started: false,
                started_at: None,
                queued: false,
                stale: false,
            },
        );
        let client = self.client.clone();
        let client_id = self.client_id.clone();
        let pid = prompt_id.clone();
        async move {
            for (input, path) in &inputs {
                let bytes = tokio::fs::read(path).await.map_err(|e| {
                    // The input vanished from comfyd's own disk: no backend can run this task.
                    ComfyError::Rejected {
                        message: format!("input image {} unreadable: {e}", input.param),
                        body: Value::Null,
                    }
                })?;
                let mime = mime_guess::from_path(&input.upload_name).first_or_octet_stream();
                let name = client
                    .upload_image(&input.upload_name, bytes.into(), mime.as_ref())
                    .await?;
                crate::workflow::set_image(&mut graph, &input.targets, &name);
            }
            match client.queue_prompt(&graph, &client_id, pid.as_str()).await {
                Ok(()) => Ok(()),
                Err(e @ ComfyError::Rejected { .. }) => Err(e),
                // The answer may be lost while the prompt was queued: look before calling it failed.
                Err(e) => match client.queue().await {
                    Ok(ids) if ids.iter().any(|id| pid == id.as_str()) => Ok(()),
                    _ => match client.history(pid.as_str()).await {
                        Ok(Some(_)) => Ok(()),
                        _ => Err(e),
                    },
                },
            }
        }
        .into_actor(self)
        .map(move |res, act, ctx| match res {
            Ok(()) => {
                if let Some(job) = act.jobs.get_mut(&prompt_id) {
                    job.queued = true;
                    if !act.up {
                        // Queued while the socket was down: events may be lost.
                        job.stale = true;
                    }
                }
                if !act.up {
                    act.connect(ctx);
                }
            }
            Err(ComfyError::UnsafeName(e)) => {
                warn!(backend = %act.cfg.name, error = %e, "refusing the upload answer");
                act.end_job(prompt_id.as_str(), JobOutcome::UnsafeName(e.to_string()));
            }
            Err(ComfyError::Rejected { message, body }) => {
                act.end_job(
                    prompt_id.as_str(),
                    JobOutcome::Rejected {
                        message,
                        details: body,
                    },
                );
            }
            Err(e) => {
                warn!(backend = %act.cfg.name, error = %e, "could not queue prompt");
                act.end_job(prompt_id.as_str(), JobOutcome::Unavailable(e.to_string()));
            }
        })
        .spawn(ctx);
    }
}

impl Handler<Adopt> for Backend {
    type Result = ();

    fn handle(&mut self, msg: Adopt, ctx: &mut Context<Self>) {
        self.jobs.insert(
            msg.prompt_id,
            Job {
                task_id: msg.task_id,
                output_nodes: msg.output_nodes,
                files: Vec::new(),
                started: false,
                started_at: None,
                queued: true,
                stale: true,
            },
        );
        // When connected, settle it now; otherwise the next connect does.
        if self.ws.is_some() && self.up {
            self.reconcile(ctx, false);
        }
    }
}

impl Handler<Cancel> for Backend {
    type Result = ();

    fn handle(&mut self, msg: Cancel, ctx: &mut Context<Self>) {
        // The dispatcher already recorded the cancel; a deleted pending prompt sends no events at all.
        self.jobs.remove(&msg.prompt_id);
        let client = self.client.clone();
        let name = self.cfg.name.clone();
        async move {
            let ids = [msg.prompt_id.clone().into_string()];
            if let Err(e) = client.delete_from_queue(&ids).await {
                warn!(backend = %name, error = %e, "cancel: queue delete failed");
            }
            if let Err(e) = client.interrupt(msg.prompt_id.as_str()).await {
                warn!(backend = %name, error = %e, "cancel: interrupt failed");
            }
        }
        .into_actor(self)
        .spawn(ctx);
    }
}

impl Handler<Clean> for Backend {
    type Result = ();

    fn handle(&mut self, msg: Clean, ctx: &mut Context<Self>) {
        if self.has_cleaner != Some(true) {
            debug!(backend = %self.cfg.name, files = msg.files.len(), "no cleaner node there; files left");
            return;
        }
        for (folder_type, path) in msg.files {
            let prompt_id = PromptId::new();
            let mut graph = Map::new();
            graph.insert(
                "1".into(),
                serde_json::json!({
                    "class_type": CLEANER_CLASS,
                    "inputs": { "type": folder_type, "path": path }
                }),
            );
            self.cleaning.insert(prompt_id.clone());
            let client = self.client.clone();
            let client_id = self.client_id.clone();
            let name = self.cfg.name.clone();
            async move {
                if let Err(e) = client
                    .queue_prompt(&graph, &client_id, prompt_id.as_str())
                    .await
                {
                    warn!(backend = %name, error = %e, file = %path, "file cleanup not queued");
                }
            }
            .into_actor(self)
            .spawn(ctx);
        }
    }
}

//! Settling prompts whose events cannot be trusted to have arrived (a reconnect since they were
//! queued, or adopted from the previous process): still in `/queue`, or ended as `/history` says, or
//! lost when neither has them.

use std::collections::HashSet;

use actix::prelude::*;
use serde_json::Value;
use tracing::warn;

use super::Backend;
use crate::comfy::protocol::{self, HistoryOutcome};
use crate::comfy::{ComfyError, FileRef};
use crate::dispatch::messages::JobOutcome;
use crate::task::ids::PromptId;

impl Backend {
    /// Asks the server about every queued prompt that may have been missed; marks the backend up
    /// afterwards when `then_up`.
    pub(super) fn reconcile(&mut self, ctx: &mut Context<Self>, then_up: bool) {
        // The one after a connect always runs: it is what marks the backend up.
        if self.reconciling && !then_up {
            return;
        }
        self.reconciling = true;
        let client = self.client.clone();
        let stale: Vec<PromptId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.stale && j.queued)
            .map(|(p, _)| p.clone())
            .collect();
        async move {
            if stale.is_empty() {
                return Ok(Vec::new());
            }
            let queued: HashSet<String> = client.queue().await?.into_iter().collect();
            let mut settled = Vec::new();
            for prompt_id in stale {
                if queued.contains(prompt_id.as_str()) {
                    continue;
                }
                // Not queued: finished (history has it) or lost (history does not).
                let entry = client.history(prompt_id.as_str()).await?;
                settled.push((prompt_id, entry));
            }
            Ok::<_, ComfyError>(settled)
        }
        .into_actor(self)
        .map(move |res, act, ctx| {
            act.reconciling = false;
            act.apply_reconciliation(res, then_up, ctx)
        })
        .spawn(ctx);
    }

    fn apply_reconciliation(
        &mut self,
        res: Result<Vec<(PromptId, Option<Value>)>, ComfyError>,
        then_up: bool,
        ctx: &mut Context<Self>,
    ) {
        match res {
            Ok(settled) => {
                for (prompt_id, entry) in settled {
                    self.settle_from_history(prompt_id.as_str(), entry);
                }
                if then_up && !self.up {
                    self.up = true;
                    self.down_since = None;
                    self.report_state();
                }
            }
            Err(e) => {
                warn!(backend = %self.cfg.name, error = %e, "reconciliation failed; reconnecting");
                self.drop_socket(ctx);
            }
        }
    }

    fn settle_from_history(&mut self, prompt_id: &str, entry: Option<Value>) {
        let outcome = match entry {
            None => JobOutcome::Lost(format!(
                "prompt {prompt_id} is neither queued nor in history"
            )),
            Some(entry) => match protocol::history_outcome(&entry) {
                HistoryOutcome::Success(files) => {
                    let files = match self.jobs.get(prompt_id) {
                        Some(job) => filter_outputs(files, &job.output_nodes),
                        None => return,
                    };
                    JobOutcome::Success(files)
                }
                HistoryOutcome::Error(e) => JobOutcome::Failed(e),
                HistoryOutcome::Interrupted => JobOutcome::Interrupted,
            },
        };
        self.end_job(prompt_id, outcome);
    }

    /// Settles one prompt from its history entry (after `executing null` when events were missed).
    pub(super) fn settle_one(&mut self, prompt_id: PromptId, ctx: &mut Context<Self>) {
        let client = self.client.clone();
        let id = prompt_id.clone();
        async move { client.history(id.as_str()).await }
            .into_actor(self)
            .map(move |res, act, _| match res {
                Ok(entry) => act.settle_from_history(prompt_id.as_str(), entry),
                Err(e) => {
                    // The next reconnect's reconciliation settles it.
                    warn!(backend = %act.cfg.name, error = %e, "history fetch failed");
                    if let Some(j) = act.jobs.get_mut(&prompt_id) {
                        j.stale = true;
                    }
                }
            })
            .spawn(ctx);
    }
}

/// Keeps the files of the workflow's output nodes (all of them when none are named).
pub(super) fn filter_outputs(files: Vec<FileRef>, output_nodes: &[String]) -> Vec<FileRef> {
    if output_nodes.is_empty() {
        return files;
    }
    files
        .into_iter()
        .filter(|f| output_nodes.contains(&f.node_id))
        .collect()
}

//! What the Dispatcher does at start and after a database outage: it reads what the database holds
//! of unfinished tasks and resumes it: queued tasks back in the queue, tasks on a backend re-attached
//! to it (`Adopt`; or run elsewhere when that backend is gone), executed ones handed to the Uploader
//! to store their outputs. A start does this once before any task (`recover`); the end of an outage
//! (see `crate::db_health`) does it again (`reconcile`), after the Recorder flushed what it held.

use std::time::Duration;

use actix::prelude::*;
use sea_orm::DatabaseConnection;
use tracing::{error, info, warn};

use super::{Dispatcher, Held};
use crate::db;
use crate::dispatch::messages::{Adopt, Reconcile};
use crate::postprocess::recorder::Flush;
use crate::postprocess::uploader::StoreOutputs;
use crate::task::ids::{BackendName, PromptId, TaskId};
use crate::task::Status;

/// What the database holds of unfinished tasks: queued ones (id, priority), ones on a backend, and
/// executed ones (outputs being stored).
struct Unfinished {
    /// (id, priority, the prompt id its next attempt runs under)
    queued: Vec<(String, i32, Option<String>, Option<i32>)>,
    on_backend: Vec<crate::entity::task::Model>,
    executed: Vec<crate::entity::task::Model>,
}

impl Unfinished {
    async fn read(db: &DatabaseConnection) -> Result<Unfinished, sea_orm::DbErr> {
        Ok(Unfinished {
            queued: db::tasks::queued(db).await?,
            on_backend: db::tasks::in_statuses(db, &Status::ON_BACKEND).await?,
            executed: db::tasks::in_statuses(db, &[Status::Executed]).await?,
        })
    }
}

impl Dispatcher {
    /// Rebuilds the queue and re-attaches dispatched work after a start (crash or not).
    pub(super) fn recover(&mut self, ctx: &mut Context<Self>) {
        let db = self.db.clone();
        async move { Unfinished::read(&db).await }
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(unfinished) => act.resume(unfinished, "recovered unfinished tasks", ctx),
                Err(e) => {
                    error!(error = %e, "recovery query failed; retrying");
                    ctx.run_later(Duration::from_secs(2), |act, ctx| act.recover(ctx));
                }
            })
            .wait(ctx);
    }

    /// After a database outage: resumes what the database holds, as at a start, so that whatever
    /// the outage made comfyd forget is driven on again within seconds rather than at the task's
    /// deadline. The Recorder holds and retries the writes that failed, so most tasks need nothing;
    /// this covers the rest: a write whose COMMIT reached the database while its answer was lost
    /// (a claim or requeue then looks "not applied" to its sender, which lets go of the task), a new
    /// task committed although its submitter was answered 503, and reads that failed meanwhile
    /// (a requeue's, a recovery store's). Held writes are flushed first, so a task whose next step
    /// was only waiting for the database is read as that step left it. Tasks a backend holds are
    /// left alone (their backend reports on them); replaying any other step is harmless because
    /// every step is a conditional update and outputs are keyed by task: at worst an output is
    /// fetched and stored again.
    pub(super) fn reconcile(&mut self, ctx: &mut Context<Self>) {
        if self.reconciling {
            self.reconcile_again = true;
            return;
        }
        self.reconciling = true;
        let db = self.db.clone();
        let recorder = self.pipeline.recorder.clone();
        async move {
            recorder.send(Flush).await??;
            Ok::<_, anyhow::Error>(Unfinished::read(&db).await?)
        }
        .into_actor(self)
        .map(|res, act, ctx| {
            act.reconciling = false;
            match res {
                Ok(unfinished) => {
                    act.resume(unfinished, "reconciled after the database outage", ctx)
                }
                Err(e) => {
                    warn!(error = %e, "reconciliation after the database outage failed; retrying");
                    act.reconcile_again = true;
                }
            }
            if std::mem::take(&mut act.reconcile_again) {
                ctx.run_later(Duration::from_secs(1), |act, ctx| act.reconcile(ctx));
            }
        })
        .spawn(ctx);
    }

    /// Queues, re-attaches or stores what `unfinished` lists, except what is queued or held already
    /// (the Uploader skips tasks it is storing).
    fn resume(&mut self, unfinished: Unfinished, what: &str, ctx: &mut Context<Self>) {
        let (mut nq, mut nb, ne) = (0, 0, unfinished.executed.len());
        for (id, priority, prompt_id, release) in unfinished.queued {
            nq += usize::from(self.push(id.into(), priority, prompt_id.map(Into::into), release));
        }
        for t in unfinished.on_backend {
            if self.holds(&t.id) {
                continue;
            }
            nb += 1;
            let slot = t.backend.as_ref().and_then(|b| {
                self.slots
                    .iter()
                    .position(|s| s.name.as_str() == b.as_str())
            });
            let task_id = TaskId::from(t.id);
            match (slot, t.comfyui_task_id) {
                (Some(i), Some(prompt_id)) => {
                    let output_nodes = serde_json::from_str(&t.output_nodes).unwrap_or_default();
                    let prompt_id = PromptId::from(prompt_id);
                    self.slots[i].held.insert(
                        task_id.clone(),
                        Held {
                            prompt_id: prompt_id.clone(),
                            uploads: vec![],
                            sent: true,
                        },
                    );
                    self.slots[i].addr.do_send(Adopt {
                        task_id,
                        prompt_id,
                        output_nodes,
                    });
                }
                // Its backend is no longer configured: run it elsewhere.
                _ => self.retry_or_fail(task_id, "backend no longer configured".into(), ctx),
            }
        }
        for t in unfinished.executed {
            if let Some(b) = t.backend {
                // Through the id types, so this holds whether the Uploader takes them or strings.
                self.pipeline.uploader.do_send(StoreOutputs {
                    task_id: TaskId::from(t.id),
                    backend: BackendName::from(b),
                    files: None,
                });
            }
        }
        if nq + nb + ne > 0 {
            info!(queued = nq, on_backend = nb, executed = ne, "{what}");
        }
        self.dispatch(ctx);
    }
}

impl Handler<Reconcile> for Dispatcher {
    type Result = ();

    fn handle(&mut self, _: Reconcile, ctx: &mut Context<Self>) {
        self.reconcile(ctx);
    }
}

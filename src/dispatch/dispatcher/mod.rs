//! `Dispatcher`: comfyd's dispatch queue, and the actor that hands each task to a backend.
//!
//! It owns the [`Queue`] of task ids (rebuilt from the database at start), the latest health and load
//! of every backend, and which task each backend holds. It hands a backend a task only while that
//! backend holds fewer than `max_in_flight`; which one gets which task is [`routing`]'s choice. The
//! queue stays in comfyd, where it survives restarts and can be cancelled and re-routed.
//!
//! Talks to: routes (`Enqueue`, `CancelTask`, `Snapshot`), startup (`AttachBackends`,
//! `StopDispatching`), the `Backend` actors it starts (`Run`, `Adopt`, `Cancel` out; `BackendState`,
//! `JobStarted`, `JobEnded` in; all in [`super::messages`]), the `Recorder` (claims and transitions),
//! the `Uploader` (a finished job's outputs), the `Cleaner` (a job's uploaded inputs; it registers each
//! backend there) and the `Finisher` (terminal states and their webhooks).
//!
//! Here: the actor's state, its handlers for routes and startup, and handing a task over (claim,
//! `Run`) or taking it back (cancel). In [`outcomes`]: what a backend's report on a job leads to
//! (end, requeue). In [`recovery`]: what it does at start and after a database outage. In
//! [`deadlines`]: the sweep that fails tasks past their deadline.

mod deadlines;
mod outcomes;
mod recovery;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use sea_orm::DatabaseConnection;
use serde_json::{json, Map, Value};
use tracing::{error, info};

use super::backend::Backend;
use super::messages::{
    AttachBackends, BackendState, BackendView, Cancel, CancelOutcome, CancelTask, Checking,
    DispatchError, Enqueue, Reconcile, ReleaseGate, Reports, Run, Snapshot, SnapshotView,
    StopDispatching,
};
use super::queue::{Queue, QueueKey};
use super::routing::{self, BackendFacts};
use crate::db::{events::Event, tasks::TaskPatch};
use crate::postprocess::cleaner::{CleanFiles, RegisterBackend};
use crate::postprocess::recorder::{Claim, RecordEvent};
use crate::postprocess::Pipeline;
use crate::task::ids::{BackendName, PromptId, TaskId};
use crate::task::{error_code, InputFile, Status};

/// Settings the dispatcher routes by.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub max_in_flight: usize,
    pub max_attempts: i32,
    pub inputs_dir: PathBuf,
}

/// A task handed to a backend (or on its way there).
#[derive(Debug, Clone)]
struct Held {
    prompt_id: PromptId,
    /// Names of its input images on that backend (removed by the cleaner once the job ended).
    uploads: Vec<String>,
    /// Handed to the backend (its claim is written): the backend has it, or will in a moment.
    sent: bool,
}

struct Slot {
    name: BackendName,
    addr: Addr<Backend>,
    up: bool,
    queue_remaining: u32,
    held: HashMap<TaskId, Held>,
    /// No new job before this (see `outcomes::BACKEND_COOLDOWN`).
    cool_until: Option<Instant>,
}

impl Slot {
    fn facts(&self, passed: Option<&BTreeSet<i32>>, checking: bool) -> BackendFacts {
        BackendFacts {
            up: self.up,
            held: self.held.len(),
            queue_remaining: self.queue_remaining,
            cool_until: self.cool_until,
            passed: passed.cloned().unwrap_or_default(),
            checking,
        }
    }
}

pub struct Dispatcher {
    cfg: DispatcherConfig,
    db: DatabaseConnection,
    pipeline: Pipeline,
    slots: Vec<Slot>,
    queue: Queue,
    /// Rotates the tie-break between equally loaded backends, so a burst spreads out.
    rr: usize,
    accepting: bool,
    /// A reconciliation is under way; `reconcile_again`: another outage ended meanwhile.
    reconciling: bool,
    reconcile_again: bool,
    /// The releases each backend passed (`ReleaseGate`), by name: known before the backends are
    /// attached (startup sends them first).
    passed: HashMap<BackendName, BTreeSet<i32>>,
    /// The backends a deployment is checking now (`Checking`): no new jobs there meanwhile.
    checking: HashSet<BackendName>,
    /// Queued tasks whose `waiting` event (no up backend passed their release) is recorded: one
    /// event per wait, not one per routing pass.
    waiting_noted: HashSet<TaskId>,
}

impl Dispatcher {
    pub fn new(cfg: DispatcherConfig, db: DatabaseConnection, pipeline: Pipeline) -> Dispatcher {
        Dispatcher {
            cfg,
            db,
            pipeline,
            slots: Vec::new(),
            queue: Queue::default(),
            rr: 0,
            accepting: true,
            reconciling: false,
            reconcile_again: false,
            passed: HashMap::new(),
            checking: HashSet::new(),
            waiting_noted: HashSet::new(),
        }
    }

    /// Queues a task unless it is queued or held already; answers whether it was queued now.
    fn push(
        &mut self,
        task_id: TaskId,
        priority: i32,
        prompt_id: Option<PromptId>,
        release: Option<i32>,
    ) -> bool {
        if self.queue.contains(task_id.as_str()) || self.holds(task_id.as_str()) {
            return false;
        }
        self.queue.push_of(task_id, priority, prompt_id, release);
        true
    }

    /// Whether a backend holds the task (it runs there, or its claim is being written).
    fn holds(&self, task_id: &str) -> bool {
        self.slots.iter().any(|s| s.held.contains_key(task_id))
    }

    /// The next task and the backend (slot) it goes to: see [`routing::next_assignment`].
    fn next_assignment(&mut self) -> Option<(usize, TaskId)> {
        let backends: Vec<BackendFacts> = self
            .slots
            .iter()
            .map(|s| s.facts(self.passed.get(&s.name), self.checking.contains(&s.name)))
            .collect();
        let choice = routing::next_assignment(
            &backends,
            self.queue.facts(),
            self.cfg.max_in_flight,
            Instant::now(),
            self.rr,
        )?;
        self.rr = choice.cursor;
        Some((choice.backend, choice.task_id.clone()))
    }

    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if !self.accepting {
            return;
        }
        while let Some((i, task_id)) = self.next_assignment() {
            let Some((key, prompt_id)) = self.queue.take(task_id.as_str()) else {
                break; // routing chooses among queued tasks only
            };
            self.waiting_noted.remove(&task_id);
            let prompt_id = prompt_id.unwrap_or_else(PromptId::new);
            self.slots[i].held.insert(
                task_id,
                Held {
                    prompt_id: prompt_id.clone(),
                    uploads: vec![],
                    sent: false,
                },
            );
            self.hand_over(i, key, prompt_id, ctx);
        }
        self.note_waiting();
    }

    /// Records a `waiting` event on each queued task of a release no up backend passed (once per
    /// task while it waits). Walks the queue only when such a release exists.
    fn note_waiting(&mut self) {
        let runnable = |r: i32| {
            self.slots
                .iter()
                .any(|s| s.up && self.passed.get(&s.name).is_some_and(|p| p.contains(&r)))
        };
        let mut blocked: HashMap<i32, bool> = HashMap::new();
        let mut newly = Vec::new();
        for t in self.queue.facts() {
            let Some(r) = t.release else { continue };
            if !*blocked.entry(r).or_insert_with(|| !runnable(r)) {
                continue;
            }
            if !self.waiting_noted.contains(t.task_id) {
                newly.push((t.task_id.clone(), r));
            }
        }
        for (task_id, r) in newly {
            self.pipeline.recorder.do_send(RecordEvent {
                task_id: task_id.clone(),
                event: Event::new(
                    "waiting",
                    json!({ "reason": format!("no up backend passed release {r}") }),
                ),
            });
            self.waiting_noted.insert(task_id);
        }
    }

    /// Claims a task for slot `i` in the database (it must still be queued) and sends it there.
    fn hand_over(&mut self, i: usize, key: QueueKey, prompt_id: PromptId, ctx: &mut Context<Self>) {
        let recorder = self.pipeline.recorder.clone();
        let backend = self.slots[i].name.clone();
        let task_id = key.task_id.clone();
        // With another job already handed to this backend, the GPU has work: this claim may wait a
        // little to share a commit (usually with the end of the job that freed the slot).
        let may_wait = self.slots[i].held.values().any(|h| h.sent);
        async move {
            let claimed = recorder
                .send(Claim {
                    task_id: task_id.clone(),
                    may_wait,
                    patch: TaskPatch {
                        backend: Some(Some(backend.clone().into())),
                        comfyui_task_id: Some(Some(prompt_id.clone().into())),
                        count_attempt: true,
                        dispatched_at: Some(Utc::now()),
                        ..Default::default()
                    },
                    event: Event::new(
                        "dispatched",
                        json!({ "backend": backend, "prompt_id": prompt_id }),
                    ),
                })
                .await
                .map_err(|e| anyhow::anyhow!(e))??;
            // Accepted → first claimed; a requeued task's later claims would count it twice.
            if let Some(t) = claimed.as_ref().filter(|t| t.attempts <= 1) {
                let wait = (Utc::now() - t.created_at).to_std().unwrap_or_default();
                crate::metrics::dispatch_delay(&t.workflow, wait);
            }
            Ok::<_, anyhow::Error>(claimed)
        }
        .into_actor(self)
        .map(move |res, act, ctx| {
            let task_id = key.task_id.clone();
            match res {
                // Cancelled or past its deadline while the claim was written: do not run it.
                Ok(Some(_)) if !act.slots[i].held.contains_key(&task_id) => act.dispatch(ctx),
                Ok(Some(task)) => match act.build_run(&task) {
                    Ok(run) => {
                        if let Some(h) = act.slots[i].held.get_mut(&task_id) {
                            h.sent = true;
                            h.uploads = run
                                .inputs
                                .iter()
                                .map(|(f, _)| f.upload_name.clone())
                                .collect();
                        }
                        act.slots[i].addr.do_send(run);
                    }
                    Err(e) => {
                        act.slots[i].held.remove(&task_id);
                        act.fail(
                            task_id,
                            &Status::ON_BACKEND,
                            error_code::OTHER,
                            format!("stored task unreadable: {e}"),
                            Value::Null,
                            ctx,
                        );
                        act.dispatch(ctx);
                    }
                },
                // Cancelled (or taken by another instance) between queue and claim.
                Ok(None) => {
                    act.slots[i].held.remove(&task_id);
                    act.dispatch(ctx);
                }
                Err(e) => {
                    error!(task.id = %task_id, error = %e, "claim failed; will retry");
                    let prompt_id = act.slots[i].held.remove(&task_id).map(|h| h.prompt_id);
                    act.queue.put_back(key, prompt_id);
                    ctx.run_later(Duration::from_secs(1), |act, ctx| act.dispatch(ctx));
                }
            }
        })
        .spawn(ctx);
    }

    fn build_run(&self, task: &crate::entity::task::Model) -> anyhow::Result<Run> {
        let graph: Map<String, Value> = serde_json::from_str(&task.graph)?;
        let inputs: Vec<InputFile> = serde_json::from_str(&task.inputs)?;
        let output_nodes: Vec<String> = serde_json::from_str(&task.output_nodes)?;
        let dir = self.cfg.inputs_dir.join(&task.id);
        Ok(Run {
            task_id: task.id.clone().into(),
            prompt_id: task.comfyui_task_id.clone().unwrap_or_default().into(),
            graph,
            inputs: inputs
                .into_iter()
                .map(|f| {
                    let p = dir.join(&f.file);
                    (f, p)
                })
                .collect(),
            output_nodes,
        })
    }

    fn fail(
        &self,
        task_id: TaskId,
        from: &[Status],
        code: i32,
        message: String,
        details: Value,
        ctx: &mut Context<Self>,
    ) {
        let pipeline = self.pipeline.clone();
        let from = from.to_vec();
        async move {
            if let Err(e) = pipeline
                .finisher
                .finish_failed(task_id.as_str(), &from, code, message, details)
                .await
            {
                error!(task.id = %task_id, error = %e, "could not record failure");
            }
        }
        .into_actor(self)
        .spawn(ctx);
    }

    /// Takes a task out of dispatch: off comfyd's queue, or stopped on the backend that holds it
    /// (deleted from its queue, or interrupted). Its terminal state is the caller's to record.
    fn withdraw(&mut self, task_id: &TaskId) {
        self.queue.forget(task_id.as_str());
        self.waiting_noted.remove(task_id);
        let Some(i) = self.slots.iter().position(|s| s.held.contains_key(task_id)) else {
            return;
        };
        if let Some(held) = self.slots[i].held.remove(task_id) {
            self.slots[i].addr.do_send(Cancel {
                prompt_id: held.prompt_id,
            });
            self.clean_uploads(i, task_id, held.uploads);
        }
    }

    /// Input images of a job that ended are no longer needed on its backend.
    fn clean_uploads(&self, i: usize, task_id: &TaskId, uploads: Vec<String>) {
        if !uploads.is_empty() {
            let files = uploads
                .into_iter()
                .map(|n| ("input".to_string(), n))
                .collect();
            self.pipeline.cleaner.do_send(CleanFiles {
                backend: self.slots[i].name.clone(),
                task_id: task_id.clone(),
                files,
            });
        }
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1 << 16);
        ctx.run_interval(deadlines::SWEEP_EVERY, |act, ctx| act.sweep_deadlines(ctx));
        let mut recoveries = self.pipeline.health.recoveries();
        let me = ctx.address();
        actix_rt::spawn(async move {
            while recoveries.changed().await.is_ok() {
                me.do_send(Reconcile);
            }
        });
    }
}

impl Handler<AttachBackends> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: AttachBackends, ctx: &mut Context<Self>) {
        let me = ctx.address();
        let reports = Reports {
            state: me.clone().recipient(),
            started: me.clone().recipient(),
            ended: me.recipient(),
        };
        for cfg in msg.0 {
            let name = cfg.name.clone();
            let addr = Backend::new(cfg, reports.clone()).start();
            self.pipeline.cleaner.do_send(RegisterBackend {
                name: name.clone(),
                clean: addr.clone().recipient(),
            });
            self.slots.push(Slot {
                name,
                addr,
                up: false,
                queue_remaining: 0,
                held: HashMap::new(),
                cool_until: None,
            });
        }
        self.recover(ctx);
    }
}

impl Handler<Enqueue> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) {
        self.push(msg.task_id, msg.priority, msg.prompt_id, msg.release);
        self.dispatch(ctx);
    }
}

impl Handler<Checking> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: Checking, ctx: &mut Context<Self>) {
        if msg.checking {
            self.checking.insert(msg.backend);
        } else {
            self.checking.remove(&msg.backend);
        }
        self.dispatch(ctx);
    }
}

impl Handler<ReleaseGate> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: ReleaseGate, ctx: &mut Context<Self>) {
        let set = self.passed.entry(msg.backend).or_default();
        if msg.passed {
            set.insert(msg.release);
        } else {
            set.remove(&msg.release);
        }
        self.dispatch(ctx);
    }
}

impl Handler<BackendState> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: BackendState, ctx: &mut Context<Self>) {
        if let Some(s) = self.slots.iter_mut().find(|s| s.name == msg.backend) {
            if s.up != msg.up {
                info!(backend.name = %s.name, up = msg.up, "backend {} is {}", s.name, if msg.up { "up" } else { "down" });
            }
            s.up = msg.up;
            s.queue_remaining = msg.queue_remaining;
        }
        self.dispatch(ctx);
    }
}

impl Handler<CancelTask> for Dispatcher {
    type Result = ResponseActFuture<Self, Result<CancelOutcome, DispatchError>>;

    fn handle(&mut self, msg: CancelTask, _ctx: &mut Context<Self>) -> Self::Result {
        let pipeline = self.pipeline.clone();
        let task_id = msg.task_id;
        let id = task_id.clone();
        Box::pin(
            async move {
                pipeline
                    .finisher
                    .finish_cancelled(id.as_str(), &Status::BEFORE_STORING)
                    .await
                    .map_err(DispatchError::cancel_not_recorded)
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                if !res? {
                    return Ok(CancelOutcome::AlreadyFinished);
                }
                act.withdraw(&task_id);
                act.dispatch(ctx);
                Ok(CancelOutcome::Cancelled)
            }),
        )
    }
}

impl Handler<Snapshot> for Dispatcher {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(SnapshotView {
            queued: self.queue.len(),
            queued_by_priority: self.queue.by_priority(),
            accepting: self.accepting,
            backends: self
                .slots
                .iter()
                .map(|s| BackendView {
                    name: s.name.clone(),
                    up: s.up,
                    in_flight: s.held.len(),
                    queue_remaining: s.queue_remaining,
                })
                .collect(),
        })
    }
}

impl Handler<StopDispatching> for Dispatcher {
    type Result = ();

    fn handle(&mut self, _: StopDispatching, _ctx: &mut Context<Self>) {
        self.accepting = false;
    }
}

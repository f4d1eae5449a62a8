//! `Dispatcher`: comfyd's dispatch queue and the rule that routes each task to a backend.
//!
//! It owns the queue of task ids (priority first, then arrival; rebuilt from the database at start),
//! the latest health and load of every backend, and which task each backend holds. It hands a backend a
//! task only while that backend holds fewer than `max_in_flight`, choosing the least-loaded backend that
//! is up, so the queue stays in comfyd, where it survives restarts and can be cancelled and re-routed.
//!
//! Talks to: routes (`Enqueue`, `CancelTask`, `Snapshot`), `Backend` actors (`Run`, `Adopt`, `Cancel` out;
//! `BackendState`, `JobStarted`, `JobEnded` in), the `Recorder` (claims and transitions), the `Uploader`
//! (a finished job's outputs) and the post-processing `Pipeline` (terminal states and their webhooks).
//!
//! After a database outage ends (see `crate::db_health`), it reconciles: what the database holds of
//! unfinished tasks is resumed as at a start, except what it is running now (see
//! [`Dispatcher::reconcile`]).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use sea_orm::DatabaseConnection;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tracing::{error, info, warn};

use super::backend::{self, Backend};
use crate::comfy::protocol::ExecutionError;
use crate::comfy::FileRef;
use crate::db::{self, Event, TaskPatch};
use crate::postprocess::cleaner::{CleanFiles, RegisterBackend};
use crate::postprocess::recorder::{Claim, Flush, MarkStarted, Transition};
use crate::postprocess::uploader::StoreOutputs;
use crate::postprocess::Pipeline;
use crate::task::{error_code, InputFile, Status};

/// A backend that failed to take a job (HTTP error, connection refused) gets none for this long, so the
/// job goes to another backend rather than straight back.
const BACKEND_COOLDOWN: Duration = Duration::from_secs(1);
/// How often tasks past their deadline are looked for.
const DEADLINE_SWEEP: Duration = Duration::from_secs(2);

/// Settings the dispatcher routes by.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub max_in_flight: usize,
    pub max_attempts: i32,
    pub inputs_dir: PathBuf,
}

/// Ordering key of the queue: higher priority first, then first come first served.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct QueueKey {
    neg_priority: i64,
    seq: u64,
    task_id: String,
}

/// A task handed to a backend (or on its way there).
#[derive(Debug, Clone)]
struct Held {
    prompt_id: String,
    /// Names of its input images on that backend (removed by the cleaner once the job ended).
    uploads: Vec<String>,
    /// Handed to the backend (its claim is written): the backend has it, or will in a moment.
    sent: bool,
}

struct Slot {
    name: String,
    addr: Addr<Backend>,
    up: bool,
    queue_remaining: u32,
    held: HashMap<String, Held>,
    /// No new job before this (see `BACKEND_COOLDOWN`).
    cool_until: Option<std::time::Instant>,
}

impl Slot {
    /// Work ahead of a new job there: ours, or the server's own count when others also use it.
    fn load(&self) -> usize {
        self.held.len().max(self.queue_remaining as usize)
    }
}

pub struct Dispatcher {
    cfg: DispatcherConfig,
    db: DatabaseConnection,
    pipeline: Pipeline,
    slots: Vec<Slot>,
    queue: BTreeSet<QueueKey>,
    queued: HashMap<String, QueueKey>,
    seq: u64,
    /// Rotates the tie-break between equally loaded backends, so a burst spreads out.
    rr: usize,
    /// The backend each re-queued task last failed on: it goes elsewhere when it can.
    avoid: HashMap<String, usize>,
    /// The prompt id each queued task will run under, as recorded in its row (chosen at submit for
    /// the first attempt, at requeue for a later one); a task without one gets a fresh id.
    next_prompt: HashMap<String, String>,
    accepting: bool,
    /// A reconciliation is under way; `reconcile_again`: another outage ended meanwhile.
    reconciling: bool,
    reconcile_again: bool,
}

/// What the database holds of unfinished tasks: queued ones (id, priority), ones on a backend, and
/// executed ones (outputs being stored).
struct Unfinished {
    /// (id, priority, the prompt id its next attempt runs under)
    queued: Vec<(String, i32, Option<String>)>,
    on_backend: Vec<crate::entity::task::Model>,
    executed: Vec<crate::entity::task::Model>,
}

impl Unfinished {
    async fn read(db: &DatabaseConnection) -> Result<Unfinished, sea_orm::DbErr> {
        Ok(Unfinished {
            queued: db::queued_tasks(db).await?,
            on_backend: db::tasks_in(db, &Status::ON_BACKEND).await?,
            executed: db::tasks_in(db, &[Status::Executed]).await?,
        })
    }
}

impl Dispatcher {
    pub fn new(cfg: DispatcherConfig, db: DatabaseConnection, pipeline: Pipeline) -> Dispatcher {
        Dispatcher {
            cfg,
            db,
            pipeline,
            slots: Vec::new(),
            queue: BTreeSet::new(),
            queued: HashMap::new(),
            seq: 0,
            rr: 0,
            avoid: HashMap::new(),
            next_prompt: HashMap::new(),
            accepting: true,
            reconciling: false,
            reconcile_again: false,
        }
    }

    /// Queues a task unless it is queued or held already; answers whether it was queued now.
    fn push(&mut self, task_id: String, priority: i32, prompt_id: Option<String>) -> bool {
        if self.queued.contains_key(&task_id) || self.holds(&task_id) {
            return false;
        }
        if let Some(p) = prompt_id {
            self.next_prompt.insert(task_id.clone(), p);
        }
        self.seq += 1;
        let key = QueueKey {
            neg_priority: -(priority as i64),
            seq: self.seq,
            task_id: task_id.clone(),
        };
        self.queued.insert(task_id, key.clone());
        self.queue.insert(key);
        true
    }

    /// Whether a backend holds the task (it runs there, or its claim is being written).
    fn holds(&self, task_id: &str) -> bool {
        self.slots.iter().any(|s| s.held.contains_key(task_id))
    }

    /// The next task and the backend it goes to: backends that are up, not cooling down and have room,
    /// least loaded first (ties round-robin, so a burst spreads); for each, the first queued task that
    /// did not just fail there, unless no other backend is up.
    fn next_assignment(&mut self) -> Option<(usize, QueueKey)> {
        let n = self.slots.len();
        let now = std::time::Instant::now();
        let mut candidates: Vec<usize> = (0..n)
            .filter(|&i| {
                let s = &self.slots[i];
                s.up && s.held.len() < self.cfg.max_in_flight
                    && s.cool_until.is_none_or(|t| t <= now)
            })
            .collect();
        candidates.sort_by_key(|&i| (self.slots[i].load(), (i + n - self.rr) % n));
        for i in candidates {
            let elsewhere = self.slots.iter().enumerate().any(|(j, s)| j != i && s.up);
            let found = self
                .queue
                .iter()
                .find(|k| !elsewhere || self.avoid.get(&k.task_id) != Some(&i))
                .cloned();
            if let Some(key) = found {
                self.rr = (i + 1) % n;
                return Some((i, key));
            }
        }
        None
    }

    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if !self.accepting {
            return;
        }
        while let Some((i, key)) = self.next_assignment() {
            self.queue.remove(&key);
            self.queued.remove(&key.task_id);
            self.avoid.remove(&key.task_id);
            let prompt_id = self
                .next_prompt
                .remove(&key.task_id)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            self.slots[i].held.insert(
                key.task_id.clone(),
                Held {
                    prompt_id: prompt_id.clone(),
                    uploads: vec![],
                    sent: false,
                },
            );
            self.hand_over(i, key, prompt_id, ctx);
        }
    }

    /// Claims a task for slot `i` in the database (it must still be queued) and sends it there.
    fn hand_over(&mut self, i: usize, key: QueueKey, prompt_id: String, ctx: &mut Context<Self>) {
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
                        backend: Some(Some(backend.clone())),
                        comfyui_task_id: Some(Some(prompt_id.clone())),
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
                    if let Some(h) = act.slots[i].held.remove(&task_id) {
                        act.next_prompt.insert(task_id.clone(), h.prompt_id);
                    }
                    act.queued.insert(task_id, key.clone());
                    act.queue.insert(key);
                    ctx.run_later(Duration::from_secs(1), |act, ctx| act.dispatch(ctx));
                }
            }
        })
        .spawn(ctx);
    }

    fn build_run(&self, task: &crate::entity::task::Model) -> anyhow::Result<backend::Run> {
        let graph: Map<String, Value> = serde_json::from_str(&task.graph)?;
        let inputs: Vec<InputFile> = serde_json::from_str(&task.inputs)?;
        let output_nodes: Vec<String> = serde_json::from_str(&task.output_nodes)?;
        let dir = self.cfg.inputs_dir.join(&task.id);
        Ok(backend::Run {
            task_id: task.id.clone(),
            prompt_id: task.comfyui_task_id.clone().unwrap_or_default(),
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
        task_id: String,
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
                .finish_failed(&task_id, &from, code, message, details)
                .await
            {
                error!(task.id = %task_id, error = %e, "could not record failure");
            }
        }
        .into_actor(self)
        .spawn(ctx);
    }

    /// A job that did not run (backend gone, prompt lost): back in the queue, or failed after the
    /// attempt limit.
    fn retry_or_fail(&mut self, task_id: String, reason: String, ctx: &mut Context<Self>) {
        let db = self.db.clone();
        let recorder = self.pipeline.recorder.clone();
        let max = self.cfg.max_attempts;
        async move {
            let Some(task) = db::get_task(&db, &task_id).await? else {
                return Ok(None);
            };
            if task.attempts >= max {
                return Ok(Some((task, false, None)));
            }
            // A new id for the next attempt: the old one may still come back from the backend that
            // lost it. Recorded now, so the task shows the id it will run under.
            let next = uuid::Uuid::new_v4().to_string();
            let requeued = recorder
                .send(Transition {
                    task_id: task_id.clone(),
                    from: Status::ON_BACKEND.to_vec(),
                    to: Status::Queued,
                    patch: TaskPatch {
                        backend: Some(None),
                        comfyui_task_id: Some(Some(next.clone())),
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
                act.push(task.id, task.priority, next);
                act.dispatch(ctx);
            }
            Ok(Some((task, false, _))) => {
                act.avoid.remove(&task.id);
                let msg = format!("no backend ran it in {} attempts", task.attempts);
                act.fail(
                    task.id,
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

    /// Rebuilds the queue and re-attaches dispatched work after a start (crash or not).
    fn recover(&mut self, ctx: &mut Context<Self>) {
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
    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        if self.reconciling {
            self.reconcile_again = true;
            return;
        }
        self.reconciling = true;
        let db = self.db.clone();
        let recorder = self.pipeline.recorder.clone();
        async move {
            recorder
                .send(Flush)
                .await
                .map_err(|e| sea_orm::DbErr::Custom(e.to_string()))??;
            Unfinished::read(&db).await
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
        for (id, priority, prompt_id) in unfinished.queued {
            nq += usize::from(self.push(id, priority, prompt_id));
        }
        for t in unfinished.on_backend {
            if self.holds(&t.id) {
                continue;
            }
            nb += 1;
            let slot = t
                .backend
                .as_ref()
                .and_then(|b| self.slots.iter().position(|s| &s.name == b));
            match (slot, t.comfyui_task_id.clone()) {
                (Some(i), Some(prompt_id)) => {
                    let output_nodes = serde_json::from_str(&t.output_nodes).unwrap_or_default();
                    self.slots[i].held.insert(
                        t.id.clone(),
                        Held {
                            prompt_id: prompt_id.clone(),
                            uploads: vec![],
                            sent: true,
                        },
                    );
                    self.slots[i].addr.do_send(backend::Adopt {
                        task_id: t.id,
                        prompt_id,
                        output_nodes,
                    });
                }
                // Its backend is no longer configured: run it elsewhere.
                _ => self.retry_or_fail(t.id, "backend no longer configured".into(), ctx),
            }
        }
        for t in unfinished.executed {
            if let Some(b) = t.backend {
                self.pipeline.uploader.do_send(StoreOutputs {
                    task_id: t.id,
                    backend: b,
                    files: None,
                });
            }
        }
        if nq + nb + ne > 0 {
            info!(queued = nq, on_backend = nb, executed = ne, "{what}");
        }
        self.dispatch(ctx);
    }

    /// Fails every task past its deadline that has not run to the end: removed from the queue, or
    /// stopped on its backend. Tasks whose outputs are being stored are left to finish.
    fn sweep_deadlines(&mut self, ctx: &mut Context<Self>) {
        let db = self.db.clone();
        async move { db::overdue_tasks(&db, Utc::now()).await }
            .into_actor(self)
            .map(|res, act, ctx| {
                let overdue = match res {
                    Ok(t) => t,
                    Err(e) => return warn!(error = %e, "deadline sweep failed"),
                };
                for t in overdue {
                    act.withdraw(&t.id);
                    let msg = format!(
                        "deadline passed ({} after it was accepted)",
                        t.deadline_at - t.created_at
                    );
                    act.fail(
                        t.id,
                        &Status::BEFORE_STORING,
                        error_code::OTHER,
                        msg,
                        Value::Null,
                        ctx,
                    );
                }
                act.dispatch(ctx);
            })
            .spawn(ctx);
    }

    /// Takes a task out of dispatch: off comfyd's queue, or stopped on the backend that holds it
    /// (deleted from its queue, or interrupted). Its terminal state is the caller's to record.
    fn withdraw(&mut self, task_id: &str) {
        if let Some(key) = self.queued.remove(task_id) {
            self.queue.remove(&key);
        }
        self.avoid.remove(task_id);
        self.next_prompt.remove(task_id);
        let Some(i) = self.slots.iter().position(|s| s.held.contains_key(task_id)) else {
            return;
        };
        if let Some(held) = self.slots[i].held.remove(task_id) {
            self.slots[i].addr.do_send(backend::Cancel {
                prompt_id: held.prompt_id,
            });
            self.clean_uploads(i, task_id, held.uploads);
        }
    }

    /// Input images of a job that ended are no longer needed on its backend.
    fn clean_uploads(&self, i: usize, task_id: &str, uploads: Vec<String>) {
        if !uploads.is_empty() {
            let files = uploads
                .into_iter()
                .map(|n| ("input".to_string(), n))
                .collect();
            self.pipeline.cleaner.do_send(CleanFiles {
                backend: self.slots[i].name.clone(),
                task_id: task_id.to_string(),
                files,
            });
        }
    }

    fn release(&mut self, backend: &str, task_id: &str) -> Option<(usize, Held)> {
        let i = self.slots.iter().position(|s| s.name == backend)?;
        self.slots[i].held.remove(task_id).map(|h| (i, h))
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1 << 16);
        ctx.run_interval(DEADLINE_SWEEP, |act, ctx| act.sweep_deadlines(ctx));
        let mut recoveries = self.pipeline.health.recoveries();
        let me = ctx.address();
        actix_rt::spawn(async move {
            while recoveries.changed().await.is_ok() {
                me.do_send(Reconcile);
            }
        });
    }
}

/// A database outage ended: reconcile (see [`Dispatcher::reconcile`]).
#[derive(Message, Debug)]
#[rtype(result = "()")]
struct Reconcile;

impl Handler<Reconcile> for Dispatcher {
    type Result = ();

    fn handle(&mut self, _: Reconcile, ctx: &mut Context<Self>) {
        self.reconcile(ctx);
    }
}

/// Starts the backend actors; sent once by startup before any task.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachBackends(pub Vec<backend::BackendConfig>);

impl Handler<AttachBackends> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: AttachBackends, ctx: &mut Context<Self>) {
        let me = ctx.address();
        for cfg in msg.0 {
            let name = cfg.name.clone();
            let addr = Backend::new(cfg, me.clone()).start();
            self.pipeline.cleaner.do_send(RegisterBackend {
                name: name.clone(),
                addr: addr.clone(),
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

/// A task was accepted and recorded as queued.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Enqueue {
    pub task_id: String,
    pub priority: i32,
    /// The prompt id recorded with the task at submit.
    pub prompt_id: Option<String>,
}

impl Handler<Enqueue> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) {
        self.push(msg.task_id, msg.priority, msg.prompt_id);
        self.dispatch(ctx);
    }
}

/// A backend's health or load changed.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct BackendState {
    pub backend: String,
    pub up: bool,
    pub queue_remaining: u32,
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

/// ComfyUI started executing a task.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct JobStarted {
    pub backend: String,
    pub task_id: String,
    pub prompt_id: String,
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

/// How a job ended on its backend.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    /// Executed; these are the files of its output nodes.
    Success(Vec<FileRef>),
    /// ComfyUI raised an error while executing it.
    Failed(ExecutionError),
    Interrupted,
    /// ComfyUI refused the prompt (validation): no other backend would accept it either.
    Rejected {
        message: String,
        details: Value,
    },
    /// The backend could not take it (down, HTTP error).
    Unavailable(String),
    /// It vanished from the backend (restart, or unreachable too long).
    Lost(String),
    /// The backend answered with a name comfyd refuses to use (see `comfy::names`): error_code 3.
    UnsafeName(String),
}

/// A job left its backend, one way or another.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct JobEnded {
    pub backend: String,
    pub task_id: String,
    pub prompt_id: String,
    pub outcome: JobOutcome,
}

impl Handler<JobEnded> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: JobEnded, ctx: &mut Context<Self>) {
        let held = self.release(&msg.backend, &msg.task_id);
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
                    self.slots[*i].cool_until = Some(std::time::Instant::now() + BACKEND_COOLDOWN);
                    self.avoid.insert(task_id.clone(), *i);
                    ctx.run_later(BACKEND_COOLDOWN, |act, ctx| act.dispatch(ctx));
                }
                self.retry_or_fail(task_id.clone(), reason, ctx);
            }
            JobOutcome::Lost(reason) => {
                warn!(task.id = %task_id, backend.name = %msg.backend, %reason, "job did not run; re-dispatching");
                if let Some((i, _)) = &held {
                    self.avoid.insert(task_id.clone(), *i);
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

/// What a cancel came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    Cancelled,
    /// Already done, failed or cancelled.
    AlreadyFinished,
}

/// Cancels a task: removed from comfyd's queue, or deleted/interrupted on its backend.
#[derive(Message, Debug)]
#[rtype(result = "Result<CancelOutcome, anyhow::Error>")]
pub struct CancelTask {
    pub task_id: String,
}

impl Handler<CancelTask> for Dispatcher {
    type Result = ResponseActFuture<Self, Result<CancelOutcome, anyhow::Error>>;

    fn handle(&mut self, msg: CancelTask, _ctx: &mut Context<Self>) -> Self::Result {
        let pipeline = self.pipeline.clone();
        let task_id = msg.task_id;
        let id = task_id.clone();
        Box::pin(
            async move {
                let applied = pipeline
                    .finisher
                    .finish_cancelled(&id, &Status::BEFORE_STORING)
                    .await?;
                Ok::<_, anyhow::Error>(applied)
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

/// One backend as `/healthz` and `/backends` show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BackendView {
    pub name: String,
    pub up: bool,
    pub in_flight: usize,
    pub queue_remaining: u32,
}

/// The dispatcher's view of things.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SnapshotView {
    pub queued: usize,
    pub accepting: bool,
    pub backends: Vec<BackendView>,
}

#[derive(Message)]
#[rtype(result = "SnapshotView")]
pub struct Snapshot;

impl Handler<Snapshot> for Dispatcher {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(SnapshotView {
            queued: self.queue.len(),
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

/// Shutdown: hand out no more work (what is queued stays queued in the database for the next start).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopDispatching;

impl Handler<StopDispatching> for Dispatcher {
    type Result = ();

    fn handle(&mut self, _: StopDispatching, _ctx: &mut Context<Self>) {
        self.accepting = false;
    }
}

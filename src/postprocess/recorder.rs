//! `Recorder`: the only writer to the database, with group commit.
//!
//! Writes are applied in arrival order. Every write that arrives while a batch is being written joins
//! the next one, so under load many writes share one commit (the cost that dominates SQLite and
//! PostgreSQL writes alike), and a burst of submits waits for one commit instead of queueing behind
//! each other's. A batch's new tasks are committed in a transaction of their own, ahead of its other
//! writes, and answered before those are applied (see `write_batch`). At low rates there is nothing to
//! share with, so the transaction overhead (BEGIN, COMMIT, a round trip each) is cut two more ways: a
//! batch is taken one turn of the event loop after its first write arrived, so writes sent together
//! (a job's end, the claim of the next) share it; and a write nobody waits on ([`Write::can_linger`])
//! waits up to [`LINGER`] for company ([`START_HOLD`] for a job's `running` mark). If a batch fails,
//! each of its writes is applied again on its own, so only the faulty one reports an error.
//! SQLite never sees two writers. Readers (routes, recovery) query through `crate::db` directly.
//!
//! # When the database cannot be reached
//!
//! A batch that fails because the database is unreachable ([`is_unreachable`]: server stopped,
//! connection lost, file unwritable) is not answered with the error: its writes go back to the
//! head of the queue, in order, and are written again after a backoff ([`RETRY_FIRST`] doubling to
//! [`RETRY_MAX`]) until they commit, so no transition, claim, running mark, executed record,
//! terminal state (with its webhook) or webhook attempt is lost to an outage, and whoever waits on
//! one simply waits longer. Retrying is safe because every status change is conditional: a write
//! that did commit although its answer was lost (the connection dropped during COMMIT) is found
//! not to apply the second time; what its sender then does not know is put right by the
//! Dispatcher's reconciliation after the outage (`Dispatcher::reconcile`). New tasks are the
//! exception: their submitters are answered at once with the error (the route answers 503 and the
//! client retries), and while the outage lasts new tasks are refused without being queued. With
//! nothing to retry, a probe ([`db::probe_write`]) tells when the database is back. The outage
//! and its end are published in [`DbHealth`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, TransactionTrait};
use tokio::sync::oneshot;

use super::retry_delay;
use crate::db::{
    self, Appends, AttemptOutcome, Event, Finished, Inserted, NewOutput, NewTask, OutputMark,
    TaskPatch,
};
use crate::db_health::{is_unreachable, DbHealth};
use crate::entity::task;
use crate::task::Status;

/// Most writes in one transaction: short transactions keep the wait of a write that arrives behind a
/// backlog short.
const MAX_BATCH: usize = 64;

/// Places kept for the other writes in a batch when a backlog of urgent ones would fill it
/// (see `take_batch`).
const RESERVED_FOR_OTHERS: usize = 16;

/// Longest a write nobody waits on stays queued alone. Losing such writes to a crash in this window
/// loses no job: recovery asks the backend about a job whose `running` mark or `executed` record was
/// lost (ComfyUI's history has the outputs), and a webhook whose attempt was not recorded is sent
/// again, with the same webhook-id. A claim that waits (`Claim::may_wait`) holds its prompt back,
/// so it waits only while its backend has another prompt to run.
const LINGER: Duration = Duration::from_millis(100);

/// Longest a job's `running` mark waits for the job's end, so that a job shorter than this (a cached
/// prompt, a small workflow) is written once, from `dispatched` to its end (see `plan`), and costs
/// one transaction instead of two. Each transaction at low rates wakes comfyd's threads from idle,
/// which costs more than its statements (BENCHMARKS.md, round 6). The mark is what `GET /tasks`
/// shows as `running`; its `started` event and `started_at` carry the real time either way, and
/// recovery treats `dispatched` and `running` alike.
const START_HOLD: Duration = Duration::from_secs(1);

/// How long after a commit the write-ahead log is checkpointed (SQLite; see `db::checkpoint`).
///
/// In two steps, because the Recorder's own commits do not checkpoint (a checkpoint writes and syncs
/// the database file, and every write queued behind it would wait): first on the shared pool, beside
/// the writes, which copies nearly all of the log; then, before the next batch, on the Recorder's
/// connection, which copies what was written meanwhile. Only a log copied completely at the moment
/// a transaction starts is started afresh; without the second step, a steady stream of writes would
/// grow it without end.
const CHECKPOINT_AFTER: Duration = Duration::from_secs(1);

/// First wait before writing again after the database could not be reached; doubled on each
/// failure up to [`RETRY_MAX`], with jitter. Each attempt itself waits up to the pool's acquire
/// timeout (`db::ACQUIRE_TIMEOUT`) for a connection, so a database that is back is found
/// within about two seconds.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

pub struct Recorder {
    /// The Recorder's own connection ([`crate::db::connect_writer`]).
    db: DatabaseConnection,
    /// The shared pool, where checkpoints run beside the writes.
    readers: DatabaseConnection,
    /// SQLite: the Recorder checkpoints its write-ahead log (see [`CHECKPOINT_AFTER`]).
    checkpoints: bool,
    queue: Vec<Pending>,
    writing: bool,
    /// The timer that writes lingering writes if nothing else comes first, and when it is due.
    linger: Option<(SpawnHandle, Instant)>,
    /// A checkpoint is due (armed after a commit) or running.
    checkpoint_pending: bool,
    /// The shared pool checkpointed: finish it before the next batch.
    checkpoint_settle: bool,
    /// While the database is unreachable: the failed attempts so far and the last error.
    outage: Option<(u32, DbErr)>,
    health: DbHealth,
}

impl Recorder {
    pub fn new(db: DatabaseConnection, readers: DatabaseConnection) -> Recorder {
        Recorder {
            checkpoints: db.get_database_backend() == sea_orm::DbBackend::Sqlite,
            db,
            readers,
            queue: Vec::new(),
            writing: false,
            linger: None,
            checkpoint_pending: false,
            checkpoint_settle: false,
            outage: None,
            health: DbHealth::default(),
        }
    }

    /// Where this Recorder publishes whether the database takes writes.
    pub fn health(&self) -> DbHealth {
        self.health.clone()
    }

    /// Arms one checkpoint after a commit; none while idle.
    fn arm_checkpoint(&mut self, ctx: &mut Context<Self>) {
        if !self.checkpoints || self.checkpoint_pending {
            return;
        }
        self.checkpoint_pending = true;
        ctx.run_later(CHECKPOINT_AFTER, |act, ctx| {
            let readers = act.readers.clone();
            async move { db::checkpoint(&readers).await }
                .into_actor(act)
                .map(|res, act, _| {
                    act.checkpoint_pending = false;
                    match res {
                        Ok(()) => act.checkpoint_settle = true,
                        Err(e) => tracing::warn!(error = %e, "database checkpoint failed"),
                    }
                })
                .spawn(ctx);
        });
    }

    fn submit(
        &mut self,
        write: Write,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Result<Written, DbErr>> {
        let (reply, rx) = oneshot::channel();
        if let Some((_, e)) = self.outage.as_ref().filter(|_| write.fails_fast()) {
            let _ = reply.send(Err(e.clone()));
            return rx;
        }
        self.queue.push(Pending {
            write,
            reply,
            queued_at: Instant::now(),
        });
        // During an outage the retry timer starts the next batch.
        if !self.writing && self.outage.is_none() {
            self.schedule(ctx);
        }
        rx
    }

    /// A batch could not reach the database: hold its writes (`held`, in order) ahead of those
    /// queued meanwhile, answer the new tasks among those, and try again after a backoff.
    fn unreachable(&mut self, error: DbErr, mut held: Vec<Pending>, ctx: &mut Context<Self>) {
        let attempt = self.outage.as_ref().map_or(0, |(n, _)| *n) + 1;
        if attempt == 1 {
            tracing::warn!(error = %error, held = held.len() + self.queue.len(),
                "database unreachable: holding writes until it is back; submits answer 503 meanwhile");
        } else {
            tracing::debug!(error = %error, attempt, "database still unreachable");
        }
        self.health.set_down(&error);
        for p in std::mem::take(&mut self.queue) {
            if p.write.fails_fast() {
                let _ = p.reply.send(Err(error.clone()));
            } else {
                held.push(p);
            }
        }
        self.queue = held;
        self.outage = Some((attempt, error));
        let delay = retry_delay(attempt, RETRY_FIRST, RETRY_MAX, rand::random());
        ctx.run_later(delay, |act, ctx| act.start(ctx));
    }

    /// A batch (or the probe) committed: the outage, if there was one, is over.
    fn reachable(&mut self) {
        if self.outage.take().is_some() {
            let down = self.health.set_up().unwrap_or_default();
            tracing::info!(
                down_ms = down.as_millis() as u64,
                "database reachable again after {:.1} s; held writes written",
                down.as_secs_f64()
            );
        }
    }

    /// Starts the next batch now if a queued write should not wait, else makes sure the linger timer
    /// runs, due when the first queued write is (a write may be due before those queued earlier: a
    /// webhook attempt queued after a `running` mark).
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.queue.iter().any(|p| !p.write.can_linger()) {
            self.start(ctx);
            return;
        }
        let now = Instant::now();
        let due = now + linger_wait(&self.queue, now);
        match self.linger {
            _ if self.queue.is_empty() => {}
            Some((_, armed)) if armed <= due => {}
            _ => {
                if let Some((timer, _)) = self.linger.take() {
                    ctx.cancel_future(timer);
                }
                let timer = ctx.run_later(due - now, |act, ctx| {
                    act.linger = None;
                    act.start(ctx);
                });
                self.linger = Some((timer, due));
            }
        }
    }

    fn start(&mut self, ctx: &mut Context<Self>) {
        // During an outage an empty queue still has the probe to run.
        if self.writing || (self.queue.is_empty() && self.outage.is_none()) {
            return;
        }
        if let Some((timer, _)) = self.linger.take() {
            ctx.cancel_future(timer);
        }
        self.writing = true;
        // One turn of the event loop first: the actors that sent writes in this turn all get theirs
        // into this batch.
        async { tokio::task::yield_now().await }
            .into_actor(self)
            .then(|_, act, _| {
                let batch = take_batch(&mut act.queue, Instant::now());
                let retry = act.outage.is_some();
                let probe = retry && batch.is_empty();
                let db = act.db.clone();
                let settle = std::mem::take(&mut act.checkpoint_settle);
                async move {
                    if retry {
                        db::renew_connections(&db).await;
                    }
                    if settle {
                        if let Err(e) = db::checkpoint(&db).await {
                            tracing::warn!(error = %e, "database checkpoint failed");
                        }
                    }
                    if probe {
                        return match db::probe_write(&db).await {
                            Ok(()) => Outcome::Answered { wrote: true },
                            Err(error) => Outcome::Unreachable {
                                error,
                                held: Vec::new(),
                            },
                        };
                    }
                    write_batch(&db, batch).await
                }
                .into_actor(act)
            })
            .map(|outcome, act, ctx| {
                act.writing = false;
                match outcome {
                    Outcome::Answered { wrote } => {
                        if wrote {
                            act.reachable();
                        }
                        act.arm_checkpoint(ctx);
                        if act.outage.is_none() {
                            act.schedule(ctx);
                        } else {
                            // Everything queued was lingering: the retry timer comes back for it.
                            ctx.run_later(RETRY_FIRST, |act, ctx| act.start(ctx));
                        }
                    }
                    Outcome::Unreachable { error, held } => act.unreachable(error, held, ctx),
                }
            })
            .spawn(ctx);
    }
}

impl Actor for Recorder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Senders await their answer, so the mailbox only fills under real load, and then it is better
        // to queue than to refuse.
        ctx.set_mailbox_capacity(1 << 16);
    }
}

/// How long until the first queued write has waited as long as it may ([`Write::linger`]). A write
/// held back from the last batch (see `hold_back`) is younger than that; timing from its own arrival
/// rather than from now keeps its wait within its bound (plus a batch's write), not up to twice that.
fn linger_wait(queue: &[Pending], now: Instant) -> Duration {
    queue
        .iter()
        .map(Pending::due)
        .min()
        .map_or(LINGER, |due| due.saturating_duration_since(now))
}

/// One write waiting for its transaction.
struct Pending {
    write: Write,
    reply: oneshot::Sender<Result<Written, DbErr>>,
    queued_at: Instant,
}

impl Pending {
    /// When this write has waited as long as it may.
    fn due(&self) -> Instant {
        self.queued_at + self.write.linger().unwrap_or(Duration::ZERO)
    }
}

/// Every kind of write, as data.
enum Write {
    InsertTask(NewTask),
    Transition(Transition),
    Claim(Claim),
    RecordExecuted(RecordExecuted),
    Finish(Finish),
    RecordAttempt(AttemptOutcome),
    Redeliver(Redeliver),
    RecordEvent(RecordEvent),
    MarkStarted(MarkStarted),
    /// Writes nothing; answered once every write queued before it committed.
    Flush,
}

/// What a write answers.
enum Written {
    Inserted(Inserted),
    Claimed(Option<task::Model>),
    Applied(bool),
    Finished(Finished),
    Done,
}

impl Write {
    /// Where the write goes in its batch, before its task's ordering is applied (see `take_batch`).
    fn rank(&self) -> u8 {
        match self {
            Write::InsertTask(_) => 0,
            Write::Finish(_) => 1,
            _ => 2,
        }
    }

    /// The task this write is about, if any.
    fn task_id(&self) -> Option<&str> {
        match self {
            Write::InsertTask(t) => Some(&t.id),
            Write::Transition(m) => Some(&m.task_id),
            Write::Claim(m) => Some(&m.task_id),
            Write::RecordExecuted(m) => Some(&m.task_id),
            Write::Finish(m) => Some(&m.task_id),
            Write::RecordAttempt(a) => Some(&a.task_id),
            Write::RecordEvent(m) => Some(&m.task_id),
            Write::MarkStarted(m) => Some(&m.task_id),
            Write::Redeliver(_) | Write::Flush => None,
        }
    }

    /// Nothing urgent waits on this write: it may wait [`LINGER`] to share a transaction. A task's
    /// `RecordExecuted` is one of them: its `Finish` usually follows within a few milliseconds and
    /// then both share one commit. So is the claim of a job for a backend that has another queued.
    fn can_linger(&self) -> bool {
        self.linger().is_some()
    }

    /// Answered with the error at once when the database is unreachable, instead of being held and
    /// retried: a new task, whose submitter is waiting (the route answers 503 and the client
    /// retries, with the same `client_task_id` if it has one).
    fn fails_fast(&self) -> bool {
        matches!(self, Write::InsertTask(_))
    }

    /// Whether this write waits for its task's `Finish`, to be written with it (see `hold_back`).
    fn waits_for_finish(&self) -> bool {
        matches!(self, Write::RecordExecuted(_) | Write::MarkStarted(_))
    }

    /// How long this write may wait for company, if at all (see [`Write::can_linger`]): a `running`
    /// mark [`START_HOLD`], the others [`LINGER`].
    fn linger(&self) -> Option<Duration> {
        match self {
            Write::MarkStarted(_) => Some(START_HOLD),
            Write::RecordAttempt(_) | Write::RecordEvent(_) | Write::RecordExecuted(_) => {
                Some(LINGER)
            }
            Write::Claim(c) if c.may_wait => Some(LINGER),
            _ => None,
        }
    }

    /// Applies this write; what it appends goes to `ap`, which the caller writes before committing.
    async fn apply<C: ConnectionTrait>(&self, c: &C, ap: &mut Appends) -> Result<Written, DbErr> {
        Ok(match self {
            Write::InsertTask(t) => {
                let mut one = db::insert_tasks(c, &[t], ap).await?;
                Written::Inserted(one.pop().ok_or(DbErr::RecordNotInserted)?)
            }
            Write::Transition(m) => Written::Applied(
                db::transition(c, &m.task_id, &m.from, m.to, &m.patch, m.event.as_ref(), ap)
                    .await?,
            ),
            Write::Claim(m) => {
                Written::Claimed(db::claim(c, &m.task_id, &m.patch, &m.event, ap).await?)
            }
            Write::RecordExecuted(m) => Written::Applied(
                db::record_executed(c, &m.task_id, None, &m.from, &m.outputs, &m.event, ap).await?,
            ),
            Write::Finish(m) => Written::Finished(
                db::finish(
                    c,
                    &m.task_id,
                    &m.from,
                    m.to,
                    &m.patch,
                    &m.outputs,
                    &m.event,
                    m.give_up_at,
                    ap,
                )
                .await?,
            ),
            Write::RecordAttempt(a) => {
                db::record_attempt(c, a, ap).await?;
                Written::Done
            }
            Write::Redeliver(m) => {
                Written::Applied(db::redeliver(c, &m.delivery_id, m.give_up_at).await?)
            }
            Write::RecordEvent(m) => {
                ap.event(&m.task_id, &m.event);
                Written::Done
            }
            Write::MarkStarted(m) => {
                let patch = TaskPatch {
                    started_at: Some(m.at),
                    ..Default::default()
                };
                let (id, from) = (&m.task_id, &[Status::Dispatched]);
                let event = m.event();
                db::transition(c, id, from, Status::Running, &patch, Some(&event), ap).await?;
                Written::Done
            }
            Write::Flush => Written::Done,
        })
    }
}

/// The next batch: the writes someone is waiting on first (new tasks, for their submitters, then
/// terminal states, for their webhooks), then the others, each group in arrival order. A write moved
/// ahead takes the earlier writes of its task with it (a `Finish` its `RecordExecuted`), so each
/// task's writes are applied in the order they were sent. When more urgent writes wait than a batch
/// holds, [`RESERVED_FOR_OTHERS`] places stay for the others, so a flood of submits cannot hold up
/// dispatch (claims) indefinitely.
///
/// A `RecordExecuted` (for up to [`LINGER`]) or `MarkStarted` (for up to [`START_HOLD`]) stays
/// queued, with the later writes of its task, rather than going with other tasks' writes, until a
/// write of its task that cannot wait comes: usually its `Finish` (for a `MarkStarted`, when the job
/// is shorter than the hold), and they are then written as one (see `plan`). A task's writes are
/// held only until the first of its held writes is due, so a `RecordExecuted` behind a `MarkStarted`
/// keeps its own bound. A `Flush` holds nothing back.
fn take_batch(queue: &mut Vec<Pending>, now: Instant) -> Vec<Pending> {
    let (held, mut ready) = hold_back(std::mem::take(queue), now);
    let batch = rank_and_cut(&mut ready);
    *queue = held;
    queue.extend(ready);
    batch
}

/// Splits the queue into the writes that wait for their task's `Finish` and the rest, each in order.
/// Only writes that may linger are held, so a batch started for a write that cannot wait has it.
fn hold_back(queue: Vec<Pending>, now: Instant) -> (Vec<Pending>, Vec<Pending>) {
    let flushing = queue.iter().any(|p| matches!(p.write, Write::Flush));
    // Tasks with a write that cannot wait (their `Finish`, say): their writes all go now.
    let pressing: HashSet<String> = queue
        .iter()
        .filter(|p| !p.write.can_linger())
        .filter_map(|p| p.write.task_id().map(str::to_owned))
        .collect();
    // For each task with writes that wait for its `Finish`: when the first of them is due.
    let mut due: HashMap<String, Instant> = HashMap::new();
    for p in queue.iter().filter(|p| p.write.waits_for_finish()) {
        let task = p.write.task_id().unwrap_or_default();
        let first = due.entry(task.to_owned()).or_insert_with(|| p.due());
        *first = (*first).min(p.due());
    }
    let mut waiting: HashSet<String> = HashSet::new();
    queue.into_iter().partition(|p| {
        let task = p.write.task_id().unwrap_or_default();
        if waiting.contains(task) {
            return true;
        }
        let hold = !flushing
            && p.write.waits_for_finish()
            && !pressing.contains(task)
            && due.get(task).is_some_and(|&due| now < due);
        if hold {
            waiting.insert(task.to_string());
        }
        hold
    })
}

/// Takes the next batch out of writes that may all go now (see `take_batch`).
fn rank_and_cut(queue: &mut Vec<Pending>) -> Vec<Pending> {
    // Each write's rank, lowered to the lowest rank of its task's later writes.
    let mut ranks = vec![0u8; queue.len()];
    let mut lowest: HashMap<&str, u8> = HashMap::new();
    for (i, p) in queue.iter().enumerate().rev() {
        let mut rank = p.write.rank();
        if let Some(task) = p.write.task_id() {
            let later = lowest.entry(task).or_insert(rank);
            rank = rank.min(*later);
            *later = rank;
        }
        ranks[i] = rank;
    }
    drop(lowest);
    let mut ranked: Vec<(u8, Pending)> = ranks.into_iter().zip(queue.drain(..)).collect();
    ranked.sort_by_key(|(rank, _)| *rank); // stable: each group keeps its arrival order
    let urgent = ranked.iter().take_while(|(rank, _)| *rank < 2).count();
    let others = ranked.len() - urgent;
    // Only a backlog of urgent writes larger than a batch would shut the others out.
    let take_urgent = if urgent >= MAX_BATCH {
        MAX_BATCH - RESERVED_FOR_OTHERS.min(others)
    } else {
        urgent
    };
    let take_others = others.min(MAX_BATCH - take_urgent);
    let mut batch = Vec::with_capacity(take_urgent + take_others);
    for (i, (_, p)) in ranked.into_iter().enumerate() {
        // The others start after the urgent writes left for the next batch.
        let taken = i < take_urgent || (i >= urgent && i < urgent + take_others);
        if taken {
            batch.push(p);
        } else {
            queue.push(p);
        }
    }
    batch
}

/// What writing a batch came to.
enum Outcome {
    /// Every write was answered: committed, or with its own error. `wrote`: the database was
    /// reached (false when everything queued was waiting for company).
    Answered { wrote: bool },
    /// The database could not be reached: `held` are the writes to try again, in order (new tasks
    /// were answered with the error).
    Unreachable { error: DbErr, held: Vec<Pending> },
}

/// Writes a batch. Its new tasks (first in it, see `take_batch`) are committed in a transaction of
/// their own, so their submitters are answered without waiting for the other writes: in a burst of
/// submits while jobs run, those are most of a batch's statements, each a round trip to the
/// database's thread.
async fn write_batch(db: &DatabaseConnection, mut batch: Vec<Pending>) -> Outcome {
    let wrote = !batch.is_empty();
    let new = batch
        .iter()
        .take_while(|p| matches!(p.write, Write::InsertTask(_)))
        .count();
    let others = batch.split_off(new);
    if let Err((error, _)) = write_part(db, batch).await {
        // The new tasks were answered; the others are not tried against a database that is gone.
        return Outcome::Unreachable {
            error,
            held: others,
        };
    }
    match write_part(db, others).await {
        Ok(()) => Outcome::Answered { wrote },
        Err((error, held)) => Outcome::Unreachable { error, held },
    }
}

/// Writes `batch` in one transaction, or, if that fails, each write on its own. If the database
/// cannot be reached, answers the new tasks not answered yet with the error and hands back the
/// other writes not answered yet, in order, to be written again (see [`hold`]).
async fn write_part(
    db: &DatabaseConnection,
    batch: Vec<Pending>,
) -> Result<(), (DbErr, Vec<Pending>)> {
    if batch.is_empty() {
        return Ok(()); // everything queued is waiting for company (see `hold_back`)
    }
    let started = Instant::now();
    match write_together(db, &batch).await {
        Ok(results) => {
            tracing::trace!(
                writes = batch.len(),
                new_tasks = results
                    .iter()
                    .filter(|r| matches!(r, Written::Inserted(_)))
                    .count(),
                micros = started.elapsed().as_micros() as u64,
                "batch committed"
            );
            for (p, r) in batch.into_iter().zip(results) {
                let _ = p.reply.send(Ok(r));
            }
            Ok(())
        }
        Err(e) if is_unreachable(&e) => Err(hold(e, batch)),
        Err(e) => {
            tracing::debug!(error = %e, writes = batch.len(), "batch failed; writing one by one");
            let mut writes = batch.into_iter();
            while let Some(p) = writes.next() {
                match write_alone(db, &p.write).await {
                    // Gone while writing one by one: this write and the rest are held.
                    Err(e) if is_unreachable(&e) => {
                        return Err(hold(e, std::iter::once(p).chain(writes).collect()));
                    }
                    written => {
                        let _ = p.reply.send(written);
                    }
                }
            }
            Ok(())
        }
    }
}

/// Writes the database did not take: the new tasks among them are answered with `error` (see
/// [`Write::fails_fast`]), the others handed back, in order, to be written again.
fn hold(error: DbErr, batch: Vec<Pending>) -> (DbErr, Vec<Pending>) {
    let mut held = Vec::with_capacity(batch.len());
    for p in batch {
        if p.write.fails_fast() {
            let _ = p.reply.send(Err(error.clone()));
        } else {
            held.push(p);
        }
    }
    (error, held)
}

async fn write_together(db: &DatabaseConnection, batch: &[Pending]) -> Result<Vec<Written>, DbErr> {
    let txn = db.begin().await?;
    let mut appends = Appends::default();
    let mut results = Vec::with_capacity(batch.len());
    // The batch's new tasks come first (see `take_batch`) and go in together.
    let new: Vec<&NewTask> = batch
        .iter()
        .map_while(|p| match &p.write {
            Write::InsertTask(t) => Some(t),
            _ => None,
        })
        .collect();
    if !new.is_empty() {
        let inserted = db::insert_tasks(&txn, &new, &mut appends).await?;
        results.extend(inserted.into_iter().map(Written::Inserted));
    }
    let mut rest: Vec<Option<Written>> = batch[new.len()..].iter().map(|_| None).collect();
    for step in plan(&batch[new.len()..]) {
        match step {
            Step::One(i) => {
                rest[i] = Some(batch[new.len() + i].write.apply(&txn, &mut appends).await?)
            }
            Step::Executed {
                started,
                executed,
                finish,
            } => {
                let write = |i: usize| &batch[new.len() + i].write;
                let (s_written, e_written, f_written) = complete(
                    &txn,
                    started.map(write),
                    write(executed),
                    finish.map(write),
                    &mut appends,
                )
                .await?;
                if let Some(i) = started {
                    rest[i] = s_written;
                }
                rest[executed] = Some(e_written);
                if let Some(i) = finish {
                    rest[i] = f_written;
                }
            }
        }
    }
    // `plan` covers every write, so no slot is left empty.
    results.extend(rest.into_iter().map(|w| w.unwrap_or(Written::Done)));
    appends.write(&txn).await?;
    txn.commit().await?;
    Ok(results)
}

/// How a batch's writes are applied: one by one, except that a task's `RecordExecuted` is written as
/// one with the `MarkStarted` right before it and the `Finish` after it, when the batch has them
/// (see `db::complete`).
#[derive(Debug, PartialEq)]
enum Step {
    One(usize),
    Executed {
        started: Option<usize>,
        executed: usize,
        finish: Option<usize>,
    },
}

/// The steps of a batch, in order. A `RecordExecuted` takes along:
/// - its task's `Finish` from `executed` (the uploader's), when that is the task's next write but for
///   events of the task; the step goes at the `Finish`'s place, which changes nothing for the writes
///   of other tasks between;
/// - its task's `MarkStarted`, when that is the task's write right before it: a job shorter than the
///   linger then gets one UPDATE for its start and its end.
fn plan(batch: &[Pending]) -> Vec<Step> {
    let mut finish_of = HashMap::new();
    let mut started_of = HashMap::new();
    for (i, p) in batch.iter().enumerate() {
        let Write::RecordExecuted(e) = &p.write else {
            continue;
        };
        let task = Some(e.task_id.as_str());
        let next =
            batch.iter().enumerate().skip(i + 1).find(|(_, q)| {
                q.write.task_id() == task && !matches!(q.write, Write::RecordEvent(_))
            });
        if let Some((j, q)) = next {
            if matches!(&q.write, Write::Finish(f) if f.from == [Status::Executed]) {
                finish_of.insert(i, j);
            }
        }
        let before = batch[..i]
            .iter()
            .enumerate()
            .rev()
            .find(|(_, q)| q.write.task_id() == task);
        if let Some((k, q)) = before {
            if matches!(q.write, Write::MarkStarted(_)) && e.from.contains(&Status::Dispatched) {
                started_of.insert(i, k);
            }
        }
    }
    // Writes applied at another's place.
    let moved: HashSet<usize> = finish_of
        .keys()
        .chain(started_of.values())
        .copied()
        .collect();
    let executed_of: HashMap<usize, usize> = finish_of.iter().map(|(&e, &f)| (f, e)).collect();
    (0..batch.len())
        .filter(|i| !moved.contains(i))
        .map(|i| match (executed_of.get(&i), started_of.get(&i)) {
            (Some(&executed), _) => Step::Executed {
                started: started_of.get(&executed).copied(),
                executed,
                finish: Some(i),
            },
            (None, Some(&started)) => Step::Executed {
                started: Some(started),
                executed: i,
                finish: None,
            },
            (None, None) => Step::One(i),
        })
        .collect()
}

/// Applies a `RecordExecuted` with its task's `MarkStarted` and `Finish`, those given, as one; answers
/// for each. If the task is not where that takes it from, each write is applied on its own, in order.
async fn complete<C: ConnectionTrait>(
    c: &C,
    started: Option<&Write>,
    executed: &Write,
    finish: Option<&Write>,
    ap: &mut Appends,
) -> Result<(Option<Written>, Written, Option<Written>), DbErr> {
    let start_event = match started {
        Some(Write::MarkStarted(m)) => Some((m.at, m.event())),
        _ => None,
    };
    let start = start_event
        .as_ref()
        .map(|(at, event)| db::Started { at: *at, event });
    let together = match (executed, finish) {
        (Write::RecordExecuted(e), Some(Write::Finish(f))) => db::complete(
            c,
            &e.task_id,
            start,
            &e.from,
            &e.outputs,
            &e.event,
            f.to,
            &f.patch,
            &f.outputs,
            &f.event,
            f.give_up_at,
            ap,
        )
        .await?
        .map(|finished| Some(Written::Finished(finished))),
        (Write::RecordExecuted(e), None) if start.is_some() => {
            db::record_executed(c, &e.task_id, start, &e.from, &e.outputs, &e.event, ap)
                .await?
                .then_some(None)
        }
        // `plan` combines nothing else; applied one after the other, the outcome is the same.
        _ => None,
    };
    if let Some(f_written) = together {
        return Ok((
            started.map(|_| Written::Done),
            Written::Applied(true),
            f_written,
        ));
    }
    // Not where the combined write takes it from (cancelled, say, or its start already written):
    // each write on its own finds out what applies.
    let s_written = match started {
        Some(w) => Some(w.apply(c, ap).await?),
        None => None,
    };
    let e_written = executed.apply(c, ap).await?;
    let f_written = match finish {
        Some(w) => Some(w.apply(c, ap).await?),
        None => None,
    };
    Ok((s_written, e_written, f_written))
}

async fn write_alone(db: &DatabaseConnection, write: &Write) -> Result<Written, DbErr> {
    let txn = db.begin().await?;
    let mut appends = Appends::default();
    let written = write.apply(&txn, &mut appends).await?;
    appends.write(&txn).await?;
    txn.commit().await?;
    Ok(written)
}

/// Defines a write message: its handler queues it and answers once its transaction committed.
macro_rules! write_message {
    ($msg:ty => $ret:ty, |$m:ident| $write:expr, $pat:pat => $val:expr) => {
        impl Handler<$msg> for Recorder {
            type Result = ResponseFuture<Result<$ret, DbErr>>;

            fn handle(&mut self, $m: $msg, ctx: &mut Context<Self>) -> Self::Result {
                let rx = self.submit($write, ctx);
                Box::pin(async move {
                    match rx.await {
                        Ok(Ok($pat)) => Ok($val),
                        Ok(Ok(_)) => Err(DbErr::Custom("recorder: unexpected answer".into())),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(DbErr::Custom("recorder stopped before the write".into())),
                    }
                })
            }
        }
    };
}

/// Records a newly accepted task (or finds the task a retried submit refers to).
#[derive(Message)]
#[rtype(result = "Result<Inserted, DbErr>")]
pub struct InsertTask(pub NewTask);
write_message!(InsertTask => Inserted, |m| Write::InsertTask(m.0), Written::Inserted(v) => v);

/// A status change with its event; answers whether it applied (the task was in one of `from`).
#[derive(Message, Debug)]
#[rtype(result = "Result<bool, DbErr>")]
pub struct Transition {
    pub task_id: String,
    pub from: Vec<Status>,
    pub to: Status,
    pub patch: TaskPatch,
    pub event: Option<Event>,
}
write_message!(Transition => bool, |m| Write::Transition(m), Written::Applied(v) => v);

/// Claims a queued task for dispatch (status `dispatched`, with its backend and prompt id); answers the
/// task's row, or None when it was no longer queued (cancelled meanwhile).
#[derive(Message, Debug)]
#[rtype(result = "Result<Option<task::Model>, DbErr>")]
pub struct Claim {
    pub task_id: String,
    /// The backend has other work queued, so the claim may wait [`LINGER`] to share a commit.
    pub may_wait: bool,
    pub patch: TaskPatch,
    pub event: Event,
}
write_message!(Claim => Option<task::Model>, |m| Write::Claim(m), Written::Claimed(v) => v);

/// A prompt finished: its outputs are recorded and the task moves to `executed`. Answers whether it
/// applied (false: the task was no longer on a backend). It may linger: the uploader sends it without
/// waiting and stores the outputs meanwhile, so it usually commits together with the task's `Finish`.
#[derive(Message, Debug)]
#[rtype(result = "Result<bool, DbErr>")]
pub struct RecordExecuted {
    pub task_id: String,
    pub from: Vec<Status>,
    pub outputs: Vec<NewOutput>,
    pub event: Event,
}
write_message!(RecordExecuted => bool, |m| Write::RecordExecuted(m), Written::Applied(v) => v);

/// The terminal transition of a task, with what became of its outputs and its webhook put in the
/// outbox, in one transaction.
#[derive(Message, Debug)]
#[rtype(result = "Result<Finished, DbErr>")]
pub struct Finish {
    pub task_id: String,
    pub from: Vec<Status>,
    pub to: Status,
    pub patch: TaskPatch,
    pub outputs: Vec<OutputMark>,
    pub event: Event,
    /// When the webhook, if any, stops being retried.
    pub give_up_at: DateTime<Utc>,
}
write_message!(Finish => Finished, |m| Write::Finish(m), Written::Finished(v) => v);

/// One webhook attempt and what it means for its delivery.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), DbErr>")]
pub struct RecordAttempt(pub AttemptOutcome);
write_message!(RecordAttempt => (), |m| Write::RecordAttempt(m.0), Written::Done => ());

/// Puts a delivery back in the outbox (the redeliver API).
#[derive(Message, Debug)]
#[rtype(result = "Result<bool, DbErr>")]
pub struct Redeliver {
    pub delivery_id: String,
    pub give_up_at: DateTime<Utc>,
}
write_message!(Redeliver => bool, |m| Write::Redeliver(m), Written::Applied(v) => v);

/// A step worth recording that changes no status (e.g. an upload retry).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), DbErr>")]
pub struct RecordEvent {
    pub task_id: String,
    pub event: Event,
}
write_message!(RecordEvent => (), |m| Write::RecordEvent(m), Written::Done => ());

/// ComfyUI started executing a task: `dispatched` → `running`, with its `started` event.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), DbErr>")]
pub struct MarkStarted {
    pub task_id: String,
    pub backend: String,
    pub prompt_id: String,
    pub at: DateTime<Utc>,
}
write_message!(MarkStarted => (), |m| Write::MarkStarted(m), Written::Done => ());

impl MarkStarted {
    /// The task's `started` event, at the time ComfyUI said it started.
    fn event(&self) -> Event {
        let mut event = Event::new(
            "started",
            serde_json::json!({ "backend": self.backend, "prompt_id": self.prompt_id }),
        );
        event.at = self.at;
        event
    }
}

/// Answers once the writes queued before it committed: at shutdown, with nothing else arriving,
/// nothing is left lingering. (Under a backlog of new tasks larger than a batch, some of those could
/// still wait for the next batch; see `take_batch`.)
#[derive(Message, Debug)]
#[rtype(result = "Result<(), DbErr>")]
pub struct Flush;
write_message!(Flush => (), |_m| Write::Flush, Written::Done => ());

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(write: Write) -> Pending {
        Pending {
            write,
            reply: oneshot::channel().0,
            queued_at: Instant::now(),
        }
    }

    fn event(task: &str) -> Write {
        Write::RecordEvent(RecordEvent {
            task_id: task.into(),
            event: Event::new("x", serde_json::Value::Null),
        })
    }

    fn finish(task: &str) -> Write {
        Write::Finish(Finish {
            task_id: task.into(),
            from: vec![Status::Executed],
            to: Status::Done,
            patch: TaskPatch::default(),
            outputs: vec![],
            event: Event::new("stored", serde_json::Value::Null),
            give_up_at: Utc::now(),
        })
    }

    fn insert(task: &str) -> Write {
        Write::InsertTask(NewTask {
            id: task.into(),
            client_task_id: None,
            client_callback_url: None,
            workflow: "w".into(),
            request_hash: String::new(),
            params: serde_json::Value::Null,
            graph: serde_json::Value::Null,
            inputs: serde_json::Value::Null,
            output_nodes: serde_json::Value::Null,
            priority: 0,
            deadline_at: Utc::now(),
            owner: None,
            prompt_id: None,
        })
    }

    fn executed(task: &str) -> Write {
        Write::RecordExecuted(RecordExecuted {
            task_id: task.into(),
            from: Status::ON_BACKEND.to_vec(),
            outputs: vec![],
            event: Event::new("executed", serde_json::Value::Null),
        })
    }

    fn cancelled(task: &str) -> Write {
        Write::Finish(Finish {
            from: Status::ON_BACKEND.to_vec(),
            to: Status::Cancelled,
            ..match finish(task) {
                Write::Finish(f) => f,
                _ => unreachable!(),
            }
        })
    }

    fn task_of(p: &Pending) -> &str {
        p.write.task_id().unwrap_or("?")
    }

    #[test]
    fn a_flood_of_submits_leaves_room_for_the_others() {
        let mut queue: Vec<Pending> = (0..20).map(|i| pending(event(&format!("e{i}")))).collect();
        queue.extend((0..100).map(|i| pending(insert(&format!("n{i}")))));
        let batch = take_batch(&mut queue, Instant::now());
        let order: Vec<&str> = batch.iter().map(task_of).collect();
        assert_eq!(order.len(), MAX_BATCH);
        assert_eq!(order[MAX_BATCH - RESERVED_FOR_OTHERS - 1], "n47");
        assert_eq!(order[MAX_BATCH - RESERVED_FOR_OTHERS], "e0");
        assert_eq!(order[MAX_BATCH - 1], "e15");
        // Left: the other new tasks first, then the remaining events, each in order.
        let left: Vec<&str> = queue.iter().map(task_of).collect();
        assert_eq!(left.len(), 120 - MAX_BATCH);
        assert_eq!(left[0], "n48");
        assert_eq!(left[51], "n99");
        assert_eq!(left[52], "e16");
    }

    #[test]
    fn new_tasks_go_first_then_terminal_states() {
        let mut queue = vec![
            pending(event("e1")),
            pending(finish("f1")),
            pending(insert("n1")),
            pending(event("e2")),
            pending(insert("n2")),
        ];
        let batch = take_batch(&mut queue, Instant::now());
        let order: Vec<&str> = batch.iter().map(task_of).collect();
        assert_eq!(order, ["n1", "n2", "f1", "e1", "e2"]);
    }

    #[test]
    fn awaited_writes_go_first_and_each_group_keeps_its_order() {
        let mut queue = vec![
            pending(event("e1")),
            pending(finish("f1")),
            pending(event("e2")),
            pending(finish("f2")),
        ];
        let batch = take_batch(&mut queue, Instant::now());
        let order: Vec<&str> = batch.iter().map(task_of).collect();
        assert_eq!(order, ["f1", "f2", "e1", "e2"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_batch_is_capped_and_the_rest_waits_in_order() {
        let mut queue: Vec<Pending> = (0..MAX_BATCH + 3)
            .map(|i| pending(event(&format!("e{i}"))))
            .collect();
        queue.push(pending(finish("f")));
        let batch = take_batch(&mut queue, Instant::now());
        assert_eq!(batch.len(), MAX_BATCH);
        assert_eq!(task_of(&batch[0]), "f");
        assert_eq!(task_of(&batch[1]), "e0");
        let left: Vec<&str> = queue.iter().map(task_of).collect();
        assert_eq!(left.len(), 4);
        assert_eq!(left[0], format!("e{}", MAX_BATCH - 1));
    }

    #[test]
    fn a_terminal_state_takes_its_tasks_earlier_writes_along() {
        let mut queue = vec![
            pending(event("a")),
            pending(executed("t")),
            pending(event("b")),
            pending(event("t")),
            pending(finish("t")),
        ];
        let batch = take_batch(&mut queue, Instant::now());
        let order: Vec<&str> = batch.iter().map(task_of).collect();
        assert_eq!(order, ["t", "t", "t", "a", "b"]);
        assert!(matches!(batch[0].write, Write::RecordExecuted(_)));
        assert!(matches!(batch[2].write, Write::Finish(_)));
    }

    #[test]
    fn an_executed_record_and_its_finish_are_written_as_one() {
        let batch = vec![
            pending(executed("t")),
            pending(event("u")),
            pending(event("t")),
            pending(finish("t")),
        ];
        assert_eq!(
            plan(&batch),
            [
                Step::One(1),
                Step::One(2),
                Step::Executed {
                    started: None,
                    executed: 0,
                    finish: Some(3)
                }
            ]
        );
    }

    fn started(task: &str) -> Write {
        Write::MarkStarted(MarkStarted {
            task_id: task.into(),
            backend: "b".into(),
            prompt_id: "p".into(),
            at: Utc::now(),
        })
    }

    #[test]
    fn a_start_right_before_the_executed_record_goes_with_it() {
        let batch = vec![
            pending(started("t")),
            pending(event("u")),
            pending(executed("t")),
            pending(finish("t")),
        ];
        assert_eq!(
            plan(&batch),
            [
                Step::One(1),
                Step::Executed {
                    started: Some(0),
                    executed: 2,
                    finish: Some(3)
                }
            ]
        );
        // Without its finish, at the executed record's place.
        let batch = vec![pending(started("t")), pending(executed("t"))];
        assert_eq!(
            plan(&batch),
            [Step::Executed {
                started: Some(0),
                executed: 1,
                finish: None
            }]
        );
        // An event of the task between them, or another task's start: each on its own.
        let batch = vec![
            pending(started("t")),
            pending(event("t")),
            pending(executed("t")),
        ];
        assert_eq!(plan(&batch), [Step::One(0), Step::One(1), Step::One(2)]);
        let batch = vec![pending(started("u")), pending(executed("t"))];
        assert_eq!(plan(&batch), [Step::One(0), Step::One(1)]);
    }

    #[test]
    fn the_linger_timer_is_due_when_the_first_write_has_waited_its_time() {
        let now = Instant::now();
        let mut old = pending(event("t"));
        old.queued_at = now - Duration::from_millis(90);
        let queue = vec![pending(event("u")), old];
        assert_eq!(linger_wait(&queue, now), LINGER - Duration::from_millis(90));
        assert_eq!(linger_wait(&queue, now + LINGER), Duration::ZERO);
        assert_eq!(linger_wait(&[], now), LINGER);
        // A running mark may wait longer; a younger write that may not is due first.
        let mut start = pending(started("t"));
        start.queued_at = now - Duration::from_millis(90);
        assert_eq!(
            linger_wait(std::slice::from_ref(&start), now),
            START_HOLD - Duration::from_millis(90)
        );
        let mut young = pending(event("u"));
        young.queued_at = now;
        assert_eq!(linger_wait(&[start, young], now), LINGER);
    }

    #[test]
    fn a_start_waits_for_its_finish_but_not_forever() {
        let now = Instant::now();
        let mut queue = vec![pending(started("t")), pending(event("u"))];
        let batch = take_batch(&mut queue, now);
        assert_eq!(batch.iter().map(task_of).collect::<Vec<_>>(), ["u"]);
        queue.push(pending(executed("t")));
        queue.push(pending(finish("t")));
        let batch = take_batch(&mut queue, now);
        assert_eq!(
            batch.iter().map(task_of).collect::<Vec<_>>(),
            ["t", "t", "t"]
        );
        assert!(matches!(batch[0].write, Write::MarkStarted(_)));
        // Alone, it waits past the linger of other writes, up to its own hold.
        let mut queue = vec![pending(started("t"))];
        assert!(take_batch(&mut queue, Instant::now() + LINGER).is_empty());
        let batch = take_batch(&mut queue, Instant::now() + START_HOLD);
        assert_eq!(batch.len(), 1);
        // Once the job's executed record is queued behind it, the record's bound is the task's.
        let mut queue = vec![pending(started("t")), pending(executed("t"))];
        assert!(take_batch(&mut queue, Instant::now()).is_empty());
        let batch = take_batch(&mut queue, Instant::now() + LINGER);
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn only_a_finish_from_executed_right_after_is_paired() {
        // Cancelled while on the backend: the cancel comes between, so each applies on its own.
        let batch = vec![
            pending(executed("t")),
            pending(cancelled("t")),
            pending(finish("t")),
        ];
        assert_eq!(plan(&batch), [Step::One(0), Step::One(1), Step::One(2)]);
        // Another task's finish is not this one's.
        let batch = vec![pending(executed("t")), pending(finish("u"))];
        assert_eq!(plan(&batch), [Step::One(0), Step::One(1)]);
    }

    #[test]
    fn an_executed_record_waits_for_its_finish_but_not_forever() {
        let now = Instant::now();
        let mut queue = vec![
            pending(executed("t")),
            pending(event("u")),
            pending(event("t")),
        ];
        let batch = take_batch(&mut queue, now);
        assert_eq!(batch.iter().map(task_of).collect::<Vec<_>>(), ["u"]);
        // The task's later event waits with it, so the task's writes keep their order.
        assert_eq!(queue.iter().map(task_of).collect::<Vec<_>>(), ["t", "t"]);

        // Its finish came: all go, the executed record first.
        queue.push(pending(finish("t")));
        let batch = take_batch(&mut queue, now);
        assert_eq!(batch.len(), 3);
        assert!(matches!(batch[0].write, Write::RecordExecuted(_)));
        assert!(queue.is_empty());

        // No finish within LINGER: it goes on its own.
        let mut queue = vec![pending(executed("t"))];
        assert!(take_batch(&mut queue, now).is_empty());
        assert_eq!(take_batch(&mut queue, Instant::now() + LINGER).len(), 1);

        // A flush holds nothing back.
        let mut queue = vec![pending(executed("t")), pending(Write::Flush)];
        assert_eq!(take_batch(&mut queue, now).len(), 2);

        // Any write of the task that cannot wait takes the record along, not only its finish: a
        // batch started for a write always holds that write.
        let requeue = Write::Transition(Transition {
            task_id: "t".into(),
            from: Status::ON_BACKEND.to_vec(),
            to: Status::Queued,
            patch: TaskPatch::default(),
            event: None,
        });
        let mut queue = vec![pending(executed("t")), pending(requeue)];
        assert_eq!(take_batch(&mut queue, now).len(), 2);
    }
}

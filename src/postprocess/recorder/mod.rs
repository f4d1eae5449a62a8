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
//! waits up to [`batch::LINGER`] for company ([`batch::START_HOLD`] for a job's `running` mark). If
//! a batch fails, each of its writes is applied again on its own, so only the faulty one reports an
//! error. SQLite never sees two writers. Readers (routes, recovery) query through `crate::db`
//! directly.
//!
//! This file is the actor: its mailbox, queue, timers, outage handling and health. [`batch`] decides
//! what goes in the next transaction; [`write`] applies a batch; [`messages`] are what other actors
//! send it (re-exported here).
//!
//! # When the database cannot be reached
//!
//! A batch that fails because the database is unreachable ([`crate::db_health::is_unreachable`]:
//! server stopped, connection lost, file unwritable) is not answered with the error: its writes go
//! back to the head of the queue, in order, and are written again after a backoff ([`RETRY_FIRST`]
//! doubling to [`RETRY_MAX`]) until they commit, so no transition, claim, running mark, executed
//! record, terminal state (with its webhook) or webhook attempt is lost to an outage, and whoever
//! waits on one simply waits longer. Retrying is safe because every status change is conditional: a
//! write that did commit although its answer was lost (the connection dropped during COMMIT) is
//! found not to apply the second time; what its sender then does not know is put right by the
//! Dispatcher's reconciliation after the outage (`Dispatcher::reconcile`). New tasks are the
//! exception: their submitters are answered at once with the error (the route answers 503 and the
//! client retries), and while the outage lasts new tasks are refused without being queued. With
//! nothing to retry, a probe ([`db::connect::probe_write`]) tells when the database is back. The
//! outage and its end are published in [`DbHealth`].

mod batch;
mod messages;
mod write;

use std::time::{Duration, Instant};

use actix::prelude::*;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::oneshot;

use super::retry_delay;
use crate::db;
use crate::db_health::DbHealth;
use batch::{linger_wait, take_batch, Pending};
use write::{write_batch, Outcome, Write, Written};

pub use messages::{
    Claim, Finish, Flush, InsertTask, MarkStarted, RecordAttempt, RecordError, RecordEvent,
    RecordExecuted, Redeliver, Transition,
};

/// How long after a commit the write-ahead log is checkpointed (SQLite; see `db::connect::checkpoint`).
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
/// timeout (`db::connect::ACQUIRE_TIMEOUT`) for a connection, so a database that is back is found
/// within about two seconds.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

pub struct Recorder {
    /// The Recorder's own connection ([`crate::db::connect::open_writer`]).
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
            async move { db::connect::checkpoint(&readers).await }
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
                        db::connect::renew_connections(&db).await;
                    }
                    if settle {
                        if let Err(e) = db::connect::checkpoint(&db).await {
                            tracing::warn!(error = %e, "database checkpoint failed");
                        }
                    }
                    if probe {
                        return match db::connect::probe_write(&db).await {
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

#[cfg(test)]
mod tests;

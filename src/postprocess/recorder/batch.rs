//! The batching policy: which queued writes go in the next transaction, in what order, and how long
//! a write may wait for company ([`LINGER`], [`START_HOLD`]). Pure functions over the queue, so the
//! policy is tested without a database (`super::tests`); the Recorder (`super`) calls [`take_batch`]
//! and the write path (`super::write`) applies what it took.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use sea_orm::DbErr;
use tokio::sync::oneshot;

use super::write::{Write, Written};

/// Most writes in one transaction: short transactions keep the wait of a write that arrives behind a
/// backlog short.
pub(super) const MAX_BATCH: usize = 64;

/// Places kept for the other writes in a batch when a backlog of urgent ones would fill it
/// (see `take_batch`).
pub(super) const RESERVED_FOR_OTHERS: usize = 16;

/// Longest a write nobody waits on stays queued alone. Losing such writes to a crash in this window
/// loses no job: recovery asks the backend about a job whose `running` mark or `executed` record was
/// lost (ComfyUI's history has the outputs), and a webhook whose attempt was not recorded is sent
/// again, with the same webhook-id. A claim that waits (`Claim::may_wait`) holds its prompt back,
/// so it waits only while its backend has another prompt to run.
pub(super) const LINGER: Duration = Duration::from_millis(100);

/// Longest a job's `running` mark waits for the job's end, so that a job shorter than this (a cached
/// prompt, a small workflow) is written once, from `dispatched` to its end (see `plan`), and costs
/// one transaction instead of two. Each transaction at low rates wakes comfyd's threads from idle,
/// which costs more than its statements (BENCHMARKS.md, round 6). The mark is what `GET /tasks`
/// shows as `running`; its `started` event and `started_at` carry the real time either way, and
/// recovery treats `dispatched` and `running` alike.
pub(super) const START_HOLD: Duration = Duration::from_secs(1);

/// How long until the first queued write has waited as long as it may ([`Write::linger`]). A write
/// held back from the last batch (see `hold_back`) is younger than that; timing from its own arrival
/// rather than from now keeps its wait within its bound (plus a batch's write), not up to twice that.
pub(super) fn linger_wait(queue: &[Pending], now: Instant) -> Duration {
    queue
        .iter()
        .map(Pending::due)
        .min()
        .map_or(LINGER, |due| due.saturating_duration_since(now))
}

/// One write waiting for its transaction.
pub(super) struct Pending {
    pub(super) write: Write,
    pub(super) reply: oneshot::Sender<Result<Written, DbErr>>,
    pub(super) queued_at: Instant,
}

impl Pending {
    /// When this write has waited as long as it may.
    pub(super) fn due(&self) -> Instant {
        self.queued_at + self.write.linger().unwrap_or(Duration::ZERO)
    }
}

impl Write {
    /// Where the write goes in its batch, before its task's ordering is applied (see `take_batch`).
    pub(super) fn rank(&self) -> u8 {
        match self {
            Write::InsertTask(_) => 0,
            Write::Finish(_) => 1,
            _ => 2,
        }
    }

    /// The task this write is about, if any.
    pub(super) fn task_id(&self) -> Option<&str> {
        match self {
            Write::InsertTask(t) => Some(&t.id),
            Write::Transition(m) => Some(m.task_id.as_str()),
            Write::Claim(m) => Some(m.task_id.as_str()),
            Write::RecordExecuted(m) => Some(m.task_id.as_str()),
            Write::Finish(m) => Some(m.task_id.as_str()),
            Write::RecordAttempt(a) => Some(&a.task_id),
            Write::RecordEvent(m) => Some(m.task_id.as_str()),
            Write::MarkStarted(m) => Some(m.task_id.as_str()),
            Write::Redeliver(_) | Write::Flush => None,
        }
    }

    /// Nothing urgent waits on this write: it may wait [`LINGER`] to share a transaction. A task's
    /// `RecordExecuted` is one of them: its `Finish` usually follows within a few milliseconds and
    /// then both share one commit. So is the claim of a job for a backend that has another queued.
    pub(super) fn can_linger(&self) -> bool {
        self.linger().is_some()
    }

    /// Answered with the error at once when the database is unreachable, instead of being held and
    /// retried: a new task, whose submitter is waiting (the route answers 503 and the client
    /// retries, with the same `client_task_id` if it has one).
    pub(super) fn fails_fast(&self) -> bool {
        matches!(self, Write::InsertTask(_))
    }

    /// Whether this write waits for its task's `Finish`, to be written with it (see `hold_back`).
    pub(super) fn waits_for_finish(&self) -> bool {
        matches!(self, Write::RecordExecuted(_) | Write::MarkStarted(_))
    }

    /// How long this write may wait for company, if at all (see [`Write::can_linger`]): a `running`
    /// mark [`START_HOLD`], the others [`LINGER`].
    pub(super) fn linger(&self) -> Option<Duration> {
        match self {
            Write::MarkStarted(_) => Some(START_HOLD),
            Write::RecordAttempt(_) | Write::RecordEvent(_) | Write::RecordExecuted(_) => {
                Some(LINGER)
            }
            Write::Claim(c) if c.may_wait => Some(LINGER),
            _ => None,
        }
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
pub(super) fn take_batch(queue: &mut Vec<Pending>, now: Instant) -> Vec<Pending> {
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

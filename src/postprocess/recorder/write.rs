//! The write path: every kind of write as data ([`Write`]), what each answers ([`Written`]), and how
//! a batch is written: in one transaction when it can be ([`write_batch`]), a task's `executed`
//! record combined with its start and end ([`plan`]), else each write in a transaction of its own.
//! The Recorder (`super`) hands it the batches that `super::batch` took.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, TransactionTrait};

use super::batch::Pending;
use super::messages::{
    Claim, Finish, MarkStarted, RecordEvent, RecordExecuted, Redeliver, Transition,
};
use crate::db::{
    self,
    appends::Appends,
    deliveries::AttemptOutcome,
    tasks::{Finished, Inserted, NewTask, TaskPatch},
};
use crate::db_health::is_unreachable;
use crate::entity::task;
use crate::task::Status;

/// Every kind of write, as data.
pub(super) enum Write {
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
pub(super) enum Written {
    Inserted(Inserted),
    Claimed(Option<task::Model>),
    Applied(bool),
    Finished(Finished),
    Done,
}

impl Write {
    /// Applies this write; what it appends goes to `ap`, which the caller writes before committing.
    async fn apply<C: ConnectionTrait>(&self, c: &C, ap: &mut Appends) -> Result<Written, DbErr> {
        Ok(match self {
            Write::InsertTask(t) => {
                let mut one = db::tasks::insert(c, &[t], ap).await?;
                Written::Inserted(one.pop().ok_or(DbErr::RecordNotInserted)?)
            }
            Write::Transition(m) => Written::Applied(
                db::tasks::transition(
                    c,
                    m.task_id.as_str(),
                    &m.from,
                    m.to,
                    &m.patch,
                    m.event.as_ref(),
                    ap,
                )
                .await?,
            ),
            Write::Claim(m) => Written::Claimed(
                db::tasks::claim(c, m.task_id.as_str(), &m.patch, &m.event, ap).await?,
            ),
            Write::RecordExecuted(m) => Written::Applied(
                db::outputs::record_executed(
                    c,
                    m.task_id.as_str(),
                    None,
                    &m.from,
                    &m.outputs,
                    &m.event,
                    ap,
                )
                .await?,
            ),
            Write::Finish(m) => Written::Finished(
                db::tasks::finish(
                    c,
                    m.task_id.as_str(),
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
                db::deliveries::record_attempt(c, a, ap).await?;
                Written::Done
            }
            Write::Redeliver(m) => {
                Written::Applied(db::deliveries::redeliver(c, &m.delivery_id, m.give_up_at).await?)
            }
            Write::RecordEvent(m) => {
                ap.event(m.task_id.as_str(), &m.event);
                Written::Done
            }
            Write::MarkStarted(m) => {
                let patch = TaskPatch {
                    started_at: Some(m.at),
                    ..Default::default()
                };
                let (id, from) = (m.task_id.as_str(), &[Status::Dispatched]);
                let event = m.event();
                db::tasks::transition(c, id, from, Status::Running, &patch, Some(&event), ap)
                    .await?;
                Written::Done
            }
            Write::Flush => Written::Done,
        })
    }
}

/// What writing a batch came to.
pub(super) enum Outcome {
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
pub(super) async fn write_batch(db: &DatabaseConnection, mut batch: Vec<Pending>) -> Outcome {
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
        let inserted = db::tasks::insert(&txn, &new, &mut appends).await?;
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
/// (see `db::tasks::complete`).
#[derive(Debug, PartialEq)]
pub(super) enum Step {
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
pub(super) fn plan(batch: &[Pending]) -> Vec<Step> {
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
        .map(|(at, event)| db::tasks::Started { at: *at, event });
    let together = match (executed, finish) {
        (Write::RecordExecuted(e), Some(Write::Finish(f))) => db::tasks::complete(
            c,
            e.task_id.as_str(),
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
        (Write::RecordExecuted(e), None) if start.is_some() => db::outputs::record_executed(
            c,
            e.task_id.as_str(),
            start,
            &e.from,
            &e.outputs,
            &e.event,
            ap,
        )
        .await?
        .then_some(None),
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

#[cfg(test)]
mod tests;

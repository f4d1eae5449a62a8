//! Routing: which queued task goes to which backend next. A pure function over plain data (the
//! backends' state, the queued tasks' facts, the time, the round-robin cursor), so each rule is
//! tested alone; the `Dispatcher` builds the facts from its state and applies the choice.
//!
//! The rules, in order:
//! - a backend takes a job only while it is up, holds fewer than `max_in_flight` jobs, is not
//!   cooling down after it failed to take one, and is not being checked by a deployment ([`open`]);
//! - open backends are tried least loaded first (load: the jobs comfyd holds there, or the server's
//!   own queue when others use it too), ties in round-robin order from the cursor, so a burst spreads;
//! - each takes the first queued task it may run ([`may_run`]): a task of a release only where that
//!   release passed the backend's check (a deployment's, #19; a task of no release runs anywhere),
//!   and a requeued task does not go back to the backend it failed on while another backend is up.
//!   A task no open backend may run is skipped, not waited on: the tasks behind it still go.
//!
//! A new requirement (say, a task runs only where its release passed the check) is one more field
//! in [`BackendFacts`]/[`TaskFacts`] and one more condition in [`may_run`]; a preference (a backend
//! with the task's models loaded) is one more term in the order. The actor does not change.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::task::ids::TaskId;

/// A backend as routing sees it; its index in the slice is what a [`Choice`] names.
#[derive(Debug, Clone, Default)]
pub struct BackendFacts {
    pub up: bool,
    /// Jobs comfyd holds there (running, queued there, or being handed over).
    pub held: usize,
    /// The server's own queue depth, as it last reported.
    pub queue_remaining: u32,
    /// No new job before this: it just failed to take one.
    pub cool_until: Option<Instant>,
    /// The releases whose tasks it may run: it passed their check in a deployment.
    pub passed: BTreeSet<i32>,
    /// A deployment is checking it: out of traffic until the check ends (its jobs carry on).
    pub checking: bool,
}

impl BackendFacts {
    /// Work ahead of a new job there: ours, or the server's own count when others also use it.
    pub fn load(&self) -> usize {
        self.held.max(self.queue_remaining as usize)
    }
}

/// A queued task as routing sees it.
#[derive(Debug, Clone, Copy)]
pub struct TaskFacts<'a> {
    pub task_id: &'a TaskId,
    /// The backend (index) this task last failed on, when it was requeued after that.
    pub failed_on: Option<usize>,
    /// The release it was accepted under; None: before releases were served (runs anywhere).
    pub release: Option<i32>,
}

/// The next task to hand out and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice<'a> {
    /// Index of the backend in the slice routed over.
    pub backend: usize,
    pub task_id: &'a TaskId,
    /// The round-robin cursor after this choice: the backend after the chosen one.
    pub cursor: usize,
}

/// Whether backend `b` takes a new job at all now.
pub fn open(b: &BackendFacts, max_in_flight: usize, now: Instant) -> bool {
    b.up && !b.checking && b.held < max_in_flight && b.cool_until.is_none_or(|t| t <= now)
}

/// Whether another backend than `i` is up: a requeued task then goes there instead.
fn another_up(backends: &[BackendFacts], i: usize) -> bool {
    backends.iter().enumerate().any(|(j, b)| j != i && b.up)
}

/// Whether `task` may run on backend `i` (`b`), given whether another backend is up (asked once
/// per backend, not once per queued task: the queue can hold thousands).
pub fn may_run(i: usize, b: &BackendFacts, others_up: bool, task: &TaskFacts<'_>) -> bool {
    // A task of a release runs only where that release passed: never elsewhere, not even when
    // no backend that passed is up (it waits).
    let release_ok = task.release.is_none_or(|r| b.passed.contains(&r));
    // A requeued task goes elsewhere, unless no other backend is up (then back is better than never).
    release_ok && (!others_up || task.failed_on != Some(i))
}

/// The next assignment: over the open backends, least loaded first (ties round-robin from
/// `cursor`), the first task of `queue` (in queue order) that may run there. None when no backend
/// is open or none of them may run any queued task.
pub fn next_assignment<'a, I>(
    backends: &[BackendFacts],
    queue: I,
    max_in_flight: usize,
    now: Instant,
    cursor: usize,
) -> Option<Choice<'a>>
where
    I: IntoIterator<Item = TaskFacts<'a>>,
    I::IntoIter: Clone,
{
    let n = backends.len();
    let queue = queue.into_iter();
    let mut candidates: Vec<usize> = (0..n)
        .filter(|&i| open(&backends[i], max_in_flight, now))
        .collect();
    candidates.sort_by_key(|&i| (backends[i].load(), (i + n - cursor) % n));
    for i in candidates {
        let others_up = another_up(backends, i);
        if let Some(task) = queue
            .clone()
            .find(|t| may_run(i, &backends[i], others_up, t))
        {
            return Some(Choice {
                backend: i,
                task_id: task.task_id,
                cursor: (i + 1) % n,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MAX: usize = 2;

    fn up(held: usize) -> BackendFacts {
        BackendFacts {
            up: true,
            held,
            ..Default::default()
        }
    }

    fn ids(n: usize) -> Vec<TaskId> {
        (0..n).map(|i| TaskId::from(format!("t{i}"))).collect()
    }

    fn fresh(ids: &[TaskId]) -> Vec<TaskFacts<'_>> {
        ids.iter()
            .map(|task_id| TaskFacts {
                task_id,
                failed_on: None,
                release: None,
            })
            .collect()
    }

    /// The (backend, task) chosen, for short assertions.
    fn route(
        backends: &[BackendFacts],
        queue: &[TaskFacts<'_>],
        cursor: usize,
    ) -> Option<(usize, String)> {
        next_assignment(backends, queue.iter().copied(), MAX, Instant::now(), cursor)
            .map(|c| (c.backend, c.task_id.to_string()))
    }

    #[test]
    fn the_least_loaded_backend_takes_the_first_task() {
        let t = ids(2);
        assert_eq!(
            route(&[up(1), up(0), up(1)], &fresh(&t), 0),
            Some((1, "t0".into()))
        );
        // The server's own queue counts when it is longer than what comfyd holds there.
        let busy = BackendFacts {
            queue_remaining: 5,
            ..up(0)
        };
        assert_eq!(route(&[busy, up(1)], &fresh(&t), 0), Some((1, "t0".into())));
    }

    #[test]
    fn ties_go_round_robin_from_the_cursor() {
        let t = ids(1);
        let q = fresh(&t);
        let b = [up(0), up(0), up(0)];
        assert_eq!(route(&b, &q, 0), Some((0, "t0".into())));
        assert_eq!(route(&b, &q, 1), Some((1, "t0".into())));
        assert_eq!(route(&b, &q, 2), Some((2, "t0".into())));
        // The cursor moves past the chosen backend.
        let c = next_assignment(&b, q.iter().copied(), MAX, Instant::now(), 2).expect("a choice");
        assert_eq!(c.cursor, 0);
    }

    #[test]
    fn a_full_backend_takes_nothing() {
        let t = ids(1);
        assert_eq!(
            route(&[up(MAX), up(MAX - 1)], &fresh(&t), 0),
            Some((1, "t0".into()))
        );
        assert_eq!(route(&[up(MAX), up(MAX + 1)], &fresh(&t), 0), None);
    }

    #[test]
    fn a_down_backend_takes_nothing() {
        let t = ids(1);
        let down = BackendFacts::default();
        assert_eq!(
            route(&[down.clone(), up(1)], &fresh(&t), 0),
            Some((1, "t0".into()))
        );
        assert_eq!(route(&[down], &fresh(&t), 0), None);
    }

    #[test]
    fn a_backend_cools_down_after_it_refused_a_job() {
        let t = ids(1);
        let now = Instant::now();
        let cooling = BackendFacts {
            cool_until: Some(now + Duration::from_secs(1)),
            ..up(0)
        };
        let q = fresh(&t);
        let pick = |b: &[BackendFacts], at| {
            next_assignment(b, q.iter().copied(), MAX, at, 0).map(|c| c.backend)
        };
        assert_eq!(pick(&[cooling.clone(), up(1)], now), Some(1));
        assert_eq!(pick(std::slice::from_ref(&cooling), now), None);
        // Once the time has come, it is open again.
        assert_eq!(pick(&[cooling], now + Duration::from_secs(1)), Some(0));
    }

    #[test]
    fn a_requeued_task_avoids_the_backend_it_failed_on() {
        let t = ids(2);
        let mut q = fresh(&t);
        q[0].failed_on = Some(0);
        // Backend 0 is the least loaded: it takes the next task instead.
        assert_eq!(route(&[up(0), up(1)], &q, 0), Some((0, "t1".into())));
        // With only the requeued task, it waits for the other backend (full now)...
        assert_eq!(route(&[up(0), up(MAX)], &q[..1], 0), None);
        // ...which takes it when it has room.
        assert_eq!(route(&[up(0), up(1)], &q[..1], 0), Some((1, "t0".into())));
        // With no other backend up, it goes back rather than never.
        let down = BackendFacts::default();
        assert_eq!(route(&[up(0), down], &q[..1], 0), Some((0, "t0".into())));
    }

    #[test]
    fn nothing_eligible_means_no_choice() {
        let t = ids(1);
        assert_eq!(route(&[], &fresh(&t), 0), None);
        assert_eq!(route(&[up(0), up(0)], &[], 0), None);
        let down = BackendFacts::default();
        assert_eq!(route(&[down.clone(), down], &fresh(&t), 0), None);
    }

    fn passed(held: usize, releases: &[i32]) -> BackendFacts {
        BackendFacts {
            passed: releases.iter().copied().collect(),
            ..up(held)
        }
    }

    #[test]
    fn a_task_of_a_release_runs_only_where_that_release_passed() {
        let t = ids(1);
        let mut q = fresh(&t);
        q[0].release = Some(2);
        // Backend 0 is the least loaded but did not pass release 2: backend 1 gets it.
        assert_eq!(
            route(&[passed(0, &[1]), passed(1, &[1, 2])], &q, 0),
            Some((1, "t0".into()))
        );
        // A backend that did not pass never gets it, even alone (requeued there, too).
        assert_eq!(route(&[passed(0, &[1])], &q, 0), None);
        q[0].failed_on = Some(0);
        assert_eq!(route(&[passed(0, &[1])], &q, 0), None);
        // A task of no release runs anywhere.
        assert_eq!(route(&[up(0)], &fresh(&t), 0), Some((0, "t0".into())));
    }

    #[test]
    fn a_task_no_up_backend_may_run_waits_without_blocking_the_others() {
        let t = ids(3);
        let mut q = fresh(&t);
        q[0].release = Some(7);
        q[2].release = Some(1);
        let b = [passed(0, &[1])];
        assert_eq!(route(&b, &q, 0), Some((0, "t1".into())));
        assert_eq!(route(&b, &[q[0], q[2]], 0), Some((0, "t2".into())));
        assert_eq!(route(&b, &q[..1], 0), None);
    }

    #[test]
    fn a_backend_being_checked_takes_nothing_until_the_check_ends() {
        let t = ids(1);
        let checked = BackendFacts {
            checking: true,
            ..up(0)
        };
        assert_eq!(
            route(&[checked.clone(), up(1)], &fresh(&t), 0),
            Some((1, "t0".into()))
        );
        assert_eq!(route(std::slice::from_ref(&checked), &fresh(&t), 0), None);
    }
}

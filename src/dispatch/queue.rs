//! `Queue`: the tasks waiting for a backend, in dispatch order (higher priority first, then first
//! come first served), with what each carries to its next attempt: the prompt id it will run under
//! and the backend it last failed on. Plain data, owned by the `Dispatcher`, which fills it from
//! `Enqueue`, from requeues and from the database at start (see `recovery`); routing reads it.

use std::collections::{BTreeSet, HashMap};

use super::routing::TaskFacts;
use crate::task::ids::{PromptId, TaskId};

/// Ordering key of the queue: higher priority first, then first come first served.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueKey {
    neg_priority: i64,
    seq: u64,
    pub task_id: TaskId,
    /// The release it was accepted under (None: runs anywhere); routing gates on it.
    pub release: Option<i32>,
}

#[derive(Default)]
pub struct Queue {
    order: BTreeSet<QueueKey>,
    keys: HashMap<TaskId, QueueKey>,
    seq: u64,
    /// The backend (index) each re-queued task last failed on: it goes elsewhere when it can.
    avoid: HashMap<TaskId, usize>,
    /// The prompt id each queued task will run under, as recorded in its row (chosen at submit for
    /// the first attempt, at requeue for a later one); a task without one gets a fresh id.
    next_prompt: HashMap<TaskId, PromptId>,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// How many tasks wait at each priority.
    pub fn by_priority(&self) -> std::collections::BTreeMap<i32, usize> {
        let mut out = std::collections::BTreeMap::new();
        for k in &self.order {
            *out.entry(-k.neg_priority as i32).or_insert(0) += 1;
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn contains(&self, task_id: &str) -> bool {
        self.keys.contains_key(task_id)
    }

    /// Adds a task at the end of its priority (the caller checked it is not queued already).
    pub fn push(&mut self, task_id: TaskId, priority: i32, prompt_id: Option<PromptId>) {
        self.push_of(task_id, priority, prompt_id, None);
    }

    /// [`Queue::push`] of a task accepted under a release.
    pub fn push_of(
        &mut self,
        task_id: TaskId,
        priority: i32,
        prompt_id: Option<PromptId>,
        release: Option<i32>,
    ) {
        self.seq += 1;
        let key = QueueKey {
            neg_priority: -(priority as i64),
            seq: self.seq,
            task_id,
            release,
        };
        self.put_back(key, prompt_id);
    }

    /// Puts a task taken out by [`Queue::take`] back in its old place (its claim could not be
    /// written), with the prompt id it was to run under.
    pub fn put_back(&mut self, key: QueueKey, prompt_id: Option<PromptId>) {
        if let Some(p) = prompt_id {
            self.next_prompt.insert(key.task_id.clone(), p);
        }
        self.keys.insert(key.task_id.clone(), key.clone());
        self.order.insert(key);
    }

    /// Takes a task out to dispatch it: its key (to put it back) and the prompt id recorded for it.
    pub fn take(&mut self, task_id: &str) -> Option<(QueueKey, Option<PromptId>)> {
        let key = self.keys.remove(task_id)?;
        self.order.remove(&key);
        self.avoid.remove(task_id);
        Some((key, self.next_prompt.remove(task_id)))
    }

    /// Forgets a task entirely (cancelled, past its deadline): out of the queue, and what it carried.
    pub fn forget(&mut self, task_id: &str) {
        if let Some(key) = self.keys.remove(task_id) {
            self.order.remove(&key);
        }
        self.avoid.remove(task_id);
        self.next_prompt.remove(task_id);
    }

    /// Its next attempt should avoid backend `i` (its last one failed there).
    pub fn avoid(&mut self, task_id: TaskId, i: usize) {
        self.avoid.insert(task_id, i);
    }

    /// Drops the backend to avoid (the task will not run again).
    pub fn clear_avoid(&mut self, task_id: &str) {
        self.avoid.remove(task_id);
    }

    /// The queued tasks in dispatch order, as routing sees them.
    pub fn facts(&self) -> impl Iterator<Item = TaskFacts<'_>> + Clone {
        self.order.iter().map(|k| TaskFacts {
            task_id: &k.task_id,
            failed_on: self.avoid.get(&k.task_id).copied(),
            release: k.release,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(q: &Queue) -> Vec<String> {
        q.facts().map(|t| t.task_id.to_string()).collect()
    }

    #[test]
    fn higher_priority_first_then_arrival() {
        let mut q = Queue::default();
        q.push("a".into(), 0, None);
        q.push("b".into(), 5, None);
        q.push("c".into(), 0, None);
        q.push("d".into(), 5, None);
        assert_eq!(order(&q), ["b", "d", "a", "c"]);
        assert_eq!(q.len(), 4);
    }

    #[test]
    fn a_task_put_back_keeps_its_place_and_prompt() {
        let mut q = Queue::default();
        q.push("a".into(), 0, Some("p-a".into()));
        q.push("b".into(), 0, None);
        let (key, prompt) = q.take("a").expect("queued");
        assert_eq!(prompt, Some(PromptId::from("p-a")));
        assert_eq!(order(&q), ["b"]);
        q.put_back(key, prompt);
        assert_eq!(order(&q), ["a", "b"]);
        assert_eq!(q.take("a").and_then(|(_, p)| p), Some("p-a".into()));
    }

    #[test]
    fn forget_and_take_drop_what_the_task_carried() {
        let mut q = Queue::default();
        q.push("a".into(), 0, Some("p".into()));
        q.avoid("a".into(), 1);
        assert_eq!(q.facts().next().and_then(|t| t.failed_on), Some(1));
        q.forget("a");
        assert!(!q.contains("a"));
        assert_eq!(q.len(), 0);
        q.push("a".into(), 0, None);
        assert_eq!(q.facts().next().and_then(|t| t.failed_on), None);
        assert_eq!(q.take("a").and_then(|(_, p)| p), None);
    }
}

use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::oneshot;

use super::batch::{
    linger_wait, take_batch, Pending, LINGER, MAX_BATCH, RESERVED_FOR_OTHERS, START_HOLD,
};
use super::write::{plan, Step, Write};
use super::*;
use crate::db::{
    events::Event,
    tasks::{NewTask, TaskPatch},
};
use crate::task::Status;

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
        release_version: None,
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

#[test]
fn a_failed_write_is_unreachable_or_refused_as_db_health_sorts_it() {
    use sea_orm::DbErr;
    let unreachable = DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout);
    assert!(matches!(
        RecordError::from(unreachable),
        RecordError::Unreachable(_)
    ));
    assert!(matches!(
        RecordError::from(DbErr::RecordNotInserted),
        RecordError::Refused(_)
    ));
    // Said as the database said it.
    let refused = RecordError::from(DbErr::Custom("x".into()));
    assert_eq!(refused.to_string(), DbErr::Custom("x".into()).to_string());
}

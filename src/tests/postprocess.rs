//! The post-processing actors on their own (a real SQLite file, a simulator, a local store), for
//! orderings and timings the daemon cannot be made to produce on demand.

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use chrono::Utc;
use comfyd::blob::BlobStore;
use comfyd::comfy::FileRef;
use comfyd::db::{self, events::Event, tasks::TaskPatch};
use comfyd::outbound::{Outbound, OutboundSettings};
use comfyd::postprocess::cleaner::Cleaner;
use comfyd::postprocess::notifier::{Notifier, NotifierConfig};
use comfyd::postprocess::recorder::{Claim, InsertTask, MarkStarted, RecordEvent, Recorder};
use comfyd::postprocess::uploader::{InProgress, StoreOutputs, Uploader, UploaderConfig};
use comfyd::postprocess::Finisher;
use comfyd::task::Status;
use serde_json::json;

use crate::support::db::TestDb;
use crate::support::eventually;
use crate::support::sim::Sim;

/// A client cancels just as ComfyUI finishes the job: the cancel is written first, so the
/// `executed` record and the end that follow do not apply. What the uploader stored meanwhile must
/// not stay in the store without a row that names it. (The cleaner is off here: removing the file
/// from the ComfyUI host goes the way every other clean goes, which the daemon's tests cover.)
#[actix_web::test]
async fn outputs_of_a_task_cancelled_while_they_were_stored_are_removed() {
    cancelled_while_storing(true).await;
}

/// The same when the store refused the output and it was kept in the fallback folder.
#[actix_web::test]
async fn outputs_kept_for_a_task_cancelled_while_they_were_stored_are_removed() {
    cancelled_while_storing(false).await;
}

async fn cancelled_while_storing(store_works: bool) {
    // Arrange: the actors as the daemon wires them, on a fresh database and a local store (whose
    // root is a plain file when it must fail).
    let test_db = TestDb::sqlite();
    let db = db::connect::open(test_db.url(), 4).await.expect("database");
    let writer = db::connect::open_writer(test_db.url())
        .await
        .expect("writer");
    let dirs = tempfile::tempdir().expect("dirs");
    let store_root = dirs.path().join("store");
    if !store_works {
        std::fs::write(&store_root, b"not a folder").expect("store root file");
    }
    let fallback_dir = dirs.path().join("fallback");
    let recorder = Recorder::new(writer, db.clone()).start();
    let outbound = Outbound::new(OutboundSettings {
        fetch_max_bytes: 1 << 20,
        fetch_timeout_ms: 5_000,
        webhook_timeout_ms: 5_000,
        allow_private_addresses: true,
        allow_loopback_addresses: true,
    });
    let notifier = Notifier::new(
        NotifierConfig {
            secret: String::new(),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
        },
        db.clone(),
        recorder.clone(),
        outbound,
    )
    .start();
    let cleaner = Cleaner::new(false).start();
    let finisher = Finisher {
        recorder: recorder.clone(),
        notifier,
        inputs_dir: dirs.path().join("inputs"),
        webhook_horizon: Duration::from_secs(60),
    };
    let uploader = Uploader::new(
        UploaderConfig {
            upload_attempts: 1,
            fallback_dir: fallback_dir.clone(),
            http_timeout: Duration::from_secs(5),
            limits: Default::default(),
        },
        db.clone(),
        Arc::new(BlobStore::local(store_root.clone())),
        recorder.clone(),
        cleaner,
        finisher.clone(),
    )
    .start();
    let sim = Sim::start(0).await;

    let id = insert_task(&recorder).await;
    // The file ComfyUI wrote for the job, where `/view` serves it.
    let subfolder = format!("comfyd/{id}");
    let on_host = sim.data_dir().join("output").join(&subfolder);
    std::fs::create_dir_all(&on_host).expect("output folder");
    std::fs::write(on_host.join("out_00001_.png"), b"png").expect("output file");

    // Act: the cancel is recorded first, then the job's success reaches the uploader.
    let cancelled = finisher
        .finish_cancelled(&id, &Status::BEFORE_STORING)
        .await
        .expect("cancel");
    assert!(cancelled, "the cancel applies to a task that has not ended");
    uploader.do_send(StoreOutputs {
        task_id: id.clone().into(),
        backend: sim.url.clone().into(),
        files: Some(vec![FileRef {
            node_id: "9".into(),
            kind: "images".into(),
            filename: "out_00001_.png".into(),
            subfolder: subfolder.clone(),
            folder_type: "output".into(),
        }]),
    });
    let events = eventually(10, "the discard recorded", || {
        let db = db.clone();
        let id = id.clone();
        async move {
            let events = db::events::for_task(&db, &id).await.expect("events");
            events
                .iter()
                .any(|e| e.kind == "outputs_discarded")
                .then_some(events)
        }
    })
    .await;
    eventually(10, "the uploader idle", || {
        let uploader = uploader.clone();
        async move { (uploader.send(InProgress).await.expect("uploader") == 0).then_some(()) }
    })
    .await;

    // Assert
    let task = db::tasks::get(&db, &id).await.expect("read").expect("task");
    assert_eq!(task.status, "cancelled");
    assert!(db::outputs::for_task(&db, &id)
        .await
        .expect("outputs")
        .is_empty());
    for left in [
        store_root.join(&id).join("out_00001_.png"),
        fallback_dir
            .join("output")
            .join(&subfolder)
            .join("out_00001_.png"),
    ] {
        assert!(
            !left.exists(),
            "{} was written and left behind without a row",
            left.display()
        );
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["accepted", "cancelled", "outputs_discarded"],
        "{kinds:?}"
    );
}

/// A job's `running` mark waits up to a second for the job's end; a write that may wait only 100 ms,
/// queued after it (another task's webhook attempt or event), must not wait with it.
#[actix_web::test]
async fn a_write_queued_behind_a_held_running_mark_keeps_its_own_bound() {
    // Arrange: a task on a backend (claimed), as the dispatcher leaves it.
    let test_db = TestDb::sqlite();
    let db = db::connect::open(test_db.url(), 4).await.expect("database");
    let writer = db::connect::open_writer(test_db.url())
        .await
        .expect("writer");
    let recorder = Recorder::new(writer, db.clone()).start();
    let id = insert_task(&recorder).await;
    let claimed = recorder
        .send(Claim {
            task_id: id.clone().into(),
            may_wait: false,
            patch: TaskPatch {
                backend: Some(Some("b".into())),
                comfyui_task_id: Some(Some("p".into())),
                dispatched_at: Some(Utc::now()),
                ..Default::default()
            },
            event: Event::new("dispatched", json!({})),
        })
        .await
        .expect("recorder")
        .expect("claim");
    assert!(claimed.is_some());
    let other = insert_task(&recorder).await;

    // Act: the job starts (its mark is held for its end), then another task's event comes.
    let mark = recorder.send(MarkStarted {
        task_id: id.clone().into(),
        backend: "b".into(),
        prompt_id: "p".into(),
        at: Utc::now(),
    });
    let mark = actix_rt::spawn(mark);
    recorder
        .send(RecordEvent {
            task_id: other.clone().into(),
            event: Event::new("note", json!({})),
        })
        .await
        .expect("recorder")
        .expect("event written");

    // Assert: the event was written on its own; the mark is still waiting for the job's end.
    let task = db::tasks::get(&db, &id).await.expect("read").expect("task");
    assert_eq!(task.status, "dispatched", "the event waited for the mark");
    assert!(!mark.is_finished());
    // With no end coming, the mark is written once its hold is over.
    mark.await
        .expect("join")
        .expect("recorder")
        .expect("mark written");
    let task = db::tasks::get(&db, &id).await.expect("read").expect("task");
    assert_eq!(task.status, "running");
}

/// Records a new queued task through the Recorder; answers its id.
async fn insert_task(recorder: &actix::Addr<Recorder>) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    recorder
        .send(InsertTask(crate::support::new_task(&id, None)))
        .await
        .expect("recorder")
        .expect("task inserted");
    id
}

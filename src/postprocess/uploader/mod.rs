//! `Uploader`: stores a finished task's outputs and ends the task.
//!
//! For each output it fetches the file from the backend's `/view` and puts it in the store (S3 or a
//! local folder) under `{task_id}/{filename}`, retrying with backoff; a file that cannot be stored is
//! written to the fallback folder at its ComfyUI path (error_code 2), one that cannot be fetched gives
//! error_code 3. So does one whose names ComfyUI reported are unsafe (`comfy::names`): it is recorded
//! under escaped names and an empty key, never fetched, stored, kept or cleaned, and the task's other
//! outputs are stored as usual. Tasks are processed concurrently (up to `MAX_CONCURRENT_STORES`), each in its own
//! future, so a slow store never holds up other tasks; an output already stored is never stored again
//! (a replay after a crash).

mod files;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use sea_orm::DatabaseConnection;
use serde_json::json;
use tracing::{error, info, warn};

use super::cleaner::{CleanFiles, Cleaner};
use super::recorder::{RecordEvent, RecordExecuted, Recorder};
use super::Finisher;
use crate::blob::BlobStore;
use crate::comfy::names::{self, NameError};
use crate::comfy::{ComfyClient, FileRef, Limits};
use crate::db::{
    self,
    events::Event,
    outputs::{NewOutput, OutputMark},
    tasks::TaskPatch,
};
use crate::task::{error_code, BackendName, Status, TaskId};
use files::{comfy_path, file_ref, is_foreign, is_refused, output_files, refused_output};

/// Tasks stored at once, at most: outputs are held in memory while they are stored, so this bounds
/// comfyd's memory when a burst of jobs finishes. Measured (BENCHMARKS.md): 32 made a slow store's
/// backlog a FIFO wait (completion → webhook p50 364 ms in scenario (b) with S3); 128 keeps it at 50 to
/// 70 ms, the unbounded figure, while still capping memory.
const MAX_CONCURRENT_STORES: usize = 128;
/// Fetch attempts per output before it counts as not retrievable.
const FETCH_ATTEMPTS: u32 = 3;
/// First pause between two attempts (doubled each time).
const FIRST_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct UploaderConfig {
    pub upload_attempts: u32,
    pub fallback_dir: PathBuf,
    pub http_timeout: Duration,
    /// How much is read from a backend at most (`/view` downloads).
    pub limits: Limits,
}

pub struct Uploader {
    cfg: UploaderConfig,
    db: DatabaseConnection,
    store: Arc<BlobStore>,
    recorder: Addr<Recorder>,
    cleaner: Addr<Cleaner>,
    finisher: Finisher,
    clients: HashMap<String, Rc<ComfyClient>>,
    /// Tasks being stored right now (a recovery replay must not run beside the live one).
    busy: HashSet<TaskId>,
    /// Tasks waiting for a place among the `MAX_CONCURRENT_STORES`.
    waiting: VecDeque<StoreOutputs>,
}

impl Uploader {
    pub fn new(
        cfg: UploaderConfig,
        db: DatabaseConnection,
        store: Arc<BlobStore>,
        recorder: Addr<Recorder>,
        cleaner: Addr<Cleaner>,
        finisher: Finisher,
    ) -> Uploader {
        Uploader {
            cfg,
            db,
            store,
            recorder,
            cleaner,
            finisher,
            clients: HashMap::new(),
            busy: HashSet::new(),
            waiting: VecDeque::new(),
        }
    }

    fn client(&mut self, backend: &str) -> Rc<ComfyClient> {
        let (timeout, limits) = (self.cfg.http_timeout, self.cfg.limits);
        self.clients
            .entry(backend.to_string())
            .or_insert_with(|| Rc::new(ComfyClient::new(backend, timeout).with_limits(limits)))
            .clone()
    }
}

impl Actor for Uploader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1 << 16);
    }
}

/// A task's job succeeded on `backend`: record its outputs (when `files` is given) and store them.
/// With `files: None` the outputs already recorded are stored (recovery of an `executed` task).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StoreOutputs {
    pub task_id: TaskId,
    pub backend: BackendName,
    pub files: Option<Vec<FileRef>>,
}

impl Handler<StoreOutputs> for Uploader {
    type Result = ();

    fn handle(&mut self, msg: StoreOutputs, ctx: &mut Context<Self>) {
        if self.busy.contains(&msg.task_id) {
            return;
        }
        if self.busy.len() >= MAX_CONCURRENT_STORES {
            self.waiting.push_back(msg);
            return;
        }
        self.start(msg, ctx);
    }
}

impl Uploader {
    fn start(&mut self, msg: StoreOutputs, ctx: &mut Context<Self>) {
        self.busy.insert(msg.task_id.clone());
        let job = StoreJob {
            cfg: self.cfg.clone(),
            db: self.db.clone(),
            store: self.store.clone(),
            recorder: self.recorder.clone(),
            cleaner: self.cleaner.clone(),
            finisher: self.finisher.clone(),
            client: self.client(msg.backend.as_str()),
            backend: msg.backend,
            task_id: msg.task_id.clone(),
        };
        let task_id = msg.task_id;
        let files = msg.files;
        async move { job.run(files).await }
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.busy.remove(&task_id);
                if let Err(e) = res {
                    // Left in `executed`: the next start's recovery stores it.
                    error!(task.id = %task_id, error = %format!("{e:#}"), "storing outputs failed");
                }
                if let Some(next) = act.waiting.pop_front() {
                    act.start(next, ctx);
                }
            })
            .spawn(ctx);
    }
}

/// Everything one task's storing needs, owned by its future.
struct StoreJob {
    cfg: UploaderConfig,
    db: DatabaseConnection,
    store: Arc<BlobStore>,
    recorder: Addr<Recorder>,
    cleaner: Addr<Cleaner>,
    finisher: Finisher,
    client: Rc<ComfyClient>,
    backend: BackendName,
    task_id: TaskId,
}

/// What went wrong with one output, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Trouble {
    None,
    NotStored,
    NotFetched,
}

impl StoreJob {
    async fn run(self, files: Option<Vec<FileRef>>) -> anyhow::Result<()> {
        let id = self.task_id.to_string();
        // Why each refused output was refused, by (node, index), for the task's error message.
        let mut refusals = HashMap::new();
        // Each output, and whether it is stored already.
        let outputs: Vec<(NewOutput, bool)> = match files {
            Some(files) => {
                let mut outputs = self.new_outputs(&files, &mut refusals);
                outputs.sort_by(|a, b| (&a.node_id, a.idx).cmp(&(&b.node_id, b.idx)));
                // Not awaited: the Recorder holds this write back a little, so that it usually shares
                // the commit of the task's end below instead of costing one of its own. Sent first,
                // it is applied first. A crash before it is written leaves the task `running`, and
                // recovery finds the outputs in the backend's history; if the task was cancelled
                // meanwhile, it does not apply, and neither does the `Finish`.
                self.recorder.do_send(RecordExecuted {
                    task_id: id.clone().into(),
                    from: Status::ON_BACKEND.to_vec(),
                    outputs: outputs.clone(),
                    event: Event::new(
                        "executed",
                        json!({ "backend": self.backend, "outputs": outputs.len() }),
                    ),
                });
                outputs.into_iter().map(|o| (o, false)).collect()
            }
            // Recovery of a task left in `executed`: its outputs were recorded then.
            None => db::outputs::for_task(&self.db, &id)
                .await?
                .iter()
                .map(|o| (NewOutput::from(o), o.stored))
                .collect(),
        };
        let foreign: Vec<&NewOutput> = outputs
            .iter()
            .map(|(o, _)| o)
            .filter(|o| !is_refused(o) && is_foreign(&id, o))
            .collect();
        if outputs.is_empty() || !foreign.is_empty() {
            let message = if outputs.is_empty() {
                "ComfyUI reported no output files".to_string()
            } else {
                format!(
                    "ComfyUI reported files of another task ({}): a stale cache entry",
                    foreign[0].filename
                )
            };
            self.finisher
                .finish_failed(
                    &id,
                    &[Status::Executed],
                    error_code::RETRIEVAL_FAILED,
                    message,
                    serde_json::Value::Null,
                )
                .await?;
            return Ok(());
        }

        // Store what is not stored yet (all of it, unless this is a replay after a crash).
        let storing = std::time::Instant::now();
        let mut worst = Trouble::None;
        let mut first_error = None;
        let mut marks = Vec::new();
        for (o, _) in outputs.iter().filter(|(_, stored)| !stored) {
            let refusal = refusals.get(&(o.node_id.clone(), o.idx));
            let (mark, trouble, err) = self.store_one(o, refusal).await?;
            marks.push(mark);
            if trouble > worst {
                worst = trouble;
                first_error = err;
            }
        }
        crate::metrics::store_time(self.store.kind(), storing.elapsed());
        let (first, first_stored) = &outputs[0];
        let first_stored = *first_stored
            || marks
                .iter()
                .any(|m| m.node_id == first.node_id && m.idx == first.idx && m.stored);
        let code = match worst {
            Trouble::None => error_code::OK,
            Trouble::NotStored => error_code::UPLOAD_FAILED,
            Trouble::NotFetched => error_code::RETRIEVAL_FAILED,
        };
        // A fetch or storage error may quote what a server said: stored like every failure's text.
        let first_error = first_error.map(|e| crate::stored_text::message(&e));
        let patch = TaskPatch {
            comfyui_filepath: Some(comfy_path(first)),
            s3_key: first_stored.then(|| first.storage_key.clone()),
            error_code: Some(code),
            error_message: first_error.clone(),
            finished_at: Some(Utc::now()),
            ..Default::default()
        };
        let (to, event) = if code == error_code::OK {
            (
                Status::Done,
                Event::new(
                    "stored",
                    json!({ "outputs": outputs.len(), "store": self.store.kind() }),
                ),
            )
        } else {
            (
                Status::Failed,
                Event::new(
                    "failed",
                    json!({ "error_code": code, "message": first_error }),
                ),
            )
        };
        let ended = self
            .finisher
            .finish(&id, &[Status::Executed], to, patch, marks, event)
            .await?;
        if ended {
            info!(task.id = %id, error_code = code, outputs = outputs.len(), "task {id} ended: {to}");
            if code == error_code::OK {
                self.cleaner.do_send(CleanFiles {
                    backend: self.backend.clone(),
                    task_id: self.task_id.clone(),
                    files: output_files(&outputs),
                });
            }
        } else {
            self.discard_unrecorded(&outputs).await?;
        }
        Ok(())
    }

    /// The task ended some other way while its outputs were being stored: cancelled (or past its
    /// deadline) after its job finished on ComfyUI but before its `executed` record was written, so
    /// that record did not apply either. Nothing refers to what was just stored then, and the client
    /// asked for none of it: remove it from the store, the fallback folder and the ComfyUI host. A
    /// task whose outputs are recorded (a replay of one that had ended) keeps them.
    async fn discard_unrecorded(&self, outputs: &[(NewOutput, bool)]) -> anyhow::Result<()> {
        let id = self.task_id.as_str();
        let Some(task) = db::tasks::get(&self.db, id).await? else {
            return Ok(());
        };
        let ended = matches!(
            Status::parse(&task.status),
            Some(Status::Failed | Status::Cancelled)
        );
        if !ended || !db::outputs::for_task(&self.db, id).await?.is_empty() {
            return Ok(());
        }
        // Each output this run tried is either stored under its key, kept at its fallback path, or
        // neither; removing what is not there is no error.
        for (o, _) in outputs
            .iter()
            .filter(|(o, stored)| !stored && !is_refused(o))
        {
            if let Err(e) = self.store.delete(&o.storage_key).await {
                warn!(task.id = %id, key = %o.storage_key, error = %e, "could not remove an output of a task that ended meanwhile");
            }
            let Ok(path) = self.fallback_path(o).await else {
                continue;
            };
            if let Err(e) = tokio::fs::remove_file(&path).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(task.id = %id, path = %path.display(), error = %e, "could not remove an output of a task that ended meanwhile");
                }
            }
        }
        self.cleaner.do_send(CleanFiles {
            backend: self.backend.clone(),
            task_id: self.task_id.clone(),
            files: output_files(outputs),
        });
        info!(task.id = %id, status = %task.status, outputs = outputs.len(), "task {id} ended while its outputs were stored; removed them");
        self.event(
            "outputs_discarded",
            json!({ "status": task.status, "outputs": outputs.len() }),
        )
        .await;
        Ok(())
    }

    /// The output records of the files ComfyUI reported. A file with an unsafe name gets a record
    /// of its own (escaped names, empty key: see [`refused_output`]) and its reason in `refusals`.
    fn new_outputs(
        &self,
        files: &[FileRef],
        refusals: &mut HashMap<(String, i32), NameError>,
    ) -> Vec<NewOutput> {
        let mut per_node: HashMap<String, i32> = HashMap::new();
        let mut keys = HashSet::new();
        files
            .iter()
            .map(|raw| {
                let checked = names::check_file(raw);
                let node = names::shown_node_id(&raw.node_id);
                let idx = per_node.entry(node.clone()).or_insert(0);
                let this = *idx;
                *idx += 1;
                let f = match checked {
                    Ok(f) => f,
                    Err(e) => {
                        warn!(task.id = %self.task_id, error = %e, "refusing an output");
                        refusals.insert((node.clone(), this), e);
                        return refused_output(raw, node, this);
                    }
                };
                let mut key = format!("{}/{}", self.task_id, f.filename);
                if !keys.insert(key.clone()) {
                    key = format!("{}/{}/{}-{}", self.task_id, f.node_id, this, f.filename);
                    keys.insert(key.clone());
                }
                NewOutput {
                    node_id: f.node_id.clone(),
                    idx: this,
                    kind: f.kind.clone(),
                    filename: f.filename.clone(),
                    subfolder: f.subfolder.clone(),
                    folder_type: f.folder_type.clone(),
                    content_type: mime_guess::from_path(&f.filename)
                        .first_or_octet_stream()
                        .to_string(),
                    storage_key: key,
                }
            })
            .collect()
    }

    /// Fetches and stores one output; on failure keeps it in the fallback folder when it has the bytes.
    /// Returns what to record for it (with the task's terminal state), how it went, and why not.
    async fn store_one(
        &self,
        o: &NewOutput,
        refusal: Option<&NameError>,
    ) -> anyhow::Result<(OutputMark, Trouble, Option<String>)> {
        let mut mark = OutputMark {
            node_id: o.node_id.clone(),
            idx: o.idx,
            stored: false,
            content_type: o.content_type.clone(),
            size: 0,
            fallback_path: None,
        };
        // Refused when it was recorded (this run, or one before a crash), or by the same rule now
        // for a record that predates it: never fetched, stored or kept.
        let checked = match refusal {
            Some(e) => Err(e.to_string()),
            None if is_refused(o) => Err(format!(
                "ComfyUI reported an unsafe name for output {} of node {} (recorded as filename {}, \
                 subfolder {}, type {})",
                o.idx, o.node_id, o.filename, o.subfolder, o.folder_type
            )),
            None => names::check_file(&file_ref(o)).map_err(|e| e.to_string()),
        };
        let file = match checked {
            Ok(f) => f,
            Err(msg) => {
                self.event("output_refused", json!({ "error": msg })).await;
                return Ok((mark, Trouble::NotFetched, Some(msg)));
            }
        };
        let mut fetched = None;
        let mut last_err = String::new();
        for attempt in 1..=FETCH_ATTEMPTS {
            match self.client.view(&file).await {
                Ok(v) => {
                    fetched = Some(v);
                    break;
                }
                Err(e) => {
                    last_err = e.to_string();
                    if attempt < FETCH_ATTEMPTS {
                        actix_rt::time::sleep(FIRST_RETRY * 2u32.pow(attempt - 1)).await;
                    }
                }
            }
        }
        let Some((bytes, served_type)) = fetched else {
            let msg = format!("could not fetch {}: {last_err}", file.path());
            warn!(task.id = %self.task_id, "{msg}");
            self.event(
                "fetch_failed",
                json!({ "file": file.path(), "error": last_err }),
            )
            .await;
            return Ok((mark, Trouble::NotFetched, Some(msg)));
        };
        // ComfyUI serves what it guessed from the extension; trust it unless it is generic.
        if let Some(t) = served_type.filter(|t| t != "application/octet-stream") {
            mark.content_type = t;
        }
        mark.size = bytes.len() as i64;
        for attempt in 1..=self.cfg.upload_attempts {
            match self
                .store
                .put(&o.storage_key, bytes.clone(), &mark.content_type)
                .await
            {
                Ok(()) => {
                    crate::metrics::upload(self.store.kind(), true);
                    mark.stored = true;
                    return Ok((mark, Trouble::None, None));
                }
                Err(e) => {
                    last_err = e.to_string();
                    if attempt < self.cfg.upload_attempts && e.is_transient() {
                        crate::metrics::upload_retry(self.store.kind());
                        self.event(
                            "store_retry",
                            json!({ "key": o.storage_key, "attempt": attempt, "error": last_err }),
                        )
                        .await;
                        actix_rt::time::sleep(FIRST_RETRY * 2u32.pow(attempt - 1)).await;
                    } else {
                        break;
                    }
                }
            }
        }
        crate::metrics::upload(self.store.kind(), false);
        let msg = format!("could not store {}: {last_err}", o.storage_key);
        let path = match self.fallback_path(o).await {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("{msg}; and not kept in the fallback folder: {e:#}");
                warn!(task.id = %self.task_id, "{msg}");
                return Ok((mark, Trouble::NotFetched, Some(msg)));
            }
        };
        let dir = path.parent().map(std::path::Path::to_path_buf);
        let written = bytes.clone();
        let target = path.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = dir {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&target, &written)
        })
        .await??;
        warn!(task.id = %self.task_id, path = %path.display(), "{msg}; kept in the fallback folder");
        mark.fallback_path = Some(path.display().to_string());
        Ok((mark, Trouble::NotStored, Some(msg)))
    }

    /// Where an output that could not be stored is kept, for an operator (or `comfyd reupload`) to
    /// find: the fallback folder, at its ComfyUI path, which must be safe and stay in that folder.
    async fn fallback_path(&self, o: &NewOutput) -> anyhow::Result<PathBuf> {
        let file = names::check_file(&file_ref(o))?;
        let rel = format!("{}/{}", file.folder_type, file.path());
        let root = self.cfg.fallback_dir.clone();
        Ok(tokio::task::spawn_blocking(move || crate::paths::join_under(&root, &rel)).await??)
    }

    async fn event(&self, kind: &'static str, details: serde_json::Value) {
        let _ = self
            .recorder
            .send(RecordEvent {
                task_id: self.task_id.clone(),
                event: Event::new(kind, details),
            })
            .await;
    }
}

/// How many tasks are being stored or waiting to be (shutdown waits for zero).
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct InProgress;

impl Handler<InProgress> for Uploader {
    type Result = usize;

    fn handle(&mut self, _: InProgress, _ctx: &mut Context<Self>) -> usize {
        self.busy.len() + self.waiting.len()
    }
}

#[cfg(test)]
mod tests;

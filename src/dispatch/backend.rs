//! `Backend`: one actor per ComfyUI server. It owns the websocket (one client id for the life of the
//! process), the HTTP client, the prompts comfyd has in flight there, and the server's queue depth.
//! It is the only part of comfyd that speaks the ComfyUI protocol.
//!
//! Talks to: the `Dispatcher`, which sends `Run`, `Adopt` and `Cancel` and receives `BackendState`,
//! `JobStarted` and `JobEnded`; the `Cleaner`, which sends `Clean`.
//!
//! ComfyUI replays nothing after a reconnect and forgets everything when it restarts, so after every
//! (re)connect the backend asks `/queue` and `/history` about each prompt it holds: finished ones are
//! settled from history, vanished ones are reported lost (and re-dispatched by the dispatcher).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::io::SinkWrite;
use actix::prelude::*;
use actix_codec::Framed;
use awc::error::WsProtocolError;
use awc::ws::{Frame, Message as WsMessage};
use awc::BoxedSocket;
use futures_util::stream::{SplitSink, StreamExt};
use serde_json::{Map, Value};
use tracing::{debug, info, warn};

use super::dispatcher::{BackendState, Dispatcher, JobEnded, JobOutcome, JobStarted};
use crate::comfy::protocol::{self, HistoryOutcome};
use crate::comfy::ws_limit::BoundedCodec;
use crate::comfy::{ComfyClient, ComfyError, FileRef, Limits, WsEvent};
use crate::task::InputFile;

/// First wait before reconnecting; doubled after each failure up to the configured maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// How often the socket is pinged, and the lost-job timer checked.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How often prompts whose events cannot be trusted to arrive are looked up in `/history`: prompts
/// adopted after a comfyd restart were queued under the previous process's client id, so ComfyUI sends
/// their events to nobody.
const STALE_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A socket silent this long (no frame, no pong) is considered dead.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(20);

/// Settings of one backend actor.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    pub url: String,
    pub http_timeout: Duration,
    pub reconnect_max: Duration,
    /// Jobs of a backend unreachable this long are reported lost.
    pub lost_after: Duration,
    /// How much is read from the server at most.
    pub limits: Limits,
    /// Files are cleaned off this server (where it has the cleaner node, checked at each connect).
    pub cleanup: bool,
}

/// The node class that deletes files on a ComfyUI host (a custom node of the service comfyd replaces).
pub const CLEANER_CLASS: &str = "Clean input and output file";

/// Runs a task's graph: uploads its input images, then queues the prompt under `prompt_id`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Run {
    pub task_id: String,
    pub prompt_id: String,
    pub graph: Map<String, Value>,
    /// Input images with the path of their bytes in comfyd's data folder.
    pub inputs: Vec<(InputFile, PathBuf)>,
    /// Output nodes whose files are collected (all output nodes when empty).
    pub output_nodes: Vec<String>,
}

/// Takes over a prompt queued before comfyd restarted; it is settled like any in-flight prompt.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Adopt {
    pub task_id: String,
    pub prompt_id: String,
    pub output_nodes: Vec<String>,
}

/// Stops a prompt: removed from the ComfyUI queue if pending, interrupted if running.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Cancel {
    pub prompt_id: String,
}

/// Deletes files on the ComfyUI host through the `Clean input and output file` node.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Clean {
    /// (folder type, path relative to it): already checked to be relative and free of `..`.
    pub files: Vec<(String, String)>,
}

/// Frames of one websocket connection, tagged with the connection they came from.
#[derive(Message)]
#[rtype(result = "()")]
enum SocketItem {
    Frame(u64, Result<Frame, WsProtocolError>),
    Closed(u64),
}

struct Job {
    task_id: String,
    output_nodes: Vec<String>,
    files: Vec<FileRef>,
    started: bool,
    /// The POST /prompt answered (before that, a vanished prompt is not lost: it may not be queued yet).
    queued: bool,
    /// Events may have been missed (a reconnect since it was queued): settle it from history.
    stale: bool,
}

type WsFramed = Framed<BoxedSocket, BoundedCodec>;
type WsSink = SinkWrite<WsMessage, SplitSink<WsFramed, WsMessage>>;

pub struct Backend {
    cfg: BackendConfig,
    client: Rc<ComfyClient>,
    client_id: String,
    dispatcher: Addr<Dispatcher>,
    ws: Option<WsSink>,
    /// The read side of the current connection, stopped when it is dropped: after a protocol error
    /// the codec would keep failing, and a dropped connection's frames are of no use.
    reader: Option<SpawnHandle>,
    /// Unreadable frames on the current connection (the first is logged as a warning, the rest at
    /// debug level, so a server sending junk cannot flood the log).
    garbage: u64,
    /// Connection counter: frames of an older connection are ignored.
    conn: u64,
    connecting: bool,
    backoff: Duration,
    up: bool,
    down_since: Option<Instant>,
    last_frame: Instant,
    queue_remaining: u32,
    jobs: HashMap<String, Job>,
    /// Prompts of the cleaner node (their outcome is only logged).
    cleaning: HashSet<String>,
    /// A reconciliation is under way (they must not overlap).
    reconciling: bool,
    /// Whether the server has [`CLEANER_CLASS`], as last checked; None before the first answer.
    has_cleaner: Option<bool>,
}

impl Backend {
    pub fn new(cfg: BackendConfig, dispatcher: Addr<Dispatcher>) -> Backend {
        let client = Rc::new(ComfyClient::new(&cfg.url, cfg.http_timeout).with_limits(cfg.limits));
        Backend {
            client,
            client_id: uuid::Uuid::new_v4().simple().to_string(),
            dispatcher,
            ws: None,
            reader: None,
            garbage: 0,
            conn: 0,
            connecting: false,
            backoff: FIRST_BACKOFF,
            up: false,
            down_since: Some(Instant::now()),
            last_frame: Instant::now(),
            queue_remaining: 0,
            jobs: HashMap::new(),
            cleaning: HashSet::new(),
            reconciling: false,
            has_cleaner: None,
            cfg,
        }
    }

    fn report_state(&self) {
        self.dispatcher.do_send(BackendState {
            backend: self.cfg.name.clone(),
            up: self.up,
            queue_remaining: self.queue_remaining,
        });
    }

    fn end_job(&mut self, prompt_id: &str, outcome: JobOutcome) {
        if let Some(job) = self.jobs.remove(prompt_id) {
            self.dispatcher.do_send(JobEnded {
                backend: self.cfg.name.clone(),
                task_id: job.task_id,
                prompt_id: prompt_id.to_string(),
                outcome,
            });
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.connecting || self.ws.is_some() {
            return;
        }
        self.connecting = true;
        let client = self.client.clone();
        let client_id = self.client_id.clone();
        async move { client.connect_ws(&client_id).await }
            .into_actor(self)
            .map(|res, act, ctx| {
                act.connecting = false;
                match res {
                    Ok(framed) => act.on_connected(framed, ctx),
                    Err(e) => {
                        debug!(backend = %act.cfg.name, error = %e, "connect failed");
                        act.schedule_reconnect(ctx);
                    }
                }
            })
            .spawn(ctx);
    }

    fn schedule_reconnect(&mut self, ctx: &mut Context<Self>) {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(self.cfg.reconnect_max);
        ctx.run_later(wait, |act, ctx| act.connect(ctx));
    }

    fn on_connected(&mut self, framed: WsFramed, ctx: &mut Context<Self>) {
        self.conn += 1;
        let conn = self.conn;
        let (sink, stream) = framed.split();
        self.ws = Some(SinkWrite::new(sink, ctx));
        self.garbage = 0;
        self.reader = Some(
            ctx.add_stream(stream.map(move |f| SocketItem::Frame(conn, f)).chain(
                futures_util::stream::once(async move { SocketItem::Closed(conn) }),
            )),
        );
        self.last_frame = Instant::now();
        self.backoff = FIRST_BACKOFF;
        info!(backend = %self.cfg.name, "connected to ComfyUI {}", self.cfg.url);
        // Anything in flight may have finished, failed or vanished while we were away.
        for job in self.jobs.values_mut() {
            job.stale = true;
        }
        if self.cfg.cleanup {
            // Checked before the backend is marked up, so no job ends before the answer is known;
            // again at every connect, since a restarted ComfyUI may have gained or lost the node.
            self.check_cleaner(ctx);
        } else {
            self.reconcile(ctx, true);
        }
    }

    fn check_cleaner(&mut self, ctx: &mut Context<Self>) {
        let client = self.client.clone();
        async move { client.has_node_class(CLEANER_CLASS).await }
            .into_actor(self)
            .map(|res, act, ctx| {
                match res {
                    Ok(has) => {
                        if !has && act.has_cleaner != Some(false) {
                            warn!(backend = %act.cfg.name, "ComfyUI {} lacks the node `{CLEANER_CLASS}`: its input and output files are NOT cleaned up (install the node, or set COMFYD_CLEANUP=false to silence this)", act.cfg.url);
                        } else if has && act.has_cleaner == Some(false) {
                            info!(backend = %act.cfg.name, "ComfyUI {} now has the node `{CLEANER_CLASS}`: files are cleaned up again", act.cfg.url);
                        }
                        act.has_cleaner = Some(has);
                    }
                    // Unknown: no cleanup until a later connect answers.
                    Err(e) => {
                        warn!(backend = %act.cfg.name, error = %e, "could not check for the cleaner node; no cleanup there until the next connect");
                        act.has_cleaner = None;
                    }
                }
                act.reconcile(ctx, true);
            })
            .spawn(ctx);
    }

    /// Asks the server about every queued prompt that may have been missed; marks the backend up
    /// afterwards when `then_up`.
    fn reconcile(&mut self, ctx: &mut Context<Self>, then_up: bool) {
        // The one after a connect always runs: it is what marks the backend up.
        if self.reconciling && !then_up {
            return;
        }
        self.reconciling = true;
        let client = self.client.clone();
        let stale: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.stale && j.queued)
            .map(|(p, _)| p.clone())
            .collect();
        async move {
            if stale.is_empty() {
                return Ok(Vec::new());
            }
            let queued: HashSet<String> = client.queue().await?.into_iter().collect();
            let mut settled = Vec::new();
            for prompt_id in stale {
                if queued.contains(&prompt_id) {
                    continue;
                }
                // Not queued: finished (history has it) or lost (history does not).
                let entry = client.history(&prompt_id).await?;
                settled.push((prompt_id, entry));
            }
            Ok::<_, ComfyError>(settled)
        }
        .into_actor(self)
        .map(move |res, act, ctx| {
            act.reconciling = false;
            act.apply_reconciliation(res, then_up, ctx)
        })
        .spawn(ctx);
    }

    fn apply_reconciliation(
        &mut self,
        res: Result<Vec<(String, Option<Value>)>, ComfyError>,
        then_up: bool,
        ctx: &mut Context<Self>,
    ) {
        match res {
            Ok(settled) => {
                for (prompt_id, entry) in settled {
                    self.settle_from_history(&prompt_id, entry);
                }
                if then_up && !self.up {
                    self.up = true;
                    self.down_since = None;
                    self.report_state();
                }
            }
            Err(e) => {
                warn!(backend = %self.cfg.name, error = %e, "reconciliation failed; reconnecting");
                self.drop_socket(ctx);
            }
        }
    }

    fn settle_from_history(&mut self, prompt_id: &str, entry: Option<Value>) {
        let outcome = match entry {
            None => JobOutcome::Lost(format!(
                "prompt {prompt_id} is neither queued nor in history"
            )),
            Some(entry) => match protocol::history_outcome(&entry) {
                HistoryOutcome::Success(files) => {
                    let files = match self.jobs.get(prompt_id) {
                        Some(job) => filter_outputs(files, &job.output_nodes),
                        None => return,
                    };
                    JobOutcome::Success(files)
                }
                HistoryOutcome::Error(e) => JobOutcome::Failed(e),
                HistoryOutcome::Interrupted => JobOutcome::Interrupted,
            },
        };
        self.end_job(prompt_id, outcome);
    }

    /// Settles one prompt from its history entry (after `executing null` when events were missed).
    fn settle_one(&mut self, prompt_id: String, ctx: &mut Context<Self>) {
        let client = self.client.clone();
        let id = prompt_id.clone();
        async move { client.history(&id).await }
            .into_actor(self)
            .map(move |res, act, _| match res {
                Ok(entry) => act.settle_from_history(&prompt_id, entry),
                Err(e) => {
                    // The next reconnect's reconciliation settles it.
                    warn!(backend = %act.cfg.name, error = %e, "history fetch failed");
                    if let Some(j) = act.jobs.get_mut(&prompt_id) {
                        j.stale = true;
                    }
                }
            })
            .spawn(ctx);
    }

    fn drop_socket(&mut self, ctx: &mut Context<Self>) {
        if let Some(mut ws) = self.ws.take() {
            ws.close();
        }
        if let Some(reader) = self.reader.take() {
            ctx.cancel_future(reader);
        }
        self.conn += 1; // frames still buffered from the old socket are ignored
        if self.up {
            self.up = false;
            self.down_since = Some(Instant::now());
            warn!(backend = %self.cfg.name, "lost connection to ComfyUI");
            self.report_state();
        }
        self.schedule_reconnect(ctx);
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let event = match protocol::parse_frame(text) {
            Ok(e) => e,
            Err(e) => {
                self.skip_garbage(&e);
                return;
            }
        };
        match event {
            WsEvent::Status { queue_remaining } => {
                if queue_remaining != self.queue_remaining {
                    self.queue_remaining = queue_remaining;
                    if self.up {
                        self.report_state();
                    }
                }
            }
            WsEvent::ExecutionStart { prompt_id } => self.mark_started(&prompt_id),
            WsEvent::Executing {
                node: Some(_),
                prompt_id: Some(prompt_id),
            } => self.mark_started(&prompt_id),
            WsEvent::Executing {
                node: None,
                prompt_id: Some(prompt_id),
            } => {
                // The end of a prompt. With no terminal event seen, history says how it ended.
                if self.jobs.contains_key(&prompt_id) {
                    self.settle_one(prompt_id, ctx);
                } else {
                    self.cleaning.remove(&prompt_id);
                }
            }
            WsEvent::Executed {
                node,
                prompt_id,
                output,
            } => {
                if let Some(job) = self.jobs.get_mut(&prompt_id) {
                    let files = protocol::files_in_output(&node, &output);
                    job.files.extend(filter_outputs(files, &job.output_nodes));
                }
            }
            WsEvent::ExecutionSuccess { prompt_id } => {
                let Some(job) = self.jobs.get_mut(&prompt_id) else {
                    return;
                };
                if job.stale {
                    self.settle_one(prompt_id, ctx);
                } else {
                    let files = std::mem::take(&mut job.files);
                    self.end_job(&prompt_id, JobOutcome::Success(files));
                }
            }
            WsEvent::ExecutionError { prompt_id, error } => {
                if self.cleaning.remove(&prompt_id) {
                    warn!(backend = %self.cfg.name, error = %error.exception_message, "file cleanup failed");
                }
                self.end_job(&prompt_id, JobOutcome::Failed(error));
            }
            WsEvent::ExecutionInterrupted { prompt_id, .. } => {
                self.end_job(&prompt_id, JobOutcome::Interrupted);
            }
            WsEvent::Executing { .. } | WsEvent::Other => {}
        }
    }

    /// A frame that is not ComfyUI's protocol: skipped, and logged without flooding the log.
    fn skip_garbage(&mut self, error: &dyn std::fmt::Display) {
        self.garbage += 1;
        if self.garbage == 1 {
            warn!(backend = %self.cfg.name, error = %error, "unreadable frame from ComfyUI skipped (further ones on this connection are logged at debug level)");
        } else {
            debug!(backend = %self.cfg.name, error = %error, count = self.garbage, "unreadable frame skipped");
        }
    }

    fn mark_started(&mut self, prompt_id: &str) {
        if let Some(job) = self.jobs.get_mut(prompt_id) {
            if !job.started {
                job.started = true;
                self.dispatcher.do_send(JobStarted {
                    backend: self.cfg.name.clone(),
                    task_id: job.task_id.clone(),
                    prompt_id: prompt_id.to_string(),
                });
            }
        }
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.ws.is_some() && self.last_frame.elapsed() > SOCKET_TIMEOUT {
            warn!(backend = %self.cfg.name, "socket silent for {SOCKET_TIMEOUT:?}; reconnecting");
            self.drop_socket(ctx);
        } else if let Some(ws) = self.ws.as_mut() {
            let _ = ws.write(WsMessage::Ping(bytes::Bytes::new()));
        }
        // A backend gone too long gives up its jobs so they can run elsewhere.
        if let Some(since) = self.down_since {
            if since.elapsed() >= self.cfg.lost_after && !self.jobs.is_empty() {
                let ids: Vec<String> = self.jobs.keys().cloned().collect();
                warn!(backend = %self.cfg.name, jobs = ids.len(), "backend down too long; its jobs go elsewhere");
                for id in ids {
                    self.end_job(&id, JobOutcome::Lost("backend unreachable".into()));
                }
            }
        }
    }
}

/// Keeps the files of the workflow's output nodes (all of them when none are named).
fn filter_outputs(files: Vec<FileRef>, output_nodes: &[String]) -> Vec<FileRef> {
    if output_nodes.is_empty() {
        return files;
    }
    files
        .into_iter()
        .filter(|f| output_nodes.contains(&f.node_id))
        .collect()
}

impl Actor for Backend {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        self.connect(ctx);
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| act.heartbeat(ctx));
        ctx.run_interval(STALE_POLL_INTERVAL, |act, ctx| {
            if act.up && act.jobs.values().any(|j| j.stale && j.queued) {
                act.reconcile(ctx, false);
            }
        });
    }
}

impl actix::io::WriteHandler<WsProtocolError> for Backend {
    fn error(&mut self, err: WsProtocolError, _ctx: &mut Self::Context) -> Running {
        debug!(backend = %self.cfg.name, error = %err, "websocket write failed");
        // Keep the actor; the read side ends too and triggers the reconnect.
        Running::Continue
    }

    // The default stops the actor when a sink closes; a backend outlives every connection.
    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl StreamHandler<SocketItem> for Backend {
    fn handle(&mut self, item: SocketItem, ctx: &mut Context<Self>) {
        match item {
            SocketItem::Frame(conn, frame) if conn == self.conn => {
                self.last_frame = Instant::now();
                match frame {
                    Ok(Frame::Text(bytes)) => match std::str::from_utf8(&bytes) {
                        Ok(text) => self.on_text(text, ctx),
                        Err(e) => self.skip_garbage(&e),
                    },
                    Ok(Frame::Ping(payload)) => {
                        if let Some(ws) = self.ws.as_mut() {
                            let _ = ws.write(WsMessage::Pong(payload));
                        }
                    }
                    Ok(Frame::Close(_)) => self.drop_socket(ctx),
                    // An oversized frame or a broken one: the stream is out of step, so reconnect
                    // (and reconcile, as after any reconnect).
                    Err(e) => {
                        warn!(backend = %self.cfg.name, error = %e, "websocket protocol error; reconnecting");
                        self.drop_socket(ctx);
                    }
                    // Binary frames are previews (SaveImageWebsocket); comfyd collects files instead.
                    Ok(_) => {}
                }
            }
            SocketItem::Closed(conn) if conn == self.conn => self.drop_socket(ctx),
            _ => {}
        }
    }

    // The actor outlives any one connection.
    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl Handler<Run> for Backend {
    type Result = ();

    fn handle(&mut self, msg: Run, ctx: &mut Context<Self>) {
        let Run {
            task_id,
            prompt_id,
            mut graph,
            inputs,
            output_nodes,
        } = msg;
        // Known before the POST, so events that race the HTTP answer are matched.
        self.jobs.insert(
            prompt_id.clone(),
            Job {
                task_id,
                output_nodes,
                files: Vec::new(),
                started: false,
                queued: false,
                stale: false,
            },
        );
        let client = self.client.clone();
        let client_id = self.client_id.clone();
        let pid = prompt_id.clone();
        async move {
            for (input, path) in &inputs {
                let bytes = tokio::fs::read(path).await.map_err(|e| {
                    // The input vanished from comfyd's own disk: no backend can run this task.
                    ComfyError::Rejected {
                        message: format!("input image {} unreadable: {e}", input.param),
                        body: Value::Null,
                    }
                })?;
                let mime = mime_guess::from_path(&input.upload_name).first_or_octet_stream();
                let name = client
                    .upload_image(&input.upload_name, bytes.into(), mime.as_ref())
                    .await?;
                crate::workflow::set_image(&mut graph, &input.targets, &name);
            }
            match client.queue_prompt(&graph, &client_id, &pid).await {
                Ok(()) => Ok(()),
                Err(e @ ComfyError::Rejected { .. }) => Err(e),
                // The answer may be lost while the prompt was queued: look before calling it failed.
                Err(e) => match client.queue().await {
                    Ok(ids) if ids.contains(&pid) => Ok(()),
                    _ => match client.history(&pid).await {
                        Ok(Some(_)) => Ok(()),
                        _ => Err(e),
                    },
                },
            }
        }
        .into_actor(self)
        .map(move |res, act, ctx| match res {
            Ok(()) => {
                if let Some(job) = act.jobs.get_mut(&prompt_id) {
                    job.queued = true;
                    if !act.up {
                        // Queued while the socket was down: events may be lost.
                        job.stale = true;
                    }
                }
                if !act.up {
                    act.connect(ctx);
                }
            }
            Err(ComfyError::UnsafeName(e)) => {
                warn!(backend = %act.cfg.name, error = %e, "refusing the upload answer");
                act.end_job(&prompt_id, JobOutcome::UnsafeName(e.to_string()));
            }
            Err(ComfyError::Rejected { message, body }) => {
                act.end_job(
                    &prompt_id,
                    JobOutcome::Rejected {
                        message,
                        details: body,
                    },
                );
            }
            Err(e) => {
                warn!(backend = %act.cfg.name, error = %e, "could not queue prompt");
                act.end_job(&prompt_id, JobOutcome::Unavailable(e.to_string()));
            }
        })
        .spawn(ctx);
    }
}

impl Handler<Adopt> for Backend {
    type Result = ();

    fn handle(&mut self, msg: Adopt, ctx: &mut Context<Self>) {
        self.jobs.insert(
            msg.prompt_id,
            Job {
                task_id: msg.task_id,
                output_nodes: msg.output_nodes,
                files: Vec::new(),
                started: false,
                queued: true,
                stale: true,
            },
        );
        // When connected, settle it now; otherwise the next connect does.
        if self.ws.is_some() && self.up {
            self.reconcile(ctx, false);
        }
    }
}

impl Handler<Cancel> for Backend {
    type Result = ();

    fn handle(&mut self, msg: Cancel, ctx: &mut Context<Self>) {
        // The dispatcher already recorded the cancel; a deleted pending prompt sends no events at all.
        self.jobs.remove(&msg.prompt_id);
        let client = self.client.clone();
        let name = self.cfg.name.clone();
        async move {
            let ids = [msg.prompt_id.clone()];
            if let Err(e) = client.delete_from_queue(&ids).await {
                warn!(backend = %name, error = %e, "cancel: queue delete failed");
            }
            if let Err(e) = client.interrupt(&msg.prompt_id).await {
                warn!(backend = %name, error = %e, "cancel: interrupt failed");
            }
        }
        .into_actor(self)
        .spawn(ctx);
    }
}

impl Handler<Clean> for Backend {
    type Result = ();

    fn handle(&mut self, msg: Clean, ctx: &mut Context<Self>) {
        if self.has_cleaner != Some(true) {
            debug!(backend = %self.cfg.name, files = msg.files.len(), "no cleaner node there; files left");
            return;
        }
        for (folder_type, path) in msg.files {
            let prompt_id = uuid::Uuid::new_v4().to_string();
            let mut graph = Map::new();
            graph.insert(
                "1".into(),
                serde_json::json!({
                    "class_type": CLEANER_CLASS,
                    "inputs": { "type": folder_type, "path": path }
                }),
            );
            self.cleaning.insert(prompt_id.clone());
            let client = self.client.clone();
            let client_id = self.client_id.clone();
            let name = self.cfg.name.clone();
            async move {
                if let Err(e) = client.queue_prompt(&graph, &client_id, &prompt_id).await {
                    warn!(backend = %name, error = %e, file = %path, "file cleanup not queued");
                }
            }
            .into_actor(self)
            .spawn(ctx);
        }
    }
}

//! `Backend`: one actor per ComfyUI server. It owns the websocket (one client id for the life of the
//! process), the HTTP client, the prompts comfyd has in flight there, and the server's queue depth.
//! It is the only part of comfyd that speaks the ComfyUI protocol.
//!
//! Talks to: the `Dispatcher`, which starts it and sends `Run`, `Adopt` and `Cancel`, and to which it
//! reports `BackendState`, `JobStarted` and `JobEnded` through [`Reports`] (it knows the Dispatcher
//! only as those three recipients); the `Cleaner`, which sends `Clean`.
//!
//! ComfyUI replays nothing after a reconnect and forgets everything when it restarts, so after every
//! (re)connect the backend asks `/queue` and `/history` about each prompt it holds: finished ones are
//! settled from history, vanished ones are reported lost (and re-dispatched by the dispatcher).
//!
//! Here: the actor's state and its connection (connect, cleaner-node check, drop, heartbeat). In
//! [`events`]: what the websocket says. In [`settle`]: settling prompts from `/queue` and `/history`.
//! In [`requests`]: the messages it handles, each an HTTP call to the server.

mod events;
mod requests;
mod settle;

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::io::SinkWrite;
use actix::prelude::*;
use actix_codec::Framed;
use awc::error::WsProtocolError;
use awc::ws::Message as WsMessage;
use awc::BoxedSocket;
use futures_util::stream::{SplitSink, StreamExt};
use tracing::{debug, info, warn};

use super::messages::{BackendConfig, BackendState, JobEnded, JobOutcome, Reports};
use crate::comfy::ws_limit::BoundedCodec;
use crate::comfy::{ComfyClient, FileRef};
use crate::task::ids::{PromptId, TaskId};
use events::SocketItem;

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

/// The node class that deletes files on a ComfyUI host (a custom node of the service comfyd replaces).
pub const CLEANER_CLASS: &str = "Clean input and output file";

struct Job {
    task_id: TaskId,
    output_nodes: Vec<String>,
    files: Vec<FileRef>,
    started: bool,
    /// When comfyd saw it start (for the execution-time metric).
    started_at: Option<Instant>,
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
    /// Where it reports: the Dispatcher.
    reports: Reports,
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
    jobs: HashMap<PromptId, Job>,
    /// Prompts of the cleaner node (their outcome is only logged).
    cleaning: HashSet<PromptId>,
    /// A reconciliation is under way (they must not overlap).
    reconciling: bool,
    /// Whether the server has [`CLEANER_CLASS`], as last checked; None before the first answer.
    has_cleaner: Option<bool>,
}

impl Backend {
    pub fn new(cfg: BackendConfig, reports: Reports) -> Backend {
        let client = Rc::new(ComfyClient::new(&cfg.url, cfg.http_timeout).with_limits(cfg.limits));
        Backend {
            client,
            client_id: uuid::Uuid::new_v4().simple().to_string(),
            reports,
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
        self.reports.state.do_send(BackendState {
            backend: self.cfg.name.clone(),
            up: self.up,
            queue_remaining: self.queue_remaining,
        });
    }

    fn end_job(&mut self, prompt_id: &str, outcome: JobOutcome) {
        if let Some(job) = self.jobs.remove(prompt_id) {
            if let Some(at) = job.started_at {
                crate::metrics::execution_time(self.cfg.name.as_str(), at.elapsed());
            }
            self.reports.ended.do_send(JobEnded {
                backend: self.cfg.name.clone(),
                task_id: job.task_id,
                prompt_id: prompt_id.into(),
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
                let ids: Vec<PromptId> = self.jobs.keys().cloned().collect();
                warn!(backend = %self.cfg.name, jobs = ids.len(), "backend down too long; its jobs go elsewhere");
                for id in ids {
                    self.end_job(id.as_str(), JobOutcome::Lost("backend unreachable".into()));
                }
            }
        }
    }
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

//! The simulator's shared state: queue, history, sockets, cache, counters and scripting knobs.
//!
//! One `Mutex<Inner>` guards everything, and every websocket frame is queued to its socket while
//! that lock is held. That gives one global order of events (a `status` for a queued prompt can
//! never overtake the `execution_start` of the worker), like ComfyUI's single event loop. Sending
//! is `do_send` into the socket actor's mailbox, so holding the lock never waits on a client.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::exec::CacheEntry;

/// ComfyUI's history cap (`MAXIMUM_HISTORY_SIZE`).
const MAX_HISTORY: usize = 10_000;

/// A frame for one websocket session.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Frame {
    /// A JSON text frame.
    Text(String),
    /// A binary (image) frame.
    Binary(Bytes),
}

/// One registered socket: the newest connection for a clientId.
pub struct Socket {
    /// Distinguishes connections that share a clientId.
    pub conn: u64,
    pub addr: Recipient<Frame>,
    /// Set when the client's first frame asked for `supports_preview_metadata`.
    pub preview_metadata: bool,
}

/// A queued prompt: ComfyUI's queue item `[number, prompt_id, prompt, extra_data, outputs]`.
#[derive(Debug, Clone)]
pub struct QueueItem {
    pub number: i64,
    pub prompt_id: String,
    pub prompt: serde_json::Map<String, Value>,
    pub extra_data: Value,
    pub outputs: Vec<String>,
}

impl QueueItem {
    /// The client_id the prompt was sent with, if any.
    pub fn client_id(&self) -> Option<String> {
        self.extra_data
            .get("client_id")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// The JSON array ComfyUI shows in `/queue` and `history[..].prompt`.
    pub fn to_json(&self) -> Value {
        json!([
            self.number,
            self.prompt_id,
            self.prompt,
            self.extra_data,
            self.outputs
        ])
    }
}

/// The prompt the worker is executing.
pub struct Running {
    pub item: QueueItem,
    /// The node of the last `executing` frame (replayed to a socket that reconnects).
    pub last_node: Option<String>,
    /// Set once the worker has begun executing it (it may be claimed by a handler first).
    pub started: bool,
}

/// Runtime knobs set from the CLI and `POST /sim/config`.
#[derive(Debug, Clone)]
pub struct Config {
    pub exec_ms: u64,
    pub paused: bool,
}

/// Scripted misbehaviour from `POST /sim/script`.
#[derive(Debug, Default, Clone)]
pub struct Script {
    pub fail_next: u64,
    pub reject_next: u64,
    pub hang_next: u64,
}

/// One line of `GET /sim/stats`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PromptStat {
    pub prompt_id: String,
    pub client_id: Option<String>,
    pub number: i64,
    pub received_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub outcome: Option<&'static str>,
}

/// Everything behind the lock.
pub struct Inner {
    /// ComfyUI's `number` counter.
    pub number: i64,
    pub pending: Vec<QueueItem>,
    pub running: Option<Running>,
    /// `nodes.interrupt_processing`: checked at node boundaries, reset when a prompt starts.
    pub interrupt: bool,
    pub history: Vec<(String, Value)>,
    pub sockets: HashMap<String, Socket>,
    pub next_conn: u64,
    /// Node signature → outputs, for the nodes of the last executed prompt.
    pub cache: HashMap<String, CacheEntry>,
    pub config: Config,
    pub script: Script,
    pub stats: Vec<PromptStat>,
    /// Hostile mode (`--hostile`, `POST /sim/hostile`); inert by default.
    pub hostile: crate::hostile::Hostile,
}

/// The data dir layout.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub input: PathBuf,
    pub output: PathBuf,
    pub temp: PathBuf,
}

impl Dirs {
    /// Creates `input/`, `output/` and `temp/` under `root` if missing.
    pub fn create(root: PathBuf) -> std::io::Result<Self> {
        let d = Self {
            input: root.join("input"),
            output: root.join("output"),
            temp: root.join("temp"),
        };
        for p in [&d.input, &d.output, &d.temp] {
            std::fs::create_dir_all(p)?;
        }
        Ok(d)
    }

    /// The directory for a ComfyUI folder type (`input`, `output`, `temp`).
    pub fn by_type(&self, kind: &str) -> Option<&PathBuf> {
        match kind {
            "input" => Some(&self.input),
            "output" => Some(&self.output),
            "temp" => Some(&self.temp),
            _ => None,
        }
    }
}

/// The simulator: shared by the HTTP handlers, the socket actors and the worker.
pub struct Sim {
    inner: Mutex<Inner>,
    /// Wakes the worker when a prompt is queued or the worker is resumed.
    pub wake: Notify,
    pub dirs: Dirs,
    /// The command line, reported by `/system_stats`.
    pub argv: Vec<String>,
}

/// Epoch milliseconds, as ComfyUI's `timestamp` fields.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `{"type": kind, "data": data}` as text.
pub fn frame_text(kind: &str, data: &Value) -> String {
    json!({"type": kind, "data": data}).to_string()
}

impl Sim {
    /// A fresh simulator over `dirs`.
    pub fn new(dirs: Dirs, config: Config, argv: Vec<String>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                number: 0,
                pending: Vec::new(),
                running: None,
                interrupt: false,
                history: Vec::new(),
                sockets: HashMap::new(),
                next_conn: 0,
                cache: HashMap::new(),
                config,
                script: Script::default(),
                stats: Vec::new(),
                hostile: crate::hostile::Hostile::default(),
            }),
            wake: Notify::new(),
            dirs,
            argv,
        }
    }

    /// Locks the state. A poisoned lock is recovered: every critical section leaves `Inner`
    /// consistent between statements, so the data is still usable after a panic elsewhere.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// running + pending, as `exec_info.queue_remaining`.
    pub fn queue_remaining(&self) -> usize {
        self.pending.len() + usize::from(self.running.is_some())
    }

    /// `{"exec_info": {"queue_remaining": N}}`.
    pub fn exec_info(&self) -> Value {
        json!({"exec_info": {"queue_remaining": self.queue_remaining()}})
    }

    /// Moves the lowest-numbered pending prompt to running when idle and not paused, and
    /// broadcasts `status` (ComfyUI's `queue.get`). Called by the worker and, so that the
    /// order "queued status, taken status" does not depend on thread timing, by POST /prompt.
    pub fn claim_next(&mut self) {
        if self.config.paused || self.running.is_some() {
            return;
        }
        let Some(i) = self
            .pending
            .iter()
            .enumerate()
            .min_by_key(|(_, it)| it.number)
            .map(|(i, _)| i)
        else {
            return;
        };
        let item = self.pending.remove(i);
        if let Some(s) = self.stat_mut(&item.prompt_id) {
            s.started_ms = Some(now_ms());
        }
        self.running = Some(Running {
            item,
            last_node: None,
            started: false,
        });
        self.broadcast_status();
    }

    /// Sends a `status` frame to every registered socket.
    pub fn broadcast_status(&self) {
        let text = frame_text("status", &json!({"status": self.exec_info()}));
        for s in self.sockets.values() {
            s.addr.do_send(Frame::Text(text.clone()));
        }
    }

    /// Sends an event to the socket registered for `client`; with no client it goes nowhere
    /// unless `broadcast_if_none` (ComfyUI's `send_sync(.., sid=None)` for progress_state).
    pub fn emit(&self, client: Option<&str>, kind: &str, data: &Value, broadcast_if_none: bool) {
        let text = frame_text(kind, data);
        match client {
            Some(c) => {
                if let Some(s) = self.sockets.get(c) {
                    s.addr.do_send(Frame::Text(text));
                }
            }
            None if broadcast_if_none => {
                for s in self.sockets.values() {
                    s.addr.do_send(Frame::Text(text.clone()));
                }
            }
            None => {}
        }
    }

    /// Registers a socket (taking over the clientId), sends it `status` with `sid`, and the
    /// `executing {node}` replay when its client's prompt is mid-run.
    pub fn connect(&mut self, sid: &str, addr: Recipient<Frame>) -> u64 {
        self.next_conn += 1;
        let conn = self.next_conn;
        let status = frame_text("status", &json!({"status": self.exec_info(), "sid": sid}));
        addr.do_send(Frame::Text(status));
        if let Some(r) = &self.running {
            if r.item.client_id().as_deref() == Some(sid) {
                if let Some(node) = &r.last_node {
                    addr.do_send(Frame::Text(frame_text("executing", &json!({"node": node}))));
                }
            }
        }
        self.sockets.insert(
            sid.to_string(),
            Socket {
                conn,
                addr,
                preview_metadata: false,
            },
        );
        conn
    }

    /// Forgets a socket, but only if it is still the one registered for `sid`.
    pub fn disconnect(&mut self, sid: &str, conn: u64) {
        if self.sockets.get(sid).map(|s| s.conn) == Some(conn) {
            self.sockets.remove(sid);
        }
    }

    /// Appends a history entry (dropping the oldest past ComfyUI's cap).
    pub fn push_history(&mut self, id: String, entry: Value) {
        self.history.retain(|(k, _)| *k != id);
        self.history.push((id, entry));
        if self.history.len() > MAX_HISTORY {
            let extra = self.history.len() - MAX_HISTORY;
            self.history.drain(..extra);
        }
    }

    /// The stats line of a prompt.
    pub fn stat_mut(&mut self, prompt_id: &str) -> Option<&mut PromptStat> {
        self.stats
            .iter_mut()
            .rev()
            .find(|s| s.prompt_id == prompt_id)
    }
}

//! What the websocket says: frames of the current connection, parsed into ComfyUI events, moved into
//! the state of the jobs they name (started, files seen, ended); the end of a prompt whose events
//! may have been missed is settled from history (see `settle`).

use std::time::Instant;

use actix::prelude::*;
use awc::error::WsProtocolError;
use awc::ws::{Frame, Message as WsMessage};
use tracing::{debug, warn};

use super::settle::filter_outputs;
use super::Backend;
use crate::comfy::protocol;
use crate::comfy::WsEvent;
use crate::dispatch::messages::{JobOutcome, JobStarted};

/// Frames of one websocket connection, tagged with the connection they came from.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) enum SocketItem {
    Frame(u64, Result<Frame, WsProtocolError>),
    Closed(u64),
}

impl Backend {
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
                if self.jobs.contains_key(prompt_id.as_str()) {
                    self.settle_one(prompt_id.into(), ctx);
                } else {
                    self.cleaning.remove(prompt_id.as_str());
                }
            }
            WsEvent::Executed {
                node,
                prompt_id,
                output,
            } => {
                if let Some(job) = self.jobs.get_mut(prompt_id.as_str()) {
                    let files = protocol::files_in_output(&node, &output);
                    job.files.extend(filter_outputs(files, &job.output_nodes));
                }
            }
            WsEvent::ExecutionSuccess { prompt_id } => {
                let Some(job) = self.jobs.get_mut(prompt_id.as_str()) else {
                    return;
                };
                if job.stale {
                    self.settle_one(prompt_id.into(), ctx);
                } else {
                    let files = std::mem::take(&mut job.files);
                    self.end_job(&prompt_id, JobOutcome::Success(files));
                }
            }
            WsEvent::ExecutionError { prompt_id, error } => {
                if self.cleaning.remove(prompt_id.as_str()) {
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
                job.started_at = Some(Instant::now());
                self.reports.started.do_send(JobStarted {
                    backend: self.cfg.name.clone(),
                    task_id: job.task_id.clone(),
                    prompt_id: prompt_id.into(),
                });
            }
        }
    }
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

//! The `/ws` websocket session (the only module that uses actix-web-actors, so a later move to
//! actix-ws stays local). A session registers under its clientId in [`Sim`], receives
//! [`Frame`]s from the worker and handlers, and answers a first `feature_flags` frame.

use std::sync::Arc;

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use serde_json::{json, Value};

use crate::state::{frame_text, Frame, Sim};

/// One websocket connection.
pub struct Session {
    sim: Arc<Sim>,
    sid: String,
    conn: u64,
    /// Only the client's first frame may carry feature flags (as in ComfyUI).
    first_frame: bool,
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.conn = self
            .sim
            .lock()
            .connect(&self.sid, ctx.address().recipient());
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.sim.lock().disconnect(&self.sid, self.conn);
    }
}

impl Handler<Frame> for Session {
    type Result = ();

    fn handle(&mut self, msg: Frame, ctx: &mut Self::Context) {
        match msg {
            Frame::Text(t) => ctx.text(t),
            Frame::Binary(b) => ctx.binary(b),
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let first = std::mem::replace(&mut self.first_frame, false);
        match msg {
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Text(text)) => {
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    return;
                };
                if first && v["type"] == "feature_flags" {
                    let g = &mut *self.sim.lock();
                    let wants = v["data"]["supports_preview_metadata"]
                        .as_bool()
                        .unwrap_or(false);
                    if let Some(s) = g.sockets.get_mut(&self.sid).filter(|s| s.conn == self.conn) {
                        s.preview_metadata = wants;
                        let reply = frame_text("feature_flags", &features());
                        s.addr.do_send(Frame::Text(reply));
                    }
                }
            }
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(_) => {}
            Err(_) => ctx.stop(),
        }
    }
}

/// The server's feature flags (`GET /features` and the ws reply).
pub fn features() -> Value {
    json!({"supports_preview_metadata": true, "max_upload_size": 104_857_600})
}

/// `GET /ws?clientId=`: a missing clientId gets a fresh 32-hex one, reported in `sid`.
pub async fn route(
    req: HttpRequest,
    stream: web::Payload,
    sim: web::Data<Sim>,
    query: web::Query<std::collections::HashMap<String, String>>,
) -> Result<HttpResponse, actix_web::Error> {
    let sid = query
        .get("clientId")
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let session = Session {
        sim: sim.into_inner(),
        sid,
        conn: 0,
        first_frame: true,
    };
    ws::start(session, &req, stream)
}

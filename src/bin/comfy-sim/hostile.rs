//! Hostile mode: the simulator plays a compromised, spoofed or buggy ComfyUI server, so that tests
//! (and anyone trying comfyd) can check that nothing it says leaves comfyd's folders or stops comfyd.
//!
//! Switched on for every prompt with
//! `--hostile traversal,garbage-frames,oversized-frames,foreign-events,nul-errors`
//! (any subset), or per prompt through `POST /sim/hostile` (see [`route`]). Without either, nothing here
//! changes what the simulator sends.
//!
//! - `traversal`: output names in `executed` and `/history`, and the `name`/`subfolder`/`type` that
//!   `/upload/image` answers, are replaced by unsafe ones ([`traversal_forms`], in turn);
//! - `garbage-frames`: before a prompt's first event its client gets frames that are not the protocol
//!   ([`garbage_frames`]): broken JSON, wrong types, deep nesting, binary junk;
//! - `oversized-frames`: its client gets one very large text frame (64 MiB unless set);
//! - `foreign-events`: its client gets a whole run of events (`execution_start`, `executing`,
//!   `executed` with an unsafe output, `execution_success`, ...) for a prompt id nobody sent;
//! - `nul-errors`: the prompt fails with an `execution_error` whose message, type, node type and
//!   traceback carry NUL and whose message is very long ([`nul_error_data`]). Per prompt only,
//!   `nul_rejects_next` makes `POST /prompt` answer 400 with such text in `error` and `node_errors`
//!   ([`nul_reject_body`]).

use std::collections::VecDeque;

use actix_web::{web, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::state::{frame_text, Frame, Sim};

/// Size of an oversized frame unless `/sim/hostile` sets `oversized_bytes`.
const OVERSIZED_BYTES: usize = 64 << 20;

/// Names that replace what the simulator really wrote (unset fields are kept).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Names {
    pub filename: Option<String>,
    pub subfolder: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// The unsafe names `traversal` mode reports, in turn: parent segments, an absolute path, Windows
/// separators, a NUL, an over-long name, a folder type that is a path, a drive letter.
pub fn traversal_forms() -> Vec<Names> {
    let f = |filename: Option<&str>, subfolder: Option<&str>, kind: Option<&str>| Names {
        filename: filename.map(str::to_string),
        subfolder: subfolder.map(str::to_string),
        kind: kind.map(str::to_string),
    };
    let long = format!("{}.png", "a".repeat(2000));
    vec![
        f(Some("../../../../hostile.png"), None, None),
        f(Some("/etc/hostile.png"), Some(""), None),
        f(None, Some("a\\..\\..\\..\\..\\x"), None),
        f(Some("hostile\0.png"), None, None),
        f(Some(&long), None, None),
        f(None, None, Some("../x")),
        f(None, Some("C:\\Windows"), None),
    ]
}

/// What hostile mode does now: modes that apply to every prompt, and scripted one-offs.
#[derive(Debug, Default, Clone)]
pub struct Hostile {
    pub traversal: bool,
    pub garbage_frames: bool,
    pub oversized_frames: bool,
    pub foreign_events: bool,
    pub nul_errors: bool,
    /// Names for the next prompts' outputs, one entry per prompt.
    pub names_next: VecDeque<Names>,
    /// Names for the next upload answers, one entry per upload.
    pub uploads_next: VecDeque<Names>,
    pub garbage_next: u64,
    pub oversized_next: u64,
    pub foreign_next: u64,
    pub nul_errors_next: u64,
    /// How many of the next `POST /prompt` (cleaner prompts aside) answer 400 with NUL text.
    pub nul_rejects_next: u64,
    pub oversized_bytes: Option<usize>,
    /// Set once an output was reported under another name: from then on `/view` serves bytes for
    /// any name it is asked for, as a hostile server would ([`view_answer`]).
    pub renamed: bool,
    /// The next of [`traversal_forms`] in `traversal` mode.
    cursor: usize,
}

/// What hostile mode does to one prompt.
#[derive(Debug, Default)]
pub struct Plan {
    pub names: Option<Names>,
    pub garbage: bool,
    pub oversized: Option<usize>,
    pub foreign: bool,
    /// Fail the prompt's last node with [`nul_error_data`].
    pub nul_error: bool,
}

fn take(counter: &mut u64) -> bool {
    let some = *counter > 0;
    *counter = counter.saturating_sub(1);
    some
}

impl Hostile {
    /// Parses `--hostile`: a comma-separated list of modes.
    pub fn parse(list: &str) -> Result<Hostile, String> {
        let mut h = Hostile::default();
        h.set_modes(list)?;
        Ok(h)
    }

    fn set_modes(&mut self, list: &str) -> Result<(), String> {
        for mode in list.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            match mode {
                "traversal" => self.traversal = true,
                "garbage-frames" => self.garbage_frames = true,
                "oversized-frames" => self.oversized_frames = true,
                "foreign-events" => self.foreign_events = true,
                "nul-errors" => self.nul_errors = true,
                other => {
                    return Err(format!(
                        "unknown hostile mode {other:?} (traversal, garbage-frames, \
                         oversized-frames, foreign-events, nul-errors)"
                    ))
                }
            }
        }
        Ok(())
    }

    fn next_form(&mut self) -> Names {
        let forms = traversal_forms();
        let form = forms[self.cursor % forms.len()].clone();
        self.cursor += 1;
        form
    }

    /// What to do to the prompt that starts now.
    pub fn plan_prompt(&mut self) -> Plan {
        let names = match self.names_next.pop_front() {
            Some(n) => Some(n),
            None if self.traversal => Some(self.next_form()),
            None => None,
        };
        self.renamed |= names.is_some();
        let oversized = take(&mut self.oversized_next) || self.oversized_frames;
        Plan {
            names,
            garbage: take(&mut self.garbage_next) || self.garbage_frames,
            oversized: oversized.then(|| self.oversized_bytes.unwrap_or(OVERSIZED_BYTES)),
            foreign: take(&mut self.foreign_next) || self.foreign_events,
            nul_error: take(&mut self.nul_errors_next) || self.nul_errors,
        }
    }

    /// Whether the `POST /prompt` that arrives now is refused with [`nul_reject_body`].
    pub fn plan_reject(&mut self) -> bool {
        take(&mut self.nul_rejects_next)
    }

    /// Names to answer the upload that arrives now with.
    pub fn plan_upload(&mut self) -> Option<Names> {
        match self.uploads_next.pop_front() {
            Some(n) => Some(n),
            None if self.traversal => Some(self.next_form()),
            None => None,
        }
    }
}

/// Replaces the names of every file a node's UI output lists.
pub fn rename_outputs(ui: &Value, names: &Names) -> Value {
    let mut ui = ui.clone();
    if let Some(map) = ui.as_object_mut() {
        for list in map.values_mut().filter_map(Value::as_array_mut) {
            for item in list.iter_mut().filter(|i| i.get("filename").is_some()) {
                if let Some(f) = &names.filename {
                    item["filename"] = json!(f);
                }
                if let Some(s) = &names.subfolder {
                    item["subfolder"] = json!(s);
                }
                if let Some(k) = &names.kind {
                    item["type"] = json!(k);
                }
            }
        }
    }
    ui
}

/// What a hostile server answers to a `/view` it cannot (or must not) serve: bytes all the same,
/// so that a client that does not check the names it was given would write them wherever they say.
pub fn view_answer() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("image/png")
        .body(&b"hostile bytes"[..])
}

/// Replaces the names of an `/upload/image` answer.
pub fn rename_upload(answer: &mut Value, names: &Names) {
    if let Some(f) = &names.filename {
        answer["name"] = json!(f);
    }
    if let Some(s) = &names.subfolder {
        answer["subfolder"] = json!(s);
    }
    if let Some(k) = &names.kind {
        answer["type"] = json!(k);
    }
}

/// Frames that are not ComfyUI's protocol, each broken in another way.
pub fn garbage_frames() -> Vec<Frame> {
    let mut frames: Vec<Frame> = [
        "not json at all {",
        "",
        "[]",
        "null",
        "42",
        "\"a string\"",
        r#"{"type": 7}"#,
        r#"{"data": {"prompt_id": "x"}}"#,
        r#"{"type":"bogus_event","data":{"x":1}}"#,
        r#"{"type":"executing","data":"not an object"}"#,
        r#"{"type":"executed","data":{"node":5,"prompt_id":[1],"output":"x"}}"#,
        r#"{"type":"execution_start","data":{"prompt_id":7}}"#,
        r#"{"type":"status","data":{"status":{"exec_info":{"queue_remaining":-1}}}}"#,
        r#"{"type":"executing","data":{"node":"\ud800","prompt_id":"x"}}"#,
        r#"{"type":"execution_error","data":{"prompt_id":"x","exception_message":[]}}"#,
    ]
    .iter()
    .map(|t| Frame::Text(t.to_string()))
    .collect();
    frames.push(Frame::Text("[".repeat(100_000)));
    frames.push(Frame::Text(format!(
        "{{\"type\":\"executing\",\"data\":{}",
        "{".repeat(10_000)
    )));
    frames.push(Frame::Binary(Bytes::from_static(&[0xff, 0x00, 0x13])));
    frames.push(Frame::Binary(Bytes::from_static(&[
        0xff, 0xff, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef,
    ])));
    frames.push(Frame::Binary(Bytes::new()));
    frames
}

/// One valid-looking text frame of `bytes` bytes.
pub fn oversized_frame(bytes: usize) -> Frame {
    let head = r#"{"type":"progress","data":{"pad":""#;
    let tail = r#""}}"#;
    let pad = bytes.saturating_sub(head.len() + tail.len());
    let mut text = String::with_capacity(bytes);
    text.push_str(head);
    text.extend(std::iter::repeat_n('a', pad));
    text.push_str(tail);
    Frame::Text(text)
}

/// A whole run of events for a prompt id nobody sent, with an unsafe output name on the way.
pub fn foreign_events(node: &str) -> Vec<Frame> {
    let pid = uuid::Uuid::new_v4().to_string();
    let output = json!({"images": [{"filename": "../../../../foreign.png", "subfolder": "", "type": "output"}]});
    [
        ("execution_start", json!({"prompt_id": pid, "timestamp": 0})),
        (
            "execution_cached",
            json!({"nodes": [], "prompt_id": pid, "timestamp": 0}),
        ),
        (
            "executing",
            json!({"node": node, "display_node": node, "prompt_id": pid}),
        ),
        (
            "executed",
            json!({"node": node, "display_node": node, "output": output, "prompt_id": pid}),
        ),
        (
            "execution_success",
            json!({"prompt_id": pid, "timestamp": 0}),
        ),
        (
            "execution_error",
            json!({"prompt_id": pid, "node_id": node, "node_type": "SaveImage",
            "exception_type": "RuntimeError", "exception_message": "foreign"}),
        ),
        (
            "execution_interrupted",
            json!({"prompt_id": pid, "node_id": node}),
        ),
        ("executing", json!({"node": null, "prompt_id": pid})),
    ]
    .iter()
    .map(|(kind, data)| Frame::Text(frame_text(kind, data)))
    .collect()
}

/// Size of the message [`nul_error_data`] and [`nul_reject_body`] carry: far over what comfyd stores.
pub const NUL_MESSAGE_BYTES: usize = 256 << 10;

/// A message with NUL in it, [`NUL_MESSAGE_BYTES`] long.
fn nul_message() -> String {
    let mut m = String::from("hostile\u{0}message\u{0}: ");
    while m.len() < NUL_MESSAGE_BYTES {
        m.push_str("long\u{0}");
    }
    m
}

/// What `execution_error` carries in `nul-errors` mode (merged over the usual event data): NUL in
/// every text field, a message of [`NUL_MESSAGE_BYTES`], a traceback of many NUL lines.
pub fn nul_error_data() -> Value {
    json!({
        "exception_message": nul_message(),
        "exception_type": "Runtime\u{0}Error",
        "node_type": "Save\u{0}Image",
        "traceback": vec!["  File \"nodes.py\", line 1\u{0}\n"; 2000],
        "current_inputs": {"\u{0}": ["\u{0}"]},
    })
}

/// A 400 answer to `POST /prompt` with NUL in its message, details and `node_errors`.
pub fn nul_reject_body() -> Value {
    json!({
        "error": {"type": "prompt_outputs_failed_validation", "message": nul_message(),
                  "details": "bad\u{0}details", "extra_info": {}},
        "node_errors": {"1\u{0}": {"errors": [{"type": "value_not_in_list",
            "message": nul_message(), "details": "x\u{0}y", "extra_info": {"input_name": "\u{0}"}}],
            "dependent_outputs": ["1"], "class_type": "Save\u{0}Image"}},
    })
}

/// Sends the frames of `plan` (garbage, oversized, foreign) to the socket of `client`.
pub fn send_plan(sim: &Sim, client: Option<&str>, plan: &Plan, node: &str) {
    let g = sim.lock();
    let Some(socket) = client.and_then(|c| g.sockets.get(c)) else {
        return;
    };
    let mut frames = Vec::new();
    if plan.garbage {
        frames.extend(garbage_frames());
    }
    if plan.foreign {
        frames.extend(foreign_events(node));
    }
    if let Some(bytes) = plan.oversized {
        frames.push(oversized_frame(bytes));
    }
    for f in frames {
        socket.addr.do_send(f);
    }
}

/// `POST /sim/hostile`: `{"modes": "traversal,...", "names_next": [{filename?, subfolder?, type?}],
/// "uploads_next": [...], "garbage_next": n, "oversized_next": n, "foreign_next": n,
/// "nul_errors_next": n, "nul_rejects_next": n, "oversized_bytes": n, "off": true}`. Lists and counts add to what is scripted; `off` clears all.
pub async fn route(sim: web::Data<Sim>, body: web::Bytes) -> HttpResponse {
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Req {
        off: bool,
        modes: Option<String>,
        names_next: Vec<Names>,
        uploads_next: Vec<Names>,
        garbage_next: u64,
        oversized_next: u64,
        foreign_next: u64,
        nul_errors_next: u64,
        nul_rejects_next: u64,
        oversized_bytes: Option<usize>,
    }
    let req: Req = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return HttpResponse::BadRequest().json(json!({"error": e.to_string()})),
    };
    let mut g = sim.lock();
    let h = &mut g.hostile;
    if req.off {
        *h = Hostile::default();
    }
    if let Some(modes) = &req.modes {
        if let Err(e) = h.set_modes(modes) {
            return HttpResponse::BadRequest().json(json!({"error": e}));
        }
    }
    h.names_next.extend(req.names_next);
    h.uploads_next.extend(req.uploads_next);
    h.garbage_next += req.garbage_next;
    h.oversized_next += req.oversized_next;
    h.foreign_next += req.foreign_next;
    h.nul_errors_next += req.nul_errors_next;
    h.nul_rejects_next += req.nul_rejects_next;
    if req.oversized_bytes.is_some() {
        h.oversized_bytes = req.oversized_bytes;
    }
    HttpResponse::Ok().json(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_unknown_ones_are_refused() {
        let h = Hostile::parse("traversal, foreign-events").expect("valid");
        assert!(h.traversal && h.foreign_events && !h.garbage_frames && !h.oversized_frames);
        assert!(Hostile::parse("traversal,nope").is_err());
        assert!(Hostile::parse("").expect("empty").plan_upload().is_none());
    }

    #[test]
    fn scripted_names_come_first_then_traversal_forms_in_turn() {
        let mut h = Hostile::parse("traversal").expect("valid");
        h.names_next.push_back(Names {
            filename: Some("x".into()),
            ..Default::default()
        });
        assert_eq!(
            h.plan_prompt().names.and_then(|n| n.filename).as_deref(),
            Some("x")
        );
        let forms = traversal_forms();
        assert_eq!(h.plan_prompt().names.as_ref(), Some(&forms[0]));
        assert_eq!(h.plan_upload().as_ref(), Some(&forms[1]));
    }

    #[test]
    fn outputs_are_renamed_in_every_list() {
        let ui = json!({"images": [{"filename": "a.png", "subfolder": "s", "type": "output"}],
                        "text": ["not a file"]});
        let names = Names {
            filename: Some("../x".into()),
            kind: Some("temp".into()),
            ..Default::default()
        };
        let out = rename_outputs(&ui, &names);
        assert_eq!(out["images"][0]["filename"], "../x");
        assert_eq!(out["images"][0]["subfolder"], "s");
        assert_eq!(out["images"][0]["type"], "temp");
        assert_eq!(out["text"][0], "not a file");
    }

    #[test]
    fn nul_errors_are_planned_once_and_carry_nul_everywhere() {
        let mut h = Hostile {
            nul_errors_next: 1,
            nul_rejects_next: 1,
            ..Default::default()
        };
        assert!(h.plan_prompt().nul_error);
        assert!(!h.plan_prompt().nul_error);
        assert!(h.plan_reject() && !h.plan_reject());
        assert!(
            Hostile::parse("nul-errors")
                .expect("valid")
                .plan_prompt()
                .nul_error
        );
        let e = nul_error_data();
        let m = e["exception_message"].as_str().expect("message");
        assert!(m.contains('\0') && m.len() >= NUL_MESSAGE_BYTES);
        for f in ["exception_type", "node_type"] {
            assert!(e[f].as_str().expect("text").contains('\0'), "{f}");
        }
        let r = nul_reject_body();
        assert!(r["error"]["message"]
            .as_str()
            .expect("message")
            .contains('\0'));
        assert!(r["node_errors"]
            .as_object()
            .expect("node_errors")
            .keys()
            .all(|k| k.contains('\0')));
    }

    #[test]
    fn an_oversized_frame_has_the_size_asked_for() {
        match oversized_frame(1 << 20) {
            Frame::Text(t) => {
                assert_eq!(t.len(), 1 << 20);
                assert!(serde_json::from_str::<Value>(&t).is_ok());
            }
            Frame::Binary(_) => panic!("text expected"),
        }
    }
}

//! ComfyUI's wire format, as recorded from a real server (src/tests/fixtures/comfyui-protocol).
//!
//! Text frames are `{"type": ..., "data": {...}}`. Only the frames comfyd acts on are decoded; the rest
//! (progress_state, which grows with every node, progress, feature_flags, ...) are skipped unparsed.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// A websocket event comfyd acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    /// Broadcast to every socket: prompts running + pending on the server.
    Status {
        queue_remaining: u32,
    },
    ExecutionStart {
        prompt_id: String,
    },
    /// `node: None` with a prompt id marks the end of that prompt, whatever its outcome. The frame
    /// replayed after a reconnect has a node and no prompt id.
    Executing {
        node: Option<String>,
        prompt_id: Option<String>,
    },
    /// An output node's UI output (may repeat the old output when it was served from cache).
    Executed {
        node: String,
        prompt_id: String,
        output: Value,
    },
    ExecutionSuccess {
        prompt_id: String,
    },
    ExecutionError {
        prompt_id: String,
        error: ExecutionError,
    },
    ExecutionInterrupted {
        prompt_id: String,
        node_id: Option<String>,
    },
    /// Any other frame type.
    Other,
}

/// What ComfyUI said about a failed node.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct ExecutionError {
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub node_type: Option<String>,
    #[serde(default)]
    pub exception_type: String,
    #[serde(default)]
    pub exception_message: String,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    /// Left unparsed until the type says what to read from it: most frames are skipped.
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// The fields comfyd reads from a frame's `data`. Strings are borrowed from the frame when they need
/// no unescaping; anything else in `data` is skipped without being built.
#[derive(Deserialize, Default)]
struct Data<'a> {
    #[serde(borrow, default)]
    prompt_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    node: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    node_id: Option<Cow<'a, str>>,
    #[serde(default)]
    output: Option<Value>,
    #[serde(default)]
    status: Option<StatusData>,
}

#[derive(Deserialize, Default)]
struct StatusData {
    #[serde(default)]
    exec_info: ExecInfo,
}

#[derive(Deserialize, Default)]
struct ExecInfo {
    #[serde(default)]
    queue_remaining: u32,
}

/// The frame types comfyd acts on; the others are not decoded further than their type.
const ACTED_ON: &[&str] = &[
    "status",
    "execution_start",
    "executing",
    "executed",
    "execution_success",
    "execution_error",
    "execution_interrupted",
];

/// Decodes one text frame. Malformed frames are an error (the caller logs and skips them).
pub fn parse_frame(text: &str) -> Result<WsEvent, serde_json::Error> {
    // progress_state frames carry the whole node map of the prompt and come several times per node:
    // skip them without a full parse. The type comes first in ComfyUI's frames, whatever the spacing.
    if text
        .get(..40)
        .is_some_and(|head| head.contains("\"progress_state\""))
    {
        return Ok(WsEvent::Other);
    }
    let frame: Frame = serde_json::from_str(text)?;
    if !ACTED_ON.contains(&frame.kind.as_ref()) {
        return Ok(WsEvent::Other);
    }
    let raw = frame.data.map_or("null", RawValue::get);
    let d: Data = serde_json::from_str::<Option<Data>>(raw)?.unwrap_or_default();
    let prompt_id = d.prompt_id.map(Cow::into_owned);
    Ok(match (frame.kind.as_ref(), prompt_id) {
        ("status", _) => WsEvent::Status {
            queue_remaining: d.status.unwrap_or_default().exec_info.queue_remaining,
        },
        ("execution_start", Some(prompt_id)) => WsEvent::ExecutionStart { prompt_id },
        ("executing", prompt_id) => WsEvent::Executing {
            node: d.node.map(Cow::into_owned),
            prompt_id,
        },
        ("executed", Some(prompt_id)) => match d.node {
            Some(node) => WsEvent::Executed {
                node: node.into_owned(),
                prompt_id,
                output: d.output.unwrap_or(Value::Null),
            },
            None => WsEvent::Other,
        },
        ("execution_success", Some(prompt_id)) => WsEvent::ExecutionSuccess { prompt_id },
        ("execution_error", Some(prompt_id)) => WsEvent::ExecutionError {
            prompt_id,
            error: serde_json::from_str(raw)?,
        },
        ("execution_interrupted", Some(prompt_id)) => WsEvent::ExecutionInterrupted {
            prompt_id,
            node_id: d.node_id.map(Cow::into_owned),
        },
        _ => WsEvent::Other,
    })
}

/// A file ComfyUI wrote, as `executed` and `/history` report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct FileRef {
    pub node_id: String,
    /// The list it was reported in: images, gifs, audio, video, ...
    pub kind: String,
    pub filename: String,
    pub subfolder: String,
    /// output, temp or input.
    pub folder_type: String,
}

impl FileRef {
    /// The path ComfyUI knows it by, relative to its folder type's root.
    pub fn path(&self) -> String {
        if self.subfolder.is_empty() {
            self.filename.clone()
        } else {
            format!("{}/{}", self.subfolder, self.filename)
        }
    }
}

/// Every file in one node's UI output. ComfyUI lists files under several keys (`images` for images and
/// animated webp/video, `gifs` for video nodes, `audio`, ...); any list of `{filename, subfolder, type}`
/// objects counts, whatever its key.
pub fn files_in_output(node_id: &str, output: &Value) -> Vec<FileRef> {
    let mut files = Vec::new();
    let Some(map) = output.as_object() else {
        return files;
    };
    for (kind, list) in map {
        let Some(items) = list.as_array() else {
            continue;
        };
        for item in items {
            let Some(filename) = item.get("filename").and_then(Value::as_str) else {
                continue;
            };
            files.push(FileRef {
                node_id: node_id.to_string(),
                kind: kind.clone(),
                filename: filename.to_string(),
                subfolder: item
                    .get("subfolder")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                folder_type: item
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("output")
                    .to_string(),
            });
        }
    }
    files
}

/// What `/history/{id}` says about a finished prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryOutcome {
    Success(Vec<FileRef>),
    Error(ExecutionError),
    Interrupted,
}

/// Reads one history entry (`{"prompt": [...], "outputs": {...}, "status": {...}}`).
pub fn history_outcome(entry: &Value) -> HistoryOutcome {
    let messages = entry.pointer("/status/messages").and_then(Value::as_array);
    for m in messages.into_iter().flatten() {
        match m.get(0).and_then(Value::as_str) {
            Some("execution_error") => {
                let err = m
                    .get(1)
                    .cloned()
                    .and_then(|d| serde_json::from_value(d).ok())
                    .unwrap_or(ExecutionError {
                        node_id: None,
                        node_type: None,
                        exception_type: "unknown".into(),
                        exception_message: "execution error (no details in history)".into(),
                    });
                return HistoryOutcome::Error(err);
            }
            Some("execution_interrupted") => return HistoryOutcome::Interrupted,
            _ => {}
        }
    }
    if entry.pointer("/status/status_str").and_then(Value::as_str) == Some("error") {
        return HistoryOutcome::Error(ExecutionError {
            node_id: None,
            node_type: None,
            exception_type: "unknown".into(),
            exception_message: "ComfyUI reported an error".into(),
        });
    }
    let mut files = Vec::new();
    if let Some(outputs) = entry.get("outputs").and_then(Value::as_object) {
        for (node, out) in outputs {
            files.extend(files_in_output(node, out));
        }
    }
    HistoryOutcome::Success(files)
}

/// Prompt ids in `GET /queue` (`{"queue_running": [[number, id, ...]], "queue_pending": [...]}`).
pub fn queued_prompt_ids(queue: &Value) -> Vec<String> {
    ["queue_running", "queue_pending"]
        .iter()
        .filter_map(|k| queue.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(|item| item.get(1).and_then(Value::as_str).map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every websocket frame of a recorded scenario, in order.
    fn frames(name: &str) -> Vec<Value> {
        let path = format!(
            "{}/src/tests/fixtures/comfyui-protocol/transcripts/{name}.jsonl",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(path)
            .expect("fixture")
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
            .filter(|l| l["dir"] == "ws-in" && l.get("msg").is_some())
            .map(|l| l["msg"].clone())
            .collect()
    }

    #[test]
    fn decodes_a_recorded_success() {
        let events: Vec<WsEvent> = frames("a_text2img")
            .iter()
            .map(|m| parse_frame(&m.to_string()).expect("frame"))
            .collect();
        assert!(matches!(events[0], WsEvent::Status { queue_remaining: 0 }));
        assert!(events
            .iter()
            .any(|e| matches!(e, WsEvent::ExecutionStart { .. })));
        let executed = events
            .iter()
            .find_map(|e| match e {
                WsEvent::Executed { node, output, .. } => Some(files_in_output(node, output)),
                _ => None,
            })
            .expect("executed");
        assert_eq!(executed[0].filename, "text2img_00001_.png");
        assert_eq!(executed[0].folder_type, "output");
        // The success is followed by a status and then `executing null` with the prompt id.
        let n = events.len();
        let tail: Vec<_> = events.iter().rev().take(3).collect();
        assert!(
            matches!(
                tail[0],
                WsEvent::Executing {
                    node: None,
                    prompt_id: Some(_)
                }
            ),
            "{tail:?}"
        );
        assert!(matches!(tail[1], WsEvent::Status { .. }));
        assert!(matches!(tail[2], WsEvent::ExecutionSuccess { .. }));
        assert!(n > 5);
    }

    #[test]
    fn decodes_a_recorded_runtime_error() {
        let err = frames("d_runtime_error")
            .iter()
            .find_map(|m| match parse_frame(&m.to_string()).expect("frame") {
                WsEvent::ExecutionError { error, .. } => Some(error),
                _ => None,
            })
            .expect("an execution_error");
        assert_eq!(err.exception_type, "IndexError");
        assert_eq!(err.node_type.as_deref(), Some("ImageToMask"));
    }

    #[test]
    fn progress_state_is_skipped_whatever_the_spacing() {
        for text in [
            r#"{"type": "progress_state", "data": {"prompt_id": "p", "nodes": {}}}"#,
            r#"{"type":"progress_state","data":{"prompt_id":"p","nodes":{}}}"#,
        ] {
            assert_eq!(parse_frame(text).expect("frame"), WsEvent::Other);
        }
        // A frame that merely mentions it later is still parsed.
        let status = r#"{"type":"status","data":{"status":{"exec_info":{"queue_remaining":2}},"note":"progress_state"}}"#;
        assert_eq!(
            parse_frame(status).expect("frame"),
            WsEvent::Status { queue_remaining: 2 }
        );
    }

    #[test]
    fn only_the_fields_acted_on_are_read() {
        // Types comfyd does not act on are not decoded past their type, whatever their data holds.
        for text in [
            r#"{"type":"progress","data":{"value":3,"max":20,"prompt_id":"p","node":"3"}}"#,
            r#"{"type":"execution_cached","data":{"nodes":["1","2"],"prompt_id":"p"}}"#,
            r#"{"type":"feature_flags","data":null}"#,
        ] {
            assert_eq!(parse_frame(text).expect("frame"), WsEvent::Other);
        }
        // Escaped strings are unescaped; fields of other types are skipped.
        let text =
            r#"{"type":"executing","data":{"node":"a\"b","display_node":7,"prompt_id":"p\u00e9"}}"#;
        assert_eq!(
            parse_frame(text).expect("frame"),
            WsEvent::Executing {
                node: Some("a\"b".into()),
                prompt_id: Some("pé".into()),
            }
        );
        // No data: the end-of-prompt shape for `executing`, an empty queue for `status`.
        assert_eq!(
            parse_frame(r#"{"type":"status"}"#).expect("frame"),
            WsEvent::Status { queue_remaining: 0 }
        );
        // A field comfyd reads, of the wrong type, makes the frame malformed.
        assert!(parse_frame(r#"{"type":"execution_start","data":{"prompt_id":7}}"#).is_err());
    }

    #[test]
    fn reconnect_replay_has_no_prompt_id() {
        let replay = frames("m_reconnect_mid_run")
            .iter()
            .map(|m| parse_frame(&m.to_string()).expect("frame"))
            .find(|e| {
                matches!(
                    e,
                    WsEvent::Executing {
                        node: Some(_),
                        prompt_id: None
                    }
                )
            });
        assert!(replay.is_some());
    }

    #[test]
    fn batch_and_other_output_kinds_are_collected() {
        let out = json!({
            "images": [{"filename": "a.png", "subfolder": "x", "type": "output"},
                       {"filename": "b.png", "subfolder": "x", "type": "output"}],
            "gifs": [{"filename": "v.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4"}],
            "audio": [{"filename": "s.flac", "subfolder": "", "type": "temp"}],
            "animated": [true],
            "text": ["not a file"]
        });
        let files = files_in_output("9", &out);
        assert_eq!(files.len(), 4);
        assert!(files
            .iter()
            .any(|f| f.kind == "gifs" && f.filename == "v.mp4"));
        assert!(files
            .iter()
            .any(|f| f.kind == "audio" && f.folder_type == "temp"));
        let a = files.iter().find(|f| f.filename == "a.png").expect("a.png");
        assert_eq!(a.path(), "x/a.png");
    }

    #[test]
    fn history_entries_give_outcomes() {
        let ok = json!({"outputs": {"2": {"images": [{"filename": "f.png", "subfolder": "", "type": "output"}]}},
                        "status": {"status_str": "success", "completed": true, "messages": []}});
        assert!(matches!(history_outcome(&ok), HistoryOutcome::Success(f) if f.len() == 1));
        let int = json!({"outputs": {}, "status": {"status_str": "error", "completed": false,
                         "messages": [["execution_start", {}], ["execution_interrupted", {"prompt_id": "p"}]]}});
        assert_eq!(history_outcome(&int), HistoryOutcome::Interrupted);
        let err = json!({"outputs": {}, "status": {"status_str": "error", "completed": false,
                         "messages": [["execution_error", {"prompt_id": "p", "node_id": "2", "node_type": "X",
                         "exception_type": "ValueError", "exception_message": "bad"}]]}});
        assert!(
            matches!(history_outcome(&err), HistoryOutcome::Error(e) if e.exception_type == "ValueError")
        );
    }

    #[test]
    fn queue_ids_come_from_running_and_pending() {
        let q = json!({"queue_running": [[1, "a", {}, {}, []]], "queue_pending": [[2, "b", {}, {}, []], [-3, "c"]]});
        assert_eq!(queued_prompt_ids(&q), vec!["a", "b", "c"]);
    }
}

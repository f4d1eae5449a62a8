//! Transcript-conformance tests: each scenario recorded from a real ComfyUI is replayed against
//! an in-process simulator, and what comes back is compared with the recording.
//!
//! The replayer walks the transcript line by line: it opens and closes sockets where the
//! recording did, sends the same HTTP requests (client ids kept, prompt ids and temp file names
//! mapped to ours), and before each action waits until every socket has received as many frames
//! as the recorded one had at that point. Then it compares:
//! - per socket, the sequence of frame signatures (type, the set of `data` fields, and the parts
//!   that are deterministic: node ids, cached lists, progress states, file names, binary
//!   headers), with `status` frames compared as their own subsequence because the real server
//!   interleaves them with a running prompt's frames depending on timing;
//! - per HTTP request, the status, the content type and the JSON shape (keys, array lengths,
//!   scalar types, and exact values for fields like `type`, `filename`, `details`); 400 bodies of
//!   /prompt are compared exactly.
//!
//! Random ids, timestamps and `number` values are not compared.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use awc::ws;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::state::{Config, Dirs, Sim};

// ---------------------------------------------------------------------------------------------
// Transcript loading

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tests/fixtures/comfyui-protocol")
}

/// The lines of a transcript.
fn load(name: &str) -> Vec<Value> {
    let path = fixtures().join("transcripts").join(format!("{name}.jsonl"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("jsonl line"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Signatures

fn keys(v: &Value) -> String {
    let mut k: Vec<&String> = v
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    k.sort();
    k.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

fn mask_temp(s: &str) -> String {
    match s.find("ComfyUI_temp_") {
        Some(i) if s.len() >= i + 18 => format!("{}ComfyUI_temp_xxxxx{}", &s[..i], &s[i + 18..]),
        _ => s.to_string(),
    }
}

/// What is compared of one text frame.
fn text_sig(m: &Value) -> String {
    let t = m["type"].as_str().unwrap_or("?");
    let d = &m["data"];
    let detail = match t {
        "status" => format!("{}", d["status"]["exec_info"]["queue_remaining"]),
        "executing" => format!("{}", d["node"]),
        "execution_cached" => format!("{}", d["nodes"]),
        "progress_state" => {
            let mut nodes: Vec<String> = d["nodes"]
                .as_object()
                .map(|n| {
                    n.iter()
                        .map(|(id, e)| {
                            format!(
                                "{id}:{}:{}/{}",
                                e["state"].as_str().unwrap_or("?"),
                                e["value"].as_f64().unwrap_or(-1.0),
                                e["max"].as_f64().unwrap_or(-1.0)
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            nodes.sort();
            nodes.join(" ")
        }
        "executed" => mask_temp(&d["output"].to_string()),
        "progress" => format!("{}/{}", d["value"], d["max"]),
        "execution_error" | "execution_interrupted" => {
            format!(
                "{} {} {} {}",
                d["node_id"], d["node_type"], d["executed"], d["exception_type"]
            )
        }
        "feature_flags" => d.to_string(),
        _ => String::new(),
    };
    format!("{t}[{}] {detail}", keys(d))
}

/// A received frame.
#[derive(Debug, Clone)]
enum Msg {
    Text(Value),
    Binary(Bytes),
}

fn msg_sig(m: &Msg) -> String {
    match m {
        Msg::Text(v) => text_sig(v),
        Msg::Binary(b) if b.len() >= 8 => {
            let h0 = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            let h1 = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            if h0 == 4 {
                let meta: Value =
                    serde_json::from_slice(&b[8..8 + h1 as usize]).unwrap_or(Value::Null);
                let png = &b[8 + h1 as usize..];
                format!(
                    "binary 4 meta[{}] png={}",
                    keys(&meta),
                    png.starts_with(b"\x89PNG")
                )
            } else {
                format!("binary {h0} {h1} png={}", b[8..].starts_with(b"\x89PNG"))
            }
        }
        Msg::Binary(_) => "binary short".into(),
    }
}

/// The signature of a recorded `ws-in` line (None for the "closed" event line).
fn line_sig(line: &Value) -> Option<String> {
    if let Some(m) = line.get("msg") {
        return Some(text_sig(m));
    }
    if line["binary"].as_bool() == Some(true) {
        let h = &line["header_u32_be"];
        return Some(if h[0] == 4 {
            format!(
                "binary 4 meta[{}] png={}",
                keys(&line["decoded_metadata"]),
                line["image_first_8_bytes_hex"] == "89504e470d0a1a0a"
            )
        } else {
            format!(
                "binary {} {} png={}",
                h[0],
                h[1],
                line["bytes_8_16_hex"] == "89504e470d0a1a0a"
            )
        });
    }
    None
}

// ---------------------------------------------------------------------------------------------
// JSON shape

/// Keys whose string values must match exactly.
const EXACT: [&str; 12] = [
    "type",
    "status_str",
    "filename",
    "subfolder",
    "name",
    "message",
    "details",
    "class_type",
    "node_type",
    "exception_type",
    "input_name",
    "received_type",
];

fn id_like(k: &str) -> bool {
    (k.len() == 36 && k.chars().filter(|c| *c == '-').count() == 4)
        || (k.len() == 32 && k.chars().all(|c| c.is_ascii_hexdigit()))
}

fn shape(v: &Value, key: &str) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    (
                        if id_like(k) {
                            "<id>".to_string()
                        } else {
                            k.clone()
                        },
                        shape(v, k),
                    )
                })
                .collect(),
        ),
        Value::Array(_) if key == "argv" || key == "traceback" || key == "current_inputs" => {
            json!("<list>")
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| shape(x, key)).collect()),
        Value::String(s) if EXACT.contains(&key) => json!(mask_temp(s)),
        Value::String(_) => json!("<str>"),
        Value::Number(_) => json!("<num>"),
        other => other.clone(),
    }
}

/// Collects (recorded, ours) pairs of temp file names so later requests can be mapped.
fn learn_names(rec: &Value, ours: &Value, map: &mut HashMap<String, String>) {
    match (rec, ours) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let other = b.get(k).or_else(|| {
                    if id_like(k) && a.len() == 1 && b.len() == 1 {
                        b.values().next()
                    } else {
                        None
                    }
                });
                if let Some(o) = other {
                    learn_names(v, o, map);
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            a.iter().zip(b).for_each(|(x, y)| learn_names(x, y, map))
        }
        (Value::String(a), Value::String(b)) if a.starts_with("ComfyUI_temp_") => {
            map.insert(a.clone(), b.clone());
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Test server and clients

struct TestSim {
    base: String,
    /// The simulator's state, for assertions the HTTP API cannot make.
    sim: Arc<Sim>,
    dir: tempfile::TempDir,
}

fn start_sim(exec_ms: u64) -> TestSim {
    let dir = tempfile::tempdir().expect("tempdir");
    start_sim_in(dir, exec_ms)
}

fn start_sim_in(dir: tempfile::TempDir, exec_ms: u64) -> TestSim {
    let dirs = Dirs::create(dir.path().to_path_buf()).expect("dirs");
    let sim = Arc::new(Sim::new(
        dirs,
        Config {
            exec_ms,
            paused: false,
        },
        vec!["comfy-sim".into()],
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = crate::server::start(sim.clone(), listener).expect("server");
    actix_rt::spawn(server);
    TestSim {
        base: format!("http://127.0.0.1:{port}"),
        sim,
        dir,
    }
}

type WsSink =
    futures_util::stream::SplitSink<actix_codec::Framed<awc::BoxedSocket, ws::Codec>, ws::Message>;

struct WsClient {
    sink: WsSink,
    frames: Arc<Mutex<Vec<Msg>>>,
}

async fn ws_connect(base: &str, path: &str) -> WsClient {
    let url = format!("{}{}", base.replace("http://", "ws://"), path);
    let (_resp, framed) = awc::Client::new()
        .ws(url)
        .connect()
        .await
        .expect("ws connect");
    let (sink, mut stream) = framed.split();
    let frames = Arc::new(Mutex::new(Vec::new()));
    let sink_frames = frames.clone();
    actix_rt::spawn(async move {
        while let Some(Ok(f)) = stream.next().await {
            let m = match f {
                ws::Frame::Text(t) => Msg::Text(serde_json::from_slice(&t).expect("json frame")),
                ws::Frame::Binary(b) => Msg::Binary(b),
                ws::Frame::Close(_) => break,
                _ => continue,
            };
            sink_frames.lock().expect("frames").push(m);
        }
    });
    WsClient { sink, frames }
}

impl WsClient {
    fn count(&self) -> usize {
        self.frames.lock().expect("frames").len()
    }

    fn all(&self) -> Vec<Msg> {
        self.frames.lock().expect("frames").clone()
    }
}

/// Waits until `cond` holds, polling; false on timeout.
async fn wait_for(mut cond: impl FnMut() -> bool, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

/// A small PNG; `variant` changes the bytes, not the size.
fn png_bytes(variant: u32) -> Vec<u8> {
    crate::image::Image::solid(8, 8, 1, 0x102030 + variant)
        .encode_png(0, &[])
        .expect("png")
}

fn multipart(fields: &serde_json::Map<String, Value>, variant: u32) -> (String, Vec<u8>) {
    let boundary = "comfysimtestboundary";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        if let Some(f) = v.as_object() {
            let name = f["filename"].as_str().unwrap_or("x.png");
            body.extend_from_slice(format!(
                "Content-Disposition: form-data; name=\"{k}\"; filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
            body.extend_from_slice(&png_bytes(variant));
        } else {
            body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{k}\"\r\n\r\n{}",
                    v.as_str().unwrap_or("")
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

// ---------------------------------------------------------------------------------------------
// The replayer

/// Per-scenario knobs.
#[derive(Default)]
struct Opts {
    /// Request indexes (0-based, counting http-req lines) whose bodies are not compared, with why.
    skip_body: Vec<usize>,
    /// Output files to create first, standing in for what earlier scenarios of the recording
    /// session left behind (the SaveImage counter continues after them).
    seed_outputs: Vec<&'static str>,
}

/// Replays `name` against a fresh simulator and returns it (for extra assertions).
async fn replay(name: &str, exec_ms: u64, opts: Opts) -> TestSim {
    let lines = load(name);
    let ts = start_sim(exec_ms);
    for f in &opts.seed_outputs {
        std::fs::write(ts.dir.path().join("output").join(f), png_bytes(0)).expect("seed output");
    }
    let http = awc::Client::builder()
        .timeout(Duration::from_secs(20))
        .finish();
    let mut sockets: HashMap<String, WsClient> = HashMap::new();
    let mut expected_counts: HashMap<String, usize> = HashMap::new();
    let mut expected_sigs: HashMap<String, Vec<String>> = HashMap::new();
    let mut closed_counts: HashMap<String, Vec<Msg>> = HashMap::new();
    let mut ids: Vec<(String, String)> = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut last_note = String::new();
    let mut req_index = 0usize;
    let mut pending_resp: Option<(usize, u16, Option<String>, Value)> = None;
    let mut failures: Vec<String> = Vec::new();

    let map_ids = |s: &str, ids: &[(String, String)], names: &HashMap<String, String>| -> String {
        let mut out = s.to_string();
        for (rec, ours) in ids {
            out = out.replace(rec, ours);
        }
        for (rec, ours) in names {
            out = out.replace(rec, ours);
        }
        out
    };

    for line in &lines {
        let dir = line["dir"].as_str().unwrap_or("");
        if line.get("server").is_some() && dir != "note" {
            continue;
        }
        // Sync: every open socket has what the recorded one had before this action.
        if dir == "http-req" || (dir == "note" && line["note"] != "ws connected") {
            for (ws, want) in &expected_counts {
                if let Some(c) = sockets.get(ws) {
                    let ok = wait_for(|| c.count() >= *want, Duration::from_secs(10)).await;
                    assert!(ok, "{name}: socket {ws} got {} frames, recording had {want} by line {line}: {:#?}",
                        c.count(), c.all().iter().map(msg_sig).collect::<Vec<_>>());
                }
            }
        }
        match dir {
            "note" => {
                let note = line["note"].as_str().unwrap_or("");
                match note {
                    "ws connect" => {
                        let ws = line["ws"].as_str().unwrap_or("?").to_string();
                        let c = ws_connect(&ts.base, line["url"].as_str().unwrap_or("/ws")).await;
                        sockets.insert(ws.clone(), c);
                        expected_counts.insert(ws, 0);
                    }
                    "ws client-side close requested" => {
                        let ws = line["ws"].as_str().unwrap_or("?");
                        if let Some(mut c) = sockets.remove(ws) {
                            let _ = c.sink.send(ws::Message::Close(None)).await;
                            actix_rt::time::sleep(Duration::from_millis(30)).await;
                            closed_counts.insert(ws.to_string(), c.all());
                        }
                    }
                    n if n.starts_with("deleted input/") => {
                        let file = n
                            .trim_start_matches("deleted input/")
                            .split(' ')
                            .next()
                            .unwrap_or("");
                        std::fs::remove_file(ts.dir.path().join("input").join(file))
                            .expect("delete input");
                    }
                    _ => {}
                }
                last_note = note.to_string();
            }
            "ws-out" => {
                let ws = line["ws"].as_str().unwrap_or("?");
                let text = line["msg"].to_string();
                let c = sockets.get_mut(ws).expect("socket for ws-out");
                c.sink
                    .send(ws::Message::Text(text.into()))
                    .await
                    .expect("ws send");
            }
            "ws-in" => {
                let ws = line["ws"].as_str().unwrap_or("?").to_string();
                if let Some(sig) = line_sig(line) {
                    *expected_counts.entry(ws.clone()).or_default() += 1;
                    expected_sigs.entry(ws).or_default().push(sig);
                }
            }
            "http-req" => {
                let method = line["method"].as_str().unwrap_or("GET");
                let path = map_ids(line["path"].as_str().unwrap_or("/"), &ids, &names);
                let url = format!("{}{}", ts.base, path);
                let req = if method == "POST" {
                    http.post(&url)
                } else {
                    http.get(&url)
                };
                let resp = if let Some(body) = line.get("body") {
                    let text = map_ids(&body.to_string(), &ids, &names);
                    req.insert_header(("Content-Type", "application/json"))
                        .send_body(text)
                        .await
                } else if let Some(raw) = line.get("raw_body") {
                    req.insert_header(("Content-Type", "application/json"))
                        .send_body(raw.as_str().unwrap_or("").to_string())
                        .await
                } else if let Some(Value::Object(fields)) = line.get("multipart") {
                    let variant = u32::from(last_note.contains("different bytes"));
                    let (ct, body) = multipart(fields, variant);
                    req.insert_header(("Content-Type", ct))
                        .send_body(body)
                        .await
                } else {
                    req.send().await
                };
                let mut resp = resp.unwrap_or_else(|e| panic!("{name}: {method} {path}: {e}"));
                let status = resp.status().as_u16();
                let ct = resp
                    .headers()
                    .get("content-type")
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string);
                let body = resp.body().limit(200_000_000).await.expect("body");
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                pending_resp = Some((req_index, status, ct, json));
                req_index += 1;
            }
            "http-resp" => {
                let Some((idx, status, ct, ours)) = pending_resp.take() else {
                    continue;
                };
                let what = format!("{name}: request #{idx} {} {}", line["method"], line["path"]);
                if line["status"].as_u64() != Some(u64::from(status)) {
                    failures.push(format!(
                        "{what}: status {status}, recorded {}",
                        line["status"]
                    ));
                    continue;
                }
                let rec_ct = line["content_type"]
                    .as_str()
                    .map(|s| s.split(';').next().unwrap_or(s).to_string());
                let our_ct = ct.map(|s| s.split(';').next().unwrap_or(&s).to_string());
                if rec_ct != our_ct {
                    failures.push(format!(
                        "{what}: content type {our_ct:?}, recorded {rec_ct:?}"
                    ));
                }
                let Some(rec) = line.get("body") else {
                    continue;
                };
                if rec.get("_truncated").is_some() || opts.skip_body.contains(&idx) {
                    continue;
                }
                if line["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("/prompt"))
                    && line["method"] == "POST"
                {
                    if let (Some(r), Some(o)) =
                        (rec["prompt_id"].as_str(), ours["prompt_id"].as_str())
                    {
                        ids.push((r.to_string(), o.to_string()));
                    }
                    if status == 400 {
                        if ours != *rec {
                            failures.push(format!("{what}: 400 body\n ours {ours}\n rec  {rec}"));
                        }
                        continue;
                    }
                }
                learn_names(rec, &ours, &mut names);
                if shape(&ours, "") != shape(rec, "") {
                    failures.push(format!(
                        "{what}: body shape\n ours {}\n rec  {}",
                        shape(&ours, ""),
                        shape(rec, "")
                    ));
                }
            }
            _ => {}
        }
    }
    // Let late frames arrive, then compare every socket's frames with the recording.
    for (ws, want) in &expected_counts {
        if let Some(c) = sockets.get(ws) {
            wait_for(|| c.count() >= *want, Duration::from_secs(10)).await;
        }
    }
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    for (ws, want) in &expected_sigs {
        let got = match sockets.get(ws) {
            Some(c) => c.all(),
            None => closed_counts.get(ws).cloned().unwrap_or_default(),
        };
        let got: Vec<String> = got.iter().map(msg_sig).collect();
        let split = |v: &[String]| -> (Vec<String>, Vec<String>) {
            v.iter().cloned().partition(|s| s.starts_with("status["))
        };
        let (gs, go) = split(&got);
        let (ws_, wo) = split(want);
        if gs != ws_ {
            failures.push(format!(
                "{name}: socket {ws} status frames\n ours {gs:?}\n rec  {ws_:?}"
            ));
        }
        if go != wo {
            failures.push(format!(
                "{name}: socket {ws} frames\n ours {go:#?}\n rec  {wo:#?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    ts
}

// ---------------------------------------------------------------------------------------------
// Scenarios

#[actix_web::test]
async fn http_basics_matches_recording() {
    replay("http_basics", 20, Opts::default()).await;
}

#[actix_web::test]
async fn a_text2img_matches_recording() {
    let ts = replay("a_text2img", 20, Opts::default()).await;
    let png = std::fs::read(ts.dir.path().join("output/text2img_00001_.png")).expect("output file");
    let img = crate::image::decode_png(&png).expect("png");
    assert_eq!((img.width, img.height), (512, 512));
}

#[actix_web::test]
async fn b_img2img_upload_matches_recording() {
    let ts = replay("b_img2img_upload", 20, Opts::default()).await;
    assert!(ts.dir.path().join("input/sub/proto_in.png").is_file());
    assert!(ts.dir.path().join("input/proto_in (1).png").is_file());
}

#[actix_web::test]
async fn b2_upload_overwrite_matches_recording() {
    replay("b2_upload_overwrite", 20, Opts::default()).await;
}

#[actix_web::test]
async fn c_slow_single_matches_recording() {
    replay("c_slow_single", 250, Opts::default()).await;
}

#[actix_web::test]
async fn d_runtime_error_matches_recording() {
    replay("d_runtime_error", 20, Opts::default()).await;
}

#[actix_web::test]
async fn d2_deleted_input_fails_at_run_time_like_recording() {
    let seed = vec!["slow_00001_.png"];
    replay(
        "d2_runtime_error_deleted_input",
        250,
        Opts {
            seed_outputs: seed,
            ..Opts::default()
        },
    )
    .await;
}

#[actix_web::test]
async fn e_validation_errors_match_recording() {
    replay("e_validation_errors", 20, Opts::default()).await;
}

#[actix_web::test]
async fn f_batch3_matches_recording() {
    let ts = replay("f_batch3", 20, Opts::default()).await;
    for i in 1..=3 {
        let png = std::fs::read(ts.dir.path().join(format!("output/batch/b3_0000{i}_.png")))
            .expect("batch file");
        let img = crate::image::decode_png(&png).expect("png");
        assert_eq!((img.width, img.height), (256, 192));
    }
}

#[actix_web::test]
async fn g_preview_temp_matches_recording() {
    replay("g_preview_temp", 20, Opts::default()).await;
}

#[actix_web::test]
async fn h_cached_resubmit_matches_recording() {
    let ts = replay("h_cached_resubmit", 20, Opts::default()).await;
    // The cached resubmission wrote nothing new.
    let n = std::fs::read_dir(ts.dir.path().join("output"))
        .expect("output")
        .count();
    assert_eq!(n, 2);
}

#[actix_web::test]
async fn i_queue_drain_status_counts_match_recording() {
    // Request #7 is GET /queue between two prompts: the real server had a gap there, ours
    // takes the next prompt at once, so the running list may hold one item.
    replay(
        "i_queue_drain_5_slow",
        300,
        Opts {
            skip_body: vec![7],
            ..Opts::default()
        },
    )
    .await;
}

#[actix_web::test]
async fn j_interrupt_matches_recording() {
    let seed = vec!["slow_00001_.png", "slow_00002_.png"];
    replay(
        "j_interrupt",
        500,
        Opts {
            seed_outputs: seed,
            ..Opts::default()
        },
    )
    .await;
}

#[actix_web::test]
async fn k_queue_delete_matches_recording() {
    replay("k_queue_delete", 300, Opts::default()).await;
}

#[actix_web::test]
async fn l_two_clients_matches_recording() {
    replay("l_two_clients", 20, Opts::default()).await;
}

#[actix_web::test]
async fn m_reconnect_mid_run_matches_recording() {
    let seed = vec!["slow_00001_.png", "slow_00002_.png", "slow_00003_.png"];
    replay(
        "m_reconnect_mid_run",
        1000,
        Opts {
            seed_outputs: seed,
            ..Opts::default()
        },
    )
    .await;
}

#[actix_web::test]
async fn n_binary_frames_match_recording() {
    replay("n_binary_frames", 20, Opts::default()).await;
}

#[actix_web::test]
async fn o_prompt_options_matches_recording() {
    replay("o_prompt_options", 300, Opts::default()).await;
}

#[actix_web::test]
async fn p_history_ops_matches_recording() {
    // Request #3 (max_items=1&offset=0) returned the server's oldest entry, which in the
    // recording came from an earlier scenario.
    replay(
        "p_history_ops",
        20,
        Opts {
            skip_body: vec![3],
            ..Opts::default()
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Behaviour beyond the recordings: scripting hooks, restart, extra node classes

async fn post_json(base: &str, path: &str, body: Value) -> (u16, Value) {
    let mut resp = awc::Client::new()
        .post(format!("{base}{path}"))
        .send_json(&body)
        .await
        .expect("post");
    let bytes = resp.body().await.expect("body");
    (
        resp.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn get_json(base: &str, path: &str) -> Value {
    let mut resp = awc::Client::new()
        .get(format!("{base}{path}"))
        .send()
        .await
        .expect("get");
    serde_json::from_slice(&resp.body().await.expect("body")).unwrap_or(Value::Null)
}

fn text2img(prefix: &str, color: u32) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    })
}

/// Waits until `/history/{id}` has the entry and returns it.
async fn wait_history(base: &str, id: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let h = get_json(base, &format!("/history/{id}")).await;
        if let Some(e) = h.get(id) {
            return e.clone();
        }
        assert!(Instant::now() < end, "prompt {id} never finished");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_web::test]
async fn scripted_failure_rejection_and_stats_work() {
    let ts = start_sim(10);
    let (code, _) = post_json(
        &ts.base,
        "/sim/script",
        json!({"fail_next": 1, "reject_next": 1}),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = post_json(&ts.base, "/prompt", json!({"prompt": text2img("f", 1)})).await;
    assert_eq!(code, 500, "reject_next answers 500");
    let (_, ok) = post_json(
        &ts.base,
        "/prompt",
        json!({"prompt": text2img("f", 1), "client_id": "c1"}),
    )
    .await;
    assert_eq!(
        ok["number"], 0,
        "a scripted rejection does not use a number"
    );
    let id = ok["prompt_id"].as_str().expect("id").to_string();
    let entry = wait_history(&ts.base, &id).await;
    assert_eq!(entry["status"]["status_str"], "error");
    let err = &entry["status"]["messages"][2][1];
    assert_eq!(err["exception_type"], "RuntimeError");
    assert_eq!(
        err["node_id"], "2",
        "the failure is on the last node to run"
    );
    assert!(err["exception_message"]
        .as_str()
        .expect("msg")
        .starts_with("comfy-sim: scripted failure"));
    let stats = get_json(&ts.base, "/sim/stats").await;
    assert_eq!(stats["queued"], 0);
    assert_eq!(stats["prompts"][0]["outcome"], "error");
    assert_eq!(stats["prompts"][0]["client_id"], "c1");
    assert!(
        stats["prompts"][0]["finished_ms"].as_u64() >= stats["prompts"][0]["started_ms"].as_u64()
    );
}

#[actix_web::test]
async fn paused_worker_queues_front_first_and_hang_ends_on_interrupt() {
    let ts = start_sim(10);
    post_json(&ts.base, "/sim/config", json!({"paused": true})).await;
    post_json(&ts.base, "/sim/script", json!({"hang_next": 1})).await;
    let (_, a) = post_json(&ts.base, "/prompt", json!({"prompt": text2img("a", 1)})).await;
    let (_, b) = post_json(
        &ts.base,
        "/prompt",
        json!({"prompt": text2img("b", 2), "front": true}),
    )
    .await;
    assert_eq!(b["number"], -1);
    let q = get_json(&ts.base, "/queue").await;
    assert_eq!(q["queue_running"], json!([]));
    assert_eq!(
        q["queue_pending"][0][1], b["prompt_id"],
        "front item listed first"
    );
    post_json(&ts.base, "/sim/config", json!({"paused": false})).await;
    // b runs first and hangs until interrupted.
    let b_id = b["prompt_id"].as_str().expect("id").to_string();
    let ok = wait_for(
        || {
            ts.sim
                .lock()
                .running
                .as_ref()
                .is_some_and(|r| r.item.prompt_id == b_id)
        },
        Duration::from_secs(5),
    )
    .await;
    assert!(ok, "front prompt runs first");
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert!(
        get_json(&ts.base, &format!("/history/{b_id}"))
            .await
            .get(&b_id)
            .is_none(),
        "hung prompt does not finish"
    );
    post_json(&ts.base, "/interrupt", json!({"prompt_id": b_id})).await;
    let entry = wait_history(&ts.base, &b_id).await;
    assert_eq!(entry["status"]["messages"][2][0], "execution_interrupted");
    let a_entry = wait_history(&ts.base, a["prompt_id"].as_str().expect("id")).await;
    assert_eq!(a_entry["status"]["status_str"], "success");
    let stats = get_json(&ts.base, "/sim/stats").await;
    assert_eq!(stats["prompts"][1]["outcome"], "interrupted");
}

#[actix_web::test]
async fn restart_on_same_data_dir_keeps_files_and_counter_but_forgets_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = start_sim_in(dir, 10);
    let root = first.dir.path().to_path_buf();
    let (_, r) = post_json(
        &first.base,
        "/prompt",
        json!({"prompt": text2img("nested/dir/out", 7)}),
    )
    .await;
    let id = r["prompt_id"].as_str().expect("id").to_string();
    let e = wait_history(&first.base, &id).await;
    assert_eq!(
        e["outputs"]["2"]["images"][0],
        json!({"filename": "out_00001_.png", "subfolder": "nested/dir", "type": "output"})
    );
    // A fresh simulator on the same data dir stands in for the restarted process.
    let dirs_again = start_sim_in_root(&root, 10);
    assert_eq!(
        get_json(&dirs_again.0, &format!("/history/{id}")).await,
        json!({})
    );
    let (_, r2) = post_json(
        &dirs_again.0,
        "/prompt",
        json!({"prompt": text2img("nested/dir/out", 8)}),
    )
    .await;
    assert_eq!(r2["number"], 0, "number restarts at 0");
    let e2 = wait_history(&dirs_again.0, r2["prompt_id"].as_str().expect("id")).await;
    assert_eq!(
        e2["outputs"]["2"]["images"][0]["filename"],
        "out_00002_.png"
    );
    let mut resp = awc::Client::new()
        .get(format!(
            "{}/view?filename=out_00001_.png&subfolder=nested/dir&type=output",
            dirs_again.0
        ))
        .send()
        .await
        .expect("view");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.body().await.expect("png").starts_with(b"\x89PNG"));
}

/// Starts a simulator on an existing data dir (which the caller keeps).
fn start_sim_in_root(root: &Path, exec_ms: u64) -> (String, Arc<Sim>) {
    let dirs = Dirs::create(root.to_path_buf()).expect("dirs");
    let sim = Arc::new(Sim::new(
        dirs,
        Config {
            exec_ms,
            paused: false,
        },
        vec![],
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    actix_rt::spawn(crate::server::start(sim.clone(), listener).expect("server"));
    (format!("http://127.0.0.1:{port}"), sim)
}

#[actix_web::test]
async fn diffusion_chain_runs_with_progress_and_seed_dependent_images() {
    let ts = start_sim(20);
    let mut client = ws_connect(&ts.base, "/ws?clientId=diff").await;
    let graph = |seed: u64| {
        json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
            "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": seed, "steps": 4, "cfg": 7.5,
                  "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
                  "latent_image": ["5", 0], "denoise": 1.0}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "t2i"}},
        })
    };
    let mut files = Vec::new();
    for seed in [1u64, 18_446_744_073_709_551_615] {
        let (code, r) = post_json(
            &ts.base,
            "/prompt",
            json!({"prompt": graph(seed), "client_id": "diff"}),
        )
        .await;
        assert_eq!(code, 200, "{r}");
        let e = wait_history(&ts.base, r["prompt_id"].as_str().expect("id")).await;
        let name = e["outputs"]["9"]["images"][0]["filename"]
            .as_str()
            .expect("file")
            .to_string();
        let png = std::fs::read(ts.dir.path().join("output").join(&name)).expect("png");
        let img = crate::image::decode_png(&png).expect("decode");
        assert_eq!((img.width, img.height), (64, 48), "latent size x8");
        files.push(png);
    }
    assert_ne!(files[0], files[1], "different seeds give different bytes");
    let progress: Vec<String> = client
        .all()
        .iter()
        .filter_map(|m| match m {
            Msg::Text(v) if v["type"] == "progress" => {
                Some(format!("{}/{}", v["data"]["value"], v["data"]["max"]))
            }
            _ => None,
        })
        .collect();
    assert_eq!(&progress[..4], ["1/4", "2/4", "3/4", "4/4"]);
    let _ = client.sink.send(ws::Message::Close(None)).await;
}

#[actix_web::test]
async fn cleaner_node_deletes_inside_data_dir_and_refuses_escapes() {
    let ts = start_sim(10);
    std::fs::create_dir_all(ts.dir.path().join("output/comfyd/T1")).expect("mkdir");
    let victim = ts.dir.path().join("output/comfyd/T1/out_00001_.png");
    std::fs::write(&victim, b"x").expect("write");
    let clean = |kind: &str, path: &str| json!({"prompt": {"1": {"class_type": "Clean input and output file", "inputs": {"type": kind, "path": path}}}});
    let (_, r) = post_json(
        &ts.base,
        "/prompt",
        clean("output", "comfyd/T1/out_00001_.png"),
    )
    .await;
    let e = wait_history(&ts.base, r["prompt_id"].as_str().expect("id")).await;
    assert_eq!(e["status"]["status_str"], "success");
    assert_eq!(e["outputs"], json!({}));
    assert!(!victim.exists());
    for bad in ["../input/x.png", "/etc/passwd"] {
        let (_, r) = post_json(&ts.base, "/prompt", clean("output", bad)).await;
        let e = wait_history(&ts.base, r["prompt_id"].as_str().expect("id")).await;
        assert_eq!(e["status"]["status_str"], "error", "{bad} must be refused");
    }
    let (code, r) = post_json(&ts.base, "/prompt", clean("elsewhere", "x")).await;
    assert_eq!(code, 400);
    assert_eq!(
        r["node_errors"]["1"]["errors"][0]["type"],
        "value_not_in_list"
    );
}

// ---------------------------------------------------------------------------------------------
// The catalog: `--without-node`, `--model`, `--without-model`

mod catalog_flags {
    use std::collections::HashMap;

    use serde_json::{json, Map, Value};

    use crate::catalog::Catalog;
    use crate::nodes;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn classes_of(c: &Catalog) -> HashMap<&'static str, Value> {
        nodes::object_info_of(c, &[]).into_iter().collect()
    }

    #[test]
    fn defaults_are_todays_server() {
        let c = Catalog::from_flags(&[], false, &[], &[]).expect("defaults");
        assert_eq!(c, Catalog::default());
        assert_eq!(c.files("checkpoints"), Some(strings(&nodes::CHECKPOINTS)));
        assert_eq!(c.files("loras"), Some(vec![]));
        assert_eq!(
            c.files("clip_vision"),
            None,
            "listed in /models, 404 as recorded"
        );
        assert_eq!(c.folders().len(), 20);
        assert!(classes_of(&c).contains_key(nodes::CLEAN_CLASS));
    }

    #[test]
    fn without_node_removes_the_class_and_prompts_using_it_are_refused() {
        let c = Catalog::from_flags(&strings(&["VAEDecode"]), false, &[], &[]).expect("flags");
        let classes = classes_of(&c);
        assert!(!classes.contains_key("VAEDecode"));
        assert!(classes.contains_key("SaveImage"));
        let prompt: Map<String, Value> = serde_json::from_value(json!({
            "1": {"class_type": "VAEDecode", "inputs": {}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
        }))
        .expect("prompt");
        let dir = tempfile::tempdir().expect("dir");
        let Err(body) = nodes::validate_in(&classes, &prompt, dir.path()) else {
            panic!("a prompt using a class the server lacks must be refused");
        };
        // The shape recorded in e_validation_errors (NoSuchNodeClass).
        assert_eq!(
            body,
            json!({
                "error": {"type": "invalid_prompt",
                          "message": "Cannot execute because node VAEDecode does not exist.",
                          "details": "Node ID '#1'", "extra_info": {}},
                "node_errors": {},
            })
        );
    }

    #[test]
    fn without_cleaner_is_without_node_cleaner() {
        let a = Catalog::from_flags(&[], true, &[], &[]).expect("flags");
        let b =
            Catalog::from_flags(&strings(&[nodes::CLEAN_CLASS]), false, &[], &[]).expect("flags");
        assert_eq!(a, b);
        assert!(!classes_of(&a).contains_key(nodes::CLEAN_CLASS));
    }

    #[test]
    fn models_are_added_and_removed() {
        let c = Catalog::from_flags(
            &[],
            false,
            &strings(&[
                "checkpoints/extra.safetensors",
                "loras/sub/l.safetensors",
                "mine/m.gguf",
            ]),
            &strings(&["checkpoints/sd_xl_base_1.0.safetensors"]),
        )
        .expect("flags");
        assert_eq!(
            c.files("checkpoints"),
            Some(strings(&[
                "v1-5-pruned-emaonly.safetensors",
                "extra.safetensors"
            ]))
        );
        assert_eq!(c.files("loras"), Some(strings(&["sub/l.safetensors"])));
        assert_eq!(c.files("mine"), Some(strings(&["m.gguf"])));
        assert_eq!(c.folders().last().map(String::as_str), Some("mine"));
        // The checkpoint loader's combo is the folder: a removed file is refused in prompts.
        let classes = classes_of(&c);
        assert_eq!(
            classes["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0],
            json!(["v1-5-pruned-emaonly.safetensors", "extra.safetensors"])
        );
    }

    #[test]
    fn bad_model_flags_are_refused() {
        for bad in ["nofolder", "/x.safetensors", "checkpoints/"] {
            assert!(
                Catalog::from_flags(&[], false, &[bad.to_string()], &[]).is_err(),
                "{bad}"
            );
        }
        assert!(
            Catalog::from_flags(&[], false, &[], &strings(&["checkpoints/nope.ckpt"])).is_err()
        );
    }
}

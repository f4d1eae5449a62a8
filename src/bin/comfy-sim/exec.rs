//! The prompt worker: takes prompts one at a time (lowest `number` first), runs their nodes with
//! simulated timing, and reports over the websocket and into history exactly in the order of
//! the recorded transcripts (a_text2img, c_slow_single, d_runtime_error, j_interrupt, ...).
//!
//! Caching follows ComfyUI's classic cache: a node is identified by its signature (class,
//! widget values, upstream signatures); only the nodes of the last prompt are kept; a node that
//! failed is not stored. SaveImageWebsocket and the cleaner node are never cached.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use serde_json::{json, Map, Value};
use tracing::info;

use crate::files;
use crate::hostile;
use crate::image::{self, decode_png, Image, Source};
use crate::nodes::{self, CLEAN_CLASS};
use crate::state::{now_ms, Frame, QueueItem, Sim};

/// A value flowing along a link.
#[derive(Debug, Clone)]
pub enum NodeValue {
    Image(Image),
    Mask {
        width: u32,
        height: u32,
        batch: u32,
    },
    Latent {
        width: u32,
        height: u32,
        batch: u32,
        seed: u64,
    },
    /// MODEL, CLIP, VAE and CONDITIONING are opaque digests.
    Opaque(&'static str, u64),
}

/// What the cache keeps for a node.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub outputs: Vec<NodeValue>,
    /// The `output` of its `executed` message, re-sent when served from cache.
    pub ui: Option<Value>,
}

/// A Python exception raised by a node at run time.
#[derive(Debug)]
struct NodeError {
    kind: &'static str,
    message: String,
    /// The innermost frame(s) of the traceback, after the common executor frames.
    frames: Vec<String>,
}

impl NodeError {
    fn new(kind: &'static str, message: impl Into<String>, frames: &[&str]) -> Self {
        Self {
            kind,
            message: message.into(),
            frames: frames.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// How a prompt ended.
enum End {
    Success,
    Error(Value),
    Interrupted(Value),
}

/// Makes never-cached nodes unique per prompt.
static NONCE: AtomicU64 = AtomicU64::new(0);

/// The worker loop: runs forever on the actix system that started it.
pub async fn worker(sim: Arc<Sim>) {
    loop {
        let next = {
            let mut g = sim.lock();
            g.claim_next();
            match g.running.as_mut() {
                Some(r) if !r.started => {
                    r.started = true;
                    Some(r.item.clone())
                }
                _ => None,
            }
        };
        match next {
            Some(item) => execute(&sim, item).await,
            None => sim.wake.notified().await,
        }
    }
}

/// Signatures of every node of the prompt (see the module doc).
fn signatures(prompt: &Map<String, Value>) -> HashMap<String, String> {
    fn sig(id: &str, prompt: &Map<String, Value>, memo: &mut HashMap<String, String>) -> String {
        if let Some(s) = memo.get(id) {
            return s.clone();
        }
        memo.insert(id.to_string(), format!("cycle:{id}"));
        let Some(node) = prompt.get(id) else {
            return format!("missing:{id}");
        };
        let class = node["class_type"].as_str().unwrap_or_default();
        let mut parts = vec![class.to_string()];
        if let Some(inputs) = node["inputs"].as_object() {
            for (k, v) in inputs {
                let part = match v {
                    Value::Array(l) if l.len() == 2 => {
                        let from = l[0]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| l[0].to_string());
                        format!("{k}=<{}>[{}]", sig(&from, prompt, memo), l[1])
                    }
                    other => format!("{k}={other}"),
                };
                parts.push(part);
            }
        }
        if class == "SaveImageWebsocket" || class == CLEAN_CLASS {
            parts.push(format!("nonce={}", NONCE.fetch_add(1, Ordering::Relaxed)));
        }
        let s = parts.join("|");
        memo.insert(id.to_string(), s.clone());
        s
    }
    let mut memo = HashMap::new();
    for id in prompt.keys() {
        sig(id, prompt, &mut memo);
    }
    memo.retain(|k, _| prompt.contains_key(k));
    memo
}

/// One prompt's run.
struct Run<'a> {
    sim: &'a Arc<Sim>,
    item: &'a QueueItem,
    client: Option<String>,
    /// progress_state entries in the order nodes appeared.
    progress: Vec<(String, Value)>,
    values: HashMap<String, Vec<NodeValue>>,
    ui: Vec<(String, Value)>,
    executed: Vec<String>,
    messages: Vec<Value>,
}

impl Run<'_> {
    fn pid(&self) -> &str {
        &self.item.prompt_id
    }

    fn emit(&self, kind: &str, data: Value) {
        self.sim
            .lock()
            .emit(self.client.as_deref(), kind, &data, false);
    }

    /// Sets a node's progress entry and sends the whole map (to everyone when no client).
    fn progress_state(&mut self, node: &str, value: Value, max: Value, state: &str) {
        let entry = json!({
            "value": value, "max": max, "state": state, "node_id": node, "prompt_id": self.pid(),
            "display_node_id": node, "parent_node_id": null, "real_node_id": node,
        });
        match self.progress.iter_mut().find(|(k, _)| k == node) {
            Some((_, e)) => *e = entry,
            None => self.progress.push((node.to_string(), entry)),
        }
        let nodes: Map<String, Value> = self.progress.iter().cloned().collect();
        let data = json!({"prompt_id": self.pid(), "nodes": nodes});
        self.sim
            .lock()
            .emit(self.client.as_deref(), "progress_state", &data, true);
    }

    /// Marks a node finished (value = max, keeping the number type of max).
    fn finish_progress(&mut self, node: &str) {
        let max = self
            .progress
            .iter()
            .find(|(k, _)| k == node)
            .map(|(_, e)| e["max"].clone())
            .unwrap_or(json!(1.0));
        self.progress_state(node, max.clone(), max, "finished");
    }

    /// `progress {value, max, prompt_id, node}`; broadcast when the prompt has no client.
    fn progress(&self, node: &str, value: u64, max: u64) {
        let data = json!({"value": value, "max": max, "prompt_id": self.pid(), "node": node});
        self.sim
            .lock()
            .emit(self.client.as_deref(), "progress", &data, true);
    }

    /// Sends an image as a binary preview frame, in the format each socket asked for.
    fn binary_image(&self, node: &str, png: &[u8]) {
        let g = self.sim.lock();
        let meta = format!(
            "{{\"node_id\": {n}, \"prompt_id\": {p}, \"display_node_id\": {n}, \"parent_node_id\": null, \"real_node_id\": {n}, \"image_type\": \"image/png\"}}",
            n = json!(node),
            p = json!(self.pid())
        );
        let frame = |with_meta: bool| -> Bytes {
            let mut b = Vec::with_capacity(png.len() + meta.len() + 8);
            if with_meta {
                b.extend_from_slice(&4u32.to_be_bytes());
                b.extend_from_slice(&(meta.len() as u32).to_be_bytes());
                b.extend_from_slice(meta.as_bytes());
            } else {
                b.extend_from_slice(&1u32.to_be_bytes());
                b.extend_from_slice(&2u32.to_be_bytes());
            }
            b.extend_from_slice(png);
            Bytes::from(b)
        };
        let targets: Vec<_> = match &self.client {
            Some(c) => g.sockets.get(c).into_iter().collect(),
            None => g.sockets.values().collect(),
        };
        for s in targets {
            s.addr.do_send(Frame::Binary(frame(s.preview_metadata)));
        }
    }

    fn preview_metadata(&self) -> bool {
        let g = self.sim.lock();
        self.client
            .as_ref()
            .and_then(|c| g.sockets.get(c))
            .map(|s| s.preview_metadata)
            .unwrap_or(false)
    }

    fn interrupted(&self) -> bool {
        self.sim.lock().interrupt
    }

    fn event_data(&self, node: &str, extra: Value) -> Value {
        let class = self.item.prompt[node]["class_type"].clone();
        let mut data = json!({
            "prompt_id": self.pid(), "node_id": node, "node_type": class, "executed": self.executed,
        });
        if let (Some(d), Value::Object(e)) = (data.as_object_mut(), extra) {
            d.extend(e);
        }
        data["timestamp"] = json!(now_ms());
        data
    }
}

/// Runs one prompt from `execution_start` to `executing {node: null}`.
async fn execute(sim: &Arc<Sim>, item: QueueItem) {
    let client = item.client_id();
    let order = nodes::execution_order(&item.prompt, &item.outputs);
    let sigs = signatures(&item.prompt);
    let mut ids: Vec<String> = item.prompt.keys().cloned().collect();
    nodes::sort_ids(&mut ids);
    let mut run = Run {
        sim,
        item: &item,
        client: client.clone(),
        progress: Vec::new(),
        values: HashMap::new(),
        ui: Vec::new(),
        executed: Vec::new(),
        messages: Vec::new(),
    };
    info!(prompt.id = %item.prompt_id, "prompt {} started", item.prompt_id);

    let (cached, exec_ms, fail_node, hang_node, plan) = {
        let mut g = sim.lock();
        // The cleaner node's prompts are left alone: they are not the jobs a test scripts.
        let cleaning = item.prompt.values().all(|n| n["class_type"] == CLEAN_CLASS);
        let plan = if cleaning {
            hostile::Plan::default()
        } else {
            g.hostile.plan_prompt()
        };
        g.interrupt = false;
        let used: HashSet<&String> = sigs.values().collect();
        g.cache.retain(|k, _| used.contains(k));
        let start = json!({"prompt_id": item.prompt_id, "timestamp": now_ms()});
        g.emit(client.as_deref(), "execution_start", &start, false);
        let cached: HashSet<String> = ids
            .iter()
            .filter(|id| sigs.get(*id).is_some_and(|s| g.cache.contains_key(s)))
            .cloned()
            .collect();
        let cached_list: Vec<&String> = ids.iter().filter(|id| cached.contains(*id)).collect();
        let cached_msg =
            json!({"nodes": cached_list, "prompt_id": item.prompt_id, "timestamp": now_ms()});
        g.emit(client.as_deref(), "execution_cached", &cached_msg, false);
        run.messages.push(json!(["execution_start", start]));
        run.messages.push(json!(["execution_cached", cached_msg]));
        let to_run: Vec<&String> = order.iter().filter(|id| !cached.contains(*id)).collect();
        let mut fail_node = None;
        let mut hang_node = None;
        if !to_run.is_empty() {
            if g.script.fail_next > 0 {
                g.script.fail_next -= 1;
                fail_node = to_run.last().map(|s| s.to_string());
            }
            if plan.nul_error && fail_node.is_none() {
                fail_node = to_run.last().map(|s| s.to_string());
            }
            if g.script.hang_next > 0 {
                g.script.hang_next -= 1;
                hang_node = to_run.first().map(|s| s.to_string());
            }
        }
        // Deleting a file takes no GPU time: on a real server a cleaner prompt ends in
        // milliseconds, so it does not take a job's `exec_ms` here either.
        let per_node = if cleaning {
            0
        } else {
            g.config.exec_ms / (to_run.len().max(1) as u64)
        };
        (cached, per_node, fail_node, hang_node, plan)
    };
    let first_node = order.first().map(String::as_str).unwrap_or("1");
    hostile::send_plan(sim, client.as_deref(), &plan, first_node);
    // In hostile mode the outputs are reported under other names (the files keep theirs).
    let report = |ui: Value| match &plan.names {
        Some(names) => hostile::rename_outputs(&ui, names),
        None => ui,
    };

    let mut end = End::Success;
    for id in &order {
        let sig = sigs.get(id).cloned().unwrap_or_default();
        if cached.contains(id) {
            let entry = sim.lock().cache.get(&sig).cloned();
            if let Some(entry) = entry {
                run.values.insert(id.clone(), entry.outputs);
                if let Some(ui) = entry.ui.map(report) {
                    run.emit("executed", json!({"node": id, "display_node": id, "output": ui, "prompt_id": item.prompt_id}));
                    run.ui.push((id.clone(), ui));
                    run.progress_state(id, json!(1), json!(1), "finished");
                }
                continue;
            }
        }
        run.progress_state(id, json!(0.0), json!(1.0), "running");
        {
            let mut g = sim.lock();
            let data = json!({"node": id, "display_node": id, "prompt_id": item.prompt_id});
            g.emit(client.as_deref(), "executing", &data, false);
            if let Some(r) = g.running.as_mut() {
                r.last_node = Some(id.clone());
            }
        }
        if run.interrupted() {
            end = End::Interrupted(run.event_data(id, json!({})));
            break;
        }
        if hang_node.as_deref() == Some(id.as_str()) {
            while !run.interrupted() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            end = End::Interrupted(run.event_data(id, json!({})));
            break;
        }
        let result = if fail_node.as_deref() == Some(id.as_str()) {
            tokio::time::sleep(Duration::from_millis(exec_ms)).await;
            Err(NodeError::new(
                "RuntimeError",
                "comfy-sim: scripted failure",
                &[],
            ))
        } else {
            run_node(&mut run, id, exec_ms).await
        };
        match result {
            Ok((outputs, ui)) => {
                sim.lock().cache.insert(
                    sig,
                    CacheEntry {
                        outputs: outputs.clone(),
                        ui: ui.clone(),
                    },
                );
                run.values.insert(id.clone(), outputs);
                if let Some(ui) = ui.map(report) {
                    run.emit("executed", json!({"node": id, "display_node": id, "output": ui, "prompt_id": item.prompt_id}));
                    run.ui.push((id.clone(), ui));
                }
                run.finish_progress(id);
                run.executed.push(id.clone());
            }
            Err(e) => {
                let inputs = current_inputs(&item.prompt, id);
                let mut traceback = executor_frames();
                traceback.extend(e.frames);
                let extra = if plan.nul_error {
                    hostile::nul_error_data()
                } else {
                    json!({
                        "exception_message": format!("{}\n", e.message),
                        "exception_type": e.kind,
                        "traceback": traceback,
                        "current_inputs": inputs,
                        "current_outputs": ids,
                    })
                };
                end = End::Error(run.event_data(id, extra));
                break;
            }
        }
    }
    finish(&mut run, end);
}

/// Terminal event, history, `status`, then `executing {node: null}`, all under one lock.
fn finish(run: &mut Run<'_>, end: End) {
    let item = run.item;
    let (kind, data, status_str, outcome) = match end {
        End::Success => (
            "execution_success",
            json!({"prompt_id": item.prompt_id, "timestamp": now_ms()}),
            "success",
            "success",
        ),
        End::Error(d) => ("execution_error", d, "error", "error"),
        End::Interrupted(d) => ("execution_interrupted", d, "error", "interrupted"),
    };
    run.messages.push(json!([kind, data]));
    let outputs: Map<String, Value> = run.ui.iter().cloned().collect();
    let meta: Map<String, Value> = run
        .ui
        .iter()
        .map(|(id, _)| {
            (
                id.clone(),
                json!({"node_id": id, "display_node": id, "parent_node": null, "real_node_id": id}),
            )
        })
        .collect();
    let entry = json!({
        "prompt": item.to_json(),
        "outputs": outputs,
        "status": {"status_str": status_str, "completed": outcome == "success", "messages": run.messages},
        "meta": meta,
    });
    let mut g = run.sim.lock();
    g.emit(run.client.as_deref(), kind, &data, false);
    g.push_history(item.prompt_id.clone(), entry);
    g.running = None;
    if let Some(s) = g.stat_mut(&item.prompt_id) {
        s.finished_ms = Some(now_ms());
        s.outcome = Some(outcome);
    }
    g.broadcast_status();
    let done = json!({"node": null, "prompt_id": item.prompt_id});
    g.emit(run.client.as_deref(), "executing", &done, false);
    info!(prompt.id = %item.prompt_id, outcome, "prompt {} finished: {outcome}", item.prompt_id);
}

/// The executor frames every runtime traceback starts with (paths as in the transcripts).
fn executor_frames() -> Vec<String> {
    vec![
        "  File \"<root>/src/execution.py\", line 496, in execute\n    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n".into(),
        "  File \"<root>/src/execution.py\", line 315, in get_output_data\n    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)\n".into(),
        "  File \"<root>/src/execution.py\", line 289, in _async_map_node_over_list\n    await process_inputs(input_dict, i)\n".into(),
        "  File \"<root>/src/execution.py\", line 277, in process_inputs\n    result = f(**inputs)\n             ^^^^^^^^^^^\n".into(),
    ]
}

/// `current_inputs` of an execution_error: widget values as they are, links as a repr string.
fn current_inputs(prompt: &Map<String, Value>, id: &str) -> Value {
    let mut out = Map::new();
    if let Some(inputs) = prompt[id]["inputs"].as_object() {
        for (k, v) in inputs {
            let shown = match v {
                Value::Array(l) => json!(format!(
                    "<output {} of node {}>",
                    l.get(1).unwrap_or(&json!(0)),
                    l.first().unwrap_or(&json!("?"))
                )),
                other => other.clone(),
            };
            out.insert(k.clone(), json!([shown]));
        }
    }
    Value::Object(out)
}

/// Reads a widget input as an integer (validation already checked it converts).
fn int_input(inputs: &Value, name: &str, default: i128) -> i128 {
    match &inputs[name] {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .or_else(|| n.as_f64().map(|f| f as i128))
            .unwrap_or(default),
        Value::String(s) => s.trim().parse().unwrap_or(default),
        Value::Bool(b) => i128::from(*b),
        _ => default,
    }
}

fn u32_input(inputs: &Value, name: &str, default: u32) -> u32 {
    int_input(inputs, name, i128::from(default)).clamp(0, i128::from(u32::MAX)) as u32
}

fn str_input(inputs: &Value, name: &str) -> String {
    match &inputs[name] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The value on a link input, or the TypeError ComfyUI would raise on a missing one.
fn link<'v>(run: &'v Run<'_>, inputs: &Value, name: &str) -> Result<&'v NodeValue, NodeError> {
    let l = inputs[name].as_array().filter(|l| l.len() == 2);
    let from = l.and_then(|l| {
        l[0].as_str()
            .map(str::to_string)
            .or_else(|| Some(l[0].to_string()))
    });
    let slot = l.and_then(|l| l[1].as_u64()).unwrap_or(0) as usize;
    from.and_then(|f| run.values.get(&f))
        .and_then(|v| v.get(slot))
        .ok_or_else(|| NodeError::new("TypeError", format!("'{name}' is not a linked input"), &[]))
}

fn image_in(run: &Run<'_>, inputs: &Value, name: &str) -> Result<Image, NodeError> {
    match link(run, inputs, name)? {
        NodeValue::Image(i) => Ok(i.clone()),
        _ => Err(NodeError::new(
            "AttributeError",
            "'dict' object has no attribute 'shape'",
            &[],
        )),
    }
}

/// An opaque input (MODEL, CLIP, VAE, CONDITIONING) of the expected kind.
fn opaque_in(run: &Run<'_>, inputs: &Value, name: &str, kind: &str) -> Result<u64, NodeError> {
    match link(run, inputs, name)? {
        NodeValue::Opaque(k, d) if *k == kind => Ok(*d),
        _ => Err(NodeError::new(
            "AttributeError",
            format!("input '{name}' is not a {kind}"),
            &[],
        )),
    }
}

fn latent_in(run: &Run<'_>, inputs: &Value, name: &str) -> Result<(u32, u32, u32, u64), NodeError> {
    match link(run, inputs, name)? {
        NodeValue::Latent {
            width,
            height,
            batch,
            seed,
        } => Ok((*width, *height, *batch, *seed)),
        _ => Err(NodeError::new("KeyError", "'samples'", &[])),
    }
}

/// Sleeps for a node's share of the prompt's execution time.
async fn spend(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

type NodeResult = Result<(Vec<NodeValue>, Option<Value>), NodeError>;

/// Runs one node: its simulated work, then its outputs and UI output.
async fn run_node(run: &mut Run<'_>, id: &str, ms: u64) -> NodeResult {
    let node = run.item.prompt[id].clone();
    let class = node["class_type"].as_str().unwrap_or_default().to_string();
    let inputs = node["inputs"].clone();
    let dirs = run.sim.dirs.clone();
    if class != "KSampler" && class != "SaveImageWebsocket" {
        spend(ms).await;
    }
    match class.as_str() {
        "EmptyImage" => {
            let color = int_input(&inputs, "color", 0).clamp(0, 0xFF_FFFF) as u32;
            let img = Image::solid(
                u32_input(&inputs, "width", 512),
                u32_input(&inputs, "height", 512),
                u32_input(&inputs, "batch_size", 1),
                color,
            );
            Ok((vec![NodeValue::Image(img)], None))
        }
        "LoadImage" => {
            let name = str_input(&inputs, "image");
            let path = nodes::resolve_annotated(&dirs.input, &name).ok_or_else(|| {
                NodeError::new("ValueError", format!("Invalid image file: {name}"), &[])
            })?;
            let frames = ["  File \"<root>/src/nodes.py\", line 1647, in load_image\n    img = node_helpers.pillow(Image.open, image_path)\n"];
            let bytes = std::fs::read(&path).map_err(|_| {
                NodeError::new(
                    "FileNotFoundError",
                    format!("[Errno 2] No such file or directory: '{}'", path.display()),
                    &frames,
                )
            })?;
            let img = decode_png(&bytes).ok_or_else(|| {
                NodeError::new(
                    "PIL.UnidentifiedImageError",
                    format!("cannot identify image file '{}'", path.display()),
                    &frames,
                )
            })?;
            let mask = NodeValue::Mask {
                width: img.width,
                height: img.height,
                batch: 1,
            };
            Ok((vec![NodeValue::Image(img), mask], None))
        }
        "ImageInvert" => {
            let mut img = image_in(run, &inputs, "image")?;
            img.inverted = !img.inverted;
            Ok((vec![NodeValue::Image(img)], None))
        }
        "ImageBlur" => Ok((
            vec![NodeValue::Image(image_in(run, &inputs, "image")?)],
            None,
        )),
        "ImageScale" => {
            let mut img = image_in(run, &inputs, "image")?;
            let (w, h) = (
                u32_input(&inputs, "width", 0),
                u32_input(&inputs, "height", 0),
            );
            let (ow, oh) = (u64::from(img.width.max(1)), u64::from(img.height.max(1)));
            let (nw, nh) = match (w, h) {
                (0, 0) => (img.width, img.height),
                (0, h) => (((ow * u64::from(h)) / oh).max(1) as u32, h),
                (w, 0) => (w, ((oh * u64::from(w)) / ow).max(1) as u32),
                (w, h) => (w, h),
            };
            // Pixels are sampled from the source at encode time, so only the size changes.
            img.width = nw;
            img.height = nh;
            Ok((vec![NodeValue::Image(img)], None))
        }
        "ImageToMask" => {
            let img = image_in(run, &inputs, "image")?;
            if str_input(&inputs, "channel") == "alpha" {
                // Every simulated IMAGE has 3 channels, exactly like d_runtime_error.
                return Err(NodeError::new("IndexError", "index 3 is out of bounds for dimension 3 with size 3", &[
                    "  File \"<root>/src/comfy_extras/nodes_mask.py\", line 137, in image_to_mask\n    mask = image[:, :, :, channels.index(channel)]\n           ~~~~~^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
                ]));
            }
            Ok((
                vec![NodeValue::Mask {
                    width: img.width,
                    height: img.height,
                    batch: img.batch,
                }],
                None,
            ))
        }
        "MaskToImage" => match link(run, &inputs, "mask")? {
            NodeValue::Mask {
                width,
                height,
                batch,
            } => Ok((
                vec![NodeValue::Image(Image::solid(
                    *width, *height, *batch, 0x808080,
                ))],
                None,
            )),
            _ => Err(NodeError::new(
                "AttributeError",
                "object has no attribute 'reshape'",
                &[],
            )),
        },
        "SaveImage" | "PreviewImage" => {
            let img = image_in(run, &inputs, "images")?;
            let (base, kind, prefix) = if class == "SaveImage" {
                (
                    dirs.output.clone(),
                    "output",
                    str_input(&inputs, "filename_prefix"),
                )
            } else {
                let letters: String = (0..5)
                    .map(|_| rand::thread_rng().gen_range(b'a'..=b'z') as char)
                    .collect();
                (dirs.temp.clone(), "temp", format!("ComfyUI_temp_{letters}"))
            };
            let sp = files::save_path(&base, &prefix).map_err(|_| {
                NodeError::new("Exception", format!(
                    "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: {}\n         output_dir: {}",
                    base.join(&prefix).display(), base.display()), &[])
            })?;
            // ComfyUI writes these with Python's json.dumps, which escapes non-ASCII, so any prompt
            // text fits a Latin-1 tEXt chunk.
            let mut text = vec![(
                "prompt",
                ascii_json(&Value::Object(run.item.prompt.clone())),
            )];
            if let Some(extra) = run
                .item
                .extra_data
                .get("extra_pnginfo")
                .and_then(Value::as_object)
            {
                for (k, v) in extra {
                    text.push((k.as_str(), ascii_json(v)));
                }
            }
            let mut images = Vec::new();
            for frame in 0..img.batch {
                let name = sp.filename.replace("%batch_num%", &frame.to_string());
                let file = format!("{name}_{:05}_.png", sp.counter + u64::from(frame));
                let png = img
                    .encode_png(frame, &text)
                    .map_err(|e| NodeError::new("OSError", e.to_string(), &[]))?;
                std::fs::write(sp.folder.join(&file), png)
                    .map_err(|e| NodeError::new("OSError", e.to_string(), &[]))?;
                images.push(json!({"filename": file, "subfolder": sp.subfolder, "type": kind}));
            }
            Ok((vec![], Some(json!({"images": images}))))
        }
        "SaveImageWebsocket" => {
            let img = image_in(run, &inputs, "images")?;
            let n = u64::from(img.batch);
            let per = ms / n.max(1);
            let with_meta = run.preview_metadata();
            for frame in 0..img.batch {
                spend(per).await;
                let png = img
                    .encode_png(frame, &[])
                    .map_err(|e| NodeError::new("OSError", e.to_string(), &[]))?;
                let step = u64::from(frame);
                run.progress_state(id, json!(step), json!(n), "running");
                if with_meta {
                    run.binary_image(id, &png);
                    run.progress(id, step, n);
                } else {
                    run.progress(id, step, n);
                    run.binary_image(id, &png);
                }
            }
            Ok((vec![], None))
        }
        "CheckpointLoaderSimple" => {
            let d = image::hash_str(&str_input(&inputs, "ckpt_name"));
            Ok((
                vec![
                    NodeValue::Opaque("MODEL", d),
                    NodeValue::Opaque("CLIP", d ^ 1),
                    NodeValue::Opaque("VAE", d ^ 2),
                ],
                None,
            ))
        }
        "CLIPTextEncode" => {
            let clip = opaque_in(run, &inputs, "clip", "CLIP")?;
            let d = image::mix(image::hash_str(&str_input(&inputs, "text")), clip);
            Ok((vec![NodeValue::Opaque("CONDITIONING", d)], None))
        }
        "EmptyLatentImage" => {
            let (w, h) = (
                u32_input(&inputs, "width", 512) / 8,
                u32_input(&inputs, "height", 512) / 8,
            );
            Ok((
                vec![NodeValue::Latent {
                    width: w,
                    height: h,
                    batch: u32_input(&inputs, "batch_size", 1),
                    seed: 0,
                }],
                None,
            ))
        }
        "KSampler" => {
            let model = opaque_in(run, &inputs, "model", "MODEL")?;
            let pos = opaque_in(run, &inputs, "positive", "CONDITIONING")?;
            let neg = opaque_in(run, &inputs, "negative", "CONDITIONING")?;
            let (w, h, b, lseed) = latent_in(run, &inputs, "latent_image")?;
            let steps = int_input(&inputs, "steps", 20).clamp(1, 10_000) as u64;
            let seed = int_input(&inputs, "seed", 0) as u64;
            let knobs = format!(
                "{}|{}|{}|{}",
                inputs["cfg"],
                str_input(&inputs, "sampler_name"),
                str_input(&inputs, "scheduler"),
                inputs["denoise"]
            );
            // Report at most 100 progress steps however many the graph asks for.
            let stride = steps.div_ceil(100);
            let reports = steps.div_ceil(stride);
            let per = ms / reports.max(1);
            let mut step = 0;
            while step < steps {
                step = (step + stride).min(steps);
                spend(per).await;
                run.progress_state(id, json!(step), json!(steps), "running");
                run.progress(id, step, steps);
            }
            let out = image::fnv(&[model, pos, neg, lseed, seed, steps, image::hash_str(&knobs)]);
            Ok((
                vec![NodeValue::Latent {
                    width: w,
                    height: h,
                    batch: b,
                    seed: out,
                }],
                None,
            ))
        }
        "VAEDecode" => {
            let vae = opaque_in(run, &inputs, "vae", "VAE")?;
            let (w, h, b, seed) = latent_in(run, &inputs, "samples")?;
            let img = Image {
                width: w * 8,
                height: h * 8,
                batch: b,
                source: Source::Pattern(image::mix(seed, vae)),
                inverted: false,
            };
            Ok((vec![NodeValue::Image(img)], None))
        }
        "VAEEncode" => {
            let vae = opaque_in(run, &inputs, "vae", "VAE")?;
            let img = image_in(run, &inputs, "pixels")?;
            let latent = NodeValue::Latent {
                width: img.width / 8,
                height: img.height / 8,
                batch: img.batch,
                seed: image::mix(img.digest(), vae),
            };
            Ok((vec![latent], None))
        }
        CLEAN_CLASS => {
            let kind = str_input(&inputs, "type");
            let path = str_input(&inputs, "path");
            let base = dirs.by_type(&kind).cloned().ok_or_else(|| {
                NodeError::new("ValueError", format!("unknown type: {kind}"), &[])
            })?;
            let target = files::join_inside(&base, &path)
                .ok()
                .filter(|_| !path.is_empty())
                .ok_or_else(|| {
                    NodeError::new(
                        "ValueError",
                        format!("refusing to delete outside the {kind} directory: {path}"),
                        &[],
                    )
                })?;
            match std::fs::remove_file(&target) {
                Ok(()) => Ok((vec![], None)),
                // Already gone is fine: cleaning must be idempotent.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((vec![], None)),
                Err(e) => Err(NodeError::new("OSError", e.to_string(), &[])),
            }
        }
        other => Err(NodeError::new("KeyError", format!("'{other}'"), &[])),
    }
}

/// JSON with every non-ASCII character escaped as `\uXXXX` (UTF-16), like Python's `json.dumps`.
fn ascii_json(v: &Value) -> String {
    let raw = v.to_string();
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod ascii_json_tests {
    #[test]
    fn escapes_like_python_json_dumps() {
        let v = serde_json::json!({"t": "é🎨"});
        assert_eq!(super::ascii_json(&v), r#"{"t":"\u00e9\ud83c\udfa8"}"#);
    }
}

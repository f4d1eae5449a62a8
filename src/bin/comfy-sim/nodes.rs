//! Node classes the simulator knows: their `/object_info` entries and prompt validation.
//!
//! The `/object_info` JSON is the single source of truth: validation reads input types, limits
//! and combo lists from it, so what a client sees there is what `POST /prompt` enforces. The
//! validation mirrors ComfyUI 0.3.64 `execution.validate_prompt` (error types, messages, the
//! `dependent_outputs` bookkeeping and the 400 body shapes recorded in e_validation_errors).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use crate::catalog::Catalog;

/// Checkpoint names `CheckpointLoaderSimple` offers by default (`catalog` may add or remove some).
pub const CHECKPOINTS: [&str; 2] = [
    "v1-5-pruned-emaonly.safetensors",
    "sd_xl_base_1.0.safetensors",
];
/// The class name of the cleaner node of the service comfyd replaces.
pub const CLEAN_CLASS: &str = "Clean input and output file";

const MAX_RES: i64 = 16384;
/// KSampler's sampler and scheduler lists as ComfyUI 0.3.64 offers them (comfy/samplers.py).
const SAMPLERS: [&str; 27] = [
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "deis",
    "ddim",
    "uni_pc",
];
const SCHEDULERS: [&str; 8] = [
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
];

/// Builds one `/object_info` entry; `required` is a list of `(name, spec)` in input order.
#[allow(clippy::too_many_arguments)]
fn entry(
    name: &str,
    display: &str,
    category: &str,
    module: &str,
    description: &str,
    required: Vec<(&str, Value)>,
    hidden: bool,
    outputs: &[&str],
    output_node: bool,
) -> Value {
    let order: Vec<&str> = required.iter().map(|(n, _)| *n).collect();
    let req: Map<String, Value> = required
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect();
    let mut input = json!({ "required": req });
    let mut input_order = json!({ "required": order });
    if hidden {
        input["hidden"] = json!({"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"});
        input_order["hidden"] = json!(["prompt", "extra_pnginfo"]);
    }
    json!({
        "input": input,
        "input_order": input_order,
        "output": outputs,
        "output_is_list": outputs.iter().map(|_| false).collect::<Vec<_>>(),
        "output_name": outputs,
        "name": name,
        "display_name": display,
        "description": description,
        "python_module": module,
        "category": category,
        "output_node": output_node,
    })
}

fn int(default: i64, min: i64, max: i64) -> Value {
    json!(["INT", {"default": default, "min": min, "max": max, "step": 1}])
}

fn combo(items: &[&str]) -> Value {
    json!([items, {}])
}

/// Every installed node class (the catalog's), in a fixed order; `input_files` fills LoadImage's
/// combo.
pub fn object_info(input_files: &[String]) -> Vec<(&'static str, Value)> {
    object_info_of(crate::catalog::get(), input_files)
}

/// [`object_info`] for a given catalog: the classes it leaves out are absent (so refused in
/// prompts, as ComfyUI refuses a class it does not have), and the checkpoint combo lists its
/// `checkpoints` folder.
pub fn object_info_of(catalog: &Catalog, input_files: &[String]) -> Vec<(&'static str, Value)> {
    let mut all = all_classes(input_files, &catalog.checkpoints());
    all.retain(|(class, _)| catalog.has_node(class));
    all
}

fn all_classes(input_files: &[String], checkpoints: &[String]) -> Vec<(&'static str, Value)> {
    let images = json!(["IMAGE", {"tooltip": "The images to save."}]);
    vec![
        ("EmptyImage", entry("EmptyImage", "EmptyImage", "image", "nodes", "", vec![
            ("width", int(512, 1, MAX_RES)),
            ("height", int(512, 1, MAX_RES)),
            ("batch_size", int(1, 1, 4096)),
            ("color", json!(["INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}])),
        ], false, &["IMAGE"], false)),
        ("LoadImage", entry("LoadImage", "Load Image", "image", "nodes", "", vec![
            ("image", json!([input_files, {"image_upload": true}])),
        ], false, &["IMAGE", "MASK"], false)),
        ("ImageInvert", entry("ImageInvert", "Invert Image", "image", "nodes", "", vec![
            ("image", json!(["IMAGE", {}])),
        ], false, &["IMAGE"], false)),
        ("ImageBlur", entry("ImageBlur", "Image Blur", "image/postprocessing", "comfy_extras.nodes_post_processing", "", vec![
            ("image", json!(["IMAGE", {}])),
            ("blur_radius", int(1, 1, 31)),
            ("sigma", json!(["FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}])),
        ], false, &["IMAGE"], false)),
        ("ImageScale", entry("ImageScale", "Upscale Image", "image/upscaling", "nodes", "", vec![
            ("image", json!(["IMAGE", {}])),
            ("upscale_method", combo(&["nearest-exact", "bilinear", "area", "bicubic", "lanczos"])),
            ("width", int(512, 0, MAX_RES)),
            ("height", int(512, 0, MAX_RES)),
            ("crop", combo(&["disabled", "center"])),
        ], false, &["IMAGE"], false)),
        ("ImageToMask", entry("ImageToMask", "Convert Image to Mask", "mask", "comfy_extras.nodes_mask", "", vec![
            ("image", json!(["IMAGE", {}])),
            ("channel", combo(&["red", "green", "blue", "alpha"])),
        ], false, &["MASK"], false)),
        ("MaskToImage", entry("MaskToImage", "Convert Mask to Image", "mask", "comfy_extras.nodes_mask", "", vec![
            ("mask", json!(["MASK", {}])),
        ], false, &["IMAGE"], false)),
        ("SaveImage", entry("SaveImage", "Save Image", "image", "nodes", "Saves the input images to your ComfyUI output directory.", vec![
            ("images", images.clone()),
            ("filename_prefix", json!(["STRING", {"default": "ComfyUI", "tooltip": "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."}])),
        ], true, &[], true)),
        ("PreviewImage", entry("PreviewImage", "Preview Image", "image", "nodes", "Saves the input images to your ComfyUI output directory.", vec![
            ("images", images.clone()),
        ], true, &[], true)),
        ("SaveImageWebsocket", entry("SaveImageWebsocket", "SaveImageWebsocket", "api node/image", "custom_nodes.websocket_image_save", "", vec![
            ("images", json!(["IMAGE", {}])),
        ], false, &[], true)),
        ("CheckpointLoaderSimple", entry("CheckpointLoaderSimple", "Load Checkpoint", "loaders", "nodes", "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.", vec![
            ("ckpt_name", json!([checkpoints, {"tooltip": "The name of the checkpoint (model) to load."}])),
        ], false, &["MODEL", "CLIP", "VAE"], false)),
        ("CLIPTextEncode", entry("CLIPTextEncode", "CLIP Text Encode (Prompt)", "conditioning", "nodes", "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images.", vec![
            ("text", json!(["STRING", {"multiline": true, "dynamicPrompts": true, "tooltip": "The text to be encoded."}])),
            ("clip", json!(["CLIP", {"tooltip": "The CLIP model used for encoding the text."}])),
        ], false, &["CONDITIONING"], false)),
        ("EmptyLatentImage", entry("EmptyLatentImage", "Empty Latent Image", "latent", "nodes", "Create a new batch of empty latent images to be denoised via sampling.", vec![
            ("width", json!(["INT", {"default": 512, "min": 16, "max": MAX_RES, "step": 8}])),
            ("height", json!(["INT", {"default": 512, "min": 16, "max": MAX_RES, "step": 8}])),
            ("batch_size", int(1, 1, 4096)),
        ], false, &["LATENT"], false)),
        ("KSampler", entry("KSampler", "KSampler", "sampling", "nodes", "Uses the provided model, positive and negative conditioning to denoise the latent image.", vec![
            ("model", json!(["MODEL", {}])),
            ("seed", json!(["INT", {"default": 0, "min": 0, "max": u64::MAX, "control_after_generate": true}])),
            ("steps", json!(["INT", {"default": 20, "min": 1, "max": 10000}])),
            ("cfg", json!(["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}])),
            ("sampler_name", combo(&SAMPLERS)),
            ("scheduler", combo(&SCHEDULERS)),
            ("positive", json!(["CONDITIONING", {}])),
            ("negative", json!(["CONDITIONING", {}])),
            ("latent_image", json!(["LATENT", {}])),
            ("denoise", json!(["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}])),
        ], false, &["LATENT"], false)),
        ("VAEDecode", entry("VAEDecode", "VAE Decode", "latent", "nodes", "Decodes latent images back into pixel space images.", vec![
            ("samples", json!(["LATENT", {}])),
            ("vae", json!(["VAE", {}])),
        ], false, &["IMAGE"], false)),
        ("VAEEncode", entry("VAEEncode", "VAE Encode", "latent", "nodes", "", vec![
            ("pixels", json!(["IMAGE", {}])),
            ("vae", json!(["VAE", {}])),
        ], false, &["LATENT"], false)),
        (CLEAN_CLASS, entry(CLEAN_CLASS, CLEAN_CLASS, "utils", "custom_nodes.comfyd_cleaner", "Deletes one file from the input, output or temp directory.", vec![
            ("type", combo(&["input", "output", "temp"])),
            ("path", json!(["STRING", {"default": ""}])),
        ], false, &[], true)),
    ]
}

/// The node classes as a map, for lookups during validation and execution. Built once: every prompt
/// is validated against it, and nothing it holds changes (the input files' combo list is checked
/// against the input folder itself).
fn class_map() -> &'static HashMap<&'static str, Value> {
    static CLASSES: LazyLock<HashMap<&'static str, Value>> =
        LazyLock::new(|| object_info(&[]).into_iter().collect());
    &CLASSES
}

/// The input names of a class in declaration order (required inputs only: the simulator's
/// classes have no optional ones).
pub fn input_order(def: &Value) -> Vec<String> {
    def["input_order"]["required"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Sorts node ids the way people number them: numerically when they are numbers.
pub fn sort_ids(ids: &mut [String]) {
    ids.sort_by(|a, b| match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    });
}

/// A prompt that passed validation (possibly with some outputs rejected).
pub struct Accepted {
    /// The output nodes that will run (ComfyUI's `outputs_to_execute`).
    pub outputs: Vec<String>,
    /// Errors of the rejected outputs (non-empty with a 200: transcript surprise 5).
    pub node_errors: Value,
}

/// The error half of ComfyUI's 400 body: `{"error": {...}, "node_errors": {...}}`.
pub fn error_body(kind: &str, message: &str, details: &str, node_errors: Value) -> Value {
    json!({
        "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
        "node_errors": node_errors,
    })
}

/// Validates a prompt graph; `Err` is the full 400 body.
pub fn validate(prompt: &Map<String, Value>, input_dir: &Path) -> Result<Accepted, Value> {
    validate_in(class_map(), prompt, input_dir)
}

/// [`validate`] against the given node classes (the installed ones, or a test's).
pub fn validate_in(
    classes: &HashMap<&'static str, Value>,
    prompt: &Map<String, Value>,
    input_dir: &Path,
) -> Result<Accepted, Value> {
    let mut ids: Vec<String> = prompt.keys().cloned().collect();
    sort_ids(&mut ids);
    for id in &ids {
        let class = prompt[id].get("class_type").and_then(Value::as_str);
        match class {
            None => {
                return Err(error_body(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    &format!("Node ID '#{id}'"),
                    json!({}),
                ))
            }
            Some(c) if !classes.contains_key(c) => {
                return Err(error_body(
                    "invalid_prompt",
                    &format!("Cannot execute because node {c} does not exist."),
                    &format!("Node ID '#{id}'"),
                    json!({}),
                ))
            }
            Some(_) => {}
        }
    }
    let outputs: Vec<String> = ids
        .iter()
        .filter(|id| {
            let class = prompt[*id]["class_type"].as_str().unwrap_or_default();
            classes
                .get(class)
                .and_then(|d| d["output_node"].as_bool())
                .unwrap_or(false)
        })
        .cloned()
        .collect();
    if outputs.is_empty() {
        return Err(error_body(
            "prompt_no_outputs",
            "Prompt has no outputs",
            "",
            json!({}),
        ));
    }

    let mut v = Validator {
        prompt,
        classes,
        input_dir,
        done: HashMap::new(),
        order: Vec::new(),
    };
    let mut good = Vec::new();
    let mut failed: Vec<(String, Vec<Value>)> = Vec::new();
    let mut node_errors = Map::new();
    for o in &outputs {
        let ok = v.node(o);
        if ok {
            good.push(o.clone());
            continue;
        }
        failed.push((
            o.clone(),
            v.done.get(o).map(|r| r.1.clone()).unwrap_or_default(),
        ));
        // As ComfyUI does: every invalid node validated so far (with reasons) gets this output
        // appended to its dependent_outputs.
        for id in &v.order {
            let Some((valid, reasons)) = v.done.get(id) else {
                continue;
            };
            if *valid || reasons.is_empty() {
                continue;
            }
            let e = node_errors.entry(id.clone()).or_insert_with(|| {
                json!({"errors": reasons, "dependent_outputs": [], "class_type": prompt[id]["class_type"]})
            });
            if let Some(deps) = e["dependent_outputs"].as_array_mut() {
                deps.push(json!(o));
            }
        }
    }
    if good.is_empty() {
        let details: Vec<String> = failed
            .iter()
            .flat_map(|(_, reasons)| reasons.iter())
            .map(|r| {
                format!(
                    "{}: {}",
                    r["message"].as_str().unwrap_or(""),
                    r["details"].as_str().unwrap_or("")
                )
            })
            .collect();
        return Err(error_body(
            "prompt_outputs_failed_validation",
            "Prompt outputs failed validation",
            &details.join("\n"),
            Value::Object(node_errors),
        ));
    }
    Ok(Accepted {
        outputs: good,
        node_errors: Value::Object(node_errors),
    })
}

struct Validator<'a> {
    prompt: &'a Map<String, Value>,
    classes: &'a HashMap<&'static str, Value>,
    input_dir: &'a Path,
    /// node id → (valid, reasons); also breaks cycles (a node in progress counts as valid).
    done: HashMap<String, (bool, Vec<Value>)>,
    /// The order nodes were first validated in (ComfyUI iterates its dict in this order).
    order: Vec<String>,
}

impl Validator<'_> {
    fn node(&mut self, id: &str) -> bool {
        if let Some((valid, _)) = self.done.get(id) {
            return *valid;
        }
        self.done.insert(id.to_string(), (true, Vec::new()));
        self.order.push(id.to_string());
        let (valid, reasons) = self.check(id);
        self.done.insert(id.to_string(), (valid, reasons));
        valid
    }

    fn check(&mut self, id: &str) -> (bool, Vec<Value>) {
        let node = &self.prompt[id];
        let class = node["class_type"].as_str().unwrap_or_default();
        let Some(def) = self.classes.get(class) else {
            return (false, Vec::new());
        };
        let empty = Map::new();
        let inputs = node
            .get("inputs")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let mut errors = Vec::new();
        let mut valid = true;
        for name in input_order(def) {
            let spec = &def["input"]["required"][&name];
            let Some(val) = inputs.get(&name) else {
                errors.push(reason(
                    "required_input_missing",
                    "Required input is missing",
                    &name,
                    json!({"input_name": name}),
                ));
                continue;
            };
            if let Value::Array(link) = val {
                if link.len() != 2 {
                    errors.push(reason(
                        "bad_linked_input",
                        "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                        &name,
                        json!({"input_name": name, "input_config": spec, "received_value": val}),
                    ));
                    continue;
                }
                let from = match &link[0] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let Some(from_node) = self.prompt.get(&from) else {
                    let key = if link[0].is_string() {
                        format!("'{from}'")
                    } else {
                        from.clone()
                    };
                    // The KeyError ComfyUI raises at `prompt[o_id]['class_type']`.
                    return (false, vec![exception("KeyError", &key)]);
                };
                let from_class = from_node["class_type"].as_str().unwrap_or_default();
                let outs = self
                    .classes
                    .get(from_class)
                    .map(|d| d["output"].clone())
                    .unwrap_or(json!([]));
                let slot = link[1].as_u64().map(|s| s as usize);
                let Some(received) = slot.and_then(|s| outs.get(s)).and_then(Value::as_str) else {
                    return (
                        false,
                        vec![exception("IndexError", "tuple index out of range")],
                    );
                };
                let wanted = spec[0].as_str().unwrap_or("*");
                if wanted != "*" && received != wanted {
                    let details =
                        format!("{name}, received_type({received}) mismatch input_type({wanted})");
                    errors.push(reason(
                        "return_type_mismatch",
                        "Return type mismatch between linked nodes",
                        &details,
                        json!({"input_name": name, "input_config": spec, "received_type": received,
                               "linked_node": val}),
                    ));
                    continue;
                }
                if !self.node(&from) {
                    valid = false;
                }
                continue;
            }
            if let Some(e) = check_constant(class, &name, spec, val) {
                errors.push(e);
            }
        }
        if class == "LoadImage" {
            // LoadImage.VALIDATE_INPUTS replaces the combo check (so "sub/x.png" is accepted).
            if let Some(image) = inputs.get("image").and_then(Value::as_str) {
                if !annotated_exists(self.input_dir, image) {
                    errors.push(reason(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        &format!("image - Invalid image file: {image}"),
                        json!({"input_name": "image"}),
                    ));
                }
            }
        }
        (valid && errors.is_empty(), errors)
    }
}

/// Whether `name` (optionally suffixed ` [input]`/` [output]`/` [temp]`) exists as a file; the
/// directory argument is the input dir, whose siblings are output/ and temp/.
pub fn annotated_exists(input_dir: &Path, name: &str) -> bool {
    resolve_annotated(input_dir, name)
        .map(|p| p.is_file())
        .unwrap_or(false)
}

/// Resolves a LoadImage value to a path under the data dir; `None` for paths that escape it.
pub fn resolve_annotated(input_dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    let root = input_dir.parent()?;
    let (name, dir) = if let Some(n) = name.strip_suffix(" [output]") {
        (n, root.join("output"))
    } else if let Some(n) = name.strip_suffix(" [temp]") {
        (n, root.join("temp"))
    } else if let Some(n) = name.strip_suffix(" [input]") {
        (n, input_dir.to_path_buf())
    } else {
        (name, input_dir.to_path_buf())
    };
    if name.is_empty() || name.starts_with('/') || name.split(['/', '\\']).any(|c| c == "..") {
        return None;
    }
    Some(dir.join(name))
}

fn reason(kind: &str, message: &str, details: &str, extra: Value) -> Value {
    json!({"type": kind, "message": message, "details": details, "extra_info": extra})
}

fn exception(kind: &str, details: &str) -> Value {
    reason(
        "exception_during_validation",
        "Exception when validating node",
        details,
        json!({
            "exception_type": kind,
            "traceback": [
                "  File \"<root>/src/execution.py\", line 1010, in validate_prompt\n    m = await validate_inputs(prompt_id, prompt, o, validated)\n        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
                "  File \"<root>/src/execution.py\", line 788, in validate_inputs\n    o_class_type = prompt[o_id]['class_type']\n                   ~~~~~~^^^^^^\n",
            ],
        }),
    )
}

/// Python-like `repr`/`str` of a float: `0.0`, `0.5`.
pub fn py_float(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// Python `str()` of a JSON scalar, used in messages.
fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        Value::Number(n) if n.is_f64() => py_float(n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    }
}

fn py_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Object(_) => "dict",
        Value::Array(_) => "list",
        Value::Bool(_) => "bool",
        Value::Number(_) => "int",
        Value::String(_) => "str",
    }
}

/// Python `int(v)`: the number or the message of the ValueError/TypeError it raises.
fn py_int(v: &Value) -> Result<i128, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.trunc() as i128)
            })
            .ok_or_else(|| "cannot convert float infinity to integer".to_string()),
        Value::Bool(b) => Ok(i128::from(*b)),
        Value::String(s) => s
            .trim()
            .replace('_', "")
            .parse::<i128>()
            .map_err(|_| format!("invalid literal for int() with base 10: '{s}'")),
        other => Err(format!(
            "int() argument must be a string, a bytes-like object or a real number, not '{}'",
            py_type(other)
        )),
    }
}

/// Python `float(v)`.
fn py_f64(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| "bad number".to_string()),
        Value::Bool(b) => Ok(f64::from(u8::from(*b))),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("could not convert string to float: '{s}'")),
        other => Err(format!(
            "float() argument must be a string or a real number, not '{}'",
            py_type(other)
        )),
    }
}

/// Checks one widget (non-link) value against its spec; `None` when it is fine.
fn check_constant(class: &str, name: &str, spec: &Value, val: &Value) -> Option<Value> {
    let opts = &spec[1];
    match &spec[0] {
        Value::String(t) if t == "INT" || t == "FLOAT" => {
            let converted = if t == "INT" {
                py_int(val).map(|i| {
                    // Keep u64 seeds exact in the echoed value.
                    let shown = u64::try_from(i).map_or_else(|_| json!(i as i64), |u| json!(u));
                    (i as f64, shown, i.to_string())
                })
            } else {
                py_f64(val).map(|f| (f, json!(f), py_float(f)))
            };
            let (num, shown, text) = match converted {
                Ok(c) => c,
                Err(msg) => {
                    return Some(reason(
                        "invalid_input_type",
                        &format!("Failed to convert an input value to a {t} value"),
                        &format!("{name}, {}, {msg}", py_str(val)),
                        json!({"input_name": name, "input_config": spec, "received_value": val,
                               "exception_message": msg}),
                    ));
                }
            };
            if let Some(min) = opts.get("min").and_then(Value::as_f64) {
                if num < min {
                    return Some(reason(
                        "value_smaller_than_min",
                        &format!("Value {text} smaller than min of {}", py_str(&opts["min"])),
                        name,
                        json!({"input_name": name, "input_config": spec, "received_value": shown}),
                    ));
                }
            }
            if let Some(max) = opts.get("max").and_then(Value::as_f64) {
                if num > max {
                    return Some(reason(
                        "value_bigger_than_max",
                        &format!("Value {text} bigger than max of {}", py_str(&opts["max"])),
                        name,
                        json!({"input_name": name, "input_config": spec, "received_value": shown}),
                    ));
                }
            }
            None
        }
        Value::String(t) if t == "STRING" || t == "BOOLEAN" => None,
        Value::Array(items) => {
            if class == "LoadImage" {
                return None;
            }
            if items.contains(val) {
                return None;
            }
            let list: Vec<String> = items.iter().map(|i| format!("'{}'", py_str(i))).collect();
            Some(reason(
                "value_not_in_list",
                "Value not in list",
                &format!("{name}: '{}' not in [{}]", py_str(val), list.join(", ")),
                json!({"input_name": name, "input_config": spec, "received_value": val}),
            ))
        }
        // A constant where a link type (IMAGE, MODEL, ...) is expected: ComfyUI lets it
        // through validation and the node fails at run time; the simulator does the same.
        _ => None,
    }
}

/// The ids of every node that the given outputs need, in execution order (inputs first).
pub fn execution_order(prompt: &Map<String, Value>, outputs: &[String]) -> Vec<String> {
    let classes = class_map();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        id: &str,
        prompt: &Map<String, Value>,
        classes: &HashMap<&'static str, Value>,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(id.to_string()) {
            return;
        }
        let Some(node) = prompt.get(id) else { return };
        let class = node["class_type"].as_str().unwrap_or_default();
        if let Some(def) = classes.get(class) {
            for name in input_order(def) {
                if let Some(Value::Array(link)) = node["inputs"].get(&name) {
                    if let Some(from) = link.first() {
                        let from = from
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| from.to_string());
                        visit(&from, prompt, classes, seen, order);
                    }
                }
            }
        }
        order.push(id.to_string());
    }
    for o in outputs {
        visit(o, prompt, classes, &mut seen, &mut order);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn int_strings_that_parse_are_accepted_like_python_int() {
        let dir = std::env::temp_dir().join("comfy-sim-none/input");
        let g = graph(json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": "64", "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
        }));
        assert!(validate(&g, &dir).is_ok());
    }

    #[test]
    fn value_above_max_is_rejected() {
        let dir = std::env::temp_dir().join("comfy-sim-none/input");
        let g = graph(json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 20000, "height": 64, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
        }));
        let body = validate(&g, &dir).err().expect("rejected");
        assert_eq!(
            body["node_errors"]["1"]["errors"][0]["type"],
            "value_bigger_than_max"
        );
        assert_eq!(
            body["node_errors"]["1"]["errors"][0]["message"],
            "Value 20000 bigger than max of 16384"
        );
    }

    #[test]
    fn execution_order_puts_inputs_first() {
        let g = graph(json!({
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        }));
        assert_eq!(execution_order(&g, &["3".into()]), vec!["1", "2", "3"]);
    }
}

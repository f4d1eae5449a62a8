//! What a development ComfyUI offers, read over HTTP (`publish --from URL`): its versions and
//! devices (`/system_stats`), node classes and custom node packages (`/object_info`), and model files
//! (`/models`, `/models/{folder}`); and [`missing`], what a release needs that it lacks.
//!
//! The server is untrusted input even when an operator names it: every answer is bounded (the
//! client's read limit per call, the counts below, [`READ_TIMEOUT`] in all), every name is checked
//! before it is kept or put in a URL, and any failure is an [`EnvironmentError`] naming the call.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::needs::{ModelRef, Needs};
use crate::comfy::ComfyClient;

/// Longest one call to the dev server may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest reading the whole environment may take (one call per model folder).
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Most node classes kept (a ComfyUI with many custom nodes has a few thousand).
pub const MAX_NODE_CLASSES: usize = 100_000;
/// Most model folders read.
pub const MAX_FOLDERS: usize = 256;
/// Most files kept over all model folders.
pub const MAX_MODEL_FILES: usize = 200_000;
/// Most devices kept.
pub const MAX_DEVICES: usize = 64;
/// Longest name kept (node class, module, model file, version string).
pub const MAX_NAME_CHARS: usize = 1024;

/// Why the environment could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvironmentError {
    /// The URL is not one comfyd calls: http(s), with a host, without credentials.
    #[error("{0}")]
    BadUrl(String),
    /// A call failed, or answered something comfyd does not keep.
    #[error("{call}: {detail}")]
    Call {
        /// The call, e.g. `GET /object_info`.
        call: String,
        detail: String,
    },
}

impl EnvironmentError {
    fn call(call: &str, detail: impl Into<String>) -> EnvironmentError {
        EnvironmentError::Call {
            call: call.to_string(),
            detail: detail.into(),
        }
    }
}

/// One device of the dev server (`/system_stats` `devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Device {
    pub name: String,
    /// `cuda`, `cpu`, `mps`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub vram_total: Option<u64>,
}

/// What a development ComfyUI offered when a release was published from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Environment {
    pub comfyui_version: Option<String>,
    pub python_version: Option<String>,
    pub pytorch_version: Option<String>,
    pub devices: Vec<Device>,
    /// How many node classes `/object_info` listed.
    pub node_class_count: usize,
    /// Every node class, sorted.
    pub node_classes: BTreeSet<String>,
    /// The custom node packages the classes come from (`custom_nodes.<folder>`), sorted.
    pub custom_nodes: BTreeSet<String>,
    /// Model folder → its files (as ComfyUI names them, with subfolders).
    pub models: BTreeMap<String, BTreeSet<String>>,
}

/// Checks a dev server URL given by an operator: http or https, a host, no user or password, no
/// query or fragment. Private addresses are allowed (a dev ComfyUI usually is one): this is admin
/// input, not a client's URL (those go through `outbound`).
pub fn check_url(raw: &str) -> Result<url::Url, EnvironmentError> {
    let bad = |why: &str| EnvironmentError::BadUrl(format!("{why}, e.g. http://dev-comfyui:8188"));
    let url = url::Url::parse(raw.trim()).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must be an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry a user name or password"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not carry a query or fragment"));
    }
    Ok(url)
}

/// Reads the environment of the ComfyUI at `url` (checked with [`check_url`]).
pub async fn read(url: &str) -> Result<Environment, EnvironmentError> {
    let url = check_url(url)?;
    let client = ComfyClient::new(url.as_str(), CALL_TIMEOUT);
    match tokio::time::timeout(READ_TIMEOUT, read_from(&client)).await {
        Ok(result) => result,
        Err(_) => Err(EnvironmentError::call(
            "reading the environment",
            format!("took longer than {} s", READ_TIMEOUT.as_secs()),
        )),
    }
}

/// Reads the environment through a client already made (a backend's, `check`): every call bounded
/// by the client's timeout and read limit; the caller bounds the whole.
pub async fn read_from(client: &ComfyClient) -> Result<Environment, EnvironmentError> {
    let mut env = Environment::default();
    let stats = client
        .system_stats()
        .await
        .map_err(|e| EnvironmentError::call("GET /system_stats", e.to_string()))?;
    apply_system_stats(&mut env, &stats)?;
    let info = client
        .object_info()
        .await
        .map_err(|e| EnvironmentError::call("GET /object_info", e.to_string()))?;
    apply_object_info(&mut env, &info)?;
    let folders = client
        .model_folders()
        .await
        .map_err(|e| EnvironmentError::call("GET /models", e.to_string()))?;
    let mut total = 0;
    for folder in model_folders(&folders)? {
        let call = format!("GET /models/{folder}");
        let Some(files) = client
            .models_in(&folder)
            .await
            .map_err(|e| EnvironmentError::call(&call, e.to_string()))?
        else {
            continue;
        };
        let files = model_files(&call, &files)?;
        total += files.len();
        if total > MAX_MODEL_FILES {
            return Err(EnvironmentError::call(
                &call,
                format!("more than {MAX_MODEL_FILES} model files in all"),
            ));
        }
        env.models.insert(folder, files);
    }
    Ok(env)
}

/// A name or version string as kept: at most [`MAX_NAME_CHARS`], no control characters.
fn checked(call: &str, what: &str, s: &str) -> Result<String, EnvironmentError> {
    if s.is_empty() || s.chars().count() > MAX_NAME_CHARS || s.chars().any(char::is_control) {
        let shown: String = s.chars().take(40).collect();
        return Err(EnvironmentError::call(
            call,
            format!("{what} {shown:?} is empty, longer than {MAX_NAME_CHARS} characters or holds control characters"),
        ));
    }
    Ok(s.to_string())
}

fn optional_text(
    call: &str,
    what: &str,
    v: Option<&Value>,
) -> Result<Option<String>, EnvironmentError> {
    match v.and_then(Value::as_str) {
        Some(s) => checked(call, what, s).map(Some),
        None => Ok(None),
    }
}

/// Versions and devices from a `/system_stats` answer.
pub fn apply_system_stats(env: &mut Environment, stats: &Value) -> Result<(), EnvironmentError> {
    const CALL: &str = "GET /system_stats";
    let system = stats
        .get("system")
        .filter(|s| s.is_object())
        .ok_or_else(|| EnvironmentError::call(CALL, "no `system` object"))?;
    env.comfyui_version = optional_text(CALL, "comfyui_version", system.get("comfyui_version"))?;
    env.python_version = optional_text(CALL, "python_version", system.get("python_version"))?;
    env.pytorch_version = optional_text(CALL, "pytorch_version", system.get("pytorch_version"))?;
    let devices = stats
        .get("devices")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if devices.len() > MAX_DEVICES {
        return Err(EnvironmentError::call(
            CALL,
            format!("more than {MAX_DEVICES} devices"),
        ));
    }
    env.devices = devices
        .iter()
        .map(|d| {
            Ok(Device {
                name: optional_text(CALL, "device name", d.get("name"))?.unwrap_or_default(),
                kind: optional_text(CALL, "device type", d.get("type"))?.unwrap_or_default(),
                vram_total: d.get("vram_total").and_then(Value::as_u64),
            })
        })
        .collect::<Result<_, EnvironmentError>>()?;
    Ok(())
}

/// Node classes and custom node packages from an `/object_info` answer.
pub fn apply_object_info(env: &mut Environment, info: &Value) -> Result<(), EnvironmentError> {
    const CALL: &str = "GET /object_info";
    let classes = info
        .as_object()
        .ok_or_else(|| EnvironmentError::call(CALL, "not a JSON object of node classes"))?;
    if classes.len() > MAX_NODE_CLASSES {
        return Err(EnvironmentError::call(
            CALL,
            format!("more than {MAX_NODE_CLASSES} node classes"),
        ));
    }
    env.node_class_count = classes.len();
    for (class, entry) in classes {
        env.node_classes.insert(checked(CALL, "node class", class)?);
        if let Some(module) = entry.get("python_module").and_then(Value::as_str) {
            // `custom_nodes.<folder>` (a package) or `custom_nodes.<file>.py`: keep the package.
            let mut parts = module.split('.');
            if parts.next() == Some("custom_nodes") {
                if let Some(package) = parts.next().filter(|p| !p.is_empty()) {
                    let package = checked(CALL, "python_module", package)?;
                    env.custom_nodes.insert(format!("custom_nodes.{package}"));
                }
            }
        }
    }
    Ok(())
}

/// Whether a model folder's name is one comfyd puts in a URL: `[A-Za-z0-9_.-]`, 1 to 128, not `.`
/// or `..`.
fn is_folder_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The folder names of a `/models` answer.
pub fn model_folders(folders: &Value) -> Result<Vec<String>, EnvironmentError> {
    const CALL: &str = "GET /models";
    let list = folders
        .as_array()
        .ok_or_else(|| EnvironmentError::call(CALL, "not a JSON array of folder names"))?;
    if list.len() > MAX_FOLDERS {
        return Err(EnvironmentError::call(
            CALL,
            format!("more than {MAX_FOLDERS} model folders"),
        ));
    }
    let mut out = BTreeSet::new();
    for v in list {
        match v.as_str() {
            Some(name) if is_folder_name(name) => {
                out.insert(name.to_string());
            }
            _ => {
                let shown: String = v.to_string().chars().take(40).collect();
                return Err(EnvironmentError::call(
                    CALL,
                    format!("folder name {shown} is not [A-Za-z0-9_.-]{{1,128}}"),
                ));
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The file names of a `/models/{folder}` answer.
pub fn model_files(call: &str, files: &Value) -> Result<BTreeSet<String>, EnvironmentError> {
    let list = files
        .as_array()
        .ok_or_else(|| EnvironmentError::call(call, "not a JSON array of file names"))?;
    if list.len() > MAX_MODEL_FILES {
        return Err(EnvironmentError::call(
            call,
            format!("more than {MAX_MODEL_FILES} files"),
        ));
    }
    list.iter()
        .map(|v| match v.as_str() {
            Some(name) => checked(call, "file name", name),
            None => Err(EnvironmentError::call(call, "a file name is not a string")),
        })
        .collect()
}

/// What a release needs that an environment lacks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Missing {
    /// Node classes the graphs use that the server does not have.
    pub node_classes: BTreeSet<String>,
    /// Model files the graphs name that are in none of the server's model folders.
    pub models: BTreeSet<ModelRef>,
}

impl Missing {
    /// True when the environment has everything.
    pub fn is_empty(&self) -> bool {
        self.node_classes.is_empty() && self.models.is_empty()
    }

    /// One readable line per missing thing.
    pub fn problems(&self) -> Vec<String> {
        let classes = self
            .node_classes
            .iter()
            .map(|c| format!("node class `{c}` is not installed"));
        let models = self.models.iter().map(|m| {
            format!(
                "model file `{}` (input `{}`) is in none of the model folders",
                m.file, m.input
            )
        });
        classes.chain(models).collect()
    }
}

/// What `needs` asks for that `env` does not offer. A model counts as present when any model folder
/// lists its file (the input name is only a hint of the folder; custom loaders use their own).
pub fn missing(needs: &Needs, env: &Environment) -> Missing {
    let node_classes = needs
        .node_classes
        .iter()
        .filter(|c| !env.node_classes.contains(*c))
        .cloned()
        .collect();
    let models = needs
        .models
        .iter()
        .filter(|m| !env.models.values().any(|files| files.contains(&m.file)))
        .cloned()
        .collect();
    Missing {
        node_classes,
        models,
    }
}

//! What the simulated server has installed: which node classes are left out of `/object_info`
//! (`--without-node`, `--without-cleaner`) and which model files each folder holds (`/models/{folder}`,
//! `--model`, `--without-model`). Set once at start by `main` (before anything reads the node
//! classes: they are built once); the in-process tests use [`Catalog::default`], today's server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use crate::nodes::{CHECKPOINTS, CLEAN_CLASS};

/// The folders `GET /models` lists, as ComfyUI 0.3.64 does (whether or not they hold files).
pub const MODEL_FOLDERS: [&str; 20] = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
];

/// The folders `GET /models/{folder}` answers for by default (the others are 404, as recorded).
const DEFAULT_FILLED: [&str; 8] = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "embeddings",
    "upscale_models",
];

/// The installed node classes and model files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// Node classes absent from `/object_info` (and so refused in prompts).
    pub without_nodes: BTreeSet<String>,
    /// Folder → its files, for the folders `/models/{folder}` answers for.
    pub models: BTreeMap<String, BTreeSet<String>>,
}

impl Default for Catalog {
    fn default() -> Catalog {
        let mut models: BTreeMap<String, BTreeSet<String>> = DEFAULT_FILLED
            .iter()
            .map(|f| (f.to_string(), BTreeSet::new()))
            .collect();
        models.insert(
            "checkpoints".into(),
            CHECKPOINTS.iter().map(|c| c.to_string()).collect(),
        );
        Catalog {
            without_nodes: BTreeSet::new(),
            models,
        }
    }
}

/// `FOLDER/FILE` split at the first `/` (the file may hold subfolders); both parts non-empty.
pub fn parse_model(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('/') {
        Some((folder, file)) if !folder.is_empty() && !file.is_empty() => {
            Ok((folder.to_string(), file.to_string()))
        }
        _ => Err(format!(
            "{raw:?} is not FOLDER/FILE, e.g. checkpoints/model.safetensors"
        )),
    }
}

impl Catalog {
    /// Today's defaults changed by the command line's flags.
    pub fn from_flags(
        without_nodes: &[String],
        without_cleaner: bool,
        models: &[String],
        without_models: &[String],
    ) -> Result<Catalog, String> {
        let mut c = Catalog {
            without_nodes: without_nodes.iter().cloned().collect(),
            ..Catalog::default()
        };
        if without_cleaner {
            c.without_nodes.insert(CLEAN_CLASS.to_string());
        }
        for m in models {
            let (folder, file) = parse_model(m)?;
            c.models.entry(folder).or_default().insert(file);
        }
        for m in without_models {
            let (folder, file) = parse_model(m)?;
            let removed = c.models.get_mut(&folder).is_some_and(|f| f.remove(&file));
            if !removed {
                return Err(format!("--without-model {m}: no such default model"));
            }
        }
        Ok(c)
    }

    /// Whether a node class is installed.
    pub fn has_node(&self, class: &str) -> bool {
        !self.without_nodes.contains(class)
    }

    /// The folders `GET /models` lists: ComfyUI's, then any other a `--model` added.
    pub fn folders(&self) -> Vec<String> {
        let mut out: Vec<String> = MODEL_FOLDERS.iter().map(|f| f.to_string()).collect();
        for f in self.models.keys() {
            if !out.contains(f) {
                out.push(f.clone());
            }
        }
        out
    }

    /// The files of a folder (`None`: `/models/{folder}` is a 404).
    pub fn files(&self, folder: &str) -> Option<Vec<String>> {
        if folder == "checkpoints" && self.models.contains_key(folder) {
            return Some(self.checkpoints());
        }
        self.models.get(folder).map(|f| f.iter().cloned().collect())
    }

    /// The checkpoints `CheckpointLoaderSimple` offers: the `checkpoints` folder, today's order
    /// first (the recorded `/object_info` lists them so), then the added ones.
    pub fn checkpoints(&self) -> Vec<String> {
        let Some(files) = self.models.get("checkpoints") else {
            return Vec::new();
        };
        let mut out: Vec<String> = CHECKPOINTS
            .iter()
            .filter(|c| files.contains(**c))
            .map(|c| c.to_string())
            .collect();
        out.extend(
            files
                .iter()
                .filter(|f| !CHECKPOINTS.contains(&f.as_str()))
                .cloned(),
        );
        out
    }
}

static CATALOG: OnceLock<Catalog> = OnceLock::new();

/// Sets the catalog; only `main` calls it, once, before serving.
pub fn set(c: Catalog) {
    let _ = CATALOG.set(c);
}

/// The catalog in force (the defaults until [`set`]).
pub fn get() -> &'static Catalog {
    CATALOG.get_or_init(Catalog::default)
}

//! What a release needs from a backend, read from its graphs: every node class, and every model file
//! an input names. Pure; the dev server's side is [`super::environment`].

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::workflow::{Graph, WorkflowSet};

/// File extensions ComfyUI loads models from (its `supported_pt_extensions`, plus the GGUF and ONNX
/// files common custom loaders take). A string input ending in one of them names a model file.
pub const MODEL_EXTENSIONS: [&str; 11] = [
    "safetensors",
    "sft",
    "ckpt",
    "pt",
    "pt2",
    "pth",
    "bin",
    "pkl",
    "gguf",
    "onnx",
    "engine",
];

/// One model file a graph names, with the input it came from (`ckpt_name`, `lora_name`, ...: a hint
/// of the model folder it lives in).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct ModelRef {
    /// The input name that holds it, e.g. `ckpt_name`.
    pub input: String,
    /// The file as the graph names it (may include a subfolder: `sd15/model.safetensors`).
    pub file: String,
}

/// The node classes and model files a set of graphs uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Needs {
    /// Every `class_type`, sorted.
    pub node_classes: BTreeSet<String>,
    /// Every model file an input names, sorted.
    pub models: BTreeSet<ModelRef>,
}

impl Needs {
    /// What every workflow of the set needs.
    pub fn of_set(set: &WorkflowSet) -> Needs {
        let mut needs = Needs::default();
        for w in set.iter() {
            needs.add_graph(&w.graph);
        }
        needs
    }

    /// What one graph needs.
    pub fn of_graph(graph: &Graph) -> Needs {
        let mut needs = Needs::default();
        needs.add_graph(graph);
        needs
    }

    fn add_graph(&mut self, graph: &Graph) {
        for node in graph.values() {
            if let Some(class) = node.get("class_type").and_then(Value::as_str) {
                self.node_classes.insert(class.to_string());
            }
            let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
                continue;
            };
            for (input, value) in inputs {
                // Links are arrays; only literal strings name files.
                if let Some(file) = value.as_str().filter(|v| is_model_file(v)) {
                    self.models.insert(ModelRef {
                        input: input.clone(),
                        file: file.to_string(),
                    });
                }
            }
        }
    }
}

/// Whether a string names a model file, by its extension (case-insensitive).
pub fn is_model_file(value: &str) -> bool {
    let Some((stem, ext)) = value.rsplit_once('.') else {
        return false;
    };
    !stem.is_empty()
        && !ext.contains(['/', '\\'])
        && MODEL_EXTENSIONS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(ext))
}

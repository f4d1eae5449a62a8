//! Workflows as data: any ComfyUI graph exported in API format becomes a typed endpoint by dropping it,
//! with a small TOML manifest, into `workflows/` (format: `workflows/README.md`). No code per workflow.
//!
//! This module owns the whole life of a workflow definition:
//! - [`WorkflowSet::load_dir`] reads every manifest at boot and checks it against its graph
//!   ([`manifest`]); one broken workflow fails the whole directory, with every problem listed.
//! - [`Workflow::validate`] checks a client's `params` object and resolves defaults and random seeds
//!   ([`params`], [`image`] for image inputs, [`probe`] for their headers and sizes).
//! - [`Workflow::render`] produces the graph for one task ([`render`]); the caller uploads image inputs
//!   and sets their names with [`set_image`].
//! - [`Workflow::json_schema`] / [`Workflow::describe`] document the endpoint ([`schema`]).
//! - [`check_against_object_info`] compares the set with a live backend's `/object_info` ([`check`]).
//!
//! The HTTP routes and the dispatcher only call this API; they never look inside a manifest.

mod catalog;
mod check;
mod image;
mod manifest;
mod params;
mod probe;
mod render;
mod schema;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use catalog::{Catalog, Served};
pub use check::check_against_object_info;
pub use image::{set_image, sniff_image, ImageParam, ImageSource};
pub use params::{
    list_unknown, FieldError, Param, ParamKind, Resolved, MAX_LISTED_ERRORS, MAX_SEED,
};
pub use probe::{probe, ImageInfo, ImageLimits, ProbeError};

/// A graph in ComfyUI API format: node id → `{class_type, inputs, _meta?}`.
pub type Graph = serde_json::Map<String, Value>;

/// One input of one node that a parameter sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Node id in the graph (the key of the node object, e.g. `"6"`).
    pub node: String,
    /// Input name of that node (e.g. `"text"`).
    pub input: String,
}

/// Every workflow of a directory, by name. Immutable once loaded; share it as `Arc<WorkflowSet>`.
#[derive(Debug, Clone, Default)]
pub struct WorkflowSet {
    by_name: BTreeMap<String, Arc<Workflow>>,
}

impl WorkflowSet {
    /// Loads every `*.toml` manifest in `dir` (not recursive) with its graph, and checks each manifest
    /// against its graph. Fails if any workflow is broken, listing every problem of every file.
    /// `*.json` files without a manifest are ignored; an empty directory gives an empty set.
    pub fn load_dir(dir: &Path) -> Result<WorkflowSet, LoadError> {
        WorkflowSet::load_dir_with_sources(dir).map(|(set, _)| set)
    }

    /// [`WorkflowSet::load_dir`], also giving back the texts it loaded, sorted by name (what a
    /// release stores): the same files, read once, so a snapshot is exactly what would be served.
    pub fn load_dir_with_sources(
        dir: &Path,
    ) -> Result<(WorkflowSet, Vec<WorkflowSources>), LoadError> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            LoadError::one(format!("{}: cannot read directory: {e}", dir.display()))
        })?;
        let mut manifests = Vec::new();
        let mut problems = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => {
                    let path = entry.path();
                    if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
                        manifests.push(path);
                    }
                }
                Err(e) => problems.push(format!("{}: cannot read directory: {e}", dir.display())),
            }
        }
        // Sorted so that error listings are stable from one run to the next.
        manifests.sort();

        let mut by_name = BTreeMap::new();
        let mut sources = Vec::new();
        for path in manifests {
            match manifest::load_file_with_sources(&path) {
                Ok((workflow, texts)) => {
                    by_name.insert(workflow.name.clone(), Arc::new(workflow));
                    sources.push(WorkflowSources {
                        name: texts.stem,
                        manifest: texts.manifest,
                        graph: texts.graph,
                    });
                }
                Err(mut errs) => problems.append(&mut errs),
            }
        }
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        if problems.is_empty() {
            Ok((WorkflowSet { by_name }, sources))
        } else {
            Err(LoadError { problems })
        }
    }

    /// Builds a set from workflows made elsewhere (tests, [`Workflow::from_sources`]).
    /// A later workflow with the same name replaces an earlier one.
    pub fn from_workflows(workflows: impl IntoIterator<Item = Workflow>) -> WorkflowSet {
        let by_name = workflows
            .into_iter()
            .map(|w| (w.name.clone(), Arc::new(w)))
            .collect();
        WorkflowSet { by_name }
    }

    /// The workflow called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Arc<Workflow>> {
        self.by_name.get(name)
    }

    /// Every workflow, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Workflow>> {
        self.by_name.values()
    }

    /// How many workflows the set holds.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when the set holds no workflow.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The texts one workflow was loaded from: its manifest (TOML) and its graph (API-format JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowSources {
    /// The manifest's file stem, which a loaded workflow's name equals.
    pub name: String,
    /// The manifest, as written.
    pub manifest: String,
    /// The graph the manifest names, as written.
    pub graph: String,
}

/// Why a directory of workflows could not be loaded. Holds every problem found, one per line when
/// displayed, each naming the file, the parameter or node, and what is wrong, e.g.
/// `workflows/x.toml: param `steps`: default 0 is below min 1`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// One readable line per problem.
    pub problems: Vec<String>,
}

impl LoadError {
    fn one(problem: String) -> LoadError {
        LoadError {
            problems: vec![problem],
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

/// One workflow: a ComfyUI graph plus the typed parameters that may change it.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// Name of the workflow, equal to its manifest's file stem (`[a-z0-9_-]+`).
    pub name: String,
    /// One-line description from the manifest.
    pub description: String,
    /// The graph as exported, before any parameter is applied.
    pub graph: Graph,
    /// The parameters, in manifest order.
    pub params: Vec<Param>,
    /// Names accepted in a body and dropped (the manifest's `ignored`).
    pub ignored: Vec<String>,
    /// Ids of the output nodes whose files are collected.
    pub output_nodes: Vec<String>,
    /// The manifest's `[smoke]` params (a quick run), already checked with [`Workflow::validate`].
    pub smoke: Option<Value>,
}

impl Workflow {
    /// Builds a workflow from a manifest's and a graph's text, with the same checks as
    /// [`WorkflowSet::load_dir`]. `name` stands for the file stem; problems are reported
    /// against `<name>.toml`.
    pub fn from_sources(
        name: &str,
        manifest_toml: &str,
        graph_json: &str,
    ) -> Result<Workflow, LoadError> {
        manifest::from_sources(&format!("{name}.toml"), name, manifest_toml, graph_json)
            .map_err(|problems| LoadError { problems })
    }

    /// The parameter called `name`, if any.
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Checks the client's params object. The error lists EVERY bad field (missing, unknown, wrong
    /// type, out of range, not in enum, bad base64 / not an image): nothing is half-accepted.
    /// `null` (as the whole object or as a value) counts as absent.
    pub fn validate(&self, params: &Value) -> Result<Resolved, Vec<FieldError>> {
        params::validate(&self.params, &self.ignored, params)
    }

    /// The graph for one task: each resolved value set as a JSON value at every target of its param,
    /// and every node with a literal `filename_prefix` input given
    /// `comfyd/<task_id>/<last path segment of the original prefix>`, so a task's outputs are unique to
    /// it and land in their own subfolder. Image params are NOT set here (see [`set_image`]).
    /// `task_id` must be path-safe (a uuid is).
    pub fn render(&self, resolved: &Resolved, task_id: &str) -> Graph {
        render::render(self, resolved, task_id)
    }

    /// The params as a JSON Schema (draft 2020-12) object.
    pub fn json_schema(&self) -> Value {
        schema::json_schema(self)
    }

    /// `{name, description, params: <json_schema>, outputs: [node ids]}` for the API's listing.
    pub fn describe(&self) -> Value {
        schema::describe(self)
    }
}

//! Releases: an immutable snapshot of the draft (the workflows folder) and what it needs from a
//! backend. Pure data and pure checks; storing a release is `db::releases`, publishing it is the
//! operator surface (`cli::release`, `routes::releases`), which call this module.
//!
//! - [`Snapshot::of_dir`] reads the draft with the very loader the daemon serves from
//!   ([`WorkflowSet::load_dir_with_sources`]), so a snapshot holds exactly what would be served, and
//!   a draft that would not load is refused with the same problems;
//! - [`Snapshot::content_hash`] names the content alone (not when, by whom or with which note), so
//!   publishing the same draft twice finds the release already made;
//! - [`needs`]: the node classes and model files the graphs use;
//! - [`environment`]: what a development ComfyUI offers, and [`missing`] between the two;
//! - [`publish`]: the checks before a release is stored; [`record`]: a stored release as shown;
//! - [`check`]: whether a backend can serve a release (its environment and smoke runs).
//!
//! Everything a release is lives in the database (several comfyd instances may share it, #22):
//! nothing here reads or keeps anything outside the texts it is given, besides what a ComfyUI
//! answers (`environment`, `check`) through the client it is handed.

pub mod check;
pub mod environment;
pub mod needs;
pub mod publish;
pub mod record;

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::workflow::{LoadError, Workflow, WorkflowSet, WorkflowSources};

pub use check::{check_backend, BackendCheck, CheckOptions};
pub use environment::{missing, Environment, EnvironmentError, Missing};
pub use needs::{ModelRef, Needs};
pub use publish::{prepare, Draft, PublishError};
pub use record::ReleaseRecord;

/// One workflow of a release: its name, manifest (TOML text) and graph (API-format JSON text), as
/// read from the draft.
pub type WorkflowFiles = WorkflowSources;

/// The draft's content at one moment: its files, their hash, and what they need from a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every workflow's texts, sorted by name.
    pub files: Vec<WorkflowFiles>,
    /// `sha256:<hex>` over the files only (see [`content_hash`]).
    pub content_hash: String,
    /// The node classes and model files the graphs use.
    pub needs: Needs,
}

impl Snapshot {
    /// Reads the draft in `dir`: every `*.toml` manifest and the graph it names, checked exactly as
    /// [`WorkflowSet::load_dir`] checks them (the same code), failing with the same problems.
    pub fn of_dir(dir: &Path) -> Result<Snapshot, LoadError> {
        let (set, files) = WorkflowSet::load_dir_with_sources(dir)?;
        Ok(Snapshot {
            content_hash: content_hash(&files),
            needs: Needs::of_set(&set),
            files,
        })
    }

    /// A snapshot of texts stored elsewhere (a release read back): checked as the draft would be.
    pub fn from_files(mut files: Vec<WorkflowFiles>) -> Result<Snapshot, LoadError> {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let set = workflow_set(&files)?;
        Ok(Snapshot {
            content_hash: content_hash(&files),
            needs: Needs::of_set(&set),
            files,
        })
    }

    /// The workflows of the snapshot, built from its stored texts (as a release would be served).
    pub fn workflow_set(&self) -> Result<WorkflowSet, LoadError> {
        workflow_set(&self.files)
    }

    /// The workflows' names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.files.iter().map(|f| f.name.clone()).collect()
    }
}

/// Builds the served set from a release's texts with [`Workflow::from_sources`]; every problem of
/// every workflow is listed.
pub fn workflow_set(files: &[WorkflowFiles]) -> Result<WorkflowSet, LoadError> {
    let mut workflows = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        match Workflow::from_sources(&f.name, &f.manifest, &f.graph) {
            Ok(w) => workflows.push(w),
            Err(mut e) => problems.append(&mut e.problems),
        }
    }
    if problems.is_empty() {
        Ok(WorkflowSet::from_workflows(workflows))
    } else {
        Err(LoadError { problems })
    }
}

/// `sha256:<hex>` over the files in name order: for each, its name, manifest and graph, each
/// prefixed by its length in bytes (8 bytes, big-endian), so no two different contents give the same
/// byte stream. Whatever the order `files` comes in, the same content gives the same hash.
pub fn content_hash(files: &[WorkflowFiles]) -> String {
    let mut sorted: Vec<&WorkflowFiles> = files.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut hasher = Sha256::new();
    for f in sorted {
        for part in [&f.name, &f.manifest, &f.graph] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
    }
    let digest = hasher.finalize();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests;

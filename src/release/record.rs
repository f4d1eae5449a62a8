//! A stored release as operators see it (the JSON of the API, the lines of the CLI), read back from
//! its row.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::environment::Environment;
use super::needs::Needs;
use super::WorkflowFiles;
use crate::entity::release;

/// One release: its identity, what it needs, where it was published from; `files` only when asked.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReleaseRecord {
    /// The release's number (1, 2, ...).
    pub version: i32,
    /// `sha256:<hex>` over the workflows' files: the same content gives the same hash.
    pub content_hash: String,
    pub note: Option<String>,
    /// The development ComfyUI the environment was read from.
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The workflows' names, sorted.
    pub workflows: Vec<String>,
    /// The node classes and model files the graphs use.
    pub needs: Needs,
    /// What the development ComfyUI offered, when published from one.
    pub environment: Option<Environment>,
    /// Every workflow's manifest and graph (`GET .../releases/{version}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<WorkflowFiles>>,
}

impl ReleaseRecord {
    /// The record of a row; with `with_files`, its files too. Fails only on a row whose JSON columns
    /// comfyd did not write.
    pub fn of(row: &release::Model, with_files: bool) -> Result<ReleaseRecord, serde_json::Error> {
        let files: Vec<WorkflowFiles> = serde_json::from_str(&row.files)?;
        let environment = row
            .environment
            .as_deref()
            .map(serde_json::from_str)
            .transpose()?;
        Ok(ReleaseRecord {
            version: row.version,
            content_hash: row.content_hash.clone(),
            note: row.note.clone(),
            source: row.source.clone(),
            created_at: row.created_at,
            workflows: files.iter().map(|f| f.name.clone()).collect(),
            needs: serde_json::from_str(&row.needs)?,
            environment,
            files: with_files.then_some(files),
        })
    }
}

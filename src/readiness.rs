//! Release readiness (#19): every configured backend checked against one release now, in
//! parallel, each result recorded in `backend_checks`. The check itself is `release::check`'s;
//! this module adds what it may not use (the settings' backend list, the database). Called by
//! `GET {prefix}/releases/{version}/readiness` (`routes::releases`) and `comfyd release check`
//! (`cli::release`), and, one backend at a time, by the deployer ([`check_one`], `deploy`). A
//! check made here gates nothing; a deployment's checks do (`deploy`).
//!
//! Backend URLs come from the configuration only, never from a request: a check makes comfyd call
//! them and queue prompts there.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use sea_orm::{DatabaseConnection, DbErr};
use serde::Serialize;

use crate::comfy::ComfyClient;
use crate::config::Settings;
use crate::db;
use crate::release::{
    check_backend, environment, BackendCheck, CheckOptions, Missing, Snapshot, WorkflowFiles,
};

/// Slack on top of a backend's own bounds (the environment read, each smoke run) for the calls
/// around them (queueing, cancelling a run that overran).
const SLACK: Duration = Duration::from_secs(30);

/// One backend's readiness for a release, as answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BackendReadiness {
    /// The backend's name: its configured URL without a trailing `/`.
    pub backend: String,
    /// It answered, has every node class and model file the release uses, and every smoke input
    /// ran. Not yet used to route.
    pub ready: bool,
    /// Why not, one line each.
    pub reasons: Vec<String>,
    /// What it lacks of what the release needs.
    pub missing: Missing,
    pub comfyui_version: Option<String>,
    pub checked_at: DateTime<Utc>,
}

/// Every configured backend's readiness for one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// The release's version.
    pub release: i32,
    /// In the configuration's order.
    pub backends: Vec<BackendReadiness>,
}

impl Readiness {
    /// True when every backend is ready.
    pub fn all_ready(&self) -> bool {
        self.backends.iter().all(|b| b.ready)
    }
}

/// Why readiness could not be told.
#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("no release {0}")]
    NotFound(i32),
    #[error(transparent)]
    Db(#[from] DbErr),
    /// A stored release comfyd cannot read back (not one it wrote).
    #[error("release {version} as stored does not load: {detail}")]
    Stored { version: i32, detail: String },
}

/// Checks every backend of `settings` against release `version`, records each result, and
/// answers them.
pub async fn check_release(
    db: &DatabaseConnection,
    settings: &Settings,
    version: i32,
    options: CheckOptions,
) -> Result<Readiness, ReadinessError> {
    let row = db::releases::get(db, version)
        .await?
        .ok_or(ReadinessError::NotFound(version))?;
    let snapshot = snapshot_of(&row)?;
    let checks = settings
        .comfyui
        .endpoints
        .iter()
        .map(|url| check_one(settings, &snapshot, url, options));
    let results = join_all(checks).await;
    let mut backends = Vec::with_capacity(results.len());
    for (backend, check) in results {
        db::backend_checks::insert(db, version, &backend, &check).await?;
        backends.push(BackendReadiness {
            backend,
            ready: check.passed,
            reasons: check.reasons,
            missing: check.missing,
            comfyui_version: check.comfyui_version,
            checked_at: check.checked_at,
        });
    }
    Ok(Readiness {
        release: version,
        backends,
    })
}

/// The snapshot of a stored release.
pub fn snapshot_of(row: &crate::entity::release::Model) -> Result<Snapshot, ReadinessError> {
    let version = row.version;
    let stored = |detail: String| ReadinessError::Stored { version, detail };
    let files: Vec<WorkflowFiles> =
        serde_json::from_str(&row.files).map_err(|e| stored(e.to_string()))?;
    Snapshot::from_files(files).map_err(|e| stored(e.to_string()))
}

/// Checks one configured backend (`url`) against `snapshot`, bounded as a whole; (its name, the
/// result). Not recorded: the caller does that. Also used by the deployer (`deploy`).
pub async fn check_one(
    settings: &Settings,
    snapshot: &Snapshot,
    url: &str,
    options: CheckOptions,
) -> (String, BackendCheck) {
    let smoke_count = snapshot
        .workflow_set()
        .map(|set| set.iter().filter(|w| w.smoke.is_some()).count())
        .unwrap_or(0) as u32;
    let bound = environment::READ_TIMEOUT + options.smoke_timeout * smoke_count + SLACK;
    let http_timeout = Duration::from_millis(settings.comfyui.http_timeout_ms);
    let limits = settings.comfyui_limits.limits();
    let client = ComfyClient::new(url, http_timeout).with_limits(limits);
    let check = match tokio::time::timeout(bound, check_backend(&client, snapshot, options)).await {
        Ok(check) => check,
        Err(_) => BackendCheck {
            passed: false,
            reasons: vec![format!("the check took longer than {} s", bound.as_secs())],
            missing: Missing::default(),
            comfyui_version: None,
            checked_at: Utc::now(),
        },
    };
    (url.trim_end_matches('/').to_string(), check)
}

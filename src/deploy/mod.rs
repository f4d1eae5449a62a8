//! Deployments (#19): the deployer, which takes a deployment from `pending` to a terminal state.
//! It checks each of the deployment's backends against the release (`readiness::check_one`, at
//! most `max_unavailable` at once), records each result in `backend_checks` and
//! `deployment_backends`, then ends `succeeded` when at least one backend passed (the ones that
//! did not are listed `failed` with why) or `failed` when none did.
//!
//! State is in the database only (`db::deployments`), so that a restart — or, later (#22),
//! another instance — can pick it up: at start, [`Deployer::resume`] re-runs a deployment that is
//! not terminal from its checks. Every step is a conditional update, so a cancel
//! (`POST {prefix}/deployments/{id}/cancel`) between two steps wins and the deployer stops.
//!
//! Called by `routes::deployments` (start) and `startup` (resume). Not here yet: serving the
//! release to submits and routing its tasks only to the backends that passed (the deployer does
//! not tell the dispatcher anything), managed pools, canary, pause and promote.

use std::sync::Arc;

use futures_util::future::join_all;
use sea_orm::{DatabaseConnection, DbErr};
use tracing::{info, warn};

use crate::config::Settings;
use crate::db;
use crate::db::deployments::{BackendState, State};
use crate::readiness;
use crate::release::CheckOptions;

/// Starts and resumes deployments; cheap to clone.
#[derive(Clone)]
pub struct Deployer {
    db: DatabaseConnection,
    settings: Arc<Settings>,
}

impl Deployer {
    pub fn new(db: DatabaseConnection, settings: Arc<Settings>) -> Deployer {
        Deployer { db, settings }
    }

    /// The configured backends' names, as deployments record them.
    pub fn backend_names(&self) -> Vec<String> {
        self.settings
            .comfyui
            .endpoints
            .iter()
            .map(|url| url.trim_end_matches('/').to_string())
            .collect()
    }

    /// Runs deployment `id` to a terminal state in the background.
    pub fn start(&self, id: i64) {
        let this = self.clone();
        actix_rt::spawn(async move {
            if let Err(e) = this.run(id).await {
                // Left non-terminal: the next start resumes it.
                warn!(deployment = id, error = %e, "deployment stopped on a database error");
            }
        });
    }

    /// At start: re-runs the deployment that is not terminal, if any, from its checks.
    pub async fn resume(&self) -> Result<(), DbErr> {
        if let Some(d) = db::deployments::active(&self.db).await? {
            info!(
                deployment = d.id,
                release = d.release_version,
                state = %d.state,
                "resuming a deployment"
            );
            self.start(d.id);
        }
        Ok(())
    }

    async fn run(&self, id: i64) -> Result<(), DbErr> {
        let db = &self.db;
        let Some(d) = db::deployments::get(db, id).await? else {
            return Ok(());
        };
        if !db::deployments::transition(db, id, &State::RUNNING, State::Checking, None).await? {
            return Ok(());
        }
        let release = d.release_version;
        let snapshot = match db::releases::get(db, release).await? {
            Some(row) => readiness::snapshot_of(&row),
            None => Err(readiness::ReadinessError::NotFound(release)),
        };
        let snapshot = match snapshot {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("release {release} does not load: {e}");
                db::deployments::transition(
                    db,
                    id,
                    &[State::Checking],
                    State::Failed,
                    Some(&reason),
                )
                .await?;
                return Ok(());
            }
        };
        let backends: Vec<String> = db::deployments::backends(db, id)
            .await?
            .into_iter()
            .map(|b| b.backend)
            .collect();
        // A re-run after a restart starts each backend over: nothing is half-applied.
        for backend in &backends {
            db::deployments::set_backend(db, id, backend, BackendState::Pending, None).await?;
        }
        let options = CheckOptions::default();
        let at_once = usize::try_from(d.max_unavailable.max(1)).unwrap_or(1);
        let mut passed = Vec::new();
        for group in backends.chunks(at_once) {
            if !self.still(id, State::Checking).await? {
                return Ok(());
            }
            for backend in group {
                db::deployments::set_backend(db, id, backend, BackendState::Checking, None).await?;
            }
            let checks = group.iter().map(|name| {
                let snapshot = &snapshot;
                async move {
                    let url = self
                        .settings
                        .comfyui
                        .endpoints
                        .iter()
                        .find(|u| u.trim_end_matches('/') == name);
                    match url {
                        Some(url) => {
                            Some(readiness::check_one(&self.settings, snapshot, url, options).await)
                        }
                        None => None,
                    }
                }
            });
            let results = join_all(checks).await;
            for (name, result) in group.iter().zip(results) {
                let Some((_, check)) = result else {
                    db::deployments::set_backend(
                        db,
                        id,
                        name,
                        BackendState::Failed,
                        Some("no longer configured"),
                    )
                    .await?;
                    continue;
                };
                db::backend_checks::insert(db, release, name, &check).await?;
                if check.passed {
                    db::deployments::set_backend(db, id, name, BackendState::Passed, None).await?;
                    passed.push(name.clone());
                } else {
                    let reason = check.reasons.join("; ");
                    db::deployments::set_backend(db, id, name, BackendState::Failed, Some(&reason))
                        .await?;
                }
            }
        }
        if passed.is_empty() {
            let reason = format!("no backend passed release {release}");
            db::deployments::transition(db, id, &[State::Checking], State::Failed, Some(&reason))
                .await?;
            info!(deployment = id, release, "deployment failed: {reason}");
            return Ok(());
        }
        if !db::deployments::transition(db, id, &[State::Checking], State::Rolling, None).await? {
            return Ok(());
        }
        for backend in &passed {
            db::deployments::set_backend(db, id, backend, BackendState::Switched, None).await?;
        }
        if db::deployments::transition(db, id, &[State::Rolling], State::Succeeded, None).await? {
            info!(
                deployment = id,
                release,
                passed = passed.len(),
                of = backends.len(),
                "deployment succeeded"
            );
        }
        Ok(())
    }

    /// Whether deployment `id` is still in `state` (not cancelled meanwhile).
    async fn still(&self, id: i64, state: State) -> Result<bool, DbErr> {
        Ok(db::deployments::get(&self.db, id)
            .await?
            .is_some_and(|d| d.state == state.as_str()))
    }
}

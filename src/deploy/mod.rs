//! Deployments (#19): the deployer, which takes a deployment from `pending` to a terminal state.
//! It checks each of the deployment's backends against the release (`readiness::check_one`, at
//! most `max_unavailable` at once, each out of traffic while it is checked: no new job goes there,
//! the ones it holds carry on; in memory only, so a restart puts it back), records each result in `backend_checks` and
//! `deployment_backends`, then ends `succeeded` when at least one backend passed (the ones that
//! did not are listed `failed` with why) or `failed` when none did. The served release is the
//! newest succeeded deployment's: on success the deployer puts its workflow set in the
//! [`Catalog`], so new submits are validated against it and stamped with its version; at start,
//! [`Deployer::serve_at_start`] does the same from the database.
//!
//! State is in the database only (`db::deployments`), so that a restart — or, later (#22),
//! another instance — can pick it up: at start, [`Deployer::resume`] re-runs a deployment that is
//! not terminal from its checks. Every step is a conditional update, so a cancel
//! (`POST {prefix}/deployments/{id}/cancel`) between two steps wins and the deployer stops.
//!
//! The gate: a backend runs a release's tasks only once the dispatcher was told it passed
//! (`ReleaseGate`); the deployer tells it for each passed backend while `rolling`, and waits for
//! it, before the release is served, so no task is stamped with a release no backend may run. A
//! backend that failed is told so (it keeps only the releases it passed). At start,
//! [`send_gates`] replays every deployment's per-backend results to the dispatcher.
//!
//! Called by `routes::deployments` (start) and `startup` (gates, serve, resume). Not here yet:
//! managed pools, canary, pause and promote, several instances driving one deployment (#22).

use std::sync::Arc;

use futures_util::future::join_all;
use sea_orm::{DatabaseConnection, DbErr};
use tracing::{info, warn};

use actix::Recipient;

use crate::config::Settings;
use crate::db;
use crate::db::deployments::{BackendState, State};
use crate::dispatch::messages::{Checking, ReleaseGate};
use crate::readiness;
use crate::release::CheckOptions;
use crate::workflow::{Catalog, WorkflowSet};

/// Starts and resumes deployments; cheap to clone.
#[derive(Clone)]
pub struct Deployer {
    db: DatabaseConnection,
    settings: Arc<Settings>,
    catalog: Catalog,
    gate: Recipient<ReleaseGate>,
    checking: Recipient<Checking>,
}

/// Tells the dispatcher, from the database, which releases each backend passed (at start).
pub async fn send_gates(
    db: &DatabaseConnection,
    gate: &Recipient<ReleaseGate>,
) -> Result<(), DbErr> {
    for (backend, release, passed) in db::deployments::gates(db).await? {
        gate.do_send(ReleaseGate {
            backend: backend.into(),
            release,
            passed,
        });
    }
    Ok(())
}

impl Deployer {
    pub fn new(
        db: DatabaseConnection,
        settings: Arc<Settings>,
        catalog: Catalog,
        gate: Recipient<ReleaseGate>,
        checking: Recipient<Checking>,
    ) -> Deployer {
        Deployer {
            db,
            settings,
            catalog,
            gate,
            checking,
        }
    }

    /// Takes `backend` out of traffic while it is checked (`checking`), or puts it back.
    async fn out_of_traffic(&self, backend: &str, checking: bool) {
        // The dispatcher gone means comfyd is stopping: nothing to route any more.
        let _ = self
            .checking
            .send(Checking {
                backend: backend.to_string().into(),
                checking,
            })
            .await;
    }

    /// Tells the dispatcher whether `backend` may run `release`'s tasks, and waits until it knows.
    async fn tell(&self, backend: &str, release: i32, passed: bool) -> Result<(), DbErr> {
        self.gate
            .send(ReleaseGate {
                backend: backend.to_string().into(),
                release,
                passed,
            })
            .await
            .map_err(|e| DbErr::Custom(format!("telling the dispatcher: {e}")))
    }

    /// At start: serves the newest succeeded deployment's release, if any (else the workflows
    /// folder stays served). A stored release that does not load is logged and not served.
    pub async fn serve_at_start(&self) -> Result<(), DbErr> {
        if let Some(version) = db::deployments::served(&self.db).await? {
            if let Err(e) = self.serve(version).await? {
                tracing::error!(release = version, "the served release is not served: {e}");
            }
        }
        Ok(())
    }

    /// Puts release `version`'s workflow set in the catalog; Err(why) when it does not load.
    async fn serve(&self, version: i32) -> Result<Result<(), String>, DbErr> {
        Ok(self.load(version).await?.map(|set| self.put(set, version)))
    }

    /// Release `version`'s workflow set, built from its stored files; Err(why) when it does not load.
    async fn load(&self, version: i32) -> Result<Result<WorkflowSet, String>, DbErr> {
        let Some(row) = db::releases::get(&self.db, version).await? else {
            return Ok(Err(format!("no release {version}")));
        };
        Ok(readiness::snapshot_of(&row)
            .map_err(|e| e.to_string())
            .and_then(|s| s.workflow_set().map_err(|e| e.to_string())))
    }

    /// Serves `set` as release `version` from now on.
    fn put(&self, set: WorkflowSet, version: i32) {
        info!(
            release = version,
            workflows = set.len(),
            "serving release {version}"
        );
        crate::metrics::know_workflows(set.iter().map(|w| w.name.as_str()));
        self.catalog.serve_release(set, version);
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
            // At most `max_unavailable` backends out of traffic at once: the others keep serving.
            for backend in group {
                db::deployments::set_backend(db, id, backend, BackendState::Checking, None).await?;
            }
            for backend in group {
                self.out_of_traffic(backend, true).await;
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
            for backend in group {
                self.out_of_traffic(backend, false).await;
            }
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
                    self.tell(name, release, false).await?;
                    db::deployments::set_backend(db, id, name, BackendState::Failed, Some(&reason))
                        .await?;
                }
            }
        }
        if passed.is_empty() {
            let reason = format!("no backend passed release {release}");
            if db::deployments::transition(db, id, &[State::Checking], State::Failed, Some(&reason))
                .await?
            {
                info!(deployment = id, release, "deployment failed: {reason}");
            }
            return Ok(());
        }
        if !db::deployments::transition(db, id, &[State::Checking], State::Rolling, None).await? {
            return Ok(());
        }
        // Each passed backend may run the release's tasks before any task is stamped with it.
        for backend in &passed {
            self.tell(backend, release, true).await?;
            db::deployments::set_backend(db, id, backend, BackendState::Switched, None).await?;
        }
        // The release is served before its deployment reads `succeeded`, so a client that saw it
        // succeed submits under it; put back as it was if the deployment was cancelled meanwhile
        // or its end could not be recorded (then it is resumed at the next start).
        let set = match self.load(release).await? {
            Ok(set) => set,
            Err(e) => {
                // Loaded and checked above (`snapshot`), so only a row changed under us.
                let reason = format!("release {release} does not load: {e}");
                db::deployments::transition(
                    db,
                    id,
                    &[State::Rolling],
                    State::Failed,
                    Some(&reason),
                )
                .await?;
                warn!(deployment = id, release, "deployment failed: {reason}");
                return Ok(());
            }
        };
        let before = self.catalog.served();
        self.put(set, release);
        let ended = db::deployments::transition(db, id, &[State::Rolling], State::Succeeded, None)
            .await
            .inspect_err(|_| self.catalog.restore(before.clone()))?;
        if !ended {
            self.catalog.restore(before);
        } else {
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

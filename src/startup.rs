//! Builds the application (database, workflows, actors, HTTP server) and runs it until a signal.
//!
//! ```text
//! client ─HTTP─► routes ─Enqueue─► Dispatcher ─Run/Adopt/Cancel─► Backend ×N ─ws+HTTP─► ComfyUI ×N
//!                  │                   ▲  ◄── BackendState / JobStarted / JobEnded ──┘
//!                  │ InsertTask        │ JobEnded(Success) → Uploader ─► store (S3 / local)
//!                  ▼                   │                        │
//!               Recorder (only DB writer) ◄── transitions ──────┤
//!                  │ Finish (terminal state + webhook outbox)   └─► Cleaner ─► Backend (clean node)
//!                  ▼
//!               Notifier ─► client webhook (retries from the outbox)
//! ```
//!
//! The submit routes hand each submit to the submit service ([`crate::intake`]): it is what sends
//! `InsertTask` and `Enqueue` in the picture.
//!
//! Shutdown (SIGTERM/SIGINT): submits answer 503, nothing more is dispatched, post-processing under
//! way gets `shutdown_timeout_secs` to finish, then the process exits; whatever is left is resumed from
//! the database by the next start. SIGHUP reloads the workflows.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use tracing::{error, info, warn};

use crate::blob::{BlobStore, S3Settings};
use crate::budget::MemoryBudget;
use crate::config::{redact_url, Settings};
use crate::dispatch::dispatcher::{Dispatcher, DispatcherConfig};
use crate::dispatch::messages::{AttachBackends, BackendConfig, Snapshot, StopDispatching};
use crate::intake::{Intake, IntakeLimits};
use crate::outbound::{Outbound, OutboundSettings};
use crate::postprocess::cleaner::Cleaner;
use crate::postprocess::notifier::{Notifier, NotifierConfig};
use crate::postprocess::recorder::{Flush, Recorder};
use crate::postprocess::uploader::{InProgress, Uploader, UploaderConfig};
use crate::postprocess::{Finisher, Pipeline};
use crate::routes::{self, AppState};
use crate::workflow::{Catalog, ImageLimits, WorkflowSet};
use crate::{db, telemetry};

/// A built, listening application.
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    state: web::Data<AppState>,
    uploader: Addr<Uploader>,
}

impl Application {
    /// Connects and migrates the database, loads the workflows, starts the actors and binds the HTTP
    /// listener (port 0 picks a free port). Must run inside an actix System.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let settings = Arc::new(settings);
        std::fs::create_dir_all(&settings.data.dir)
            .with_context(|| format!("creating data.dir {}", settings.data.dir.display()))?;
        std::fs::create_dir_all(settings.inputs_dir())?;

        let url = settings.database_url();
        let db = db::connect::open(&url, settings.database.max_connections)
            .await
            .with_context(|| format!("opening database {}", redact_url(&url)))?;
        let workflows = WorkflowSet::load_dir(&settings.workflows.dir).map_err(|e| {
            anyhow::anyhow!(
                "loading workflows from {}:\n{e}",
                settings.workflows.dir.display()
            )
        })?;
        info!(
            count = workflows.len(),
            "loaded {} workflows from {}",
            workflows.len(),
            settings.workflows.dir.display()
        );

        let storage = Arc::new(build_store(&settings)?);
        info!("outputs go to {}", storage.describe());
        let urls = crate::blob::OutputUrls::new(
            storage.clone(),
            &settings.server.route_prefix,
            Duration::from_secs(settings.storage.presign_expiry_secs),
        );
        let outbound = Outbound::new(OutboundSettings {
            fetch_max_bytes: settings.inputs.fetch_max_bytes,
            fetch_timeout_ms: settings.inputs.fetch_timeout_ms,
            webhook_timeout_ms: settings.webhooks.timeout_ms,
            allow_private_addresses: settings.url_policy.allow_private_addresses,
            allow_loopback_addresses: settings.url_policy.allow_loopback(),
        });

        let writer = db::connect::open_writer(&url)
            .await
            .with_context(|| format!("opening database {}", redact_url(&url)))?;
        let recorder = Recorder::new(writer, db.clone());
        let db_health = recorder.health();
        let recorder = recorder.start();
        let notifier = Notifier::new(
            NotifierConfig {
                secret: settings.webhooks.secret.clone(),
                first_backoff: Duration::from_millis(settings.webhooks.first_backoff_ms),
                max_backoff: Duration::from_secs(settings.webhooks.max_backoff_secs),
            },
            db.clone(),
            recorder.clone(),
            outbound.clone(),
        )
        .with_urls(urls.clone())
        .start();
        let cleaner = Cleaner::new(settings.cleanup.enabled).start();
        let finisher = Finisher {
            recorder: recorder.clone(),
            notifier: notifier.clone(),
            inputs_dir: settings.inputs_dir(),
            webhook_horizon: Duration::from_secs(settings.webhooks.retry_horizon_secs),
        };
        let http_timeout = Duration::from_millis(settings.comfyui.http_timeout_ms);
        let uploader = Uploader::new(
            UploaderConfig {
                upload_attempts: settings.storage.upload_attempts,
                fallback_dir: settings.fallback_dir(),
                http_timeout,
                limits: settings.comfyui_limits.limits(),
            },
            db.clone(),
            storage,
            recorder.clone(),
            cleaner.clone(),
            finisher.clone(),
        )
        .start();
        let pipeline = Pipeline {
            finisher,
            recorder: recorder.clone(),
            uploader: uploader.clone(),
            cleaner,
            health: db_health.clone(),
        };
        let dispatcher = Dispatcher::new(
            DispatcherConfig {
                max_in_flight: settings.comfyui.max_in_flight,
                max_attempts: settings.comfyui.max_attempts,
                inputs_dir: settings.inputs_dir(),
            },
            db.clone(),
            pipeline,
        )
        .start();
        let backends = settings
            .comfyui
            .endpoints
            .iter()
            .map(|url| BackendConfig {
                name: url.trim_end_matches('/').into(),
                url: url.clone(),
                http_timeout,
                reconnect_max: Duration::from_millis(settings.comfyui.reconnect_max_ms),
                lost_after: Duration::from_secs(settings.comfyui.lost_after_secs),
                limits: settings.comfyui_limits.limits(),
                cleanup: settings.cleanup.enabled,
            })
            .collect();
        // Which releases each backend passed, before it is attached and anything is routed.
        crate::deploy::send_gates(&db, &dispatcher.clone().recipient()).await?;
        dispatcher.send(AttachBackends(backends)).await?;
        let keys = start_api_keys(&settings, &db).await?;

        crate::metrics::know_workflows(workflows.iter().map(|w| w.name.as_str()));
        let workflows = Catalog::new(workflows);
        let accepting = Arc::new(AtomicBool::new(true));
        let intake = Intake {
            catalog: workflows.clone(),
            limits: IntakeLimits {
                images: ImageLimits {
                    max_side: settings.limits.max_image_side,
                    max_pixels: settings.limits.max_image_pixels,
                },
                inputs_dir: settings.inputs_dir(),
                task_deadline_secs: settings.comfyui.task_deadline_secs,
                submit_wait: Duration::from_millis(settings.database_outage.submit_wait_ms),
            },
            db: db.clone(),
            outbound,
            recorder: recorder.clone().recipient(),
            dispatcher: dispatcher.clone().recipient(),
            accepting: accepting.clone(),
            db_health: db_health.clone(),
        };
        let deployer = crate::deploy::Deployer::new(
            db.clone(),
            settings.clone(),
            workflows.clone(),
            dispatcher.clone().recipient(),
            dispatcher.clone().recipient(),
        );
        deployer.serve_at_start().await?;
        deployer.resume().await?;
        let state = web::Data::new(AppState {
            settings: settings.clone(),
            db,
            recorder,
            dispatcher,
            notifier,
            workflows,
            keys,
            accepting,
            db_health,
            budget: MemoryBudget::new(
                settings.limits.in_flight_bytes,
                Duration::from_millis(settings.limits.in_flight_wait_ms),
            ),
            intake,
            deployer,
            urls,
        });
        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .with_context(|| {
                format!("binding {}:{}", settings.server.host, settings.server.port)
            })?;
        let port = listener.local_addr()?.port();
        let prefix = settings.server.route_prefix.clone();
        let max_body = settings.server.max_body_bytes;
        let app_state = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(max_body)
                        .error_handler(routes::error::json_error),
                )
                .app_data(web::QueryConfig::default().error_handler(routes::error::query_error))
                .wrap(actix_web::middleware::from_fn(routes::error::log_errors))
                .app_data(web::PathConfig::default().error_handler(routes::error::path_error))
                .wrap(tracing_actix_web::TracingLogger::default())
                .configure(|cfg| routes::configure(cfg, &prefix))
        })
        .disable_signals()
        .shutdown_timeout(settings.server.shutdown_timeout_secs);
        if settings.server.http_workers > 0 {
            server = server.workers(settings.server.http_workers);
        }
        let server = server.listen(listener)?.run();
        info!(
            port,
            "comfyd listening on {}:{port}{}", settings.server.host, settings.server.route_prefix
        );
        Ok(Application {
            port,
            server,
            state,
            uploader,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or SIGINT, then shuts down in order (see the module docs).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application {
            server,
            state,
            uploader,
            ..
        } = self;
        let handle = server.handle();
        let server_task = actix_rt::spawn(server);
        notify(&[sd_notify::NotifyState::Ready]);
        start_watchdog(state.clone());

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = tokio::signal::ctrl_c() => { info!("SIGINT: shutting down"); break; }
                _ = hup.recv() => reload_workflows(&state),
            }
        }
        notify(&[sd_notify::NotifyState::Stopping]);
        state.accepting.store(false, Ordering::SeqCst);
        let _ = state.dispatcher.send(StopDispatching).await;
        let deadline =
            Instant::now() + Duration::from_secs(state.settings.server.shutdown_timeout_secs);
        loop {
            let busy = uploader.send(InProgress).await.unwrap_or(0);
            if busy == 0 {
                break;
            }
            if Instant::now() >= deadline {
                warn!(
                    busy,
                    "shutdown timeout: {busy} tasks left for recovery at the next start"
                );
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        handle.stop(true).await;
        let _ = server_task.await;
        // Writes that were lingering for company (see `Recorder`) are written now; during a
        // database outage the Recorder holds them until it is back, so this waits only so long
        // (what is lost is replayed by the next start's recovery).
        let flush_wait = Duration::from_secs(state.settings.server.shutdown_timeout_secs);
        if actix_rt::time::timeout(flush_wait, state.recorder.send(Flush))
            .await
            .is_err()
        {
            warn!("database unreachable at shutdown: held writes left for the next start");
        }
        info!("stopped");
        Ok(())
    }
}

/// The API keys in force, read from the settings and the database, then re-read from the database
/// every few seconds (keys added or revoked by `comfyd keys`). Warns once when the API is open to
/// whoever reaches a non-loopback listen address.
async fn start_api_keys(
    settings: &Settings,
    db: &sea_orm::DatabaseConnection,
) -> anyhow::Result<crate::access::ApiKeys> {
    let keys = crate::access::ApiKeys::from_settings(&settings.auth);
    keys.refresh(db).await.context("reading the API keys")?;
    if keys.enabled() {
        info!("API keys required (Authorization: Bearer)");
    } else if !crate::access::is_loopback_host(&settings.server.host) {
        warn!(
            "no API keys: anyone who reaches {}:{} can submit, cancel and read every task; \
             add keys with `comfyd keys add` or [auth] keys (see README, API keys)",
            settings.server.host, settings.server.port
        );
    }
    let (refreshed, db) = (keys.clone(), db.clone());
    actix_rt::spawn(async move {
        loop {
            actix_rt::time::sleep(crate::access::REFRESH_EVERY).await;
            if let Err(e) = refreshed.refresh(&db).await {
                warn!(error = %e, "could not re-read the API keys; keeping the previous ones");
            }
        }
    });
    Ok(keys)
}

/// The output store the settings describe: S3 when a bucket is set, else the local folder.
pub fn build_store(settings: &Settings) -> anyhow::Result<BlobStore> {
    let s = &settings.storage;
    if s.s3_bucket.is_empty() {
        return Ok(BlobStore::local(settings.local_store_dir()));
    }
    let non_empty = |v: &str| (!v.is_empty()).then(|| v.to_string());
    BlobStore::s3(&S3Settings {
        bucket: s.s3_bucket.clone(),
        region: s.s3_region.clone(),
        endpoint_url: non_empty(&s.s3_endpoint_url),
        force_path_style: s.s3_force_path_style,
        access_key_id: non_empty(&s.s3_access_key_id),
        secret_access_key: non_empty(&s.s3_secret_access_key),
        key_prefix: s.key_prefix.clone(),
    })
    .context("starting the S3 client's thread")
}

/// Re-reads the workflows folder; a broken set is refused and the current one kept. Tasks already
/// accepted are unaffected: each carries the graph it was accepted with.
fn reload_workflows(state: &AppState) {
    notify(&[sd_notify::NotifyState::Reloading]);
    match WorkflowSet::load_dir(&state.settings.workflows.dir) {
        Ok(set) => {
            let count = set.len();
            let names: Vec<String> = set.iter().map(|w| w.name.clone()).collect();
            if state.workflows.replace(set) {
                crate::metrics::know_workflows(names.iter().map(String::as_str));
                info!(count, "SIGHUP: reloaded {count} workflows");
            } else {
                // What is served changes by a deployment only; the folder is what a publish reads.
                warn!("SIGHUP: a release is served, not the workflows folder: nothing reloaded");
            }
        }
        Err(e) => error!("SIGHUP: workflows not reloaded, keeping the previous set:\n{e}"),
    }
    notify(&[sd_notify::NotifyState::Ready]);
}

fn notify(states: &[sd_notify::NotifyState]) {
    // Not under systemd (no NOTIFY_SOCKET) is the normal case outside production.
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// Under systemd with WatchdogSec, pings at half the interval, but only while the dispatcher actor
/// answers: a wedged actor system stops the pings and systemd restarts comfyd.
fn start_watchdog(state: web::Data<AppState>) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    actix_rt::spawn(async move {
        loop {
            actix_rt::time::sleep(every).await;
            let alive = matches!(
                actix_rt::time::timeout(every, state.dispatcher.send(Snapshot)).await,
                Ok(Ok(_))
            );
            if alive {
                notify(&[sd_notify::NotifyState::Watchdog]);
            } else {
                warn!("dispatcher did not answer; withholding the watchdog ping");
            }
        }
    });
}

/// Entry point of `comfyd serve`.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    telemetry::init(settings.log.format == "json");
    let app = Application::build(settings).await?;
    app.run_until_stopped().await
}

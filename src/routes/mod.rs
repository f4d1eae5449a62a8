//! The HTTP API. One module per resource; [`error::ApiError`] is the one error type of this boundary.
//!
//! Routes (under `{route_prefix}`, default `/api/v1`, except `/healthz`, `/readyz`, `/metrics` and the docs):
//! - `POST {prefix}`: the original service's submit (`service_type` = workflow name)
//! - `GET {prefix}/workflows`, `GET {prefix}/workflows/{name}`, `POST {prefix}/workflows/{name}/tasks`
//! - `GET {prefix}/tasks`, `GET {prefix}/tasks/{id}`, `GET {prefix}/tasks/{id}/events`,
//!   `POST {prefix}/tasks/{id}/cancel`, `GET {prefix}/tasks/{id}/outputs/{n}`
//! - `GET {prefix}/tasks/{id}/deliveries`, `POST {prefix}/deliveries/{id}/redeliver`
//! - `GET {prefix}/backends`, `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus)
//! - `POST {prefix}/releases`, `GET {prefix}/releases`, `GET {prefix}/releases/{version}`,
//!   `GET {prefix}/releases/{version}/readiness` (admin)
//! - `POST {prefix}/deployments`, `GET {prefix}/deployments`, `GET {prefix}/deployments/{id}`,
//!   `POST {prefix}/deployments/{id}/cancel` (admin)
//! - `GET /openapi.json` (the OpenAPI document), `GET /docs` (it as a page), `GET /docs/ui.js`: at the
//!   root like the original's, and the same under the prefix
//!
//! Each handler says who may call it by taking an [`auth::Submitter`] or [`auth::Admin`] argument.

pub mod auth;
pub mod deliveries;
pub mod deployments;
pub mod docs;
pub mod error;
pub mod health;
pub mod input;
pub mod openapi;
pub mod outage;
pub mod outputs;
pub mod releases;
pub mod submit;
pub mod tasks;
pub mod workflows;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::Addr;
use actix_web::web;
use sea_orm::DatabaseConnection;

use crate::budget::MemoryBudget;
use crate::config::Settings;
use crate::dispatch::dispatcher::Dispatcher;
use crate::intake::Intake;
use crate::postprocess::notifier::Notifier;
use crate::postprocess::recorder::Recorder;
use crate::workflow::Catalog;

pub use error::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: DatabaseConnection,
    pub recorder: Addr<Recorder>,
    pub dispatcher: Addr<Dispatcher>,
    pub notifier: Addr<Notifier>,
    pub workflows: Catalog,
    /// The API keys in force (none: every route is open).
    pub keys: crate::access::ApiKeys,
    /// False once shutdown began: submits answer 503.
    pub accepting: Arc<AtomicBool>,
    /// Whether the database takes writes: while not, submits answer 503 at once.
    pub db_health: crate::db_health::DbHealth,
    /// What request bodies and input images may hold at once (config `[limits]`).
    pub budget: MemoryBudget,
    /// The submit service the submit routes hand their bodies to.
    pub intake: Intake,
    /// Runs deployments (`POST {prefix}/deployments`).
    pub deployer: crate::deploy::Deployer,
    /// The output store, and how the records' output URLs are made.
    pub urls: crate::blob::OutputUrls,
}

impl AppState {
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }
}

/// Mounts every route.
pub fn configure(cfg: &mut web::ServiceConfig, prefix: &str) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/openapi.json", web::get().to(openapi::openapi_json))
        .route("/docs", web::get().to(docs::page))
        .route("/docs/ui.js", web::get().to(docs::script))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .service(
            web::scope(prefix)
                .route("", web::post().to(submit::submit_original))
                .route("/", web::post().to(submit::submit_original))
                .route("/workflows", web::get().to(workflows::list))
                .route("/workflows/{name}", web::get().to(workflows::get))
                .route(
                    "/workflows/{name}/tasks",
                    web::post().to(submit::submit_typed),
                )
                .route("/tasks", web::get().to(tasks::list))
                .route("/tasks/{id}", web::get().to(tasks::get))
                .route("/tasks/{id}/events", web::get().to(tasks::events))
                .route("/tasks/{id}/cancel", web::post().to(tasks::cancel))
                .route("/tasks/{id}/outputs/{n}", web::get().to(outputs::get))
                .route(
                    "/tasks/{id}/deliveries",
                    web::get().to(deliveries::for_task),
                )
                .route(
                    "/deliveries/{id}/redeliver",
                    web::post().to(deliveries::redeliver),
                )
                .route("/backends", web::get().to(health::backends))
                .route("/releases", web::post().to(releases::publish))
                .route("/releases", web::get().to(releases::list))
                .route("/releases/{version}", web::get().to(releases::get))
                .route(
                    "/releases/{version}/readiness",
                    web::get().to(releases::readiness),
                )
                .route("/deployments", web::post().to(deployments::create))
                .route("/deployments", web::get().to(deployments::list))
                .route("/deployments/{id}", web::get().to(deployments::get))
                .route(
                    "/deployments/{id}/cancel",
                    web::post().to(deployments::cancel),
                )
                .route("/openapi.json", web::get().to(openapi::openapi_json))
                .route("/docs", web::get().to(docs::page))
                .route("/docs/ui.js", web::get().to(docs::script)),
        );
}

//! comfyd: a fleet of ComfyUI servers behind one reliable HTTP API.
//!
//! # Layout
//! - [`config`]: settings from `config/*.toml`, `.env` and the environment.
//! - [`workflow`]: workflows as data: manifests, parameter validation, graph rendering.
//! - [`comfy`]: the ComfyUI protocol (serde types and HTTP calls); only `dispatch::backend` uses it.
//! - [`dispatch`]: the `Dispatcher` (durable queue, routing) and one `Backend` actor per ComfyUI server.
//! - [`release`]: releases as data: a snapshot of the workflows folder, what it needs, a dev server's
//!   environment (stored by [`db::releases`]).
//! - [`postprocess`]: actors after execution: `Uploader`, `Recorder`, `Cleaner`, `Notifier`.
//! - [`blob`]: where outputs go: S3 or a local folder.
//! - [`paths`]: the one way a relative name becomes a path comfyd writes (it cannot leave its root).
//! - [`outbound`]: every call to a URL a client gave us (webhooks, input images), in one place.
//! - [`db`] and [`entity`]: the database; [`db_health`]: whether it takes writes right now.
//! - [`intake`]: the submit service: checks a submit, records its task, hands it to the dispatcher.
//! - [`access`]: API keys and callers (who may do what), free of HTTP.
//! - [`routes`]: the HTTP API (its key extractors: `routes::auth`); [`cli`]: the operator commands.
//! - [`budget`]: the memory requests may hold at once (request bodies, input images).
//! - [`startup`]: builds and runs the application.

pub mod access;
pub mod blob;
pub mod budget;
pub mod cli;
pub mod comfy;
pub mod config;
pub mod db;
pub mod db_health;
pub mod dispatch;
pub mod dotenv;
pub mod entity;
pub mod intake;
pub mod outbound;
pub mod paths;
pub mod pg_nodelay;
pub mod postprocess;
pub mod release;
pub mod routes;
pub mod startup;
pub mod stored_text;
pub mod task;
pub mod telemetry;
pub mod workflow;

//! comfyd: a fleet of ComfyUI servers behind one reliable HTTP API.
//!
//! # Layout
//! From the top layer down; a module uses only those below it (`src/tests/layers.rs` checks it).
//! - [`cli`]: the operator commands; [`startup`]: builds and runs the application.
//! - [`routes`]: the HTTP API, over [`intake`], the submit service, and [`deploy`], the deployer
//!   (a release checked on each backend, recorded as a deployment).
//! - [`dispatch`]: the `Dispatcher` (durable queue, routing) and one `Backend` actor per ComfyUI server.
//! - [`postprocess`]: actors after execution: `Uploader`, `Recorder` (the one database writer),
//!   `Cleaner`, `Notifier`; [`access`]: API keys and who may see what; [`readiness`]: every
//!   configured backend checked against a release (`release::check`), recorded in the database.
//! - [`db`] (one file per table) and [`entity`]: the database; [`blob`]: where outputs go (S3 or a
//!   local folder).
//! - [`task`]: a task's statuses, records and ids; [`config`]: settings from `config/*.toml`, `.env`
//!   and the environment; [`outbound`]: every call to a URL a client gave us; [`paths`]: the one way a
//!   relative name becomes a path comfyd writes; [`release`]: releases as data (a snapshot of the
//!   workflows folder, what it needs, a dev server's environment; stored by [`db::releases`]).
//! - [`workflow`]: workflows as data; [`comfy`]: the ComfyUI protocol (frames, HTTP calls, names from a
//!   server); [`db_health`]: whether the database takes writes now; [`budget`]: the memory requests may
//!   hold at once; [`metrics`]: the Prometheus registry and every metric family (`GET /metrics`).

pub mod access;
pub mod blob;
pub mod budget;
pub mod cli;
pub mod comfy;
pub mod config;
pub mod db;
pub mod db_health;
pub mod deploy;
pub mod dispatch;
pub mod dotenv;
pub mod entity;
pub mod intake;
pub mod metrics;
pub mod outbound;
pub mod paths;
pub mod pg_nodelay;
pub mod postprocess;
pub mod readiness;
pub mod release;
pub mod routes;
pub mod startup;
pub mod stored_text;
pub mod task;
pub mod telemetry;
pub mod workflow;

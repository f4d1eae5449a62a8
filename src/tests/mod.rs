//! Integration tests: the real `comfyd` binary against real servers (see `support`).
//! One test target (`cargo test --test integration`), one module per area.

mod access;
mod battery;
mod blob;
mod chaos;
mod db;
mod db_outage;
mod deployments;
mod hostile_backend;
mod layers;
mod metrics;
mod openapi;
mod original;
mod outputs;
mod pipeline;
mod postprocess;
mod queue;
mod readiness;
mod releases;
mod support;
mod workflows_api;

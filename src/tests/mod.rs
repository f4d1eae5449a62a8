//! Integration tests: the real `comfyd` binary against real servers (see `support`).
//! One test target (`cargo test --test integration`), one module per area.

mod chaos;
mod pipeline;
mod queue;
mod storage;
mod support;
mod uploader;
mod workflows_api;

//! sea-orm entities, one module per table (schema in `migration/`). Queries live in `crate::db`.
pub mod api_key;
pub mod backend_check;
pub mod delivery;
pub mod delivery_attempt;
pub mod deployment;
pub mod deployment_backend;
pub mod output;
pub mod release;
pub mod task;
pub mod task_event;

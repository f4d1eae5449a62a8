//! Database access: connecting, migrating, and every query, as plain `async fn`s over a connection,
//! one file per table.
//!
//! - [`connect`]: opening the pools (and migrating), the writer's connection, checkpoints, the
//!   outage probe;
//! - [`tasks`]: the `task` table: inserting, status transitions (claim, finish, complete), reads;
//! - [`events`]: the `task_event` table;
//! - [`outputs`]: the `output` table (with the `executed` record that inserts a task's outputs);
//! - [`deliveries`]: the `delivery` (webhook outbox) and `delivery_attempt` tables;
//! - [`appends`]: [`appends::Appends`], the rows a transaction adds to those tables at its end;
//! - [`api_keys`]: the `api_key` table;
//! - [`releases`]: the `releases` table (written straight to the pool: see there why);
//! - [`backend_checks`]: the `backend_checks` table (readiness; straight to the pool too);
//! - [`deployments`]: the `deployments` and `deployment_backends` tables (straight to the pool).
//!
//! Writes are made by the `Recorder` actor only (`postprocess::recorder`: one writer, in order,
//! inside its transactions: the write functions here open none); readers (routes, recovery, the
//! CLI) call the query functions directly. Status changes are conditional updates
//! (`WHERE status IN (...)`), which is what makes every step idempotent and, later, lets several
//! comfyd instances share one PostgreSQL.

pub mod api_keys;
pub mod appends;
pub mod backend_checks;
pub mod connect;
pub mod deliveries;
pub mod deployments;
pub mod events;
pub mod outputs;
pub mod releases;
pub mod tasks;

//! [`Appends`]: the rows a Recorder transaction adds to `task_event`, `output`, `delivery` and
//! `delivery_attempt` and reads nothing back of, written together just before its commit.

use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryTrait, Statement};

use super::events::Event;
use super::outputs::{output_row, upsert_outputs};
use crate::entity::{delivery, delivery_attempt, output, task_event};

/// What a transaction adds that nothing in it reads back: the events of its writes, the outputs of a
/// job recorded as it ends, the webhook of a task that ended (its outbox row), the attempts of
/// webhooks sent. Each write adds its own, and [`Appends::write`] writes them all just before the
/// commit, one statement per table.
///
/// With SQLite those statements go as one text, which sqlx runs in one go, binding the values in
/// order: sqlx runs every statement on the connection's own thread, and each round trip there wakes
/// that thread and then the caller's, most of what a lone job costs comfyd (BENCHMARKS.md, round 8).
/// PostgreSQL prepares one statement at a time, so there they go one by one.
///
/// Nothing in the transaction may read these rows back: a webhook's attempts are recorded in later
/// transactions, once the webhook was sent, which is after its outbox row was committed; the outputs
/// [`super::tasks::complete`] appends belong to a task that has just ended, so no later write of it applies.
#[derive(Debug, Default)]
pub struct Appends {
    events: Vec<task_event::ActiveModel>,
    outputs: Vec<output::ActiveModel>,
    deliveries: Vec<delivery::ActiveModel>,
    attempts: Vec<delivery_attempt::ActiveModel>,
}

impl Appends {
    pub fn event(&mut self, task_id: &str, e: &Event) {
        self.events.push(task_event::ActiveModel {
            id: NotSet,
            task_id: Set(task_id.into()),
            kind: Set(e.kind.into()),
            details: Set(e.details.to_string()),
            at: Set(e.at),
        });
    }

    /// The outputs of a task that ends from before `executed` (see [`super::tasks::complete`]).
    pub(super) fn outputs(&mut self, rows: Vec<output::Model>) {
        self.outputs.extend(rows.into_iter().map(output_row));
    }

    pub(super) fn delivery(&mut self, d: delivery::Model) {
        self.deliveries.push(d.into());
    }

    pub(super) fn attempt(&mut self, a: delivery_attempt::ActiveModel) {
        self.attempts.push(a);
    }

    /// Writes what was added so far, each table's rows in the order they were added.
    pub async fn write<C: ConnectionTrait>(&mut self, db: &C) -> Result<(), DbErr> {
        let backend = db.get_database_backend();
        let mut statements = Vec::with_capacity(4);
        let events = std::mem::take(&mut self.events);
        if !events.is_empty() {
            statements.push(task_event::Entity::insert_many(events).build(backend));
        }
        let outputs = std::mem::take(&mut self.outputs);
        if !outputs.is_empty() {
            statements.push(upsert_outputs(outputs).build(backend));
        }
        let deliveries = std::mem::take(&mut self.deliveries);
        if !deliveries.is_empty() {
            statements.push(delivery::Entity::insert_many(deliveries).build(backend));
        }
        let attempts = std::mem::take(&mut self.attempts);
        if !attempts.is_empty() {
            statements.push(delivery_attempt::Entity::insert_many(attempts).build(backend));
        }
        if backend == DbBackend::Sqlite {
            if let Some(all) = one_text(backend, statements) {
                db.execute_raw(all).await?;
            }
        } else {
            for statement in statements {
                db.execute_raw(statement).await?;
            }
        }
        Ok(())
    }
}

/// Statements as one text, their values in the same order (SQLite's `?` placeholders are numbered
/// by position, and sqlx binds the values of a multi-statement text in order). None when empty.
fn one_text(backend: DbBackend, statements: Vec<Statement>) -> Option<Statement> {
    if statements.len() <= 1 {
        return statements.into_iter().next();
    }
    let mut sql = String::new();
    let mut values = Vec::new();
    for s in statements {
        sql.push_str(&s.sql);
        sql.push_str(";\n");
        values.extend(s.values.map(|v| v.0).unwrap_or_default());
    }
    Some(Statement::from_sql_and_values(backend, sql, values))
}

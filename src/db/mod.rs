//! Database access: connecting, migrating, and every query, as plain `async fn`s over a connection.
//!
//! Writes are made by the `Recorder` actor only (one writer, in order, inside its transactions: the
//! write functions here open none); readers (routes, recovery) call the query functions directly.
//! Status changes are conditional updates (`WHERE status IN (...)`), which is what makes every step
//! idempotent and, later, lets several comfyd instances share one PostgreSQL.

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    Statement, TryInsertResult,
};
use serde_json::Value;

use crate::entity::{api_key, delivery, delivery_attempt, output, task, task_event};
use crate::task::{OutputInfo, RecordRow, Status, TaskRecord};

/// Opens the database's shared pool (readers: routes, recovery, the outbox) and brings its schema up
/// to date.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<DatabaseConnection> {
    if let Some(dir) = sqlite_dir(url) {
        std::fs::create_dir_all(dir)?;
    }
    // Readers look up a few rows each and the OS caches the file anyway: a small SQLite page cache per
    // connection (256 KiB instead of 2 MiB) is most of comfyd's memory saved under load.
    let opts = options(
        url,
        if is_sqlite(url) { 4 } else { max_connections },
        &[("cache_size", "-256")],
    );
    let db = Database::connect(opts).await?;
    Migrator::up(&db, None).await?;
    Ok(db)
}

/// Opens the `Recorder`'s own connection (a pool of one; run after [`connect`]). The single writer
/// keeps one connection, so SQLite's page cache stays warm between its transactions and every
/// statement goes to the same driver thread. With SQLite, its commits never checkpoint the WAL (a
/// checkpoint writes and syncs the database file: a stall for every write queued behind it); the
/// Recorder runs [`checkpoint`] itself (see `recorder::CHECKPOINT_AFTER`).
pub async fn connect_writer(url: &str) -> anyhow::Result<DatabaseConnection> {
    // The log is started afresh after each complete checkpoint, but its file keeps the size it
    // reached: cut it back to 64 MiB then.
    let opts = options(
        url,
        1,
        &[
            ("wal_autocheckpoint", "0"),
            ("journal_size_limit", "67108864"),
        ],
    );
    Ok(Database::connect(opts).await?)
}

/// Copies what it can of SQLite's write-ahead log into the database file without waiting for
/// readers or the writer (`PASSIVE`), so the log stays small. SQLite only.
pub async fn checkpoint(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
        .await?;
    Ok(())
}

/// Whether the database takes a write now, without changing anything (the Recorder's probe during
/// an outage with no write of its own to retry). SQLite rewrites `user_version` (nothing else uses
/// it) with its own value: a real write, which fails while the file cannot be written, where a read
/// would succeed. PostgreSQL: a round trip (an unwritable PostgreSQL fails the next real write,
/// which starts the outage again).
pub async fn probe_write(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Sqlite {
        db.execute_unprepared("SELECT 1").await?;
        return Ok(());
    }
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA user_version",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("PRAGMA user_version answered nothing".into()))?;
    let version: i32 = row.try_get_by_index(0)?;
    db.execute_unprepared(&format!("PRAGMA user_version = {version}"))
        .await?;
    Ok(())
}

/// Closes the pool's idle connections, so that the next use connects afresh. After a write failed
/// for want of the database, a connection's idea of its transaction cannot be trusted: SQLite
/// rolls a transaction back by itself on an I/O error, sqlx's ROLLBACK then fails and sqlx still
/// counts the transaction as open, so every later "transaction" on that connection would be a
/// savepoint inside one that never commits (writes that seem to commit and are lost). The
/// Recorder calls this before each attempt during an outage.
pub async fn renew_connections(db: &DatabaseConnection) {
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            while let Some(mut c) = pool.try_acquire() {
                c.close_on_drop();
            }
        }
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            while let Some(mut c) = pool.try_acquire() {
                c.close_on_drop();
            }
        }
        _ => {}
    }
}

fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

fn sqlite_dir(url: &str) -> Option<&std::path::Path> {
    let path = url.strip_prefix("sqlite://")?.split('?').next()?;
    std::path::Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
}

/// Longest a caller waits for a connection, a connect to the server included (sqlx retries a
/// refused connect until then). Past it the database counts as unreachable for that call: a route
/// answers 503 (submits must answer within 2 s while the database is down) and the Recorder holds
/// its writes and retries (see `Recorder`). A pool connection is had in microseconds when the
/// database is up, and a connect to a server takes milliseconds.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// Pool options; `sqlite_pragmas` are set on each SQLite connection besides the common ones.
fn options(
    url: &str,
    max_connections: u32,
    sqlite_pragmas: &'static [(&'static str, &'static str)],
) -> ConnectOptions {
    let mut opts = ConnectOptions::new(url.to_string());
    // Every statement is logged only when asked for (`RUST_LOG=sqlx::query=debug`): checking the
    // level on each statement is not free.
    let log_statements = tracing::enabled!(target: "sqlx::query", tracing::Level::DEBUG);
    opts.sqlx_logging(log_statements)
        .sqlx_logging_level(log::LevelFilter::Debug)
        .max_connections(max_connections)
        .connect_timeout(ACQUIRE_TIMEOUT);
    if is_sqlite(url) {
        // A file cannot hang up: no ping before handing out a connection (a round trip to sqlx's
        // SQLite thread, on every transaction).
        opts.test_before_acquire(false)
            .map_sqlx_sqlite_opts(move |o| {
                // WAL lets the routes read while the Recorder writes; NORMAL sync is durable across a
                // process crash (kill -9), which is the failure comfyd must survive; a busy timeout
                // instead of errors.
                let o = o
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .create_if_missing(true);
                sqlite_pragmas
                    .iter()
                    .fold(o, |o, (key, value)| o.pragma(*key, *value))
            });
    } else {
        // A server connection can be dropped while idle (restart, proxy, firewall): ping only those.
        opts.test_before_acquire_if_idle_for(Duration::from_secs(30));
        if let Some((host, port)) = crate::pg_nodelay::tcp_server(url) {
            opts.map_sqlx_postgres_pool_opts(move |o| {
                let host = host.clone();
                o.after_connect(move |_, _| {
                    let host = host.clone();
                    Box::pin(async move {
                        crate::pg_nodelay::set_on_sockets_to(&host, port).await;
                        Ok(())
                    })
                })
            });
        }
    }
    opts
}

/// A new task, as the submit route builds it.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub client_task_id: Option<String>,
    pub client_callback_url: Option<String>,
    pub workflow: String,
    pub request_hash: String,
    pub params: Value,
    pub graph: Value,
    pub inputs: Value,
    pub output_nodes: Value,
    pub priority: i32,
    pub deadline_at: DateTime<Utc>,
    /// The name of the API key that submitted it (None when keys are not in use).
    pub owner: Option<String>,
    /// The prompt id its first attempt runs under, chosen at submit so the answer can carry it.
    pub prompt_id: Option<String>,
}

/// What inserting a task came to.
#[derive(Debug)]
pub enum Inserted {
    New(task::Model),
    /// The same client_task_id with the same request: the existing task.
    Existing(task::Model),
    /// The same client_task_id with a different request.
    Conflict(task::Model),
}

/// Inserts new tasks (status queued) with their `accepted` events, or finds the task each retried
/// submit refers to; answers in the order given. One statement for all of them: a burst of submits
/// costs one round trip to the database, not one per task.
pub async fn insert_tasks<C: ConnectionTrait>(
    db: &C,
    tasks: &[&NewTask],
    appends: &mut Appends,
) -> Result<Vec<Inserted>, DbErr> {
    let now = Utc::now();
    let models: Vec<task::Model> = tasks.iter().map(|t| new_task_row(t, now)).collect();
    // The unique client_task_id decides between a new task and a retried submit; RETURNING names the
    // rows written (a retried submit's is not).
    let written = task::Entity::insert_many(models.iter().cloned().map(task::ActiveModel::from))
        .on_conflict_do_nothing_on([task::Column::ClientTaskId])
        .exec_with_returning_keys(db)
        .await?;
    let written: HashSet<String> = match written {
        TryInsertResult::Inserted(ids) => ids.into_iter().collect(),
        TryInsertResult::Conflicted | TryInsertResult::Empty => HashSet::new(),
    };
    let mut answers = Vec::with_capacity(tasks.len());
    for (t, model) in tasks.iter().zip(models) {
        if written.contains(&t.id) {
            let event = Event::new("accepted", serde_json::json!({ "priority": t.priority }));
            appends.event(&t.id, &event);
            answers.push(Inserted::New(model));
            continue;
        }
        let ctid = t
            .client_task_id
            .as_deref()
            .ok_or(DbErr::RecordNotInserted)?;
        let existing = task::Entity::find()
            .filter(task::Column::ClientTaskId.eq(ctid))
            .one(db)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(format!("task with client_task_id {ctid}")))?;
        answers.push(if existing.request_hash == t.request_hash {
            Inserted::Existing(existing)
        } else {
            Inserted::Conflict(existing)
        });
    }
    Ok(answers)
}

fn new_task_row(t: &NewTask, now: DateTime<Utc>) -> task::Model {
    task::Model {
        id: t.id.clone(),
        client_task_id: t.client_task_id.clone(),
        client_callback_url: t.client_callback_url.clone(),
        workflow: t.workflow.clone(),
        request_hash: t.request_hash.clone(),
        params: t.params.to_string(),
        graph: t.graph.to_string(),
        inputs: t.inputs.to_string(),
        output_nodes: t.output_nodes.to_string(),
        priority: t.priority,
        status: Status::Queued.as_str().into(),
        backend: None,
        comfyui_task_id: t.prompt_id.clone(),
        comfyui_filepath: None,
        s3_key: None,
        error_code: 0,
        error_message: None,
        error_details: None,
        attempts: 0,
        deadline_at: t.deadline_at,
        created_at: now,
        updated_at: now,
        dispatched_at: None,
        started_at: None,
        finished_at: None,
        owner: t.owner.clone(),
    }
}

/// Fields a transition may set besides the status. `None` leaves a column as it is.
#[derive(Debug, Default, Clone)]
pub struct TaskPatch {
    pub backend: Option<Option<String>>,
    pub comfyui_task_id: Option<Option<String>>,
    pub comfyui_filepath: Option<String>,
    pub s3_key: Option<String>,
    pub error_code: Option<i32>,
    pub error_message: Option<String>,
    pub error_details: Option<Value>,
    /// Sets error_message and error_details to NULL (a task that recovered from an error).
    pub clear_error: bool,
    pub count_attempt: bool,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// An event to record with a transition.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    pub details: Value,
    /// When it happened (not when it was written: a write may wait for its transaction).
    pub at: DateTime<Utc>,
}

impl Event {
    pub fn new(kind: &'static str, details: Value) -> Event {
        Event {
            kind,
            details,
            at: Utc::now(),
        }
    }
}

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
/// [`complete`] appends belong to a task that has just ended, so no later write of it applies.
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

    /// The outputs of a task that ends from before `executed` (see [`complete`]).
    fn outputs(&mut self, rows: Vec<output::Model>) {
        self.outputs.extend(rows.into_iter().map(output_row));
    }

    fn delivery(&mut self, d: delivery::Model) {
        self.deliveries.push(d.into());
    }

    fn attempt(&mut self, a: delivery_attempt::ActiveModel) {
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

/// Moves a task from one of `from` to `to`, sets the patch and records the event (run it in a
/// transaction). Returns false (and changes nothing) when the task was not in one of `from`: someone
/// else moved it.
pub async fn transition<C: ConnectionTrait>(
    db: &C,
    id: &str,
    from: &[Status],
    to: Status,
    patch: &TaskPatch,
    event: Option<&Event>,
    appends: &mut Appends,
) -> Result<bool, DbErr> {
    let applied = transition_in(db, id, from, to, patch).await?;
    if let (true, Some(e)) = (applied, event) {
        appends.event(id, e);
    }
    Ok(applied)
}

async fn transition_in<C: ConnectionTrait>(
    db: &C,
    id: &str,
    from: &[Status],
    to: Status,
    p: &TaskPatch,
) -> Result<bool, DbErr> {
    Ok(transition_query(id, from, to, p)
        .exec(db)
        .await?
        .rows_affected
        == 1)
}

/// Claims a queued task for a backend under a prompt id: the conditional update answers the whole
/// row (`RETURNING`), so dispatch needs no second read. None: it was no longer queued.
pub async fn claim<C: ConnectionTrait>(
    db: &C,
    id: &str,
    patch: &TaskPatch,
    event: &Event,
    appends: &mut Appends,
) -> Result<Option<task::Model>, DbErr> {
    let Some(task) =
        transition_returning(db, id, &[Status::Queued], Status::Dispatched, patch).await?
    else {
        return Ok(None);
    };
    appends.event(id, event);
    Ok(Some(task))
}

/// Like [`transition`], answering the task's row as it is after the change (`RETURNING`); None when
/// the task was not in one of `from`.
async fn transition_returning<C: ConnectionTrait>(
    db: &C,
    id: &str,
    from: &[Status],
    to: Status,
    patch: &TaskPatch,
) -> Result<Option<task::Model>, DbErr> {
    let rows = transition_query(id, from, to, patch)
        .exec_with_returning(db)
        .await?;
    Ok(rows.into_iter().next())
}

/// Like [`transition`], answering what the task's [`TaskRecord`] needs of its row after the change
/// (`RETURNING` only those columns: a terminal transition does not need the graph back); None when
/// the task was not in one of `from`.
async fn transition_to_record<C: ConnectionTrait>(
    db: &C,
    id: &str,
    from: &[Status],
    to: Status,
    patch: &TaskPatch,
) -> Result<Option<RecordRow>, DbErr> {
    let mut query = transition_query(id, from, to, patch).into_query();
    query.returning(Query::returning().columns(RecordRow::COLUMNS));
    let stmt = db.get_database_backend().build(&query);
    let rows = RecordRow::find_by_statement(stmt).all(db).await?;
    Ok(rows.into_iter().next())
}

fn transition_query(
    id: &str,
    from: &[Status],
    to: Status,
    p: &TaskPatch,
) -> sea_orm::UpdateMany<task::Entity> {
    use task::Column as C;
    let mut q = task::Entity::update_many()
        .col_expr(C::Status, Expr::value(to.as_str()))
        .col_expr(C::UpdatedAt, Expr::value(Utc::now()));
    if let Some(v) = p.backend.clone() {
        q = q.col_expr(C::Backend, Expr::value(v));
    }
    if let Some(v) = p.comfyui_task_id.clone() {
        q = q.col_expr(C::ComfyuiTaskId, Expr::value(v));
    }
    if let Some(v) = p.comfyui_filepath.clone() {
        q = q.col_expr(C::ComfyuiFilepath, Expr::value(v));
    }
    if let Some(v) = p.s3_key.clone() {
        q = q.col_expr(C::S3Key, Expr::value(v));
    }
    if let Some(v) = p.error_code {
        q = q.col_expr(C::ErrorCode, Expr::value(v));
    }
    if let Some(v) = p.error_message.clone() {
        q = q.col_expr(C::ErrorMessage, Expr::value(v));
    }
    if let Some(v) = &p.error_details {
        q = q.col_expr(C::ErrorDetails, Expr::value(v.to_string()));
    }
    if p.clear_error {
        q = q
            .col_expr(C::ErrorMessage, Expr::value(Option::<String>::None))
            .col_expr(C::ErrorDetails, Expr::value(Option::<String>::None));
    }
    if p.count_attempt {
        q = q.col_expr(C::Attempts, Expr::col(C::Attempts).add(1));
    }
    if let Some(v) = p.dispatched_at {
        q = q.col_expr(C::DispatchedAt, Expr::value(v));
    }
    if let Some(v) = p.started_at {
        q = q.col_expr(C::StartedAt, Expr::value(v));
    }
    if let Some(v) = p.finished_at {
        q = q.col_expr(C::FinishedAt, Expr::value(v));
    }
    q.filter(C::Id.eq(id))
        .filter(C::Status.is_in(from.iter().map(|s| s.as_str())))
}

/// What a terminal transition came to.
#[derive(Debug, Default)]
pub struct Finished {
    /// False when the task was not in one of `from` (another path finished it first).
    pub applied: bool,
    /// The webhook put in the outbox, when the task has a callback URL.
    pub delivery: Option<delivery::Model>,
}

/// The terminal transition of a task, what became of its outputs, and its webhook. Run in a
/// transaction, so that either all are recorded or none: a crash can neither lose the webhook of a finished task nor send one for an
/// unfinished task. The payload is the task's final record, read inside the same transaction.
#[allow(clippy::too_many_arguments)] // one transaction's worth of facts, each named
pub async fn finish<C: ConnectionTrait>(
    txn: &C,
    id: &str,
    from: &[Status],
    to: Status,
    patch: &TaskPatch,
    marks: &[OutputMark],
    event: &Event,
    give_up_at: DateTime<Utc>,
    appends: &mut Appends,
) -> Result<Finished, DbErr> {
    // The conditional update answers the final row, which the webhook's payload needs.
    let Some(task) = transition_to_record(txn, id, from, to, patch).await? else {
        return Ok(Finished::default());
    };
    for m in marks {
        mark_output(txn, id, m).await?;
    }
    appends.event(id, event);
    let delivery = put_webhook(txn, task, None, give_up_at, appends).await?;
    Ok(Finished {
        applied: true,
        delivery,
    })
}

/// A job's start (`running`), written with the task's next step when both are in one transaction:
/// one UPDATE instead of two, from `dispatched` only (a task already `running` had its start written).
#[derive(Debug, Clone, Copy)]
pub struct Started<'a> {
    pub at: DateTime<Utc>,
    pub event: &'a Event,
}

/// The `from` and patch of a step written with the job's start, if there is one.
fn with_start<'a>(
    from: &'a [Status],
    patch: &'a TaskPatch,
    started: Option<Started>,
) -> (&'a [Status], Cow<'a, TaskPatch>) {
    match started {
        Some(s) => (
            &[Status::Dispatched],
            Cow::Owned(TaskPatch {
                started_at: Some(s.at),
                ..patch.clone()
            }),
        ),
        None => (from, Cow::Borrowed(patch)),
    }
}

/// A task's `executed` record and its terminal transition at once: the same outcome as
/// [`record_executed`] then [`finish`] (from `executed`), in fewer statements, because the outputs
/// are inserted with what storing them came to (with the transaction's appends). Used when both
/// writes are queued together, which is usual: the outputs were stored while the first one waited
/// for company. With `started`, the job's start is written too. None, with nothing written, when the
/// task was not in one of `from` (the caller then applies the writes one after the other).
#[allow(clippy::too_many_arguments)] // the writes' facts, each named
pub async fn complete<C: ConnectionTrait>(
    txn: &C,
    id: &str,
    started: Option<Started<'_>>,
    from: &[Status],
    outputs: &[NewOutput],
    executed: &Event,
    to: Status,
    patch: &TaskPatch,
    marks: &[OutputMark],
    event: &Event,
    give_up_at: DateTime<Utc>,
    appends: &mut Appends,
) -> Result<Option<Finished>, DbErr> {
    let (from, patch) = with_start(from, patch, started);
    let Some(task) = transition_to_record(txn, id, from, to, &patch).await? else {
        return Ok(None);
    };
    if let Some(s) = started {
        appends.event(id, s.event);
    }
    appends.event(id, executed);
    appends.event(id, event);
    // A task's outputs are recorded only with its move to `executed`, which it never leaves for an
    // earlier status; so a task that ends from `from` (before `executed`) has none recorded yet, and
    // its rows can go with the appends: the webhook's payload lists them as they will read.
    let now = Utc::now();
    let mut rows: Vec<output::Model> = outputs
        .iter()
        .map(|o| {
            let mark = marks
                .iter()
                .find(|m| m.node_id == o.node_id && m.idx == o.idx);
            output_model(id, o, mark, now)
        })
        .collect();
    rows.sort_by(|a, b| (&a.node_id, a.idx).cmp(&(&b.node_id, b.idx)));
    let recorded = rows.iter().map(OutputInfo::from).collect();
    appends.outputs(rows);
    let delivery = put_webhook(txn, task, Some(recorded), give_up_at, appends).await?;
    Ok(Some(Finished {
        applied: true,
        delivery,
    }))
}

/// Puts the webhook of a task that just ended in the outbox (with the transaction's appends), when it
/// has a callback URL. Its payload is the task's final record: `outputs` when the caller has them,
/// else read in the same transaction.
async fn put_webhook<C: ConnectionTrait>(
    txn: &C,
    task: RecordRow,
    outputs: Option<Vec<OutputInfo>>,
    give_up_at: DateTime<Utc>,
    appends: &mut Appends,
) -> Result<Option<delivery::Model>, DbErr> {
    let Some(url) = task.client_callback_url.clone().filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let outputs = match outputs {
        Some(o) => o,
        None => task_outputs(txn, &task.id)
            .await?
            .iter()
            .map(OutputInfo::from)
            .collect(),
    };
    let task_id = task.id.clone();
    let payload = serde_json::to_string(&TaskRecord::from_row(task, outputs))
        .map_err(|e| DbErr::Custom(format!("webhook payload: {e}")))?;
    let now = Utc::now();
    let model = delivery::Model {
        id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        task_id,
        url,
        payload,
        status: "pending".into(),
        attempts: 0,
        next_attempt_at: now,
        give_up_at,
        last_status_code: None,
        last_error: None,
        created_at: now,
        delivered_at: None,
    };
    appends.delivery(model.clone());
    Ok(Some(model))
}

/// Finds a task by comfyd id, or else by the client's task id.
pub async fn find_task(db: &DatabaseConnection, id: &str) -> Result<Option<task::Model>, DbErr> {
    // No id holds a NUL (submits refuse them), and PostgreSQL would fail the query on one.
    if id.contains('\0') {
        return Ok(None);
    }
    if let Some(t) = task::Entity::find_by_id(id.to_string()).one(db).await? {
        return Ok(Some(t));
    }
    task::Entity::find()
        .filter(task::Column::ClientTaskId.eq(id))
        .one(db)
        .await
}

pub async fn get_task(db: &DatabaseConnection, id: &str) -> Result<Option<task::Model>, DbErr> {
    task::Entity::find_by_id(id.to_string()).one(db).await
}

/// Filters for listing tasks.
#[derive(Debug, Default, Clone)]
pub struct TaskFilter {
    pub status: Option<Status>,
    pub workflow: Option<String>,
    pub limit: u64,
    pub offset: u64,
    /// Only the tasks of this API key (a submit key's listing).
    pub owner: Option<String>,
}

pub async fn list_tasks(
    db: &DatabaseConnection,
    f: &TaskFilter,
) -> Result<(Vec<task::Model>, u64), DbErr> {
    let mut q = task::Entity::find();
    if let Some(s) = f.status {
        q = q.filter(task::Column::Status.eq(s.as_str()));
    }
    if let Some(w) = &f.workflow {
        q = q.filter(task::Column::Workflow.eq(w.as_str()));
    }
    if let Some(owner) = &f.owner {
        q = q.filter(task::Column::Owner.eq(owner.as_str()));
    }
    let total = q.clone().count(db).await?;
    let rows = q
        .order_by_desc(task::Column::CreatedAt)
        .order_by_desc(task::Column::Id)
        .limit(f.limit)
        .offset(f.offset)
        .all(db)
        .await?;
    Ok((rows, total))
}

/// Queued tasks in dispatch order (priority first, then age), with the prompt id each will run
/// under: how the Dispatcher rebuilds its queue.
pub async fn queued_tasks(
    db: &DatabaseConnection,
) -> Result<Vec<(String, i32, Option<String>)>, DbErr> {
    let rows: Vec<(String, i32, Option<String>)> = task::Entity::find()
        .select_only()
        .column(task::Column::Id)
        .column(task::Column::Priority)
        .column(task::Column::ComfyuiTaskId)
        .filter(task::Column::Status.eq(Status::Queued.as_str()))
        .order_by_desc(task::Column::Priority)
        .order_by_asc(task::Column::CreatedAt)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows)
}

/// Tasks in the given statuses (recovery after a restart).
pub async fn tasks_in(
    db: &DatabaseConnection,
    statuses: &[Status],
) -> Result<Vec<task::Model>, DbErr> {
    task::Entity::find()
        .filter(task::Column::Status.is_in(statuses.iter().map(|s| s.as_str())))
        .order_by_asc(task::Column::CreatedAt)
        .all(db)
        .await
}

/// Tasks past their deadline that ComfyUI has not finished yet.
pub async fn overdue_tasks(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
) -> Result<Vec<task::Model>, DbErr> {
    task::Entity::find()
        .filter(task::Column::Status.is_in(Status::BEFORE_STORING.iter().map(|s| s.as_str())))
        .filter(task::Column::DeadlineAt.lt(now))
        .all(db)
        .await
}

pub async fn task_events(
    db: &DatabaseConnection,
    task_id: &str,
) -> Result<Vec<task_event::Model>, DbErr> {
    task_event::Entity::find()
        .filter(task_event::Column::TaskId.eq(task_id))
        .order_by_asc(task_event::Column::Id)
        .all(db)
        .await
}

/// An output as recorded when a prompt finishes, before it is stored.
#[derive(Debug, Clone)]
pub struct NewOutput {
    pub node_id: String,
    pub idx: i32,
    pub kind: String,
    pub filename: String,
    pub subfolder: String,
    pub folder_type: String,
    pub content_type: String,
    pub storage_key: String,
}

/// An output's row: as ComfyUI reported it, with what storing it came to when that is known. Its `id`
/// is 0: the database numbers the row when it is inserted (see [`output_row`]).
fn output_model(
    task_id: &str,
    o: &NewOutput,
    mark: Option<&OutputMark>,
    now: DateTime<Utc>,
) -> output::Model {
    output::Model {
        id: 0,
        task_id: task_id.into(),
        node_id: o.node_id.clone(),
        idx: o.idx,
        kind: o.kind.clone(),
        filename: o.filename.clone(),
        subfolder: o.subfolder.clone(),
        folder_type: o.folder_type.clone(),
        content_type: mark.map_or(&o.content_type, |m| &m.content_type).clone(),
        size: mark.map_or(0, |m| m.size),
        storage_key: o.storage_key.clone(),
        stored: mark.is_some_and(|m| m.stored),
        fallback_path: mark.and_then(|m| m.fallback_path.clone()),
        created_at: now,
    }
}

/// [`output_model`]'s row to insert.
fn output_row(model: output::Model) -> output::ActiveModel {
    output::ActiveModel {
        id: NotSet,
        ..model.into()
    }
}

/// Output rows; where a row of the same task, node and index is there already, it takes the new
/// row's values, so the rows read as given whatever was there.
fn upsert_outputs(
    rows: impl IntoIterator<Item = output::ActiveModel>,
) -> sea_orm::InsertMany<output::ActiveModel> {
    use output::Column as C;
    output::Entity::insert_many(rows).on_conflict(
        sea_orm::sea_query::OnConflict::columns([C::TaskId, C::NodeId, C::Idx])
            .update_columns([
                C::Kind,
                C::Filename,
                C::Subfolder,
                C::FolderType,
                C::ContentType,
                C::Size,
                C::StorageKey,
                C::Stored,
                C::FallbackPath,
            ])
            .to_owned(),
    )
}

/// One statement for all of a task's output rows; outputs already recorded (a replay) stay as they are.
fn insert_outputs(
    rows: impl IntoIterator<Item = output::ActiveModel>,
) -> sea_orm::TryInsert<output::ActiveModel> {
    output::Entity::insert_many(rows).on_conflict_do_nothing_on([
        output::Column::TaskId,
        output::Column::NodeId,
        output::Column::Idx,
    ])
}

impl From<&output::Model> for NewOutput {
    fn from(o: &output::Model) -> NewOutput {
        NewOutput {
            node_id: o.node_id.clone(),
            idx: o.idx,
            kind: o.kind.clone(),
            filename: o.filename.clone(),
            subfolder: o.subfolder.clone(),
            folder_type: o.folder_type.clone(),
            content_type: o.content_type.clone(),
            storage_key: o.storage_key.clone(),
        }
    }
}

/// Records a task's outputs and moves it to `executed`, so that recovery knows what to store; with
/// `started`, the job's start too. Outputs already recorded (a replay) are left as they are. Answers
/// false when the task was not in one of `from` (cancelled, or already recorded), and then records
/// nothing.
pub async fn record_executed<C: ConnectionTrait>(
    txn: &C,
    task_id: &str,
    started: Option<Started<'_>>,
    from: &[Status],
    outputs: &[NewOutput],
    event: &Event,
    appends: &mut Appends,
) -> Result<bool, DbErr> {
    let none = TaskPatch::default();
    let (from, patch) = with_start(from, &none, started);
    let applied = transition_in(txn, task_id, from, Status::Executed, &patch).await?;
    if !applied {
        return Ok(false);
    }
    if let Some(s) = started {
        appends.event(task_id, s.event);
    }
    appends.event(task_id, event);
    if outputs.is_empty() {
        return Ok(true);
    }
    let now = Utc::now();
    let rows = outputs
        .iter()
        .map(|o| output_row(output_model(task_id, o, None, now)));
    insert_outputs(rows).exec_without_returning(txn).await?;
    Ok(true)
}

pub async fn task_outputs<C: ConnectionTrait>(
    db: &C,
    task_id: &str,
) -> Result<Vec<output::Model>, DbErr> {
    output::Entity::find()
        .filter(output::Column::TaskId.eq(task_id))
        .order_by_asc(output::Column::NodeId)
        .order_by_asc(output::Column::Idx)
        .all(db)
        .await
}

/// What storing one output came to. The output is named by its place in the task (node, index), not
/// by its row id: the uploader stores a task's outputs while their rows are still being written.
#[derive(Debug, Clone)]
pub struct OutputMark {
    pub node_id: String,
    pub idx: i32,
    /// Stored under its key; false: kept in the fallback folder, or not fetched at all.
    pub stored: bool,
    /// The real content type and size, as ComfyUI served it.
    pub content_type: String,
    pub size: i64,
    pub fallback_path: Option<String>,
}

/// Records what storing one output came to.
pub async fn mark_output<C: ConnectionTrait>(
    db: &C,
    task_id: &str,
    m: &OutputMark,
) -> Result<(), DbErr> {
    output::Entity::update_many()
        .col_expr(output::Column::Stored, Expr::value(m.stored))
        .col_expr(
            output::Column::ContentType,
            Expr::value(m.content_type.as_str()),
        )
        .col_expr(output::Column::Size, Expr::value(m.size))
        .col_expr(
            output::Column::FallbackPath,
            Expr::value(m.fallback_path.clone()),
        )
        .filter(output::Column::TaskId.eq(task_id))
        .filter(output::Column::NodeId.eq(m.node_id.as_str()))
        .filter(output::Column::Idx.eq(m.idx))
        .exec(db)
        .await?;
    Ok(())
}

/// Outputs kept in the fallback folder, with their task (for re-upload).
pub async fn fallback_outputs(db: &DatabaseConnection) -> Result<Vec<output::Model>, DbErr> {
    output::Entity::find()
        .filter(output::Column::Stored.eq(false))
        .filter(output::Column::FallbackPath.is_not_null())
        .all(db)
        .await
}

/// Deliveries due now, oldest first.
pub async fn due_deliveries(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<delivery::Model>, DbErr> {
    delivery::Entity::find()
        .filter(delivery::Column::Status.eq("pending"))
        .filter(delivery::Column::NextAttemptAt.lte(now))
        .order_by_asc(delivery::Column::NextAttemptAt)
        .limit(limit)
        .all(db)
        .await
}

pub async fn task_deliveries(
    db: &DatabaseConnection,
    task_id: &str,
) -> Result<Vec<delivery::Model>, DbErr> {
    delivery::Entity::find()
        .filter(delivery::Column::TaskId.eq(task_id))
        .order_by_asc(delivery::Column::CreatedAt)
        .all(db)
        .await
}

pub async fn delivery_attempts(
    db: &DatabaseConnection,
    delivery_id: &str,
) -> Result<Vec<delivery_attempt::Model>, DbErr> {
    delivery_attempt::Entity::find()
        .filter(delivery_attempt::Column::DeliveryId.eq(delivery_id))
        .order_by_asc(delivery_attempt::Column::Id)
        .all(db)
        .await
}

/// What one delivery attempt came to.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub delivery_id: String,
    pub task_id: String,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i64,
    /// The delivery's new status: delivered, pending (retry at `next_attempt_at`) or failed.
    pub new_status: &'static str,
    pub next_attempt_at: DateTime<Utc>,
}

/// Records an attempt and its consequence for the delivery; a delivered webhook also gets a `notified`
/// event on its task. Only a pending delivery changes, so a late duplicate attempt cannot undo a success.
pub async fn record_attempt<C: ConnectionTrait>(
    txn: &C,
    a: &AttemptOutcome,
    appends: &mut Appends,
) -> Result<(), DbErr> {
    let now = Utc::now();
    appends.attempt(delivery_attempt::ActiveModel {
        id: NotSet,
        delivery_id: Set(a.delivery_id.clone()),
        status_code: Set(a.status_code),
        error: Set(a.error.clone()),
        duration_ms: Set(a.duration_ms),
        at: Set(now),
    });
    let mut q = delivery::Entity::update_many()
        .col_expr(delivery::Column::Status, Expr::value(a.new_status))
        .col_expr(
            delivery::Column::Attempts,
            Expr::col(delivery::Column::Attempts).add(1),
        )
        .col_expr(
            delivery::Column::NextAttemptAt,
            Expr::value(a.next_attempt_at),
        )
        .col_expr(delivery::Column::LastStatusCode, Expr::value(a.status_code))
        .col_expr(delivery::Column::LastError, Expr::value(a.error.clone()));
    if a.new_status == "delivered" {
        q = q.col_expr(delivery::Column::DeliveredAt, Expr::value(Some(now)));
    }
    let res = q
        .filter(delivery::Column::Id.eq(a.delivery_id.as_str()))
        .filter(delivery::Column::Status.eq("pending"))
        .exec(txn)
        .await?;
    if res.rows_affected == 1 && a.new_status != "pending" {
        let kind = if a.new_status == "delivered" {
            "notified"
        } else {
            "notify_failed"
        };
        appends.event(
            &a.task_id,
            &Event::new(
                kind,
                serde_json::json!({ "delivery_id": a.delivery_id, "status_code": a.status_code, "error": a.error }),
            ),
        );
    }
    Ok(())
}

/// Puts a delivery back in the outbox, due now (the redeliver API).
pub async fn redeliver<C: ConnectionTrait>(
    db: &C,
    id: &str,
    give_up_at: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let now = Utc::now();
    let res = delivery::Entity::update_many()
        .col_expr(delivery::Column::Status, Expr::value("pending"))
        .col_expr(delivery::Column::NextAttemptAt, Expr::value(now))
        .col_expr(delivery::Column::GiveUpAt, Expr::value(give_up_at))
        .filter(delivery::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// API keys added with `comfyd keys add` that are not revoked (what the daemon accepts).
pub async fn active_api_keys<C: ConnectionTrait>(db: &C) -> Result<Vec<api_key::Model>, DbErr> {
    api_key::Entity::find()
        .filter(api_key::Column::RevokedAt.is_null())
        .order_by_asc(api_key::Column::CreatedAt)
        .all(db)
        .await
}

/// Every API key in the database, revoked ones too, oldest first (`comfyd keys list`).
pub async fn all_api_keys<C: ConnectionTrait>(db: &C) -> Result<Vec<api_key::Model>, DbErr> {
    api_key::Entity::find()
        .order_by_asc(api_key::Column::CreatedAt)
        .all(db)
        .await
}

/// Stores a new API key (its hash; the key itself never reaches the database).
pub async fn insert_api_key<C: ConnectionTrait>(db: &C, key: api_key::Model) -> Result<(), DbErr> {
    api_key::Entity::insert(api_key::ActiveModel::from(key))
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Revokes the keys with this id, or else with this name; returns how many were revoked.
pub async fn revoke_api_keys<C: ConnectionTrait>(db: &C, id_or_name: &str) -> Result<u64, DbErr> {
    let revoke = |column: api_key::Column| {
        api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(Utc::now()))
            .filter(column.eq(id_or_name))
            .filter(api_key::Column::RevokedAt.is_null())
    };
    let by_id = revoke(api_key::Column::Id).exec(db).await?.rows_affected;
    if by_id > 0 {
        return Ok(by_id);
    }
    Ok(revoke(api_key::Column::Name).exec(db).await?.rows_affected)
}

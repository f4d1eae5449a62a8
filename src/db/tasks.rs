//! The `task` table: inserting new tasks, their status transitions (each a conditional update, so a
//! step that no longer applies changes nothing), and the reads of routes, recovery and dispatch.

use std::borrow::Cow;
use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, FromQueryResult,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, TryInsertResult,
};
use serde_json::Value;

use super::appends::Appends;
use super::deliveries::put_webhook;
use super::events::Event;
use super::outputs::{mark, output_model, NewOutput, OutputMark};
use crate::entity::{delivery, output, task};
use crate::task::{OutputInfo, RecordRow, Status};

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
    /// The served release it was accepted under (None: the workflows folder was served).
    pub release_version: Option<i32>,
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
pub async fn insert<C: ConnectionTrait>(
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
        release_version: t.release_version,
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

pub(super) async fn transition_in<C: ConnectionTrait>(
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

/// Like [`transition`], answering what the task's [`crate::task::TaskRecord`] needs of its row
/// after the change (`RETURNING` only those columns: a terminal transition does not need the graph
/// back); None when the task was not in one of `from`.
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
    /// The task's workflow (for the finished-tasks metric).
    pub workflow: String,
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
        mark(txn, id, m).await?;
    }
    appends.event(id, event);
    let workflow = task.workflow.clone();
    let delivery = put_webhook(txn, task, None, give_up_at, appends).await?;
    Ok(Finished {
        applied: true,
        delivery,
        workflow,
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
pub(super) fn with_start<'a>(
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
/// [`super::outputs::record_executed`] then [`finish`] (from `executed`), in fewer statements,
/// because the outputs are inserted with what storing them came to (with the transaction's
/// appends). Used when both writes are queued together, which is usual: the outputs were stored
/// while the first one waited for company. With `started`, the job's start is written too. None,
/// with nothing written, when the task was not in one of `from` (the caller then applies the writes
/// one after the other).
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
    let workflow = task.workflow.clone();
    let delivery = put_webhook(txn, task, Some(recorded), give_up_at, appends).await?;
    Ok(Some(Finished {
        applied: true,
        delivery,
        workflow,
    }))
}

/// Finds a task by comfyd id, or else by the client's task id.
pub async fn find(db: &DatabaseConnection, id: &str) -> Result<Option<task::Model>, DbErr> {
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

/// A task by comfyd id.
pub async fn get(db: &DatabaseConnection, id: &str) -> Result<Option<task::Model>, DbErr> {
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

/// A page of tasks, newest first, and how many match in all.
pub async fn list(
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
/// under and the release it was accepted under: how the Dispatcher rebuilds its queue.
#[allow(clippy::type_complexity)]
pub async fn queued(
    db: &DatabaseConnection,
) -> Result<Vec<(String, i32, Option<String>, Option<i32>)>, DbErr> {
    let rows: Vec<(String, i32, Option<String>, Option<i32>)> = task::Entity::find()
        .select_only()
        .column(task::Column::Id)
        .column(task::Column::Priority)
        .column(task::Column::ComfyuiTaskId)
        .column(task::Column::ReleaseVersion)
        .filter(task::Column::Status.eq(Status::Queued.as_str()))
        .order_by_desc(task::Column::Priority)
        .order_by_asc(task::Column::CreatedAt)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows)
}

/// Tasks in the given statuses (recovery after a restart).
pub async fn in_statuses(
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
pub async fn overdue(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
) -> Result<Vec<task::Model>, DbErr> {
    task::Entity::find()
        .filter(task::Column::Status.is_in(Status::BEFORE_STORING.iter().map(|s| s.as_str())))
        .filter(task::Column::DeadlineAt.lt(now))
        .all(db)
        .await
}

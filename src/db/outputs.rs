//! The `output` table: a task's outputs as ComfyUI reported them, recorded with the task's move to
//! `executed` ([`record_executed`]) or with its end ([`super::tasks::complete`]), then marked with
//! what storing each came to ([`mark`]); read by the routes, the uploader and recovery.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::ActiveValue::NotSet;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
};

use super::appends::Appends;
use super::events::Event;
use super::tasks::{transition_in, with_start, Started, TaskPatch};
use crate::entity::output;
use crate::task::Status;

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
pub(super) fn output_model(
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
pub(super) fn output_row(model: output::Model) -> output::ActiveModel {
    output::ActiveModel {
        id: NotSet,
        ..model.into()
    }
}

/// Output rows; where a row of the same task, node and index is there already, it takes the new
/// row's values, so the rows read as given whatever was there.
pub(super) fn upsert_outputs(
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

/// A task's outputs, by node and index.
pub async fn for_task<C: ConnectionTrait>(
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
pub async fn mark<C: ConnectionTrait>(db: &C, task_id: &str, m: &OutputMark) -> Result<(), DbErr> {
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
pub async fn in_fallback(db: &DatabaseConnection) -> Result<Vec<output::Model>, DbErr> {
    output::Entity::find()
        .filter(output::Column::Stored.eq(false))
        .filter(output::Column::FallbackPath.is_not_null())
        .all(db)
        .await
}

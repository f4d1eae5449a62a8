//! The `releases` table: inserting a release (or finding the one with the same content), listing
//! and reading them. Called by the operator surface (`cli::release`, `routes::releases`).
//!
//! These writes go straight to the pool, not through the Recorder: the Recorder batches the hot
//! path (tasks, events, outputs) behind one writer, while a release is a rare admin write that needs
//! its own unique-conflict handling (the same content published twice, perhaps by two instances at
//! once, is one row), and nothing else waits on it.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use crate::entity::release;
use crate::release::Draft;

/// A release to store; `version` is given by the database.
#[derive(Debug, Clone)]
pub struct NewRelease {
    pub content_hash: String,
    pub note: Option<String>,
    pub source: Option<String>,
    /// JSON text of the files.
    pub files: String,
    /// JSON text of the needs.
    pub needs: String,
    /// JSON text of the environment, if read.
    pub environment: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl NewRelease {
    /// The row for a checked draft, made now.
    pub fn of(draft: &Draft) -> Result<NewRelease, serde_json::Error> {
        Ok(NewRelease {
            content_hash: draft.snapshot.content_hash.clone(),
            note: draft.note.clone(),
            source: draft.source.clone(),
            files: serde_json::to_string(&draft.snapshot.files)?,
            needs: serde_json::to_string(&draft.snapshot.needs)?,
            environment: draft
                .environment
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
            created_at: Utc::now(),
        })
    }
}

/// Whether [`insert_or_existing`] made a new release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new version.
    Created,
    /// A release with the same content hash was already there; it is returned unchanged.
    Existing,
}

/// Stores `new` as the next version, unless a release with its content hash exists: then that one,
/// unchanged. Race-safe: two publishes of the same content at once meet at the unique index, and
/// the one that loses reads the winner's row back.
pub async fn insert_or_existing<C: ConnectionTrait>(
    db: &C,
    new: NewRelease,
) -> Result<(release::Model, Outcome), DbErr> {
    if let Some(existing) = by_hash(db, &new.content_hash).await? {
        return Ok((existing, Outcome::Existing));
    }
    let hash = new.content_hash.clone();
    let row = release::ActiveModel {
        version: ActiveValue::NotSet,
        content_hash: ActiveValue::Set(new.content_hash),
        note: ActiveValue::Set(new.note),
        source: ActiveValue::Set(new.source),
        files: ActiveValue::Set(new.files),
        needs: ActiveValue::Set(new.needs),
        environment: ActiveValue::Set(new.environment),
        created_at: ActiveValue::Set(new.created_at),
    };
    let written = release::Entity::insert(row)
        .on_conflict(
            OnConflict::column(release::Column::ContentHash)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    let model = by_hash(db, &hash)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("release with content hash {hash}")))?;
    Ok((
        model,
        if written > 0 {
            Outcome::Created
        } else {
            Outcome::Existing
        },
    ))
}

/// The release with this content hash.
pub async fn by_hash<C: ConnectionTrait>(
    db: &C,
    content_hash: &str,
) -> Result<Option<release::Model>, DbErr> {
    release::Entity::find()
        .filter(release::Column::ContentHash.eq(content_hash))
        .one(db)
        .await
}

/// At most `limit` releases, newest first.
pub async fn list<C: ConnectionTrait>(db: &C, limit: u64) -> Result<Vec<release::Model>, DbErr> {
    release::Entity::find()
        .order_by_desc(release::Column::Version)
        .limit(limit)
        .all(db)
        .await
}

/// The release with this version.
pub async fn get<C: ConnectionTrait>(
    db: &C,
    version: i32,
) -> Result<Option<release::Model>, DbErr> {
    release::Entity::find_by_id(version).one(db).await
}

/// The newest release.
pub async fn latest<C: ConnectionTrait>(db: &C) -> Result<Option<release::Model>, DbErr> {
    release::Entity::find()
        .order_by_desc(release::Column::Version)
        .one(db)
        .await
}

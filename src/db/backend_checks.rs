//! The `backend_checks` table: recording a check of a backend against a release, and reading the
//! newest per backend. Called by the readiness route and `comfyd release check`.
//!
//! Written straight to the pool, like `releases`, not through the Recorder: the Recorder batches
//! the hot path (tasks, events, outputs) behind one writer; a check is a rare admin write, made
//! after seconds of talking to backends, that nothing else waits on or orders against.

use sea_orm::{
    ActiveValue, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use crate::entity::backend_check;
use crate::release::BackendCheck;

/// Stores one check of `backend` against release `release_version`; the row as stored.
pub async fn insert<C: ConnectionTrait>(
    db: &C,
    release_version: i32,
    backend: &str,
    check: &BackendCheck,
) -> Result<backend_check::Model, DbErr> {
    let json = |e: serde_json::Error| DbErr::Custom(format!("encoding a backend check: {e}"));
    let row = backend_check::ActiveModel {
        id: ActiveValue::NotSet,
        release_version: ActiveValue::Set(release_version),
        backend: ActiveValue::Set(backend.to_string()),
        passed: ActiveValue::Set(check.passed),
        reasons: ActiveValue::Set(serde_json::to_string(&check.reasons).map_err(json)?),
        missing: ActiveValue::Set(serde_json::to_string(&check.missing).map_err(json)?),
        comfyui_version: ActiveValue::Set(check.comfyui_version.clone()),
        checked_at: ActiveValue::Set(check.checked_at),
    };
    backend_check::Entity::insert(row)
        .exec_with_returning(db)
        .await
}

/// The newest check of each backend against release `release_version`, by backend name.
pub async fn latest_per_backend<C: ConnectionTrait>(
    db: &C,
    release_version: i32,
) -> Result<Vec<backend_check::Model>, DbErr> {
    let backends: Vec<String> = backend_check::Entity::find()
        .select_only()
        .column(backend_check::Column::Backend)
        .filter(backend_check::Column::ReleaseVersion.eq(release_version))
        .group_by(backend_check::Column::Backend)
        .order_by_asc(backend_check::Column::Backend)
        .into_tuple()
        .all(db)
        .await?;
    let mut out = Vec::with_capacity(backends.len());
    // One indexed lookup per backend (a fleet is a handful of servers).
    for backend in backends {
        if let Some(row) = latest(db, release_version, &backend).await? {
            out.push(row);
        }
    }
    Ok(out)
}

/// The newest check of one backend against a release.
pub async fn latest<C: ConnectionTrait>(
    db: &C,
    release_version: i32,
    backend: &str,
) -> Result<Option<backend_check::Model>, DbErr> {
    backend_check::Entity::find()
        .filter(backend_check::Column::ReleaseVersion.eq(release_version))
        .filter(backend_check::Column::Backend.eq(backend))
        .order_by_desc(backend_check::Column::CheckedAt)
        .order_by_desc(backend_check::Column::Id)
        .one(db)
        .await
}

//! The `api_key` table: keys added with `comfyd keys` (their hashes), read by the daemon's key
//! refresh (`routes::auth`) and written by the CLI (`cli::keys`), not by the Recorder.

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder};

use crate::entity::api_key;

/// API keys added with `comfyd keys add` that are not revoked (what the daemon accepts).
pub async fn active<C: ConnectionTrait>(db: &C) -> Result<Vec<api_key::Model>, DbErr> {
    api_key::Entity::find()
        .filter(api_key::Column::RevokedAt.is_null())
        .order_by_asc(api_key::Column::CreatedAt)
        .all(db)
        .await
}

/// Every API key in the database, revoked ones too, oldest first (`comfyd keys list`).
pub async fn all<C: ConnectionTrait>(db: &C) -> Result<Vec<api_key::Model>, DbErr> {
    api_key::Entity::find()
        .order_by_asc(api_key::Column::CreatedAt)
        .all(db)
        .await
}

/// Stores a new API key (its hash; the key itself never reaches the database).
pub async fn insert<C: ConnectionTrait>(db: &C, key: api_key::Model) -> Result<(), DbErr> {
    api_key::Entity::insert(api_key::ActiveModel::from(key))
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Revokes the keys with this id, or else with this name; returns how many were revoked.
pub async fn revoke<C: ConnectionTrait>(db: &C, id_or_name: &str) -> Result<u64, DbErr> {
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

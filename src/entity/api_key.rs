//! `api_keys`: keys added with `comfyd keys add`; the key itself is never stored, only its SHA-256.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Recorded as the owner of the tasks the key submits.
    pub name: String,
    /// `submit` or `admin`.
    pub scope: String,
    /// SHA-256 of the key, lower-case hex.
    pub key_hash: String,
    pub created_at: DateTimeUtc,
    /// Set by `comfyd keys revoke`: the key no longer authenticates.
    pub revoked_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

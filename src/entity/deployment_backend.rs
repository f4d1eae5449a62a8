//! `deployment_backends`: one configured backend's part in one deployment (unique per pair).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "deployment_backends")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub deployment_id: i64,
    /// The backend's name (its configured URL without a trailing `/`).
    pub backend: String,
    /// `pending`, `checking`, `passed`, `failed` or `switched`.
    pub state: String,
    /// Why it failed, the check's reasons joined.
    pub reason: Option<String>,
    pub started_at: Option<DateTimeUtc>,
    pub ended_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

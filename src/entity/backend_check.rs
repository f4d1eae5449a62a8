//! `backend_checks`: one check of one backend against one release (readiness). The JSON columns
//! are text, as elsewhere in the schema.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "backend_checks")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The release checked against (`releases.version`).
    pub release_version: i32,
    /// The backend's name (its configured URL without a trailing `/`, as the dispatcher names it).
    pub backend: String,
    pub passed: bool,
    /// JSON array of lines: why it did not pass.
    pub reasons: String,
    /// JSON `{node_classes, models}`: what it lacks.
    pub missing: String,
    pub comfyui_version: Option<String>,
    pub checked_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

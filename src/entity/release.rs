//! `releases`: immutable snapshots of the workflows folder (`comfyd release publish`). The JSON
//! columns are text, as elsewhere in the schema, so SQLite and PostgreSQL store the same bytes.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "releases")]
pub struct Model {
    /// The release's number, 1, 2, ...: what operators name.
    #[sea_orm(primary_key)]
    pub version: i32,
    /// `sha256:<hex>` of the files (unique: the same content is one release).
    pub content_hash: String,
    pub note: Option<String>,
    /// The development server's URL the environment was read from (`--from`).
    pub source: Option<String>,
    /// JSON array of `{name, manifest, graph}`, sorted by name.
    pub files: String,
    /// JSON `{node_classes, models}`.
    pub needs: String,
    /// JSON of the dev server's environment, when published `--from` one.
    pub environment: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

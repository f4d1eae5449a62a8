//! `outputs`: every file a task produced.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outputs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub task_id: String,
    pub node_id: String,
    /// Position among the node's outputs (batches).
    pub idx: i32,
    /// The list ComfyUI reported it under: images, gifs, audio, ...
    pub kind: String,
    pub filename: String,
    pub subfolder: String,
    /// ComfyUI's folder type: output, temp or input.
    pub folder_type: String,
    pub content_type: String,
    pub size: i64,
    pub storage_key: String,
    pub stored: bool,
    pub fallback_path: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

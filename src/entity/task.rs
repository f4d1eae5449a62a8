//! `tasks`: one row per accepted task.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tasks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub client_task_id: Option<String>,
    pub client_callback_url: Option<String>,
    pub workflow: String,
    /// sha256 of the request, to tell a retried submit from a conflicting one.
    pub request_hash: String,
    /// The client's parameters as accepted (JSON; images replaced by a note of where they were kept).
    pub params: String,
    /// The graph this task runs, rendered at accept time (JSON); input image names are set at dispatch.
    pub graph: String,
    /// Input images waiting in the data folder: JSON list of `dispatch::InputFile`.
    pub inputs: String,
    /// Output nodes whose files are collected (JSON list of node ids).
    pub output_nodes: String,
    pub priority: i32,
    pub status: String,
    pub backend: Option<String>,
    /// ComfyUI's prompt_id (chosen by comfyd before the prompt is sent).
    pub comfyui_task_id: Option<String>,
    pub comfyui_filepath: Option<String>,
    pub s3_key: Option<String>,
    pub error_code: i32,
    pub error_message: Option<String>,
    pub error_details: Option<String>,
    pub attempts: i32,
    pub deadline_at: DateTimeUtc,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub dispatched_at: Option<DateTimeUtc>,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    /// The name of the API key that submitted the task (null without keys); only that key's name
    /// and admin keys see it.
    pub owner: Option<String>,
    /// The release it was accepted under (`releases.version`); NULL: the workflows folder was
    /// served. Its graph is stored above, so a later deployment does not change what it runs.
    pub release_version: Option<i32>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

//! `deployments`: one attempt to serve a release on the configured backends (#19). `active` is 1
//! while the deployment is not terminal, NULL once it is: its unique index is the database's
//! one-at-a-time rule.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "deployments")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The release deployed (`releases.version`).
    pub release_version: i32,
    /// The release served when it was created (NULL: the workflows folder).
    pub previous_version: Option<i32>,
    /// `pending`, `checking`, `rolling`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// How many backends are checked at once.
    pub max_unavailable: i32,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    /// 1 while not terminal, NULL once terminal.
    pub active: Option<i32>,
    /// For #22: the instance driving it.
    pub owner: Option<String>,
    /// For #22: until when `owner` holds it.
    pub lease_expires_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub started_at: Option<DateTimeUtc>,
    pub ended_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

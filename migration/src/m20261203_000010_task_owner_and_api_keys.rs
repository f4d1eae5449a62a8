//! API keys: the `api_keys` table (keys added with `comfyd keys add`, stored as SHA-256 hashes) and
//! `tasks.owner`, the name of the key that submitted a task (null when no keys are in use).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("tasks")
                    .add_column(string_len_null("owner", 64))
                    .to_owned(),
            )
            .await?;
        // A submit key lists its own tasks, newest first.
        manager
            .create_index(
                Index::create()
                    .name("tasks_owner_created")
                    .table("tasks")
                    .col("owner")
                    .col("created_at")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("api_keys")
                    .if_not_exists()
                    .col(string_len("id", 36).primary_key())
                    .col(string_len("name", 64))
                    .col(string_len("scope", 16))
                    .col(string_len("key_hash", 64).unique_key())
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone_null("revoked_at"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("api_keys").if_exists().to_owned())
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("tasks_owner_created")
                    .table("tasks")
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("tasks")
                    .drop_column("owner")
                    .to_owned(),
            )
            .await
    }
}

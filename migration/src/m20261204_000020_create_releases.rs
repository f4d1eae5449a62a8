//! Releases (#19): the `releases` table, one immutable snapshot of the workflows folder per row.
//! `version` is the number operators name; `content_hash` is unique, so publishing the same content
//! twice (from any instance sharing the database) finds the row already there.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("releases")
                    .if_not_exists()
                    .col(pk_auto("version"))
                    .col(text("content_hash").unique_key())
                    .col(text_null("note"))
                    .col(text_null("source"))
                    .col(text("files"))
                    .col(text("needs"))
                    .col(text_null("environment"))
                    .col(timestamp_with_time_zone("created_at"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("releases").if_exists().to_owned())
            .await
    }
}

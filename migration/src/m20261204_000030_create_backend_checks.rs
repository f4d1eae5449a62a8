//! Release readiness (#19): the `backend_checks` table, one row per check of one backend against
//! one release (`GET {prefix}/releases/{version}/readiness`, `comfyd release check`). Rows are
//! only added: the newest per (release, backend) is the backend's state, older ones its history.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("backend_checks")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(integer("release_version"))
                    .col(text("backend"))
                    .col(boolean("passed"))
                    // JSON array of lines.
                    .col(text("reasons"))
                    // JSON `{node_classes, models}`.
                    .col(text("missing"))
                    .col(text_null("comfyui_version"))
                    .col(timestamp_with_time_zone("checked_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("backend_checks_release")
                            .from("backend_checks", "release_version")
                            .to("releases", "version"),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("backend_checks_release_backend_at")
                    .table("backend_checks")
                    .col("release_version")
                    .col("backend")
                    .col("checked_at")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("backend_checks").if_exists().to_owned())
            .await
    }
}

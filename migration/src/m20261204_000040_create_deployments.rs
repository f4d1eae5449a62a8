//! Deployments (#19): `deployments`, one row per attempt to serve a release, with its per-backend
//! results in `deployment_backends`; and `tasks.release_version`, the release a task was accepted
//! under (NULL: accepted while the workflows folder was served).
//!
//! One deployment at a time is the database's rule, not a process's, so that several comfyd
//! instances on one PostgreSQL cannot both start one: `active` is 1 while a deployment is not
//! terminal and NULL once it is, and a unique index on it admits one 1 (NULLs never collide on
//! SQLite or PostgreSQL). `owner` and `lease_expires_at` are for #22 (which instance drives it).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("deployments")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(integer("release_version"))
                    .col(integer_null("previous_version"))
                    // pending | checking | rolling | succeeded | failed | cancelled
                    .col(text("state"))
                    .col(integer("max_unavailable"))
                    .col(text_null("reason"))
                    // 1 while not terminal, NULL once terminal (unique: one at a time).
                    .col(integer_null("active"))
                    .col(text_null("owner"))
                    .col(timestamp_with_time_zone_null("lease_expires_at"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone_null("started_at"))
                    .col(timestamp_with_time_zone_null("ended_at"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("deployments_release")
                            .from("deployments", "release_version")
                            .to("releases", "version"),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("deployments_one_active")
                    .table("deployments")
                    .col("active")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("deployment_backends")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(big_integer("deployment_id"))
                    .col(text("backend"))
                    // pending | checking | passed | failed | switched
                    .col(text("state"))
                    .col(text_null("reason"))
                    .col(timestamp_with_time_zone_null("started_at"))
                    .col(timestamp_with_time_zone_null("ended_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("deployment_backends_deployment")
                            .from("deployment_backends", "deployment_id")
                            .to("deployments", "id"),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("deployment_backends_one_per_backend")
                    .table("deployment_backends")
                    .col("deployment_id")
                    .col("backend")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("tasks")
                    .add_column(integer_null("release_version"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("tasks")
                    .drop_column("release_version")
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(
                Table::drop()
                    .table("deployment_backends")
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table("deployments").if_exists().to_owned())
            .await
    }
}

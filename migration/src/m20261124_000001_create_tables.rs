//! tasks, outputs, task_events, deliveries and delivery_attempts.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One row per accepted task: the original service's columns plus the state comfyd needs to resume
        // a task after a crash (status, backend, prompt id, the exact graph it was accepted with).
        manager
            .create_table(
                Table::create()
                    .table("tasks")
                    .if_not_exists()
                    .col(string_len("id", 36).primary_key())
                    .col(string_null("client_task_id"))
                    .col(text_null("client_callback_url"))
                    .col(string("workflow"))
                    .col(string_len("request_hash", 64))
                    .col(text("params"))
                    .col(text("graph"))
                    .col(text("inputs"))
                    .col(text("output_nodes"))
                    .col(integer("priority"))
                    .col(string_len("status", 16))
                    .col(string_null("backend"))
                    .col(string_null("comfyui_task_id"))
                    .col(text_null("comfyui_filepath"))
                    .col(text_null("s3_key"))
                    .col(integer("error_code"))
                    .col(text_null("error_message"))
                    .col(text_null("error_details"))
                    .col(integer("attempts"))
                    .col(timestamp_with_time_zone("deadline_at"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .col(timestamp_with_time_zone_null("dispatched_at"))
                    .col(timestamp_with_time_zone_null("started_at"))
                    .col(timestamp_with_time_zone_null("finished_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("tasks_client_task_id")
                    .table("tasks")
                    .col("client_task_id")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("tasks_status")
                    .table("tasks")
                    .col("status")
                    .to_owned(),
            )
            .await?;

        // Every file a task produced: where it was on ComfyUI and where comfyd stored it.
        manager
            .create_table(
                Table::create()
                    .table("outputs")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string_len("task_id", 36))
                    .col(string("node_id"))
                    .col(integer("idx"))
                    .col(string("kind"))
                    .col(text("filename"))
                    .col(text("subfolder"))
                    .col(string("folder_type"))
                    .col(string("content_type"))
                    .col(big_integer("size"))
                    .col(text("storage_key"))
                    .col(boolean("stored"))
                    .col(text_null("fallback_path"))
                    .col(timestamp_with_time_zone("created_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("outputs_task_node_idx")
                    .table("outputs")
                    .col("task_id")
                    .col("node_id")
                    .col("idx")
                    .unique()
                    .to_owned(),
            )
            .await?;

        // The flow of each task, step by step.
        manager
            .create_table(
                Table::create()
                    .table("task_events")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string_len("task_id", 36))
                    .col(string("kind"))
                    .col(text("details"))
                    .col(timestamp_with_time_zone("at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("task_events_task")
                    .table("task_events")
                    .col("task_id")
                    .to_owned(),
            )
            .await?;

        // The webhook outbox: one row per message, retried until delivered or past its horizon.
        manager
            .create_table(
                Table::create()
                    .table("deliveries")
                    .if_not_exists()
                    .col(string_len("id", 40).primary_key())
                    .col(string_len("task_id", 36))
                    .col(text("url"))
                    .col(text("payload"))
                    .col(string_len("status", 16))
                    .col(integer("attempts"))
                    .col(timestamp_with_time_zone("next_attempt_at"))
                    .col(timestamp_with_time_zone("give_up_at"))
                    .col(integer_null("last_status_code"))
                    .col(text_null("last_error"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone_null("delivered_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("deliveries_due")
                    .table("deliveries")
                    .col("status")
                    .col("next_attempt_at")
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("deliveries_task")
                    .table("deliveries")
                    .col("task_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("delivery_attempts")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string_len("delivery_id", 40))
                    .col(integer_null("status_code"))
                    .col(text_null("error"))
                    .col(big_integer("duration_ms"))
                    .col(timestamp_with_time_zone("at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("delivery_attempts_delivery")
                    .table("delivery_attempts")
                    .col("delivery_id")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            "delivery_attempts",
            "deliveries",
            "task_events",
            "outputs",
            "tasks",
        ] {
            manager
                .drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

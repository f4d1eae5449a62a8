//! `cargo run -p migration -- up|down|status|fresh` against DATABASE_URL (comfyd itself migrates at start).
use sea_orm_migration::prelude::*;

#[tokio::main]
async fn main() {
    cli::run_cli(migration::Migrator).await;
}

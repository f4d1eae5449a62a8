//! comfyd's schema. Migrations never import the entities (src/entity in the root crate): each one is a
//! fixed snapshot of the schema change it makes, so old migrations keep working as entities evolve.
pub use sea_orm_migration::prelude::*;

mod m20261124_000001_create_tables;
mod m20261203_000010_task_owner_and_api_keys;
mod m20261204_000020_create_releases;
mod m20261204_000030_create_backend_checks;
mod m20261204_000040_create_deployments;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_tables::Migration),
            Box::new(m20261203_000010_task_owner_and_api_keys::Migration),
            Box::new(m20261204_000020_create_releases::Migration),
            Box::new(m20261204_000030_create_backend_checks::Migration),
            Box::new(m20261204_000040_create_deployments::Migration),
        ]
    }
}

//! A PostgreSQL database of its own for each run (`--postgres`): the bench's `client_task_id`s repeat
//! from run to run, so a database that kept one run's tasks would answer the next run's submits with
//! them.

use anyhow::Context as _;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

/// A database made for one run; [`RunDatabase::remove`] drops it.
pub struct RunDatabase {
    admin: DatabaseConnection,
    name: String,
    /// What comfyd connects to.
    pub url: String,
}

impl RunDatabase {
    /// Creates `comfyd_bench_<pid>_<n>` on the server of `admin_url` (a URL comfyd-bench may create
    /// databases with, such as `postgres://postgres@127.0.0.1/postgres`).
    pub async fn create(admin_url: &str, n: usize) -> anyhow::Result<RunDatabase> {
        let name = format!("comfyd_bench_{}_{n}", std::process::id());
        let url = url_for(admin_url, &name)?;
        let admin = Database::connect(admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url}"))?;
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
            .await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(RunDatabase { admin, name, url })
    }

    /// Drops the database (comfyd has stopped by then; `FORCE` ends any connection left); a failure
    /// is only reported.
    pub async fn remove(self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = self.admin.execute_unprepared(&sql).await {
            eprintln!("  could not drop database {}: {e}", self.name);
        }
    }
}

/// `admin_url` with its database replaced by `name`.
fn url_for(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(admin_url).context("--postgres is not a URL")?;
    anyhow::ensure!(
        matches!(url.scheme(), "postgres" | "postgresql"),
        "--postgres must be a postgres:// URL"
    );
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_database_replaces_the_admin_database_and_keeps_the_rest() {
        assert_eq!(
            url_for("postgres://postgres@127.0.0.1:5432/postgres", "b_1").expect("valid"),
            "postgres://postgres@127.0.0.1:5432/b_1"
        );
        assert_eq!(
            url_for("postgresql://u:p@db/admin?sslmode=disable", "b_2").expect("valid"),
            "postgresql://u:p@db/b_2?sslmode=disable"
        );
        assert!(url_for("sqlite://x.db", "b").is_err());
    }
}

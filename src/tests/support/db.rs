//! A fresh database for one test: a SQLite file in a temp folder, or a PostgreSQL database with a
//! random name (created through the local server, dropped after).

use std::process::Command;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use tempfile::TempDir;

/// Admin URL of the local PostgreSQL (trust auth, as on CI machines); PG_ADMIN_URL overrides.
fn pg_admin_url() -> String {
    std::env::var("PG_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub enum TestDb {
    // The folder lives as long as the database.
    Sqlite { _dir: TempDir, url: String },
    Postgres { name: String, url: String },
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("db dir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("comfyd.db").display()
        );
        TestDb::Sqlite { _dir: dir, url }
    }

    pub async fn postgres() -> TestDb {
        let name = format!("comfyd_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(pg_admin_url())
            .await
            .expect("connect to local PostgreSQL");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let base = pg_admin_url();
        let url = format!(
            "{}/{name}",
            base.rsplit_once('/').map(|(a, _)| a).unwrap_or(&base)
        );
        TestDb::Postgres { name, url }
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } => url,
        }
    }

    pub async fn connect(&self) -> DatabaseConnection {
        Database::connect(self.url())
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { name, .. } = self {
            // Drop runs outside any async context: psql is the simplest synchronous client here.
            let _ = Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-q", "-c"])
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .output();
        }
    }
}

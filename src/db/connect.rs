//! Opening the database: the shared pool of readers (which also brings the schema up to date), the
//! Recorder's own connection, and what the Recorder does to its connections besides writing
//! (checkpoints, the outage probe, renewing connections after a failed write).

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};

/// Opens the database's shared pool (readers: routes, recovery, the outbox) and brings its schema up
/// to date.
pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<DatabaseConnection> {
    if let Some(dir) = sqlite_dir(url) {
        std::fs::create_dir_all(dir)?;
    }
    // Readers look up a few rows each and the OS caches the file anyway: a small SQLite page cache per
    // connection (256 KiB instead of 2 MiB) is most of comfyd's memory saved under load.
    let opts = options(
        url,
        if is_sqlite(url) { 4 } else { max_connections },
        &[("cache_size", "-256")],
    );
    let db = Database::connect(opts).await?;
    Migrator::up(&db, None).await?;
    Ok(db)
}

/// Opens the `Recorder`'s own connection (a pool of one; run after [`open`]). The single writer
/// keeps one connection, so SQLite's page cache stays warm between its transactions and every
/// statement goes to the same driver thread. With SQLite, its commits never checkpoint the WAL (a
/// checkpoint writes and syncs the database file: a stall for every write queued behind it); the
/// Recorder runs [`checkpoint`] itself (see `recorder::CHECKPOINT_AFTER`).
pub async fn open_writer(url: &str) -> anyhow::Result<DatabaseConnection> {
    // The log is started afresh after each complete checkpoint, but its file keeps the size it
    // reached: cut it back to 64 MiB then.
    let opts = options(
        url,
        1,
        &[
            ("wal_autocheckpoint", "0"),
            ("journal_size_limit", "67108864"),
        ],
    );
    Ok(Database::connect(opts).await?)
}

/// Copies what it can of SQLite's write-ahead log into the database file without waiting for
/// readers or the writer (`PASSIVE`), so the log stays small. SQLite only.
pub async fn checkpoint(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
        .await?;
    Ok(())
}

/// Whether the database takes a write now, without changing anything (the Recorder's probe during
/// an outage with no write of its own to retry). SQLite rewrites `user_version` (nothing else uses
/// it) with its own value: a real write, which fails while the file cannot be written, where a read
/// would succeed. PostgreSQL: a round trip (an unwritable PostgreSQL fails the next real write,
/// which starts the outage again).
pub async fn probe_write(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Sqlite {
        db.execute_unprepared("SELECT 1").await?;
        return Ok(());
    }
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA user_version",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("PRAGMA user_version answered nothing".into()))?;
    let version: i32 = row.try_get_by_index(0)?;
    db.execute_unprepared(&format!("PRAGMA user_version = {version}"))
        .await?;
    Ok(())
}

/// Closes the pool's idle connections, so that the next use connects afresh. After a write failed
/// for want of the database, a connection's idea of its transaction cannot be trusted: SQLite
/// rolls a transaction back by itself on an I/O error, sqlx's ROLLBACK then fails and sqlx still
/// counts the transaction as open, so every later "transaction" on that connection would be a
/// savepoint inside one that never commits (writes that seem to commit and are lost). The
/// Recorder calls this before each attempt during an outage.
pub async fn renew_connections(db: &DatabaseConnection) {
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            while let Some(mut c) = pool.try_acquire() {
                c.close_on_drop();
            }
        }
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            while let Some(mut c) = pool.try_acquire() {
                c.close_on_drop();
            }
        }
        _ => {}
    }
}

fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

fn sqlite_dir(url: &str) -> Option<&std::path::Path> {
    let path = url.strip_prefix("sqlite://")?.split('?').next()?;
    std::path::Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
}

/// Longest a caller waits for a connection, a connect to the server included (sqlx retries a
/// refused connect until then). Past it the database counts as unreachable for that call: a route
/// answers 503 (submits must answer within 2 s while the database is down) and the Recorder holds
/// its writes and retries (see `Recorder`). A pool connection is had in microseconds when the
/// database is up, and a connect to a server takes milliseconds.
pub(crate) const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// Pool options; `sqlite_pragmas` are set on each SQLite connection besides the common ones.
fn options(
    url: &str,
    max_connections: u32,
    sqlite_pragmas: &'static [(&'static str, &'static str)],
) -> ConnectOptions {
    let mut opts = ConnectOptions::new(url.to_string());
    // Every statement is logged only when asked for (`RUST_LOG=sqlx::query=debug`): checking the
    // level on each statement is not free.
    let log_statements = tracing::enabled!(target: "sqlx::query", tracing::Level::DEBUG);
    opts.sqlx_logging(log_statements)
        .sqlx_logging_level(log::LevelFilter::Debug)
        .max_connections(max_connections)
        .connect_timeout(ACQUIRE_TIMEOUT);
    if is_sqlite(url) {
        // A file cannot hang up: no ping before handing out a connection (a round trip to sqlx's
        // SQLite thread, on every transaction).
        opts.test_before_acquire(false)
            .map_sqlx_sqlite_opts(move |o| {
                // WAL lets the routes read while the Recorder writes; NORMAL sync is durable across a
                // process crash (kill -9), which is the failure comfyd must survive; a busy timeout
                // instead of errors.
                let o = o
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .create_if_missing(true);
                sqlite_pragmas
                    .iter()
                    .fold(o, |o, (key, value)| o.pragma(*key, *value))
            });
    } else {
        // A server connection can be dropped while idle (restart, proxy, firewall): ping only those.
        opts.test_before_acquire_if_idle_for(Duration::from_secs(30));
        if let Some((host, port)) = crate::pg_nodelay::tcp_server(url) {
            opts.map_sqlx_postgres_pool_opts(move |o| {
                let host = host.clone();
                o.after_connect(move |_, _| {
                    let host = host.clone();
                    Box::pin(async move {
                        crate::pg_nodelay::set_on_sockets_to(&host, port).await;
                        Ok(())
                    })
                })
            });
        }
    }
    opts
}

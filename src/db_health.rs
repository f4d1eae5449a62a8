//! Whether the database takes writes right now, as the `Recorder` (its only writer) found out, and
//! which errors mean "unreachable" rather than "this write is wrong".
//!
//! The Recorder sets it: down when a write fails because the database cannot be reached (server
//! stopped, connection lost, file unwritable or full), up again once a write or probe commits. The
//! routes read it to answer 503 at once instead of queueing submits behind an outage
//! (`/readyz`, submits, cancels); the `Dispatcher` watches its recoveries to reconcile what it
//! believes with what the database holds (see `Dispatcher::reconcile`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sea_orm::sqlx;
use sea_orm::{DbErr, RuntimeErr};
use tokio::sync::watch;

/// The shared view of the database's health; cheap to clone.
#[derive(Clone)]
pub struct DbHealth(Arc<Inner>);

struct Inner {
    down: AtomicBool,
    /// Why and since when, while down.
    outage: Mutex<Option<(String, Instant)>>,
    /// Counts the outages that ended; subscribers wake on each.
    recoveries: watch::Sender<u64>,
}

impl Default for DbHealth {
    fn default() -> Self {
        DbHealth(Arc::new(Inner {
            down: AtomicBool::new(false),
            outage: Mutex::new(None),
            recoveries: watch::Sender::new(0),
        }))
    }
}

impl DbHealth {
    /// While the database is unreachable: why.
    pub fn unreachable(&self) -> Option<String> {
        if !self.0.down.load(Ordering::Acquire) {
            return None;
        }
        let outage = match self.0.outage.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        Some(outage.map_or_else(|| "database unreachable".into(), |(why, _)| why))
    }

    /// The database could not be reached; `why` is shown by `/readyz`.
    pub fn set_down(&self, why: &DbErr) {
        let mut g = self.0.outage.lock().unwrap_or_else(|p| p.into_inner());
        let since = g.as_ref().map_or_else(Instant::now, |(_, since)| *since);
        *g = Some((format!("database unreachable: {why}"), since));
        self.0.down.store(true, Ordering::Release);
    }

    /// The database took a write again; answers how long it was down, if it was.
    pub fn set_up(&self) -> Option<std::time::Duration> {
        if !self.0.down.swap(false, Ordering::AcqRel) {
            return None;
        }
        let since = self
            .0
            .outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|(_, since)| since);
        self.0.recoveries.send_modify(|n| *n += 1);
        Some(since.map_or_else(Default::default, |s| s.elapsed()))
    }

    /// Changes on every outage that ended.
    pub fn recoveries(&self) -> watch::Receiver<u64> {
        self.0.recoveries.subscribe()
    }
}

/// Whether `e` says the database cannot be reached now (so the same write may succeed later),
/// rather than that the write itself is wrong: a connection that could not be had, or was lost; a
/// PostgreSQL server that shuts down, starts up or lacks resources; a SQLite file that cannot be
/// written, is full, locked past the busy timeout or cannot be opened.
pub fn is_unreachable(e: &DbErr) -> bool {
    match e {
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Conn(r) | DbErr::Exec(r) | DbErr::Query(r) => match r {
            RuntimeErr::SqlxError(e) => sqlx_unreachable(e),
            _ => false,
        },
        _ => false,
    }
}

fn sqlx_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            let sqlite = d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
            d.code().is_some_and(|c| code_unreachable(sqlite, &c))
        }
        _ => false,
    }
}

/// SQLite extended result codes (`sqlite`) and PostgreSQL SQLSTATEs that mean the database is not
/// usable now.
fn code_unreachable(sqlite: bool, code: &str) -> bool {
    if sqlite {
        let Ok(n) = code.parse::<i32>() else {
            return false;
        };
        // SQLite: the primary code is the low byte. BUSY 5, LOCKED 6, READONLY 8, IOERR 10,
        // FULL 13, CANTOPEN 14.
        return matches!(n & 0xff, 5 | 6 | 8 | 10 | 13 | 14);
    }
    // PostgreSQL: class 08 connection exception, 53 insufficient resources (disk full, too many
    // connections), 57P01..57P03 admin/crash shutdown and cannot connect now.
    code.starts_with("08") || code.starts_with("53") || matches!(code, "57P01" | "57P02" | "57P03")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_are_outages_and_write_errors_are_not() {
        assert!(is_unreachable(&DbErr::ConnectionAcquire(
            sea_orm::error::ConnAcquireErr::Timeout
        )));
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_unreachable(&DbErr::Exec(RuntimeErr::SqlxError(
            Arc::new(io)
        ))));
        assert!(!is_unreachable(&DbErr::RecordNotInserted));
        assert!(!is_unreachable(&DbErr::Custom("x".into())));
        let decode = sqlx::Error::RowNotFound;
        assert!(!is_unreachable(&DbErr::Query(RuntimeErr::SqlxError(
            Arc::new(decode)
        ))));
    }

    #[test]
    fn database_codes_name_outages() {
        // SQLite: SQLITE_IOERR_WRITE (778), SQLITE_READONLY, SQLITE_FULL; not a constraint (2067).
        assert!(code_unreachable(true, "778"));
        assert!(code_unreachable(true, "8"));
        assert!(code_unreachable(true, "13"));
        assert!(!code_unreachable(true, "2067"));
        assert!(!code_unreachable(true, "1"));
        // PostgreSQL: admin shutdown, connection failure, disk full; not a unique violation.
        assert!(code_unreachable(false, "57P01"));
        assert!(code_unreachable(false, "08006"));
        assert!(code_unreachable(false, "53100"));
        assert!(!code_unreachable(false, "23505"));
        assert!(!code_unreachable(false, "57014"));
        // NUL in text or jsonb: the write is wrong, retrying it would not help (see stored_text).
        assert!(!code_unreachable(false, "22021"));
        assert!(!code_unreachable(false, "22P05"));
    }

    #[test]
    fn an_outage_ends_once_and_says_how_long() {
        let h = DbHealth::default();
        let rx = h.recoveries();
        assert_eq!(h.unreachable(), None);
        assert_eq!(h.set_up(), None);
        h.set_down(&DbErr::Custom("gone".into()));
        h.set_down(&DbErr::Custom("still gone".into()));
        assert!(h.unreachable().is_some_and(|w| w.contains("still gone")));
        assert!(h.set_up().is_some());
        assert_eq!(h.set_up(), None);
        assert_eq!(*rx.borrow(), 1);
        assert_eq!(h.unreachable(), None);
    }
}

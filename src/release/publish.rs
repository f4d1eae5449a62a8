//! What publishing does before anything is stored: the draft's snapshot, the note checked, and, with
//! a dev server, its environment read and compared with what the snapshot needs. Shared by
//! `comfyd release publish` and `POST {prefix}/releases`; both then store the [`Draft`] with
//! `db::releases::insert_or_existing`.

use super::environment::{self, Environment, EnvironmentError, Missing};
use super::Snapshot;
use crate::workflow::LoadError;

/// Longest note, in characters.
pub const MAX_NOTE_CHARS: usize = 2000;

/// A snapshot ready to be stored as a release.
#[derive(Debug, Clone)]
pub struct Draft {
    pub snapshot: Snapshot,
    pub note: Option<String>,
    /// The dev server the environment was read from.
    pub source: Option<String>,
    pub environment: Option<Environment>,
}

/// Why a draft cannot be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The workflows folder does not load; every problem is listed.
    #[error("the workflows do not load:\n{0}")]
    Load(LoadError),
    /// The note is too long or holds a NUL.
    #[error("note: {0}")]
    Note(String),
    /// The dev server could not be read.
    #[error("from: {0}")]
    Environment(EnvironmentError),
    /// The dev server lacks what the draft needs.
    #[error("{server} lacks what the workflows need:\n{}", .missing.problems().join("\n"))]
    Missing { server: String, missing: Missing },
}

/// Checks the note and, with `from`, reads the dev server's environment and refuses a snapshot
/// that needs what it lacks.
pub async fn prepare(
    snapshot: Snapshot,
    from: Option<&str>,
    note: Option<String>,
) -> Result<Draft, PublishError> {
    let note = note.filter(|n| !n.trim().is_empty());
    if let Some(n) = &note {
        if n.chars().count() > MAX_NOTE_CHARS {
            return Err(PublishError::Note(format!(
                "at most {MAX_NOTE_CHARS} characters"
            )));
        }
        // PostgreSQL refuses NUL in text.
        if n.contains('\0') {
            return Err(PublishError::Note("must not hold a NUL character".into()));
        }
    }
    let Some(from) = from else {
        return Ok(Draft {
            snapshot,
            note,
            source: None,
            environment: None,
        });
    };
    let url = environment::check_url(from).map_err(PublishError::Environment)?;
    let source = url.as_str().trim_end_matches('/').to_string();
    let env = environment::read(&source)
        .await
        .map_err(PublishError::Environment)?;
    let missing = environment::missing(&snapshot.needs, &env);
    if !missing.is_empty() {
        return Err(PublishError::Missing {
            server: source,
            missing,
        });
    }
    Ok(Draft {
        snapshot,
        note,
        source: Some(source),
        environment: Some(env),
    })
}

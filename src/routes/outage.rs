//! How the API answers while the database cannot be reached: 503 with `Retry-After` at once
//! (see [`crate::db_health`]). A submit's bounded wait for its write is the submit service's
//! (`intake/record.rs`).

use super::{ApiError, AppState};

/// 503 at once while the Recorder finds the database unreachable, rather than queueing a write
/// behind the outage.
pub fn check(state: &AppState) -> Result<(), ApiError> {
    match state.db_health.unreachable() {
        Some(_) => Err(ApiError::database_unreachable()),
        None => Ok(()),
    }
}

//! The operator commands besides `serve`: each runs once and exits (see `main.rs` for their flags).

pub mod keys;
pub mod release;
pub mod reupload;
pub mod workflows_check;

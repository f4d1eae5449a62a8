//! Helpers shared by the integration tests: real servers started for a test and stopped after.

pub mod s3;

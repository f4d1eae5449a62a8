//! Where a stored output can be fetched: the `url` of each [`OutputInfo`] in a task record.
//!
//! [`OutputUrls`] fills them in where a record leaves comfyd: the task routes (`routes::tasks`, a
//! fresh URL per request) and the `Notifier` (a fresh one per webhook attempt, so a retry a day later
//! still carries a working link). With the S3 store each is a presigned GET URL; with the local store
//! the API path `{prefix}/tasks/{id}/outputs/{n}`, which `routes::outputs` serves. The stored records
//! (the database's rows, the outbox's payloads) never hold one: they would go stale.

use std::sync::Arc;
use std::time::Duration;

use super::{BlobError, BlobStore};
use crate::task::{OutputInfo, TaskRecord};

/// What an output's URL is made from. Cheap to clone.
#[derive(Clone, Debug)]
pub struct OutputUrls {
    store: Arc<BlobStore>,
    /// The API's route prefix (`/api/v1`), for the local store's paths.
    prefix: String,
    /// Lifetime of a presigned URL.
    expiry: Duration,
}

impl OutputUrls {
    pub fn new(store: Arc<BlobStore>, prefix: &str, expiry: Duration) -> OutputUrls {
        OutputUrls {
            store,
            prefix: prefix.to_owned(),
            expiry,
        }
    }

    /// The store the URLs point into.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// Lifetime of a presigned URL.
    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    /// Sets the `url` of every stored output of `record`; outputs not stored keep none.
    pub async fn fill(&self, record: &mut TaskRecord) -> Result<(), BlobError> {
        for (n, output) in record.outputs.iter_mut().enumerate() {
            output.url = self.url(&record.id, n, output).await?;
        }
        Ok(())
    }

    /// The URL of output `n` of task `task_id`, `None` when it was not stored.
    pub async fn url(
        &self,
        task_id: &str,
        n: usize,
        output: &OutputInfo,
    ) -> Result<Option<String>, BlobError> {
        if !output.stored || output.key.is_empty() {
            return Ok(None);
        }
        match &*self.store {
            BlobStore::Local { .. } => {
                Ok(Some(format!("{}/tasks/{task_id}/outputs/{n}", self.prefix)))
            }
            BlobStore::S3 { .. } => self.store.presigned_get(&output.key, self.expiry).await,
        }
    }
}

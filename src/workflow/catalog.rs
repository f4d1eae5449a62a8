//! The workflow set comfyd serves now, and the release it is (#19). Replaced whole, so a request
//! reads one consistent set from start to end: by a reload (SIGHUP) while the workflows folder is
//! served, or by the deployer (`deploy`) when a deployment succeeds, or at start from the served
//! release (`startup`). Read by intake (validation, and the release stamped on a task) and the
//! workflows routes.

use std::sync::{Arc, RwLock};

use super::WorkflowSet;

/// The set in force and where it came from.
#[derive(Clone)]
pub struct Served {
    pub set: Arc<WorkflowSet>,
    /// The release it is; None: the workflows folder.
    pub release: Option<i32>,
}

/// The workflow set in force; replaced whole, so a request sees one consistent set.
#[derive(Clone)]
pub struct Catalog(Arc<RwLock<Served>>);

impl Catalog {
    /// The workflows folder's set.
    pub fn new(set: WorkflowSet) -> Catalog {
        Catalog(Arc::new(RwLock::new(Served {
            set: Arc::new(set),
            release: None,
        })))
    }

    pub fn current(&self) -> Arc<WorkflowSet> {
        self.served().set
    }

    /// The set and its release, read together.
    pub fn served(&self) -> Served {
        // A poisoned lock only means a reload panicked; the set it holds is still whole.
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// A reload of the workflows folder: applied while the folder is served; false (nothing
    /// changed) while a release is, which only a deployment replaces.
    pub fn replace(&self, set: WorkflowSet) -> bool {
        let mut g = match self.0.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.release.is_some() {
            return false;
        }
        g.set = Arc::new(set);
        true
    }

    /// Serves what was served before (a deployment that did not end as it began to serve).
    pub fn restore(&self, served: Served) {
        match self.0.write() {
            Ok(mut g) => *g = served,
            Err(p) => *p.into_inner() = served,
        }
    }

    /// Serves release `version`'s set from now on.
    pub fn serve_release(&self, set: WorkflowSet, version: i32) {
        let served = Served {
            set: Arc::new(set),
            release: Some(version),
        };
        match self.0.write() {
            Ok(mut g) => *g = served,
            Err(p) => *p.into_inner() = served,
        }
    }
}

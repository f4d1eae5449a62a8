//! The workflow set comfyd serves now. A reload (SIGHUP) replaces it whole, so a request reads one
//! consistent set from start to end; releases will make it one set per served version.

use std::sync::{Arc, RwLock};

use super::WorkflowSet;

/// The workflow set in force; replaced whole on reload, so a request sees one consistent set.
#[derive(Clone)]
pub struct Catalog(Arc<RwLock<Arc<WorkflowSet>>>);

impl Catalog {
    pub fn new(set: WorkflowSet) -> Catalog {
        Catalog(Arc::new(RwLock::new(Arc::new(set))))
    }

    pub fn current(&self) -> Arc<WorkflowSet> {
        // A poisoned lock only means a reload panicked; the set it holds is still whole.
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn replace(&self, set: WorkflowSet) {
        let set = Arc::new(set);
        match self.0.write() {
            Ok(mut g) => *g = set,
            Err(p) => *p.into_inner() = set,
        }
    }
}

//! `Cleaner`: removes files from the ComfyUI hosts once nothing needs them: a task's uploaded inputs
//! after its job ended (not merely queued), its outputs after they were stored. It goes through the
//! `Clean input and output file` node of the service comfyd replaces, which must be installed on the
//! ComfyUI host; the prompt is sent by the backend actor with comfyd's client id so its outcome is seen.
//! Off unless `cleanup.enabled`.

use std::collections::HashMap;

use actix::prelude::*;
use tracing::warn;

use crate::comfy::names;
use crate::dispatch::backend::{Backend, Clean};

pub struct Cleaner {
    enabled: bool,
    backends: HashMap<String, Addr<Backend>>,
}

impl Cleaner {
    pub fn new(enabled: bool) -> Cleaner {
        Cleaner {
            enabled,
            backends: HashMap::new(),
        }
    }
}

impl Actor for Cleaner {
    type Context = Context<Self>;
}

/// Tells the cleaner where each backend actor is (sent once at start).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterBackend {
    pub name: String,
    pub addr: Addr<Backend>,
}

impl Handler<RegisterBackend> for Cleaner {
    type Result = ();

    fn handle(&mut self, msg: RegisterBackend, _ctx: &mut Context<Self>) {
        self.backends.insert(msg.name, msg.addr);
    }
}

/// Removes files on one backend: (folder type, path relative to that folder).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct CleanFiles {
    pub backend: String,
    pub files: Vec<(String, String)>,
}

impl Handler<CleanFiles> for Cleaner {
    type Result = ();

    fn handle(&mut self, msg: CleanFiles, _ctx: &mut Context<Self>) {
        if !self.enabled {
            return;
        }
        let Some(addr) = self.backends.get(&msg.backend) else {
            return;
        };
        let files: Vec<(String, String)> = msg
            .files
            .into_iter()
            .filter(|(kind, path)| {
                let checked = names::check_folder_type(kind)
                    .and_then(|()| names::check_relative_path(path));
                if let Err(e) = &checked {
                    warn!(backend.name = %msg.backend, error = %e, "refusing to clean an unsafe path");
                }
                checked.is_ok()
            })
            .collect();
        if !files.is_empty() {
            addr.do_send(Clean { files });
        }
    }
}

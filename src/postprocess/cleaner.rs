//! `Cleaner`: removes files from the ComfyUI hosts once nothing needs them: a task's uploaded inputs
//! after its job ended (not merely queued), its outputs after they were stored. It goes through the
//! `Clean input and output file` node of the service comfyd replaces, which must be installed on the
//! ComfyUI host; the prompt is sent by the backend actor with comfyd's client id so its outcome is seen.
//! On by default (`cleanup.enabled`); a backend without the node is warned about and skipped. Only
//! comfyd's own files are ever removed: a task's outputs under `comfyd/<task_id>/` and the inputs it
//! uploaded for that task (`comfyd_<task id without dashes>_...`).
//!
//! Talks to: the Dispatcher and the Uploader send `CleanFiles`; the Dispatcher registers each
//! backend it starts (`RegisterBackend`); the checked files go to that backend as [`Clean`]. The Cleaner
//! knows a backend only as a `Recipient<Clean>`, so post-processing does not depend on dispatch.

use std::collections::HashMap;

use actix::prelude::*;
use tracing::warn;

use crate::comfy::names;
use crate::task::ids::{BackendName, TaskId};

pub struct Cleaner {
    enabled: bool,
    backends: HashMap<BackendName, Recipient<Clean>>,
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

/// Deletes files on the ComfyUI host through the `Clean input and output file` node; handled by the
/// backend actor of that host.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Clean {
    /// (folder type, path relative to it): already checked to be relative and free of `..`.
    pub files: Vec<(String, String)>,
}

/// Tells the cleaner where each backend actor is (sent once at start).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterBackend {
    pub name: BackendName,
    pub clean: Recipient<Clean>,
}

impl Handler<RegisterBackend> for Cleaner {
    type Result = ();

    fn handle(&mut self, msg: RegisterBackend, _ctx: &mut Context<Self>) {
        self.backends.insert(msg.name, msg.clean);
    }
}

/// Removes files on one backend: (folder type, path relative to that folder).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct CleanFiles {
    pub backend: BackendName,
    /// The task the files belong to: only paths it owns are removed.
    pub task_id: TaskId,
    pub files: Vec<(String, String)>,
}

impl Handler<CleanFiles> for Cleaner {
    type Result = ();

    fn handle(&mut self, msg: CleanFiles, _ctx: &mut Context<Self>) {
        if !self.enabled {
            return;
        }
        let Some(backend) = self.backends.get(msg.backend.as_str()) else {
            return;
        };
        let files: Vec<(String, String)> = msg
            .files
            .into_iter()
            .filter(|(kind, path)| {
                // The shared name rule first (what may be a path at all), then ownership.
                let checked = names::check_folder_type(kind)
                    .and_then(|()| names::check_relative_path(path));
                if let Err(e) = &checked {
                    warn!(backend.name = %msg.backend, error = %e, "refusing to clean an unsafe path");
                    return false;
                }
                let ok = owned_by_task(msg.task_id.as_str(), kind, path);
                if !ok {
                    warn!(backend.name = %msg.backend, task.id = %msg.task_id, %kind, %path, "refusing to clean a path that is not this task's own");
                }
                ok
            })
            .collect();
        if !files.is_empty() {
            backend.do_send(Clean { files });
        }
    }
}

/// True for files comfyd made for `task_id`: outputs under `comfyd/<task_id>/`, and inputs it uploaded
/// as `comfyd_<task id without dashes>_<param>.<ext>`. Never `temp` (cached prompts share those).
pub fn owned_by_task(task_id: &str, kind: &str, path: &str) -> bool {
    if task_id.is_empty() || names::check_relative_path(path).is_err() {
        return false;
    }
    match kind {
        "output" => path
            .strip_prefix(&format!("comfyd/{task_id}/"))
            .is_some_and(|rest| !rest.is_empty()),
        "input" => {
            let prefix = format!("comfyd_{}_", task_id.replace('-', ""));
            !path.contains(['/', '\\'])
                && path
                    .strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.is_empty())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use actix::prelude::*;

    use super::{owned_by_task, Clean, CleanFiles, Cleaner, RegisterBackend};

    /// Stands in for a backend actor: keeps what it was asked to clean.
    struct Host(Arc<Mutex<Vec<(String, String)>>>);

    impl Actor for Host {
        type Context = Context<Self>;
    }

    impl Handler<Clean> for Host {
        type Result = ();

        fn handle(&mut self, msg: Clean, _ctx: &mut Context<Self>) {
            self.0.lock().expect("not poisoned").extend(msg.files);
        }
    }

    #[actix_rt::test]
    async fn the_tasks_own_files_reach_the_registered_backend() {
        let t = "6f1c0e2a-1b2c-4d5e-8f90-0123456789ab";
        let seen = Arc::new(Mutex::new(Vec::new()));
        let host = Host(seen.clone()).start();
        let cleaner = Cleaner::new(true).start();
        cleaner
            .send(RegisterBackend {
                name: "gpu-1".into(),
                clean: host.clone().recipient(),
            })
            .await
            .expect("registered");
        let own = format!("comfyd/{t}/a.png");
        for backend in ["gpu-1", "gpu-2"] {
            cleaner
                .send(CleanFiles {
                    backend: backend.into(),
                    task_id: t.into(),
                    files: vec![
                        ("output".into(), own.clone()),
                        ("output".into(), "someone-elses.png".into()),
                    ],
                })
                .await
                .expect("handled");
        }
        // The Host handles its mailbox in order: once this answers, the Clean sent before it was seen.
        host.send(Clean { files: vec![] }).await.expect("handled");
        let seen = seen.lock().expect("not poisoned").clone();
        assert_eq!(seen, vec![("output".to_string(), own)]);
    }

    #[test]
    fn cleans_only_the_tasks_own_files() {
        let t = "6f1c0e2a-1b2c-4d5e-8f90-0123456789ab";
        let upload = "comfyd_6f1c0e2a1b2c4d5e8f900123456789ab_image.png";
        assert!(owned_by_task(
            t,
            "output",
            &format!("comfyd/{t}/ComfyUI_00001_.png")
        ));
        assert!(owned_by_task(t, "input", upload));
        for (kind, path) in [
            ("output", "ComfyUI_00001_.png".to_string()),
            ("output", format!("comfyd/{t}/")),
            ("output", "comfyd/other-task/x.png".to_string()),
            ("output", format!("comfyd/{t}/../x.png")),
            ("input", "example.png".to_string()),
            ("input", "comfyd_ffff_image.png".to_string()),
            ("input", format!("sub/{upload}")),
            ("temp", format!("comfyd/{t}/x.png")),
            ("models", format!("comfyd/{t}/x.png")),
        ] {
            assert!(!owned_by_task(t, kind, &path), "{kind} {path}");
        }
        assert!(!owned_by_task("", "output", "comfyd//x.png"));
    }
}

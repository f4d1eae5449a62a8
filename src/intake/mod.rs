//! The submit service: takes a [`Submission`] (a body already read, and who sent it) and answers with
//! the task it [`Accepted`] or the [`IntakeError`] that refused it. The HTTP routes
//! (`routes/submit.rs`: the original service's format and the typed routes) call it; so will any
//! contract that comes next. It knows nothing of HTTP.
//!
//! A submit is answered only after the task is in the database (status queued), so an accepted task
//! survives anything that happens next. Parameters are checked against the workflow's manifest and set
//! in its graph as JSON values; input images are fetched (URLs) or decoded (base64) now, kept in the
//! data folder, and uploaded to whichever backend runs the task, just before it runs.
//!
//! Who it talks to: the Recorder (`InsertTask`: the only database writer), the Dispatcher
//! (`Enqueue`, once the task is recorded), the database for reads (a retried submit's task),
//! [`Outbound`] (callback checks, images fetched by URL), and the workflow [`Catalog`].

mod error;
mod fields;
mod record;
mod request_hash;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use sea_orm::DatabaseConnection;
use serde_json::Value;

pub use error::IntakeError;
pub use fields::check_storable;

use crate::access::Caller;
use crate::budget::Reservation;
use crate::db::{self, tasks::Inserted};
use crate::db_health::DbHealth;
use crate::dispatch::messages::Enqueue;
use crate::outbound::{Outbound, OutboundError};
use crate::postprocess::recorder::InsertTask;
use crate::task::{InputFile, TaskRecord};
use crate::workflow::{probe, Catalog, FieldError, ImageLimits, ImageSource, Workflow};
use fields::{field_err, Fields};
use record::Recorded;
use request_hash::request_hash;

/// The settings a submit is checked and recorded under (config `[limits]`, `[comfyui]`,
/// `[database_outage]`, `[data]`).
#[derive(Clone, Debug)]
pub struct IntakeLimits {
    /// The largest input image accepted.
    pub images: ImageLimits,
    /// Where input images wait until their task has run (`data.dir`/inputs).
    pub inputs_dir: PathBuf,
    /// A task's deadline, from its submit (`comfyui.task_deadline_secs`).
    pub task_deadline_secs: u64,
    /// How long a submit waits for its task's write (`database_outage.submit_wait_ms`).
    pub submit_wait: Duration,
}

/// The submit service. Built once at startup; every HTTP worker shares it (through `AppState`).
pub struct Intake {
    /// The workflows served now (replaced whole on reload; a submit reads one set).
    pub catalog: Catalog,
    pub limits: IntakeLimits,
    /// Reads only: a retried submit's earlier task and its outputs. Writes go through `recorder`.
    pub db: DatabaseConnection,
    /// Callback URL checks and images fetched by URL.
    pub outbound: Outbound,
    /// The Recorder, which records the task.
    pub recorder: Recipient<InsertTask>,
    /// The Dispatcher, told of each task once it is recorded.
    pub dispatcher: Recipient<Enqueue>,
    /// False once shutdown began: submits are refused.
    pub accepting: Arc<AtomicBool>,
    /// Whether the database takes writes: while not, submits are refused at once.
    pub db_health: DbHealth,
}

/// Which workflow a submission is for, and so which fields its body may hold besides the common ones.
pub enum Target {
    /// The original service's format: the body's `service_type` names the workflow.
    ServiceType,
    /// The workflow is named outside the body (a typed route's path); not loaded is
    /// [`IntakeError::UnknownWorkflow`], answered before the body is looked at.
    Named(String),
}

/// One submit, as a contract hands it over: the body already read (within its limits), who sent it,
/// and the request's share of the memory budget, which also counts the images fetched for it.
pub struct Submission<'a> {
    pub target: Target,
    /// The body, parsed: `{client_task_id?, client_callback_url?, params, priority?}` (and
    /// `service_type` for [`Target::ServiceType`]).
    pub body: Value,
    pub caller: Caller,
    /// Held by the caller until it has answered: it covers the images decoded from the body.
    pub held: &'a mut Reservation,
}

/// A submit's answer: the task, and whether it is new (false: the same submit was already accepted).
#[derive(Debug)]
pub struct Accepted {
    pub record: TaskRecord,
    pub created: bool,
}

impl Intake {
    /// Whether submits are taken (false once shutdown began).
    fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Checks a submission, records its task and hands it to the dispatcher.
    pub async fn submit(&self, submission: Submission<'_>) -> Result<Accepted, IntakeError> {
        let Submission {
            target,
            mut body,
            caller,
            held,
        } = submission;
        // One read of what is served: the workflow is looked up in it and the task stamped with
        // its release, even if a deployment replaces it meanwhile.
        let served = self.catalog.served();
        // A typed route's workflow is looked up before its body is.
        let named = match target {
            Target::Named(name) => Some(
                served
                    .set
                    .get(name.as_str())
                    .cloned()
                    .ok_or(IntakeError::UnknownWorkflow(name))?,
            ),
            Target::ServiceType => None,
        };
        let obj = body.as_object_mut().ok_or(IntakeError::NotAnObject)?;
        let mut errors = Vec::new();
        let (workflow, fields) = match named {
            Some(workflow) => {
                let Some(fields) = fields::read_common(&self.outbound, obj, &[], &mut errors)
                else {
                    return Err(IntakeError::Invalid(errors));
                };
                (workflow, fields)
            }
            None => {
                let workflow = fields::service_type(&served.set, obj, &mut errors);
                let fields =
                    fields::read_common(&self.outbound, obj, &["service_type"], &mut errors);
                let (Some(workflow), Some(fields)) = (workflow, fields) else {
                    return Err(IntakeError::Invalid(errors));
                };
                (workflow, fields)
            }
        };
        let (record, created) = self
            .accept(&caller, &workflow, served.release, fields, errors, held)
            .await?;
        Ok(Accepted { record, created })
    }

    /// Validates the params, fetches images, records the task and hands it to the dispatcher.
    /// Returns the record and whether it is new (false: the same submit was already accepted).
    /// Fetched images are counted in `held`, the request's share of the memory budget.
    async fn accept(
        &self,
        caller: &Caller,
        workflow: &Workflow,
        release: Option<i32>,
        s: Fields,
        mut errors: Vec<FieldError>,
        held: &mut Reservation,
    ) -> Result<(TaskRecord, bool), IntakeError> {
        if !self.accepting() {
            return Err(IntakeError::ShuttingDown);
        }
        // The callback's host is resolved now, so a refused address is a 422 rather than a webhook
        // that never arrives.
        if let Some(url) = &s.client_callback_url {
            if let Err(e) = self.outbound.check_destination(url).await {
                errors.push(field_err("client_callback_url", e.to_string()));
            }
        }
        let mut resolved = match workflow.validate(&s.params) {
            Ok(r) if errors.is_empty() => r,
            Ok(_) => return Err(IntakeError::Invalid(errors)),
            Err(mut e) => {
                errors.append(&mut e);
                return Err(IntakeError::Invalid(errors));
            }
        };
        let request_hash = request_hash(&workflow.name, &s);
        // The params' base64 text is decoded in `resolved` now: free it before any image is fetched.
        let mut s = s;
        s.params = Value::Null;
        // A retried submit is answered before any image is fetched again. (Without URL images the
        // insert below finds the earlier task just as well, so the extra read is saved.)
        let fetches = resolved
            .images
            .iter()
            .any(|i| matches!(i.source, ImageSource::Url(_)));
        if let Some(ctid) = s.client_task_id.as_ref().filter(|_| fetches) {
            if let Some(existing) = db::tasks::find(&self.db, ctid)
                .await?
                .filter(|t| t.client_task_id.as_ref() == Some(ctid))
            {
                return self.same_or_conflict(caller, existing, &request_hash).await;
            }
        }

        let task_id = uuid::Uuid::new_v4().to_string();
        let limits = self.limits.images;
        let mut images = Vec::new();
        for img in &mut resolved.images {
            let field = format!("params.{}", img.param);
            let (bytes, ext) = match &mut img.source {
                // Taken, not copied: the graph is rendered from the values alone.
                ImageSource::Bytes { bytes, ext } => {
                    (bytes::Bytes::from(std::mem::take(bytes)), *ext)
                }
                ImageSource::Url(url) => {
                    match self.outbound.fetch_image_within(url, Some(held)).await {
                        Ok((bytes, _content_type)) => match probe(&bytes) {
                            Ok(info) => (bytes, info.ext),
                            Err(e) => {
                                return Err(IntakeError::Invalid(vec![field_err(
                                    &field,
                                    format!("the URL did not serve an image comfyd accepts: {e}"),
                                )]))
                            }
                        },
                        Err(OutboundError::TooLarge { limit }) => {
                            return Err(IntakeError::TooLarge(field_err(
                                &field,
                                format!("the image at the URL is larger than {limit} bytes"),
                            )))
                        }
                        Err(OutboundError::Budget(e)) => return Err(IntakeError::Budget(e)),
                        Err(e) => {
                            return Err(IntakeError::Invalid(vec![field_err(
                                &field,
                                format!("could not fetch the image: {e}"),
                            )]))
                        }
                    }
                }
            };
            // Checked from the header before anything decodes it: a small file can claim a huge
            // size (a decompression bomb), which a backend would try to allocate.
            match probe(&bytes).map(|info| info.too_large(&limits)) {
                Ok(None) => {}
                Ok(Some(reason)) => return Err(IntakeError::TooLarge(field_err(&field, reason))),
                Err(e) => return Err(IntakeError::Invalid(vec![field_err(&field, e.to_string())])),
            }
            images.push((&*img, bytes, ext));
        }

        // Input images wait in the data folder until their task has run (they survive a restart).
        let inputs_dir = &self.limits.inputs_dir;
        let dir = inputs_dir.join(&task_id);
        let mut inputs = Vec::new();
        if !images.is_empty() {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(anyhow::Error::from)?;
        }
        for (img, bytes, ext) in images {
            let file = format!("{}.{ext}", img.param);
            // Through the one path helper, like every file comfyd writes (src/paths.rs).
            let path = crate::paths::join_under(inputs_dir, &format!("{task_id}/{file}"))
                .map_err(anyhow::Error::from)?;
            // Owned `Bytes`: tokio writes them without a copy (a borrowed slice would be copied).
            tokio::fs::write(path, bytes)
                .await
                .map_err(anyhow::Error::from)?;
            inputs.push(InputFile {
                param: img.param.clone(),
                file,
                upload_name: format!("comfyd_{}_{}.{ext}", task_id.replace('-', ""), img.param),
                targets: img.targets.clone(),
            });
        }

        let new = record::new_task(
            self,
            workflow,
            &resolved,
            Recorded {
                task_id: &task_id,
                fields: s,
                request_hash: &request_hash,
                inputs: &inputs,
                owner: caller.owner(),
                release,
            },
        )?;
        match self.insert(new).await? {
            Inserted::New(task) => {
                crate::metrics::task_accepted(&task.workflow);
                self.dispatcher.do_send(Enqueue {
                    task_id: task.id.clone().into(),
                    priority: task.priority,
                    prompt_id: task.comfyui_task_id.clone().map(Into::into),
                    release: task.release_version,
                });
                tracing::info!(task.id = %task.id, workflow = %task.workflow, "task {} accepted", task.id);
                Ok((TaskRecord::new(&task, &[]), true))
            }
            // Lost a race with the same client_task_id: this copy's files are not needed.
            Inserted::Existing(task) | Inserted::Conflict(task) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                self.same_or_conflict(caller, task, &request_hash).await
            }
        }
    }

    /// The answer to a submit whose `client_task_id` is taken: that task if the request is the
    /// same, else a conflict.
    async fn same_or_conflict(
        &self,
        caller: &Caller,
        existing: crate::entity::task::Model,
        request_hash: &str,
    ) -> Result<(TaskRecord, bool), IntakeError> {
        // client_task_ids are unique across keys: another key's task is not shown, only refused.
        if !caller.may_see(&existing) {
            return Err(IntakeError::TakenByAnotherKey);
        }
        let outputs = db::outputs::for_task(&self.db, &existing.id).await?;
        let record = TaskRecord::new(&existing, &outputs);
        if existing.request_hash == request_hash {
            Ok((record, false))
        } else {
            Err(IntakeError::Conflict(Box::new(record)))
        }
    }
}

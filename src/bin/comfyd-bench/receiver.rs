//! The webhook receiver: an actix-web server in the bench process that timestamps every POST and keeps
//! what the report needs from it (webhook id, task ids, status). It answers 200 at once.

use std::sync::{Arc, Mutex, MutexGuard};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde::Deserialize;

use crate::proc_stats::now_ms;

/// One webhook as received.
#[derive(Debug, Clone)]
pub struct Hook {
    /// When the request body had arrived (epoch ms).
    pub received_ms: f64,
    /// `webhook-id`: the same across retries of one delivery.
    pub webhook_id: String,
    /// comfyd's task id.
    pub task_id: String,
    /// The prompt id the task last ran under on ComfyUI.
    pub prompt_id: Option<String>,
    pub status: String,
}

/// The fields of the webhook body (comfyd's task record) the bench reads.
#[derive(Deserialize)]
struct Body {
    id: String,
    comfyui_task_id: Option<String>,
    status: String,
}

type Hooks = Arc<Mutex<Vec<Hook>>>;

/// A running receiver; stopped on drop of the System (it runs on its own worker thread).
pub struct Receiver {
    pub url: String,
    hooks: Hooks,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    /// Binds 127.0.0.1 on a free port. Must run inside an actix System.
    pub fn start() -> anyhow::Result<Receiver> {
        let hooks: Hooks = Arc::default();
        let shared = hooks.clone();
        let server = HttpServer::new(move || {
            // Runs on the receiver's worker thread: a webhook's arrival is timed when it is read.
            crate::proc_stats::favour_this_thread();
            App::new()
                .app_data(web::Data::new(shared.clone()))
                .app_data(web::PayloadConfig::new(1 << 20))
                .default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))?;
        let port = server.addrs().first().map(|a| a.port()).unwrap_or_default();
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok(Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            hooks,
            handle,
        })
    }

    /// Forgets everything received (between scenarios).
    pub fn clear(&self) {
        lock(&self.hooks).clear();
    }

    /// A copy of every webhook received so far.
    pub fn hooks(&self) -> Vec<Hook> {
        lock(&self.hooks).clone()
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// A poisoned lock only means a handler panicked mid-push; the vector is still usable.
fn lock(h: &Hooks) -> MutexGuard<'_, Vec<Hook>> {
    h.lock().unwrap_or_else(|e| e.into_inner())
}

async fn receive(req: HttpRequest, body: web::Bytes, hooks: web::Data<Hooks>) -> HttpResponse {
    let received_ms = now_ms();
    let webhook_id = req
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    match serde_json::from_slice::<Body>(&body) {
        Ok(b) => {
            lock(&hooks).push(Hook {
                received_ms,
                webhook_id,
                task_id: b.id,
                prompt_id: b.comfyui_task_id,
                status: b.status,
            });
            HttpResponse::Ok().finish()
        }
        // Not a task record: tell comfyd, which will retry (and the bench will count it missing).
        Err(_) => HttpResponse::BadRequest().finish(),
    }
}

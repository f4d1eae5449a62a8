//! A real webhook receiver: an HTTP server that records every request and answers as the test says
//! (any status, or not at all for a while).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::Value;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone)]
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    status: Arc<Mutex<u16>>,
    delay: Arc<Mutex<Duration>>,
}

pub struct WebhookReceiver {
    pub url: String,
    shared: Shared,
    handle: actix_web::dev::ServerHandle,
}

impl WebhookReceiver {
    /// Starts a receiver that answers 200 until told otherwise.
    pub async fn start() -> WebhookReceiver {
        Self::start_on(0).await
    }

    pub async fn start_on(port: u16) -> WebhookReceiver {
        let shared = Shared {
            received: Arc::default(),
            status: Arc::new(Mutex::new(200)),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
        };
        let data = shared.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(data.clone()))
                .default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", port))
        .expect("bind webhook receiver");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        WebhookReceiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            shared,
            handle,
        }
    }

    /// The status every following request gets (e.g. 204, 500).
    pub fn answer(&self, status: u16) {
        *self.shared.status.lock().expect("lock") = status;
    }

    /// How long the receiver waits before answering.
    pub fn delay(&self, d: Duration) {
        *self.shared.delay.lock().expect("lock") = d;
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("lock").clone()
    }

    /// Bodies received for one task id.
    pub fn for_task(&self, task_id: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.body["id"] == task_id)
            .collect()
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

async fn receive(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let delay = *shared.delay.lock().expect("lock");
    if !delay.is_zero() {
        actix_rt::time::sleep(delay).await;
    }
    let status = *shared.status.lock().expect("lock");
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let parsed = serde_json::from_slice(&body).unwrap_or(Value::Null);
    shared.received.lock().expect("lock").push(Received {
        headers,
        body: parsed,
        raw: body.to_vec(),
    });
    let code = actix_web::http::StatusCode::from_u16(status).expect("valid status");
    if status == 204 {
        HttpResponse::build(code).finish()
    } else {
        HttpResponse::build(code).body("whatever the receiver says")
    }
}

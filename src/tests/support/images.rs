//! An image server for tests of image inputs given by URL: a real HTTP server on 127.0.0.1 that
//! serves a good PNG, bodies larger than a limit (with and without `Content-Length`), a non-image
//! body (with a text and with an image content type), a 404, redirects (to the PNG, and in a loop),
//! and a response that stalls. It counts the requests each path gets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::stream;

/// What the server serves; the fields are public so that tests can compare bytes.
#[derive(Clone)]
pub struct ImageServerConfig {
    /// Served at `/ok.png` as `image/png`.
    pub png: Vec<u8>,
    /// Size of the bodies at `/big.png` (with `Content-Length`) and `/big-chunked.png` (streamed
    /// in 1 KiB chunks, no length announced).
    pub big_len: usize,
    /// How long `/slow.png` waits before it answers.
    pub stall: Duration,
}

#[derive(Clone)]
struct Shared {
    cfg: ImageServerConfig,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

/// A running image server; stopped when dropped (its worker ends with the test's runtime).
pub struct ImageServer {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    shared: Shared,
    handle: actix_web::dev::ServerHandle,
}

impl ImageServer {
    /// Starts the server on a free port. Must run inside an actix runtime (`#[actix_web::test]`).
    pub async fn start(cfg: ImageServerConfig) -> ImageServer {
        let shared = Shared {
            cfg,
            hits: Arc::default(),
        };
        let data = shared.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(data.clone()))
                .route("/ok.png", web::get().to(ok_png))
                .route("/big.png", web::get().to(big))
                .route("/big-chunked.png", web::get().to(big_chunked))
                .route("/page.html", web::get().to(html))
                .route("/slow.png", web::get().to(slow))
                .route("/fake.png", web::get().to(fake_png))
                .route("/redirect.png", web::get().to(redirect_to_ok))
                .route("/loop.png", web::get().to(redirect_loop))
                .default_service(web::to(not_found))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("bind image server");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        ImageServer {
            base: format!("http://127.0.0.1:{port}"),
            shared,
            handle,
        }
    }

    /// The full URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// How many requests `path` received.
    pub fn hits(&self, path: &str) -> usize {
        self.shared
            .hits
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

fn count(req: &HttpRequest, shared: &Shared) {
    *shared
        .hits
        .lock()
        .expect("lock")
        .entry(req.path().to_string())
        .or_default() += 1;
}

async fn ok_png(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    count(&req, &shared);
    HttpResponse::Ok()
        .content_type("image/png")
        .body(shared.cfg.png.clone())
}

/// A PNG signature followed by padding: an image by its type and magic bytes, just too big.
fn big_body(len: usize) -> Vec<u8> {
    let mut body = b"\x89PNG\r\n\x1a\n".to_vec();
    body.resize(len.max(8), 0);
    body
}

async fn big(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    count(&req, &shared);
    HttpResponse::Ok()
        .content_type("image/png")
        .body(big_body(shared.cfg.big_len))
}

async fn big_chunked(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    count(&req, &shared);
    let chunks: Vec<Result<web::Bytes, actix_web::Error>> = big_body(shared.cfg.big_len)
        .chunks(1024)
        .map(|c| Ok(web::Bytes::copy_from_slice(c)))
        .collect();
    HttpResponse::Ok()
        .content_type("image/png")
        .streaming(stream::iter(chunks))
}

async fn html(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    count(&req, &shared);
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body("<html><body>not an image</body></html>")
}

/// HTML served as `image/png`: only the magic bytes tell.
async fn fake_png(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    count(&req, &shared);
    HttpResponse::Ok()
        .content_type("image/png")
        .body("<html><body>not an image</body></html>")
}

async fn redirect_to_ok(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    count(&req, &shared);
    HttpResponse::Found()
        .insert_header(("location", "/ok.png"))
        .finish()
}

async fn redirect_loop(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    count(&req, &shared);
    HttpResponse::Found()
        .insert_header(("location", "/loop.png"))
        .finish()
}

async fn slow(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    count(&req, &shared);
    actix_rt::time::sleep(shared.cfg.stall).await;
    HttpResponse::Ok()
        .content_type("image/png")
        .body(shared.cfg.png.clone())
}

async fn not_found(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    count(&req, &shared);
    HttpResponse::NotFound()
        .content_type("text/plain")
        .body("no such image")
}

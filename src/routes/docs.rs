//! `GET /docs`: a page that renders the OpenAPI document with Redoc, and `GET /docs/ui.js`, Redoc
//! itself. Both come from the binary (`routes/docs_ui/`, where README.md says where the bundle comes
//! from), so the page needs nothing but comfyd: no CDN, and a Content-Security-Policy that says so.

use actix_web::http::header;
use actix_web::HttpResponse;

/// The vendored Redoc release; the page asks for `docs/ui.js?v=<this>`, so a new release is not
/// shadowed by a cached old one.
pub const REDOC_VERSION: &str = "2.5.4";

const PAGE: &str = include_str!("docs_ui/index.html");
const SCRIPT: &[u8] = include_bytes!("docs_ui/redoc.standalone.js");

/// Only comfyd's own origin: Redoc's styles are inline (styled-components), its search runs in a
/// worker made from a `blob:` URL, and its icons are `data:` URLs.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; \
base-uri 'none'; form-action 'none'; frame-ancestors 'self'";

/// `GET /docs`
#[utoipa::path(
    get,
    path = "/docs",
    tag = "Docs",
    operation_id = "docs",
    summary = "This document as a page (Redoc)",
    description = "Also served at `{prefix}/docs`. Everything it loads is served by comfyd.",
    responses((status = 200, description = "The page", content_type = "text/html", body = String))
)]
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(PAGE)
}

/// `GET /docs/ui.js`
#[utoipa::path(
    get,
    path = "/docs/ui.js",
    tag = "Docs",
    operation_id = "docs_script",
    summary = "Redoc, the script the page runs",
    responses((status = 200, description = "Redoc's standalone bundle", content_type = "text/javascript", body = String))
)]
pub async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        // The page asks for it with the release in the query: a year, and never revalidated.
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .body(SCRIPT)
}

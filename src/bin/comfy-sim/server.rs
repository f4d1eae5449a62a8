//! The HTTP side: ComfyUI's routes (each also under `/api`) and the `/sim/*` scripting hooks.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;

use actix_multipart::Multipart;
use actix_web::{http::StatusCode, web, App, HttpResponse, HttpServer};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tracing::info;

use crate::files;
use crate::nodes;
use crate::state::{now_ms, PromptStat, QueueItem, Sim};
use crate::ws;

/// Upload and request body limit (ComfyUI's default `max_upload_size`).
const MAX_BODY: usize = 104_857_600;

type Q = web::Query<HashMap<String, String>>;

/// Starts the HTTP server on `listener` and the worker; the returned server must be awaited
/// (or spawned) on an actix system.
pub fn start(sim: Arc<Sim>, listener: TcpListener) -> std::io::Result<actix_web::dev::Server> {
    actix_rt::spawn(crate::exec::worker(sim.clone()));
    let data = web::Data::from(sim);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .service(web::scope("/api").configure(comfy_routes))
            .configure(comfy_routes)
            .service(
                web::scope("/sim")
                    .route("/config", web::post().to(sim_config))
                    .route("/script", web::post().to(sim_script))
                    .route("/stats", web::get().to(sim_stats))
                    .route("/hostile", web::post().to(crate::hostile::route)),
            )
    })
    .workers(2)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

fn comfy_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(ws::route))
        .route("/prompt", web::post().to(post_prompt))
        .route("/prompt", web::get().to(get_prompt))
        .route("/queue", web::get().to(get_queue))
        .route("/queue", web::post().to(post_queue))
        .route("/interrupt", web::post().to(interrupt))
        .route("/history", web::get().to(get_history))
        .route("/history/{id}", web::get().to(get_history_one))
        .route("/history", web::post().to(post_history))
        .route("/view", web::get().to(view))
        .route("/upload/image", web::post().to(upload_image))
        .route("/object_info", web::get().to(object_info))
        .route("/object_info/{class}", web::get().to(object_info_one))
        .route("/system_stats", web::get().to(system_stats))
        .route(
            "/features",
            web::get().to(|| async { HttpResponse::Ok().json(ws::features()) }),
        )
        .route(
            "/free",
            web::post().to(|| async { HttpResponse::Ok().finish() }),
        )
        .route(
            "/embeddings",
            web::get().to(|| async { HttpResponse::Ok().json(json!([])) }),
        )
        .route("/models", web::get().to(models))
        .route("/models/{folder}", web::get().to(models_in));
}

/// ComfyUI's answer to an exception in a handler.
fn internal_error() -> HttpResponse {
    HttpResponse::InternalServerError()
        .content_type("text/plain; charset=utf-8")
        .body("500 Internal Server Error\n\nServer got itself in trouble")
}

fn json_body(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

async fn post_prompt(sim: web::Data<Sim>, body: web::Bytes) -> HttpResponse {
    {
        let mut g = sim.lock();
        if g.script.reject_next > 0 {
            g.script.reject_next -= 1;
            return internal_error();
        }
    }
    let Some(Value::Object(req)) = json_body(&body) else {
        return internal_error();
    };
    let number = {
        let mut g = sim.lock();
        let n = g.number;
        g.number += 1;
        if req.get("front").and_then(Value::as_bool).unwrap_or(false) {
            -n
        } else {
            n
        }
    };
    let prompt_id = match req.get("prompt_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => uuid::Uuid::new_v4().to_string(),
        Some(other) => other.to_string(),
    };
    let Some(prompt) = req.get("prompt") else {
        return HttpResponse::BadRequest().json(nodes::error_body(
            "no_prompt",
            "No prompt provided",
            "No prompt provided",
            json!({}),
        ));
    };
    let Value::Object(prompt) = prompt.clone() else {
        return internal_error();
    };
    if prompt.values().any(|n| !n.is_object()) {
        return internal_error();
    }
    // Hostile mode: refused with NUL in the answer's text (the cleaner's prompts are not the ones
    // a test scripts).
    let cleaning = prompt
        .values()
        .all(|n| n["class_type"] == nodes::CLEAN_CLASS);
    if !cleaning && sim.lock().hostile.plan_reject() {
        info!("prompt {prompt_id} rejected: hostile");
        return HttpResponse::BadRequest().json(crate::hostile::nul_reject_body());
    }
    let accepted = match nodes::validate(&prompt, &sim.dirs.input) {
        Ok(a) => a,
        Err(body) => {
            info!("prompt {prompt_id} rejected: {}", body["error"]["type"]);
            return HttpResponse::BadRequest().json(body);
        }
    };
    let mut extra_data = match req.get("extra_data") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    if let Some(c) = req.get("client_id") {
        extra_data.insert("client_id".into(), c.clone());
    }
    let item = QueueItem {
        number,
        prompt_id: prompt_id.clone(),
        prompt,
        extra_data: Value::Object(extra_data),
        outputs: accepted.outputs,
    };
    {
        let mut g = sim.lock();
        g.stats.push(PromptStat {
            prompt_id: prompt_id.clone(),
            client_id: item.client_id(),
            number,
            received_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            outcome: None,
        });
        g.pending.push(item);
        g.broadcast_status();
        g.claim_next();
    }
    sim.wake.notify_one();
    info!(prompt.id = %prompt_id, "prompt {prompt_id} queued as number {number}");
    HttpResponse::Ok().json(
        json!({"prompt_id": prompt_id, "number": number, "node_errors": accepted.node_errors}),
    )
}

async fn get_prompt(sim: web::Data<Sim>) -> HttpResponse {
    let info = sim.lock().exec_info();
    HttpResponse::Ok().json(info)
}

async fn get_queue(sim: web::Data<Sim>) -> HttpResponse {
    let g = sim.lock();
    let running: Vec<Value> = g.running.iter().map(|r| r.item.to_json()).collect();
    let mut pending: Vec<_> = g.pending.iter().collect();
    pending.sort_by_key(|i| i.number);
    let pending: Vec<Value> = pending.into_iter().map(|i| i.to_json()).collect();
    HttpResponse::Ok().json(json!({"queue_running": running, "queue_pending": pending}))
}

async fn post_queue(sim: web::Data<Sim>, body: web::Bytes) -> HttpResponse {
    let Some(req) = json_body(&body) else {
        return internal_error();
    };
    let mut g = sim.lock();
    if req
        .get("clear")
        .is_some_and(|c| c.as_bool().unwrap_or(false))
    {
        let gone: Vec<String> = g.pending.drain(..).map(|i| i.prompt_id).collect();
        for id in gone {
            if let Some(s) = g.stat_mut(&id) {
                s.outcome = Some("deleted");
            }
        }
        g.broadcast_status();
    }
    if let Some(ids) = req.get("delete").and_then(Value::as_array) {
        for id in ids.iter().filter_map(Value::as_str) {
            let before = g.pending.len();
            g.pending.retain(|i| i.prompt_id != id);
            if g.pending.len() != before {
                if let Some(s) = g.stat_mut(id) {
                    s.outcome = Some("deleted");
                }
                g.broadcast_status();
            }
        }
    }
    HttpResponse::Ok().finish()
}

async fn interrupt(sim: web::Data<Sim>, body: web::Bytes) -> HttpResponse {
    let req = json_body(&body).unwrap_or(json!({}));
    let mut g = sim.lock();
    match req
        .get("prompt_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(id) => {
            if g.running.as_ref().is_some_and(|r| r.item.prompt_id == id) {
                g.interrupt = true;
            }
        }
        None => g.interrupt = true,
    }
    HttpResponse::Ok().finish()
}

/// Writes a history map keeping insertion order (serde_json's map would sort the ids).
fn history_response(entries: &[(&String, &Value)]) -> HttpResponse {
    let body: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::String((*k).clone()), v))
        .collect();
    HttpResponse::Ok()
        .content_type("application/json; charset=utf-8")
        .body(format!("{{{}}}", body.join(",")))
}

async fn get_history(sim: web::Data<Sim>, q: Q) -> HttpResponse {
    let g = sim.lock();
    let max_items = q.get("max_items").and_then(|m| m.parse::<i64>().ok());
    let mut offset = q
        .get("offset")
        .and_then(|o| o.parse::<i64>().ok())
        .unwrap_or(-1);
    if offset < 0 {
        if let Some(m) = max_items {
            offset = g.history.len() as i64 - m;
        }
    }
    let mut out = Vec::new();
    for (i, (k, v)) in g.history.iter().enumerate() {
        if i as i64 >= offset {
            out.push((k, v));
            if max_items.is_some_and(|m| out.len() as i64 >= m) {
                break;
            }
        }
    }
    history_response(&out)
}

async fn get_history_one(sim: web::Data<Sim>, id: web::Path<String>) -> HttpResponse {
    let g = sim.lock();
    let found: Vec<_> = g
        .history
        .iter()
        .filter(|(k, _)| *k == *id)
        .map(|(k, v)| (k, v))
        .collect();
    history_response(&found)
}

async fn post_history(sim: web::Data<Sim>, body: web::Bytes) -> HttpResponse {
    let Some(req) = json_body(&body) else {
        return internal_error();
    };
    let mut g = sim.lock();
    if req
        .get("clear")
        .is_some_and(|c| c.as_bool().unwrap_or(false))
    {
        g.history.clear();
    }
    if let Some(ids) = req.get("delete").and_then(Value::as_array) {
        let ids: Vec<&str> = ids.iter().filter_map(Value::as_str).collect();
        g.history.retain(|(k, _)| !ids.contains(&k.as_str()));
    }
    HttpResponse::Ok().finish()
}

async fn view(sim: web::Data<Sim>, q: Q) -> HttpResponse {
    let answer = view_file(&sim, &q);
    if answer.status() != StatusCode::OK && sim.lock().hostile.renamed {
        return crate::hostile::view_answer();
    }
    answer
}

fn view_file(sim: &Sim, q: &Q) -> HttpResponse {
    let Some(raw) = q.get("filename") else {
        return HttpResponse::NotFound().finish();
    };
    let (name, dir) = if let Some(n) = raw.strip_suffix(" [output]") {
        (n, Some("output"))
    } else if let Some(n) = raw.strip_suffix(" [input]") {
        (n, Some("input"))
    } else if let Some(n) = raw.strip_suffix(" [temp]") {
        (n, Some("temp"))
    } else {
        (raw.as_str(), None)
    };
    if name.is_empty() || name.starts_with('/') || name.contains("..") {
        return HttpResponse::BadRequest().finish();
    }
    let kind = dir.unwrap_or_else(|| q.get("type").map(String::as_str).unwrap_or("output"));
    let Some(base) = sim.dirs.by_type(kind) else {
        return HttpResponse::BadRequest().finish();
    };
    let folder = match q.get("subfolder") {
        Some(sub) => match files::join_inside(base, sub) {
            Ok(f) => f,
            Err(_) => return HttpResponse::Forbidden().finish(),
        },
        None => base.clone(),
    };
    let base_name = name.rsplit('/').next().unwrap_or(name);
    let path = folder.join(base_name);
    match std::fs::read(&path) {
        Ok(bytes) if path.is_file() => {
            let mime = mime_guess::from_path(&path).first_or_octet_stream();
            HttpResponse::Ok()
                .content_type(mime.essence_str())
                .insert_header(("Content-Disposition", format!("filename=\"{base_name}\"")))
                .body(bytes)
        }
        _ => HttpResponse::NotFound().finish(),
    }
}

async fn upload_image(sim: web::Data<Sim>, mut form: Multipart) -> HttpResponse {
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut image: Option<(String, Vec<u8>)> = None;
    while let Some(field) = form.next().await {
        let Ok(mut field) = field else {
            return HttpResponse::BadRequest().finish();
        };
        let name = field.name().unwrap_or_default().to_string();
        let filename = field
            .content_disposition()
            .and_then(|cd| cd.get_filename())
            .map(str::to_string);
        let mut data = Vec::new();
        while let Some(chunk) = field.next().await {
            let Ok(chunk) = chunk else {
                return HttpResponse::BadRequest().finish();
            };
            if data.len() + chunk.len() > MAX_BODY {
                return HttpResponse::build(StatusCode::PAYLOAD_TOO_LARGE).finish();
            }
            data.extend_from_slice(&chunk);
        }
        match (name.as_str(), filename) {
            ("image", Some(f)) => image = Some((f, data)),
            (_, _) => {
                fields.insert(name, String::from_utf8_lossy(&data).into_owned());
            }
        }
    }
    let Some((filename, bytes)) = image else {
        return HttpResponse::BadRequest().finish();
    };
    let kind = fields
        .get("type")
        .cloned()
        .unwrap_or_else(|| "input".into());
    let Some(base) = sim.dirs.by_type(&kind) else {
        return HttpResponse::BadRequest().finish();
    };
    let subfolder = fields.get("subfolder").cloned().unwrap_or_default();
    let Ok(folder) = files::join_inside(base, &subfolder) else {
        return HttpResponse::BadRequest().finish();
    };
    if std::fs::create_dir_all(&folder).is_err() {
        return internal_error();
    }
    let overwrite = matches!(
        fields.get("overwrite").map(String::as_str),
        Some("true") | Some("1")
    );
    let target = match files::upload_target(&folder, &filename, &bytes, overwrite) {
        Ok(t) => t,
        Err(_) => return HttpResponse::BadRequest().finish(),
    };
    if !target.duplicate && std::fs::write(&target.path, &bytes).is_err() {
        return internal_error();
    }
    let mut answer = json!({"name": target.name, "subfolder": subfolder, "type": kind});
    if let Some(names) = sim.lock().hostile.plan_upload() {
        crate::hostile::rename_upload(&mut answer, &names);
    }
    HttpResponse::Ok().json(answer)
}

fn all_object_info(sim: &Sim) -> Vec<(&'static str, Value)> {
    nodes::object_info(&files::list_input_images(&sim.dirs.input))
}

async fn object_info(sim: web::Data<Sim>) -> HttpResponse {
    let map: Map<String, Value> = all_object_info(&sim)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    HttpResponse::Ok().json(map)
}

async fn object_info_one(sim: web::Data<Sim>, class: web::Path<String>) -> HttpResponse {
    let found = all_object_info(&sim)
        .into_iter()
        .find(|(k, _)| *k == class.as_str());
    match found {
        Some((k, v)) => HttpResponse::Ok().json(json!({ k: v })),
        None => HttpResponse::Ok().json(json!({})),
    }
}

async fn system_stats(sim: web::Data<Sim>) -> HttpResponse {
    let ram: u64 = 17_179_869_184;
    HttpResponse::Ok().json(json!({
        "system": {
            "os": "posix", "ram_total": ram, "ram_free": ram / 2,
            "comfyui_version": "0.3.64", "required_frontend_version": "1.27.10",
            "installed_templates_version": "0.1.95", "required_templates_version": "0.1.95",
            "python_version": "3.11.7 (comfy-sim)", "pytorch_version": "2.8.0+cpu (comfy-sim)",
            "embedded_python": false, "argv": sim.argv,
        },
        "devices": [{"name": "cpu", "type": "cpu", "index": null, "vram_total": ram, "vram_free": ram / 2,
                     "torch_vram_total": ram, "torch_vram_free": ram / 2}],
    }))
}

async fn models() -> HttpResponse {
    HttpResponse::Ok().json(crate::catalog::get().folders())
}

async fn models_in(folder: web::Path<String>) -> HttpResponse {
    match crate::catalog::get().files(folder.as_str()) {
        Some(files) => HttpResponse::Ok().json(files),
        None => HttpResponse::NotFound().finish(),
    }
}

async fn sim_config(sim: web::Data<Sim>, body: web::Bytes) -> HttpResponse {
    let Some(req) = json_body(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    {
        let mut g = sim.lock();
        if let Some(ms) = req.get("exec_ms").and_then(Value::as_u64) {
            g.config.exec_ms = ms;
        }
        if let Some(p) = req.get("paused").and_then(Value::as_bool) {
            g.config.paused = p;
        }
    }
    sim.wake.notify_one();
    HttpResponse::Ok().json(json!({}))
}

async fn sim_script(sim: web::Data<Sim>, body: web::Bytes) -> HttpResponse {
    let Some(req) = json_body(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut g = sim.lock();
    let n = |k: &str| req.get(k).and_then(Value::as_u64).unwrap_or(0);
    g.script.fail_next += n("fail_next");
    g.script.reject_next += n("reject_next");
    g.script.hang_next += n("hang_next");
    HttpResponse::Ok().json(json!({}))
}

async fn sim_stats(sim: web::Data<Sim>) -> HttpResponse {
    let g = sim.lock();
    HttpResponse::Ok().json(json!({
        "queued": g.pending.len(),
        "running": g.running.as_ref().map(|r| r.item.prompt_id.clone()),
        "prompts": g.stats,
    }))
}

//! HTTP calls to one ComfyUI server. `awc::Client` is not `Send`: each actor makes its own `ComfyClient`.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::names::{self, NameError};
use super::protocol::FileRef;
use super::ws_limit::BoundedCodec;

/// Why a call to ComfyUI failed.
#[derive(Debug, thiserror::Error)]
pub enum ComfyError {
    /// ComfyUI refused the prompt (HTTP 400 with `error` and `node_errors`): retrying will not help.
    #[error("ComfyUI rejected the prompt: {message}")]
    Rejected { message: String, body: Value },
    /// Any other HTTP status.
    #[error("ComfyUI answered {status} to {what}")]
    Status { what: &'static str, status: u16 },
    /// No answer: the server is down, unreachable or too slow.
    #[error("ComfyUI unreachable during {what}: {detail}")]
    Unreachable { what: &'static str, detail: String },
    #[error("ComfyUI sent an unreadable answer to {what}: {detail}")]
    Decode { what: &'static str, detail: String },
    /// ComfyUI answered with a name comfyd refuses to use (see `comfy::names`).
    #[error("{0}")]
    UnsafeName(#[from] NameError),
}

impl ComfyError {
    fn unreachable(what: &'static str, e: impl std::fmt::Display) -> ComfyError {
        ComfyError::Unreachable {
            what,
            detail: e.to_string(),
        }
    }
}

/// How much comfyd reads from a ComfyUI server at most (`[comfyui_limits]` in the config): a
/// server is untrusted input, and everything it sends is held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest websocket frame; a larger one drops the connection (comfyd reconnects).
    pub max_frame_bytes: usize,
    /// Largest JSON answer (`/history`, `/object_info`, `/queue`, ...).
    pub max_json_bytes: usize,
    /// Largest output downloaded from `/view`.
    pub max_view_bytes: usize,
}

impl Default for Limits {
    /// The documented defaults of `config/default.toml`.
    fn default() -> Limits {
        Limits {
            max_frame_bytes: 16 << 20,
            max_json_bytes: 64 << 20,
            max_view_bytes: 512 << 20,
        }
    }
}

/// The HTTP side of one ComfyUI server.
pub struct ComfyClient {
    base: String,
    http: awc::Client,
    limits: Limits,
}

impl ComfyClient {
    pub fn new(base: &str, timeout: Duration) -> ComfyClient {
        let http = awc::Client::builder().timeout(timeout).finish();
        ComfyClient {
            base: base.trim_end_matches('/').to_string(),
            http,
            limits: Limits::default(),
        }
    }

    /// The same client with other read limits.
    pub fn with_limits(mut self, limits: Limits) -> ComfyClient {
        self.limits = limits;
        self
    }

    /// The websocket URL for a client id.
    pub fn ws_url(&self, client_id: &str) -> String {
        let ws_base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.base.clone()
        };
        format!("{ws_base}/ws?clientId={client_id}")
    }

    /// Opens the websocket (the caller owns the framed connection).
    pub async fn connect_ws(
        &self,
        client_id: &str,
    ) -> Result<actix_codec::Framed<awc::BoxedSocket, BoundedCodec>, ComfyError> {
        let max = self.limits.max_frame_bytes;
        let (_resp, framed) = self
            .http
            .ws(self.ws_url(client_id))
            .max_frame_size(max)
            .connect()
            .await
            .map_err(|e| ComfyError::unreachable("websocket connect", e))?;
        Ok(framed.into_map_codec(|codec| BoundedCodec::new(codec, max)))
    }

    async fn json(
        &self,
        what: &'static str,
        req: awc::ClientRequest,
        body: Option<&Value>,
    ) -> Result<Value, ComfyError> {
        let mut resp = match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        }
        .map_err(|e| ComfyError::unreachable(what, e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body()
            .limit(self.limits.max_json_bytes)
            .await
            .map_err(|e| ComfyError::unreachable(what, e))?;
        if status == 400 && what == "POST /prompt" {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("invalid prompt")
                .to_string();
            return Err(ComfyError::Rejected { message, body });
        }
        if !(200..300).contains(&status) {
            return Err(ComfyError::Status { what, status });
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| ComfyError::Decode {
            what,
            detail: e.to_string(),
        })
    }

    /// Queues a prompt under the id comfyd chose. A 200 with `node_errors` not empty is a rejection
    /// too: ComfyUI would run only part of the graph.
    pub async fn queue_prompt(
        &self,
        graph: &Map<String, Value>,
        client_id: &str,
        prompt_id: &str,
    ) -> Result<(), ComfyError> {
        let body = json!({ "prompt": graph, "client_id": client_id, "prompt_id": prompt_id });
        let resp = self
            .json(
                "POST /prompt",
                self.http.post(format!("{}/prompt", self.base)),
                Some(&body),
            )
            .await?;
        if let Some(errors) = resp.get("node_errors").and_then(Value::as_object) {
            if !errors.is_empty() {
                return Err(ComfyError::Rejected {
                    message: "some output nodes failed validation".into(),
                    body: resp.clone(),
                });
            }
        }
        match resp.get("prompt_id").and_then(Value::as_str) {
            Some(id) if id == prompt_id => Ok(()),
            // A server that ignores client-chosen ids cannot be tracked safely across restarts.
            other => Err(ComfyError::Decode {
                what: "POST /prompt",
                detail: format!("expected prompt_id {prompt_id}, got {other:?}"),
            }),
        }
    }

    /// `GET /history/{id}`: `None` while the prompt is queued, running, or unknown.
    pub async fn history(&self, prompt_id: &str) -> Result<Option<Value>, ComfyError> {
        let v = self
            .json(
                "GET /history",
                self.http.get(format!("{}/history/{prompt_id}", self.base)),
                None,
            )
            .await?;
        Ok(v.get(prompt_id).cloned())
    }

    /// `GET /queue`, as the ids running or pending.
    pub async fn queue(&self) -> Result<Vec<String>, ComfyError> {
        let v = self
            .json(
                "GET /queue",
                self.http.get(format!("{}/queue", self.base)),
                None,
            )
            .await?;
        Ok(super::protocol::queued_prompt_ids(&v))
    }

    /// Removes pending prompts (the running one is not affected; see `interrupt`).
    pub async fn delete_from_queue(&self, prompt_ids: &[String]) -> Result<(), ComfyError> {
        let body = json!({ "delete": prompt_ids });
        self.json(
            "POST /queue",
            self.http.post(format!("{}/queue", self.base)),
            Some(&body),
        )
        .await?;
        Ok(())
    }

    /// Interrupts `prompt_id` if it is the one running (ComfyUI ignores it otherwise).
    pub async fn interrupt(&self, prompt_id: &str) -> Result<(), ComfyError> {
        let body = json!({ "prompt_id": prompt_id });
        self.json(
            "POST /interrupt",
            self.http.post(format!("{}/interrupt", self.base)),
            Some(&body),
        )
        .await?;
        Ok(())
    }

    /// `GET /object_info` (every node class and its inputs).
    pub async fn object_info(&self) -> Result<Value, ComfyError> {
        self.json(
            "GET /object_info",
            self.http.get(format!("{}/object_info", self.base)),
            None,
        )
        .await
    }

    /// Whether the server has the node class `class` (`GET /object_info/{class}` answers `{}` when not).
    pub async fn has_node_class(&self, class: &str) -> Result<bool, ComfyError> {
        let path: String = url::form_urlencoded::byte_serialize(class.as_bytes())
            .collect::<String>()
            .replace('+', "%20");
        let v = self
            .json(
                "GET /object_info/{class}",
                self.http.get(format!("{}/object_info/{path}", self.base)),
                None,
            )
            .await?;
        Ok(v.get(class).is_some())
    }

    /// `GET /system_stats` (versions, devices), as sent.
    pub async fn system_stats(&self) -> Result<Value, ComfyError> {
        self.json(
            "GET /system_stats",
            self.http.get(format!("{}/system_stats", self.base)),
            None,
        )
        .await
    }

    /// `GET /models`: the model folders' names, as sent.
    pub async fn model_folders(&self) -> Result<Value, ComfyError> {
        self.json(
            "GET /models",
            self.http.get(format!("{}/models", self.base)),
            None,
        )
        .await
    }

    /// `GET /models/{folder}`: the files of one model folder, as sent; `None` when the server
    /// answers 404 (ComfyUI lists folders in `/models` that it cannot list the files of).
    pub async fn models_in(&self, folder: &str) -> Result<Option<Value>, ComfyError> {
        let path: String = url::form_urlencoded::byte_serialize(folder.as_bytes())
            .collect::<String>()
            .replace('+', "%20");
        match self
            .json(
                "GET /models/{folder}",
                self.http.get(format!("{}/models/{path}", self.base)),
                None,
            )
            .await
        {
            Err(ComfyError::Status { status: 404, .. }) => Ok(None),
            other => other.map(Some),
        }
    }

    /// Uploads an input image under `name` (overwriting: the name is unique to the task, so a retry
    /// replaces its own earlier upload). Returns the value a LoadImage input takes.
    pub async fn upload_image(
        &self,
        name: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<String, ComfyError> {
        const WHAT: &str = "POST /upload/image";
        let boundary = format!("comfyd{}", uuid::Uuid::new_v4().simple());
        let mut body = Vec::with_capacity(bytes.len() + 512);
        let safe_name = name.replace(['"', '\r', '\n'], "_");
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{safe_name}\"\r\n\
                 Content-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&bytes);
        for (field, value) in [("type", "input"), ("overwrite", "true")] {
            body.extend_from_slice(
                format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let mut resp = self
            .http
            .post(format!("{}/upload/image", self.base))
            .insert_header((
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            ))
            .send_body(body)
            .await
            .map_err(|e| ComfyError::unreachable(WHAT, e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(ComfyError::Status { what: WHAT, status });
        }
        let v: Value = resp.json().await.map_err(|e| ComfyError::Decode {
            what: WHAT,
            detail: e.to_string(),
        })?;
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or(ComfyError::Decode {
                what: WHAT,
                detail: "no name in answer".into(),
            })?;
        // The answer becomes the graph's LoadImage value: a name that leaves the input folder is refused.
        let subfolder = v.get("subfolder").and_then(Value::as_str).unwrap_or("");
        let kind = v.get("type").and_then(Value::as_str);
        Ok(names::check_upload_answer(name, subfolder, kind)?)
    }

    /// Downloads one output through `/view`. Returns the bytes and the content type ComfyUI gave.
    /// The names are checked again here, whoever built `file`: they go into the query.
    pub async fn view(&self, file: &FileRef) -> Result<(Bytes, Option<String>), ComfyError> {
        const WHAT: &str = "GET /view";
        let file = names::check_file(file)?;
        let mut resp = self
            .http
            .get(format!("{}/view", self.base))
            .query(&[
                ("filename", file.filename.as_str()),
                ("subfolder", file.subfolder.as_str()),
                ("type", file.folder_type.as_str()),
            ])
            .map_err(|e| ComfyError::Decode {
                what: WHAT,
                detail: e.to_string(),
            })?
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .map_err(|e| ComfyError::unreachable(WHAT, e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(ComfyError::Status { what: WHAT, status });
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let bytes = resp
            .body()
            .limit(self.limits.max_view_bytes)
            .await
            .map_err(|e| ComfyError::unreachable(WHAT, e))?;
        Ok((bytes, content_type))
    }
}

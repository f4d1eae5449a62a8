//! Settings: `config/default.toml` (built in) → `$COMFYD_CONFIG` → `.env` → environment variables.
//!
//! Every key is documented in `config/default.toml`, which is the operator manual. The environment names
//! of the Python service comfyd replaces keep working; comfyd's own keys use the `COMFYD_` prefix. A bad
//! value fails at start with a message that names the key or the variable.
//!
//! `mod.rs` holds the sections, the file layers and validation; `env.rs` the environment variables'
//! names and how each overrides a key.

mod env;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use env::EnvOverrides;

/// The built-in defaults: the same file operators read.
const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub data: DataSettings,
    pub database: DatabaseSettings,
    pub comfyui: ComfyuiSettings,
    pub storage: StorageSettings,
    pub webhooks: WebhookSettings,
    pub inputs: InputSettings,
    pub url_policy: UrlPolicySettings,
    pub cleanup: CleanupSettings,
    pub workflows: WorkflowSettings,
    pub log: LogSettings,
    pub auth: AuthSettings,
    pub database_outage: DatabaseOutageSettings,
    pub comfyui_limits: ComfyuiLimitsSettings,
    pub limits: LimitSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub route_prefix: String,
    pub shutdown_timeout_secs: u64,
    pub http_workers: usize,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSettings {
    pub dir: PathBuf,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
}

impl std::fmt::Debug for DatabaseSettings {
    // The URL may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComfyuiSettings {
    pub endpoints: Vec<String>,
    pub max_in_flight: usize,
    pub reconnect_max_ms: u64,
    pub lost_after_secs: u64,
    pub max_attempts: i32,
    pub task_deadline_secs: u64,
    pub http_timeout_ms: u64,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub s3_bucket: String,
    pub s3_region: String,
    pub s3_endpoint_url: String,
    pub s3_force_path_style: bool,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
    pub key_prefix: String,
    pub local_dir: String,
    pub fallback_dir: String,
    pub upload_attempts: u32,
    /// Lifetime of the presigned GET URLs in task records and webhooks (S3 store), in seconds.
    pub presign_expiry_secs: u64,
}

impl std::fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageSettings")
            .field("s3_bucket", &self.s3_bucket)
            .field("s3_region", &self.s3_region)
            .field("s3_endpoint_url", &self.s3_endpoint_url)
            .field("key_prefix", &self.key_prefix)
            .field("local_dir", &self.local_dir)
            .field("fallback_dir", &self.fallback_dir)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    pub secret: String,
    pub timeout_ms: u64,
    pub retry_horizon_secs: u64,
    pub first_backoff_ms: u64,
    pub max_backoff_secs: u64,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("signed", &!self.secret.is_empty())
            .field("timeout_ms", &self.timeout_ms)
            .field("retry_horizon_secs", &self.retry_horizon_secs)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSettings {
    pub fetch_max_bytes: u64,
    pub fetch_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlPolicySettings {
    pub allow_private_addresses: bool,
    /// Unset: the same as `allow_private_addresses` (which alone decided both before it existed).
    #[serde(default)]
    pub allow_loopback: Option<bool>,
}

impl UrlPolicySettings {
    pub fn allow_loopback(&self) -> bool {
        self.allow_loopback.unwrap_or(self.allow_private_addresses)
    }
}

/// API keys (`[auth]`). No keys here or in the database: every route is open.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub keys: Vec<ApiKeySetting>,
}

/// One key in the configuration: its name (recorded as the owner of the tasks it submits), its
/// scope and the SHA-256 of the key (hex), never the key itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySetting {
    pub name: String,
    pub scope: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupSettings {
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSettings {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: String,
}

/// How the API behaves while the database cannot be reached (see `crate::db_health`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseOutageSettings {
    /// Longest a submit waits for its task to be recorded before it answers 503.
    pub submit_wait_ms: u64,
}

/// How much comfyd reads from a ComfyUI server at most (a server is untrusted input).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComfyuiLimitsSettings {
    /// Largest websocket frame, in bytes; a larger one drops the connection (comfyd reconnects).
    pub max_frame_bytes: usize,
    /// Largest JSON answer (`/history`, `/object_info`, `/queue`), in bytes.
    pub max_json_bytes: usize,
    /// Largest output downloaded from `/view`, in bytes (it is held in memory while stored).
    pub max_view_bytes: usize,
}

impl ComfyuiLimitsSettings {
    /// The limits as the ComfyUI client takes them.
    pub fn limits(&self) -> crate::comfy::Limits {
        crate::comfy::Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_json_bytes: self.max_json_bytes,
            max_view_bytes: self.max_view_bytes,
        }
    }
}

/// Bounds on what hostile or careless clients can make comfyd hold (section `[limits]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Bytes that request bodies, the images decoded from them and fetched images may hold at once
    /// across all requests; a request that cannot get its share within `in_flight_wait_ms` is
    /// answered 503 with Retry-After.
    pub in_flight_bytes: u64,
    /// How long a request waits for its share of `in_flight_bytes` before the 503.
    pub in_flight_wait_ms: u64,
    /// Longest side of an input image, in pixels (larger: 413, read from the header).
    pub max_image_side: u32,
    /// Most pixels of an input image (larger: 413).
    pub max_image_pixels: u64,
}

impl Settings {
    /// Loads the settings the daemon runs with: defaults, `$COMFYD_CONFIG`, `.env`, environment.
    pub fn load() -> anyhow::Result<Settings> {
        // A missing .env is normal; a malformed one is an operator error worth stopping for. It is
        // read as python-dotenv reads it, so the original service's `.env` works unchanged.
        crate::dotenv::load(Path::new(".env"))?;
        let file = std::env::var_os("COMFYD_CONFIG").map(PathBuf::from);
        let env = env::read()?;
        Self::from_parts(file.as_deref(), env)
    }

    /// Loads from the defaults and an optional file, without looking at the environment (tests, tools).
    pub fn load_file(file: Option<&Path>) -> anyhow::Result<Settings> {
        Self::from_parts(file, EnvOverrides::default())
    }

    fn from_parts(file: Option<&Path>, env: EnvOverrides) -> anyhow::Result<Settings> {
        let mut merged: toml::Table =
            toml::from_str(DEFAULT_TOML).context("built-in config/default.toml")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let overlay: toml::Table =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            merge(&mut merged, overlay);
        }
        let mut settings: Settings = toml::Value::Table(merged).try_into().with_context(|| {
            format!(
                "invalid configuration{}",
                file.map(|p| format!(" in {}", p.display()))
                    .unwrap_or_default()
            )
        })?;
        settings.apply_env(env);
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&mut self) -> anyhow::Result<()> {
        let prefix = self.server.route_prefix.trim_end_matches('/').to_string();
        if !prefix.is_empty() && !prefix.starts_with('/') {
            bail!("server.route_prefix (ROUTE_PREFIX) must start with '/': {prefix:?}");
        }
        self.server.route_prefix = prefix;
        if self.comfyui.endpoints.is_empty() {
            bail!("comfyui.endpoints (COMFYUI_ENDPOINTS) lists no ComfyUI server");
        }
        for e in &mut self.comfyui.endpoints {
            *e = endpoint_url(e)?;
        }
        if self.comfyui.max_in_flight == 0 {
            bail!("comfyui.max_in_flight (COMFYD_MAX_IN_FLIGHT) must be at least 1");
        }
        if self.comfyui.max_attempts < 1 {
            bail!("comfyui.max_attempts (COMFYD_MAX_ATTEMPTS) must be at least 1");
        }
        // Deadlines and horizons become dates; ten years is beyond any real need and far from overflow.
        const TEN_YEARS: u64 = 10 * 365 * 24 * 3600;
        for (value, name) in [
            (
                self.comfyui.task_deadline_secs,
                "comfyui.task_deadline_secs (COMFYD_TASK_DEADLINE_SECS)",
            ),
            (
                self.webhooks.retry_horizon_secs,
                "webhooks.retry_horizon_secs (COMFYD_WEBHOOK_HORIZON_SECS)",
            ),
            (
                self.webhooks.max_backoff_secs,
                "webhooks.max_backoff_secs (COMFYD_WEBHOOK_MAX_BACKOFF_SECS)",
            ),
        ] {
            if !(1..=TEN_YEARS).contains(&value) {
                bail!("{name} must be from 1 to {TEN_YEARS} seconds, not {value}");
            }
        }
        if self.storage.upload_attempts == 0 {
            bail!("storage.upload_attempts (COMFYD_UPLOAD_ATTEMPTS) must be at least 1");
        }
        // S3's (SigV4's) limit for a presigned URL is seven days.
        const MAX_PRESIGN_SECS: u64 = 7 * 24 * 3600;
        if !(1..=MAX_PRESIGN_SECS).contains(&self.storage.presign_expiry_secs) {
            bail!(
                "storage.presign_expiry_secs (COMFYD_PRESIGN_EXPIRY_SECS) must be from 1 to \
                 {MAX_PRESIGN_SECS} seconds, not {}",
                self.storage.presign_expiry_secs
            );
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!(
                "log.format (COMFYD_LOG_FORMAT) must be \"text\" or \"json\", not {:?}",
                self.log.format
            );
        }
        for (i, key) in self.auth.keys.iter_mut().enumerate() {
            let at = format!("auth.keys[{i}] (COMFYD_API_KEYS)");
            if key.name.trim().is_empty() || key.name.len() > 64 {
                bail!("{at}: name must be 1 to 64 characters");
            }
            if !matches!(key.scope.as_str(), "submit" | "admin") {
                bail!(
                    "{at} {:?}: scope must be \"submit\" or \"admin\", not {:?}",
                    key.name,
                    key.scope
                );
            }
            key.sha256 = key.sha256.to_ascii_lowercase();
            if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!(
                    "{at} {:?}: sha256 must be the 64 hex digits of the key's SHA-256 \
                     (`comfyd keys generate` prints one)",
                    key.name
                );
            }
        }
        for (value, name) in [
            (
                self.comfyui_limits.max_frame_bytes,
                "comfyui_limits.max_frame_bytes (COMFYD_WS_MAX_FRAME_BYTES)",
            ),
            (
                self.comfyui_limits.max_json_bytes,
                "comfyui_limits.max_json_bytes (COMFYD_COMFYUI_MAX_JSON_BYTES)",
            ),
            (
                self.comfyui_limits.max_view_bytes,
                "comfyui_limits.max_view_bytes (COMFYD_VIEW_MAX_BYTES)",
            ),
        ] {
            // Below 64 KiB even ComfyUI's ordinary frames and answers would be refused.
            if value < 65_536 {
                bail!("{name} must be at least 65536 bytes, not {value}");
            }
        }
        // A body is held twice while it is parsed (its bytes and their JSON), see routes/input.rs.
        let largest_body = 2 * self.server.max_body_bytes as u64;
        if self.limits.in_flight_bytes < largest_body {
            bail!(
                "limits.in_flight_bytes (COMFYD_IN_FLIGHT_BYTES) must be at least twice \
                 server.max_body_bytes (COMFYD_MAX_BODY_BYTES), {largest_body}, so that the \
                 largest body accepted can be read"
            );
        }
        if self.limits.max_image_side == 0 || self.limits.max_image_pixels == 0 {
            bail!(
                "limits.max_image_side (COMFYD_MAX_IMAGE_SIDE) and limits.max_image_pixels \
                 (COMFYD_MAX_IMAGE_PIXELS) must be at least 1"
            );
        }
        let url = &self.database.url;
        let known_scheme = url.starts_with("sqlite:") || url.starts_with("postgres");
        if !url.is_empty() && !known_scheme {
            bail!("database.url (DATABASE_URL) must be a sqlite: or postgres:// URL");
        }
        // Database outages.
        if !(1..=60_000).contains(&self.database_outage.submit_wait_ms) {
            bail!(
                "database_outage.submit_wait_ms (COMFYD_DB_SUBMIT_WAIT_MS) must be from 1 to 60000, not {}",
                self.database_outage.submit_wait_ms
            );
        }
        Ok(())
    }

    /// The database URL in use: the configured one, or the SQLite file in the data folder.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.data.dir.join("comfyd.db").display()
            )
        } else {
            self.database.url.clone()
        }
    }

    /// Where outputs go when no bucket is set.
    pub fn local_store_dir(&self) -> PathBuf {
        or_data(&self.storage.local_dir, &self.data.dir, "outputs")
    }

    /// Where outputs that could not be stored are kept.
    pub fn fallback_dir(&self) -> PathBuf {
        or_data(&self.storage.fallback_dir, &self.data.dir, "failed")
    }

    /// Where the input images of accepted tasks wait until their job has run.
    pub fn inputs_dir(&self) -> PathBuf {
        self.data.dir.join("inputs")
    }
}

/// A ComfyUI endpoint as a base URL: `host:port` (the original's form) means `http://host:port`;
/// `http://` and `https://` URLs are kept as written.
fn endpoint_url(e: &str) -> anyhow::Result<String> {
    let full = if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    };
    let url = url::Url::parse(&full).with_context(|| {
        format!("comfyui.endpoints (COMFYUI_ENDPOINTS): {e:?} is not a URL or host:port")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("comfyui.endpoints (COMFYUI_ENDPOINTS): {e:?} must be http or https");
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("comfyui.endpoints (COMFYUI_ENDPOINTS): {e:?} names no host");
    }
    Ok(full)
}

fn or_data(value: &str, data: &Path, default: &str) -> PathBuf {
    if value.is_empty() {
        data.join(default)
    } else {
        PathBuf::from(value)
    }
}

/// Deep merge: tables merge key by key, anything else is replaced.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// A URL with its password replaced, for logs.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => raw.to_string(),
    }
}

//! Settings: `config/default.toml` (built in) → `$COMFYD_CONFIG` → `.env` → environment variables.
//!
//! Every key is documented in `config/default.toml`, which is the operator manual. The environment names
//! of the Python service comfyd replaces keep working; comfyd's own keys use the `COMFYD_` prefix. A bad
//! value fails at start with a message that names the key or the variable.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// The built-in defaults: the same file operators read.
const DEFAULT_TOML: &str = include_str!("../config/default.toml");

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

/// Environment overrides: one flat field per variable (envy lowercases the names).
#[derive(Debug, Default, Deserialize)]
struct EnvOverrides {
    // The original service's names.
    comfyui_endpoints: Option<String>,
    aws_access_key_id: Option<String>,
    aws_secret_access_key: Option<String>,
    s3_bucket: Option<String>,
    s3_region_name: Option<String>,
    rdb_username: Option<String>,
    rdb_password: Option<String>,
    rdb_host: Option<String>,
    rdb_port: Option<u16>,
    rdb_name: Option<String>,
    default_failed_image_path: Option<String>,
    service_port: Option<u16>,
    route_prefix: Option<String>,
    database_url: Option<String>,
    // comfyd's own.
    comfyd_host: Option<String>,
    comfyd_shutdown_timeout_secs: Option<u64>,
    comfyd_http_workers: Option<usize>,
    comfyd_max_body_bytes: Option<usize>,
    comfyd_data_dir: Option<PathBuf>,
    comfyd_db_max_connections: Option<u32>,
    comfyd_max_in_flight: Option<usize>,
    comfyd_reconnect_max_ms: Option<u64>,
    comfyd_lost_after_secs: Option<u64>,
    comfyd_max_attempts: Option<i32>,
    comfyd_task_deadline_secs: Option<u64>,
    comfyd_comfyui_timeout_ms: Option<u64>,
    comfyd_s3_endpoint_url: Option<String>,
    comfyd_s3_force_path_style: Option<bool>,
    comfyd_key_prefix: Option<String>,
    comfyd_local_dir: Option<String>,
    comfyd_upload_attempts: Option<u32>,
    comfyd_webhook_secret: Option<String>,
    comfyd_webhook_timeout_ms: Option<u64>,
    comfyd_webhook_horizon_secs: Option<u64>,
    comfyd_webhook_first_backoff_ms: Option<u64>,
    comfyd_webhook_max_backoff_secs: Option<u64>,
    comfyd_fetch_max_bytes: Option<u64>,
    comfyd_fetch_timeout_ms: Option<u64>,
    comfyd_allow_private_urls: Option<bool>,
    comfyd_cleanup: Option<bool>,
    comfyd_workflows_dir: Option<PathBuf>,
    comfyd_log_format: Option<String>,
    // Access: the URL policy's loopback switch and API keys (`name:scope:sha256`, comma-separated).
    comfyd_allow_loopback_urls: Option<bool>,
    comfyd_api_keys: Option<String>,
    // Database outages.
    comfyd_db_submit_wait_ms: Option<u64>,
    // Limits on what a ComfyUI server sends (hostile backends).
    comfyd_ws_max_frame_bytes: Option<usize>,
    comfyd_comfyui_max_json_bytes: Option<usize>,
    comfyd_view_max_bytes: Option<usize>,
}

impl Settings {
    /// Loads the settings the daemon runs with: defaults, `$COMFYD_CONFIG`, `.env`, environment.
    pub fn load() -> anyhow::Result<Settings> {
        // A missing .env is normal; a malformed one is an operator error worth stopping for.
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(e).context("reading .env"),
        }
        let file = std::env::var_os("COMFYD_CONFIG").map(PathBuf::from);
        let env: EnvOverrides = envy::from_env().context("reading environment variables")?;
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

    fn apply_env(&mut self, env: EnvOverrides) {
        fn set<T>(slot: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *slot = v;
            }
        }
        let s = self;
        if let Some(list) = env.comfyui_endpoints {
            s.comfyui.endpoints = list
                .split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect();
        }
        set(&mut s.storage.s3_access_key_id, env.aws_access_key_id);
        set(
            &mut s.storage.s3_secret_access_key,
            env.aws_secret_access_key,
        );
        set(&mut s.storage.s3_bucket, env.s3_bucket);
        set(&mut s.storage.s3_region, env.s3_region_name);
        set(&mut s.storage.fallback_dir, env.default_failed_image_path);
        set(&mut s.server.port, env.service_port);
        set(&mut s.server.route_prefix, env.route_prefix);
        if let Some(host) = env.rdb_host {
            let user = env.rdb_username.unwrap_or_else(|| "postgres".into());
            let auth = match env.rdb_password {
                Some(p) if !p.is_empty() => format!("{}:{}", pct(&user), pct(&p)),
                _ => pct(&user),
            };
            s.database.url = format!(
                "postgres://{auth}@{host}:{}/{}",
                env.rdb_port.unwrap_or(5432),
                env.rdb_name.unwrap_or_else(|| "comfyd".into())
            );
        }
        // DATABASE_URL is the more specific setting and wins over RDB_*.
        set(&mut s.database.url, env.database_url);
        set(&mut s.server.host, env.comfyd_host);
        set(
            &mut s.server.shutdown_timeout_secs,
            env.comfyd_shutdown_timeout_secs,
        );
        set(&mut s.server.http_workers, env.comfyd_http_workers);
        set(&mut s.server.max_body_bytes, env.comfyd_max_body_bytes);
        set(&mut s.data.dir, env.comfyd_data_dir);
        set(
            &mut s.database.max_connections,
            env.comfyd_db_max_connections,
        );
        set(&mut s.comfyui.max_in_flight, env.comfyd_max_in_flight);
        set(&mut s.comfyui.reconnect_max_ms, env.comfyd_reconnect_max_ms);
        set(&mut s.comfyui.lost_after_secs, env.comfyd_lost_after_secs);
        set(&mut s.comfyui.max_attempts, env.comfyd_max_attempts);
        set(
            &mut s.comfyui.task_deadline_secs,
            env.comfyd_task_deadline_secs,
        );
        set(
            &mut s.comfyui.http_timeout_ms,
            env.comfyd_comfyui_timeout_ms,
        );
        set(&mut s.storage.s3_endpoint_url, env.comfyd_s3_endpoint_url);
        set(
            &mut s.storage.s3_force_path_style,
            env.comfyd_s3_force_path_style,
        );
        set(&mut s.storage.key_prefix, env.comfyd_key_prefix);
        set(&mut s.storage.local_dir, env.comfyd_local_dir);
        set(&mut s.storage.upload_attempts, env.comfyd_upload_attempts);
        set(&mut s.webhooks.secret, env.comfyd_webhook_secret);
        set(&mut s.webhooks.timeout_ms, env.comfyd_webhook_timeout_ms);
        set(
            &mut s.webhooks.retry_horizon_secs,
            env.comfyd_webhook_horizon_secs,
        );
        set(
            &mut s.webhooks.first_backoff_ms,
            env.comfyd_webhook_first_backoff_ms,
        );
        set(
            &mut s.webhooks.max_backoff_secs,
            env.comfyd_webhook_max_backoff_secs,
        );
        set(&mut s.inputs.fetch_max_bytes, env.comfyd_fetch_max_bytes);
        set(&mut s.inputs.fetch_timeout_ms, env.comfyd_fetch_timeout_ms);
        set(
            &mut s.url_policy.allow_private_addresses,
            env.comfyd_allow_private_urls,
        );
        set(&mut s.cleanup.enabled, env.comfyd_cleanup);
        set(&mut s.workflows.dir, env.comfyd_workflows_dir);
        set(&mut s.log.format, env.comfyd_log_format);
        // Access.
        if let Some(allow) = env.comfyd_allow_loopback_urls {
            s.url_policy.allow_loopback = Some(allow);
        }
        if let Some(list) = env.comfyd_api_keys {
            s.auth.keys = list
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| {
                    let mut parts = k.splitn(3, ':');
                    ApiKeySetting {
                        name: parts.next().unwrap_or_default().to_string(),
                        scope: parts.next().unwrap_or_default().to_string(),
                        sha256: parts.next().unwrap_or_default().to_string(),
                    }
                })
                .collect();
        }
        // Database outages.
        set(
            &mut s.database_outage.submit_wait_ms,
            env.comfyd_db_submit_wait_ms,
        );
        // Limits on what a ComfyUI server sends (hostile backends).
        set(
            &mut s.comfyui_limits.max_frame_bytes,
            env.comfyd_ws_max_frame_bytes,
        );
        set(
            &mut s.comfyui_limits.max_json_bytes,
            env.comfyd_comfyui_max_json_bytes,
        );
        set(
            &mut s.comfyui_limits.max_view_bytes,
            env.comfyd_view_max_bytes,
        );
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
        for e in &self.comfyui.endpoints {
            let url = url::Url::parse(e).with_context(|| {
                format!("comfyui.endpoints (COMFYUI_ENDPOINTS): {e:?} is not a URL")
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                bail!("comfyui.endpoints (COMFYUI_ENDPOINTS): {e:?} must be http or https");
            }
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

/// Percent-encodes a URL user-info part.
fn pct(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let s = Settings::load_file(None).expect("default.toml is valid");
        assert_eq!(s.server.port, 8000);
        assert_eq!(s.server.route_prefix, "/api/v1");
        assert!(s.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn original_variable_names_override() {
        let env = EnvOverrides {
            comfyui_endpoints: Some("http://a:1, http://b:2".into()),
            service_port: Some(9000),
            route_prefix: Some("/gen/".into()),
            rdb_host: Some("db".into()),
            rdb_username: Some("u".into()),
            rdb_password: Some("p@ss".into()),
            rdb_name: Some("x".into()),
            s3_bucket: Some("b".into()),
            default_failed_image_path: Some("/tmp/f".into()),
            ..Default::default()
        };
        let s = Settings::from_parts(None, env).expect("valid");
        assert_eq!(s.comfyui.endpoints, vec!["http://a:1", "http://b:2"]);
        assert_eq!(s.server.port, 9000);
        assert_eq!(s.server.route_prefix, "/gen");
        assert_eq!(s.database_url(), "postgres://u:p%40ss@db:5432/x");
        assert_eq!(s.storage.s3_bucket, "b");
        assert_eq!(s.fallback_dir(), PathBuf::from("/tmp/f"));
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nprot = 1\n").expect("write");
        let err = format!(
            "{:#}",
            Settings::load_file(Some(&path)).expect_err("must fail")
        );
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn bad_value_in_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[comfyui]\nmax_in_flight = \"two\"\n").expect("write");
        let err = format!(
            "{:#}",
            Settings::load_file(Some(&path)).expect_err("must fail")
        );
        assert!(err.contains("max_in_flight"), "{err}");
    }

    #[test]
    fn an_absurd_deadline_is_refused_rather_than_overflowing() {
        let env = EnvOverrides {
            comfyd_task_deadline_secs: Some(u64::MAX),
            ..Default::default()
        };
        let err = format!(
            "{:#}",
            Settings::from_parts(None, env).expect_err("must fail")
        );
        assert!(err.contains("COMFYD_TASK_DEADLINE_SECS"), "{err}");
    }

    #[test]
    fn loopback_follows_private_unless_set() {
        let s = Settings::load_file(None).expect("valid");
        assert!(s.url_policy.allow_private_addresses && s.url_policy.allow_loopback());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[url_policy]\nallow_private_addresses = false\n").expect("write");
        let s = Settings::load_file(Some(&path)).expect("valid");
        assert!(!s.url_policy.allow_loopback());
        let env = EnvOverrides {
            comfyd_allow_private_urls: Some(false),
            comfyd_allow_loopback_urls: Some(true),
            ..Default::default()
        };
        let s = Settings::from_parts(None, env).expect("valid");
        assert!(!s.url_policy.allow_private_addresses && s.url_policy.allow_loopback());
    }

    #[test]
    fn api_keys_from_the_environment_are_checked() {
        let hash = "AB".repeat(32);
        let env = EnvOverrides {
            comfyd_api_keys: Some(format!("app:submit:{hash}, ops:admin:{}", "0".repeat(64))),
            ..Default::default()
        };
        let s = Settings::from_parts(None, env).expect("valid");
        assert_eq!(s.auth.keys.len(), 2);
        assert_eq!(s.auth.keys[0].sha256, hash.to_ascii_lowercase());
        assert_eq!(s.auth.keys[1].scope, "admin");
        for bad in [
            "app:root:".to_string() + &hash,
            "app:submit:abc".into(),
            format!(":submit:{hash}"),
        ] {
            let env = EnvOverrides {
                comfyd_api_keys: Some(bad.clone()),
                ..Default::default()
            };
            let err = format!("{:#}", Settings::from_parts(None, env).expect_err(&bad));
            assert!(err.contains("COMFYD_API_KEYS"), "{err}");
        }
    }

    #[test]
    fn bad_endpoint_is_named() {
        let env = EnvOverrides {
            comfyui_endpoints: Some("not a url".into()),
            ..Default::default()
        };
        let err = format!(
            "{:#}",
            Settings::from_parts(None, env).expect_err("must fail")
        );
        assert!(err.contains("COMFYUI_ENDPOINTS"), "{err}");
    }
}

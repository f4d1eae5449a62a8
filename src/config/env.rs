//! The environment's part of the settings: the variable names (the original service's, and comfyd's
//! own `COMFYD_*`), read with envy, and how each overrides the files' value. `mod.rs` calls it
//! between reading the files and validating.

use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;

use super::{ApiKeySetting, Settings};

/// Reads the environment's overrides.
pub(super) fn read() -> anyhow::Result<EnvOverrides> {
    envy::from_env().context("reading environment variables")
}

/// Environment overrides: one flat field per variable (envy lowercases the names).
#[derive(Debug, Default, Deserialize)]
pub(super) struct EnvOverrides {
    // The original service's names.
    pub(super) comfyui_endpoints: Option<String>,
    pub(super) aws_access_key_id: Option<String>,
    pub(super) aws_secret_access_key: Option<String>,
    pub(super) s3_bucket: Option<String>,
    pub(super) s3_region_name: Option<String>,
    pub(super) rdb_username: Option<String>,
    pub(super) rdb_password: Option<String>,
    pub(super) rdb_host: Option<String>,
    pub(super) rdb_port: Option<u16>,
    pub(super) rdb_name: Option<String>,
    pub(super) default_failed_image_path: Option<String>,
    pub(super) service_port: Option<u16>,
    pub(super) route_prefix: Option<String>,
    pub(super) database_url: Option<String>,
    // comfyd's own.
    pub(super) comfyd_host: Option<String>,
    pub(super) comfyd_shutdown_timeout_secs: Option<u64>,
    pub(super) comfyd_http_workers: Option<usize>,
    pub(super) comfyd_max_body_bytes: Option<usize>,
    pub(super) comfyd_data_dir: Option<PathBuf>,
    pub(super) comfyd_db_max_connections: Option<u32>,
    pub(super) comfyd_max_in_flight: Option<usize>,
    pub(super) comfyd_reconnect_max_ms: Option<u64>,
    pub(super) comfyd_lost_after_secs: Option<u64>,
    pub(super) comfyd_max_attempts: Option<i32>,
    pub(super) comfyd_task_deadline_secs: Option<u64>,
    pub(super) comfyd_comfyui_timeout_ms: Option<u64>,
    pub(super) comfyd_s3_endpoint_url: Option<String>,
    pub(super) comfyd_s3_force_path_style: Option<bool>,
    pub(super) comfyd_key_prefix: Option<String>,
    pub(super) comfyd_local_dir: Option<String>,
    pub(super) comfyd_upload_attempts: Option<u32>,
    pub(super) comfyd_presign_expiry_secs: Option<u64>,
    pub(super) comfyd_webhook_secret: Option<String>,
    pub(super) comfyd_webhook_timeout_ms: Option<u64>,
    pub(super) comfyd_webhook_horizon_secs: Option<u64>,
    pub(super) comfyd_webhook_first_backoff_ms: Option<u64>,
    pub(super) comfyd_webhook_max_backoff_secs: Option<u64>,
    pub(super) comfyd_fetch_max_bytes: Option<u64>,
    pub(super) comfyd_fetch_timeout_ms: Option<u64>,
    pub(super) comfyd_allow_private_urls: Option<bool>,
    pub(super) comfyd_cleanup: Option<bool>,
    pub(super) comfyd_workflows_dir: Option<PathBuf>,
    pub(super) comfyd_log_format: Option<String>,
    // Access: the URL policy's loopback switch and API keys (`name:scope:sha256`, comma-separated).
    pub(super) comfyd_allow_loopback_urls: Option<bool>,
    pub(super) comfyd_api_keys: Option<String>,
    // Database outages.
    pub(super) comfyd_db_submit_wait_ms: Option<u64>,
    // Limits on what a ComfyUI server sends (hostile backends).
    pub(super) comfyd_ws_max_frame_bytes: Option<usize>,
    pub(super) comfyd_comfyui_max_json_bytes: Option<usize>,
    pub(super) comfyd_view_max_bytes: Option<usize>,
    // Request limits ([limits]).
    pub(super) comfyd_in_flight_bytes: Option<u64>,
    pub(super) comfyd_in_flight_wait_ms: Option<u64>,
    pub(super) comfyd_max_image_side: Option<u32>,
    pub(super) comfyd_max_image_pixels: Option<u64>,
}

impl Settings {
    pub(super) fn apply_env(&mut self, env: EnvOverrides) {
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
        // The original always used PostgreSQL: any RDB_* variable selects it, and the ones left out
        // take the original's defaults (there is no default password). Empty text counts as left out.
        let rdb = [
            &env.rdb_username,
            &env.rdb_password,
            &env.rdb_host,
            &env.rdb_name,
        ];
        if env.rdb_port.is_some() || rdb.iter().any(|v| v.is_some()) {
            let given = |v: Option<String>, default: &str| {
                v.filter(|v| !v.trim().is_empty())
                    .unwrap_or_else(|| default.to_string())
            };
            let user = given(env.rdb_username, "root");
            let auth = match env.rdb_password {
                Some(p) if !p.is_empty() => format!("{}:{}", pct(&user), pct(&p)),
                _ => pct(&user),
            };
            s.database.url = format!(
                "postgres://{auth}@{}:{}/{}",
                given(env.rdb_host, "localhost"),
                env.rdb_port.unwrap_or(5432),
                given(env.rdb_name, "comfyui")
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
        set(
            &mut s.storage.presign_expiry_secs,
            env.comfyd_presign_expiry_secs,
        );
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
        // Request limits ([limits]).
        set(&mut s.limits.in_flight_bytes, env.comfyd_in_flight_bytes);
        set(
            &mut s.limits.in_flight_wait_ms,
            env.comfyd_in_flight_wait_ms,
        );
        set(&mut s.limits.max_image_side, env.comfyd_max_image_side);
        set(&mut s.limits.max_image_pixels, env.comfyd_max_image_pixels);
    }
}

/// Percent-encodes a URL user-info part.
fn pct(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

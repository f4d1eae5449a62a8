//! The settings' unit tests: files, environment names, validation.

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
fn host_port_endpoints_mean_http_and_urls_are_kept() {
    let env = EnvOverrides {
        comfyui_endpoints: Some(
            "localhost:8188,localhost:8189, 10.0.0.2:8190 ,https://gpu.example:443/comfy/,http://[::1]:8188"
                .into(),
        ),
        ..Default::default()
    };
    let s = Settings::from_parts(None, env).expect("valid");
    assert_eq!(
        s.comfyui.endpoints,
        vec![
            "http://localhost:8188",
            "http://localhost:8189",
            "http://10.0.0.2:8190",
            "https://gpu.example:443/comfy/",
            "http://[::1]:8188",
        ]
    );
    for bad in ["ftp://x:21", "localhost:notaport", "http://"] {
        let env = EnvOverrides {
            comfyui_endpoints: Some(bad.into()),
            ..Default::default()
        };
        let err = format!("{:#}", Settings::from_parts(None, env).expect_err(bad));
        assert!(
            err.contains("COMFYUI_ENDPOINTS") && err.contains(bad),
            "{err}"
        );
    }
}

#[test]
fn any_rdb_variable_selects_postgres_with_the_original_defaults() {
    let env = EnvOverrides {
        rdb_password: Some("123456".into()),
        ..Default::default()
    };
    let s = Settings::from_parts(None, env).expect("valid");
    assert_eq!(
        s.database_url(),
        "postgres://root:123456@localhost:5432/comfyui"
    );
    let env = EnvOverrides {
        rdb_name: Some("comfy".into()),
        rdb_port: Some(6543),
        rdb_host: Some("".into()),
        ..Default::default()
    };
    let s = Settings::from_parts(None, env).expect("valid");
    // No password unless one is given.
    assert_eq!(s.database_url(), "postgres://root@localhost:6543/comfy");
    // DATABASE_URL is more specific and wins.
    let env = EnvOverrides {
        rdb_host: Some("db".into()),
        database_url: Some("sqlite://x.db?mode=rwc".into()),
        ..Default::default()
    };
    let s = Settings::from_parts(None, env).expect("valid");
    assert_eq!(s.database_url(), "sqlite://x.db?mode=rwc");
    // None at all: SQLite in the data folder.
    let s = Settings::from_parts(None, EnvOverrides::default()).expect("valid");
    assert!(s.database_url().starts_with("sqlite://"));
}

#[test]
fn the_original_env_file_gives_the_original_settings() {
    let text = include_str!("../tests/fixtures/original.env");
    let vars: std::collections::HashMap<String, String> =
        crate::dotenv::resolve(&crate::dotenv::parse(text).expect("parses"), |_| None)
            .into_iter()
            .collect();
    let env: EnvOverrides = envy::from_iter(vars).expect("every value has its type");
    let s = Settings::from_parts(None, env).expect("valid");
    assert_eq!(
        s.comfyui.endpoints,
        vec![
            "http://localhost:8188",
            "http://localhost:8189",
            "http://localhost:8190"
        ]
    );
    assert_eq!(s.storage.s3_access_key_id, "access_key_id");
    assert_eq!(s.storage.s3_secret_access_key, "secret_access_key");
    assert_eq!(s.storage.s3_bucket, "comfyui-server");
    assert_eq!(s.storage.s3_region, "us-west-1");
    assert_eq!(
        s.database_url(),
        "postgres://root:123456@localhost:5432/comfy"
    );
    assert_eq!(s.fallback_dir(), PathBuf::from("../tmp/failed_images"));
    assert_eq!(s.server.port, 8000);
    assert_eq!(s.server.route_prefix, "/api/v1");
}

#[test]
fn a_budget_too_small_for_the_largest_body_is_refused() {
    let env = EnvOverrides {
        comfyd_max_body_bytes: Some(64 << 20),
        comfyd_in_flight_bytes: Some(100 << 20),
        ..Default::default()
    };
    let err = format!(
        "{:#}",
        Settings::from_parts(None, env).expect_err("must fail")
    );
    assert!(err.contains("COMFYD_IN_FLIGHT_BYTES"), "{err}");
    let s = Settings::load_file(None).expect("defaults");
    assert!(s.limits.in_flight_bytes >= 2 * s.server.max_body_bytes as u64);
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

#[test]
fn the_presigned_url_lifetime_defaults_to_an_hour_and_is_range_checked() {
    let s = Settings::load_file(None).expect("valid");
    assert_eq!(s.storage.presign_expiry_secs, 3600);
    for (value, ok) in [(0, false), (1, true), (604_800, true), (604_801, false)] {
        let env = EnvOverrides {
            comfyd_presign_expiry_secs: Some(value),
            ..Default::default()
        };
        match Settings::from_parts(None, env) {
            Ok(s) => {
                assert!(ok, "{value} accepted");
                assert_eq!(s.storage.presign_expiry_secs, value);
            }
            Err(e) => {
                assert!(!ok, "{value} refused: {e:#}");
                assert!(
                    format!("{e:#}").contains("COMFYD_PRESIGN_EXPIRY_SECS"),
                    "{e:#}"
                );
            }
        }
    }
}

//! The output store's unit tests.

use super::*;

#[test]
fn validate_key_accepts_plain_relative_paths() {
    for key in [
        "a.png",
        "jobs/123/0.png",
        "x/y/z-1_2.webp",
        "..hidden/ok..png",
    ] {
        assert!(validate_key(key).is_ok(), "{key} should be accepted");
    }
}

#[test]
fn validate_key_refuses_escapes_and_odd_paths() {
    for key in [
        "",
        "/etc/passwd",
        "../x.png",
        "a/../../x.png",
        "a/..",
        "./a.png",
        "a//b.png",
        "a/",
        "a\\b.png",
        "a\0b",
    ] {
        assert!(
            matches!(validate_key(key), Err(BlobError::InvalidKey(_))),
            "{key:?} should be refused"
        );
    }
    assert!(validate_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
}

#[test]
fn full_key_joins_prefix_with_one_slash() {
    assert_eq!(full_key("", "a/b.png"), "a/b.png");
    assert_eq!(full_key("out", "a/b.png"), "out/a/b.png");
}

fn s3_settings(prefix: &str) -> S3Settings {
    S3Settings {
        bucket: "outputs".into(),
        region: default_region(),
        endpoint_url: Some("http://127.0.0.1:1".into()),
        force_path_style: true,
        access_key_id: Some("AKID".into()),
        secret_access_key: Some("super-secret".into()),
        key_prefix: prefix.into(),
    }
}

#[test]
fn s3_settings_debug_redacts_the_secret() {
    let shown = format!("{:?}", s3_settings(""));
    assert!(!shown.contains("super-secret"), "{shown}");
    assert!(shown.contains("[redacted]"));
    assert!(shown.contains("AKID"));
}

#[test]
fn s3_settings_deserialize_with_defaults() {
    let settings: S3Settings = serde_json::from_str(r#"{"bucket":"b"}"#).expect("valid");
    assert_eq!(settings.region, "us-east-1");
    assert_eq!(settings.key_prefix, "");
    assert!(!settings.force_path_style);
    assert!(settings.endpoint_url.is_none());
    assert!(serde_json::from_str::<S3Settings>(r#"{"bucket":"b","buckte":"c"}"#).is_err());
}

#[actix_rt::test]
async fn describe_and_kind_name_the_destination() {
    let store = BlobStore::s3(&s3_settings("/comfyd/out/")).expect("S3 thread starts");
    assert_eq!(store.describe(), "s3://outputs/comfyd/out");
    assert_eq!(store.kind(), "s3");
    assert_eq!(
        BlobStore::s3(&s3_settings(""))
            .expect("S3 thread starts")
            .describe(),
        "s3://outputs"
    );
    let local = BlobStore::local(PathBuf::from("/var/lib/comfyd"));
    assert_eq!(local.describe(), "file:///var/lib/comfyd");
    assert_eq!(local.kind(), "local");
}

#[actix_rt::test]
async fn local_put_writes_creates_folders_and_overwrites() {
    // Arrange
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::local(dir.path().join("outputs"));

    // Act
    store
        .put("jobs/1/0.png", Bytes::from_static(b"first"), "image/png")
        .await
        .expect("first put");
    store
        .put("jobs/1/0.png", Bytes::from_static(b"second"), "image/png")
        .await
        .expect("second put");

    // Assert
    let path = dir.path().join("outputs/jobs/1/0.png");
    assert_eq!(std::fs::read(&path).expect("read"), b"second");
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");
}

#[actix_rt::test]
async fn local_put_refuses_escaping_keys_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("outputs");
    let store = BlobStore::local(root.clone());
    let err = store
        .put("../escape.png", Bytes::from_static(b"x"), "image/png")
        .await
        .expect_err("must refuse");
    assert!(matches!(err, BlobError::InvalidKey(_)));
    assert!(!err.is_transient());
    assert!(!dir.path().join("escape.png").exists());
    assert!(!root.exists());
}

#[actix_rt::test]
async fn local_put_refuses_a_key_through_a_symlink_out_of_the_folder() {
    // Arrange: a valid key whose first folder is a symlink to somewhere else.
    let outside = tempfile::tempdir().expect("outside");
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("task")).expect("symlink");
    let store = BlobStore::local(dir.path().to_path_buf());

    // Act
    let err = store
        .put("task/x.png", Bytes::from_static(b"x"), "image/png")
        .await
        .expect_err("must refuse");

    // Assert
    assert!(matches!(err, BlobError::Escapes(_)), "{err}");
    assert!(!err.is_transient());
    assert_eq!(std::fs::read_dir(outside.path()).expect("dir").count(), 0);
}

#[actix_rt::test]
async fn local_check_passes_on_a_writable_folder_and_fails_on_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::local(dir.path().join("new/folder"));
    store.check().await.expect("writable folder");
    assert_eq!(
        std::fs::read_dir(dir.path().join("new/folder"))
            .expect("created")
            .count(),
        0,
        "the probe file must be removed"
    );

    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let err = BlobStore::local(file)
        .check()
        .await
        .expect_err("a file is not a folder");
    assert!(matches!(err, BlobError::Io { .. }), "{err}");
}

#[actix_rt::test]
async fn s3_put_to_a_closed_port_is_a_transient_error() {
    // Port 1 on loopback refuses connections: the SDK retries, then reports a dispatch failure.
    let store = BlobStore::s3(&s3_settings("")).expect("S3 thread starts");
    let err = store
        .put("a.png", Bytes::from_static(b"x"), "image/png")
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        matches!(
            err,
            BlobError::S3 {
                operation: "PutObject",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn the_local_store_presigns_nothing_and_finds_files_only_under_its_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::local(dir.path().to_path_buf());
    let expiry = std::time::Duration::from_secs(60);
    assert_eq!(
        store.presigned_get("t/0.png", expiry).await.expect("ok"),
        None
    );
    let path = store
        .local_path("t/0.png")
        .expect("local")
        .expect("plain key");
    assert_eq!(path, dir.path().join("t/0.png"));
    assert!(store.local_path("../escape.png").expect("local").is_err());
}

#[tokio::test]
async fn an_s3_store_presigns_a_get_of_the_prefixed_key_without_the_network() {
    // A closed port: presigning is local work and must not need the server.
    let store = BlobStore::s3(&s3_settings("pre/")).expect("store");
    let expiry = std::time::Duration::from_secs(300);
    let url = store
        .presigned_get("t/0.png", expiry)
        .await
        .expect("presigned")
        .expect("a URL");
    assert!(url.contains("/pre/t/0.png?"), "{url}");
    assert!(url.contains("X-Amz-Expires=360"), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    // Within the same minute, the same URL (unless the minute just turned).
    let again = store.presigned_get("t/0.png", expiry).await.expect("ok");
    let third = store.presigned_get("t/0.png", expiry).await.expect("ok");
    assert!(again.as_deref() == Some(url.as_str()) || again == third);
    assert!(store.local_path("t/0.png").is_none());
    assert!(store.presigned_get("../x", expiry).await.is_err());
}

//! `BlobStore` against a real S3-compatible server (`s3s-fs`, see `support::s3`), and a local folder.

use bytes::Bytes;
use comfyd::blob::{BlobError, BlobStore};

use crate::support::s3::S3Server;

const BUCKET: &str = "outputs";

#[actix_web::test]
async fn s3_put_stores_bytes_and_content_type_under_the_prefix() {
    // Arrange
    let server = S3Server::start().await;
    server.create_bucket(BUCKET).await;
    let mut settings = server.settings(BUCKET);
    settings.key_prefix = "/comfyd/out/".to_owned();
    let store = BlobStore::s3(&settings).expect("S3 thread starts");

    // Act
    store
        .put("jobs/1/0.png", Bytes::from_static(b"first"), "image/png")
        .await
        .expect("first put");
    store
        .put("jobs/1/1.webp", Bytes::from_static(b"webp"), "image/webp")
        .await
        .expect("second put");
    // The same key again overwrites (post-processing retries rely on it).
    store
        .put("jobs/1/0.png", Bytes::from_static(b"again"), "image/png")
        .await
        .expect("idempotent put");

    // Assert
    assert_eq!(
        server.list_keys(BUCKET).await,
        vec!["comfyd/out/jobs/1/0.png", "comfyd/out/jobs/1/1.webp"]
    );
    let (bytes, content_type) = server.get(BUCKET, "comfyd/out/jobs/1/0.png").await;
    assert_eq!(&bytes[..], b"again");
    assert_eq!(content_type, "image/png");
    let (_, content_type) = server.get(BUCKET, "comfyd/out/jobs/1/1.webp").await;
    assert_eq!(content_type, "image/webp");
    assert_eq!(store.describe(), "s3://outputs/comfyd/out");
}

#[actix_web::test]
async fn delete_removes_one_key_and_a_missing_key_is_no_error() {
    // Arrange: the same two objects in S3 (under a prefix) and in a local folder.
    let server = S3Server::start().await;
    server.create_bucket(BUCKET).await;
    let mut settings = server.settings(BUCKET);
    settings.key_prefix = "out".to_owned();
    let s3 = BlobStore::s3(&settings).expect("S3 thread starts");
    let dir = tempfile::tempdir().expect("local root");
    let local = BlobStore::local(dir.path().to_path_buf());
    for store in [&s3, &local] {
        for key in ["t/0.png", "t/1.png"] {
            store
                .put(key, Bytes::from_static(b"x"), "image/png")
                .await
                .expect("put");
        }
    }

    // Act
    for store in [&s3, &local] {
        store.delete("t/0.png").await.expect("delete");
        store.delete("t/0.png").await.expect("delete again");
        store
            .delete("never/was.png")
            .await
            .expect("delete a missing key");
    }

    // Assert
    assert_eq!(server.list_keys(BUCKET).await, vec!["out/t/1.png"]);
    assert!(!dir.path().join("t/0.png").exists());
    assert!(dir.path().join("t/1.png").exists());
    assert!(matches!(
        local.delete("../outside").await,
        Err(BlobError::InvalidKey(_))
    ));
}

#[actix_web::test]
async fn s3_put_fails_transiently_while_the_server_is_down_and_works_after_restart() {
    // Arrange
    let mut server = S3Server::start().await;
    server.create_bucket(BUCKET).await;
    let store = BlobStore::s3(&server.settings(BUCKET)).expect("S3 thread starts");
    store.check().await.expect("healthy before the outage");

    // Act: outage
    server.stop();
    let put = store
        .put("a.png", Bytes::from_static(b"x"), "image/png")
        .await;
    let check = store.check().await;

    // Assert
    let err = put.expect_err("nothing listens while stopped");
    assert!(err.is_transient(), "{err}");
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
    assert!(check.expect_err("check sees the outage").is_transient());

    // Act: recovery, same client
    server.restart().await;
    store
        .put("a.png", Bytes::from_static(b"x"), "image/png")
        .await
        .expect("put after restart");
    assert_eq!(server.list_keys(BUCKET).await, vec!["a.png"]);
}

#[actix_web::test]
async fn s3_wrong_secret_or_missing_bucket_is_a_permanent_error() {
    let server = S3Server::start().await;
    server.create_bucket(BUCKET).await;

    let mut wrong = server.settings(BUCKET);
    wrong.secret_access_key = Some("not-the-secret".to_owned());
    let err = BlobStore::s3(&wrong)
        .expect("S3 thread starts")
        .put("a.png", Bytes::from_static(b"x"), "image/png")
        .await
        .expect_err("the server checks signatures");
    assert!(!err.is_transient(), "{err}");
    assert!(
        matches!(
            err,
            BlobError::S3 {
                status: Some(403),
                ..
            }
        ),
        "{err}"
    );

    let err = BlobStore::s3(&server.settings("no-such-bucket"))
        .expect("S3 thread starts")
        .check()
        .await
        .expect_err("missing bucket");
    assert!(!err.is_transient(), "{err}");
    assert!(server.list_keys(BUCKET).await.is_empty());
}

#[actix_web::test]
async fn s3_store_built_on_one_thread_works_from_another_arbiter() {
    // comfyd builds the BlobStore on the System thread and uses it from actors and actix-web
    // workers on other threads, each with its own current-thread runtime. Here the first call
    // comes from an arbiter whose runtime is then shut down: the connection it used lives on the
    // store's own thread, so the next caller, on another runtime, is served as well.
    let server = S3Server::start().await;
    server.create_bucket(BUCKET).await;
    let store = BlobStore::s3(&server.settings(BUCKET)).expect("S3 thread starts");

    let arbiter = actix_rt::Arbiter::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let moved = store.clone();
    assert!(arbiter.spawn(async move {
        let result = moved
            .put("other-thread.png", Bytes::from_static(b"y"), "image/png")
            .await;
        let _ = tx.send(result.map_err(|e| e.to_string()));
    }));
    rx.await
        .expect("the arbiter answered")
        .expect("put from another arbiter");
    arbiter.stop();
    arbiter.join().expect("arbiter thread ended");

    store
        .put("same-thread.png", Bytes::from_static(b"z"), "image/png")
        .await
        .expect("and again on the first thread");
    assert_eq!(
        server.list_keys(BUCKET).await,
        vec!["other-thread.png", "same-thread.png"]
    );
}

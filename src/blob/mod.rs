//! Where outputs go: an S3-compatible bucket or a local folder.
//!
//! [`BlobStore`] is the one place that writes output bytes; the `Uploader` (in `postprocess`) calls
//! [`BlobStore::put`] for every output image and `/healthz` calls [`BlobStore::check`]. The task routes
//! ask it where a stored output can be read: [`BlobStore::presigned_get`] (S3) or
//! [`BlobStore::local_path`] (local); [`urls::OutputUrls`] turns that into the records' `url`s. Writes are idempotent
//! (same key, same result), so post-processing can retry them freely.
//!
//! The S3 client is built without the SDK's default features (one TLS library: rustls with ring),
//! so the HTTP client is set explicitly here. Every S3 call runs on a thread of the store's own
//! ([`S3Thread`]), whatever runtime awaits it: the SDK costs 0.2 to 0.6 ms of CPU per PutObject
//! (signing, its orchestrator, the HTTP exchange), and on the actors' thread that time would hold up
//! the Recorder, which commits every submit. The SDK's connection tasks live on that thread too, so
//! a `BlobStore` works from any runtime, short-lived ones included.

#[cfg(test)]
mod tests;
pub mod urls;

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use bytes::Bytes;
use serde::Deserialize;

pub use urls::OutputUrls;

/// Time allowed to open a TCP (and TLS) connection to the S3 endpoint.
const S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one S3 operation, retries included.
const S3_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts per S3 operation (the first one included), with the SDK's standard backoff.
const S3_MAX_ATTEMPTS: u32 = 3;
/// Presigned URLs made within one such window are the same (see [`BlobStore::presigned_get`]).
const PRESIGN_WINDOW: Duration = Duration::from_secs(60);
/// The longest a presigned URL may last (SigV4's limit).
const MAX_PRESIGN_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
/// S3 refuses longer keys; refusing them here gives a clearer error.
const MAX_KEY_LEN: usize = 1024;

/// S3 settings, set by operators in the `[s3]` section of the config (see the README).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Bucket that receives the outputs; it must exist.
    pub bucket: String,
    /// Region used for signing; most S3-compatible servers accept the default.
    #[serde(default = "default_region")]
    pub region: String,
    /// Endpoint of an S3-compatible server (`http://127.0.0.1:9000`); unset means AWS S3.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    #[serde(default)]
    pub force_path_style: bool,
    /// Static access key; unset means the `AWS_ACCESS_KEY_ID` environment variable.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Static secret key; unset means the `AWS_SECRET_ACCESS_KEY` environment variable.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Prefix put before every key (`comfyd/outputs`); slashes at either end do not matter.
    #[serde(default)]
    pub key_prefix: String,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("force_path_style", &self.force_path_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "[redacted]"),
            )
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl S3Settings {
    /// Builds an S3 client from these settings. No network traffic happens until the first call.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http_client)
            .region(Region::new(self.region.clone()))
            .force_path_style(self.force_path_style)
            // Many S3-compatible servers reject the SDK's default streamed checksum uploads
            // over plain http; checksums only when an operation requires them works everywhere.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(S3_CONNECT_TIMEOUT)
                    .operation_timeout(S3_OPERATION_TIMEOUT)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(S3_MAX_ATTEMPTS))
            // The operation timeout already bounds an upload the server stops reading; the SDK's
            // throughput monitor on top costs timers on every call.
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
        if let Some(endpoint) = &self.endpoint_url {
            builder = builder.endpoint_url(endpoint);
        }
        match self.credentials() {
            Some(credentials) => builder = builder.credentials_provider(credentials),
            None => tracing::warn!(
                "No S3 credentials in the settings or in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; \
                 S3 calls will fail"
            ),
        }
        aws_sdk_s3::Client::from_conf(builder.build())
    }

    /// Static credentials from the settings, else from the usual environment variables.
    fn credentials(&self) -> Option<Credentials> {
        if let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
            return Some(Credentials::new(id, secret, None, None, "comfyd-settings"));
        }
        let id = std::env::var("AWS_ACCESS_KEY_ID").ok()?;
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok()?;
        let token = std::env::var("AWS_SESSION_TOKEN").ok();
        Some(Credentials::new(
            id,
            secret,
            token,
            None,
            "comfyd-environment",
        ))
    }
}

/// Where outputs are written.
#[derive(Clone, Debug)]
pub enum BlobStore {
    /// A folder on this machine; keys become relative paths under `root`.
    Local {
        /// Folder that holds every output.
        root: PathBuf,
    },
    /// An S3-compatible bucket.
    S3 {
        /// Client configured from [`S3Settings`].
        client: aws_sdk_s3::Client,
        /// Where the client's calls run.
        thread: S3Thread,
        /// Bucket that receives the outputs.
        bucket: String,
        /// Normalised prefix (no slash at either end), empty for none.
        key_prefix: String,
    },
}

/// A failed storage operation.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The key is empty, too long, absolute, or has `.`/`..`/empty segments.
    #[error("invalid storage key: {0}")]
    InvalidKey(&'static str),
    /// The key would lead out of the local folder on disk (a symlink under it).
    #[error("{0}")]
    Escapes(#[from] crate::paths::PathError),
    /// The local filesystem refused a read or write.
    #[error("local storage at {path}: {source}")]
    Io {
        /// File or folder that was being written.
        path: PathBuf,
        /// What the filesystem said.
        #[source]
        source: io::Error,
    },
    /// An S3 call failed (after the SDK's own retries).
    #[error("S3 {operation} failed: {message}")]
    S3 {
        /// S3 operation name (`PutObject`, `HeadBucket`).
        operation: &'static str,
        /// Readable cause: the service's code and message, or the transport error chain.
        message: String,
        /// HTTP status when the server answered.
        status: Option<u16>,
        /// Whether trying again later may succeed (network trouble, 5xx, throttling).
        transient: bool,
    },
}

impl BlobError {
    /// Whether retrying the same operation later may succeed (an outage rather than a bad
    /// request, bad credentials or a missing bucket).
    pub fn is_transient(&self) -> bool {
        match self {
            BlobError::InvalidKey(_) | BlobError::Escapes(_) => false,
            BlobError::Io { source, .. } => !matches!(
                source.kind(),
                io::ErrorKind::PermissionDenied
                    | io::ErrorKind::InvalidInput
                    | io::ErrorKind::ReadOnlyFilesystem
                    | io::ErrorKind::NotADirectory
                    | io::ErrorKind::IsADirectory
            ),
            BlobError::S3 { transient, .. } => *transient,
        }
    }

    fn io(path: &Path, source: io::Error) -> BlobError {
        BlobError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn s3<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> BlobError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let (message, transient) = match &err {
            SdkError::ServiceError(service) => {
                let inner = service.err();
                let code = inner.code().unwrap_or("Unknown");
                let message = match inner.message() {
                    Some(message) => format!("{code}: {message}"),
                    None => code.to_owned(),
                };
                let transient = matches!(status, Some(408 | 429 | 500..=599))
                    || matches!(code, "SlowDown" | "RequestTimeout" | "InternalError");
                (message, transient)
            }
            SdkError::DispatchFailure(dispatch) => {
                // A "user" connector error is a local misconfiguration (bad URL, TLS setup).
                let transient = !dispatch.is_user();
                (DisplayErrorContext(&err).to_string(), transient)
            }
            SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
                (DisplayErrorContext(&err).to_string(), true)
            }
            // Construction failures (missing credentials, invalid input) do not heal by retrying.
            _ => (DisplayErrorContext(&err).to_string(), false),
        };
        let message = match status {
            Some(status) => format!("{message} (HTTP {status})"),
            None => message,
        };
        BlobError::S3 {
            operation,
            message,
            status,
            transient,
        }
    }
}

impl BlobStore {
    /// A store that writes under `root` (created on first write).
    pub fn local(root: PathBuf) -> BlobStore {
        BlobStore::Local { root }
    }

    /// A store that writes to the bucket in `settings`. Builds the client and starts its thread;
    /// no network yet.
    pub fn s3(settings: &S3Settings) -> io::Result<BlobStore> {
        Ok(BlobStore::S3 {
            client: settings.client(),
            thread: S3Thread::start()?,
            bucket: settings.bucket.clone(),
            key_prefix: settings.key_prefix.trim_matches('/').to_owned(),
        })
    }

    /// Stores `bytes` under `key` (prefix applied). Idempotent: the same key again overwrites.
    ///
    /// Keys are relative, `/`-separated paths such as `jobs/<id>/0.png`.
    pub async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        match self {
            BlobStore::Local { root } => put_local(root, key, bytes).await,
            BlobStore::S3 {
                client,
                thread,
                bucket,
                key_prefix,
            } => {
                let request = client
                    .put_object()
                    .bucket(bucket)
                    .key(full_key(key_prefix, key))
                    .content_type(content_type)
                    // Content-Length comes from the in-memory body.
                    .body(ByteStream::from(bytes));
                thread.call("PutObject", request.send()).await?;
                Ok(())
            }
        }
    }

    /// Removes what is stored under `key` (prefix applied); nothing there is no error. For outputs
    /// that no task record refers to (see `Uploader`).
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        match self {
            BlobStore::Local { root } => {
                let path = crate::paths::join_under(root, key)?;
                match tokio::fs::remove_file(&path).await {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(BlobError::io(&path, e)),
                    _ => Ok(()),
                }
            }
            BlobStore::S3 {
                client,
                thread,
                bucket,
                key_prefix,
            } => {
                // S3 answers a delete of a missing key with success too.
                let request = client
                    .delete_object()
                    .bucket(bucket)
                    .key(full_key(key_prefix, key));
                thread.call("DeleteObject", request.send()).await?;
                Ok(())
            }
        }
    }

    /// Checks that the store can take writes now: the bucket answers `HeadBucket`, or the folder
    /// exists (or can be created) and a probe file can be written. For `/healthz`-style checks.
    pub async fn check(&self) -> Result<(), BlobError> {
        match self {
            BlobStore::Local { root } => {
                tokio::fs::create_dir_all(root)
                    .await
                    .map_err(|e| BlobError::io(root, e))?;
                let probe = root.join(format!(".comfyd-check-{}", uuid::Uuid::new_v4()));
                tokio::fs::write(&probe, b"ok")
                    .await
                    .map_err(|e| BlobError::io(&probe, e))?;
                tokio::fs::remove_file(&probe)
                    .await
                    .map_err(|e| BlobError::io(&probe, e))
            }
            BlobStore::S3 {
                client,
                thread,
                bucket,
                ..
            } => {
                let request = client.head_bucket().bucket(bucket);
                thread.call("HeadBucket", request.send()).await?;
                Ok(())
            }
        }
    }

    /// Where outputs go, for logs: `s3://bucket/prefix` or `file:///path`.
    pub fn describe(&self) -> String {
        match self {
            BlobStore::Local { root } => {
                let absolute = std::path::absolute(root).unwrap_or_else(|_| root.clone());
                format!("file://{}", absolute.display())
            }
            BlobStore::S3 {
                bucket, key_prefix, ..
            } if key_prefix.is_empty() => format!("s3://{bucket}"),
            BlobStore::S3 {
                bucket, key_prefix, ..
            } => format!("s3://{bucket}/{key_prefix}"),
        }
    }

    /// A presigned `GetObject` URL for `key` (prefix applied), valid for `expiry`; `None` for the
    /// local store, whose files the API serves itself. Signing is local work: no network.
    pub async fn presigned_get(
        &self,
        key: &str,
        expiry: Duration,
    ) -> Result<Option<String>, BlobError> {
        validate_key(key)?;
        let BlobStore::S3 {
            client,
            thread,
            bucket,
            key_prefix,
        } = self
        else {
            return Ok(None);
        };
        // Signed as of the start of the current minute, and valid that much longer: the URLs made
        // within one minute are the same (a client or cache keeps one image under one URL, and a
        // webhook's record matches the API's), and each lasts at least `expiry` from now.
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let window_start = secs - secs % PRESIGN_WINDOW.as_secs();
        let config = PresigningConfig::builder()
            .start_time(std::time::UNIX_EPOCH + Duration::from_secs(window_start))
            .expires_in((expiry + PRESIGN_WINDOW).min(MAX_PRESIGN_EXPIRY))
            .build()
            .map_err(|e| BlobError::S3 {
                operation: "PresignGetObject",
                message: e.to_string(),
                status: None,
                transient: false,
            })?;
        let request = client
            .get_object()
            .bucket(bucket)
            .key(full_key(key_prefix, key))
            .presigned(config);
        let presigned = thread.call("PresignGetObject", request).await?;
        Ok(Some(presigned.uri().to_owned()))
    }

    /// The file that holds `key` in the local store (checked to stay under its folder); `None` for
    /// S3. Blocking: it asks the filesystem.
    pub fn local_path(&self, key: &str) -> Option<Result<PathBuf, BlobError>> {
        let BlobStore::Local { root } = self else {
            return None;
        };
        Some(
            validate_key(key)
                .and_then(|()| crate::paths::join_under(root, key).map_err(BlobError::from)),
        )
    }

    /// `"s3"` or `"local"`, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            BlobStore::Local { .. } => "local",
            BlobStore::S3 { .. } => "s3",
        }
    }
}

/// The thread the S3 client's calls run on: a current-thread tokio runtime of its own. It stops
/// when the last clone of its [`BlobStore`] is dropped; a call under way then ends with an error.
#[derive(Clone, Debug)]
pub struct S3Thread {
    runtime: tokio::runtime::Handle,
    /// Dropping the last clone ends the thread (its runtime is dropped there, never in an async
    /// context, where tokio refuses to drop one).
    _stop: Arc<tokio::sync::oneshot::Sender<()>>,
}

impl S3Thread {
    fn start() -> io::Result<S3Thread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("comfyd-s3".into())
            .spawn(move || {
                // Tasks spawned through the handle run while this `block_on` does.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(S3Thread {
            runtime: handle,
            _stop: Arc::new(stop),
        })
    }

    /// Runs an S3 SDK call on the S3 thread and answers its outcome here, its error named after
    /// `operation`. A caller that stops waiting does not stop the call, which is harmless: every S3
    /// write here is idempotent.
    async fn call<F, T, E>(&self, operation: &'static str, call: F) -> Result<T, BlobError>
    where
        F: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>> + Send + 'static,
        T: Send + 'static,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let outcome = self.runtime.spawn(call).await.map_err(|e| BlobError::S3 {
            operation,
            message: format!("the call did not complete on the S3 thread: {e}"),
            status: None,
            transient: true,
        })?;
        outcome.map_err(|e| BlobError::s3(operation, e))
    }
}

/// The object key under a normalised prefix.
fn full_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}/{key}")
    }
}

/// Refuses keys that could escape the root folder or that S3 and a folder would treat differently.
fn validate_key(key: &str) -> Result<(), BlobError> {
    if key.is_empty() {
        return Err(BlobError::InvalidKey("empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(BlobError::InvalidKey("longer than 1024 bytes"));
    }
    if key.contains('\0') || key.contains('\\') {
        return Err(BlobError::InvalidKey("contains NUL or a backslash"));
    }
    if key.starts_with('/') || Path::new(key).is_absolute() {
        return Err(BlobError::InvalidKey("absolute path"));
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err(BlobError::InvalidKey("empty path segment")),
            "." | ".." => return Err(BlobError::InvalidKey("`.` or `..` segment")),
            _ => {}
        }
    }
    // Belt and braces: whatever the platform's path rules, only plain names may remain.
    if !Path::new(key)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(BlobError::InvalidKey("not a plain relative path"));
    }
    Ok(())
}

/// Writes `root/key` atomically: a temporary file beside the target, synced, then renamed over it.
async fn put_local(root: &Path, key: &str, bytes: Bytes) -> Result<(), BlobError> {
    // One blocking task for the whole write: each tokio::fs call is a thread hand-off of its own.
    let (root_dir, key) = (root.to_path_buf(), key.to_owned());
    tokio::task::spawn_blocking(move || {
        let path = crate::paths::join_under(&root_dir, &key)?;
        put_local_blocking(&path, &bytes)
    })
    .await
    .map_err(|e| BlobError::io(root, io::Error::other(e)))?
}

fn put_local_blocking(path: &Path, bytes: &[u8]) -> Result<(), BlobError> {
    // validate_key guarantees at least one normal component, so there is a parent and a name.
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(BlobError::InvalidKey("not a plain relative path"));
    };
    std::fs::create_dir_all(dir).map_err(|e| BlobError::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    let renamed = write_synced(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| BlobError::io(path, e)));
    if renamed.is_err() {
        // Best effort: the temporary file may not exist, and the original error matters more.
        let _ = std::fs::remove_file(&tmp);
    }
    renamed
}

/// Writes and syncs a file, so that what the rename publishes is complete even after a power loss.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BlobError> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path).map_err(|e| BlobError::io(path, e))?;
    file.write_all(bytes).map_err(|e| BlobError::io(path, e))?;
    file.sync_all().map_err(|e| BlobError::io(path, e))
}

//! `S3Store`: one bucket on an S3-compatible server, through aws-sdk-s3 (object data through
//! [`wire`], its lean signed requests).

mod pages;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{BucketVersioningStatus, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::body::ChannelBody;
use super::{
    unquote, BodyChunks, ErrorCode, ErrorKind, Head, Listed, ObjectBody, ObjectHead, ObjectMeta,
    StorageError, Written,
};
use crate::config::{ChecksumCalculation, LocationConfig};
pub use pages::S3Pages;
use wire::Wire;

/// A connection that cannot be made in this long is down; retry later rather than hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A response that stalls this long mid-transfer is treated as a transient failure.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The slowest rate (bytes per second) a streamed single-request upload is given time for.
const MIN_STREAM_RATE: u64 = 1 << 20;
/// Listing page size (S3's maximum).
const LIST_PAGE: i32 = 1000;

/// One bucket of one location. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct S3Store {
    /// The location's name in the configuration, for errors and logs.
    pub name: String,
    pub bucket: String,
    client: Client,
    /// GetObject and PutObject without the SDK's orchestrator, where the endpoint allows.
    wire: Option<Arc<Wire>>,
}

impl S3Store {
    /// Builds the client for `location`; makes no request.
    pub async fn connect(location: &LocationConfig) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(location.region.clone()));
        if let Some(keys) = &location.credentials {
            loader = loader.credentials_provider(Credentials::new(
                keys.access_key_id.clone(),
                keys.secret_access_key.clone(),
                None,
                None,
                "ferry-config",
            ));
        }
        let shared = loader.load().await;
        let (request, response) = match location.checksum_calculation {
            ChecksumCalculation::WhenRequired => (
                RequestChecksumCalculation::WhenRequired,
                ResponseChecksumValidation::WhenRequired,
            ),
            ChecksumCalculation::WhenSupported => (
                RequestChecksumCalculation::WhenSupported,
                ResponseChecksumValidation::WhenSupported,
            ),
        };
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(location.path_style)
            .request_checksum_calculation(request)
            .response_checksum_validation(response)
            // ferry retries with its own backoff and knows which failures are worth it.
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            );
        if let Some(endpoint) = &location.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let wire = Self::wire(location, &shared).await;
        Self {
            name: location.name.clone(),
            bucket: location.bucket.clone(),
            client: Client::from_conf(builder.build()),
            wire,
        }
    }

    /// The direct path for object data, with the endpoint the SDK client would use: the
    /// location's, else `AWS_ENDPOINT_URL_S3` or the profile's (as the SDK loads them), else
    /// AWS's for the region. `None` (logged) where only the SDK can make the requests.
    async fn wire(location: &LocationConfig, shared: &aws_config::SdkConfig) -> Option<Arc<Wire>> {
        let configured = || {
            let key = aws_types::service_config::ServiceConfigKey::builder()
                .service_id("S3")
                .env("AWS_ENDPOINT_URL")
                .profile("endpoint_url")
                .build()
                .ok()?;
            shared.service_config()?.load_config(key)
        };
        let url = location
            .endpoint
            .clone()
            .or_else(configured)
            .or_else(|| shared.endpoint_url().map(str::to_string));
        let endpoint = wire::Endpoint {
            bucket: &location.bucket,
            region: &location.region,
            url,
            path_style: location.path_style,
            use_fips: shared.use_fips().unwrap_or(false),
            use_dual_stack: shared.use_dual_stack().unwrap_or(false),
        };
        let settings = aws_smithy_runtime_api::client::http::HttpConnectorSettings::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build();
        let direct = location.checksum_calculation == ChecksumCalculation::WhenRequired;
        let wire = match direct {
            true => Wire::new(endpoint, shared.credentials_provider(), &settings).await,
            false => Err("checksum_calculation = \"when_supported\" (the SDK adds them)".into()),
        };
        match wire {
            Ok(wire) => Some(Arc::new(wire)),
            Err(reason) => {
                tracing::info!(
                    location = %location.name,
                    "object data goes through the S3 SDK's full request path: {reason}"
                );
                None
            }
        }
    }

    /// Whether GetObject and PutObject go over the direct path ([`wire`]) rather than the SDK.
    pub fn direct(&self) -> bool {
        self.wire.is_some()
    }

    /// A [`wire`] failure as this store's error.
    fn wire_error(&self, op: &'static str, key: &str, failure: wire::Failure) -> StorageError {
        self.local_error(op, key, failure.kind, failure.message)
            .coded(failure.code)
    }

    fn error<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        op: &'static str,
        key: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StorageError {
        let (kind, message) = classify(&err);
        let code = match &err {
            SdkError::ServiceError(service) => service.err().code().and_then(ErrorCode::parse),
            _ => None,
        };
        StorageError {
            kind,
            op,
            location: self.name.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
            message,
            code,
        }
    }

    /// An error found by ferry itself (not reported by the server) about this store.
    pub fn local_error(
        &self,
        op: &'static str,
        key: &str,
        kind: ErrorKind,
        message: String,
    ) -> StorageError {
        StorageError {
            kind,
            op,
            location: self.name.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
            message,
            code: None,
        }
    }

    /// Checks that the bucket exists and the credentials may use it.
    pub async fn check(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                let mut e = self.error("HeadBucket", "", e);
                if e.kind == ErrorKind::NotFound {
                    e.kind = ErrorKind::Config;
                    e.message = "bucket does not exist".into();
                }
                e
            })
    }

    /// Whether the bucket keeps versions (versioning enabled now or in the past).
    pub async fn is_versioned(&self) -> Result<bool, StorageError> {
        let out = self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| self.error("GetBucketVersioning", "", e))?;
        Ok(matches!(
            out.status(),
            Some(BucketVersioningStatus::Enabled | BucketVersioningStatus::Suspended)
        ))
    }

    /// A listing of `prefix` a page at a time: every version and delete marker when
    /// `versions`, else the current objects.
    pub fn pages(&self, prefix: &str, versions: bool) -> S3Pages {
        S3Pages::new(self.clone(), prefix, versions)
    }

    /// Every version and delete marker under `prefix` (versioned buckets), in listing order.
    pub async fn list_versions(&self, prefix: &str) -> Result<Vec<Listed>, StorageError> {
        self.collect(self.pages(prefix, true)).await
    }

    /// Hands each key that has a version or delete marker to `key`, page by page (a key with
    /// several versions comes once per version).
    pub async fn each_key(&self, mut key: impl FnMut(&str)) -> Result<(), StorageError> {
        let mut pages = self.pages("", true);
        while let Some(page) = pages.next().await? {
            page.iter().for_each(|l| key(&l.key));
        }
        Ok(())
    }

    /// Every current object under `prefix` (unversioned buckets).
    pub async fn list_current(&self, prefix: &str) -> Result<Vec<Listed>, StorageError> {
        self.collect(self.pages(prefix, false)).await
    }

    async fn collect(&self, mut pages: S3Pages) -> Result<Vec<Listed>, StorageError> {
        let mut listed = Vec::new();
        while let Some(page) = pages.next().await? {
            listed.extend(page);
        }
        Ok(listed)
    }

    /// HEAD of `key` (its current version, or `version_id`).
    pub async fn head(&self, key: &str, version_id: Option<&str>) -> Result<Head, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .send()
            .await
        {
            Ok(out) => Ok(Head::Object(ObjectHead {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: out.e_tag().map(unquote),
                version_id: out.version_id().map(str::to_string),
                last_modified_ms: millis(out.last_modified()),
                meta: ObjectMeta {
                    content_type: out.content_type().map(str::to_string),
                    cache_control: out.cache_control().map(str::to_string),
                    content_disposition: out.content_disposition().map(str::to_string),
                    content_encoding: out.content_encoding().map(str::to_string),
                    user: out.metadata().cloned().unwrap_or_default(),
                },
                tag_count: 0,
            })),
            Err(err) => {
                if let Some(raw) = err.raw_response() {
                    let marker = raw.headers().get("x-amz-delete-marker") == Some("true");
                    if marker {
                        return Ok(Head::DeleteMarker {
                            version_id: raw.headers().get("x-amz-version-id").map(str::to_string),
                        });
                    }
                }
                let e = self.error("HeadObject", key, err);
                if e.kind == ErrorKind::NotFound {
                    Ok(Head::Missing)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The size of part 1 of a version that was uploaded in parts (HEAD with partNumber=1),
    /// or `None` if the server does not say.
    pub async fn first_part_size(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Option<u64>, StorageError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .part_number(1)
            .send()
            .await
            .map_err(|e| self.error("HeadObject (part 1)", key, e))?;
        Ok(match (out.parts_count(), out.content_length()) {
            (Some(n), Some(length)) if n > 1 && length > 0 => Some(length as u64),
            _ => None,
        })
    }

    /// Starts reading one version: its head, and a body to read in chunks.
    pub async fn get(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(ObjectHead, ObjectBody), StorageError> {
        if let Some(wire) = &self.wire {
            let (head, stream) = wire
                .get(key, version_id)
                .await
                .map_err(|e| self.wire_error("GetObject", key, e))?;
            let body = S3Body {
                stream,
                store: self.clone(),
                key: key.to_string(),
            };
            return Ok((head, ObjectBody::from(body)));
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.error("GetObject", key, e))?;
        let head = ObjectHead {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: out.e_tag().map(unquote),
            version_id: out.version_id().map(str::to_string),
            last_modified_ms: millis(out.last_modified()),
            meta: ObjectMeta {
                content_type: out.content_type().map(str::to_string),
                cache_control: out.cache_control().map(str::to_string),
                content_disposition: out.content_disposition().map(str::to_string),
                content_encoding: out.content_encoding().map(str::to_string),
                user: out.metadata().cloned().unwrap_or_default(),
            },
            tag_count: out.tag_count().unwrap_or(0).max(0) as u32,
        };
        let body = S3Body {
            stream: out.body,
            store: self.clone(),
            key: key.to_string(),
        };
        Ok((head, ObjectBody::from(body)))
    }

    /// The tags of one version.
    pub async fn tags(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Vec<(String, String)>, StorageError> {
        let out = self
            .client
            .get_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            // Some servers (radosgw) answer an untagged object with 200 and no body at all.
            Err(SdkError::ServiceError(e))
                if e.raw().status().as_u16() == 200 && e.raw().body().bytes() == Some(b"") =>
            {
                return Ok(Vec::new())
            }
            Err(e) => return Err(self.error("GetObjectTagging", key, e)),
        };
        Ok(out
            .tag_set()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect())
    }

    /// Writes a whole object in one request; the server checks `content_md5` (base64).
    /// The payload is not SHA-256-signed: Content-MD5 is a signed header, so the body is
    /// still bound to the signature, without hashing every byte a second time.
    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_md5: &str,
        meta: &ObjectMeta,
        tagging: Option<String>,
    ) -> Result<Written, StorageError> {
        if let Some(wire) = &self.wire {
            return wire
                .put(key, body, content_md5, meta, tagging.as_deref())
                .await
                .map_err(|e| self.wire_error("PutObject", key, e));
        }
        let length = body.len() as u64;
        let body = ByteStream::from(body);
        self.put_object(key, length, Some(content_md5), body, meta, tagging, None)
            .await
    }

    /// Writes a whole object of `length` bytes streamed from `body`, in one request that the
    /// server checks against `content_md5` (payload unsigned, as in [`Self::put`]). The
    /// request may take as long as the body at [`MIN_STREAM_RATE`] bytes per second.
    pub async fn put_stream(
        &self,
        key: &str,
        length: u64,
        content_md5: Option<&str>,
        body: BodyChunks,
        meta: &ObjectMeta,
        tagging: Option<String>,
    ) -> Result<Written, StorageError> {
        let allowed = READ_TIMEOUT.max(Duration::from_secs(length / MIN_STREAM_RATE));
        let body = ByteStream::from_body_1_x(ChannelBody::new(body, length));
        self.put_object(key, length, content_md5, body, meta, tagging, Some(allowed))
            .await
    }

    /// One PutObject, its payload unsigned; `read_timeout` overrides the client's for it.
    #[allow(clippy::too_many_arguments)]
    async fn put_object(
        &self,
        key: &str,
        length: u64,
        content_md5: Option<&str>,
        body: ByteStream,
        meta: &ObjectMeta,
        tagging: Option<String>,
        read_timeout: Option<Duration>,
    ) -> Result<Written, StorageError> {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(length as i64)
            .set_content_md5(content_md5.map(str::to_string))
            .body(body)
            .set_content_type(meta.content_type.clone())
            .set_cache_control(meta.cache_control.clone())
            .set_content_disposition(meta.content_disposition.clone())
            .set_content_encoding(meta.content_encoding.clone())
            .set_metadata(Some(meta.user.clone()))
            .set_tagging(tagging)
            .customize()
            .disable_payload_signing();
        if let Some(read_timeout) = read_timeout {
            request = request.config_override(
                aws_sdk_s3::config::Builder::new().timeout_config(
                    aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                        .connect_timeout(CONNECT_TIMEOUT)
                        .read_timeout(read_timeout)
                        .build(),
                ),
            );
        }
        let out = request
            .send()
            .await
            .map_err(|e| self.error("PutObject", key, e))?;
        Ok(Written {
            version_id: out.version_id().map(str::to_string),
            etag: out.e_tag().map(unquote),
            last_modified_ms: None,
        })
    }

    /// Starts a multipart upload carrying the object's headers, metadata and tags.
    pub async fn create_multipart(
        &self,
        key: &str,
        meta: &ObjectMeta,
        tagging: Option<String>,
    ) -> Result<String, StorageError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_content_type(meta.content_type.clone())
            .set_cache_control(meta.cache_control.clone())
            .set_content_disposition(meta.content_disposition.clone())
            .set_content_encoding(meta.content_encoding.clone())
            .set_metadata(Some(meta.user.clone()))
            .set_tagging(tagging)
            .send()
            .await
            .map_err(|e| self.error("CreateMultipartUpload", key, e))?;
        out.upload_id().map(str::to_string).ok_or_else(|| {
            self.local_error(
                "CreateMultipartUpload",
                key,
                ErrorKind::Transient,
                "response has no upload id".into(),
            )
        })
    }

    /// Uploads one part; the server checks `content_md5` (a signed header, so the payload
    /// itself is not SHA-256-signed, as in [`Self::put`]). Returns the part's ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
        content_md5: &str,
    ) -> Result<String, StorageError> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(body.len() as i64)
            .content_md5(content_md5)
            .body(ByteStream::from(body))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.error("UploadPart", key, e))?;
        out.e_tag().map(unquote).ok_or_else(|| {
            self.local_error(
                "UploadPart",
                key,
                ErrorKind::Transient,
                "response has no ETag".into(),
            )
        })
    }

    /// Completes a multipart upload from `(part number, ETag)` pairs.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<Written, StorageError> {
        let parts = parts
            .iter()
            .map(|(n, etag)| {
                CompletedPart::builder()
                    .part_number(*n)
                    .e_tag(format!("\"{etag}\""))
                    .build()
            })
            .collect();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("CompleteMultipartUpload", key, e))?;
        Ok(Written {
            version_id: out.version_id().map(str::to_string),
            etag: out.e_tag().map(unquote),
            last_modified_ms: None,
        })
    }

    /// Abandons a multipart upload so no orphaned parts stay behind.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.error("AbortMultipartUpload", key, e))
    }

    /// Deletes exactly one version (or, unversioned, the object).
    pub async fn delete_version(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version_id.map(str::to_string))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.error("DeleteObject", key, e))
    }

    /// Deletes `key` without a version: in a versioned bucket this writes a delete marker,
    /// whose version id is returned.
    pub async fn put_delete_marker(&self, key: &str) -> Result<Written, StorageError> {
        let out = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("DeleteObject", key, e))?;
        Ok(Written {
            version_id: out.version_id().map(str::to_string),
            etag: None,
            last_modified_ms: None,
        })
    }

    /// The versions and delete markers of exactly `key`, newest first per kind.
    pub async fn key_versions(&self, key: &str) -> Result<Vec<Listed>, StorageError> {
        let mut all = self.list_versions(key).await?;
        all.retain(|l| l.key == key);
        Ok(all)
    }
}

/// The body of a GET from S3, as the SDK streams it.
pub struct S3Body {
    stream: ByteStream,
    store: S3Store,
    key: String,
}

impl S3Body {
    /// The next chunk, or `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
        match self.stream.next().await {
            None => Ok(None),
            Some(Ok(bytes)) => Ok(Some(bytes)),
            Some(Err(e)) => Err(self.store.local_error(
                "GetObject (body)",
                &self.key,
                ErrorKind::Transient,
                format!("reading the body failed: {e}"),
            )),
        }
    }
}

fn millis(time: Option<&DateTime>) -> i64 {
    time.and_then(|t| t.to_millis().ok()).unwrap_or(0)
}

/// Sorts an SDK failure into an [`ErrorKind`] with a message that says what the server said.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> (ErrorKind, String) {
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            let detail = service.err().message().unwrap_or("");
            let message = if code.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status} {code}: {detail}")
            };
            (kind_for(status, code), message)
        }
        SdkError::TimeoutError(_) => (ErrorKind::Unreachable, "timed out".into()),
        SdkError::DispatchFailure(_) => (
            ErrorKind::Unreachable,
            format!("cannot reach the server: {}", DisplayErrorContext(err)),
        ),
        SdkError::ResponseError(_) => (ErrorKind::Transient, "unreadable response".into()),
        SdkError::ConstructionFailure(_) => (
            ErrorKind::Permanent,
            format!("cannot build the request: {}", DisplayErrorContext(err)),
        ),
        _ => (ErrorKind::Transient, DisplayErrorContext(err).to_string()),
    }
}

/// What an S3 error response (its HTTP status and error code) means for the caller.
fn kind_for(status: u16, code: &str) -> ErrorKind {
    match (status, code) {
        (_, "NoSuchBucket") => ErrorKind::Config,
        (
            _,
            "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AllAccessDisabled",
        ) => ErrorKind::Config,
        (
            _,
            "SlowDown"
            | "RequestTimeout"
            | "BadDigest"
            | "InternalError"
            | "XAmzContentSHA256Mismatch",
        ) => ErrorKind::Transient,
        (404, _) => ErrorKind::NotFound,
        (401 | 403, _) => ErrorKind::Config,
        (408 | 429, _) => ErrorKind::Transient,
        (500.., _) => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

/// Encodes tags as the `x-amz-tagging` header wants them (URL query syntax).
pub fn encode_tagging(tags: &[(String, String)]) -> Option<String> {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    /// RFC 3986 unreserved characters stay as they are.
    const SET: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    if tags.is_empty() {
        return None;
    }
    Some(
        tags.iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    utf8_percent_encode(k, SET),
                    utf8_percent_encode(v, SET)
                )
            })
            .collect::<Vec<_>>()
            .join("&"),
    )
}

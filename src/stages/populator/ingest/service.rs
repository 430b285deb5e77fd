//! The S3 operations the ingest endpoint serves. A write is stored durably in the transient
//! location, then its replication entry is published; only then does the client get 200. If
//! the entry cannot be published the object is removed again and the client gets 503, so
//! nothing sits in the buffer that replication does not know about.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use s3s::dto::{self, StreamingBlob, Timestamp};
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use super::super::{entry_for, wanted, Observed};
use super::body::{content_md5, declared_length, feed, read_body, Body, STREAM_QUEUE};
pub use super::body::{MAX_BODY, MAX_OBJECT};
use super::checksum::Claims;
use super::listing::{Pager, Query};
use crate::bus::{Publisher, Topic};
use crate::config::{LocationConfig, RuleConfig};
use crate::model::{self, EntryKind, ReplicationEntry};
use crate::storage::{
    ErrorCode, ErrorKind, Head, ObjectHead, ObjectMeta, StorageError, Store, Written,
};

/// Counters for logs and tests.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub objects: AtomicU64,
    pub bytes: AtomicU64,
    pub refused: AtomicU64,
}

/// A listing page in S3's terms, for ListObjects and ListObjectsV2.
struct Listing {
    contents: Vec<dto::Object>,
    common: Vec<dto::CommonPrefix>,
    /// Where the next page starts, if this one is truncated.
    next: Option<String>,
    max_keys: i32,
}

/// The endpoint's state: where objects go and how they are enqueued. Cheap to clone: a
/// commit runs on a clone of its own.
#[derive(Clone)]
pub struct Ingest {
    pub store: Store,
    pub location: LocationConfig,
    /// The rules whose source is `location`.
    pub rules: Vec<RuleConfig>,
    pub publisher: Publisher,
    /// The replication topic.
    pub topic: Topic<ReplicationEntry>,
    pub stats: Arc<IngestStats>,
    /// The commits under way ([`Ingest::to_completion`]); shutdown waits for them.
    pub commits: TaskTracker,
    /// Room for request bodies in memory (`ingest.body_memory`), in [`BODY_UNIT`]s.
    pub bodies: Arc<Semaphore>,
    /// How long a body may send nothing before the request is dropped (`header_timeout`).
    pub body_idle: Duration,
}

/// What [`Ingest::bodies`] counts in.
pub const BODY_UNIT: u64 = 1024;

impl Ingest {
    /// Waits until the body the request declares (its decoded length, else Content-Length,
    /// else the largest taken) fits in `ingest.body_memory`; the room is held until the
    /// permit is dropped, after the commit.
    async fn room_for(&self, headers: &http::HeaderMap) -> S3Result<OwnedSemaphorePermit> {
        let declared = declared_length(headers)
            .unwrap_or(MAX_BODY as u64)
            .min(MAX_BODY as u64);
        let units = declared.div_ceil(BODY_UNIT).max(1) as u32;
        if self.bodies.available_permits() < units as usize {
            tracing::debug!(
                bytes = declared,
                "ingest.body_memory is taken; the body waits for room"
            );
        }
        self.bodies
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| s3_error!(ServiceUnavailable, "the endpoint is stopping; retry"))
    }

    /// Reads the body within its room and idle timeout, checked against its checksums.
    async fn body<T>(&self, req: &mut S3Request<T>, body: Option<StreamingBlob>) -> S3Result<Body> {
        let room = self.room_for(&req.headers).await?;
        let bytes = read_body(req, body, self.body_idle).await?;
        Ok(Body { bytes, _room: room })
    }
    /// Runs `commit` (store, enqueue, undo) in a task of its own, so it completes whatever
    /// the client does: a client hanging up drops its request, and would otherwise cancel
    /// the commit half done (an object stored whose entry was never published, or an
    /// unpublished one never removed).
    async fn to_completion<T, F>(&self, commit: F) -> S3Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = S3Result<T>> + Send + 'static,
    {
        self.commits.spawn(commit).await.map_err(|e| {
            tracing::error!(error = %e, "an ingest commit failed");
            s3_error!(InternalError, "the write did not complete; retry")
        })?
    }

    fn bucket(&self, bucket: &str) -> S3Result<()> {
        if bucket == self.location.bucket {
            Ok(())
        } else {
            Err(s3_error!(
                NoSuchBucket,
                "this endpoint serves bucket {:?} only",
                self.location.bucket
            ))
        }
    }

    /// The rule that will copy `key` out of the buffer; writes nothing would copy are refused.
    fn rule(&self, key: &str) -> S3Result<&RuleConfig> {
        self.rules
            .iter()
            .find(|r| key.starts_with(&r.prefix))
            .ok_or_else(|| {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                s3_error!(
                    AccessDenied,
                    "no replication rule covers key {key:?}: nothing would copy it out of the buffer"
                )
            })
    }

    /// A page of the buffer's current objects, as ListObjects (v1 and v2) answer it; keys
    /// after `after` (a marker, start-after or continuation token), at most `max_keys`
    /// (1,000 if unset or larger).
    async fn list_page(
        &self,
        bucket: &str,
        prefix: Option<&str>,
        delimiter: Option<&str>,
        after: Option<&str>,
        max_keys: Option<i32>,
    ) -> S3Result<Listing> {
        self.bucket(bucket)?;
        let prefix = prefix.unwrap_or_default();
        let max_keys = max_keys.unwrap_or(1000).clamp(0, 1000);
        let query = Query {
            prefix,
            delimiter,
            after,
            max_keys: max_keys as usize,
        };
        // The listing starts after the marker and stops once the page is full: a page costs
        // what it returns, not what sorts before it.
        let mut pager = Pager::new(&query);
        let mut pages = self.store.current_after(prefix, after);
        'pages: while let Some(listed) = pages.next().await.map_err(|e| s3(e, retry_later))? {
            for object in listed {
                if !pager.offer(object) {
                    break 'pages;
                }
            }
        }
        let page = pager.finish();
        Ok(Listing {
            contents: page
                .objects
                .into_iter()
                .map(|o| dto::Object {
                    key: Some(o.key),
                    size: Some(o.size as i64),
                    e_tag: etag(o.etag),
                    last_modified: Some(timestamp(o.last_modified_ms)),
                    ..Default::default()
                })
                .collect(),
            common: page
                .common_prefixes
                .into_iter()
                .map(|p| dto::CommonPrefix { prefix: Some(p) })
                .collect(),
            next: page.next,
            max_keys,
        })
    }

    /// Joins an upload's parts into the object and enqueues it.
    async fn complete(
        &self,
        rule: &RuleConfig,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> S3Result<Written> {
        let written = self
            .store
            .complete_multipart(key, upload_id, parts)
            .await
            .map_err(|e| s3(e, no_upload))?;
        let (size, stamp) = match self.store.head(key, written.version_id.as_deref()).await {
            Ok(Head::Object(h)) => (h.size, h.last_modified_ms),
            Ok(_) => {
                return Err(s3_error!(
                    InternalError,
                    "the completed object is not there"
                ))
            }
            Err(e) => return Err(s3(e, retry_later)),
        };
        let stamp = written.last_modified_ms.unwrap_or(stamp);
        self.enqueue(rule, key, &written, size, stamp).await?;
        Ok(written)
    }

    /// Where a version just written stands in its key's order: the store's own stamp (an fs
    /// buffer's, later than every earlier write there) or the S3 buffer's Last-Modified, so
    /// versions are ordered by the buffer, never by this host's clock. Only if the buffer
    /// cannot be asked, this host's time.
    async fn order_stamp(&self, key: &str, written: &Written) -> i64 {
        if let Some(stamp) = written.last_modified_ms {
            return stamp;
        }
        match self.store.head(key, written.version_id.as_deref()).await {
            Ok(Head::Object(h)) => h.last_modified_ms,
            other => {
                let error = other.err().map(|e| e.to_string()).unwrap_or_default();
                tracing::warn!(key, error, "the buffer did not say when it stored the version; ordering it by this host's clock");
                model::now_ms()
            }
        }
    }

    /// Publishes the entry for a version just written; on failure removes the version again.
    async fn enqueue(
        &self,
        rule: &RuleConfig,
        key: &str,
        written: &Written,
        size: u64,
        stamp: i64,
    ) -> S3Result<()> {
        if !wanted(rule, EntryKind::Object) {
            return Ok(());
        }
        let entry = entry_for(
            rule,
            &self.location,
            Observed {
                key,
                version_id: written.version_id.as_deref(),
                kind: EntryKind::Object,
                size,
                etag: written.etag.as_deref(),
                last_modified_ms: stamp,
            },
        );
        let published = self.topic.send(&self.publisher, &entry).await;
        match published {
            Ok(_) => {
                self.stats.objects.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes.fetch_add(size, Ordering::Relaxed);
                let m = crate::metrics::metrics();
                m.enqueued.inc();
                m.ingested_objects.inc();
                m.ingested_bytes.inc_by(size);
                tracing::info!(
                    key,
                    version = written.version_id.as_deref().unwrap_or("null"),
                    size,
                    "ingested and enqueued"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(key, error = %e, "ingested object not enqueued; removing it so the client retries");
                if let Err(undo) = self
                    .store
                    .delete_version(key, written.version_id.as_deref())
                    .await
                {
                    tracing::error!(key, error = %undo, "could not remove the object that was not enqueued; a scan will find it");
                }
                Err(s3_error!(
                    ServiceUnavailable,
                    "stored, but the replication queue did not take the entry; retry"
                ))
            }
        }
    }
}

/// A storage failure as the S3 error a client understands. What went wrong inside (paths,
/// the buffer's own errors) is logged, not sent: a client is told what it can act on.
fn s3(e: StorageError, not_found: impl FnOnce(String) -> S3Error) -> S3Error {
    tracing::warn!(error = %e, "ingest request failed");
    let message = without_paths(&e.message);
    if let Some(code) = e.code.and_then(client_code) {
        return S3Error::with_message(code, message);
    }
    match e.kind {
        ErrorKind::NotFound => not_found(message),
        ErrorKind::Permanent => s3_error!(InvalidArgument, "{message}"),
        ErrorKind::Transient | ErrorKind::Unreachable => s3_error!(
            ServiceUnavailable,
            "the buffer could not complete the request just now; retry"
        ),
        ErrorKind::Config => s3_error!(
            InternalError,
            "the buffer is not usable (see the server's log); retry later"
        ),
    }
}

/// The S3 error a client gets for a condition the buffer named about its request. Missing
/// keys and uploads are answered by the caller, which knows what was asked for; the buffer's
/// own access or bucket problems are not the client's (they are answered as unusable).
fn client_code(code: ErrorCode) -> Option<S3ErrorCode> {
    Some(match code {
        ErrorCode::BadDigest => S3ErrorCode::BadDigest,
        ErrorCode::InvalidDigest => S3ErrorCode::InvalidDigest,
        ErrorCode::SlowDown => S3ErrorCode::SlowDown,
        ErrorCode::InvalidPart => S3ErrorCode::InvalidPart,
        ErrorCode::InvalidPartOrder => S3ErrorCode::InvalidPartOrder,
        ErrorCode::MalformedXml => S3ErrorCode::MalformedXML,
        ErrorCode::InvalidArgument => S3ErrorCode::InvalidArgument,
        ErrorCode::IncompleteBody => S3ErrorCode::IncompleteBody,
        ErrorCode::RequestTimeout => S3ErrorCode::RequestTimeout,
        ErrorCode::NoSuchKey
        | ErrorCode::NoSuchVersion
        | ErrorCode::NoSuchUpload
        | ErrorCode::NoSuchBucket
        | ErrorCode::AccessDenied => return None,
    })
}

/// `message` with every absolute path replaced: clients learn what failed, never where the
/// buffer lives on the server (the log keeps the whole message).
fn without_paths(message: &str) -> String {
    message
        .split(' ')
        .map(|word| {
            let bare = word.trim_start_matches(['"', '\'', '(', '[']);
            if bare.starts_with('/') {
                "(a path in the buffer)"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// For writes and listings, where "not found" can only mean something vanished under the
/// request (a directory removed meanwhile): worth a retry, never a 404.
fn retry_later(_: String) -> S3Error {
    s3_error!(
        ServiceUnavailable,
        "the buffer changed under the request; retry"
    )
}

fn no_key(message: String) -> S3Error {
    s3_error!(NoSuchKey, "{message}")
}

fn no_upload(message: String) -> S3Error {
    s3_error!(NoSuchUpload, "{message}")
}

fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

fn etag(value: Option<String>) -> Option<dto::ETag> {
    value.map(dto::ETag::Strong)
}

fn meta(
    content_type: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    user: Option<dto::Metadata>,
) -> ObjectMeta {
    ObjectMeta {
        content_type,
        cache_control,
        content_disposition,
        content_encoding,
        user: user.unwrap_or_default().into_iter().collect(),
    }
}

fn head_fields(h: &ObjectHead) -> (Option<dto::Metadata>, Option<String>) {
    (
        Some(h.meta.user.clone().into_iter().collect()),
        h.meta.content_type.clone(),
    )
}

#[async_trait::async_trait]
impl S3 for Ingest {
    async fn put_object(
        &self,
        mut req: S3Request<dto::PutObjectInput>,
    ) -> S3Result<S3Response<dto::PutObjectOutput>> {
        self.bucket(&req.input.bucket)?;
        let rule = self.rule(&req.input.key)?;
        // Streamed into the store as it arrives (memory O(chunk), whatever the size); the
        // checksums are checked at its end, before the store commits.
        let size = declared_length(&req.headers).ok_or_else(|| {
            s3_error!(
                MissingContentLength,
                "PutObject needs Content-Length (or x-amz-decoded-content-length)"
            )
        })?;
        let claims = Claims::of(&req.headers)?;
        let body = req.input.body.take();
        let trailers = req.trailing_headers.take();
        let input = req.input;
        let meta = meta(
            input.content_type.map(|t| t.to_string()),
            input.cache_control,
            input.content_disposition,
            input.content_encoding,
            input.metadata,
        );
        let (chunks, received) = tokio::sync::mpsc::channel(STREAM_QUEUE);
        let (this, rule, key, md5) = (self.clone(), rule.clone(), input.key, input.content_md5);
        let commit = self.to_completion(async move {
            let written = this
                .store
                .put_stream(&key, size, md5.as_deref(), received, &meta, input.tagging)
                .await
                .map_err(|e| s3(e, retry_later))?;
            let stamp = this.order_stamp(&key, &written).await;
            this.enqueue(&rule, &key, &written, size, stamp).await?;
            Ok(written)
        });
        let fed = feed(body, chunks, &claims, trailers, self.body_idle);
        let (fed, written) = tokio::join!(fed, commit);
        // A body that stalled or failed its checksums was aborted: that is the answer, not
        // the store's "aborted".
        fed?;
        let written = written?;
        Ok(S3Response::new(dto::PutObjectOutput {
            e_tag: etag(written.etag),
            version_id: written.version_id,
            size: Some(size as i64),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<dto::CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CreateMultipartUploadOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        self.rule(&input.key)?;
        let meta = meta(
            input.content_type.map(|t| t.to_string()),
            input.cache_control,
            input.content_disposition,
            input.content_encoding,
            input.metadata,
        );
        let upload_id = self
            .store
            .create_multipart(&input.key, &meta, input.tagging)
            .await
            .map_err(|e| s3(e, retry_later))?;
        Ok(S3Response::new(dto::CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        mut req: S3Request<dto::UploadPartInput>,
    ) -> S3Result<S3Response<dto::UploadPartOutput>> {
        self.bucket(&req.input.bucket)?;
        let body = req.input.body.take();
        let Body { bytes, _room } = self.body(&mut req, body).await?;
        let input = req.input;
        let md5 = content_md5(input.content_md5, &bytes);
        let part_etag = self
            .store
            .upload_part(&input.key, &input.upload_id, input.part_number, bytes, &md5)
            .await
            .map_err(|e| s3(e, no_upload))?;
        drop(_room);
        Ok(S3Response::new(dto::UploadPartOutput {
            e_tag: etag(Some(part_etag)),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<dto::CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CompleteMultipartUploadOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        let rule = self.rule(&input.key)?;
        let mut parts = Vec::new();
        for part in input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
        {
            match (part.part_number, part.e_tag) {
                (Some(n), Some(tag)) => parts.push((n, tag.value().trim_matches('"').to_string())),
                _ => {
                    return Err(s3_error!(
                        InvalidPart,
                        "every part needs a PartNumber and an ETag"
                    ))
                }
            }
        }
        if parts.is_empty() {
            return Err(s3_error!(MalformedXML, "the upload lists no parts"));
        }
        let (this, rule, key) = (self.clone(), rule.clone(), input.key.clone());
        let written = self
            .to_completion(
                async move { this.complete(&rule, &key, &input.upload_id, &parts).await },
            )
            .await?;
        Ok(S3Response::new(dto::CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: etag(written.etag),
            version_id: written.version_id,
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<dto::AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::AbortMultipartUploadOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        self.store
            .abort_multipart(&input.key, &input.upload_id)
            .await
            .map_err(|e| s3(e, no_upload))?;
        Ok(S3Response::new(dto::AbortMultipartUploadOutput::default()))
    }

    async fn head_object(
        &self,
        req: S3Request<dto::HeadObjectInput>,
    ) -> S3Result<S3Response<dto::HeadObjectOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        if input.range.is_some() || input.part_number.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "ranges and part numbers are not served here"
            ));
        }
        let h = match self
            .store
            .head(&input.key, input.version_id.as_deref())
            .await
            .map_err(|e| s3(e, no_key))?
        {
            Head::Object(h) => h,
            _ => return Err(not_in_buffer(&input.key)),
        };
        let (metadata, content_type) = head_fields(&h);
        Ok(S3Response::new(dto::HeadObjectOutput {
            content_length: Some(h.size as i64),
            e_tag: etag(h.etag),
            last_modified: Some(timestamp(h.last_modified_ms)),
            version_id: h.version_id,
            metadata,
            content_type: content_type.and_then(|t| t.parse().ok()),
            cache_control: h.meta.cache_control,
            content_disposition: h.meta.content_disposition,
            content_encoding: h.meta.content_encoding,
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<dto::GetObjectInput>,
    ) -> S3Result<S3Response<dto::GetObjectOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        if input.range.is_some() || input.part_number.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "ranges and part numbers are not served here"
            ));
        }
        let (h, mut body) = self
            .store
            .get(&input.key, input.version_id.as_deref())
            .await
            .map_err(|e| s3(e, |_| not_in_buffer(&input.key)))?;
        // The body is read by a task feeding a small channel, so the response streams.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, StorageError>>(4);
        tokio::spawn(async move {
            loop {
                let chunk = body.chunk().await.transpose();
                let Some(chunk) = chunk else { return };
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let (metadata, content_type) = head_fields(&h);
        Ok(S3Response::new(dto::GetObjectOutput {
            body: Some(StreamingBlob::wrap(stream)),
            content_length: Some(h.size as i64),
            e_tag: etag(h.etag),
            last_modified: Some(timestamp(h.last_modified_ms)),
            version_id: h.version_id,
            metadata,
            content_type: content_type.and_then(|t| t.parse().ok()),
            cache_control: h.meta.cache_control,
            content_disposition: h.meta.content_disposition,
            content_encoding: h.meta.content_encoding,
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<dto::DeleteObjectInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        match self
            .store
            .delete_version(&input.key, input.version_id.as_deref())
            .await
        {
            Ok(()) => tracing::info!(key = %input.key, "removed from the buffer by a client"),
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => return Err(s3(e, no_key)),
        }
        Ok(S3Response::new(dto::DeleteObjectOutput::default()))
    }

    async fn list_objects(
        &self,
        req: S3Request<dto::ListObjectsInput>,
    ) -> S3Result<S3Response<dto::ListObjectsOutput>> {
        let input = req.input;
        let listed = self
            .list_page(
                &input.bucket,
                input.prefix.as_deref(),
                input.delimiter.as_deref(),
                input.marker.as_deref(),
                input.max_keys,
            )
            .await?;
        Ok(S3Response::new(dto::ListObjectsOutput {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            marker: input.marker,
            max_keys: Some(listed.max_keys),
            is_truncated: Some(listed.next.is_some()),
            // S3 sends NextMarker only with a delimiter; clients resume from the last key
            // otherwise, which is the same place.
            next_marker: listed.next,
            contents: Some(listed.contents),
            common_prefixes: Some(listed.common),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<dto::ListObjectsV2Input>,
    ) -> S3Result<S3Response<dto::ListObjectsV2Output>> {
        let input = req.input;
        let after = input
            .continuation_token
            .as_deref()
            .or(input.start_after.as_deref());
        let listed = self
            .list_page(
                &input.bucket,
                input.prefix.as_deref(),
                input.delimiter.as_deref(),
                after,
                input.max_keys,
            )
            .await?;
        Ok(S3Response::new(dto::ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            max_keys: Some(listed.max_keys),
            key_count: Some((listed.contents.len() + listed.common.len()) as i32),
            is_truncated: Some(listed.next.is_some()),
            next_continuation_token: listed.next,
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            contents: Some(listed.contents),
            common_prefixes: Some(listed.common),
            ..Default::default()
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<dto::HeadBucketInput>,
    ) -> S3Result<S3Response<dto::HeadBucketOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(dto::HeadBucketOutput::default()))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<dto::ListBucketsInput>,
    ) -> S3Result<S3Response<dto::ListBucketsOutput>> {
        Ok(S3Response::new(dto::ListBucketsOutput {
            buckets: Some(vec![dto::Bucket {
                name: Some(self.location.bucket.clone()),
                ..Default::default()
            }]),
            ..Default::default()
        }))
    }
}

/// What a read of an object that is not (or no longer) in the buffer answers.
fn not_in_buffer(key: &str) -> S3Error {
    s3_error!(
        NoSuchKey,
        "{key:?} is not in the buffer: never written, or already replicated and removed (read it from a target)"
    )
}

#[cfg(test)]
mod tests {
    use super::without_paths;

    #[test]
    fn client_messages_carry_no_server_path() {
        let message = "open /var/lib/ferry/buffer/.ferry/meta/a.json: No such file (os error 2)";
        assert_eq!(
            without_paths(message),
            "open (a path in the buffer) No such file (os error 2)"
        );
        assert_eq!(
            without_paths("key \"a/b\" is not in the buffer"),
            "key \"a/b\" is not in the buffer"
        );
        assert!(!without_paths("rename \"/tmp/x\" to '/tmp/y'").contains("/tmp"));
    }
}

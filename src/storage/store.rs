//! `Store`: one location's store, whatever its kind; the stages only ever see this.
//!
//! Every method delegates to the S3 bucket or the local directory behind it, with the same
//! arguments, results and error kinds.

use bytes::Bytes;

use super::fs::{FsBody, FsPages, FsStore};
use super::s3::{S3Body, S3Pages, S3Store};
use super::{BodyChunks, ErrorKind, Head, Listed, ObjectHead, ObjectMeta, StorageError, Written};

/// One location's store. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    S3(S3Store),
    Fs(FsStore),
}

/// Calls the same method on whichever store is inside.
macro_rules! delegate {
    ($self:ident . $method:ident ( $($arg:expr),* ) .await) => {
        match $self {
            Store::S3(store) => store.$method($($arg),*).await,
            Store::Fs(store) => store.$method($($arg),*).await,
        }
    };
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::S3(store) => store.$method($($arg),*),
            Store::Fs(store) => store.$method($($arg),*),
        }
    };
}

impl Store {
    /// The location's name in the configuration.
    pub fn name(&self) -> &str {
        match self {
            Store::S3(store) => &store.name,
            Store::Fs(store) => store.name(),
        }
    }

    /// The bucket entries from this location carry (an `fs` location's name).
    pub fn bucket(&self) -> &str {
        match self {
            Store::S3(store) => &store.bucket,
            Store::Fs(store) => store.bucket(),
        }
    }

    /// An error found by ferry itself (not reported by the store) about this store.
    pub fn local_error(
        &self,
        op: &'static str,
        key: &str,
        kind: ErrorKind,
        message: String,
    ) -> StorageError {
        delegate!(self.local_error(op, key, kind, message))
    }

    /// Checks that the bucket (directory) exists and may be used.
    pub async fn check(&self) -> Result<(), StorageError> {
        delegate!(self.check().await)
    }

    /// Claims the location for this process where two processes would race (an fs
    /// directory); nothing for S3, whose server orders concurrent requests.
    pub async fn claim(&self) -> Result<(), StorageError> {
        match self {
            Store::S3(_) => Ok(()),
            Store::Fs(store) => store.claim().await,
        }
    }

    /// A cheap readiness probe (no writes): the bucket or directory is there.
    pub async fn probe(&self) -> Result<(), StorageError> {
        match self {
            // One HeadBucket either way.
            Store::S3(store) => store.check().await,
            Store::Fs(store) => store.probe().await,
        }
    }

    /// Removes what crashed processes left behind long ago (an fs location's temporary
    /// files and abandoned multipart uploads; nothing for S3, whose lifecycle rules do it).
    pub async fn sweep(&self) -> Result<(), StorageError> {
        match self {
            Store::S3(_) => Ok(()),
            Store::Fs(store) => store.sweep().await,
        }
    }

    /// Whether the store keeps older versions.
    pub async fn is_versioned(&self) -> Result<bool, StorageError> {
        delegate!(self.is_versioned().await)
    }

    /// Every version and delete marker under `prefix`.
    pub async fn list_versions(&self, prefix: &str) -> Result<Vec<Listed>, StorageError> {
        delegate!(self.list_versions(prefix).await)
    }

    /// A listing of `prefix` a page (one LIST request) at a time, keys ascending: every
    /// version and delete marker when `versions` (and the store keeps them), else the current
    /// objects. Memory O(page) however large the bucket.
    pub fn pages(&self, prefix: &str, versions: bool) -> Pages {
        match self {
            Store::S3(store) => Pages::S3(store.pages(prefix, versions)),
            Store::Fs(store) => Pages::Fs(store.pages(prefix)),
        }
    }

    /// The current objects under `prefix` whose keys sort after `after`, a page at a time:
    /// what sorts before `after` is not listed at all (S3's StartAfter; an fs walk that passes
    /// over it).
    pub fn current_after(&self, prefix: &str, after: Option<&str>) -> Pages {
        match self {
            Store::S3(store) => Pages::S3(store.pages(prefix, false).after(after)),
            Store::Fs(store) => Pages::Fs(store.pages(prefix).after(after)),
        }
    }

    /// Hands every key the store holds anything under (a version, a delete marker) to `key`,
    /// a listing page at a time (memory O(page)); a key may come more than once.
    pub async fn each_key(&self, key: impl FnMut(&str)) -> Result<(), StorageError> {
        delegate!(self.each_key(key).await)
    }

    /// Every current object under `prefix`.
    pub async fn list_current(&self, prefix: &str) -> Result<Vec<Listed>, StorageError> {
        delegate!(self.list_current(prefix).await)
    }

    /// What `key` (its current version, or `version_id`) is.
    pub async fn head(&self, key: &str, version_id: Option<&str>) -> Result<Head, StorageError> {
        delegate!(self.head(key, version_id).await)
    }

    /// The size of part 1 of a version that was uploaded in parts, if known.
    pub async fn first_part_size(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Option<u64>, StorageError> {
        delegate!(self.first_part_size(key, version_id).await)
    }

    /// Starts reading one version: its head, and a body to read in chunks.
    pub async fn get(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(ObjectHead, ObjectBody), StorageError> {
        delegate!(self.get(key, version_id).await)
    }

    /// The tags of one version.
    pub async fn tags(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Vec<(String, String)>, StorageError> {
        delegate!(self.tags(key, version_id).await)
    }

    /// Writes a whole object; the store checks `content_md5` (base64).
    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_md5: &str,
        meta: &ObjectMeta,
        tagging: Option<String>,
    ) -> Result<Written, StorageError> {
        delegate!(self.put(key, body, content_md5, meta, tagging).await)
    }

    /// Writes a whole object of `length` bytes streamed from `body`; the store checks
    /// `content_md5` (base64) if given and keeps nothing if the body is aborted or cut short.
    pub async fn put_stream(
        &self,
        key: &str,
        length: u64,
        content_md5: Option<&str>,
        body: BodyChunks,
        meta: &ObjectMeta,
        tagging: Option<String>,
    ) -> Result<Written, StorageError> {
        delegate!(
            self.put_stream(key, length, content_md5, body, meta, tagging)
                .await
        )
    }

    /// Starts a multipart upload carrying the object's headers, metadata and tags.
    pub async fn create_multipart(
        &self,
        key: &str,
        meta: &ObjectMeta,
        tagging: Option<String>,
    ) -> Result<String, StorageError> {
        delegate!(self.create_multipart(key, meta, tagging).await)
    }

    /// Uploads one part; the store checks `content_md5`. Returns the part's ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
        content_md5: &str,
    ) -> Result<String, StorageError> {
        delegate!(
            self.upload_part(key, upload_id, part_number, body, content_md5)
                .await
        )
    }

    /// Completes a multipart upload from `(part number, ETag)` pairs.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<Written, StorageError> {
        delegate!(self.complete_multipart(key, upload_id, parts).await)
    }

    /// Abandons a multipart upload so no orphaned parts stay behind.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        delegate!(self.abort_multipart(key, upload_id).await)
    }

    /// Deletes exactly one version (or, unversioned, the object).
    pub async fn delete_version(
        &self,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(), StorageError> {
        delegate!(self.delete_version(key, version_id).await)
    }

    /// Deletes `key` without a version: a delete marker where versions are kept.
    pub async fn put_delete_marker(&self, key: &str) -> Result<Written, StorageError> {
        delegate!(self.put_delete_marker(key).await)
    }

    /// The versions and delete markers of exactly `key`.
    pub async fn key_versions(&self, key: &str) -> Result<Vec<Listed>, StorageError> {
        delegate!(self.key_versions(key).await)
    }
}

/// The body of a GET, read chunk by chunk (never whole in memory unless the caller keeps it).
pub struct ObjectBody {
    inner: Body,
}

enum Body {
    S3(S3Body),
    Fs(FsBody),
}

impl ObjectBody {
    /// The next chunk, or `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
        match &mut self.inner {
            Body::S3(body) => body.chunk().await,
            Body::Fs(body) => body.chunk().await,
        }
    }
}

impl From<S3Body> for ObjectBody {
    fn from(body: S3Body) -> Self {
        Self {
            inner: Body::S3(body),
        }
    }
}

impl From<FsBody> for ObjectBody {
    fn from(body: FsBody) -> Self {
        Self {
            inner: Body::Fs(body),
        }
    }
}

/// A paged listing of one store ([`Store::pages`]).
pub enum Pages {
    S3(S3Pages),
    Fs(FsPages),
}

impl Pages {
    /// The next page, or `None` once the listing ended.
    pub async fn next(&mut self) -> Result<Option<Vec<Listed>>, StorageError> {
        match self {
            Pages::S3(pages) => pages.next().await,
            Pages::Fs(pages) => pages.next().await,
        }
    }

    /// LIST requests (pages) so far.
    pub fn requests(&self) -> u64 {
        match self {
            Pages::S3(pages) => pages.requests,
            Pages::Fs(pages) => pages.requests,
        }
    }
}

//! Object stores behind ferry's own types: S3 buckets and local directories as one [`Store`],
//! their errors classified by kind.
//!
//! Callers branch on [`ErrorKind`], never on SDK or I/O error types (those stay in `s3.rs` and
//! `fs.rs`).

mod body;
mod code;
pub(crate) mod fs;
mod s3;
mod store;

pub use code::ErrorCode;
pub use fs::FsStore;
pub use s3::{encode_tagging, S3Store};
pub use store::{ObjectBody, Pages, Store};

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::LocationKind;
use crate::model::EntryKind;

/// What a storage failure means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 5xx, throttling, corrupted transfers, a body cut short: retry this object.
    Transient,
    /// The server cannot be reached (refused, reset, timed out): every request to it will
    /// fail until it is back, so the location is paused rather than each object retried.
    Unreachable,
    /// The object, version or upload does not exist.
    NotFound,
    /// Bucket missing, access denied, bad credentials: every object will fail the same way.
    Config,
    /// This request will never succeed as sent (other 4xx).
    Permanent,
}

/// A request body fed through a channel, for an object streamed from its source to a target:
/// its chunks in order; an `Err` aborts the request so the server keeps nothing, and the
/// channel closing after the last chunk ends the body.
pub type BodyChunks = tokio::sync::mpsc::Receiver<Result<Bytes, BodyAborted>>;

/// Why a streamed body was cut off before its end.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the body was aborted: {0}")]
pub struct BodyAborted(pub String);

/// A failed storage operation: what was attempted, where, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} on {location} (bucket {bucket}, key {key:?}): {message}")]
pub struct StorageError {
    pub kind: ErrorKind,
    pub op: &'static str,
    /// The location's name in the configuration.
    pub location: String,
    pub bucket: String,
    pub key: String,
    pub message: String,
    /// The condition, when the server or the store named one callers act on.
    pub code: Option<ErrorCode>,
}

impl StorageError {
    /// This error, naming `code` as its condition.
    pub fn coded(mut self, code: Option<ErrorCode>) -> Self {
        self.code = code;
        self
    }

    /// Whether the condition is `code`.
    pub fn is(&self, code: ErrorCode) -> bool {
        self.code == Some(code)
    }
}

/// One version (or delete marker) as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub version_id: Option<String>,
    pub kind: EntryKind,
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified_ms: i64,
    pub is_latest: bool,
}

/// The headers and user metadata ferry copies with an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    /// `x-amz-meta-*`, names without the prefix.
    pub user: HashMap<String, String>,
}

/// What a HEAD or GET says about one object version.
#[derive(Debug, Clone)]
pub struct ObjectHead {
    pub size: u64,
    /// Unquoted.
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub last_modified_ms: i64,
    pub meta: ObjectMeta,
    pub tag_count: u32,
}

/// The result of looking at a key (or one version of it).
#[derive(Debug, Clone)]
pub enum Head {
    Object(ObjectHead),
    /// The key's current version (or the version asked for) is a delete marker.
    DeleteMarker {
        version_id: Option<String>,
    },
    Missing,
}

/// What a write produced on the store.
#[derive(Debug, Clone)]
pub struct Written {
    pub version_id: Option<String>,
    pub etag: Option<String>,
    /// The store's own order stamp of the version, where it gives one at once (an `fs`
    /// location: later than every earlier write there, whatever the system clock did).
    pub last_modified_ms: Option<i64>,
}

/// Strips the quotes S3 puts around ETags.
pub fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_string()
}

/// Whether an ETag is a plain MD5 of the content (single-part upload, no SSE-KMS).
pub fn etag_is_md5(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Config => "configuration",
            ErrorKind::Permanent => "permanent",
        })
    }
}

/// Every configured location's store, by location name.
#[derive(Clone, Default)]
pub struct Stores {
    stores: std::collections::BTreeMap<String, Store>,
}

/// Stores built elsewhere (tests), by their names.
impl FromIterator<Store> for Stores {
    fn from_iter<I: IntoIterator<Item = Store>>(stores: I) -> Self {
        Self {
            stores: stores
                .into_iter()
                .map(|s| (s.name().to_string(), s))
                .collect(),
        }
    }
}

impl Stores {
    /// Builds the store of every location, of its kind (no requests, no file-system access).
    pub async fn connect(config: &crate::config::Config) -> Self {
        let mut stores = std::collections::BTreeMap::new();
        for (name, location) in &config.locations {
            let store = match &location.kind {
                LocationKind::S3 => Store::S3(S3Store::connect(location).await),
                LocationKind::Fs { path, stable_after } => Store::Fs(FsStore::new(
                    &location.name,
                    &location.bucket,
                    path.clone(),
                    *stable_after,
                )),
            };
            stores.insert(name.clone(), store);
        }
        Self { stores }
    }

    pub fn get(&self, name: &str) -> Option<&Store> {
        self.stores.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Store> {
        self.stores.values()
    }

    /// Sweeps every store ([`Store::sweep`]) every `interval` until `shutdown` (the first
    /// sweep ran in the start-up check).
    pub async fn sweep_every(self, interval: std::time::Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            for store in self.iter() {
                if let Err(e) = store.sweep().await {
                    tracing::warn!(location = %store.name(), error = %e, "sweep of stale files failed");
                }
            }
        }
    }
}

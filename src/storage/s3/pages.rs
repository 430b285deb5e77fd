//! Listings of an S3 bucket a page (one LIST request) at a time, so a caller's memory is
//! O(page) whatever the bucket holds.

use aws_sdk_s3::operation::list_object_versions::ListObjectVersionsOutput;
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output;

use super::{millis, S3Store, LIST_PAGE};
use crate::model::EntryKind;
use crate::storage::{unquote, ErrorKind, Listed, StorageError};

/// Where a paged listing is: what to ask for next, or that it ended.
enum Cursor {
    /// ListObjectVersions from these markers (none: the start).
    Versions {
        key: Option<String>,
        version: Option<String>,
    },
    /// ListObjectsV2 from this continuation token (none: the start).
    Current {
        token: Option<String>,
    },
    Done,
}

/// A listing under a prefix, in the server's order: keys ascending (UTF-8 byte order), and per
/// page each key's versions newest first, then its delete markers.
pub struct S3Pages {
    store: S3Store,
    prefix: String,
    cursor: Cursor,
    /// Current objects only: keys after this one (S3's StartAfter).
    after: Option<String>,
    /// LIST requests made so far.
    pub requests: u64,
}

impl S3Pages {
    /// All versions and delete markers when `versions`, else the current objects.
    pub fn new(store: S3Store, prefix: &str, versions: bool) -> Self {
        let cursor = if versions {
            Cursor::Versions {
                key: None,
                version: None,
            }
        } else {
            Cursor::Current { token: None }
        };
        Self {
            store,
            prefix: prefix.to_string(),
            cursor,
            after: None,
            requests: 0,
        }
    }

    /// The current objects after `key` only (for ListObjects pages resumed at a marker).
    pub fn after(mut self, key: Option<&str>) -> Self {
        self.after = key.map(str::to_string);
        self
    }

    /// The next page, or `None` once the listing ended.
    pub async fn next(&mut self) -> Result<Option<Vec<Listed>>, StorageError> {
        match std::mem::replace(&mut self.cursor, Cursor::Done) {
            Cursor::Done => Ok(None),
            Cursor::Versions { key, version } => {
                let out = self.list_versions(key, version).await?;
                self.requests += 1;
                if out.is_truncated().unwrap_or(false) {
                    let Some(key) = out.next_key_marker() else {
                        return Err(self.store.local_error(
                            "ListObjectVersions",
                            &self.prefix,
                            ErrorKind::Transient,
                            "truncated listing without a next key marker".into(),
                        ));
                    };
                    self.cursor = Cursor::Versions {
                        key: Some(key.to_string()),
                        version: out.next_version_id_marker().map(str::to_string),
                    };
                }
                Ok(Some(version_page(&out)))
            }
            Cursor::Current { token } => {
                let out = self.list_current(token).await?;
                self.requests += 1;
                match out.next_continuation_token() {
                    Some(t) if out.is_truncated().unwrap_or(false) => {
                        self.cursor = Cursor::Current {
                            token: Some(t.to_string()),
                        }
                    }
                    _ => {}
                }
                Ok(Some(current_page(&out)))
            }
        }
    }

    async fn list_versions(
        &self,
        key: Option<String>,
        version: Option<String>,
    ) -> Result<ListObjectVersionsOutput, StorageError> {
        self.store
            .client
            .list_object_versions()
            .bucket(&self.store.bucket)
            .prefix(&self.prefix)
            .max_keys(LIST_PAGE)
            .set_key_marker(key)
            .set_version_id_marker(version)
            .send()
            .await
            .map_err(|e| self.store.error("ListObjectVersions", &self.prefix, e))
    }

    async fn list_current(
        &self,
        token: Option<String>,
    ) -> Result<ListObjectsV2Output, StorageError> {
        self.store
            .client
            .list_objects_v2()
            .bucket(&self.store.bucket)
            .prefix(&self.prefix)
            .max_keys(LIST_PAGE)
            .set_start_after(self.after.clone().filter(|_| token.is_none()))
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| self.store.error("ListObjectsV2", &self.prefix, e))
    }
}

fn version_page(out: &ListObjectVersionsOutput) -> Vec<Listed> {
    let versions = out.versions().iter().map(|v| Listed {
        key: v.key().unwrap_or_default().to_string(),
        version_id: v.version_id().map(str::to_string),
        kind: EntryKind::Object,
        size: v.size().unwrap_or(0).max(0) as u64,
        etag: v.e_tag().map(unquote),
        last_modified_ms: millis(v.last_modified()),
        is_latest: v.is_latest().unwrap_or(false),
    });
    let markers = out.delete_markers().iter().map(|m| Listed {
        key: m.key().unwrap_or_default().to_string(),
        version_id: m.version_id().map(str::to_string),
        kind: EntryKind::DeleteMarker,
        size: 0,
        etag: None,
        last_modified_ms: millis(m.last_modified()),
        is_latest: m.is_latest().unwrap_or(false),
    });
    versions.chain(markers).collect()
}

fn current_page(out: &ListObjectsV2Output) -> Vec<Listed> {
    out.contents()
        .iter()
        .map(|o| Listed {
            key: o.key().unwrap_or_default().to_string(),
            version_id: None,
            kind: EntryKind::Object,
            size: o.size().unwrap_or(0).max(0) as u64,
            etag: o.e_tag().map(unquote),
            last_modified_ms: millis(o.last_modified()),
            is_latest: true,
        })
        .collect()
}

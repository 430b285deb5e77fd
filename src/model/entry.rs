//! `ReplicationEntry`: one source version (or delete marker) to copy to a rule's targets.

use serde::{Deserialize, Serialize};

/// What the source version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// An object version with data.
    Object,
    /// A delete marker: replicated as a delete marker on each target.
    DeleteMarker,
    /// A specific version was permanently deleted at the source: delete ferry's copy of it on
    /// each target (only for rules with `replicate_version_deletes`).
    VersionDelete,
}

/// One message on the replication topic, keyed by `bucket/key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationEntry {
    pub schema: u32,
    /// Name of the rule that matched.
    pub rule: String,
    /// Name of the source location.
    pub source: String,
    pub bucket: String,
    pub key: String,
    /// `None` for an unversioned source (the current object).
    pub version_id: Option<String>,
    pub kind: EntryKind,
    pub size: u64,
    /// The source's ETag, unquoted, when known.
    pub etag: Option<String>,
    /// Source write time (ms since epoch); orders versions of one key.
    pub last_modified_ms: i64,
    /// Target location names, from the rule.
    pub targets: Vec<String>,
    /// The source is transient: delete it there once every target holds it.
    pub transient: bool,
    /// When the populator enqueued it (ms since epoch).
    pub enqueued_at_ms: i64,
}

impl ReplicationEntry {
    /// The Kafka message key: every version of one object lands on one partition, in order.
    pub fn message_key(&self) -> String {
        format!("{}/{}", self.bucket, self.key)
    }

    /// Identifies this version across messages and state records.
    pub fn id(&self) -> String {
        serde_json::json!([
            self.source,
            self.bucket,
            self.key,
            self.version_id,
            self.etag
        ])
        .to_string()
    }

    /// `bucket/key@version` for logs and errors.
    pub fn display(&self) -> String {
        format!(
            "{}/{}@{}",
            self.bucket,
            self.key,
            self.version_id.as_deref().unwrap_or("null")
        )
    }
}

//! `QueuePopulator`: turns changes at the source into replication entries.
//!
//! Three feeds: [`scan`] lists each rule's source bucket periodically and enqueues the versions
//! it has not enqueued before (its progress in [`progress`]); [`events`] consumes S3 event
//! notifications from a Kafka topic; [`ingest`] is ferry's own S3 endpoint, which writes into a
//! transient location and enqueues each object as it commits.
//! Entries are keyed `bucket/key`, so every version of one object is on one partition, in order.

pub mod backfill;
pub mod events;
pub mod ingest;
pub(crate) mod progress;
pub mod scan;

use crate::config::{Config, LocationConfig, RuleConfig};
use crate::model::{self, EntryKind, ReplicationEntry};

/// The rule that covers `key` on `source`, if any (rules of one source never overlap).
pub fn rule_for<'a>(config: &'a Config, source: &str, key: &str) -> Option<&'a RuleConfig> {
    config
        .rules
        .iter()
        .find(|r| r.source == source && key.starts_with(&r.prefix))
}

/// Whether `rule` replicates changes of this kind.
pub fn wanted(rule: &RuleConfig, kind: EntryKind) -> bool {
    match kind {
        EntryKind::Object => true,
        EntryKind::DeleteMarker => rule.replicate_deletes,
        EntryKind::VersionDelete => rule.replicate_version_deletes,
    }
}

/// What the populator knows about one source version.
pub struct Observed<'a> {
    pub key: &'a str,
    pub version_id: Option<&'a str>,
    pub kind: EntryKind,
    pub size: u64,
    pub etag: Option<&'a str>,
    pub last_modified_ms: i64,
}

impl<'a> From<&'a crate::storage::Listed> for Observed<'a> {
    fn from(l: &'a crate::storage::Listed) -> Self {
        Self {
            key: &l.key,
            version_id: l.version_id.as_deref(),
            kind: l.kind,
            size: l.size,
            etag: l.etag.as_deref(),
            last_modified_ms: l.last_modified_ms,
        }
    }
}

/// Builds the entry for a version of `source` matched by `rule`.
pub fn entry_for(
    rule: &RuleConfig,
    source: &LocationConfig,
    seen: Observed<'_>,
) -> ReplicationEntry {
    ReplicationEntry {
        schema: model::SCHEMA,
        rule: rule.name.clone(),
        source: source.name.clone(),
        bucket: source.bucket.clone(),
        key: seen.key.to_string(),
        version_id: seen.version_id.map(str::to_string),
        kind: seen.kind,
        size: seen.size,
        etag: seen.etag.map(str::to_string),
        last_modified_ms: seen.last_modified_ms,
        targets: rule.targets.clone(),
        transient: source.transient,
        enqueued_at_ms: model::now_ms(),
    }
}

/// Publishes `entries` to the replication topic all in flight at once: one round trip for a
/// batch instead of one per entry, each key's versions in order ([`Publisher::publish_all`]).
/// One outcome per entry, in order.
///
/// [`Publisher::publish_all`]: crate::bus::Publisher::publish_all
pub async fn enqueue_all<'a>(
    publisher: &crate::bus::Publisher,
    topic: &crate::bus::Topic<ReplicationEntry>,
    entries: impl IntoIterator<Item = &'a ReplicationEntry>,
) -> Vec<Result<(), crate::bus::BusError>> {
    let payloads: Vec<(String, Vec<u8>)> = entries
        .into_iter()
        .map(|e| (e.message_key(), model::encode(e)))
        .collect();
    let sent = publisher.publish_all(topic, &payloads).await;
    let m = crate::metrics::metrics();
    sent.into_iter()
        .map(|outcome| outcome.map(|_| m.enqueued.inc()).map(|_| ()))
        .collect()
}

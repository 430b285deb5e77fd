//! The scan feed: lists each source bucket every `scan_interval` and enqueues new versions.
//!
//! Progress is the set of versions already enqueued, kept in the compacted populator-state
//! topic (one record per version, a tombstone once the version is gone from the source), so a
//! restart does not enqueue the bucket again. An entry is published before its progress
//! record: a crash in between enqueues it twice, which the replication processor recognises.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{entry_for, rule_for, wanted, Observed, SharedStats};
use crate::bus::{Publisher, StateReader, Topics};
use crate::config::{Config, LocationConfig};
use crate::model::{self, EntryKind};
use crate::stages::{publish_until_done, sleep_or_shutdown, StageError};
use crate::storage::{Listed, Store, Stores};

const STAGE: &str = "populator";

/// The scan feed.
pub struct Scanner {
    config: Arc<Config>,
    stores: Stores,
    publisher: Publisher,
    topics: Topics,
    reader: StateReader,
    /// Per source location: the versions already enqueued, as their progress-record keys.
    seen: HashMap<String, HashSet<String>>,
    stats: SharedStats,
}

impl Scanner {
    pub fn new(
        config: Arc<Config>,
        stores: Stores,
        publisher: Publisher,
        topics: Topics,
        reader: StateReader,
        stats: SharedStats,
    ) -> Self {
        Self {
            config,
            stores,
            publisher,
            topics,
            reader,
            seen: HashMap::new(),
            stats,
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), StageError> {
        self.load_progress().await?;
        loop {
            let sources: Vec<LocationConfig> = self.config.sources().cloned().collect();
            for source in &sources {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                match self.scan(source, &shutdown).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(stage = STAGE, source = %source.name, enqueued = n, "scan enqueued new versions")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.stats.scan_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(stage = STAGE, source = %source.name, error = %e, "scan failed; will try again next interval");
                    }
                }
            }
            self.stats.scans.fetch_add(1, Ordering::Relaxed);
            if !sleep_or_shutdown(self.config.populator.scan_interval, &shutdown).await {
                return Ok(());
            }
        }
    }

    async fn load_progress(&mut self) -> Result<(), StageError> {
        let records = self
            .reader
            .read_partition(&self.topics.populator_state, 0)
            .await
            .map_err(|source| StageError::Bus {
                stage: STAGE,
                source,
            })?;
        for (key, value) in records {
            let key = String::from_utf8_lossy(&key).into_owned();
            let Ok((location, _)) = serde_json::from_str::<(String, serde_json::Value)>(&key)
            else {
                continue;
            };
            let set = self.seen.entry(location).or_default();
            if value.is_some() {
                set.insert(key);
            } else {
                set.remove(&key);
            }
        }
        let total: usize = self.seen.values().map(HashSet::len).sum();
        tracing::info!(stage = STAGE, versions = total, "scan progress loaded");
        Ok(())
    }

    /// One pass over `source`; returns how many entries it enqueued.
    async fn scan(
        &mut self,
        source: &LocationConfig,
        shutdown: &CancellationToken,
    ) -> Result<usize, crate::storage::StorageError> {
        let Some(store) = self.stores.get(&source.name).cloned() else {
            return Ok(0);
        };
        let listed = list_in_order(&store).await?;
        let seen = self.seen.entry(source.name.clone()).or_default();
        let mut present = HashSet::with_capacity(listed.len());
        let mut new = Vec::new();
        for l in &listed {
            let record = progress_key(source, l);
            present.insert(record.clone());
            if seen.contains(&record) {
                continue;
            }
            let Some(rule) = rule_for(&self.config, &source.name, &l.key) else {
                continue;
            };
            if wanted(rule, l.kind) {
                new.push((record, entry_for(rule, source, Observed::from(l))));
            }
        }
        let mut enqueued = 0;
        for batch in new.chunks(ENQUEUE_BATCH) {
            let recorded = enqueue_batch(&self.publisher, &self.topics, batch).await;
            for record in &recorded {
                seen.insert(record.clone());
            }
            enqueued += recorded.len();
            self.stats
                .enqueued
                .fetch_add(recorded.len() as u64, Ordering::Relaxed);
            if recorded.len() < batch.len() {
                // The queue refused some: the next scan enqueues what is not recorded.
                return Ok(enqueued);
            }
            if shutdown.is_cancelled() {
                return Ok(enqueued);
            }
        }
        // Versions gone from the source never come back (version ids are unique): forget them.
        let gone: Vec<String> = seen.difference(&present).cloned().collect();
        for record in gone {
            if !publish_until_done(
                &self.publisher,
                &self.topics.populator_state,
                Some(0),
                &record,
                None,
                shutdown,
            )
            .await
            {
                break;
            }
            seen.remove(&record);
        }
        Ok(enqueued)
    }
}

/// Entries published at once: one round trip for many instead of one each (the producer keeps
/// them in order per partition); a batch of small entries is a few hundred KiB.
const ENQUEUE_BATCH: usize = 500;

/// Publishes `batch` (progress-record key, entry) to the replication topic, all in flight at
/// once, then the progress records of those the queue accepted. Returns the records written;
/// an entry whose record is not written is enqueued again by the next scan (harmless: the
/// replication processor recognises a version already copied).
async fn enqueue_batch(
    publisher: &Publisher,
    topics: &Topics,
    batch: &[(String, model::ReplicationEntry)],
) -> Vec<String> {
    let sent =
        super::enqueue_all(publisher, &topics.replication, batch.iter().map(|(_, e)| e)).await;
    let mut durable = Vec::new();
    for ((record, entry), outcome) in batch.iter().zip(sent) {
        match outcome {
            Ok(_) => durable.push((record, entry.enqueued_at_ms)),
            Err(e) => {
                tracing::warn!(stage = STAGE, error = %e, "entry not enqueued; the next scan tries again")
            }
        }
    }
    let progress: Vec<(&String, Vec<u8>)> = durable
        .iter()
        .map(|(record, at)| {
            let value = serde_json::json!({"schema": model::SCHEMA, "enqueued_at_ms": at});
            (*record, model::encode(&value))
        })
        .collect();
    let written = futures_util::future::join_all(progress.iter().map(|(record, value)| {
        publisher.publish_to(&topics.populator_state, 0, record, Some(value))
    }))
    .await;
    progress
        .iter()
        .zip(written)
        .filter_map(|((record, _), outcome)| outcome.is_ok().then(|| (*record).clone()))
        .collect()
}

/// The progress-record key of a listed version: location, bucket, key, and version identity
/// (the version id, or for unversioned buckets the ETag and write time).
fn progress_key(source: &LocationConfig, l: &Listed) -> String {
    let identity = match &l.version_id {
        Some(v) if v != "null" => v.clone(),
        _ => format!(
            "null:{}:{}",
            l.etag.as_deref().unwrap_or(""),
            l.last_modified_ms
        ),
    };
    serde_json::json!([source.name, [source.bucket, l.key, identity]]).to_string()
}

/// Lists `store` (all versions when versioned) with each key's versions oldest first.
async fn list_in_order(store: &Store) -> Result<Vec<Listed>, crate::storage::StorageError> {
    let mut listed = if store.is_versioned().await? {
        store.list_versions("").await?
    } else {
        store.list_current("").await?
    };
    order_oldest_first(&mut listed);
    Ok(listed)
}

/// Sorts versions by key, then oldest first. Listings give each key's versions and delete
/// markers newest first but in two separate lists; write times interleave them, and on a tie
/// the key's latest goes last and, otherwise, listing order decides.
pub fn order_oldest_first(listed: &mut [Listed]) {
    let mut indexed: Vec<(usize, Listed)> = listed.iter().cloned().enumerate().collect();
    indexed.sort_by(|(ia, a), (ib, b)| {
        a.key
            .cmp(&b.key)
            .then(a.last_modified_ms.cmp(&b.last_modified_ms))
            .then(a.is_latest.cmp(&b.is_latest))
            .then((a.kind == EntryKind::DeleteMarker).cmp(&(b.kind == EntryKind::DeleteMarker)))
            .then(ib.cmp(ia))
    });
    for (slot, (_, l)) in listed.iter_mut().zip(indexed) {
        *slot = l;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(key: &str, version: &str, kind: EntryKind, mtime: i64, latest: bool) -> Listed {
        Listed {
            key: key.into(),
            version_id: Some(version.into()),
            kind,
            size: 0,
            etag: None,
            last_modified_ms: mtime,
            is_latest: latest,
        }
    }

    #[test]
    fn orders_each_keys_versions_oldest_first() {
        // As a listing returns them: versions newest first, then delete markers.
        let mut l = vec![
            listed("a", "v3", EntryKind::Object, 30, true),
            listed("a", "v2", EntryKind::Object, 20, false),
            listed("a", "v1", EntryKind::Object, 10, false),
            listed("b", "w1", EntryKind::Object, 5, false),
            listed("a", "d1", EntryKind::DeleteMarker, 25, false),
            listed("b", "d2", EntryKind::DeleteMarker, 6, true),
        ];
        order_oldest_first(&mut l);
        let order: Vec<&str> = l
            .iter()
            .map(|l| l.version_id.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(order, ["v1", "v2", "d1", "v3", "w1", "d2"]);
    }

    #[test]
    fn ties_keep_listing_order_reversed_and_latest_last() {
        let mut l = vec![
            listed("a", "v3", EntryKind::Object, 10, true),
            listed("a", "v2", EntryKind::Object, 10, false),
            listed("a", "v1", EntryKind::Object, 10, false),
        ];
        order_oldest_first(&mut l);
        let order: Vec<&str> = l
            .iter()
            .map(|l| l.version_id.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(order, ["v1", "v2", "v3"]);
    }
}

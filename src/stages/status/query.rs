//! Reading the status processor's changelog from outside the stage: what the admin API shows
//! (a version's status, a target's backlog) on any instance, whichever one owns the partition.
//!
//! Each call reads every partition of `<p>status-state` to its end and keeps the latest record
//! per entry; the changelog holds live entries only (in flight, FAILED, or COMPLETED within
//! `status.completed_retention`), so that cost follows the work in flight, not the history.
//! A version whose record is gone is answered by the targets themselves: each copy carries the
//! source version it was made from ([`held_by_targets`]), as S3 reports replication status on
//! the object.

use std::collections::BTreeMap;

use crate::bus::{Bus, BusError, Topics};
use crate::config::Config;
use crate::model::EntryKind;
use crate::model::{self, EntryState};
use crate::stages::replication::{STAMP_ETAG, STAMP_MTIME, STAMP_VERSION};
use crate::storage::{Head, StorageError, Stores};

/// The latest state of every entry `keep` selects, by entry id.
pub async fn states(
    bus: &Bus,
    topics: &Topics,
    keep: impl Fn(&EntryState) -> bool,
) -> Result<BTreeMap<String, EntryState>, BusError> {
    let reader = bus.state_reader()?;
    let partitions = bus.partition_count(&topics.status_state).await?;
    let mut latest = BTreeMap::new();
    for partition in 0..partitions {
        for (key, value) in reader
            .read_partition(&topics.status_state, partition)
            .await?
        {
            let id = String::from_utf8_lossy(&key).into_owned();
            let state = value.and_then(|v| model::decode::<EntryState>("entry state", &v).ok());
            match state {
                Some(state) if keep(&state) => {
                    latest.insert(id, state);
                }
                _ => {
                    latest.remove(&id);
                }
            }
        }
    }
    Ok(latest)
}

/// Per target: entries that reached the status processor and are not final there yet
/// (PENDING or PROCESSING, e.g. waiting in the retry topic or behind a pause).
pub fn backlog(states: &BTreeMap<String, EntryState>) -> BTreeMap<String, u64> {
    let mut backlog = BTreeMap::new();
    for state in states.values() {
        for (target, t) in &state.targets {
            *backlog.entry(target.clone()).or_default() += u64::from(!t.status.is_final());
        }
    }
    backlog
}

/// The most versions of one key a status answer HEADs on each target, so its cost does not
/// grow with the key's history (older copies are not reported).
const VERSIONS_ASKED: usize = 100;

/// One source version as the targets hold it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldVersion {
    /// The rule whose targets hold it.
    pub rule: String,
    pub size: u64,
    /// The source's ETag, as the copy was stamped with it.
    pub etag: Option<String>,
    /// The source write time the copy was stamped with.
    pub last_modified_ms: Option<i64>,
    /// Per target of the rule holding a copy: the copy's own version id.
    pub targets: BTreeMap<String, Option<String>>,
}

/// Per source version id (`"null"` for an unversioned source), what the targets of the rules
/// covering `bucket/key` hold of it, read from ferry's stamps on each copy: one listing of the
/// key's versions and a HEAD per version (the newest [`VERSIONS_ASKED`]), per target.
pub async fn held_by_targets(
    config: &Config,
    stores: &Stores,
    bucket: &str,
    key: &str,
) -> Result<BTreeMap<String, HeldVersion>, StorageError> {
    let mut held: BTreeMap<String, HeldVersion> = BTreeMap::new();
    let rules = config.rules.iter().filter(|r| {
        key.starts_with(&r.prefix)
            && config
                .locations
                .get(&r.source)
                .is_some_and(|l| l.bucket == bucket)
    });
    for rule in rules {
        for target in &rule.targets {
            let Some(store) = stores.get(target) else {
                continue;
            };
            let versions = store.key_versions(key).await?;
            let objects = versions.into_iter().filter(|l| l.kind == EntryKind::Object);
            for listed in objects.take(VERSIONS_ASKED) {
                let Head::Object(head) = store.head(key, listed.version_id.as_deref()).await?
                else {
                    continue;
                };
                let Some(source_version) = head.meta.user.get(STAMP_VERSION) else {
                    continue;
                };
                let version = held
                    .entry(source_version.clone())
                    .or_insert_with(|| HeldVersion {
                        rule: rule.name.clone(),
                        size: head.size,
                        etag: head
                            .meta
                            .user
                            .get(STAMP_ETAG)
                            .filter(|e| !e.is_empty())
                            .cloned(),
                        last_modified_ms: head
                            .meta
                            .user
                            .get(STAMP_MTIME)
                            .and_then(|m| m.parse().ok()),
                        targets: BTreeMap::new(),
                    });
                version
                    .targets
                    .insert(target.clone(), head.version_id.clone());
            }
        }
    }
    Ok(held)
}

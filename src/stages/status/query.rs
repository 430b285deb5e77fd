//! A version's replication status once its record is gone from the status changelog (which
//! holds live entries only: in flight, FAILED, or COMPLETED within
//! `status.completed_retention`; the admin API reads those through its views): the targets
//! themselves say, since each copy carries the source version it was made from
//! ([`held_by_targets`]), as S3 reports replication status on the object.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::model::stamps::Stamps;
use crate::model::EntryKind;
use crate::storage::{Head, StorageError, Stores};

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
                let Some(stamps) = Stamps::read(&head.meta.user) else {
                    continue;
                };
                let version = held.entry(stamps.version).or_insert_with(|| HeldVersion {
                    rule: rule.name.clone(),
                    size: head.size,
                    etag: Some(stamps.etag).filter(|e| !e.is_empty()),
                    last_modified_ms: stamps.mtime_ms,
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

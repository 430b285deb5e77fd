//! The scan feed's progress: which source versions it has enqueued, kept on local disk.
//!
//! The truth is the compacted populator-state topic (one record per enqueued version, a
//! tombstone once the version is gone from the source); this store is its local cache, as a
//! Kafka Streams state store is: a redb file with the versions, sorted by location, bucket
//! and key, plus a checkpoint — the changelog offset it holds everything before. A start
//! replays only the changelog after the checkpoint (all of it into a new or temporary store),
//! a record at a time, so memory stays O(batch) whatever the source holds.

use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use crate::bus::{BusError, StateReader};

/// (location, bucket, key, version identity) of every enqueued version.
const VERSIONS: TableDefinition<(&str, &str, &str, &str), ()> = TableDefinition::new("versions");
/// `checkpoint` → the changelog offset the store holds everything before; `topic` is kept in
/// [`TOPIC`].
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// `name` → the changelog topic this store caches.
const TOPIC: TableDefinition<&str, &str> = TableDefinition::new("topic");
/// The file's cache: the store is read in key order, so a small one serves.
const CACHE_BYTES: usize = 16 << 20;
/// Changelog records applied per transaction while catching up.
const BATCH: usize = 4096;

/// One enqueued version: location, bucket, key, identity (version id, or for unversioned
/// stores `null:ETAG:MTIME`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub location: String,
    pub bucket: String,
    pub key: String,
    pub identity: String,
}

impl Version {
    /// The changelog record key: `[location, [bucket, key, identity]]` as JSON.
    pub fn record_key(&self) -> String {
        serde_json::json!([self.location, [self.bucket, self.key, self.identity]]).to_string()
    }

    /// The version a changelog record key names; `None` for other records of the topic
    /// (a backfill's progress).
    pub fn from_record_key(key: &[u8]) -> Option<Self> {
        let (location, (bucket, key, identity)) =
            serde_json::from_slice::<(String, (String, String, String))>(key).ok()?;
        Some(Self {
            location,
            bucket,
            key,
            identity,
        })
    }

    fn tuple(&self) -> (&str, &str, &str, &str) {
        (&self.location, &self.bucket, &self.key, &self.identity)
    }
}

/// Why the progress store failed.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    #[error("scan progress store {path}: {message}")]
    Store { path: String, message: String },
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The local store of the scan feed's progress.
pub struct Progress {
    db: Database,
    /// Changes applied since the last durable commit.
    dirty: std::sync::atomic::AtomicBool,
    path: PathBuf,
    /// Removed when dropped (no state directory configured).
    temporary: bool,
    topic: String,
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Progress {
    /// Opens `dir/scan-progress.redb` for the changelog `topic` (starting empty if it cached
    /// another topic), or with no `dir` a temporary file removed when the store is dropped.
    pub fn open(dir: Option<&Path>, topic: &str) -> Result<Self, ProgressError> {
        let (path, temporary) = match dir {
            Some(dir) => (dir.join("scan-progress.redb"), false),
            None => (temporary_path(topic), true),
        };
        let fail = |message: String| ProgressError::Store {
            path: path.display().to_string(),
            message,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail(format!("cannot create: {e}")))?;
        }
        if temporary {
            let _ = std::fs::remove_file(&path);
            remove_orphans();
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    fail("in use by another ferry process (one populator per state_dir)".into())
                }
                e => fail(e.to_string()),
            })?;
        let store = Self {
            db,
            dirty: Default::default(),
            path,
            temporary,
            topic: topic.to_string(),
        };
        store.adopt_topic()?;
        Ok(store)
    }

    fn error(&self, e: impl std::fmt::Display) -> ProgressError {
        ProgressError::Store {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Makes sure the store caches this topic: a store of another one is emptied.
    fn adopt_topic(&self) -> Result<(), ProgressError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut names = txn.open_table(TOPIC).map_err(|e| self.error(e))?;
            let cached = names
                .get("name")
                .map_err(|e| self.error(e))?
                .map(|v| v.value().to_string());
            if cached.as_deref() != Some(&self.topic) {
                names
                    .insert("name", self.topic.as_str())
                    .map_err(|e| self.error(e))?;
                drop(names);
                clear(&txn).map_err(|e| self.error(e))?;
            }
            txn.open_table(VERSIONS).map_err(|e| self.error(e))?;
            txn.open_table(META).map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))
    }

    /// The changelog offset the store holds everything before.
    pub fn checkpoint(&self) -> Result<i64, ProgressError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let meta = txn.open_table(META).map_err(|e| self.error(e))?;
        Ok(meta
            .get("checkpoint")
            .map_err(|e| self.error(e))?
            .map_or(0, |v| v.value()))
    }

    /// Applies the changelog after the checkpoint; returns how many records it applied. A
    /// checkpoint past the topic's end (the topic was recreated) empties the store first.
    pub async fn catch_up(&self, reader: &StateReader) -> Result<u64, ProgressError> {
        let mut from = self.checkpoint()?;
        loop {
            let mut applied = 0u64;
            let mut pending: Vec<(Version, bool)> = Vec::new();
            let mut failed = None;
            let end = reader
                .replay(&self.topic, 0, from, |_, key, payload| {
                    if failed.is_some() {
                        return;
                    }
                    if let Some(v) = Version::from_record_key(key) {
                        pending.push((v, payload.is_some()));
                    }
                    applied += 1;
                    if pending.len() >= BATCH {
                        failed = self.apply(&std::mem::take(&mut pending), None).err();
                    }
                })
                .await?;
            if let Some(e) = failed {
                return Err(e);
            }
            if end < from {
                tracing::warn!(path = %self.path.display(), checkpoint = from, end, "the scan progress store is ahead of its changelog (recreated?); rebuilding it");
                self.reset()?;
                from = 0;
                continue;
            }
            self.apply(&pending, Some(end))?;
            self.flush()?;
            return Ok(applied);
        }
    }

    /// Empties the store.
    fn reset(&self) -> Result<(), ProgressError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        clear(&txn).map_err(|e| self.error(e))?;
        txn.commit().map_err(|e| self.error(e))
    }

    /// Adds (`true`) or removes (`false`) versions, and moves the checkpoint to `checkpoint`
    /// if given and later. Not durable until [`Self::flush`]: a crash loses the changes
    /// together with the checkpoint, and the next start replays them from the changelog.
    pub fn apply(
        &self,
        changes: &[(Version, bool)],
        checkpoint: Option<i64>,
    ) -> Result<(), ProgressError> {
        let mut txn = self.db.begin_write().map_err(|e| self.error(e))?;
        txn.set_durability(Durability::None)
            .map_err(|e| self.error(e))?;
        {
            let mut versions = txn.open_table(VERSIONS).map_err(|e| self.error(e))?;
            for (v, present) in changes {
                if *present {
                    versions.insert(v.tuple(), ()).map_err(|e| self.error(e))?;
                } else {
                    versions.remove(v.tuple()).map_err(|e| self.error(e))?;
                }
            }
            if let Some(at) = checkpoint {
                let mut meta = txn.open_table(META).map_err(|e| self.error(e))?;
                let current = meta
                    .get("checkpoint")
                    .map_err(|e| self.error(e))?
                    .map_or(0, |v| v.value());
                if at > current {
                    meta.insert("checkpoint", at).map_err(|e| self.error(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.error(e))?;
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Makes every change so far durable (one fsync; nothing if nothing changed).
    pub fn flush(&self) -> Result<(), ProgressError> {
        if !self.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        txn.commit().map_err(|e| self.error(e))
    }

    /// Whether `v` is recorded as enqueued.
    pub fn contains(&self, v: &Version) -> Result<bool, ProgressError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let versions = txn.open_table(VERSIONS).map_err(|e| self.error(e))?;
        Ok(versions
            .get(v.tuple())
            .map_err(|e| self.error(e))?
            .is_some())
    }

    /// The recorded versions of `location`/`bucket` whose key is after `after` (from the
    /// first key when `None`) and at most `upto` (to the last when `None`), in key order.
    pub fn between(
        &self,
        location: &str,
        bucket: &str,
        after: Option<&str>,
        upto: Option<&str>,
    ) -> Result<Vec<Version>, ProgressError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let versions = txn.open_table(VERSIONS).map_err(|e| self.error(e))?;
        let start = (location, bucket, after.unwrap_or(""), "");
        let mut found = Vec::new();
        for row in versions.range(start..).map_err(|e| self.error(e))? {
            let (k, _) = row.map_err(|e| self.error(e))?;
            let (loc, b, key, identity) = k.value();
            if loc != location || b != bucket || upto.is_some_and(|u| key > u) {
                break;
            }
            if after.is_some_and(|a| key <= a) {
                continue;
            }
            found.push(Version {
                location: loc.to_string(),
                bucket: b.to_string(),
                key: key.to_string(),
                identity: identity.to_string(),
            });
        }
        Ok(found)
    }

    /// How many versions are recorded (all locations).
    pub fn len(&self) -> Result<u64, ProgressError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let versions = txn.open_table(VERSIONS).map_err(|e| self.error(e))?;
        versions.len().map_err(|e| self.error(e))
    }
}

fn clear(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.delete_table(VERSIONS)?;
    txn.delete_table(META)?;
    txn.open_table(VERSIONS)?;
    txn.open_table(META)?;
    Ok(())
}

/// Removes the temporary stores of ferry processes that are gone (killed before they could
/// remove their own), so crashes do not fill the temporary directory.
fn remove_orphans() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name
            .strip_prefix("ferry-")
            .and_then(|n| n.strip_suffix(".redb"))
        else {
            continue;
        };
        // ferry-TOPIC-PID-MS.redb
        let mut parts = stem.rsplit('-');
        let (Some(_), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A file of this process's own under the temporary directory.
fn temporary_path(topic: &str) -> PathBuf {
    let safe: String = topic
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    std::env::temp_dir().join(format!(
        "ferry-{safe}-{}-{}.redb",
        std::process::id(),
        crate::model::now_ms()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(key: &str, identity: &str) -> Version {
        Version {
            location: "src".into(),
            bucket: "b".into(),
            key: key.into(),
            identity: identity.into(),
        }
    }

    #[test]
    fn record_keys_round_trip_and_other_records_are_not_versions() {
        let version = v("a/\"quoted\"", "null:etag:5");
        assert_eq!(
            Version::from_record_key(version.record_key().as_bytes()),
            Some(version)
        );
        assert_eq!(Version::from_record_key(b"backfill/rule"), None);
    }

    #[test]
    fn ranges_are_by_key_and_bounded_to_one_bucket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Progress::open(Some(dir.path()), "t").expect("open");
        let mut other = v("a", "1");
        other.bucket = "c".into();
        let all = [v("a", "1"), v("a", "2"), v("b", "1"), v("c/d", "1"), other];
        let changes: Vec<_> = all.iter().map(|x| (x.clone(), true)).collect();
        p.apply(&changes, Some(7)).expect("apply");
        let keys = |after, upto| {
            p.between("src", "b", after, upto)
                .expect("between")
                .into_iter()
                .map(|x| format!("{}@{}", x.key, x.identity))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(None, None), ["a@1", "a@2", "b@1", "c/d@1"]);
        assert_eq!(keys(Some("a"), Some("b")), ["b@1"]);
        assert_eq!(keys(None, Some("a")), ["a@1", "a@2"]);
        assert_eq!(keys(Some("b"), None), ["c/d@1"]);
        assert!(p.contains(&v("a", "2")).expect("contains"));
        p.apply(&[(v("a", "2"), false)], Some(3)).expect("apply");
        assert!(!p.contains(&v("a", "2")).expect("contains"));
        assert_eq!(p.checkpoint().expect("checkpoint"), 7, "never moves back");
    }

    #[test]
    fn a_store_of_another_topic_starts_empty_and_a_temporary_one_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let p = Progress::open(Some(dir.path()), "t").expect("open");
            p.apply(&[(v("a", "1"), true)], Some(1)).expect("apply");
            p.flush().expect("flush");
        }
        let p = Progress::open(Some(dir.path()), "t").expect("reopen");
        assert_eq!(p.len().expect("len"), 1, "kept across opens");
        drop(p);
        let p = Progress::open(Some(dir.path()), "other").expect("open other");
        assert_eq!(p.len().expect("len"), 0);
        assert_eq!(p.checkpoint().expect("checkpoint"), 0);
        // A killed process's temporary store is removed by the next one; a live one's is not.
        let orphan = std::env::temp_dir().join("ferry-t-4294967290-1.redb");
        let alive = std::env::temp_dir().join(format!("ferry-t-{}-1.redb", std::process::id()));
        std::fs::write(&orphan, b"").expect("orphan");
        std::fs::write(&alive, b"").expect("alive");
        let temp = Progress::open(None, "t").expect("temporary");
        if cfg!(target_os = "linux") {
            assert!(!orphan.exists(), "orphan removed");
        }
        assert!(alive.exists());
        let _ = std::fs::remove_file(&alive);
        let path = temp.path.clone();
        assert!(path.exists());
        drop(temp);
        assert!(!path.exists());
    }
}

//! The scan feed: lists each source bucket every `scan_interval` and enqueues new versions.
//!
//! A pass lists the source a page at a time and merges each page with the [`Progress`]
//! store — the versions already enqueued, on local disk, sorted by key — over the same key
//! range: a listed version the store lacks is new (enqueued, then recorded); a recorded one
//! the listing lacks is gone from the source (forgotten). Memory is O(page) whatever the
//! bucket holds; a pass costs one LIST request per 1,000 versions. Every record also goes to
//! the compacted populator-state topic, which the store caches, so a restart does not enqueue
//! the bucket again. An entry is published before its progress record: a crash in between
//! enqueues it twice, which the replication processor recognises.

use std::collections::HashSet;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::progress::{Progress, ProgressError, Version};
use super::{entry_for, rule_for, wanted, Observed};
use crate::bus::{Publisher, StateReader, Topics};
use crate::config::{Config, LocationConfig};
use crate::model::{self, EntryKind};
use crate::stages::board::StageStatus;
use crate::stages::{sleep_or_shutdown, StageError};
use crate::storage::{Listed, StorageError, Stores};

const STAGE: &str = "populator";

/// Why a pass stopped early.
#[derive(Debug, thiserror::Error)]
enum ScanError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Progress(#[from] ProgressError),
}

/// The scan feed.
pub struct Scanner {
    config: Arc<Config>,
    stores: Stores,
    publisher: Publisher,
    topics: Topics,
    reader: StateReader,
    /// Its counters on the stage board: a pass over one source is one message.
    status: Arc<StageStatus>,
}

/// What one pass did.
#[derive(Debug, Default)]
struct Passed {
    listed: u64,
    enqueued: u64,
    forgotten: u64,
    requests: u64,
    /// The pass ended early (the queue refused entries, or shutdown): the next one goes on.
    cut_short: bool,
}

impl Passed {
    /// Adds what one settled key range did.
    fn add(&mut self, range: Passed) {
        self.enqueued += range.enqueued;
        self.forgotten += range.forgotten;
        self.cut_short |= range.cut_short;
    }
}

impl Scanner {
    pub fn new(
        config: Arc<Config>,
        stores: Stores,
        publisher: Publisher,
        topics: Topics,
        reader: StateReader,
        status: Arc<StageStatus>,
    ) -> Self {
        Self {
            config,
            stores,
            publisher,
            topics,
            reader,
            status,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StageError> {
        let progress = self.load_progress().await?;
        loop {
            let sources: Vec<LocationConfig> = self.config.sources().cloned().collect();
            for source in &sources {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                let started = std::time::Instant::now();
                self.status.received();
                self.status.started();
                let scanned = self.scan(&progress, source, &shutdown).await;
                self.status.finished();
                match scanned {
                    Ok(p) => {
                        let m = crate::metrics::metrics();
                        m.scan_list_requests.inc_by(p.requests);
                        if !p.cut_short {
                            m.scan_passes.inc();
                        }
                        let level_info = p.enqueued > 0 || p.forgotten > 0;
                        if level_info {
                            tracing::info!(stage = STAGE, source = %source.name, listed = p.listed, enqueued = p.enqueued, forgotten = p.forgotten, list_requests = p.requests, seconds = started.elapsed().as_secs_f64(), cut_short = p.cut_short, "scan pass done");
                        } else {
                            tracing::debug!(stage = STAGE, source = %source.name, listed = p.listed, list_requests = p.requests, "scan pass found nothing new");
                        }
                    }
                    Err(e) => {
                        tracing::error!(stage = STAGE, source = %source.name, error = %e, "scan failed; will try again next interval");
                        self.status.error(format!("scan of {}: {e}", source.name));
                    }
                }
            }
            if let Err(e) = progress.flush() {
                tracing::warn!(stage = STAGE, error = %e, "cannot make the scan progress durable; a restart replays it from the topic");
            }
            if !sleep_or_shutdown(self.config.populator.scan_interval, &shutdown).await {
                return Ok(());
            }
        }
    }

    /// Opens the progress store and brings it up to date with the populator-state topic.
    async fn load_progress(&self) -> Result<Progress, StageError> {
        let state = |e: ProgressError| match e {
            ProgressError::Bus(source) => StageError::Bus {
                stage: STAGE,
                source,
            },
            e => StageError::State {
                stage: STAGE,
                message: e.to_string(),
            },
        };
        let dir = self.config.populator.state_dir.as_deref();
        let progress = Progress::open(dir, &self.topics.populator_state).map_err(state)?;
        let from = progress.checkpoint().map_err(state)?;
        let applied = progress.catch_up(&self.reader).await.map_err(state)?;
        tracing::info!(
            stage = STAGE,
            from_offset = from,
            applied,
            versions = progress.len().unwrap_or(0),
            "scan progress loaded"
        );
        Ok(progress)
    }

    /// One pass over `source`.
    async fn scan(
        &self,
        progress: &Progress,
        source: &LocationConfig,
        shutdown: &CancellationToken,
    ) -> Result<Passed, ScanError> {
        let Some(store) = self.stores.get(&source.name).cloned() else {
            return Ok(Passed::default());
        };
        let versioned = store.is_versioned().await?;
        let mut pages = store.pages("", versioned);
        let mut merge = Merge::new(&source.name, store.bucket());
        let mut passed = Passed::default();
        loop {
            let page = pages.next().await;
            passed.requests = pages.requests();
            let Some(page) = page? else {
                let rest = merge.finish();
                let settled = self.settle(progress, source, &mut merge, rest, None, shutdown);
                passed.add(settled.await?);
                return Ok(passed);
            };
            passed.listed += page.len() as u64;
            if let Some((batch, upto)) = merge.complete_keys(page) {
                let settled =
                    self.settle(progress, source, &mut merge, batch, Some(upto), shutdown);
                passed.add(settled.await?);
                // Durable a page at a time: a crash replays at most a page's records from the
                // topic (the changelog keeps tombstones only so long).
                progress.flush()?;
            }
            if passed.cut_short {
                return Ok(passed);
            }
        }
    }

    /// Enqueues the new versions of `batch` (every version of the keys after the merge's last
    /// key up to `upto`, or to the end when `None`) and forgets the recorded ones it lacks.
    async fn settle(
        &self,
        progress: &Progress,
        source: &LocationConfig,
        merge: &mut Merge,
        batch: Vec<Listed>,
        upto: Option<String>,
        shutdown: &CancellationToken,
    ) -> Result<Passed, ScanError> {
        let mut passed = Passed::default();
        let (new, gone) = merge.compare(progress, &batch, upto)?;
        let new: Vec<(Version, model::ReplicationEntry)> = new
            .into_iter()
            .filter_map(|(version, l)| {
                let rule = rule_for(&self.config, &source.name, &l.key)?;
                wanted(rule, l.kind).then(|| (version, entry_for(rule, source, Observed::from(l))))
            })
            .collect();
        for chunk in new.chunks(ENQUEUE_BATCH) {
            let recorded = enqueue_batch(&self.publisher, &self.topics, chunk).await;
            let n = apply_written(progress, &recorded, true)?;
            passed.enqueued += n;
            if (n as usize) < chunk.len() || shutdown.is_cancelled() {
                // The queue refused some: the next pass enqueues what is not recorded.
                passed.cut_short = true;
                return Ok(passed);
            }
        }
        // Versions gone from the source never come back (version ids are unique): forget them.
        for chunk in gone.chunks(ENQUEUE_BATCH) {
            let forgotten = forget_batch(&self.publisher, &self.topics, chunk).await;
            let n = apply_written(progress, &forgotten, false)?;
            passed.forgotten += n;
            if (n as usize) < chunk.len() || shutdown.is_cancelled() {
                passed.cut_short = true;
                return Ok(passed);
            }
        }
        Ok(passed)
    }
}

/// A key range compared: the listed versions not recorded (with their listing), and the
/// recorded versions not listed.
type Compared<'b> = (Vec<(Version, &'b Listed)>, Vec<Version>);

/// The merge of one pass's listing with the progress store, a key range at a time.
struct Merge {
    location: String,
    bucket: String,
    /// Every key up to this one is settled.
    after: Option<String>,
    /// Versions of the last listed key, held back until its next page shows it is complete
    /// (a key's versions may span pages).
    held: Vec<Listed>,
    /// Whether the listing came in key order so far; if not, nothing is forgotten this pass
    /// (a store whose order differs from byte order must not look like deletions).
    ordered: bool,
}

impl Merge {
    fn new(location: &str, bucket: &str) -> Self {
        Self {
            location: location.to_string(),
            bucket: bucket.to_string(),
            after: None,
            held: Vec::new(),
            ordered: true,
        }
    }

    /// Adds a page; returns the versions of the keys it completes and the last such key
    /// (`None` while the page shows a single key, whose versions may go on in the next).
    fn complete_keys(&mut self, page: Vec<Listed>) -> Option<(Vec<Listed>, String)> {
        self.held.extend(page);
        let last = self.held.iter().map(|l| &l.key).max()?.clone();
        let (hold, done): (Vec<Listed>, Vec<Listed>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|l| l.key == last);
        self.held = hold;
        let upto = done.iter().map(|l| &l.key).max()?.clone();
        Some((done, upto))
    }

    /// The versions still held, at the end of the listing.
    fn finish(&mut self) -> Vec<Listed> {
        std::mem::take(&mut self.held)
    }

    /// The versions of `batch` not recorded (in order, each key's oldest first) and the
    /// recorded versions of the same key range the batch lacks; moves the merge past `upto`.
    fn compare<'b>(
        &mut self,
        progress: &Progress,
        batch: &'b [Listed],
        upto: Option<String>,
    ) -> Result<Compared<'b>, ProgressError> {
        if let (Some(after), Some(first)) = (&self.after, batch.iter().map(|l| &l.key).min()) {
            if first <= after && self.ordered {
                tracing::warn!(stage = STAGE, source = %self.location, key = %first, after = %after, "the listing is not in key order; nothing is forgotten this pass");
                self.ordered = false;
            }
        }
        let mut ordered: Vec<&Listed> = batch.iter().collect();
        order_refs_oldest_first(&mut ordered);
        let mut new = Vec::new();
        let mut listed = HashSet::with_capacity(batch.len());
        let recorded: HashSet<Version> = if self.ordered {
            progress
                .between(
                    &self.location,
                    &self.bucket,
                    self.after.as_deref(),
                    upto.as_deref(),
                )?
                .into_iter()
                .collect()
        } else {
            HashSet::new()
        };
        for l in ordered {
            let version = self.version(l);
            let known = if self.ordered {
                recorded.contains(&version)
            } else {
                progress.contains(&version)?
            };
            listed.insert(version.clone());
            if !known {
                new.push((version, l));
            }
        }
        let mut gone: Vec<Version> = recorded.difference(&listed).cloned().collect();
        gone.sort();
        if upto.is_some() {
            self.after = upto;
        }
        Ok((new, gone))
    }

    /// The progress record of a listed version: its identity is the version id, or for
    /// unversioned stores the ETag and write time.
    fn version(&self, l: &Listed) -> Version {
        let identity = match &l.version_id {
            Some(v) if v != "null" => v.clone(),
            _ => format!(
                "null:{}:{}",
                l.etag.as_deref().unwrap_or(""),
                l.last_modified_ms
            ),
        };
        Version {
            location: self.location.clone(),
            bucket: self.bucket.clone(),
            key: l.key.clone(),
            identity,
        }
    }
}

/// Records in the progress store the versions whose changelog records were `written` (with
/// their offsets) as present or gone, moving its checkpoint past them; returns how many.
fn apply_written(
    progress: &Progress,
    written: &[(Version, i64)],
    present: bool,
) -> Result<u64, ProgressError> {
    let checkpoint = written.iter().map(|(_, at)| at + 1).max();
    let changes: Vec<(Version, bool)> = written.iter().map(|(v, _)| (v.clone(), present)).collect();
    progress.apply(&changes, checkpoint)?;
    Ok(changes.len() as u64)
}

/// Entries published at once: one round trip for many instead of one each (the producer keeps
/// them in order per partition); a batch of small entries is a few hundred KiB.
const ENQUEUE_BATCH: usize = 500;

/// Publishes `batch` to the replication topic, all in flight at once, then the progress
/// records of those the queue accepted. Returns the versions recorded with their record's
/// changelog offset; an entry whose record is not written is enqueued again by the next
/// pass (harmless: the replication processor recognises a version already copied).
async fn enqueue_batch(
    publisher: &Publisher,
    topics: &Topics,
    batch: &[(Version, model::ReplicationEntry)],
) -> Vec<(Version, i64)> {
    let sent =
        super::enqueue_all(publisher, &topics.replication, batch.iter().map(|(_, e)| e)).await;
    let mut durable = Vec::new();
    for ((version, entry), outcome) in batch.iter().zip(sent) {
        match outcome {
            Ok(_) => durable.push((version, entry.enqueued_at_ms)),
            Err(e) => {
                tracing::warn!(stage = STAGE, error = %e, "entry not enqueued; the next scan tries again")
            }
        }
    }
    let records: Vec<(&Version, String, Vec<u8>)> = durable
        .iter()
        .map(|(version, at)| {
            let value = serde_json::json!({"schema": model::SCHEMA, "enqueued_at_ms": at});
            (*version, version.record_key(), model::encode(&value))
        })
        .collect();
    let written =
        futures_util::future::join_all(records.iter().map(|(_, key, value)| {
            publisher.publish_to(&topics.populator_state, 0, key, Some(value))
        }))
        .await;
    records
        .iter()
        .zip(written)
        .filter_map(|((version, _, _), outcome)| {
            outcome.ok().map(|(_, offset)| ((*version).clone(), offset))
        })
        .collect()
}

/// Tombstones the progress records of `gone`; returns those written with their offsets.
async fn forget_batch(
    publisher: &Publisher,
    topics: &Topics,
    gone: &[Version],
) -> Vec<(Version, i64)> {
    let keys: Vec<String> = gone.iter().map(Version::record_key).collect();
    let written = futures_util::future::join_all(
        keys.iter()
            .map(|key| publisher.publish_to(&topics.populator_state, 0, key, None)),
    )
    .await;
    gone.iter()
        .zip(written)
        .filter_map(|(version, outcome)| match outcome {
            Ok((_, offset)) => Some((version.clone(), offset)),
            Err(e) => {
                tracing::warn!(stage = STAGE, error = %e, "progress record not removed; the next scan tries again");
                None
            }
        })
        .collect()
}

/// Sorts versions by key, then oldest first. Listings give each key's versions and delete
/// markers newest first but in two separate lists; write times interleave them, and on a tie
/// the key's latest goes last and, otherwise, listing order decides.
pub fn order_oldest_first(listed: &mut [Listed]) {
    let mut refs: Vec<&Listed> = listed.iter().collect();
    order_refs_oldest_first(&mut refs);
    let sorted: Vec<Listed> = refs.into_iter().cloned().collect();
    for (slot, l) in listed.iter_mut().zip(sorted) {
        *slot = l;
    }
}

/// [`order_oldest_first`] over references.
fn order_refs_oldest_first(listed: &mut Vec<&Listed>) {
    let mut indexed: Vec<(usize, &Listed)> = listed.iter().copied().enumerate().collect();
    indexed.sort_by(|(ia, a), (ib, b)| {
        a.key
            .cmp(&b.key)
            .then(a.last_modified_ms.cmp(&b.last_modified_ms))
            .then(a.is_latest.cmp(&b.is_latest))
            .then((a.kind == EntryKind::DeleteMarker).cmp(&(b.kind == EntryKind::DeleteMarker)))
            .then(ib.cmp(ia))
    });
    *listed = indexed.into_iter().map(|(_, l)| l).collect();
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

    fn progress() -> (tempfile::TempDir, Progress) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Progress::open(Some(dir.path()), "t").expect("open");
        (dir, p)
    }

    /// Runs a pass over `pages` as the scanner does, recording what is new and forgetting
    /// what is gone; returns (new, gone) as `key@version`.
    fn pass(p: &Progress, pages: Vec<Vec<Listed>>) -> (Vec<String>, Vec<String>) {
        let mut merge = Merge::new("src", "b");
        let (mut new, mut gone) = (Vec::new(), Vec::new());
        let mut settle = |merge: &mut Merge, batch: Vec<Listed>, upto: Option<String>| {
            let (n, g) = merge.compare(p, &batch, upto).expect("compare");
            let mut changes: Vec<(Version, bool)> =
                n.iter().map(|(v, _)| (v.clone(), true)).collect();
            changes.extend(g.iter().map(|v| (v.clone(), false)));
            p.apply(&changes, None).expect("apply");
            new.extend(n.iter().map(|(v, _)| format!("{}@{}", v.key, v.identity)));
            gone.extend(g.iter().map(|v| format!("{}@{}", v.key, v.identity)));
        };
        for page in pages {
            if let Some((batch, upto)) = merge.complete_keys(page) {
                settle(&mut merge, batch, Some(upto));
            }
        }
        let rest = merge.finish();
        settle(&mut merge, rest, None);
        (new, gone)
    }

    fn obj(key: &str, version: &str, mtime: i64) -> Listed {
        listed(key, version, EntryKind::Object, mtime, false)
    }

    #[test]
    fn a_pass_enqueues_new_versions_once_and_forgets_gone_ones() {
        let (_dir, p) = progress();
        // "b"'s versions span three pages, newest first as a listing gives them.
        let pages = vec![
            vec![obj("a", "1", 1), obj("b", "3", 3)],
            vec![obj("b", "2", 2)],
            vec![obj("b", "1", 1), obj("c", "1", 1)],
        ];
        let (new, gone) = pass(&p, pages.clone());
        assert_eq!(
            new,
            ["a@1", "b@1", "b@2", "b@3", "c@1"],
            "each key oldest first"
        );
        assert!(gone.is_empty());
        let (new, gone) = pass(&p, pages);
        assert!(new.is_empty(), "nothing twice: {new:?}");
        assert!(gone.is_empty());
        // "a" deleted, one version of "b" removed, "c" overwritten, "d" added; keys before,
        // between and after the listed ones are all compared.
        let pages = vec![
            vec![obj("b", "3", 3), obj("b", "1", 1)],
            vec![obj("c", "2", 5), obj("d", "1", 1)],
        ];
        let (new, gone) = pass(&p, pages);
        assert_eq!(new, ["c@2", "d@1"]);
        assert_eq!(gone, ["a@1", "b@2", "c@1"]);
        // An empty listing forgets everything.
        let (new, gone) = pass(&p, vec![vec![]]);
        assert!(new.is_empty());
        assert_eq!(gone, ["b@1", "b@3", "c@2", "d@1"]);
        assert_eq!(p.len().expect("len"), 0);
    }

    #[test]
    fn a_listing_out_of_key_order_costs_a_second_enqueue_at_most() {
        let (_dir, p) = progress();
        let keys = ["a", "b", "c", "e", "f"];
        pass(&p, vec![keys.iter().map(|k| obj(k, "1", 1)).collect()]);
        // A server whose order is not byte order: "b" comes after "e".
        let pages = vec![
            vec![obj("a", "1", 1), obj("c", "1", 1), obj("e", "1", 1)],
            vec![obj("b", "1", 1), obj("f", "1", 1)],
        ];
        let (new, gone) = pass(&p, pages);
        assert_eq!(
            gone,
            ["b@1"],
            "seen missing from its range before the disorder shows"
        );
        assert_eq!(new, ["b@1"], "enqueued again, never lost");
        assert_eq!(p.len().expect("len"), 5);
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

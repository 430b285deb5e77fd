//! What the admin API answers from: views of the status changelog and of the failed topic,
//! brought up to date before each answer by replaying only what was appended since the last
//! look (a checkpointed offset per partition), with the counters and indexes the answers need
//! maintained as records arrive. An answer costs what changed since the previous one plus
//! the answer itself — a version's status O(log n), a target's backlog O(1), a page of failed
//! entries O(page) — never a read of whole topics. Memory holds the live records: the entries
//! in flight or recently completed (the status processor's own live set) and the failed ones,
//! loaded by the first answer (a process whose admin API is not asked holds nothing).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::bus::{Bus, BusError, StateReader};
use crate::model::{self, EntryState, TargetResult};

/// The live records of one compacted topic, as of the offsets in `next`.
struct Tail {
    topic: String,
    partitions: i32,
    next: HashMap<i32, i64>,
}

impl Tail {
    fn new(topic: &str, partitions: i32) -> Self {
        Self {
            topic: topic.to_string(),
            partitions,
            next: (0..partitions).map(|p| (p, 0)).collect(),
        }
    }

    /// Back to the start of every partition.
    fn rewind(&mut self) {
        self.next.values_mut().for_each(|n| *n = 0);
    }

    /// Hands every record appended since the last call to `apply`. Returns false if a
    /// partition now ends before its checkpoint (the topic was recreated): the checkpoints
    /// are back at the start, and the caller empties its view and calls again.
    async fn catch_up(
        &mut self,
        reader: &StateReader,
        mut apply: impl FnMut(&[u8], Option<&[u8]>),
    ) -> Result<bool, BusError> {
        let starts: Vec<(i32, i64)> = (0..self.partitions)
            .map(|p| (p, self.next.get(&p).copied().unwrap_or(0)))
            .collect();
        let ends = reader
            .replay_partitions(&self.topic, &starts, |_, _, key, payload| {
                apply(key, payload)
            })
            .await?;
        let mut shrunk = false;
        for (p, end) in ends {
            let next = self.next.entry(p).or_insert(0);
            shrunk |= end < *next;
            *next = end;
        }
        if shrunk {
            tracing::warn!(topic = %self.topic, "a topic ends before what the admin view read of it (recreated?); reading it again");
            self.next.values_mut().for_each(|n| *n = 0);
        }
        Ok(!shrunk)
    }
}

/// The live entry states, by entry id and by object, with each target's backlog.
#[derive(Default)]
pub struct StatusView {
    by_id: HashMap<String, EntryState>,
    by_object: BTreeMap<(String, String), BTreeSet<String>>,
    /// Per target: entries whose copy there is not final yet (PENDING or PROCESSING).
    backlog: BTreeMap<String, u64>,
}

impl StatusView {
    fn apply(&mut self, key: &[u8], payload: Option<&[u8]>) {
        let id = String::from_utf8_lossy(key).into_owned();
        if let Some(old) = self.by_id.remove(&id) {
            self.count(&old, false);
            let object = (old.entry.bucket.clone(), old.entry.key.clone());
            if let Some(ids) = self.by_object.get_mut(&object) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_object.remove(&object);
                }
            }
        }
        let Some(state) =
            payload.and_then(|v| match model::decode::<EntryState>("entry state", v) {
                Ok(state) => Some(state),
                Err(e) => {
                    tracing::warn!(id = %id, error = %e, "unreadable state record skipped");
                    None
                }
            })
        else {
            return;
        };
        self.count(&state, true);
        self.by_object
            .entry((state.entry.bucket.clone(), state.entry.key.clone()))
            .or_default()
            .insert(id.clone());
        self.by_id.insert(id, state);
    }

    fn count(&mut self, state: &EntryState, add: bool) {
        for (target, t) in &state.targets {
            if !t.status.is_final() {
                let n = self.backlog.entry(target.clone()).or_default();
                *n = if add { *n + 1 } else { n.saturating_sub(1) };
            }
        }
    }

    /// The live states of `bucket/key`'s versions.
    pub fn versions(&self, bucket: &str, key: &str) -> Vec<&EntryState> {
        self.by_object
            .get(&(bucket.to_string(), key.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .collect()
    }

    /// Entries not final yet for `target`.
    pub fn backlog(&self, target: &str) -> u64 {
        self.backlog.get(target).copied().unwrap_or(0)
    }
}

/// The failed entries, by record id, with a count per target.
#[derive(Default)]
pub struct FailedView {
    records: BTreeMap<String, TargetResult>,
    per_target: BTreeMap<String, u64>,
}

impl FailedView {
    fn apply(&mut self, key: &[u8], payload: Option<&[u8]>) {
        let id = String::from_utf8_lossy(key).into_owned();
        if let Some(old) = self.records.remove(&id) {
            if let Some(n) = self.per_target.get_mut(&old.target) {
                *n = n.saturating_sub(1);
            }
        }
        let record =
            payload.and_then(
                |v| match model::decode::<TargetResult>("failed record", v) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(id = %id, error = %e, "unreadable failed record skipped");
                        None
                    }
                },
            );
        if let Some(record) = record {
            *self.per_target.entry(record.target.clone()).or_default() += 1;
            self.records.insert(id, record);
        }
    }

    /// Failed entries with an id after `after` (from the first when `None`), in id order.
    pub fn after<'a>(
        &'a self,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a String, &'a TargetResult)> + 'a {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Unbounded,
        };
        self.records.range((start, Bound::Unbounded))
    }

    /// Failed entries for `target`.
    pub fn count(&self, target: &str) -> u64 {
        self.per_target.get(target).copied().unwrap_or(0)
    }
}

/// Views not caught up for this long are read again from the start: the topics keep
/// tombstones only so long (10 minutes in the embedded queue, an hour in Kafka).
const STALE_AFTER: Duration = Duration::from_secs(300);

struct Inner {
    reader: StateReader,
    /// When the views last caught up.
    caught_up: Option<Instant>,
    status_tail: Tail,
    failed_tail: Tail,
    status: StatusView,
    failed: FailedView,
}

/// The admin API's views, shared by its requests (one catches up at a time).
pub struct Views {
    inner: Mutex<Inner>,
}

impl Views {
    /// Views of `status_topic` and `failed_topic` (each of `partitions` partitions); nothing is
    /// read before the first answer.
    pub fn new(
        bus: &Bus,
        status_topic: &str,
        failed_topic: &str,
        partitions: i32,
    ) -> Result<Self, BusError> {
        Ok(Self {
            inner: Mutex::new(Inner {
                reader: bus.state_reader()?,
                caught_up: None,
                status_tail: Tail::new(status_topic, partitions),
                failed_tail: Tail::new(failed_topic, partitions),
                status: StatusView::default(),
                failed: FailedView::default(),
            }),
        })
    }

    /// Brings both views up to date, then hands them to `read`.
    pub async fn read<T>(
        &self,
        read: impl FnOnce(&StatusView, &FailedView) -> T,
    ) -> Result<T, BusError> {
        let mut inner = self.inner.lock().await;
        if inner.caught_up.is_some_and(|at| at.elapsed() > STALE_AFTER) {
            // Tombstones since may be gone from the topics: start over.
            inner.status = StatusView::default();
            inner.failed = FailedView::default();
            inner.status_tail.rewind();
            inner.failed_tail.rewind();
        }
        let Inner {
            caught_up,
            reader,
            status_tail,
            failed_tail,
            status,
            failed,
        } = &mut *inner;
        if !status_tail
            .catch_up(reader, |k, v| status.apply(k, v))
            .await?
        {
            *status = StatusView::default();
            status_tail
                .catch_up(reader, |k, v| status.apply(k, v))
                .await?;
        }
        if !failed_tail
            .catch_up(reader, |k, v| failed.apply(k, v))
            .await?
        {
            *failed = FailedView::default();
            failed_tail
                .catch_up(reader, |k, v| failed.apply(k, v))
                .await?;
        }
        *caught_up = Some(Instant::now());
        Ok(read(status, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::TopicSpec;
    use crate::config::{QueueConfig, QueueKind};
    use crate::model::{EntryKind, ReplicationEntry, ReplicationStatus};

    fn entry(key: &str, version: &str) -> ReplicationEntry {
        ReplicationEntry {
            schema: 1,
            rule: "r".into(),
            source: "src".into(),
            bucket: "b".into(),
            key: key.into(),
            version_id: Some(version.into()),
            kind: EntryKind::Object,
            size: 3,
            etag: None,
            last_modified_ms: 1,
            targets: vec!["a".into(), "b".into()],
            transient: false,
            enqueued_at_ms: 2,
        }
    }

    fn result(e: &ReplicationEntry, target: &str, status: ReplicationStatus) -> TargetResult {
        TargetResult {
            schema: 1,
            entry: e.clone(),
            target: target.into(),
            status,
            target_version_id: None,
            error: Some("boom".into()),
            attempts: 1,
            at_ms: 10,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn views_follow_the_topics_and_keep_counts_as_records_come_and_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = QueueConfig {
            kind: QueueKind::Embedded {
                path: dir.path().to_path_buf(),
            },
            brokers: String::new(),
            topic_prefix: "t.".into(),
            partitions: 2,
            replication_factor: 1,
            group_prefix: "t.".into(),
        };
        let bus = Bus::connect(&queue).expect("bus");
        let specs: Vec<TopicSpec> = ["status-state", "failed"]
            .iter()
            .map(|name| TopicSpec {
                name: format!("t.{name}"),
                partitions: 2,
                compacted: true,
            })
            .collect();
        bus.ensure_topics(&specs, 1).await.expect("topics");
        let views = Views::new(&bus, "t.status-state", "t.failed", 2).expect("views");
        let p = bus.publisher();
        let (one, two) = (entry("k", "v1"), entry("k", "v2"));
        let mut s1 = EntryState::new(one.clone());
        let s2 = EntryState::new(two.clone());
        for (partition, s) in [(0, &s1), (1, &s2)] {
            p.publish_to(
                "t.status-state",
                partition,
                &s.entry.id(),
                Some(&model::encode(s)),
            )
            .await
            .expect("state");
        }
        let (versions, backlog) = views
            .read(|status, _| (status.versions("b", "k").len(), status.backlog("a")))
            .await
            .expect("read");
        assert_eq!((versions, backlog), (2, 2));
        // v1 completes on "a"; v2's record is retired; a failure of v1 on "b" is recorded.
        s1.apply(&result(&one, "a", ReplicationStatus::Completed));
        p.publish_to("t.status-state", 0, &one.id(), Some(&model::encode(&s1)))
            .await
            .expect("state");
        p.publish_to("t.status-state", 1, &two.id(), None)
            .await
            .expect("tombstone");
        let failure = result(&one, "b", ReplicationStatus::Failed);
        for id in ["f1", "f2", "f3"] {
            p.publish("t.failed", id, Some(&model::encode(&failure)))
                .await
                .expect("failed");
        }
        p.publish("t.failed", "f2", None).await.expect("retried");
        let (versions, a, b, failed, page) = views
            .read(|status, failed| {
                (
                    status.versions("b", "k").len(),
                    status.backlog("a"),
                    status.backlog("b"),
                    failed.count("b"),
                    failed
                        .after(Some("f1"))
                        .map(|(id, _)| id.clone())
                        .collect::<Vec<_>>(),
                )
            })
            .await
            .expect("read");
        assert_eq!((versions, a, b, failed), (1, 0, 1, 2));
        assert_eq!(page, ["f3"]);
    }
}

//! The embedded queue's storage: every topic's records in one redb file, written by one thread
//! that commits many publishes per durable transaction (group commit).
//!
//! Tables: `log` (topic, partition, offset) → record; `next` (topic, partition) → next offset;
//! `topics` name → partitions and compaction; `latest` (topic, partition, key) → offset of a
//! compacted topic's latest record; `offsets` (group, topic, partition) → committed position;
//! `tombstones` (topic, partition, offset) → when a tombstone was written.
//! A compacted topic keeps only the latest record per key, so replaying it reads the state and
//! nothing else; a tombstone stays [`TOMBSTONE_RETENTION`] (Kafka's `delete.retention.ms`),
//! so a reader that replays from a checkpoint sees the deletions since. Plain topics are trimmed below the lowest
//! position their consumer groups committed; a topic nobody consumes keeps its newest records.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot, watch};

use super::super::TopicSpec;

const LOG: TableDefinition<(&str, u32, u64), &[u8]> = TableDefinition::new("log");
const NEXT: TableDefinition<(&str, u32), u64> = TableDefinition::new("next");
const TOPICS: TableDefinition<&str, u64> = TableDefinition::new("topics");
const LATEST: TableDefinition<(&str, u32, &[u8]), u64> = TableDefinition::new("latest");
const OFFSETS: TableDefinition<(&str, &str, u32), u64> = TableDefinition::new("offsets");
const TOMBSTONES: TableDefinition<(&str, u32, u64), u64> = TableDefinition::new("tombstones");

/// The file's page cache (redb's default is 1 GiB, which a backlog of a few hundred thousand
/// entries fills: the process's memory would follow the queue's size). Reads are mostly of
/// recent records, just written.
const CACHE_BYTES: usize = 64 << 20;
/// Publishes committed in one transaction at most.
const BATCH: usize = 1024;
/// How long a compacted topic keeps a tombstone, counted while the queue is open (readers in
/// this process catch up far more often; after a restart they get this long again).
pub const TOMBSTONE_RETENTION: std::time::Duration = std::time::Duration::from_secs(600);
/// Tombstones removed at most per trim.
const PURGE_BATCH: usize = 100_000;
/// Records a plain topic without consumers keeps (the dead-letter topic).
pub const UNCONSUMED_RETENTION: u64 = 100_000;

/// One record as stored and as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Option<Vec<u8>>,
}

/// A write for the writer thread, answered once durable.
pub enum Op {
    Append {
        topic: String,
        partition: Option<i32>,
        key: Vec<u8>,
        payload: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<(i32, i64), String>>,
    },
    Commit {
        group: String,
        positions: Vec<(String, i32, i64)>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    CreateTopic {
        spec: TopicSpec,
        reply: oneshot::Sender<Result<i32, String>>,
    },
    Trim {
        reply: oneshot::Sender<Result<u64, String>>,
    },
}

/// The open database, shared by the writer thread and the readers.
pub struct Log {
    db: Database,
    /// Partition count and compaction per topic (cached from `topics`).
    topics: std::sync::RwLock<HashMap<String, (i32, bool)>>,
    opened: std::time::Instant,
    /// [`TOMBSTONE_RETENTION`], but for tests.
    retention: std::time::Duration,
}

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

impl Log {
    /// Opens (or creates) `dir/queue.redb`; fails if another process has it open.
    pub fn open(dir: &Path) -> Result<Arc<Self>, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
        let file = dir.join("queue.redb");
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&file)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => format!(
                    "{} is in use by another ferry process (the embedded queue serves one process)",
                    file.display()
                ),
                e => format!("cannot open {}: {e}", file.display()),
            })?;
        let txn = db.begin_write().map_err(text)?;
        let mut topics = HashMap::new();
        {
            // Create every table so readers never meet a missing one.
            txn.open_table(LOG).map_err(text)?;
            txn.open_table(NEXT).map_err(text)?;
            txn.open_table(LATEST).map_err(text)?;
            txn.open_table(OFFSETS).map_err(text)?;
            txn.open_table(TOMBSTONES).map_err(text)?;
            let table = txn.open_table(TOPICS).map_err(text)?;
            for row in table.iter().map_err(text)? {
                let (name, packed) = row.map_err(text)?;
                let packed = packed.value();
                topics.insert(
                    name.value().to_string(),
                    ((packed >> 1) as i32, packed & 1 == 1),
                );
            }
        }
        txn.commit().map_err(text)?;
        Ok(Arc::new(Self {
            db,
            topics: std::sync::RwLock::new(topics),
            opened: std::time::Instant::now(),
            retention: TOMBSTONE_RETENTION,
        }))
    }

    /// Partition count and compaction of `topic`, if it exists.
    pub fn topic(&self, topic: &str) -> Option<(i32, bool)> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .copied()
    }

    /// Up to `limit` records of `topic`/`partition` from `offset` on, in order.
    pub fn read(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        limit: usize,
    ) -> Result<Vec<Record>, String> {
        let txn = self.db.begin_read().map_err(text)?;
        let table = txn.open_table(LOG).map_err(text)?;
        let p = partition as u32;
        let mut records = Vec::new();
        let range = table
            .range((topic, p, offset.max(0) as u64)..=(topic, p, u64::MAX))
            .map_err(text)?;
        for row in range.take(limit) {
            let (k, v) = row.map_err(text)?;
            let (_, _, at) = k.value();
            let (key, payload) = decode(v.value())?;
            records.push(Record {
                topic: topic.to_string(),
                partition,
                offset: at as i64,
                key,
                payload,
            });
        }
        Ok(records)
    }

    /// The offset the next record of `topic`/`partition` will get (its high watermark).
    pub fn end(&self, topic: &str, partition: i32) -> Result<i64, String> {
        let txn = self.db.begin_read().map_err(text)?;
        let table = txn.open_table(NEXT).map_err(text)?;
        Ok(table
            .get((topic, partition as u32))
            .map_err(text)?
            .map_or(0, |v| v.value() as i64))
    }

    /// The committed position of `group` on `topic`/`partition`, if it committed one.
    pub fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, String> {
        let txn = self.db.begin_read().map_err(text)?;
        let table = txn.open_table(OFFSETS).map_err(text)?;
        Ok(table
            .get((group, topic, partition as u32))
            .map_err(text)?
            .map(|v| v.value() as i64))
    }

    /// Runs the writer until every sender is gone: drains queued ops, applies them in one
    /// transaction, commits durably, answers them, then tells readers new records exist.
    pub fn write_loop(self: Arc<Self>, mut ops: mpsc::Receiver<Op>, appended: watch::Sender<u64>) {
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(op) = ops.blocking_recv() {
            batch.push(op);
            while batch.len() < BATCH {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let outcome = self.apply(&batch);
            let appended_any = batch.iter().any(|op| matches!(op, Op::Append { .. }));
            match outcome {
                Ok(results) => {
                    for (op, result) in batch.drain(..).zip(results) {
                        answer(op, result);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "embedded queue write failed");
                    for op in batch.drain(..) {
                        answer(op, Err(e.clone()));
                    }
                }
            }
            if appended_any {
                appended.send_modify(|n| *n += 1);
            }
        }
    }

    /// Applies `batch` in one durable transaction; one answer per op (an op that is wrong on
    /// its own, e.g. naming a missing topic, fails alone; a storage failure fails them all).
    fn apply(&self, batch: &[Op]) -> Result<Vec<Result<Answer, String>>, String> {
        let txn = self.db.begin_write().map_err(text)?;
        let mut results = Vec::with_capacity(batch.len());
        let mut created = Vec::new();
        {
            let mut log = txn.open_table(LOG).map_err(text)?;
            let mut next = txn.open_table(NEXT).map_err(text)?;
            let mut latest = txn.open_table(LATEST).map_err(text)?;
            let mut offsets = txn.open_table(OFFSETS).map_err(text)?;
            let mut topics = txn.open_table(TOPICS).map_err(text)?;
            let mut tombstones = txn.open_table(TOMBSTONES).map_err(text)?;
            for op in batch.iter() {
                match op {
                    Op::Append {
                        topic,
                        partition,
                        key,
                        payload,
                        ..
                    } => {
                        let Some((count, compacted)) = self
                            .topic(topic)
                            .or_else(|| created.iter().find(|(n, _)| n == topic).map(|(_, s)| *s))
                        else {
                            results.push(Err(format!("topic {topic} does not exist")));
                            continue;
                        };
                        let p = match partition {
                            Some(p) if (0..count).contains(p) => *p,
                            Some(p) => {
                                results.push(Err(format!("topic {topic} has no partition {p}")));
                                continue;
                            }
                            None => partition_for(key, count),
                        };
                        let up = p as u32;
                        let offset = next
                            .get((topic.as_str(), up))
                            .map_err(text)?
                            .map_or(0, |v| v.value());
                        next.insert((topic.as_str(), up), offset + 1)
                            .map_err(text)?;
                        if compacted {
                            let old = latest
                                .insert((topic.as_str(), up, key.as_slice()), offset)
                                .map_err(text)?
                                .map(|v| v.value());
                            if let Some(old) = old {
                                log.remove((topic.as_str(), up, old)).map_err(text)?;
                                tombstones.remove((topic.as_str(), up, old)).map_err(text)?;
                            }
                            if payload.is_none() {
                                tombstones
                                    .insert((topic.as_str(), up, offset), now_ms())
                                    .map_err(text)?;
                            }
                        }
                        log.insert(
                            (topic.as_str(), up, offset),
                            encode(key, payload.as_deref()).as_slice(),
                        )
                        .map_err(text)?;
                        results.push(Ok(Answer::Appended(p, offset as i64)));
                    }
                    Op::Commit {
                        group, positions, ..
                    } => {
                        for (topic, partition, position) in positions {
                            offsets
                                .insert(
                                    (group.as_str(), topic.as_str(), *partition as u32),
                                    (*position).max(0) as u64,
                                )
                                .map_err(text)?;
                        }
                        results.push(Ok(Answer::Done));
                    }
                    Op::CreateTopic { spec, .. } => {
                        let existing = self.topic(&spec.name).or_else(|| {
                            created
                                .iter()
                                .find(|(n, _)| n == &spec.name)
                                .map(|(_, s)| *s)
                        });
                        let count = match existing {
                            Some((count, _)) => count,
                            None => {
                                let packed =
                                    ((spec.partitions as u64) << 1) | spec.compacted as u64;
                                topics.insert(spec.name.as_str(), packed).map_err(text)?;
                                created
                                    .push((spec.name.clone(), (spec.partitions, spec.compacted)));
                                spec.partitions
                            }
                        };
                        results.push(Ok(Answer::Partitions(count)));
                    }
                    Op::Trim { .. } => {
                        let trimmed = self.trim(&mut log, &offsets)?;
                        self.purge(&mut log, &mut latest, &mut tombstones)?;
                        results.push(Ok(Answer::Trimmed(trimmed)));
                    }
                }
            }
        }
        txn.commit().map_err(text)?;
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        for (name, spec) in created {
            topics.insert(name, spec);
        }
        Ok(results)
    }

    /// Removes tombstones older than [`TOMBSTONE_RETENTION`] (once the queue has been open
    /// that long): the record, and the key's entry if it is still the key's latest.
    fn purge(
        &self,
        log: &mut redb::Table<(&str, u32, u64), &[u8]>,
        latest: &mut redb::Table<(&str, u32, &[u8]), u64>,
        tombstones: &mut redb::Table<(&str, u32, u64), u64>,
    ) -> Result<(), String> {
        if self.opened.elapsed() < self.retention {
            return Ok(());
        }
        let horizon = now_ms().saturating_sub(self.retention.as_millis() as u64);
        let mut due: Vec<(String, u32, u64)> = Vec::new();
        for row in tombstones.iter().map_err(text)? {
            let (k, at) = row.map_err(text)?;
            if at.value() <= horizon {
                let (topic, p, offset) = k.value();
                due.push((topic.to_string(), p, offset));
                if due.len() >= PURGE_BATCH {
                    break;
                }
            }
        }
        for (topic, p, offset) in &due {
            let record = log
                .remove((topic.as_str(), *p, *offset))
                .map_err(text)?
                .map(|v| v.value().to_vec());
            if let Some(record) = record {
                let (key, _) = decode(&record)?;
                let current = latest
                    .get((topic.as_str(), *p, key.as_slice()))
                    .map_err(text)?
                    .map(|v| v.value());
                if current == Some(*offset) {
                    latest
                        .remove((topic.as_str(), *p, key.as_slice()))
                        .map_err(text)?;
                }
            }
            tombstones
                .remove((topic.as_str(), *p, *offset))
                .map_err(text)?;
        }
        Ok(())
    }

    /// Removes plain-topic records every consumer group is past; returns how many.
    fn trim(
        &self,
        log: &mut redb::Table<(&str, u32, u64), &[u8]>,
        offsets: &redb::Table<(&str, &str, u32), u64>,
    ) -> Result<u64, String> {
        // Lowest committed position per (topic, partition) over the groups that consume it.
        let mut floor: HashMap<(String, u32), u64> = HashMap::new();
        for row in offsets.iter().map_err(text)? {
            let (k, v) = row.map_err(text)?;
            let (_, topic, partition) = k.value();
            let entry = floor
                .entry((topic.to_string(), partition))
                .or_insert(u64::MAX);
            *entry = (*entry).min(v.value());
        }
        let topics: Vec<(String, (i32, bool))> = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut removed = 0;
        for (topic, (partitions, compacted)) in topics {
            if compacted {
                continue;
            }
            for p in 0..partitions as u32 {
                let below = match floor.get(&(topic.clone(), p)) {
                    Some(position) => *position,
                    None => {
                        let last = log
                            .range((topic.as_str(), p, 0)..=(topic.as_str(), p, u64::MAX))
                            .map_err(text)?
                            .next_back()
                            .transpose()
                            .map_err(text)?
                            .map(|(k, _)| k.value().2);
                        match last {
                            Some(last) => (last + 1).saturating_sub(UNCONSUMED_RETENTION),
                            None => 0,
                        }
                    }
                };
                if below == 0 {
                    continue;
                }
                let mut count = 0;
                log.retain_in(
                    (topic.as_str(), p, 0)..(topic.as_str(), p, below),
                    |_, _| {
                        count += 1;
                        false
                    },
                )
                .map_err(text)?;
                removed += count;
            }
        }
        Ok(removed)
    }
}

/// What an op produced.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Appended(i32, i64),
    Done,
    Partitions(i32),
    Trimmed(u64),
}

fn answer(op: Op, result: Result<Answer, String>) {
    let mismatch = || "embedded queue: unexpected answer".to_string();
    match op {
        Op::Append { reply, .. } => {
            let _ = reply.send(result.and_then(|a| match a {
                Answer::Appended(p, o) => Ok((p, o)),
                _ => Err(mismatch()),
            }));
        }
        Op::Commit { reply, .. } => {
            let _ = reply.send(result.map(|_| ()));
        }
        Op::CreateTopic { reply, .. } => {
            let _ = reply.send(result.and_then(|a| match a {
                Answer::Partitions(n) => Ok(n),
                _ => Err(mismatch()),
            }));
        }
        Op::Trim { reply } => {
            let _ = reply.send(result.and_then(|a| match a {
                Answer::Trimmed(n) => Ok(n),
                _ => Err(mismatch()),
            }));
        }
    }
}

/// The partition of `key`: FNV-1a, stable across restarts and versions.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % partitions.max(1) as u64) as i32
}

/// `[key length: u32 LE][key][1 if payload][payload]`.
fn encode(key: &[u8], payload: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + key.len() + payload.map_or(0, <[u8]>::len));
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    match payload {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(p);
        }
        None => out.push(0),
    }
    out
}

fn decode(raw: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let corrupt = || "corrupt record in the embedded queue".to_string();
    let len = raw.get(..4).ok_or_else(corrupt)?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let key = raw.get(4..4 + len).ok_or_else(corrupt)?.to_vec();
    let payload = match raw.get(4 + len) {
        Some(1) => Some(raw.get(5 + len..).ok_or_else(corrupt)?.to_vec()),
        Some(0) => None,
        _ => return Err(corrupt()),
    };
    Ok((key, payload))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(log: &Log, key: &str, payload: Option<&str>) {
        let (reply, _) = oneshot::channel();
        let op = Op::Append {
            topic: "state".into(),
            partition: Some(0),
            key: key.as_bytes().to_vec(),
            payload: payload.map(|p| p.as_bytes().to_vec()),
            reply,
        };
        assert!(log.apply(&[op]).expect("append")[0].is_ok());
    }

    fn keys(log: &Log) -> Vec<(String, bool)> {
        log.read("state", 0, 0, 100)
            .expect("read")
            .into_iter()
            .map(|r| {
                (
                    String::from_utf8_lossy(&r.key).into_owned(),
                    r.payload.is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn tombstones_stay_for_their_retention_then_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Arc::into_inner(Log::open(dir.path()).expect("open")).expect("one handle");
        let (reply, _) = oneshot::channel();
        let spec = TopicSpec {
            name: "state".into(),
            partitions: 1,
            compacted: true,
        };
        log.apply(&[Op::CreateTopic { spec, reply }])
            .expect("create");
        append(&log, "a", Some("1"));
        append(&log, "b", Some("1"));
        append(&log, "a", None);
        append(&log, "c", None);
        let trim = |log: &Log| {
            let (reply, _) = oneshot::channel();
            log.apply(&[Op::Trim { reply }]).expect("trim");
        };
        trim(&log);
        assert_eq!(
            keys(&log),
            [("b".into(), true), ("a".into(), false), ("c".into(), false)]
        );
        log.retention = std::time::Duration::ZERO;
        std::thread::sleep(std::time::Duration::from_millis(5));
        trim(&log);
        assert_eq!(keys(&log), [("b".to_string(), true)]);
        // A key whose tombstone went can be written again.
        append(&log, "a", Some("2"));
        assert_eq!(keys(&log), [("b".into(), true), ("a".into(), true)]);
    }

    #[test]
    fn records_round_trip() {
        for (key, payload) in [
            (&b"k"[..], Some(&b"v"[..])),
            (b"", None),
            (b"a/b", Some(b"")),
        ] {
            let raw = encode(key, payload);
            assert_eq!(
                decode(&raw).expect("decodes"),
                (key.to_vec(), payload.map(<[u8]>::to_vec))
            );
        }
        assert!(decode(b"\x05\x00\x00\x00ab").is_err(), "truncated");
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        assert_eq!(
            partition_for(b"bucket/key", 8),
            partition_for(b"bucket/key", 8)
        );
        for i in 0..1000 {
            let p = partition_for(format!("k{i}").as_bytes(), 8);
            assert!((0..8).contains(&p));
        }
    }
}

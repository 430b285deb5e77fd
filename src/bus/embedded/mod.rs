//! The embedded queue: ferry's topics in a local redb file, for a single host with no broker.
//!
//! Same contract as Kafka for the stages: a key picks a partition, so versions of one object
//! stay in order; a publish returns once the record is durable (fsynced, many publishes per
//! commit); a consumer group's position only moves past acknowledged work and is committed
//! every second and at shutdown; compacted topics keep the latest record per key. One
//! process owns the file (redb locks it), so a group has one member holding every partition.

mod log;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use self::log::{Log, Op, Record};
use super::ledger::OffsetLedger;
use super::{Acker, BusError, Delivery, StateRecords, TopicSpec};

/// How often acknowledged positions are committed (Kafka's auto-commit interval).
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// How often consumed records of plain topics are trimmed.
const TRIM_INTERVAL: Duration = Duration::from_secs(30);
/// Records read from one partition at a time.
const READ_BATCH: usize = 256;

/// The open queue; cheap to clone.
#[derive(Clone)]
pub struct EmbeddedBus {
    log: Arc<Log>,
    ops: mpsc::Sender<Op>,
    appended: watch::Receiver<u64>,
    group_prefix: String,
}

impl EmbeddedBus {
    /// Opens (or creates) the queue in `dir` and starts its writer.
    pub fn open(dir: &std::path::Path, group_prefix: &str) -> Result<Self, BusError> {
        let log = Log::open(dir).map_err(BusError::Client)?;
        let (ops, queued) = mpsc::channel(4096);
        let (appended_tx, appended) = watch::channel(0);
        let writer = log.clone();
        std::thread::Builder::new()
            .name("ferry-queue-writer".into())
            .spawn(move || writer.write_loop(queued, appended_tx))
            .map_err(|e| BusError::Client(format!("cannot start the queue writer: {e}")))?;
        // Weak: the writer (and the file lock) go when the last handle does.
        let trimmer = ops.downgrade();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TRIM_INTERVAL).await;
                let Some(ops) = trimmer.upgrade() else { return };
                let (reply, answer) = oneshot::channel();
                if ops.send(Op::Trim { reply }).await.is_err() {
                    return;
                }
                drop(ops);
                match answer.await {
                    Ok(Ok(n)) if n > 0 => tracing::debug!(records = n, "embedded queue trimmed"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "embedded queue trim failed"),
                    _ => {}
                }
            }
        });
        Ok(Self {
            log,
            ops,
            appended,
            group_prefix: group_prefix.to_string(),
        })
    }

    /// Creates missing topics; an existing topic must have the partitions asked for.
    pub async fn ensure_topics(&self, specs: &[TopicSpec]) -> Result<(), BusError> {
        for spec in specs {
            let (reply, answer) = oneshot::channel();
            let error = |message: String| BusError::Topic {
                topic: spec.name.clone(),
                message,
            };
            self.ops
                .send(Op::CreateTopic {
                    spec: spec.clone(),
                    reply,
                })
                .await
                .map_err(|_| error("the queue writer stopped".into()))?;
            let found = answer
                .await
                .map_err(|_| error("the queue writer stopped".into()))?
                .map_err(error)?;
            if found != spec.partitions {
                return Err(error(format!(
                    "has {found} partitions, ferry needs {} (queue.partitions); set \
                     queue.partitions back to {found}, or start from an empty queue.path",
                    spec.partitions
                )));
            }
        }
        Ok(())
    }

    /// Partitions of `topic` (0 if it does not exist).
    pub fn partition_count(&self, topic: &str) -> i32 {
        self.log.topic(topic).map_or(0, |(n, _)| n)
    }

    pub fn publisher(&self) -> Publisher {
        Publisher {
            ops: self.ops.clone(),
        }
    }

    /// Consumes `topics` as group `{group_prefix}{group}`, from its committed positions.
    pub fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Subscription, BusError> {
        let group = format!("{}{group}", self.group_prefix);
        let error = |message: String| BusError::Consume {
            topics: topics.join(","),
            message,
        };
        let mut positions = Vec::new();
        for topic in topics {
            let (partitions, _) = self
                .log
                .topic(topic)
                .ok_or_else(|| error(format!("topic {topic} does not exist")))?;
            for p in 0..partitions {
                let at = self.log.committed(&group, topic, p).map_err(error)?;
                positions.push(((topic.to_string(), p), at.unwrap_or(0)));
            }
        }
        let inner = Arc::new(SubscriptionInner {
            log: self.log.clone(),
            ops: self.ops.clone(),
            group,
            topics: topics.join(","),
            ledger: Mutex::new(OffsetLedger::default()),
            stored: Mutex::new(HashMap::new()),
            reading: tokio::sync::Mutex::new(Reading {
                positions,
                buffer: VecDeque::new(),
            }),
            appended: self.appended.clone(),
        });
        tokio::spawn(auto_commit(Arc::downgrade(&inner)));
        Ok(Subscription { inner })
    }

    /// Trims consumed records now (normally every 30 s); returns how many went.
    pub async fn trim(&self) -> Result<u64, BusError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || BusError::Client("the queue writer stopped".into());
        self.ops
            .send(Op::Trim { reply })
            .await
            .map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(BusError::Client)
    }

    pub fn state_reader(&self) -> StateReader {
        StateReader {
            log: self.log.clone(),
        }
    }
}

/// Publishes records and waits until they are on disk.
#[derive(Clone)]
pub struct Publisher {
    ops: mpsc::Sender<Op>,
}

impl Publisher {
    /// Appends to `topic` (partition chosen from `key`, or `partition`); returns where.
    /// Appends every `(key, payload)` to `topic`, handed to the writer strictly in order (so
    /// one key's records keep their order), then awaits them together (one group commit).
    pub async fn send_all(
        &self,
        topic: &str,
        items: &[(String, Vec<u8>)],
    ) -> Vec<Result<(i32, i64), BusError>> {
        let error = |message: String| BusError::Publish {
            topic: topic.to_string(),
            message,
        };
        let mut answers = Vec::with_capacity(items.len());
        for (key, payload) in items {
            let (reply, answer) = oneshot::channel();
            let op = Op::Append {
                topic: topic.to_string(),
                partition: None,
                key: key.as_bytes().to_vec(),
                payload: Some(payload.clone()),
                reply,
            };
            answers.push(self.ops.send(op).await.map(|()| answer));
        }
        futures_util::future::join_all(answers.into_iter().map(|a| async move {
            let answer = a.map_err(|_| error("the queue writer stopped".into()))?;
            answer
                .await
                .map_err(|_| error("the queue writer stopped".into()))?
                .map_err(error)
        }))
        .await
    }

    pub async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<(i32, i64), BusError> {
        let error = |message: String| BusError::Publish {
            topic: topic.to_string(),
            message,
        };
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Op::Append {
                topic: topic.to_string(),
                partition,
                key: key.as_bytes().to_vec(),
                payload: payload.map(<[u8]>::to_vec),
                reply,
            })
            .await
            .map_err(|_| error("the queue writer stopped".into()))?;
        answer
            .await
            .map_err(|_| error("the queue writer stopped".into()))?
            .map_err(error)
    }
}

/// The only member of its group: every partition of its topics.
#[derive(Clone)]
pub struct Subscription {
    inner: Arc<SubscriptionInner>,
}

struct SubscriptionInner {
    log: Arc<Log>,
    ops: mpsc::Sender<Op>,
    group: String,
    topics: String,
    ledger: Mutex<OffsetLedger>,
    /// Positions acknowledged and not committed yet.
    stored: Mutex<HashMap<(String, i32), i64>>,
    reading: tokio::sync::Mutex<Reading>,
    appended: watch::Receiver<u64>,
}

struct Reading {
    /// Next offset to read, per partition.
    positions: Vec<((String, i32), i64)>,
    buffer: VecDeque<Record>,
}

impl Acker for SubscriptionInner {
    /// The one member of an embedded queue holds every partition.
    fn owns(&self, _topic: &str, _partition: i32, _generation: u64) -> bool {
        true
    }

    fn ack(&self, topic: &str, partition: i32, offset: i64, generation: u64) {
        let position = self
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .done(topic, partition, offset, generation);
        if let Some(position) = position {
            self.stored
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((topic.to_string(), partition), position);
        }
    }
}

impl SubscriptionInner {
    fn take_stored(&self) -> Vec<(String, i32, i64)> {
        self.stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|((t, p), o)| (t, p, o))
            .collect()
    }

    async fn commit(&self) -> Result<(), String> {
        let positions = self.take_stored();
        if positions.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Op::Commit {
                group: self.group.clone(),
                positions,
                reply,
            })
            .await
            .map_err(|_| "the queue writer stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the queue writer stopped".to_string())?
    }
}

async fn auto_commit(inner: Weak<SubscriptionInner>) {
    loop {
        tokio::time::sleep(COMMIT_INTERVAL).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.commit().await {
            tracing::warn!(group = %inner.group, error = %e, "embedded queue: positions not committed");
        }
    }
}

impl Subscription {
    /// Waits for the next record of any of the subscribed partitions.
    pub async fn recv(&self) -> Result<Delivery, BusError> {
        let inner = &self.inner;
        let mut reading = inner.reading.lock().await;
        loop {
            if let Some(record) = reading.buffer.pop_front() {
                let generation = inner
                    .ledger
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .received(&record.topic, record.partition, record.offset);
                return Ok(Delivery::new(
                    record.topic,
                    record.partition,
                    record.offset,
                    Some(record.key),
                    record.payload,
                    generation,
                    inner.clone(),
                ));
            }
            // Note the append count before reading, so an append racing the read wakes us.
            let mut appended = inner.appended.clone();
            appended.borrow_and_update();
            let Reading { positions, buffer } = &mut *reading;
            for ((topic, partition), position) in positions.iter_mut() {
                let records = inner
                    .log
                    .read(topic, *partition, *position, READ_BATCH)
                    .map_err(|message| BusError::Consume {
                        topics: inner.topics.clone(),
                        message,
                    })?;
                if let Some(last) = records.last() {
                    *position = last.offset + 1;
                }
                buffer.extend(records);
            }
            if buffer.is_empty() && appended.changed().await.is_err() {
                return Err(BusError::Consume {
                    topics: inner.topics.clone(),
                    message: "the queue writer stopped".into(),
                });
            }
        }
    }

    /// Commits the acknowledged positions now (at shutdown, after in-flight work finished).
    pub async fn commit(&self) -> Result<(), BusError> {
        self.inner
            .commit()
            .await
            .map_err(|message| BusError::Consume {
                topics: self.inner.topics.clone(),
                message: format!("commit: {message}"),
            })
    }

    /// Messages received and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.inner
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending()
    }
}

/// Replays compacted state topics.
pub struct StateReader {
    log: Arc<Log>,
}

impl StateReader {
    /// Every live record of `topic`/`partition`, in order, as `(key, payload)`.
    pub fn read_partition(&self, topic: &str, partition: i32) -> Result<StateRecords, BusError> {
        let mut records = Vec::new();
        self.replay(topic, partition, 0, |_, key, payload| {
            records.push((key.to_vec(), payload.map(<[u8]>::to_vec)))
        })?;
        Ok(records)
    }

    /// Hands every live record of `topic`/`partition` from offset `from` on to `sink`, in
    /// order, as `(offset, key, payload)`; returns the partition's end (the next offset).
    pub fn replay(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        mut sink: impl FnMut(i64, &[u8], Option<&[u8]>),
    ) -> Result<i64, BusError> {
        let error = |message| BusError::ReadState {
            topic: topic.to_string(),
            partition,
            message,
        };
        let end = self.log.end(topic, partition).map_err(error)?;
        let mut at = from;
        while at < end {
            let batch = self.log.read(topic, partition, at, 4096).map_err(error)?;
            let Some(last) = batch.last() else { break };
            at = last.offset + 1;
            for r in batch.iter().filter(|r| r.offset < end) {
                sink(r.offset, &r.key, r.payload.as_deref());
            }
        }
        Ok(end)
    }
}

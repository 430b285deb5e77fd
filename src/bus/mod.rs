//! The queue between the stages, behind ferry's own types.
//!
//! Stages see [`Publisher`] (publish and wait until the queue has it durably), [`Subscription`]
//! (consume as a member of a group; acknowledge each message when its work is durably done),
//! and [`StateReader`] (replay a compacted state topic). Each is Kafka or the embedded queue;
//! the stages cannot tell which. Kafka types stay inside `kafka.rs`, redb's inside `embedded/`.

mod embedded;
pub mod fence;
mod kafka;
pub mod ledger;
mod topic;
mod watch;

use std::sync::Arc;

pub use embedded::EmbeddedBus;
pub use kafka::KafkaBus;
pub use topic::{publish_until_done, Topic};

use crate::config::{QueueConfig, QueueKind};
use crate::model::{GcTask, ReplicationEntry, RetryTask, TargetResult};

/// The queue ferry was configured with.
#[derive(Clone)]
pub enum Bus {
    Kafka(KafkaBus),
    Embedded(EmbeddedBus),
}

impl Bus {
    /// Connects to the broker (no traffic yet) or opens the embedded queue's file.
    pub fn connect(queue: &QueueConfig) -> Result<Self, BusError> {
        match &queue.kind {
            QueueKind::Kafka => Ok(Self::Kafka(KafkaBus::connect(queue)?)),
            QueueKind::Embedded { path } => Ok(Self::Embedded(EmbeddedBus::open(
                path,
                &queue.group_prefix,
            )?)),
        }
    }

    /// Where the queue is, for logs.
    pub fn describe(queue: &QueueConfig) -> String {
        match &queue.kind {
            QueueKind::Kafka => format!("kafka at {}", queue.brokers),
            QueueKind::Embedded { path } => format!("embedded in {}", path.display()),
        }
    }

    /// Creates the topics that do not exist and checks the partition counts of those that do.
    pub async fn ensure_topics(
        &self,
        specs: &[TopicSpec],
        replication_factor: i32,
    ) -> Result<(), BusError> {
        match self {
            Self::Kafka(bus) => bus.ensure_topics(specs, replication_factor).await,
            Self::Embedded(bus) => bus.ensure_topics(specs).await,
        }
    }

    /// Number of partitions of `topic` (0 if it does not exist).
    pub async fn partition_count(&self, topic: &str) -> Result<i32, BusError> {
        match self {
            Self::Kafka(bus) => bus.partition_count(topic).await,
            Self::Embedded(bus) => Ok(bus.partition_count(topic)),
        }
    }

    /// What is wrong if the queue stopped acknowledging writes for a while (only Kafka can:
    /// the embedded queue answers or fails at once).
    pub fn write_stall(&self) -> Option<String> {
        match self {
            Self::Kafka(bus) => bus.write_stall(),
            Self::Embedded(_) => None,
        }
    }

    /// A handle for publishing; cheap to clone.
    pub fn publisher(&self) -> Publisher {
        match self {
            Self::Kafka(bus) => Publisher::Kafka(bus.publisher()),
            Self::Embedded(bus) => Publisher::Embedded(bus.publisher()),
        }
    }

    /// Joins consumer group `{group_prefix}{group}` on `topics`.
    pub fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Subscription, BusError> {
        match self {
            Self::Kafka(bus) => Ok(Subscription::Kafka(bus.subscribe(group, topics)?)),
            Self::Embedded(bus) => Ok(Subscription::Embedded(bus.subscribe(group, topics)?)),
        }
    }

    /// A reader that replays compacted state topics, outside any consumer group.
    pub fn state_reader(&self) -> Result<StateReader, BusError> {
        match self {
            Self::Kafka(bus) => Ok(StateReader::Kafka(bus.state_reader()?)),
            Self::Embedded(bus) => Ok(StateReader::Embedded(bus.state_reader())),
        }
    }
}

/// Publishes messages and waits until the queue holds them durably.
#[derive(Clone)]
pub enum Publisher {
    Kafka(kafka::Publisher),
    Embedded(embedded::Publisher),
}

impl Publisher {
    /// Publishes `payload` under `key` (its hash picks the partition) and waits until the queue
    /// has it. `payload = None` is a tombstone (deletes `key` from a compacted topic).
    pub async fn publish(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<(i32, i64), BusError> {
        match self {
            Self::Kafka(p) => p.publish(topic, key, payload).await,
            Self::Embedded(p) => p.send(topic, None, key, payload).await,
        }
    }

    /// Publishes every `(key, payload)` to `topic`, all in flight at once but handed to the
    /// queue strictly in order, so the messages of one key stay in order; one outcome per
    /// item, in order. (Concurrent [`Publisher::publish`] calls promise no order.)
    pub async fn publish_all(
        &self,
        topic: &str,
        items: &[(String, Vec<u8>)],
    ) -> Vec<Result<(i32, i64), BusError>> {
        match self {
            Self::Kafka(p) => p.publish_all(topic, items).await,
            Self::Embedded(p) => p.send_all(topic, items).await,
        }
    }

    /// Like [`Publisher::publish`], to an explicit partition.
    pub async fn publish_to(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<(i32, i64), BusError> {
        match self {
            Self::Kafka(p) => p.publish_to(topic, partition, key, payload).await,
            Self::Embedded(p) => p.send(topic, Some(partition), key, payload).await,
        }
    }
}

/// Membership of a consumer group, with acknowledgement-driven offset commits.
#[derive(Clone)]
pub enum Subscription {
    Kafka(kafka::Subscription),
    Embedded(embedded::Subscription),
}

impl Subscription {
    /// Waits for the next message.
    pub async fn recv(&self) -> Result<Delivery, BusError> {
        match self {
            Self::Kafka(s) => s.recv().await,
            Self::Embedded(s) => s.recv().await,
        }
    }

    /// Commits every acknowledged position now (at shutdown, after in-flight work finished).
    pub async fn commit(&self) -> Result<(), BusError> {
        match self {
            // librdkafka's synchronous commit blocks its thread for a round trip: not a
            // runtime thread.
            Self::Kafka(s) => {
                let s = s.clone();
                tokio::task::spawn_blocking(move || s.commit())
                    .await
                    .unwrap_or_else(|e| {
                        Err(BusError::Client(format!("the commit task failed: {e}")))
                    })
            }
            Self::Embedded(s) => s.commit().await,
        }
    }

    /// How many times partitions were taken from this member so far.
    pub fn revocations(&self) -> u64 {
        match self {
            Self::Kafka(s) => s.revocations(),
            Self::Embedded(_) => 0,
        }
    }

    /// The partitions of `topic` this member holds now; empty when the queue cannot say (the
    /// embedded queue, whose one member holds all).
    pub fn assigned(&self, topic: &str) -> Vec<i32> {
        match self {
            Self::Kafka(s) => s.assigned(topic),
            Self::Embedded(_) => Vec::new(),
        }
    }

    /// Messages received and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        match self {
            Self::Kafka(s) => s.in_flight(),
            Self::Embedded(s) => s.in_flight(),
        }
    }
}

/// A replayed state partition: `(key, payload)` in order; a `None` payload is a tombstone.
pub type StateRecords = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Replays compacted state topics partition by partition.
pub enum StateReader {
    Kafka(kafka::StateReader),
    Embedded(embedded::StateReader),
}

impl StateReader {
    /// Every record of `topic`/`partition` from the start to the current end, in order, as
    /// `(key, payload)`; a `None` payload is a tombstone.
    pub async fn read_partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<StateRecords, BusError> {
        match self {
            Self::Kafka(r) => r.read_partition(topic, partition).await,
            Self::Embedded(r) => r.read_partition(topic, partition),
        }
    }

    /// [`Self::read_partition`] of several partitions, by partition.
    pub async fn read_partitions(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<std::collections::HashMap<i32, StateRecords>, BusError> {
        match self {
            Self::Kafka(r) => r.read_partitions(topic, partitions).await,
            Self::Embedded(r) => partitions
                .iter()
                .map(|&p| Ok((p, r.read_partition(topic, p)?)))
                .collect(),
        }
    }

    /// Hands the records of `topic`/`partition` from offset `from` (or the partition's start,
    /// if compaction or retention removed what came before) to its end as of now to `sink`, in
    /// order, as `(offset, key, payload)`, without holding them; returns that end (the offset
    /// the next record will get). A state store that checkpoints the end replays only what
    /// came after it on its next start.
    pub async fn replay(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        sink: impl FnMut(i64, &[u8], Option<&[u8]>),
    ) -> Result<i64, BusError> {
        match self {
            Self::Kafka(r) => r.replay(topic, partition, from, sink).await,
            Self::Embedded(r) => r.replay(topic, partition, from, sink),
        }
    }

    /// [`Self::replay`] of several `(partition, from)` at once (their watermarks asked for
    /// together), handing `(partition, offset, key, payload)` to `sink`; returns each
    /// partition's end.
    pub async fn replay_partitions(
        &self,
        topic: &str,
        starts: &[(i32, i64)],
        mut sink: impl FnMut(i32, i64, &[u8], Option<&[u8]>),
    ) -> Result<std::collections::HashMap<i32, i64>, BusError> {
        match self {
            Self::Kafka(r) => r.replay_into(topic, starts, sink).await,
            Self::Embedded(r) => starts
                .iter()
                .map(|&(p, from)| {
                    let end = r.replay(topic, p, from, |offset, key, payload| {
                        sink(p, offset, key, payload)
                    })?;
                    Ok((p, end))
                })
                .collect(),
        }
    }
}

/// Records that a delivery's work is done (the queue's side of [`Delivery::ack`]).
trait Acker: Send + Sync {
    fn ack(&self, topic: &str, partition: i32, offset: i64, generation: u64);
    /// Whether this member still holds `partition` of `topic` at the assignment `generation`.
    fn owns(&self, topic: &str, partition: i32, generation: u64) -> bool;
}

/// One consumed message. Call [`Delivery::ack`] once its work is durably done; a delivery
/// dropped without it is never committed, so it is consumed again after a restart.
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    lease: Lease,
}

/// The claim a delivery's work has on its partition: cheap to clone, handed to the tasks that
/// act for the delivery so each can check, right before an effect, that the partition is still
/// this member's ([`Lease::still_owned`]).
#[derive(Clone)]
pub struct Lease {
    topic: Arc<str>,
    partition: i32,
    generation: u64,
    /// When the message was received ([`fence::Fence::now`]).
    received: u64,
    acker: Arc<dyn Acker>,
}

impl Lease {
    /// Whether the partition is still this member's at the assignment the message came with.
    /// After a freeze of this process (see [`fence`]) it first waits for the consumer to have
    /// heard from the group coordinator, so a partition lost while frozen reads as not owned.
    /// Work whose lease is gone must have no further effect: the new owner redoes it.
    pub async fn still_owned(&self) -> bool {
        let fence = fence::Fence::global();
        if fence.frozen_since(self.received) {
            fence.settle().await;
        }
        let owned = self
            .acker
            .owns(&self.topic, self.partition, self.generation);
        if !owned {
            tracing::warn!(topic = %self.topic, partition = self.partition, "partition no longer ours: this work's effects are dropped, its new owner redoes it");
        }
        owned
    }
}

impl Delivery {
    fn new(
        topic: String,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        payload: Option<Vec<u8>>,
        generation: u64,
        acker: Arc<dyn Acker>,
    ) -> Self {
        Self {
            lease: Lease {
                topic: topic.as_str().into(),
                partition,
                generation,
                received: fence::Fence::global().now(),
                acker,
            },
            topic,
            partition,
            offset,
            key,
            payload,
        }
    }

    /// The claim on this message's partition, for the tasks that act on it.
    pub fn lease(&self) -> Lease {
        self.lease.clone()
    }

    /// See [`Lease::still_owned`].
    pub async fn still_owned(&self) -> bool {
        self.lease.still_owned().await
    }

    /// Marks the work for this message done; its offset is committed once all earlier ones are.
    pub fn ack(self) {
        self.lease.acker.ack(
            &self.topic,
            self.partition,
            self.offset,
            self.lease.generation,
        );
    }

    /// Where the message came from, for logs and dead letters.
    pub fn origin(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// The topics ferry uses, named from `queue.topic_prefix`.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Populator → replication processor: one entry per version.
    pub replication: Topic<ReplicationEntry>,
    /// Copies deferred after transient failures, consumed again when due.
    pub retry: Topic<RetryTask>,
    /// Replication processor → status processor: one result per entry and target.
    pub status: Topic<TargetResult>,
    /// Status processor → garbage collector: transient versions every target holds.
    pub gc: Topic<GcTask>,
    /// Entries that failed permanently for a target (compacted).
    pub failed: String,
    /// The status processor's per-entry state (compacted changelog, partitioned like `status`).
    pub status_state: String,
    /// The populator's scan progress (compacted).
    pub populator_state: String,
    /// Operators' decisions shared by every instance, e.g. paused targets (compacted).
    pub control: String,
    /// Messages no stage could read, with where they came from.
    pub dead_letter: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        let name = |suffix: &str| format!("{prefix}{suffix}");
        Self {
            replication: Topic::new(name("replication")),
            retry: Topic::new(name("retry")),
            status: Topic::new(name("status")),
            gc: Topic::new(name("gc")),
            failed: name("failed"),
            status_state: name("status-state"),
            populator_state: name("populator-state"),
            control: name("control"),
            dead_letter: name("dead-letter"),
        }
    }
}

/// A topic ferry creates at start if missing.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Compacted topics keep the last value per key (state); others are plain logs.
    pub compacted: bool,
}

/// Every topic the configured stages need, with how to create it.
pub fn topic_specs(queue: &QueueConfig, topics: &Topics) -> Vec<TopicSpec> {
    let spec = |name: &str, partitions: i32, compacted: bool| TopicSpec {
        name: name.to_string(),
        partitions,
        compacted,
    };
    let p = queue.partitions;
    vec![
        spec(&topics.replication, p, false),
        spec(&topics.retry, p, false),
        spec(&topics.status, p, false),
        // Must have exactly as many partitions as `status`: state for status partition N is
        // written to changelog partition N.
        spec(&topics.status_state, p, true),
        spec(&topics.gc, p, false),
        spec(&topics.failed, p, true),
        // One partition: the populator reads it whole at start.
        spec(&topics.populator_state, 1, true),
        // One partition: every instance reads it whole, often.
        spec(&topics.control, 1, true),
        spec(&topics.dead_letter, 1, false),
    ]
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot open the queue: {0}")]
    Client(String),
    #[error("cannot create or check topic {topic}: {message}")]
    Topic { topic: String, message: String },
    #[error("publishing to {topic} failed: {message}")]
    Publish { topic: String, message: String },
    #[error("consuming from {topics} failed: {message}")]
    Consume { topics: String, message: String },
    #[error("reading state topic {topic} partition {partition} failed: {message}")]
    ReadState {
        topic: String,
        partition: i32,
        message: String,
    },
}

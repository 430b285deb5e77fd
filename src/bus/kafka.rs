//! Kafka behind ferry's bus types: topic creation, publishing, group consumption, state replay.
//!
//! Consumers never auto-store offsets: a message's offset is stored only when its work is
//! acknowledged through the [`super::ledger::OffsetLedger`], and librdkafka's periodic commit
//! sends what was stored (one commit per interval, not one per message). On revocation the
//! stored offsets are committed synchronously before the partitions go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};

use super::ledger::OffsetLedger;
use super::watch::WriteWatch;
use super::{Acker, BusError, Delivery, StateRecords, TopicSpec};
use crate::config::QueueConfig;

/// See `fetch.wait.max.ms` in [`KafkaBus::subscribe`]: an idle consumer sends 20 fetches a
/// second, a cost worth a stage that reacts within 50 ms.
const FETCH_WAIT_MS: &str = "50";
/// How long metadata and admin calls may take before start-up reports the broker unreachable:
/// long enough for a broker that is still starting, short enough that a wrong address is
/// reported while someone is still watching.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a new assignment waits for its committed offsets before leaving the lookup to
/// librdkafka (see [`LedgerContext::assign`]).
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish may wait for the broker before it is reported as failed; callers retry.
const DELIVERY_TIMEOUT_MS: &str = "60000";
/// How often librdkafka reports a consumer's statistics (the consumer-lag metric): often
/// enough for a dashboard, rare enough to cost nothing.
const STATS_INTERVAL_MS: &str = "5000";
/// After the watermark is reached, how long the state replay keeps taking records that arrive
/// without a pause (the rest of a batch the broker under-counted).
const BATCH_TAIL: Duration = Duration::from_millis(300);

/// The connection settings shared by every client ferry makes.
#[derive(Clone)]
pub struct KafkaBus {
    queue: QueueConfig,
    producer: FutureProducer<LogContext>,
    watch: Arc<WriteWatch>,
}

impl KafkaBus {
    /// Builds the shared producer; no network traffic yet.
    pub fn connect(queue: &QueueConfig) -> Result<Self, BusError> {
        let producer = base_config(queue)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            // No waiting for more: stages that publish one message and wait for it (the status
            // processor, per result) would pay the linger on every message; messages published
            // while a request is in flight are batched into the next one anyway.
            .set("linger.ms", "0")
            .set("message.timeout.ms", DELIVERY_TIMEOUT_MS)
            .create_with_context(LogContext)
            .map_err(|e| BusError::Client(e.to_string()))?;
        Ok(Self {
            queue: queue.clone(),
            producer,
            watch: Arc::default(),
        })
    }

    /// What is wrong if the brokers stopped acknowledging writes (see [`WriteWatch`]).
    pub fn write_stall(&self) -> Option<String> {
        self.watch
            .stalled(self.producer.in_flight_count().max(0) as u64)
    }

    /// Creates the topics that do not exist and checks the partition counts of those that do:
    /// one metadata request, and a create request only for what is missing.
    pub async fn ensure_topics(
        &self,
        specs: &[TopicSpec],
        replication_factor: i32,
    ) -> Result<(), BusError> {
        let existing = self.partition_counts().await?;
        let mut missing = Vec::new();
        for spec in specs {
            match existing.get(&spec.name) {
                // None: absent. 0: another instance is creating it right now; asking to create
                // it too answers TopicAlreadyExists, which waits for its partitions below.
                None | Some(0) => missing.push(spec),
                Some(&found) if found != spec.partitions => {
                    return Err(partitions_differ(spec, found))
                }
                Some(_) => {}
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = base_config(&self.queue)
            .create()
            .map_err(|e| BusError::Client(e.to_string()))?;
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|s| {
                let topic = NewTopic::new(
                    &s.name,
                    s.partitions,
                    TopicReplication::Fixed(replication_factor),
                );
                if s.compacted {
                    compacted(topic)
                } else {
                    topic
                }
            })
            .collect();
        let options = AdminOptions::new()
            .operation_timeout(Some(ADMIN_TIMEOUT))
            .request_timeout(Some(ADMIN_TIMEOUT));
        let results = admin
            .create_topics(new_topics.iter(), &options)
            .await
            .map_err(|e| BusError::Topic {
                topic: missing
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                message: format!("broker {} unreachable or refused: {e}", self.queue.brokers),
            });
        close_aside(admin);
        for result in results? {
            match result {
                Ok(_) => {}
                // Made by another instance in the meantime: check what it made.
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    let found = self.settled_partition_count(&topic).await?;
                    if let Some(spec) = missing
                        .iter()
                        .find(|s| s.name == topic && s.partitions != found)
                    {
                        return Err(partitions_differ(spec, found));
                    }
                }
                Err((topic, code)) => {
                    return Err(BusError::Topic {
                        topic,
                        message: code.to_string(),
                    })
                }
            }
        }
        let created: Vec<String> = missing.iter().map(|s| s.name.clone()).collect();
        self.wait_for_leaders(created).await
    }

    /// Waits until every partition of `topics` has a leader in the metadata: a topic just
    /// created has none for a moment, and whoever reads or writes it then is told so. After
    /// [`ADMIN_TIMEOUT`] it goes on with a warning (what uses the topic retries).
    async fn wait_for_leaders(&self, topics: Vec<String>) -> Result<(), BusError> {
        let producer = self.producer.clone();
        let leaderless = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
            loop {
                let leaderless: Vec<String> =
                    match producer.client().fetch_metadata(None, ADMIN_TIMEOUT) {
                        Ok(metadata) => topics
                            .iter()
                            .filter(|name| {
                                !metadata.topics().iter().any(|t| {
                                    t.name() == name.as_str()
                                        && t.error().is_none()
                                        && !t.partitions().is_empty()
                                        && t.partitions()
                                            .iter()
                                            .all(|p| p.error().is_none() && p.leader() >= 0)
                                })
                            })
                            .cloned()
                            .collect(),
                        Err(_) => topics.clone(),
                    };
                if leaderless.is_empty() || std::time::Instant::now() >= deadline {
                    return leaderless;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .map_err(|e| BusError::Client(e.to_string()))?;
        if !leaderless.is_empty() {
            tracing::warn!(
                topics = %leaderless.join(", "),
                "new topics have partitions without a leader after {}s; going on",
                ADMIN_TIMEOUT.as_secs()
            );
        }
        Ok(())
    }

    /// Every topic's partition count, per one metadata request for all of them.
    async fn partition_counts(&self) -> Result<HashMap<String, i32>, BusError> {
        let producer = self.producer.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, ADMIN_TIMEOUT)
        })
        .await
        .map_err(|e| BusError::Client(e.to_string()))?
        .map_err(|e| {
            BusError::Client(format!(
                "metadata from broker {} unreachable or refused: {e}",
                self.queue.brokers
            ))
        })?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name().to_string(), t.partitions().len() as i32))
            .collect())
    }

    /// Number of partitions of `topic` per the broker's metadata.
    pub async fn partition_count(&self, topic: &str) -> Result<i32, BusError> {
        let producer = self.producer.clone();
        let name = topic.to_string();
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&name), ADMIN_TIMEOUT)
        })
        .await
        .map_err(|e| BusError::Client(e.to_string()))?
        .map_err(|e| BusError::Topic {
            topic: topic.to_string(),
            message: format!("metadata: {e}"),
        })?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        Ok(count as i32)
    }

    /// [`Self::partition_count`] of a topic another instance has just created: its metadata
    /// shows no partitions for a moment, so it is asked again (with a short backoff) until it
    /// shows some or [`ADMIN_TIMEOUT`] has passed.
    async fn settled_partition_count(&self, topic: &str) -> Result<i32, BusError> {
        let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
        let mut pause = Duration::from_millis(50);
        loop {
            let found = self.partition_count(topic).await?;
            if found > 0 || tokio::time::Instant::now() + pause >= deadline {
                return Ok(found);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// A handle for publishing; cheap to clone.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            producer: self.producer.clone(),
            watch: self.watch.clone(),
        }
    }

    /// Joins consumer group `{group_prefix}{group}` on `topics`.
    pub fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Subscription, BusError> {
        let ledger = Arc::new(Mutex::new(OffsetLedger::default()));
        let revocations = Arc::new(AtomicU64::new(0));
        let consumer: StreamConsumer<LedgerContext> = base_config(&self.queue)
            .set("group.id", format!("{}{group}", self.queue.group_prefix))
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // Incremental cooperative rebalancing (KIP-429): a member joining or leaving moves
            // only the partitions that change hands; the others keep copying through the
            // rebalance. The classic protocol rather than KIP-848's, which needs Kafka 4 brokers
            // and takes the session timeout from the broker (45 s at least by default), so a
            // crashed instance's partitions would wait that long. See the README.
            .set("partition.assignment.strategy", "cooperative-sticky")
            // How long the broker may hold a fetch that finds nothing new. Measured with tansu:
            // at librdkafka's 500 ms, a stage waited ~0.4 s for the first entries and the last
            // results (the fetch is not answered as soon as data arrives); at 20 ms, 0.04 s.
            .set("fetch.wait.max.ms", FETCH_WAIT_MS)
            .set("statistics.interval.ms", STATS_INTERVAL_MS)
            .create_with_context(LedgerContext {
                ledger: ledger.clone(),
                revocations: revocations.clone(),
                group: format!("{}{group}", self.queue.group_prefix),
            })
            .map_err(|e| BusError::Client(e.to_string()))?;
        consumer.subscribe(topics).map_err(|e| BusError::Consume {
            topics: topics.join(","),
            message: e.to_string(),
        })?;
        Ok(Subscription {
            inner: Arc::new(SubscriptionInner {
                consumer,
                ledger,
                revocations,
                topics: topics.join(","),
            }),
        })
    }

    /// A reader that replays compacted state topics, outside any consumer group.
    pub fn state_reader(&self) -> Result<StateReader, BusError> {
        let consumer: StreamConsumer<LogContext> = base_config(&self.queue)
            .set(
                "group.id",
                format!("{}state-reader", self.queue.group_prefix),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create_with_context(LogContext)
            .map_err(|e| BusError::Client(e.to_string()))?;
        Ok(StateReader {
            consumer: Some(consumer),
        })
    }
}

fn base_config(queue: &QueueConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &queue.brokers)
        .set("client.id", "ferry")
        // The first wait before (re)connecting, doubled up to reconnect.backoff.max.ms (10 s)
        // while a broker stays away. librdkafka also spaces a client's first connections by
        // half of it: at the default 100 ms every new client (producer, each consumer, each
        // state reader) waited ~50 ms for its first request, ~0.2 s of a start on loopback.
        .set("reconnect.backoff.ms", "10")
        // ferry creates its topics itself, with their partition counts and settings. Left on
        // (the producer's default), asking for the metadata of a missing topic makes a broker
        // with `auto.create.topics.enable` create it with its default partition count.
        .set("allow.auto.create.topics", "false")
        .set_log_level(RDKafkaLogLevel::Warning);
    // Diagnostics: librdkafka's own debug contexts (e.g. `cgrp,fetch`), logged at debug level
    // under the `librdkafka` target (`FERRY_LOG=info,librdkafka=debug`).
    if let Ok(contexts) = std::env::var("FERRY_KAFKA_DEBUG") {
        config
            .set("debug", contexts)
            .set_log_level(RDKafkaLogLevel::Debug);
    }
    config
}

/// Publishes messages and waits for the broker to acknowledge them.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer<LogContext>,
    watch: Arc<WriteWatch>,
}

impl Publisher {
    /// Publishes `payload` under `key` (its hash picks the partition) and waits until the broker
    /// has it. `payload = None` is a tombstone (deletes `key` from a compacted topic).
    pub async fn publish(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<(i32, i64), BusError> {
        self.send(topic, None, key, payload).await
    }

    /// Like [`Publisher::publish`], to an explicit partition.
    pub async fn publish_to(
        &self,
        topic: &str,
        partition: i32,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<(i32, i64), BusError> {
        self.send(topic, Some(partition), key, payload).await
    }

    /// Publishes every `(key, payload)` to `topic`: each is handed to the producer strictly in
    /// order (so the messages of one key keep their order), then all are awaited together.
    pub async fn publish_all(
        &self,
        topic: &str,
        items: &[(String, Vec<u8>)],
    ) -> Vec<Result<(i32, i64), BusError>> {
        let error = |message: String| BusError::Publish {
            topic: topic.to_string(),
            message,
        };
        let mut pending = Vec::with_capacity(items.len());
        for (key, payload) in items {
            let mut record: FutureRecord<'_, str, [u8]> =
                FutureRecord::to(topic).key(key.as_str()).payload(payload);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(Ok(delivery));
                        break;
                    }
                    // The producer's queue is full: wait for room rather than skip ahead.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        pending.push(Err(error(e.to_string())));
                        break;
                    }
                }
            }
        }
        futures_util::future::join_all(pending.into_iter().map(|p| async move {
            let outcome = match p?.await {
                Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
                Ok(Err((e, _))) => Err(error(e.to_string())),
                Err(_) => Err(error("the producer dropped the message".into())),
            };
            self.watched(outcome)
        }))
        .await
    }

    async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<(i32, i64), BusError> {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        let outcome = match self
            .producer
            .send(record, rdkafka::util::Timeout::Never)
            .await
        {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((e, _)) => Err(BusError::Publish {
                topic: topic.to_string(),
                message: e.to_string(),
            }),
        };
        self.watched(outcome)
    }

    /// Tells the write watch how a write ended.
    fn watched(&self, outcome: Result<(i32, i64), BusError>) -> Result<(i32, i64), BusError> {
        match &outcome {
            Ok(_) => self.watch.acknowledged(),
            Err(e) => self.watch.failed(&e.to_string()),
        }
        outcome
    }
}

/// Membership of a consumer group, with acknowledgement-driven offset commits.
#[derive(Clone)]
pub struct Subscription {
    inner: Arc<SubscriptionInner>,
}

struct SubscriptionInner {
    consumer: StreamConsumer<LedgerContext>,
    ledger: Arc<Mutex<OffsetLedger>>,
    revocations: Arc<AtomicU64>,
    topics: String,
}

impl Acker for SubscriptionInner {
    fn owns(&self, topic: &str, partition: i32, generation: u64) -> bool {
        // librdkafka marks the assignment lost as soon as it learns of an eviction (a failed
        // heartbeat, a session it knows has expired), before the revocation is served.
        !self.consumer.assignment_lost()
            && self
                .ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .owns(topic, partition, generation)
    }

    fn ack(&self, topic: &str, partition: i32, offset: i64, generation: u64) {
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(position) = ledger.done(topic, partition, offset, generation) {
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(topic, partition, Offset::Offset(position))
                .is_ok()
            {
                // Fails only if the partition was revoked meanwhile: then the new owner redoes
                // the work, which is the at-least-once contract.
                if let Err(e) = self.consumer.store_offsets(&tpl) {
                    tracing::debug!(topic, partition, error = %e, "offset not stored");
                }
            }
        }
    }
}

impl Subscription {
    /// Waits for the next message.
    pub async fn recv(&self) -> Result<Delivery, BusError> {
        let message = self
            .inner
            .consumer
            .recv()
            .await
            .map_err(|e| BusError::Consume {
                topics: self.inner.topics.clone(),
                message: e.to_string(),
            })?;
        let topic = message.topic().to_string();
        let generation = self
            .inner
            .ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .received(&topic, message.partition(), message.offset());
        Ok(Delivery::new(
            topic,
            message.partition(),
            message.offset(),
            message.key().map(<[u8]>::to_vec),
            message.payload().map(<[u8]>::to_vec),
            generation,
            self.inner.clone(),
        ))
    }

    /// Commits every stored offset now (used at shutdown, after in-flight work finished).
    pub fn commit(&self) -> Result<(), BusError> {
        match self.inner.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            // The group took the partitions meanwhile: their new owner redoes what was not
            // committed (delivery is at least once), nothing is lost.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::AssignmentLost)) => {
                tracing::warn!(topics = %self.inner.topics, "final commit: the assignment was lost; the new owner redoes the uncommitted work");
                Ok(())
            }
            Err(e) => Err(BusError::Consume {
                topics: self.inner.topics.clone(),
                message: format!("commit: {e}"),
            }),
        }
    }

    /// How many times partitions were taken from this member so far.
    pub fn revocations(&self) -> u64 {
        self.inner.revocations.load(Ordering::SeqCst)
    }

    /// The partitions of `topic` this member holds now.
    pub fn assigned(&self, topic: &str) -> Vec<i32> {
        self.inner
            .consumer
            .assignment()
            .map(|tpl| {
                tpl.elements_for_topic(topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default()
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

/// Replays compacted state topics partition by partition.
pub struct StateReader {
    /// `None` only while being dropped.
    consumer: Option<StreamConsumer<LogContext>>,
}

impl Drop for StateReader {
    /// A reader used once at start-up would hold up the start while it closes: see
    /// [`close_aside`].
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            close_aside(consumer);
        }
    }
}

/// A partition's (low, high) watermarks. Asked right after its topic was created, or while its
/// leader moves, the broker answers that it does not lead the partition (or knows no leader
/// yet): asked again, with a short backoff, until [`ADMIN_TIMEOUT`].
fn watermarks(
    consumer: &StreamConsumer<LogContext>,
    topic: &str,
    partition: i32,
) -> KafkaResult<(i64, i64)> {
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    let mut pause = Duration::from_millis(50);
    loop {
        match consumer.fetch_watermarks(topic, partition, ADMIN_TIMEOUT) {
            Err(KafkaError::MetadataFetch(code))
                if leader_moving(code) && std::time::Instant::now() + pause < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            answer => return answer,
        }
    }
}

/// Errors a broker answers while a partition has no leader it knows of: a new topic, a
/// leader election after a broker left.
fn leader_moving(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownPartition
            | RDKafkaErrorCode::UnknownTopic
    )
}

/// Drops a Kafka client on a thread of its own: closing one waits for librdkafka's threads to
/// wind down (~0.1 s), which would otherwise hold up the task (and the start) that drops it.
fn close_aside<T: Send + 'static>(client: T) {
    std::thread::spawn(move || drop(client));
}

/// A compacted state topic's settings: the active segment rolls hourly so the cleaner can
/// compact it (by default it waits for 1 GiB or 7 days, so a replay would read all that), and
/// tombstones stay an hour, not a day: a replay at start reads about the live records, not
/// the history. An hour covers every reader that catches up from a checkpoint (the admin
/// views every few seconds, the scan's progress store after a crash); one that misses a
/// tombstone only keeps a stale record, which its next pass or rebuild removes.
fn compacted(topic: NewTopic<'_>) -> NewTopic<'_> {
    topic
        .set("cleanup.policy", "compact")
        .set("segment.ms", "3600000")
        .set("delete.retention.ms", "3600000")
}

/// An existing topic whose partition count is not the configured one.
fn partitions_differ(spec: &TopicSpec, found: i32) -> BusError {
    BusError::Topic {
        topic: spec.name.clone(),
        message: format!(
            "has {found} partitions, ferry needs {} (queue.partitions); \
             recreate it or set queue.partitions to match",
            spec.partitions
        ),
    }
}

impl StateReader {
    /// Every record of `topic`/`partition` from the start to the current end, in order, as
    /// `(key, payload)`; a `None` payload is a tombstone.
    pub async fn read_partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<StateRecords, BusError> {
        let mut read = self.read_partitions(topic, &[partition]).await?;
        Ok(read.remove(&partition).unwrap_or_default())
    }

    /// [`Self::read_partition`] for several partitions at once: their watermarks are asked for
    /// together and the non-empty ones are read in one pass.
    pub async fn read_partitions(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<HashMap<i32, StateRecords>, BusError> {
        let mut out: HashMap<i32, StateRecords> =
            partitions.iter().map(|&p| (p, Vec::new())).collect();
        let starts: Vec<(i32, i64)> = partitions.iter().map(|&p| (p, 0)).collect();
        self.replay_into(topic, &starts, |p, _, key, payload| {
            if let Some(records) = out.get_mut(&p) {
                records.push((key.to_vec(), payload.map(<[u8]>::to_vec)));
            }
        })
        .await?;
        Ok(out)
    }

    /// Hands every record of `topic`/`partition` from offset `from` (or the partition's start,
    /// if that is later) to its end as of now to `sink`, in order, as `(offset, key, payload)`;
    /// returns that end (the offset after the last record).
    pub async fn replay(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        mut sink: impl FnMut(i64, &[u8], Option<&[u8]>),
    ) -> Result<i64, BusError> {
        let ends = self
            .replay_into(topic, &[(partition, from)], |_, offset, key, payload| {
                sink(offset, key, payload)
            })
            .await?;
        Ok(ends.get(&partition).copied().unwrap_or(0))
    }

    /// Reads each `(partition, from)` to the high watermark it has now, handing each record to
    /// `sink(partition, offset, key, payload)`; returns the high watermarks.
    pub async fn replay_into(
        &self,
        topic: &str,
        starts: &[(i32, i64)],
        mut sink: impl FnMut(i32, i64, &[u8], Option<&[u8]>),
    ) -> Result<HashMap<i32, i64>, BusError> {
        let partitions: Vec<i32> = starts.iter().map(|&(p, _)| p).collect();
        let from: HashMap<i32, i64> = starts.iter().copied().collect();
        let error = |partition: i32, message: String| BusError::ReadState {
            topic: topic.to_string(),
            partition,
            message,
        };
        let Some(consumer) = &self.consumer else {
            return Err(BusError::Client("state reader already closed".into()));
        };
        // One round trip each, so in parallel (each blocks its thread until the broker answers).
        let watermarks: Vec<(i32, KafkaResult<(i64, i64)>)> = tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                let asked: Vec<_> = partitions
                    .iter()
                    .map(|&p| (p, scope.spawn(move || watermarks(consumer, topic, p))))
                    .collect();
                asked
                    .into_iter()
                    .map(|(p, h)| {
                        let answer = h.join().unwrap_or_else(|_| {
                            Err(KafkaError::MetadataFetch(RDKafkaErrorCode::Fail))
                        });
                        (p, answer)
                    })
                    .collect()
            })
        });
        let mut ends: HashMap<i32, i64> = HashMap::new();
        // Partitions still to read to the end → their high watermark.
        let mut pending: HashMap<i32, i64> = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for (partition, answer) in watermarks {
            let (low, high) = answer.map_err(|e| error(partition, format!("watermarks: {e}")))?;
            ends.insert(partition, high);
            let start = from.get(&partition).copied().unwrap_or(0).max(low);
            if high > start {
                pending.insert(partition, high);
                tpl.add_partition_offset(topic, partition, Offset::Offset(start))
                    .map_err(|e| error(partition, e.to_string()))?;
            }
        }
        if pending.is_empty() {
            return Ok(ends);
        }
        let first = *pending.keys().next().unwrap_or(&0);
        consumer
            .assign(&tpl)
            .map_err(|e| error(first, format!("assign: {e}")))?;
        let position = |partition: i32| {
            consumer.position().ok().and_then(|tpl| {
                tpl.find_partition(topic, partition)
                    .and_then(|e| e.offset().to_raw())
            })
        };
        while !pending.is_empty() {
            let waiting_on = *pending.keys().next().unwrap_or(&first);
            let received = tokio::time::timeout(ADMIN_TIMEOUT, consumer.recv())
                .await
                .map_err(|_| {
                    error(
                        waiting_on,
                        format!("no record for {}s while replaying", ADMIN_TIMEOUT.as_secs()),
                    )
                })?;
            let message = match received {
                Ok(message) => message,
                // An end-of-partition event: done if the position reached the watermark read at
                // the start (compaction may have removed the offsets just before it, so the last
                // record's offset alone cannot tell); some brokers (tansu) signal an end after
                // every batch, hence the position check.
                Err(KafkaError::PartitionEOF(p)) => {
                    if let Some(&high) = pending.get(&p) {
                        if position(p).is_some_and(|o| o >= high) {
                            pending.remove(&p);
                        }
                    }
                    continue;
                }
                Err(e) => return Err(error(waiting_on, e.to_string())),
            };
            let p = message.partition();
            if message.topic() != topic {
                continue;
            }
            if let Some(key) = message.key() {
                sink(p, message.offset(), key, message.payload());
            }
            if pending
                .get(&p)
                .is_some_and(|&high| message.offset() + 1 >= high)
            {
                pending.remove(&p);
            }
        }
        // tansu reports a watermark inside the last batch when that batch holds several
        // records: take what follows at once (the rest of the batch), until a short silence.
        while let Ok(Ok(message)) = tokio::time::timeout(BATCH_TAIL, consumer.recv()).await {
            if let (true, Some(key)) = (message.topic() == topic, message.key()) {
                let p = message.partition();
                if let Some(end) = ends.get_mut(&p) {
                    *end = (*end).max(message.offset() + 1);
                    sink(p, message.offset(), key, message.payload());
                }
            }
        }
        consumer
            .assign(&TopicPartitionList::new())
            .map_err(|e| error(first, format!("unassign: {e}")))?;
        Ok(ends)
    }
}

/// Forwards librdkafka's own log lines into tracing.
#[derive(Clone)]
pub struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_kafka(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }
}

fn log_kafka(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        _ => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

impl ConsumerContext for LogContext {}

/// `topic:0,1 other:2` — which partitions a rebalance gave or took, for its log line.
fn listed(partitions: &TopicPartitionList) -> String {
    let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for p in partitions.elements() {
        by_topic
            .entry(p.topic().to_string())
            .or_default()
            .push(p.partition());
    }
    by_topic
        .iter()
        .map(|(topic, ps)| {
            let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
            format!("{topic}:{}", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Consumer context: log forwarding, plus ledger upkeep and a final commit on revocation.
struct LedgerContext {
    ledger: Arc<Mutex<OffsetLedger>>,
    /// Counts revocations, so stages that cache per-partition state know to reload it.
    revocations: Arc<AtomicU64>,
    /// The group id, for the consumer-lag metric.
    group: String,
}

impl ClientContext for LedgerContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_kafka(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }

    /// Publishes each topic's lag: librdkafka's per-partition `consumer_lag` (high watermark
    /// minus committed offset; -1 while unknown) summed over the partitions assigned here.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let m = crate::metrics::metrics();
        for (topic, t) in &statistics.topics {
            let lag: i64 = t
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.desired)
                .map(|p| p.consumer_lag.max(0))
                .sum();
            m.consumer_lag
                .get_or_create(&crate::metrics::LagLabels {
                    group: self.group.clone(),
                    topic: topic.clone(),
                })
                .set(lag);
        }
    }
}

impl ConsumerContext for LedgerContext {
    /// librdkafka's own rebalance, except that an assignment starts at explicit offsets (see
    /// [`LedgerContext::assign`]) and a revocation first hands over what is done. Under the
    /// cooperative protocol `tpl` is what changes hands (added to or taken from the
    /// assignment); under the eager one, all of it.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                return self.assign(consumer, tpl, cooperative)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            _ => {
                let error = RDKafkaErrorCode::from(err);
                tracing::warn!(group = %self.group, %error, "rebalance failed; assignment dropped");
            }
        }
        let unassigned =
            if cooperative && err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                consumer.incremental_unassign(tpl)
            } else {
                consumer.unassign()
            };
        if let Err(e) = unassigned {
            tracing::warn!(group = %self.group, error = %e, "unassign failed");
        }
    }
}

impl LedgerContext {
    /// Hands over what is done (the next owner starts after it) and forgets the partitions.
    fn revoke(&self, consumer: &BaseConsumer<Self>, partitions: &TopicPartitionList) {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "commit before revocation failed"),
        }
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        for p in partitions.elements() {
            ledger.revoke(p.topic(), p.partition());
        }
        self.revocations.fetch_add(1, Ordering::SeqCst);
        tracing::info!(group = %self.group, partitions = %listed(partitions), "partitions revoked");
    }

    /// Takes `partitions` from their committed offsets, or from the beginning where the group
    /// has none (what `auto.offset.reset = earliest` would do). Left to librdkafka, a partition
    /// without a committed offset waits a fixed 100 ms before its first offset lookup
    /// (`rd_kafka_offset_reset` backs off from "no offset" as from an error): the first start
    /// of every new group, ~0.1 s before the first copy. The lookup here is the OffsetFetch
    /// librdkafka would send (the polling task waits for it, as for the commit on revocation);
    /// if it fails, for the request or for a partition, librdkafka sends its own.
    fn assign(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &TopicPartitionList,
        cooperative: bool,
    ) {
        let start = match consumer.committed_offsets(partitions.clone(), COMMITTED_TIMEOUT) {
            Ok(committed) => {
                for mut p in committed.elements() {
                    // No committed offset, as opposed to one the broker could not give.
                    if p.offset() == Offset::Invalid && p.error().is_ok() {
                        let _ = p.set_offset(Offset::Beginning);
                    }
                }
                committed
            }
            Err(e) => {
                tracing::warn!(group = %self.group, error = %e, "committed offsets unknown; librdkafka looks them up");
                partitions.clone()
            }
        };
        let assigned = if cooperative {
            consumer.incremental_assign(&start)
        } else {
            consumer.assign(&start)
        };
        if let Err(e) = assigned {
            tracing::warn!(group = %self.group, error = %e, "assign failed");
        }
        tracing::info!(group = %self.group, partitions = %listed(&start), "partitions assigned");
    }
}

//! The test environment's Kafka cluster: stopping and starting its nodes, and what its
//! metadata says about ferry's partitions (who leads them, whether every replica is in sync).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::{scripts_dir, TestEnv};

/// Stops (`"stop-kafka"`, with `signal`: `KILL` or `TERM`) or starts (`"start-kafka"`) Kafka
/// node `n` (0-based; its broker id is `n + 1`) and returns once it is gone or started.
pub fn node(action: &str, n: usize, signal: &str) {
    let status = Command::new("bash")
        .arg(scripts_dir().join("test-env.sh"))
        .arg(action)
        .arg(n.to_string())
        .env("FERRY_TEST_KAFKA_STOP_SIGNAL", signal)
        .status()
        .expect("run scripts/test-env.sh");
    assert!(status.success(), "scripts/test-env.sh {action} {n} failed");
}

/// One partition of a topic whose name starts with the asked prefix.
#[derive(Debug, Clone)]
pub struct Partition {
    pub topic: String,
    pub partition: i32,
    /// The leader's broker id (-1: none).
    pub leader: i32,
    pub replicas: usize,
    pub in_sync: usize,
}

/// The partitions of the topics named `prefix…`, per the cluster's metadata (empty when no
/// broker answers).
pub fn partitions(env: &TestEnv, prefix: &str) -> Vec<Partition> {
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &env.kafka)
        .set("log_level", "3")
        .create()
    {
        Ok(c) => c,
        Err(_) => return Vec::new(),
    };
    let Ok(metadata) = consumer.fetch_metadata(None, Duration::from_secs(10)) else {
        return Vec::new();
    };
    metadata
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(prefix))
        .flat_map(|t| {
            t.partitions().iter().map(|p| Partition {
                topic: t.name().to_string(),
                partition: p.id(),
                leader: p.leader(),
                replicas: p.replicas().len(),
                in_sync: p.isr().len(),
            })
        })
        .collect()
}

/// Node index (0-based) → how many of `partitions` it leads.
pub fn leaders(partitions: &[Partition]) -> BTreeMap<usize, usize> {
    let mut led = BTreeMap::new();
    for p in partitions.iter().filter(|p| p.leader > 0) {
        *led.entry(p.leader as usize - 1).or_default() += 1;
    }
    led
}

/// Whether every replica of every partition named `prefix…` is in sync (what an operator waits
/// for between two broker restarts).
pub fn fully_replicated(env: &TestEnv, prefix: &str) -> bool {
    let all = partitions(env, prefix);
    !all.is_empty() && all.iter().all(|p| p.leader > 0 && p.in_sync == p.replicas)
}

/// Every record still in `topic` (all partitions, from the beginning): (key, payload), a
/// tombstone's payload `None`.
pub fn records(env: &TestEnv, topic: &str) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka)
        .set("group.id", "ferry-test-reader")
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .expect("a Kafka consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            ends.insert(p.id(), high);
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition");
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} took over 60 s"
        );
        let Some(received) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = received.expect("a record");
        out.push((
            message.key().unwrap_or_default().to_vec(),
            message.payload().map(<[u8]>::to_vec),
        ));
        // Compaction leaves gaps in the offsets: a partition is read once past its last one.
        if ends
            .get(&message.partition())
            .is_some_and(|&end| message.offset() + 1 >= end)
        {
            ends.remove(&message.partition());
        }
    }
    out
}

/// Sets `settings` on compacted topic `topic` (every other topic setting back to the broker's
/// default, as a whole-config AlterConfigs does; `cleanup.policy` stays `compact`).
pub async fn set_compacted_topic_config(env: &TestEnv, topic: &str, settings: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka)
        .set("log_level", "3")
        .create()
        .expect("a Kafka admin client");
    let mut change =
        AlterConfig::new(ResourceSpecifier::Topic(topic)).set("cleanup.policy", "compact");
    for (key, value) in settings {
        change = change.set(key, value);
    }
    let results = admin
        .alter_configs(
            [&change],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .expect("AlterConfigs answered");
    for result in results {
        result.unwrap_or_else(|(resource, code)| panic!("AlterConfigs {resource:?}: {code}"));
    }
}

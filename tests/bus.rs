//! Where a consumer group starts on the real broker: a new group at the first message, a
//! group that comes back right after the last offset it committed — never before (work redone
//! for nothing) and never after (work skipped).

mod support;

use std::collections::HashMap;
use std::time::Duration;

use ferry::bus::{Bus, Subscription, TopicSpec};
use ferry::config::{QueueConfig, QueueKind};
use support::{unique, TestEnv};

async fn next(subscription: &Subscription) -> ferry::bus::Delivery {
    tokio::time::timeout(Duration::from_secs(30), subscription.recv())
        .await
        .expect("no message within 30 s")
        .expect("receive")
}

fn payload(delivery: &ferry::bus::Delivery) -> String {
    String::from_utf8_lossy(delivery.payload.as_deref().unwrap_or_default()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_after_its_committed_offset_and_a_new_group_starts_at_the_first() {
    let env = TestEnv::get();
    let id = unique("bus");
    let queue = QueueConfig {
        kind: QueueKind::Kafka,
        brokers: env.kafka.clone(),
        topic_prefix: format!("{id}."),
        partitions: 2,
        replication_factor: 3,
        group_prefix: format!("{id}."),
    };
    let bus = Bus::connect(&queue).expect("connect");
    let topic = format!("{id}.entries");
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: 2,
        compacted: false,
    };
    bus.ensure_topics(&[spec], 1).await.expect("create topic");
    let publisher = bus.publisher();
    for partition in 0..2 {
        for n in 0..10 {
            publisher
                .publish_to(
                    &topic,
                    partition,
                    "k",
                    Some(format!("{partition}-{n}").as_bytes()),
                )
                .await
                .expect("publish");
        }
    }

    // A new group: every partition from its first message. The first three of each are
    // acknowledged, the rest received but not.
    let first = bus.subscribe("workers", &[&topic]).expect("subscribe");
    let mut seen: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
    while seen.iter().any(|offsets| offsets.len() < 5) {
        let delivery = next(&first).await;
        let (partition, offset) = (delivery.partition, delivery.offset);
        seen[partition as usize].push(offset);
        if offset < 3 {
            delivery.ack();
        }
    }
    for (partition, offsets) in seen.iter().enumerate() {
        assert_eq!(
            offsets[..5],
            [0, 1, 2, 3, 4],
            "a new group read partition {partition} as {offsets:?}, not from its first message"
        );
    }
    first.commit().await.expect("commit");
    drop(first);

    // The same group again: right after what was acknowledged — not at the beginning (work
    // redone), not after the messages received but never acknowledged (work lost).
    let again = bus
        .subscribe("workers", &[&topic])
        .expect("subscribe again");
    let mut starts: HashMap<i32, (i64, String)> = HashMap::new();
    while starts.len() < 2 {
        let delivery = next(&again).await;
        starts
            .entry(delivery.partition)
            .or_insert((delivery.offset, payload(&delivery)));
    }
    for partition in 0..2 {
        let (offset, text) = &starts[&partition];
        assert_eq!(
            (*offset, text.as_str()),
            (3, format!("{partition}-3").as_str()),
            "partition {partition} resumed at {offset} ({text}), not right after its committed offset"
        );
    }
    drop(again);

    // Another new group on the same topic is not affected by the first group's offsets.
    let other = bus
        .subscribe("auditors", &[&topic])
        .expect("subscribe other");
    let mut firsts = HashMap::new();
    while firsts.len() < 2 {
        let delivery = next(&other).await;
        firsts.entry(delivery.partition).or_insert(delivery.offset);
    }
    assert_eq!(firsts.get(&0), Some(&0), "new group: {firsts:?}");
    assert_eq!(firsts.get(&1), Some(&0), "new group: {firsts:?}");
}

/// Instances started together all create ferry's topics at once: the broker lists a topic
/// another one is still creating with no partitions, and tells the others it exists. Every
/// instance must start, none may see "0 partitions" as a mismatch (CI saw one do so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_creating_the_same_topics_at_once_all_start() {
    let env = TestEnv::get();
    for round in 0..5 {
        let id = unique("race");
        let queue = QueueConfig {
            kind: QueueKind::Kafka,
            brokers: env.kafka.clone(),
            topic_prefix: format!("{id}."),
            partitions: 8,
            replication_factor: 3,
            group_prefix: format!("{id}."),
        };
        let specs: Vec<TopicSpec> = ["replication", "status", "status-state"]
            .iter()
            .map(|name| TopicSpec {
                name: format!("{id}.{name}"),
                partitions: 8,
                compacted: name.ends_with("-state"),
            })
            .collect();
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let (queue, specs) = (queue.clone(), specs.clone());
                tokio::spawn(async move {
                    let bus = Bus::connect(&queue).expect("connect");
                    bus.ensure_topics(&specs, 3).await
                })
            })
            .collect();
        for (instance, start) in starts.into_iter().enumerate() {
            let result = start.await.expect("join");
            assert!(
                result.is_ok(),
                "round {round}, instance {instance}: {:?}",
                result.err()
            );
        }
    }
}

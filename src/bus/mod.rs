//! The queue between the stages, behind ferry's own types.
//!
//! Stages see [`Publisher`] (publish and wait until the broker has it), [`Subscription`]
//! (consume as a member of a group; acknowledge each message when its work is durably done),
//! and [`StateReader`] (replay a compacted state topic). Kafka types stay inside `kafka.rs`.

mod kafka;
pub mod ledger;

pub use kafka::{Delivery, KafkaBus, Publisher, StateReader, Subscription};

use crate::config::QueueConfig;

/// The topics ferry uses, named from `queue.topic_prefix`.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Populator → replication processor: one [`crate::model::ReplicationEntry`] per version.
    pub replication: String,
    /// Copies deferred after transient failures, consumed again when due.
    pub retry: String,
    /// Replication processor → status processor: one result per entry and target.
    pub status: String,
    /// Status processor → garbage collector: transient versions every target holds.
    pub gc: String,
    /// Entries that failed permanently for a target (compacted).
    pub failed: String,
    /// The status processor's per-entry state (compacted changelog, partitioned like `status`).
    pub status_state: String,
    /// The populator's scan progress (compacted).
    pub populator_state: String,
    /// Messages no stage could read, with where they came from.
    pub dead_letter: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        let name = |suffix: &str| format!("{prefix}{suffix}");
        Self {
            replication: name("replication"),
            retry: name("retry"),
            status: name("status"),
            gc: name("gc"),
            failed: name("failed"),
            status_state: name("status-state"),
            populator_state: name("populator-state"),
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
    let spec = |name: &String, partitions: i32, compacted: bool| TopicSpec {
        name: name.clone(),
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
        spec(&topics.dead_letter, 1, false),
    ]
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot configure the Kafka client: {0}")]
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

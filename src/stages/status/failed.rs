//! Failed entries: listing the compacted `<p>failed` topic and sending entries back for another
//! round of attempts (the mechanism behind the admin API's and CLI's "retry failed").
//!
//! A retried entry goes to the retry topic for its one target with a fresh attempt count, and
//! its failed record is deleted (tombstone) once the retry task is durable. If the version is
//! older than what the target shows by then, the pre-check reports it superseded rather than
//! writing an old version over a newer one.

use crate::bus::{Bus, BusError, Topics};
use crate::model::{self, RetryTask, TargetResult};

/// Which failed entries to act on; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct FailedFilter {
    /// Only entries that failed for this target.
    pub target: Option<String>,
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Only these records (their ids, as [`list`] gives them); empty: no such constraint.
    pub ids: Vec<String>,
}

impl FailedFilter {
    /// Whether the failed record `id` matches.
    pub fn matches(&self, id: &str, failed: &TargetResult) -> bool {
        (self.ids.is_empty() || self.ids.iter().any(|i| i == id))
            && self.target.as_ref().is_none_or(|t| *t == failed.target)
            && self
                .prefix
                .as_ref()
                .is_none_or(|p| failed.entry.key.starts_with(p.as_str()))
    }
}

/// Every failed entry currently recorded, with its record key (its id), in id order.
pub async fn list(bus: &Bus, topics: &Topics) -> Result<Vec<(String, TargetResult)>, BusError> {
    let reader = bus.state_reader()?;
    let partitions = bus.partition_count(&topics.failed).await?;
    let mut latest: std::collections::BTreeMap<String, Option<TargetResult>> = Default::default();
    for partition in 0..partitions {
        for (key, value) in reader.read_partition(&topics.failed, partition).await? {
            let key = String::from_utf8_lossy(&key).into_owned();
            let record = value.and_then(|v| {
                match model::decode::<TargetResult>("failed record", &v) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "unreadable failed record skipped");
                        None
                    }
                }
            });
            latest.insert(key, record);
        }
    }
    Ok(latest
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect())
}

/// Sends the failed entries matching `filter` back to the retry topic; returns how many.
pub async fn retry(bus: &Bus, topics: &Topics, filter: &FailedFilter) -> Result<usize, BusError> {
    let publisher = bus.publisher();
    let mut count = 0;
    for (key, failed) in list(bus, topics).await? {
        if !filter.matches(&key, &failed) {
            continue;
        }
        let task = RetryTask {
            schema: model::SCHEMA,
            id: format!("requeued/{}/{}", model::now_ms(), fastrand::u64(..)),
            entry: failed.entry.clone(),
            target: failed.target.clone(),
            attempts: 0,
            due_at_ms: model::now_ms(),
            last_error: failed.error.clone(),
            origin: None,
        };
        topics.retry.send(&publisher, &task).await?;
        publisher.publish(&topics.failed, &key, None).await?;
        tracing::info!(bucket = %failed.entry.bucket, key = %failed.entry.key, target = %failed.target, "failed entry sent back for retry");
        count += 1;
    }
    Ok(count)
}

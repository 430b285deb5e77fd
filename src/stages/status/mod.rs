//! `StatusProcessor`: collects the per-target results of each entry into its overall status.
//!
//! Its state — one [`EntryState`] per entry — lives in a compacted changelog topic partitioned
//! like the status topic: results from status partition N update records in changelog
//! partition N. When this process is given a partition it first replays that changelog
//! partition, so state survives restarts and moves with rebalances.
//!
//! For each result: update the state; if the entry is COMPLETED and its source transient,
//! publish a GC task; publish the new state; then acknowledge. A crash in between replays the
//! result, which changes nothing but republishes the GC task — harmless, never lost.

pub mod failed;
pub mod query;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bus::{Publisher, StateReader, Subscription, Topics};
use crate::model::{self, EntryState, GcTask, ReplicationStatus, TargetResult};

use super::{decode_or_dead_letter, publish_until_done, receive, StageError};

const STAGE: &str = "status";

/// Counters tests and operators read.
#[derive(Debug, Default)]
pub struct StatusStats {
    pub results: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub gc_tasks: AtomicU64,
    pub dead_letters: AtomicU64,
}

/// The status stage.
pub struct StatusProcessor {
    publisher: Publisher,
    topics: Topics,
    subscription: Subscription,
    reader: StateReader,
    /// Entry states by status partition, then by entry id; a partition is present once its
    /// changelog has been replayed.
    state: HashMap<i32, HashMap<String, EntryState>>,
    pub stats: Arc<StatusStats>,
}

impl StatusProcessor {
    pub fn new(
        publisher: Publisher,
        topics: Topics,
        subscription: Subscription,
        reader: StateReader,
    ) -> Self {
        Self {
            publisher,
            topics,
            subscription,
            reader,
            state: HashMap::new(),
            stats: Arc::default(),
        }
    }

    /// Runs until `shutdown`, one result at a time (results of one entry share a partition,
    /// and this keeps each changelog key's records in order).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), StageError> {
        let mut loaded: HashSet<i32> = HashSet::new();
        let mut revocations = self.subscription.revocations();
        while let Some(delivery) = receive(&self.subscription, STAGE, &shutdown).await {
            // After a rebalance another instance may have advanced the state of partitions we
            // had: forget everything and replay what we own now.
            if self.subscription.revocations() != revocations {
                revocations = self.subscription.revocations();
                loaded.clear();
                for state in self.state.values().flat_map(HashMap::values) {
                    count_backlog(state, -1);
                }
                self.state.clear();
            }
            let partition = delivery.partition;
            if !loaded.contains(&partition) {
                // Every partition held and not loaded yet, at once: one round trip, not one each.
                let mut partitions: Vec<i32> = self
                    .subscription
                    .assigned(&self.topics.status)
                    .into_iter()
                    .filter(|p| !loaded.contains(p))
                    .collect();
                if !partitions.contains(&partition) {
                    partitions.push(partition);
                }
                self.replay(&partitions).await?;
                loaded.extend(partitions);
            }
            let Some((result, delivery)) = decode_or_dead_letter::<TargetResult>(
                "target result",
                delivery,
                &self.publisher,
                &self.topics.dead_letter,
                STAGE,
                &self.stats.dead_letters,
                &shutdown,
            )
            .await
            else {
                continue;
            };
            self.stats.results.fetch_add(1, Ordering::Relaxed);
            let id = result.entry.id();
            let states = self.state.entry(partition).or_default();
            let state = states.entry(id.clone()).or_insert_with(|| {
                let new = EntryState::new(result.entry.clone());
                count_backlog(&new, 1);
                new
            });
            count_backlog(state, -1);
            let changed = state.apply(&result);
            count_backlog(state, 1);
            let state = state.clone();
            let entry = &state.entry;
            // Instrumented, not entered: the span must not be held across awaits.
            let span = tracing::info_span!("entry", stage = STAGE, rule = %entry.rule, bucket = %entry.bucket, key = %entry.key, version = entry.version_id.as_deref().unwrap_or("null"), target = %result.target);
            let published = self
                .publish_effects(&state, &result, partition, &id, changed, &shutdown)
                .instrument(span)
                .await;
            if !published {
                break;
            }
            delivery.ack();
        }
        self.subscription
            .commit()
            .map_err(|source| StageError::Bus {
                stage: STAGE,
                source,
            })
    }

    /// Publishes what a result led to: the GC task (transient source, COMPLETED), the new
    /// state, the failed record. Returns false if shutdown stopped it (nothing acknowledged).
    async fn publish_effects(
        &self,
        state: &EntryState,
        result: &TargetResult,
        partition: i32,
        id: &str,
        changed: bool,
        shutdown: &CancellationToken,
    ) -> bool {
        let entry = &state.entry;

        if state.overall == ReplicationStatus::Completed && entry.transient {
            let task = GcTask {
                schema: model::SCHEMA,
                entry: entry.clone(),
                copies: state.copies(),
            };
            if !publish_until_done(
                &self.publisher,
                &self.topics.gc,
                None,
                &entry.message_key(),
                Some(&model::encode(&task)),
                shutdown,
            )
            .await
            {
                return false;
            }
            self.stats.gc_tasks.fetch_add(1, Ordering::Relaxed);
        }
        if changed {
            if !publish_until_done(
                &self.publisher,
                &self.topics.status_state,
                Some(partition),
                id,
                Some(&model::encode(&state)),
                shutdown,
            )
            .await
            {
                return false;
            }
            match state.overall {
                ReplicationStatus::Completed => {
                    self.stats.completed.fetch_add(1, Ordering::Relaxed);
                    let latency = state.completed_at_ms.unwrap_or(0) - entry.last_modified_ms;
                    let m = crate::metrics::metrics();
                    m.completed.inc();
                    m.latency.observe(latency.max(0) as f64 / 1000.0);
                    tracing::info!(latency_ms = latency, "COMPLETED on every target");
                }
                ReplicationStatus::Failed if result.status == ReplicationStatus::Failed => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = result.error.as_deref().unwrap_or(""), "FAILED");
                    let key = serde_json::json!([
                        entry.bucket,
                        entry.key,
                        entry.version_id,
                        result.target
                    ])
                    .to_string();
                    if !publish_until_done(
                        &self.publisher,
                        &self.topics.failed,
                        None,
                        &key,
                        Some(&model::encode(&result)),
                        shutdown,
                    )
                    .await
                    {
                        return false;
                    }
                }
                _ => {}
            }
        }
        true
    }

    /// Loads the state of these status partitions from their changelog partitions.
    async fn replay(&mut self, partitions: &[i32]) -> Result<(), StageError> {
        let read = self
            .reader
            .read_partitions(&self.topics.status_state, partitions)
            .await
            .map_err(|source| StageError::Bus {
                stage: STAGE,
                source,
            })?;
        for (partition, records) in read {
            self.load(partition, records);
        }
        Ok(())
    }

    /// Replaces the state of status partition `partition` with its replayed `records`.
    fn load(&mut self, partition: i32, records: crate::bus::StateRecords) {
        let states = self.state.entry(partition).or_default();
        for state in states.values() {
            count_backlog(state, -1);
        }
        states.clear();
        let count = records.len();
        for (key, value) in records {
            let id = String::from_utf8_lossy(&key).into_owned();
            match value {
                None => {
                    states.remove(&id);
                }
                Some(v) => match model::decode::<EntryState>("entry state", &v) {
                    Ok(state) => {
                        states.insert(id, state);
                    }
                    Err(e) => {
                        tracing::error!(stage = STAGE, partition, error = %e, "unreadable state record skipped")
                    }
                },
            }
        }
        for state in states.values() {
            count_backlog(state, 1);
        }
        tracing::info!(
            stage = STAGE,
            partition,
            records = count,
            entries = states.len(),
            "state replayed"
        );
    }
}

/// Adds `delta` to the backlog gauge of every target whose copy of `state` is not done.
fn count_backlog(state: &EntryState, delta: i64) {
    let m = crate::metrics::metrics();
    for (target, t) in &state.targets {
        if !t.status.is_final() {
            m.backlog.get_or_create(&m.target(target)).inc_by(delta);
        }
    }
}

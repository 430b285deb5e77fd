//! `StatusProcessor`: collects the per-target results of each entry into its overall status.
//!
//! Its state — one [`EntryState`] per entry — lives in a compacted changelog topic partitioned
//! like the status topic: results from status partition N update records in changelog
//! partition N. When this process is given a partition it first replays that changelog
//! partition, so state survives restarts and moves with rebalances.
//!
//! For each result: update the state; if the entry is COMPLETED and its source transient,
//! publish a GC task; publish the new state; then acknowledge. Results ready together are
//! applied together and their effects published at once (one round trip for the batch, not
//! one per result). A crash in between replays the results, which changes nothing but
//! republishes the GC tasks — harmless, never lost.
//!
//! Only live state is kept: a COMPLETED entry's record is deleted (a tombstone in the
//! changelog, and from memory) `status.completed_retention` after it completed, once its GC
//! task, if any, is durable. Memory, the changelog and its replay hold the entries in flight
//! and the recently completed, not the history. Within the retention a duplicated result (a
//! redelivered entry whose copy the pre-check recognises) finds the record and changes
//! nothing, and so does one that a restart or rebalance brings (replayed records get a whole
//! retention again). A duplicate later than that would find no record and start a new one
//! that waits for targets that already finished; nothing is copied twice for it (the pre-check
//! recognises the copies) and nothing is deleted early (the GC re-checks every target). The
//! status of a version whose record is gone is read from the targets' copy stamps ([`query`]).
//! FAILED entries stay: they are work an operator still has to act on.

pub mod failed;
pub mod query;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use futures_util::FutureExt;

use crate::bus::{Delivery, Publisher, StateReader, Subscription, Topics};
use crate::model::{self, EntryState, GcTask, ReplicationStatus, TargetResult};

use super::admit::Known;
use super::board::StageStatus;
use super::{decode_or_dead_letter, publish_until_done, receive, sleep_or_shutdown, StageError};
use crate::backoff::Backoff;

const STAGE: &str = "status";

/// How often, while no result arrives, records past their retention are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// At most this many records are tombstoned in one sweep (one round trip).
const SWEEP_BATCH: usize = 1024;

/// The status stage.
pub struct StatusProcessor {
    /// The locations results may name.
    known: Known,
    publisher: Publisher,
    topics: Topics,
    subscription: Subscription,
    reader: StateReader,
    /// Entry states by status partition, then by entry id; a partition is present once its
    /// changelog has been replayed.
    state: HashMap<i32, HashMap<String, EntryState>>,
    /// Per status partition, COMPLETED entries in completion order: (completed at ms, id).
    expiring: HashMap<i32, VecDeque<(i64, String)>>,
    /// How long a COMPLETED record is kept.
    retention: Duration,
    /// Its counters on the stage board (a result is in flight until its batch is durable).
    status: Arc<StageStatus>,
}

impl StatusProcessor {
    pub fn new(
        publisher: Publisher,
        topics: Topics,
        subscription: Subscription,
        reader: StateReader,
        config: &crate::config::StatusConfig,
        known: Known,
    ) -> Self {
        Self {
            known,
            publisher,
            topics,
            subscription,
            reader,
            state: HashMap::new(),
            expiring: HashMap::new(),
            retention: config.completed_retention,
            status: Arc::default(),
        }
    }

    /// The processor's counters, for the stage board.
    pub fn status(&self) -> Arc<StageStatus> {
        self.status.clone()
    }

    /// Runs until `shutdown`. Results are taken in batches of what is ready (at most
    /// [`BATCH`]) and applied in order; the batch's effects are then published together and
    /// its results acknowledged once all are durable. Results of one entry share a partition,
    /// and an entry's state is published once per batch (its latest), so each changelog key's
    /// records stay in order.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), StageError> {
        let mut loaded: HashSet<i32> = HashSet::new();
        let mut revocations = self.subscription.revocations();
        loop {
            let ready = match self.next_ready(revocations, &shutdown).await {
                Next::Ready(ready) => ready,
                Next::Swept => continue,
                Next::Stop => break,
            };
            let mut batch = Batch::default();
            for delivery in ready {
                self.status.received();
                // After a rebalance another instance may have advanced the state of partitions
                // we had: forget everything and replay what we own now.
                if self.subscription.revocations() != revocations {
                    revocations = self.subscription.revocations();
                    loaded.clear();
                    self.forget_all();
                }
                if !loaded.contains(&delivery.partition) {
                    let Some(partitions) =
                        self.load_held(delivery.partition, &loaded, &shutdown).await
                    else {
                        // Shutdown: nothing of this batch is acknowledged; it is redone.
                        return Ok(());
                    };
                    loaded.extend(partitions);
                }
                if let Some((result, delivery)) = self.admit(delivery, &shutdown).await {
                    self.fold(result, delivery, &mut batch);
                }
            }
            if !self.settle(batch, revocations, &shutdown).await {
                break;
            }
        }
        self.subscription
            .commit()
            .await
            .map_err(|source| StageError::Bus {
                stage: STAGE,
                source,
            })
    }

    /// The next results ready (at least one, at most [`BATCH`]), or a sweep of expired
    /// records when none came for [`SWEEP_EVERY`].
    async fn next_ready(&mut self, revocations: u64, shutdown: &CancellationToken) -> Next {
        let received = tokio::select! {
            received = receive(&self.subscription, STAGE, shutdown) => received,
            () = tokio::time::sleep(SWEEP_EVERY) => {
                return if self.sweep(revocations, shutdown).await {
                    Next::Swept
                } else {
                    Next::Stop
                };
            }
        };
        let Some(first) = received else {
            return Next::Stop;
        };
        let mut ready = vec![first];
        while ready.len() < BATCH {
            match self.subscription.recv().now_or_never() {
                Some(Ok(delivery)) => ready.push(delivery),
                Some(Err(e)) => {
                    tracing::warn!(stage = STAGE, error = %e, "receive failed");
                    break;
                }
                None => break,
            }
        }
        Next::Ready(ready)
    }

    /// Forgets every entry state (their backlog counts too), to replay them from the changelog.
    fn forget_all(&mut self) {
        for state in self.state.values().flat_map(HashMap::values) {
            count_backlog(state, -1);
        }
        self.state.clear();
        self.expiring.clear();
    }

    /// Replays the changelog of `partition` and of every other partition held and not
    /// `loaded` yet, at once (one round trip, not one each); the partitions replayed, or
    /// `None` on shutdown.
    async fn load_held(
        &mut self,
        partition: i32,
        loaded: &HashSet<i32>,
        shutdown: &CancellationToken,
    ) -> Option<Vec<i32>> {
        let mut partitions: Vec<i32> = self
            .subscription
            .assigned(&self.topics.status)
            .into_iter()
            .filter(|p| !loaded.contains(p))
            .collect();
        if !partitions.contains(&partition) {
            partitions.push(partition);
        }
        self.replay(&partitions, shutdown)
            .await
            .then_some(partitions)
    }

    /// Decodes a result and checks the locations it names; one that cannot be read or names a
    /// location this process does not know goes to the dead-letter topic.
    async fn admit(
        &self,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) -> Option<(TargetResult, Delivery)> {
        let (result, delivery) = decode_or_dead_letter::<TargetResult>(
            "target result",
            delivery,
            &self.publisher,
            &self.topics.dead_letter,
            STAGE,
            &self.status,
            shutdown,
        )
        .await?;
        if let Some(why) = self.known.result_refusal(&result) {
            let (publisher, topic) = (&self.publisher, &self.topics.dead_letter);
            super::refuse(
                publisher,
                topic,
                STAGE,
                &self.status,
                delivery,
                &why,
                shutdown,
            )
            .await;
            return None;
        }
        Some((result, delivery))
    }

    /// Applies `result` to its entry's state, in the batch.
    fn fold(&mut self, result: TargetResult, delivery: Delivery, batch: &mut Batch) {
        self.status.started();
        let partition = delivery.partition;
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
        batch.add(partition, id, state.clone(), result, changed, delivery);
    }

    /// Makes the batch's effects durable and acknowledges it, then notes the entries it
    /// completed for expiry and sweeps those due. False if shutdown stopped it.
    async fn settle(
        &mut self,
        batch: Batch,
        revocations: u64,
        shutdown: &CancellationToken,
    ) -> bool {
        let completed: Vec<(i32, i64, String)> = batch
            .entries
            .iter()
            .filter(|p| p.changed && p.state.overall == ReplicationStatus::Completed)
            .map(|p| (p.partition, completed_at(&p.state), p.id.clone()))
            .collect();
        if !self.publish_effects(batch, shutdown).await {
            return false;
        }
        for (partition, at, id) in completed {
            self.expiring
                .entry(partition)
                .or_default()
                .push_back((at, id));
        }
        self.sweep(revocations, shutdown).await
    }

    /// Publishes what a batch of results led to — per entry, its GC task (transient source,
    /// COMPLETED) and its new state; per result that failed its entry, the failed record —
    /// then logs and acknowledges the results. Returns false if shutdown stopped it (nothing
    /// acknowledged).
    async fn publish_effects(&self, mut batch: Batch, shutdown: &CancellationToken) -> bool {
        // A member that lost partitions (frozen past its session) must not publish a state,
        // GC task or failed record for them: its state is older than the new owner's, and a
        // compacted changelog keeps the last record written. Their results are dropped
        // unacknowledged; the new owner applies them.
        let mut owned: HashMap<i32, bool> = HashMap::new();
        for delivery in &batch.deliveries {
            if let std::collections::hash_map::Entry::Vacant(e) = owned.entry(delivery.partition) {
                e.insert(delivery.still_owned().await);
            }
        }
        if owned.values().any(|o| !o) {
            let keep = |p: &i32| owned.get(p).copied().unwrap_or(false);
            batch.entries.retain(|e| keep(&e.partition));
            batch.events.retain(|(p, _)| keep(p));
            batch.deliveries.retain(|d| {
                let kept = keep(&d.partition);
                if !kept {
                    self.status.finished();
                }
                kept
            });
        }
        let mut messages: Vec<(&str, Option<i32>, String, Vec<u8>)> = Vec::new();
        for pending in &batch.entries {
            let (state, entry) = (&pending.state, &pending.state.entry);
            // Also for a redelivered result that changed nothing: the batch that completed
            // the entry may have stopped before its GC task was durable. The collector
            // checks every copy again and finds a deleted version gone, so a second task is
            // harmless; a lost one would keep the buffer's copy for ever.
            if state.overall == ReplicationStatus::Completed && entry.transient {
                let task = GcTask {
                    schema: model::SCHEMA,
                    entry: entry.clone(),
                    copies: state.copies(),
                };
                messages.push((
                    &self.topics.gc,
                    None,
                    entry.message_key(),
                    model::encode(&task),
                ));
            }
            if pending.changed {
                messages.push((
                    &self.topics.status_state,
                    Some(pending.partition),
                    pending.id.clone(),
                    model::encode(state),
                ));
            }
        }
        for (_, event) in &batch.events {
            if let Event::Failed(result) = event {
                let key = serde_json::json!([
                    result.entry.bucket,
                    result.entry.key,
                    result.entry.version_id,
                    result.target
                ])
                .to_string();
                messages.push((&self.topics.failed, None, key, model::encode(result)));
            }
        }
        let published = futures_util::future::join_all(messages.iter().map(
            |(topic, partition, key, payload)| {
                publish_until_done(
                    &self.publisher,
                    topic,
                    *partition,
                    key,
                    Some(payload),
                    shutdown,
                )
            },
        ))
        .await;
        if !published.into_iter().all(|done| done) {
            return false;
        }
        for (_, event) in &batch.events {
            let result = match event {
                Event::Completed(r, _) | Event::Failed(r) => r,
            };
            let entry = &result.entry;
            let span = tracing::info_span!("entry", stage = STAGE, rule = %entry.rule, bucket = %entry.bucket, key = %entry.key, version = entry.version_id.as_deref().unwrap_or("null"), target = %result.target);
            let _entered = span.enter();
            match event {
                Event::Completed(_, latency) => {
                    let m = crate::metrics::metrics();
                    m.completed.inc();
                    m.latency.observe((*latency).max(0) as f64 / 1000.0);
                    tracing::info!(latency_ms = latency, "COMPLETED on every target");
                }
                Event::Failed(result) => {
                    tracing::error!(error = result.error.as_deref().unwrap_or(""), "FAILED");
                }
            }
        }
        for delivery in batch.deliveries {
            delivery.ack();
            self.status.finished();
        }
        true
    }

    /// Deletes the records of entries COMPLETED longer than the retention ago, in the
    /// partitions this process still owns (as of `revocations`): a tombstone in the
    /// changelog, then from memory. Returns false if shutdown stopped it.
    async fn sweep(&mut self, revocations: u64, shutdown: &CancellationToken) -> bool {
        if self.subscription.revocations() != revocations {
            return true;
        }
        let horizon = model::now_ms() - self.retention.as_millis().min(i64::MAX as u128) as i64;
        let mut due: Vec<(i32, String)> = Vec::new();
        for (partition, queue) in &mut self.expiring {
            while due.len() < SWEEP_BATCH && queue.front().is_some_and(|(at, _)| *at <= horizon) {
                if let Some((_, id)) = queue.pop_front() {
                    let completed = self
                        .state
                        .get(partition)
                        .and_then(|states| states.get(&id))
                        .is_some_and(|s| s.overall == ReplicationStatus::Completed);
                    if completed {
                        due.push((*partition, id));
                    }
                }
            }
        }
        if due.is_empty() {
            return true;
        }
        let topic = &self.topics.status_state;
        let published = futures_util::future::join_all(due.iter().map(|(partition, id)| {
            publish_until_done(&self.publisher, topic, Some(*partition), id, None, shutdown)
        }))
        .await;
        if !published.iter().all(|done| *done) {
            return false;
        }
        for (partition, id) in &due {
            if let Some(states) = self.state.get_mut(partition) {
                states.remove(id);
            }
        }
        tracing::debug!(
            stage = STAGE,
            records = due.len(),
            "completed entries' records deleted after their retention"
        );
        true
    }

    /// Loads the state of these status partitions from their changelog partitions. A replay
    /// that fails (a broker down, a leader moving) is tried again until it works: the results
    /// of these partitions wait for it. False if shutdown came first.
    async fn replay(&mut self, partitions: &[i32], shutdown: &CancellationToken) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match self
                .reader
                .read_partitions(&self.topics.status_state, partitions)
                .await
            {
                Ok(read) => {
                    for (partition, records) in read {
                        self.load(partition, records);
                    }
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?partitions, "replaying the status state failed, retrying");
                    if !sleep_or_shutdown(backoff.next_delay(), shutdown).await {
                        return false;
                    }
                }
            }
        }
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
        // Replayed records get a whole retention from now, not from when they completed: the
        // redeliveries a restart or a rebalance brings (a retry task whose commit was lost, say)
        // come right after it, and must find their entry's record.
        let now = model::now_ms();
        let completed: VecDeque<(i64, String)> = states
            .iter()
            .filter(|(_, s)| s.overall == ReplicationStatus::Completed)
            .map(|(id, _)| (now, id.clone()))
            .collect();
        self.expiring.insert(partition, completed);
        tracing::info!(
            stage = STAGE,
            partition,
            records = count,
            entries = states.len(),
            "state replayed"
        );
    }
}

/// When `state` completed (ms), for its retention; now if it does not say.
fn completed_at(state: &EntryState) -> i64 {
    state.completed_at_ms.unwrap_or_else(model::now_ms)
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

/// At most this many results are applied before their effects are published.
const BATCH: usize = 256;

/// What [`StatusProcessor::next_ready`] came back with.
enum Next {
    Ready(Vec<Delivery>),
    /// No result came for a while; expired records were swept.
    Swept,
    Stop,
}

/// The results of one batch, applied, with what must be published for them.
#[derive(Default)]
struct Batch {
    /// The latest state of each entry the batch changed or touched, in first-touched order.
    entries: Vec<Pending>,
    by_id: HashMap<(i32, String), usize>,
    /// What to log and count once the batch is durable, in result order, with the partition.
    events: Vec<(i32, Event)>,
    deliveries: Vec<Delivery>,
}

struct Pending {
    partition: i32,
    id: String,
    state: EntryState,
    /// Whether a result of the batch changed it (then its new state is published).
    changed: bool,
}

enum Event {
    /// The result that completed its entry, with the entry's lag in ms.
    Completed(TargetResult, i64),
    /// A result that failed its entry: also published to the failed topic.
    Failed(TargetResult),
}

impl Batch {
    fn add(
        &mut self,
        partition: i32,
        id: String,
        state: EntryState,
        result: TargetResult,
        changed: bool,
        delivery: Delivery,
    ) {
        self.deliveries.push(delivery);
        if changed {
            match state.overall {
                ReplicationStatus::Completed => {
                    let latency = state.completed_at_ms.unwrap_or(0) - state.entry.last_modified_ms;
                    self.events
                        .push((partition, Event::Completed(result, latency)));
                }
                ReplicationStatus::Failed if result.status == ReplicationStatus::Failed => {
                    self.events.push((partition, Event::Failed(result)));
                }
                _ => {}
            }
        }
        match self.by_id.get(&(partition, id.clone())) {
            Some(&i) => {
                let pending = &mut self.entries[i];
                pending.state = state;
                pending.changed |= changed;
            }
            None => {
                self.by_id
                    .insert((partition, id.clone()), self.entries.len());
                self.entries.push(Pending {
                    partition,
                    id,
                    state,
                    changed,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! `ReplicationProcessor`: copies each entry's exact source version to every target of its rule.
//!
//! Entries are worked on concurrently (up to `max_in_flight`), each target of an entry
//! independently (up to `target_concurrency` copies per target), and the versions of one key
//! in order per target ([`lanes`]). A transient failure is retried in place with backoff —
//! other targets and other keys go on meanwhile. Once every target's result is published to
//! the status topic, the entry is acknowledged; its offset is committed once every earlier
//! entry of its partition is too.

mod aborts;
mod attempts;
mod bloom;
mod budget;
mod confirm;
mod copier;
mod fanout;
mod index;
mod joint;
mod lanes;
mod retry;
mod writer;

pub use copier::{part_size_for, Outcome};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::bus::{Delivery, Lease, Publisher, Subscription, Topics};
use crate::config::{LocationConfig, ReplicationConfig, RetryPolicy};
use crate::control::Pauses;
use crate::model::{self, EntryKind, ReplicationEntry, ReplicationStatus, RetryTask, TargetResult};
use crate::storage::{ErrorKind, Head, StorageError, Store, Stores};

use self::aborts::PendingAborts;
use self::budget::BufferBudget;
use self::copier::Copier;
use self::fanout::Fanout;
use self::index::KeyIndex;
use self::joint::{Joined, JointCopy, Member, Reply};
use self::lanes::{Lanes, Ticket};
use self::retry::Waiting;
use super::board::StageStatus;
use crate::control::gate::Gates;
use crate::metrics::{metrics, FailureLabels};

/// Counts one entry in `entries_in_flight` until dropped.
struct InFlight;

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics().in_flight.dec();
    }
}

/// Whether the source version `entry` names is gone because the key was written again: the
/// source keeps one version per key (a directory, an unversioned bucket) and now holds another.
/// Such a version is superseded, not failed: its newer version has an entry of its own.
async fn replaced_at_source(source: &Store, entry: &ReplicationEntry) -> bool {
    if entry.kind != EntryKind::Object || !matches!(source.is_versioned().await, Ok(false)) {
        return false;
    }
    match source.head(&entry.key, None).await {
        Ok(Head::Object(current)) => current.version_id != entry.version_id,
        _ => false,
    }
}

/// A copy COMPLETED on `target`; `bytes` transferred.
fn completed_metric(target: &str, bytes: u64) {
    let m = metrics();
    m.objects_replicated.get_or_create(&m.target(target)).inc();
    m.bytes_replicated
        .get_or_create(&m.target(target))
        .inc_by(bytes);
}

/// A copy FAILED on `target`.
fn failed_metric(target: &str, kind: ErrorKind) {
    metrics()
        .failures
        .get_or_create(&FailureLabels {
            target: target.to_string(),
            kind: kind.to_string(),
        })
        .inc();
}
use super::admit::Known;
use super::runner::{self, Inbox, Stage};
use super::{sleep_or_shutdown, StageError};

const STAGE: &str = "replication";

/// Counters tests and operators read.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    pub copied: AtomicU64,
    pub already_there: AtomicU64,
    pub superseded: AtomicU64,
    pub failed: AtomicU64,
    pub retries: AtomicU64,
    /// Copies handed to the retry topic.
    pub deferred: AtomicU64,
    pub pauses: AtomicU64,
    /// Copies written after this member lost the partition that landed over a newer version,
    /// and were deleted.
    pub undone: AtomicU64,
    /// Bytes read from sources (a version read for several targets counts each read).
    pub source_bytes: AtomicU64,
    /// Bytes written to targets, summed over targets.
    pub target_bytes: AtomicU64,
}

/// What one copy attempt sequence ended with.
enum Step {
    /// A final result for the status topic.
    Done(Box<TargetResult>),
    /// Try again later, from the retry topic.
    Defer {
        attempts: u32,
        delay: std::time::Duration,
        error: String,
    },
}

/// What the processor keeps per target location.
struct TargetSettings {
    /// A slow target uses up its own permits, not the others'.
    limit: Arc<Semaphore>,
    retry: RetryPolicy,
}

/// The processor's two inputs: the replication topic and the retry topic.
pub struct Subscriptions {
    pub entries: Subscription,
    pub retries: Subscription,
}

/// What holds copies back, shared with the admin server: locations paused by errors, and
/// targets paused by operators.
pub struct Holds {
    pub gates: Arc<Gates>,
    pub pauses: Pauses,
}

/// The replication stage.
pub struct ReplicationProcessor {
    config: ReplicationConfig,
    stores: Stores,
    /// The locations messages may name.
    known: Known,
    publisher: Publisher,
    topics: Topics,
    subscription: Subscription,
    lanes: Arc<Lanes>,
    targets: HashMap<String, TargetSettings>,
    gates: Arc<Gates>,
    /// Targets paused by an operator: their copies are deferred to the retry topic and wait
    /// there, so the entry (and its other targets) goes on.
    pauses: Pauses,
    /// Deferred copies not finished yet, per (target, bucket/key): later versions of the key
    /// queue behind them in the retry topic.
    deferred: std::sync::Mutex<HashMap<(String, String), usize>>,
    /// The retry topic's consumer, its lanes, and the deferred versions waiting in each lane.
    retry_subscription: Subscription,
    retry_lanes: Arc<Lanes>,
    waiting: Waiting,
    /// Multipart uploads of failed copies not aborted yet (their target was away).
    pending_aborts: PendingAborts,
    /// The keys each target held at this assignment: a copy of a new key skips the pre-check.
    index: KeyIndex,
    /// Part buffers of all copies together stay within `buffer_memory`.
    budget: BufferBudget,
    /// Entry tasks and location probes, waited for at shutdown.
    tasks: TaskTracker,
    pub stats: Arc<ReplicationStats>,
    /// Its counters on the stage board (both inboxes, entries and retries); a FAILED copy is
    /// its error.
    status: Arc<StageStatus>,
}

impl ReplicationProcessor {
    pub fn new(
        config: ReplicationConfig,
        stores: Stores,
        publisher: Publisher,
        topics: Topics,
        subscriptions: Subscriptions,
        locations: &std::collections::BTreeMap<String, LocationConfig>,
        holds: Holds,
    ) -> Self {
        let targets = locations
            .values()
            .map(|l| {
                let settings = TargetSettings {
                    limit: Arc::new(Semaphore::new(l.concurrency)),
                    retry: l.retry,
                };
                (l.name.clone(), settings)
            })
            .collect();
        let budget = BufferBudget::new(config.buffer_memory);
        Self {
            config,
            known: stores.iter().map(|s| s.name().to_string()).collect(),
            stores,
            publisher,
            topics,
            subscription: subscriptions.entries,
            lanes: Arc::new(Lanes::default()),
            targets,
            gates: holds.gates,
            pauses: holds.pauses,
            pending_aborts: PendingAborts::default(),
            index: KeyIndex::default(),
            budget,
            deferred: Default::default(),
            retry_subscription: subscriptions.retries,
            retry_lanes: Arc::new(Lanes::default()),
            waiting: Waiting::default(),
            tasks: TaskTracker::new(),
            stats: Arc::default(),
            status: Arc::default(),
        }
    }

    /// The processor's counters, for the stage board.
    pub fn status(&self) -> Arc<StageStatus> {
        self.status.clone()
    }

    /// Runs until `shutdown`; then lets in-flight copies finish and commits.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StageError> {
        let this = Arc::new(self);
        let tasks = this.tasks.clone();
        tasks.spawn(this.clone().run_retries(shutdown.clone()));
        runner::consume(this.clone(), &tasks, &shutdown).await;
        tasks.close();
        tasks.wait().await;
        let stats = &this.stats;
        tracing::info!(
            stage = STAGE,
            copied = stats.copied.load(Ordering::Relaxed),
            already_there = stats.already_there.load(Ordering::Relaxed),
            superseded = stats.superseded.load(Ordering::Relaxed),
            failed = stats.failed.load(Ordering::Relaxed),
            retries = stats.retries.load(Ordering::Relaxed),
            source_bytes = stats.source_bytes.load(Ordering::Relaxed),
            target_bytes = stats.target_bytes.load(Ordering::Relaxed),
            "replication totals"
        );
        // Entries received but not started (or not finished on every target) by shutdown are
        // not acknowledged: the next owner of their partition does them (again).
        tracing::info!(
            stage = STAGE,
            unacknowledged = this.subscription.in_flight(),
            retries_unacknowledged = this.retry_subscription.in_flight(),
            "replication stopped; unacknowledged entries are redone after restart"
        );
        if let Err(e) = this.retry_subscription.commit().await {
            tracing::warn!(error = %e, "retry topic offsets not committed");
        }
        this.subscription
            .commit()
            .await
            .map_err(|source| StageError::Bus {
                stage: STAGE,
                source,
            })
    }

    /// Copies `entry` to each target concurrently; acknowledges it once every result is
    /// published. If shutdown stops a target's copy while it waits to be retried or for a
    /// paused location, nothing is acknowledged: the entry is redone later.
    async fn process(
        self: Arc<Self>,
        entry: ReplicationEntry,
        tickets: Vec<(String, Ticket)>,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) {
        let entry = Arc::new(entry);
        let origin = delivery.offset;
        let lease = delivery.lease();
        metrics().in_flight.inc();
        let _in_flight = InFlight;
        let joint = Arc::new(JointCopy::new(tickets.len()));
        let mut per_target = tokio::task::JoinSet::new();
        for (target, ticket) in tickets {
            let worker = self.clone();
            let entry = entry.clone();
            let joint = joint.clone();
            let lease = lease.clone();
            let shutdown = shutdown.clone();
            // Every field again: JSON logs show the innermost span, and each line about a copy
            // must say which object, version and target it is about.
            let span = tracing::info_span!("target", stage = STAGE, rule = %entry.rule, bucket = %entry.bucket, key = %entry.key, version = entry.version_id.as_deref().unwrap_or("null"), target = %target);
            per_target.spawn(
                async move {
                    worker
                        .replicate_to(&entry, origin, &target, ticket, &joint, &lease, &shutdown)
                        .await
                }
                .instrument(span),
            );
        }
        let mut all_published = true;
        while let Some(done) = per_target.join_next().await {
            all_published &= done.unwrap_or(false);
        }
        if all_published {
            delivery.ack();
        }
    }

    /// Copies `entry` to `target` and publishes the result, or defers the copy to the retry
    /// topic. Returns whether what it produced is durable (then the entry may be acknowledged).
    #[allow(clippy::too_many_arguments)]
    async fn replicate_to(
        self: &Arc<Self>,
        entry: &ReplicationEntry,
        origin: i64,
        target: &str,
        ticket: Ticket,
        joint: &JointCopy,
        lease: &Lease,
        shutdown: &CancellationToken,
    ) -> bool {
        // Not cut short by shutdown: an entry received is finished (within shutdown_timeout),
        // so the partition's committed offset has no gap to redo after a restart. Only waits
        // that can last (retry backoff, a paused location or target) give up at shutdown.
        ticket.turn().await;
        let lane = (target.to_string(), entry.message_key());
        // Earlier versions of this key wait in the retry topic for this target: this one
        // queues behind them there, so versions still reach the target in order.
        let step = if let Some(pause) = self.pauses.holding(target) {
            joint.leave();
            tracing::info!(
                "target paused by an operator; deferred to the retry topic until resumed"
            );
            Step::Defer {
                attempts: 0,
                delay: std::time::Duration::ZERO,
                error: format!(
                    "target paused by an operator{}",
                    pause.reason.map(|r| format!(": {r}")).unwrap_or_default()
                ),
            }
        } else if self.deferred_count(&lane) > 0 {
            joint.leave();
            tracing::info!("an earlier version of this key is waiting to be retried on this target; queued behind it");
            Step::Defer {
                attempts: 0,
                delay: std::time::Duration::ZERO,
                error: "an earlier version of this key is waiting to be retried".into(),
            }
        } else {
            match self
                .copy_with_retries(entry, target, Some(joint), 0, lease, shutdown)
                .await
            {
                Some(step) => step,
                None => return false,
            }
        };
        self.touch(target, &entry.key);
        // A result or deferral from a member that lost the partition (frozen past its session)
        // could land after the new owner's and undo it: dropped, the new owner redoes the copy.
        if !lease.still_owned().await {
            return false;
        }
        let published = self
            .publish_step(entry, origin, target, step, &lane, shutdown)
            .await;
        drop(ticket);
        published
    }

    /// Publishes a result to the status topic, or a deferral to the retry topic (counted in
    /// the key's lane until its final result). Returns whether it is durable.
    async fn publish_step(
        &self,
        entry: &ReplicationEntry,
        origin: i64,
        target: &str,
        step: Step,
        lane: &(String, String),
        shutdown: &CancellationToken,
    ) -> bool {
        match step {
            Step::Done(result) => {
                self.topics
                    .status
                    .publish(&self.publisher, &result, shutdown)
                    .await
            }
            Step::Defer {
                attempts,
                delay,
                error,
            } => {
                if !self
                    .publish_progress(entry, target, attempts, &error, shutdown)
                    .await
                {
                    return false;
                }
                let task = RetryTask {
                    schema: model::SCHEMA,
                    id: format!("{}/{}/{}", model::now_ms(), fastrand::u64(..), attempts),
                    entry: entry.clone(),
                    target: target.to_string(),
                    attempts,
                    due_at_ms: model::now_ms() + delay.as_millis() as i64,
                    last_error: Some(error),
                    origin: Some(origin),
                };
                let published = self
                    .topics
                    .retry
                    .publish(&self.publisher, &task, shutdown)
                    .await;
                if published {
                    self.stats.deferred.fetch_add(1, Ordering::Relaxed);
                    *self.lock_deferred().entry(lane.clone()).or_default() += 1;
                }
                published
            }
        }
    }

    /// Tells the status topic that the copy to `target` is not done yet and why (PROCESSING,
    /// with the attempts so far), before the copy waits in the retry topic: the entry's status
    /// and the target's backlog show it. Returns whether it is durable.
    async fn publish_progress(
        &self,
        entry: &ReplicationEntry,
        target: &str,
        attempts: u32,
        error: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        let progress = TargetResult {
            schema: model::SCHEMA,
            entry: entry.clone(),
            target: target.to_string(),
            status: ReplicationStatus::Processing,
            target_version_id: None,
            error: Some(error.to_string()),
            attempts,
            at_ms: model::now_ms(),
        };
        self.topics
            .status
            .publish(&self.publisher, &progress, shutdown)
            .await
    }

    /// Notes in the key index that this process wrote (or deferred) `key` on `target`.
    fn touch(&self, target: &str, key: &str) {
        self.index
            .touch(target, key, self.subscription.revocations());
    }

    fn lock_deferred(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), usize>> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deferred_count(&self, lane: &(String, String)) -> usize {
        self.lock_deferred().get(lane).copied().unwrap_or(0)
    }

    /// Copies an object version to `store` on its own: nothing if the pre-check finds it
    /// there. On the `first` attempt of an entry, a key the target never had needs no
    /// pre-check ([`index`]).
    async fn copy_object(
        &self,
        entry: &ReplicationEntry,
        source: &Store,
        store: &Store,
        copier: &Copier<'_>,
        first: bool,
    ) -> Result<Outcome, StorageError> {
        if let Some(outcome) = self.precheck(entry, copier, first).await? {
            return Ok(outcome);
        }
        self.fanout(source)
            .copy(entry, std::slice::from_ref(store))
            .await
            .pop()
            .unwrap_or_else(|| Err(interrupted(store, entry)))
    }

    /// The first attempt at an object version, as `member` of the entry's group: the result,
    /// or `None` if this target is to copy on its own.
    async fn copy_jointly(
        &self,
        entry: &ReplicationEntry,
        source: &Store,
        group: &JointCopy,
        member: Member,
        lease: &Lease,
    ) -> Option<Result<Outcome, StorageError>> {
        let store = member.store.clone();
        let answer = match group.join(member).await {
            Joined::Lead(members, mine) => {
                self.lead(entry, source, members, lease).await;
                mine.await
            }
            Joined::Follow(mine) => mine.await,
            Joined::Alone => return None,
        };
        // A dropped answer: the leader's task ended without sending it.
        answer.unwrap_or_else(|_| Some(Err(interrupted(&store, entry))))
    }

    /// Leads the joint copy of an entry's first attempt: takes the members' permits,
    /// pre-checks each target, reads the source once for the ones that need the copy, and
    /// answers every member. If the lease is lost meanwhile, every member is told to go on
    /// alone (each then finds the lease lost).
    async fn lead(
        &self,
        entry: &ReplicationEntry,
        source: &Store,
        members: Vec<(Member, Reply)>,
        lease: &Lease,
    ) {
        let members = joint::take_permits(members).await;
        if !lease.still_owned().await {
            for (_, reply, _) in members {
                let _ = reply.send(None);
            }
            return;
        }
        let checks = futures_util::future::join_all(members.iter().map(|(member, _, _)| {
            let copier = Copier {
                target: &member.store,
            };
            async move { self.precheck(entry, &copier, true).await }
        }))
        .await;
        let mut copying = Vec::with_capacity(members.len());
        for ((member, reply, permit), check) in members.into_iter().zip(checks) {
            match check {
                Ok(None) => copying.push((member.store, reply, permit)),
                Ok(Some(outcome)) => {
                    let _ = reply.send(Some(Ok(outcome)));
                }
                Err(e) => {
                    let _ = reply.send(Some(Err(e)));
                }
            }
        }
        if copying.is_empty() {
            return;
        }
        let stores: Vec<Store> = copying.iter().map(|(s, _, _)| s.clone()).collect();
        if stores.len() > 1 {
            tracing::debug!(
                targets = stores.len(),
                "one source read for several targets"
            );
        }
        let results = self.fanout(source).copy(entry, &stores).await;
        // Each permit is released with its answer.
        for ((_, reply, _permit), result) in copying.into_iter().zip(results) {
            let _ = reply.send(Some(result));
        }
    }

    /// `Some` when the target needs no copy of the object version (see
    /// [`Copier::precheck_object`]); on the `first` attempt, a key the target never had is not
    /// looked at.
    async fn precheck(
        &self,
        entry: &ReplicationEntry,
        copier: &Copier<'_>,
        first: bool,
    ) -> Result<Option<Outcome>, StorageError> {
        let new_key = first
            && self
                .index
                .claim_new(copier.target, &entry.key, self.subscription.revocations());
        if new_key {
            Ok(None)
        } else {
            copier.precheck_object(entry).await
        }
    }

    fn fanout<'a>(&'a self, source: &'a Store) -> Fanout<'a> {
        Fanout {
            source,
            budget: &self.budget,
            multipart_threshold: self.config.multipart_threshold,
            part_size: self.config.part_size,
            part_concurrency: self.config.part_concurrency,
            stats: self.stats.clone(),
            pending_aborts: self.pending_aborts.clone(),
        }
    }

    /// An attempt made by a member that lost the partition: its write is undone if it landed
    /// over the new owner's newer version ([`Copier::undo_out_of_order`]).
    async fn undo_out_of_order(&self, entry: &ReplicationEntry, copier: &Copier<'_>) {
        match copier.undo_out_of_order(entry).await {
            Ok(Some(version)) => {
                self.stats.undone.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target_version = %version, "a copy written after this member lost the partition landed over a newer version: deleted");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "could not check whether a copy written after losing the partition landed out of order")
            }
        }
    }

    /// Closes `location`'s gate and, if it was open, starts the probe that reopens it.
    /// Returns false if `location` has no gate (then the caller must wait by itself).
    fn pause(&self, location: &str, reason: &str, shutdown: &CancellationToken) -> bool {
        let (Some(gate), Some(store)) = (self.gates.get(location), self.stores.get(location))
        else {
            return false;
        };
        if !gate.pause(reason) {
            return true;
        }
        self.stats.pauses.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            location,
            reason,
            "location PAUSED: copies involving it wait until it works again"
        );
        let (gate, store, shutdown) = (gate.clone(), store.clone(), shutdown.clone());
        let every = self
            .targets
            .get(location)
            .map_or(self.config.retry.max_delay, |t| t.retry.max_delay);
        self.tasks.spawn(async move {
            loop {
                if !sleep_or_shutdown(every.max(std::time::Duration::from_secs(1)), &shutdown).await
                {
                    return;
                }
                match store.check().await {
                    Ok(()) => {
                        tracing::warn!(location = %store.name(), "location reachable again: RESUMED");
                        gate.resume();
                        return;
                    }
                    Err(e) => {
                        tracing::error!(location = %store.name(), error = %e, "location still PAUSED")
                    }
                }
            }
        });
        true
    }
}

/// The error of a copy whose joint copy ended without its result.
fn interrupted(store: &Store, entry: &ReplicationEntry) -> StorageError {
    store.local_error(
        "fan-out",
        &entry.key,
        ErrorKind::Transient,
        "the joint copy was interrupted".into(),
    )
}

impl Stage for ReplicationProcessor {
    type Input = ReplicationEntry;
    /// Each target's place in its lane for the entry's key.
    type Admitted = Vec<(String, Ticket)>;
    const NAME: &'static str = STAGE;
    const WHAT: &'static str = "replication entry";

    fn inbox(&self) -> Inbox<'_> {
        Inbox {
            subscription: &self.subscription,
            publisher: &self.publisher,
            dead_letter_topic: &self.topics.dead_letter,
            status: &self.status,
            concurrency: self.config.max_in_flight,
        }
    }

    fn admit(&self, entry: &ReplicationEntry) -> Result<Self::Admitted, String> {
        if let Some(why) = self.known.entry_refusal(entry) {
            return Err(why);
        }
        // Tickets are taken here, in partition order, so lanes follow the source's order.
        Ok(entry
            .targets
            .iter()
            .map(|t| (t.clone(), self.lanes.enter(t, &entry.message_key())))
            .collect())
    }

    fn span(entry: &ReplicationEntry) -> tracing::Span {
        tracing::info_span!("entry", stage = STAGE, rule = %entry.rule, bucket = %entry.bucket, key = %entry.key, version = entry.version_id.as_deref().unwrap_or("null"))
    }

    async fn handle(
        self: Arc<Self>,
        entry: ReplicationEntry,
        tickets: Self::Admitted,
        delivery: Delivery,
        shutdown: CancellationToken,
    ) {
        self.process(entry, tickets, delivery, &shutdown).await;
    }
}

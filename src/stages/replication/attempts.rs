//! One target's copy of an entry, attempt after attempt: the retry policy in place (backoff,
//! pausing a location that is unreachable or misconfigured, deferral to the retry topic after
//! `defer_after` attempts) and what each outcome means for the status topic.

use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;

use super::confirm;
use super::copier::{Copier, Outcome};
use super::joint::{JointCopy, Member};
use super::{
    completed_metric, failed_metric, replaced_at_source, ReplicationProcessor, Step, TargetSettings,
};
use crate::backoff::Backoff;
use crate::bus::Lease;
use crate::control::gate::Gate;
use crate::metrics::metrics;
use crate::model::{self, EntryKind, ReplicationEntry, ReplicationStatus, TargetResult};
use crate::stages::sleep_or_shutdown;
use crate::storage::{ErrorKind, StorageError, Store};

/// A target's place in its entry's joint copy (one read of the source for all targets) until
/// it joins the copy or leaves it. Dropped without joining, it leaves: the other targets never
/// wait for one that went its own way, whichever way the attempts ended.
struct Seat<'a>(Option<&'a JointCopy>);

impl<'a> Seat<'a> {
    /// The group, to join it now (the seat is then empty).
    fn take(&mut self) -> Option<&'a JointCopy> {
        self.0.take()
    }

    /// Tells the group not to wait for this target.
    fn leave(&mut self) {
        if let Some(group) = self.0.take() {
            group.leave();
        }
    }
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

/// What a copy to one target goes through: the stores and gates of both ends.
struct Route<'a> {
    target: &'a str,
    source: &'a Store,
    store: &'a Store,
    settings: &'a TargetSettings,
    source_gate: &'a Gate,
    target_gate: &'a Gate,
}

/// A final result for the status topic.
fn done(
    entry: &ReplicationEntry,
    target: &str,
    status: ReplicationStatus,
    target_version_id: Option<String>,
    error: Option<String>,
    attempts: u32,
) -> Step {
    Step::Done(Box::new(TargetResult {
        schema: model::SCHEMA,
        entry: entry.clone(),
        target: target.to_string(),
        status,
        target_version_id,
        error,
        attempts,
        at_ms: model::now_ms(),
    }))
}

/// Whether the attempts go on.
enum Then {
    Again,
    Stop(Option<Step>),
}

/// What a failed attempt leads to.
#[derive(Debug, PartialEq, Eq)]
enum AfterFailure {
    /// A configuration error or an unreachable server: not this entry's fault. The location
    /// is paused and the attempt not counted.
    PauseLocation,
    /// Try again: in place, or (`defer`) from the retry topic, freeing the slot.
    Retry {
        defer: bool,
    },
    /// The source version is not found: superseded if the source keeps one version per key
    /// and holds another now, else FAILED.
    SourceGone,
    Fail,
}

/// The retry policy's decision after attempt number `attempts` failed with `e`.
fn after_failure(
    e: &StorageError,
    source: &str,
    attempts: u32,
    max_attempts: u32,
    defer_after: u32,
) -> AfterFailure {
    match e.kind {
        ErrorKind::Config | ErrorKind::Unreachable => AfterFailure::PauseLocation,
        ErrorKind::Transient if attempts < max_attempts => AfterFailure::Retry {
            defer: attempts >= defer_after,
        },
        ErrorKind::NotFound if e.location == source => AfterFailure::SourceGone,
        _ => AfterFailure::Fail,
    }
}

impl ReplicationProcessor {
    /// Copies `entry` to `target`, retrying transient failures in place up to `defer_after`
    /// attempts (counting `start_attempts` made before), then asks for deferral. `joint` is the
    /// entry's group on its first attempt from the replication topic. Each attempt first checks
    /// that `lease` (the message's partition) is still this member's. `None` on shutdown or a
    /// lost lease.
    pub(super) async fn copy_with_retries(
        &self,
        entry: &ReplicationEntry,
        target: &str,
        joint: Option<&JointCopy>,
        start_attempts: u32,
        lease: &Lease,
        shutdown: &CancellationToken,
    ) -> Option<Step> {
        // The first attempt joins the other targets of the entry (one read of the source);
        // a target that joins no group this time must say so, or the others wait for it.
        // Only an entry's first attempt from the replication topic may use the key index: a
        // retry may follow a write whose answer was lost.
        let fresh = joint.is_some() && start_attempts == 0;
        let mut seat = Seat(joint);
        let Some(route) = self.route(entry, target) else {
            return Some(self.unknown_location(entry, target));
        };
        let policy = route.settings.retry;
        let mut backoff = Backoff::new(policy.initial_delay, policy.max_delay);
        for _ in 0..start_attempts {
            backoff.next_delay();
        }
        let copier = Copier {
            target: route.store,
        };
        // Only an object is copied jointly; the first attempt takes part in the entry's group
        // (which takes this target's permit for it), later ones hold a permit of their own.
        if entry.kind != EntryKind::Object {
            seat.leave();
        }
        let mut permit = None;
        let mut attempts = start_attempts;
        loop {
            if !self
                .may_copy(&route, target, &mut seat, lease, shutdown)
                .await
            {
                return None;
            }
            let outcome = if let Some(group) = seat.take() {
                let member = Member {
                    target: target.to_string(),
                    store: route.store.clone(),
                    limit: route.settings.limit.clone(),
                };
                match self
                    .copy_jointly(entry, route.source, group, member, lease)
                    .await
                {
                    Some(outcome) => {
                        attempts += 1;
                        outcome
                    }
                    // Its permit did not come in time, or the copy had started: on its own.
                    None => continue,
                }
            } else {
                if permit.is_none() {
                    // Not cut short by shutdown either (see `replicate_to`).
                    let Ok(p) = route.settings.limit.acquire().await else {
                        return None;
                    };
                    permit = Some(p);
                    // The wait may have been long.
                    if !lease.still_owned().await {
                        return None;
                    }
                }
                attempts += 1;
                let first = fresh && attempts == 1;
                self.attempt_alone(entry, &route, &copier, first).await
            };
            // Lost meanwhile (frozen mid-copy): no result, and a write that landed after the
            // new owner's newer one is undone, whatever this attempt's answer was.
            if !lease.still_owned().await {
                if entry.kind == EntryKind::Object {
                    self.undo_out_of_order(entry, &copier).await;
                }
                return None;
            }
            let e = match outcome {
                Ok(outcome) => return Some(self.finished(entry, target, outcome, attempts)),
                Err(e) => e,
            };
            let then = self
                .recover(entry, &route, e, &mut attempts, &mut backoff, shutdown)
                .await;
            if let Then::Stop(step) = then {
                return step;
            }
        }
    }

    /// What follows attempt `attempts` failing with `e` ([`after_failure`]): waiting out a
    /// paused location or a backoff (then `Again`), or the step to end with.
    async fn recover(
        &self,
        entry: &ReplicationEntry,
        route: &Route<'_>,
        e: StorageError,
        attempts: &mut u32,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Then {
        let (target, policy) = (route.target, route.settings.retry);
        match after_failure(
            &e,
            &entry.source,
            *attempts,
            policy.max_attempts,
            self.config.defer_after,
        ) {
            AfterFailure::PauseLocation => {
                // Not this entry's fault: pause the location, do not count the attempt.
                *attempts -= 1;
                if !self.pause(&e.location, &e.to_string(), shutdown)
                    && !sleep_or_shutdown(backoff.next_delay(), shutdown).await
                {
                    return Then::Stop(None);
                }
            }
            AfterFailure::Retry { defer } => {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                metrics()
                    .retries
                    .get_or_create(&metrics().target(target))
                    .inc();
                let delay = backoff.next_delay();
                if defer {
                    tracing::warn!(attempt = *attempts, max_attempts = policy.max_attempts, error = %e, retry_in = ?delay, "copy failed, deferred to the retry topic");
                    return Then::Stop(Some(Step::Defer {
                        attempts: *attempts,
                        delay,
                        error: e.to_string(),
                    }));
                }
                tracing::warn!(attempt = *attempts, max_attempts = policy.max_attempts, error = %e, retry_in = ?delay, "copy failed, will retry");
                if !sleep_or_shutdown(delay, shutdown).await {
                    return Then::Stop(None);
                }
            }
            AfterFailure::SourceGone if replaced_at_source(route.source, entry).await => {
                self.stats.superseded.fetch_add(1, Ordering::Relaxed);
                completed_metric(target, 0);
                tracing::warn!(attempt = *attempts, "the source key was overwritten since (it keeps one version); the newer version is replicated by its own entry");
                let why = "superseded at the source by a newer version of the key";
                return Then::Stop(Some(done(
                    entry,
                    target,
                    ReplicationStatus::Completed,
                    None,
                    Some(why.into()),
                    *attempts,
                )));
            }
            AfterFailure::SourceGone | AfterFailure::Fail => {
                return Then::Stop(Some(self.failed(entry, target, e, *attempts)));
            }
        }
        Then::Again
    }

    /// The stores and gates of the entry's source and `target`; `None` if this process's
    /// configuration lacks either location.
    fn route<'a>(&'a self, entry: &ReplicationEntry, target: &'a str) -> Option<Route<'a>> {
        Some(Route {
            target,
            source: self.stores.get(&entry.source)?,
            store: self.stores.get(target)?,
            settings: self.targets.get(target)?,
            source_gate: self.gates.get(&entry.source)?,
            target_gate: self.gates.get(target)?,
        })
    }

    /// Waits while a location is paused (by an error or an operator): false on shutdown or a
    /// lost lease. A pause may last, so the other targets of the entry do not wait for it.
    async fn may_copy(
        &self,
        route: &Route<'_>,
        target: &str,
        seat: &mut Seat<'_>,
        lease: &Lease,
        shutdown: &CancellationToken,
    ) -> bool {
        if route.source_gate.paused().is_some()
            || route.target_gate.paused().is_some()
            || self.pauses.holding(target).is_some()
        {
            seat.leave();
        }
        if !route.source_gate.open(shutdown).await
            || !route.target_gate.open(shutdown).await
            || !self.pauses.wait_resumed(target, shutdown).await
        {
            return false;
        }
        lease.still_owned().await
    }

    /// One attempt on this target alone: an object copied (after its pre-check), a delete
    /// marker or a deletion applied once the source confirms it.
    async fn attempt_alone(
        &self,
        entry: &ReplicationEntry,
        route: &Route<'_>,
        copier: &Copier<'_>,
        first: bool,
    ) -> Result<Outcome, StorageError> {
        match entry.kind {
            EntryKind::Object => {
                self.copy_object(entry, route.source, route.store, copier, first)
                    .await
            }
            kind => match confirm::deletion(route.source, entry).await? {
                None if kind == EntryKind::DeleteMarker => copier.copy_delete_marker(entry).await,
                None => copier.delete_copy(entry).await,
                Some(outcome) => Ok(outcome),
            },
        }
    }

    /// The COMPLETED result of a successful attempt.
    fn finished(
        &self,
        entry: &ReplicationEntry,
        target: &str,
        outcome: Outcome,
        attempts: u32,
    ) -> Step {
        let completed = |target_version_id, note: Option<&str>| {
            done(
                entry,
                target,
                ReplicationStatus::Completed,
                target_version_id,
                note.map(String::from),
                attempts,
            )
        };
        match outcome {
            Outcome::Copied { target_version_id } => {
                self.stats.copied.fetch_add(1, Ordering::Relaxed);
                completed_metric(target, entry.size);
                tracing::info!(
                    attempt = attempts,
                    target_version = target_version_id.as_deref().unwrap_or("null"),
                    "replicated"
                );
                completed(target_version_id, None)
            }
            Outcome::AlreadyThere { target_version_id } => {
                self.stats.already_there.fetch_add(1, Ordering::Relaxed);
                completed_metric(target, 0);
                tracing::info!(attempt = attempts, "already on the target (redelivery)");
                completed(target_version_id, None)
            }
            Outcome::Superseded => {
                self.stats.superseded.fetch_add(1, Ordering::Relaxed);
                completed_metric(target, 0);
                tracing::warn!(attempt = attempts, "target already holds a newer version of this key; not writing an older one over it");
                completed(None, Some("superseded by a newer version on the target"))
            }
        }
    }

    /// The FAILED result of a copy that cannot succeed by retrying.
    fn failed(
        &self,
        entry: &ReplicationEntry,
        target: &str,
        e: StorageError,
        attempts: u32,
    ) -> Step {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        failed_metric(target, e.kind);
        tracing::error!(attempt = attempts, error = %e, "copy FAILED");
        self.status
            .error(format!("{} to {target}: FAILED: {e}", entry.key));
        let error = Some(e.to_string());
        done(
            entry,
            target,
            ReplicationStatus::Failed,
            None,
            error,
            attempts,
        )
    }

    /// The FAILED result of an entry naming a location this process does not know.
    fn unknown_location(&self, entry: &ReplicationEntry, target: &str) -> Step {
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        failed_metric(target, ErrorKind::Config);
        let message = format!(
            "this ferry's configuration has no location {:?} or {:?}",
            entry.source, target
        );
        tracing::error!(error = %message, "entry names an unknown location");
        self.status
            .error(format!("{} to {target}: {message}", entry.key));
        done(
            entry,
            target,
            ReplicationStatus::Failed,
            None,
            Some(message),
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: ErrorKind, location: &str) -> StorageError {
        StorageError {
            kind,
            op: "GetObject",
            location: location.into(),
            bucket: "b".into(),
            key: "k".into(),
            message: "test".into(),
            code: None,
        }
    }

    #[test]
    fn the_retry_policy_decides_by_kind_attempts_and_place() {
        let decide = |kind, location, attempts| {
            after_failure(&error(kind, location), "src", attempts, 10, 3)
        };
        use AfterFailure::*;
        assert_eq!(decide(ErrorKind::Unreachable, "dst", 9), PauseLocation);
        assert_eq!(decide(ErrorKind::Config, "src", 10), PauseLocation);
        assert_eq!(
            decide(ErrorKind::Transient, "dst", 1),
            Retry { defer: false }
        );
        assert_eq!(
            decide(ErrorKind::Transient, "dst", 3),
            Retry { defer: true }
        );
        assert_eq!(
            decide(ErrorKind::Transient, "dst", 10),
            Fail,
            "out of attempts"
        );
        assert_eq!(decide(ErrorKind::NotFound, "src", 1), SourceGone);
        assert_eq!(
            decide(ErrorKind::NotFound, "dst", 1),
            Fail,
            "a target's NotFound is no sign of a newer source version"
        );
        assert_eq!(decide(ErrorKind::Permanent, "dst", 1), Fail);
    }

    #[tokio::test]
    async fn a_seat_dropped_without_joining_leaves_its_group_once() {
        let group = JointCopy::new(2);
        {
            let mut seat = Seat(Some(&group));
            seat.leave();
            // Dropped after leaving: no second leave.
        }
        {
            let _seat = Seat(Some(&group));
            // Dropped on an early return.
        }
        assert_eq!(group.left(), 2);
        let mut joined = Seat(Some(&group));
        assert!(joined.take().is_some(), "the group, to join");
        drop(joined);
        assert_eq!(group.left(), 2, "a seat that joined does not also leave");
    }
}

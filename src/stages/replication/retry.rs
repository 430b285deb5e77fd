//! The retry topic's consumer: deferred copies, tried again when due.
//!
//! A copy that keeps failing transiently is not retried in place forever: after
//! `defer_after` attempts it goes to `<p>retry` (keyed like the entry) and the entry is
//! acknowledged, so later entries and the partition's committed offset move on. Here each
//! task waits for its due time in its own (target, key) lane — other keys are not held up —
//! and makes one attempt: a result goes to the status topic; another transient failure puts
//! the task back at the end of the topic with a later due time.
//!
//! Put-backs reorder the topic, so the topic's order is not the key's order. Each task
//! carries its entry's offset in the replication partition (its *origin*; all versions of a
//! key share a partition, in source order), and a task whose lane holds a waiting task of
//! an earlier origin goes back behind it instead of running: versions of a key still reach
//! the target in order, whatever order the put-backs left in the topic.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::lanes::Ticket;
use super::{ReplicationProcessor, Step, STAGE};
use crate::bus::Delivery;
use crate::model::{self, RetryTask};
use crate::stages::runner::{self, Inbox, Stage};
use crate::stages::sleep_or_shutdown;

impl ReplicationProcessor {
    /// Consumes the retry topic until `shutdown`.
    pub(super) async fn run_retries(self: Arc<Self>, shutdown: CancellationToken) {
        let tasks = self.tasks.clone();
        runner::consume(Arc::new(Retries(self)), &tasks, &shutdown).await;
    }

    /// One deferred copy: follow an earlier version of its key, or wait until due and try once.
    async fn retry(
        &self,
        task: RetryTask,
        ticket: Ticket,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticket.turn() => {}
        }
        let lane = (task.target.clone(), task.entry.message_key());
        if let Some(due) = self.waiting.earlier_than(&task) {
            // An earlier version of this key waits in the topic: go behind it.
            tracing::debug!("an earlier version of this key is still waiting; following it");
            let follower = RetryTask {
                due_at_ms: task.due_at_ms.max(due),
                ..task
            };
            if self.put_back(&follower, shutdown).await {
                delivery.ack();
            }
            return;
        }
        // No retry is due later than the longest backoff from now: a due time beyond it is
        // another clock's or a forged one, and would hold this lane (and a permit) for ever.
        let longest = self
            .targets
            .get(&task.target)
            .map_or(self.config.retry.max_delay, |t| t.retry.max_delay);
        let wait = Duration::from_millis(
            task.due_at_ms
                .saturating_sub(model::now_ms())
                .clamp(0, longest.as_millis() as i64) as u64,
        );
        if !sleep_or_shutdown(wait, shutdown).await {
            return;
        }
        let lease = delivery.lease();
        let Some(step) = self
            .copy_with_retries(
                &task.entry,
                &task.target,
                None,
                task.attempts,
                &lease,
                shutdown,
            )
            .await
        else {
            return;
        };
        self.touch(&task.target, &task.entry.key);
        if !lease.still_owned().await {
            return;
        }
        let done = match step {
            Step::Done(result) => {
                let published = self
                    .topics
                    .status
                    .publish(&self.publisher, &result, shutdown)
                    .await;
                if published {
                    self.waiting.done(&task);
                    let mut deferred = self.lock_deferred();
                    if let Some(count) = deferred.get_mut(&lane) {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            deferred.remove(&lane);
                        }
                    }
                }
                published
            }
            Step::Defer {
                attempts,
                delay,
                error,
            } => {
                if !self
                    .publish_progress(&task.entry, &task.target, attempts, &error, shutdown)
                    .await
                {
                    return;
                }
                let again = RetryTask {
                    id: format!("{}/{}/{}", model::now_ms(), fastrand::u64(..), attempts),
                    attempts,
                    due_at_ms: model::now_ms() + delay.as_millis() as i64,
                    last_error: Some(error),
                    ..task
                };
                self.put_back(&again, shutdown).await
            }
        };
        drop(ticket);
        if done {
            delivery.ack();
        }
    }

    /// Publishes `task` at the end of the retry topic. Returns whether it is durable.
    async fn put_back(&self, task: &RetryTask, shutdown: &CancellationToken) -> bool {
        let published = self
            .topics
            .retry
            .publish(&self.publisher, task, shutdown)
            .await;
        if published {
            self.waiting.note(task);
        }
        published
    }
}

/// The deferred versions each (target, key) lane is waiting on: origin → due time.
#[derive(Default)]
pub(super) struct Waiting(Mutex<HashMap<(String, String), BTreeMap<i64, i64>>>);

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), BTreeMap<i64, i64>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `task` waits in the topic (again, with its latest due time).
    fn note(&self, task: &RetryTask) {
        if let Some(origin) = task.origin {
            self.lock()
                .entry(lane(task))
                .or_default()
                .insert(origin, task.due_at_ms);
        }
    }

    /// The due time of an earlier version of `task`'s key still waiting, if there is one.
    fn earlier_than(&self, task: &RetryTask) -> Option<i64> {
        let origin = task.origin?;
        let waiting = self.lock();
        let (&first, &due) = waiting.get(&lane(task))?.first_key_value()?;
        (first < origin).then_some(due)
    }

    /// `task` reached its final result: versions after it may go.
    fn done(&self, task: &RetryTask) {
        let Some(origin) = task.origin else { return };
        let mut waiting = self.lock();
        let lane = lane(task);
        if let Some(origins) = waiting.get_mut(&lane) {
            origins.remove(&origin);
            if origins.is_empty() {
                waiting.remove(&lane);
            }
        }
    }
}

fn lane(task: &RetryTask) -> (String, String) {
    (task.target.clone(), task.entry.message_key())
}

/// The retry topic's consumer: deferred copies, each tried once when due.
struct Retries(Arc<ReplicationProcessor>);

impl Stage for Retries {
    type Input = RetryTask;
    /// The retry's place in its target's lane for the key.
    type Admitted = Ticket;
    const NAME: &'static str = STAGE;
    const WHAT: &'static str = "retry task";

    fn inbox(&self) -> Inbox<'_> {
        let p = &self.0;
        Inbox {
            subscription: &p.retry_subscription,
            publisher: &p.publisher,
            dead_letter_topic: &p.topics.dead_letter,
            status: &p.status,
            concurrency: p.config.max_in_flight,
        }
    }

    fn admit(&self, task: &RetryTask) -> Result<Ticket, String> {
        let p = &self.0;
        if let Some(why) = p.known.retry_refusal(task) {
            return Err(why);
        }
        // Taken here, in partition order, like the main path's lanes.
        let ticket = p.retry_lanes.enter(&task.target, &task.entry.message_key());
        p.waiting.note(task);
        Ok(ticket)
    }

    fn span(task: &RetryTask) -> tracing::Span {
        tracing::info_span!("retry", stage = STAGE, rule = %task.entry.rule, bucket = %task.entry.bucket, key = %task.entry.key, version = task.entry.version_id.as_deref().unwrap_or("null"), target = %task.target, attempt = task.attempts + 1)
    }

    async fn handle(
        self: Arc<Self>,
        task: RetryTask,
        ticket: Ticket,
        delivery: Delivery,
        shutdown: CancellationToken,
    ) {
        self.0.retry(task, ticket, delivery, &shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EntryKind, ReplicationEntry};

    fn entry() -> ReplicationEntry {
        ReplicationEntry {
            schema: model::SCHEMA,
            rule: "r".into(),
            source: "src".into(),
            bucket: "b".into(),
            key: "k".into(),
            version_id: Some("v".into()),
            kind: EntryKind::Object,
            size: 1,
            etag: None,
            last_modified_ms: 1,
            targets: vec!["t".into()],
            transient: false,
            enqueued_at_ms: 1,
        }
    }

    fn task(origin: Option<i64>, due: i64) -> RetryTask {
        RetryTask {
            schema: model::SCHEMA,
            id: format!("{origin:?}"),
            entry: entry(),
            target: "t".into(),
            attempts: 1,
            due_at_ms: due,
            last_error: None,
            origin,
        }
    }

    #[test]
    fn later_versions_follow_the_earliest_waiting_one() {
        let waiting = Waiting::default();
        let (v1, v2, v3) = (task(Some(10), 500), task(Some(11), 0), task(Some(12), 0));
        // The topic's order after put-backs: v3 before v2 before v1.
        waiting.note(&v3);
        waiting.note(&v2);
        waiting.note(&v1);
        assert_eq!(waiting.earlier_than(&v3), Some(500), "v3 waits for v1");
        assert_eq!(waiting.earlier_than(&v2), Some(500), "v2 waits for v1");
        assert_eq!(waiting.earlier_than(&v1), None, "v1 goes");
        waiting.done(&v1);
        assert_eq!(waiting.earlier_than(&v3), Some(0), "v3 still waits for v2");
        assert_eq!(waiting.earlier_than(&v2), None);
        waiting.done(&v2);
        assert_eq!(waiting.earlier_than(&v3), None);
        waiting.done(&v3);
        assert!(waiting.lock().is_empty(), "finished lanes are forgotten");
        // A re-enqueued FAILED entry has no origin and waits for nothing.
        waiting.note(&v1);
        assert_eq!(waiting.earlier_than(&task(None, 0)), None);
    }
}

//! The retry topic's consumer: deferred copies, tried again when due.
//!
//! A copy that keeps failing transiently is not retried in place forever: after
//! `defer_after` attempts it goes to `<p>retry` (keyed like the entry) and the entry is
//! acknowledged, so later entries and the partition's committed offset move on. Here each
//! task waits for its due time in its own (target, key) lane — other keys are not held up —
//! and makes one attempt: a result goes to the status topic; another transient failure puts
//! the task back at the end of the topic with a later due time, and every later task of the
//! same lane follows it there, so versions of a key still reach the target in order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::lanes::Ticket;
use super::{ReplicationProcessor, Step, STAGE};
use crate::bus::Delivery;
use crate::model::{self, RetryTask};
use crate::stages::{decode_or_dead_letter, publish_until_done, receive, sleep_or_shutdown};

impl ReplicationProcessor {
    /// Consumes the retry topic until `shutdown`.
    pub(super) async fn run_retries(self: Arc<Self>, shutdown: CancellationToken) {
        let in_flight = Arc::new(Semaphore::new(self.config.max_in_flight));
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = in_flight.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let Some(delivery) = receive(&self.retry_subscription, STAGE, &shutdown).await else {
                return;
            };
            let Some((task, delivery)) = decode_or_dead_letter::<RetryTask>(
                "retry task",
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
            // Taken here, in partition order, like the main path's lanes.
            let ticket = self
                .retry_lanes
                .enter(&task.target, &task.entry.message_key());
            let span = tracing::info_span!("retry", stage = STAGE, rule = %task.entry.rule, bucket = %task.entry.bucket, key = %task.entry.key, version = task.entry.version_id.as_deref().unwrap_or("null"), target = %task.target, attempt = task.attempts + 1);
            let worker = self.clone();
            let shutdown = shutdown.clone();
            self.tasks.spawn(
                async move {
                    worker.retry(task, ticket, delivery, &shutdown).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }

    /// One deferred copy: follow a put-back predecessor, or wait until due and try once.
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
        let held = self.lock_held().get(&lane).cloned();
        match held {
            Some((id, due)) if id != task.id => {
                // An earlier task of this lane was put back: go behind it.
                let follower = RetryTask {
                    due_at_ms: task.due_at_ms.max(due),
                    ..task
                };
                if self.put_back(&follower, &lane, false, shutdown).await {
                    delivery.ack();
                }
                return;
            }
            Some(_) => {
                self.lock_held().remove(&lane);
            }
            None => {}
        }
        let wait = Duration::from_millis((task.due_at_ms - model::now_ms()).max(0) as u64);
        if !sleep_or_shutdown(wait, shutdown).await {
            return;
        }
        let Some(step) = self
            .copy_with_retries(&task.entry, &task.target, None, task.attempts, shutdown)
            .await
        else {
            return;
        };
        let done = match step {
            Step::Done(result) => {
                let published = publish_until_done(
                    &self.publisher,
                    &self.topics.status,
                    None,
                    &task.entry.message_key(),
                    Some(&model::encode(&result)),
                    shutdown,
                )
                .await;
                if published {
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
                let again = RetryTask {
                    id: format!("{}/{}/{}", model::now_ms(), fastrand::u64(..), attempts),
                    attempts,
                    due_at_ms: model::now_ms() + delay.as_millis() as i64,
                    last_error: Some(error),
                    ..task
                };
                self.put_back(&again, &lane, true, shutdown).await
            }
        };
        drop(ticket);
        if done {
            delivery.ack();
        }
    }

    /// Publishes `task` at the end of the retry topic; `hold` makes later tasks of its lane
    /// follow it. Returns whether it is durable.
    async fn put_back(
        &self,
        task: &RetryTask,
        lane: &(String, String),
        hold: bool,
        shutdown: &CancellationToken,
    ) -> bool {
        let published = publish_until_done(
            &self.publisher,
            &self.topics.retry,
            None,
            &task.entry.message_key(),
            Some(&model::encode(task)),
            shutdown,
        )
        .await;
        if published && hold {
            self.lock_held()
                .insert(lane.clone(), (task.id.clone(), task.due_at_ms));
        }
        published
    }

    fn lock_held(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), (String, i64)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

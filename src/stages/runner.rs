//! The one consume loop of the stages that work message by message: take room (at most the
//! stage's concurrency in flight), receive (riding out broker hiccups), decode or dead-letter,
//! admit or refuse in delivery order, then run the stage's `handle` in a tracked task inside
//! the message's span. Acknowledging is `handle`'s: it acknowledges once its outcome is
//! durable, so whatever shutdown interrupts is redone by the partition's next owner.

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::board::StageStatus;
use super::{decode_or_dead_letter, receive, refuse};
use crate::bus::{Delivery, Publisher, Subscription};

/// Where a stage's messages come from, and where those it cannot work on go.
pub struct Inbox<'a> {
    pub subscription: &'a Subscription,
    pub publisher: &'a Publisher,
    pub dead_letter_topic: &'a str,
    /// The stage's counters on the board (received, in flight, processed, dead letters).
    pub status: &'a StageStatus,
    /// Messages worked on at once.
    pub concurrency: usize,
}

/// A stage that works on each message of its inbox on its own.
pub trait Stage: Send + Sync + 'static {
    /// The messages it consumes.
    type Input: DeserializeOwned + Send + 'static;
    /// What [`Stage::admit`] takes for a message, in delivery order, for [`Stage::handle`].
    type Admitted: Send + 'static;
    /// The stage's name in logs, metrics and dead letters.
    const NAME: &'static str;
    /// What one message is, for a dead letter ("GC task").
    const WHAT: &'static str;

    fn inbox(&self) -> Inbox<'_>;

    /// Checks a decoded message before any work, in delivery order: `Err` says why it is
    /// refused (it goes to the dead-letter topic); `Ok` carries what must be taken in order
    /// (e.g. places in per-key lanes).
    fn admit(&self, input: &Self::Input) -> Result<Self::Admitted, String>;

    /// The span the message's work runs in.
    fn span(input: &Self::Input) -> tracing::Span;

    /// Works on one message; acknowledges `delivery` once the outcome is durable.
    fn handle(
        self: Arc<Self>,
        input: Self::Input,
        admitted: Self::Admitted,
        delivery: Delivery,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send;
}

/// Runs `stage` on its inbox until `shutdown`, its work spawned onto `tasks` (which the
/// caller closes and waits for before committing offsets).
pub async fn consume<S: Stage>(stage: Arc<S>, tasks: &TaskTracker, shutdown: &CancellationToken) {
    let inbox = stage.inbox();
    let room = Arc::new(Semaphore::new(inbox.concurrency));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = room.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let Some(delivery) = receive(inbox.subscription, S::NAME, shutdown).await else {
            break;
        };
        inbox.status.received();
        let Some((input, delivery)) = decode_or_dead_letter::<S::Input>(
            S::WHAT,
            delivery,
            inbox.publisher,
            inbox.dead_letter_topic,
            S::NAME,
            inbox.status,
            shutdown,
        )
        .await
        else {
            continue;
        };
        let admitted = match stage.admit(&input) {
            Ok(admitted) => admitted,
            Err(why) => {
                let (publisher, topic) = (inbox.publisher, inbox.dead_letter_topic);
                refuse(
                    publisher,
                    topic,
                    S::NAME,
                    inbox.status,
                    delivery,
                    &why,
                    shutdown,
                )
                .await;
                continue;
            }
        };
        let span = S::span(&input);
        let worker = stage.clone();
        let shutdown = shutdown.clone();
        inbox.status.started();
        tasks.spawn(
            async move {
                worker
                    .clone()
                    .handle(input, admitted, delivery, shutdown)
                    .await;
                worker.inbox().status.finished();
                drop(permit);
            }
            .instrument(span),
        );
    }
}

//! The four stages, each a long-running task that consumes one topic and produces the next.
//!
//! ```text
//! S3 source ──▶ QueuePopulator ──▶ replication ──▶ ReplicationProcessor ──▶ status
//!                                                                             │
//!           transient source ◀── GarbageCollector ◀── gc ◀── StatusProcessor ◀┘
//! ```

pub mod admit;
pub mod board;
pub mod gc;
pub mod populator;
pub mod replication;
pub mod runner;
pub mod status;
#[cfg(test)]
pub(crate) mod testing;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use crate::bus::publish_until_done;
use crate::bus::{BusError, Delivery, Publisher};
use crate::storage::StorageError;

/// Why a stage stopped with an error (the process then exits non-zero for its supervisor).
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{stage}: {source}")]
    Bus {
        stage: &'static str,
        #[source]
        source: BusError,
    },
    #[error("{stage}: {source}")]
    Storage {
        stage: &'static str,
        #[source]
        source: StorageError,
    },
    /// A stage's local state store (on this host's disk) failed.
    #[error("{stage}: {message}")]
    State {
        stage: &'static str,
        message: String,
    },
}

/// Pause after a failed receive from the broker before trying again: long enough not to spin
/// while the broker is away, short enough to resume promptly when it is back.
const RECEIVE_RETRY: Duration = Duration::from_secs(1);

/// Sleeps for `delay` unless shutdown comes first; returns false on shutdown.
pub async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Sends a message no stage can read to the dead-letter topic, with where it came from and
/// why, then acknowledges it: the stage keeps going and nothing is lost.
pub async fn dead_letter(
    publisher: &Publisher,
    dead_letter_topic: &str,
    stage: &'static str,
    delivery: Delivery,
    reason: &str,
    shutdown: &CancellationToken,
) {
    let origin = delivery.origin();
    tracing::error!(stage, origin = %origin, reason, "unreadable message sent to the dead-letter topic");
    let record = serde_json::json!({
        "schema": crate::model::SCHEMA,
        "stage": stage,
        "origin": origin,
        "reason": reason,
        "key": delivery.key.as_deref().map(String::from_utf8_lossy),
        "payload": delivery.payload.as_deref().map(String::from_utf8_lossy),
        "at_ms": crate::model::now_ms(),
    });
    let payload = crate::model::encode(&record);
    if publish_until_done(
        publisher,
        dead_letter_topic,
        None,
        &origin,
        Some(&payload),
        shutdown,
    )
    .await
    {
        delivery.ack();
    }
}

/// Decodes a delivery's payload as a `T` message; an unreadable one (invalid JSON, unknown
/// schema, missing fields, empty) goes to the dead-letter topic, counted in `status`, and
/// `None` is returned so the stage carries on with the next message.
pub async fn decode_or_dead_letter<T: serde::de::DeserializeOwned>(
    what: &'static str,
    delivery: Delivery,
    publisher: &Publisher,
    dead_letter_topic: &str,
    stage: &'static str,
    status: &board::StageStatus,
    shutdown: &CancellationToken,
) -> Option<(T, Delivery)> {
    let reason = match delivery
        .payload
        .as_deref()
        .map(|p| crate::model::decode(what, p))
    {
        Some(Ok(message)) => return Some((message, delivery)),
        Some(Err(e)) => e.to_string(),
        None => "empty message".to_string(),
    };
    refuse(
        publisher,
        dead_letter_topic,
        stage,
        status,
        delivery,
        &reason,
        shutdown,
    )
    .await;
    None
}

/// Counts a message the stage will not work on and sends it to the dead-letter topic.
pub async fn refuse(
    publisher: &Publisher,
    dead_letter_topic: &str,
    stage: &'static str,
    status: &board::StageStatus,
    delivery: Delivery,
    reason: &str,
    shutdown: &CancellationToken,
) {
    status.dead_lettered();
    crate::metrics::metrics()
        .dead_letters
        .get_or_create(&crate::metrics::StageLabel {
            stage: stage.to_string(),
        })
        .inc();
    dead_letter(
        publisher,
        dead_letter_topic,
        stage,
        delivery,
        reason,
        shutdown,
    )
    .await;
}

/// Receives the next delivery, riding out broker hiccups; `None` on shutdown.
pub async fn receive(
    subscription: &crate::bus::Subscription,
    stage: &'static str,
    shutdown: &CancellationToken,
) -> Option<Delivery> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            received = subscription.recv() => match received {
                Ok(delivery) => return Some(delivery),
                Err(e) => {
                    tracing::warn!(stage, error = %e, "receive failed");
                    if !sleep_or_shutdown(RECEIVE_RETRY, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }
}

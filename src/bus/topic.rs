//! `Topic<T>`: a topic's name with the type of message it carries. Publishing a message
//! encodes it (versioned JSON), keys it by its object (so every version of one object lands on
//! one partition, in order) and retries until the queue holds it durably.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{BusError, Publisher};
use crate::backoff::Backoff;
use crate::model::{self, Message};

/// A topic carrying messages of type `T`. Derefs to its name.
pub struct Topic<T> {
    name: String,
    message: PhantomData<fn() -> T>,
}

impl<T> Topic<T> {
    pub fn new(name: String) -> Self {
        Self {
            name,
            message: PhantomData,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<T: Message> Topic<T> {
    /// Publishes `message` once: its partition and offset once durable, or why not.
    pub async fn send(&self, publisher: &Publisher, message: &T) -> Result<(i32, i64), BusError> {
        let payload = model::encode(message);
        publisher
            .publish(&self.name, &message.message_key(), Some(&payload))
            .await
    }

    /// Publishes `message` until the queue holds it; false if shutdown came first.
    pub async fn publish(
        &self,
        publisher: &Publisher,
        message: &T,
        shutdown: &CancellationToken,
    ) -> bool {
        let payload = model::encode(message);
        let key = message.message_key();
        publish_until_done(publisher, &self.name, None, &key, Some(&payload), shutdown).await
    }
}

impl<T> Clone for Topic<T> {
    fn clone(&self) -> Self {
        Self::new(self.name.clone())
    }
}

impl<T> fmt::Debug for Topic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Topic").field(&self.name).finish()
    }
}

impl<T> fmt::Display for Topic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl<T> Deref for Topic<T> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.name
    }
}

/// Publishes until the broker accepts or shutdown comes (returns false then). Publishing
/// only fails while the broker is unreachable; giving up would lose the message.
pub async fn publish_until_done(
    publisher: &Publisher,
    topic: &str,
    partition: Option<i32>,
    key: &str,
    payload: Option<&[u8]>,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let sent = match partition {
            Some(p) => publisher.publish_to(topic, p, key, payload).await,
            None => publisher.publish(topic, key, payload).await,
        };
        match sent {
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "publish failed, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

//! Key lanes: the versions of one key reach one target in the order they were enqueued.
//!
//! Entries of a partition are worked on concurrently, but two versions of the same key must
//! not race to a target (the later write would decide which version is current). Each entry
//! takes a ticket per target when it is received — in partition order — and waits for the
//! ticket before it to finish. Different keys, and different targets, never wait for each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The lanes of one replication processor.
#[derive(Default)]
pub struct Lanes {
    /// Per (target, bucket/key): the id of the last ticket issued and its completion signal.
    tails: Mutex<HashMap<(String, String), (u64, CancellationToken)>>,
    issued: std::sync::atomic::AtomicU64,
}

/// A place in one lane. Dropping it (work done, failed, or abandoned) lets the next one go.
pub struct Ticket {
    lanes: Arc<Lanes>,
    lane: (String, String),
    id: u64,
    before: Option<CancellationToken>,
    done: CancellationToken,
}

impl Lanes {
    /// Takes the next place in the lane of `key` on `target`. Call in the order entries arrive.
    pub fn enter(self: &Arc<Self>, target: &str, key: &str) -> Ticket {
        let id = self
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let done = CancellationToken::new();
        let lane = (target.to_string(), key.to_string());
        let before = self
            .tails
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lane.clone(), (id, done.clone()))
            .map(|(_, token)| token);
        Ticket {
            lanes: self.clone(),
            lane,
            id,
            before,
            done,
        }
    }

    /// Lanes with work queued or running (for tests and stats).
    #[cfg(test)]
    pub fn busy(&self) -> usize {
        self.tails.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Ticket {
    /// Waits until every earlier ticket of this lane is finished.
    pub async fn turn(&self) {
        if let Some(before) = &self.before {
            before.cancelled().await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.done.cancel();
        let mut tails = self.lanes.tails.lock().unwrap_or_else(|p| p.into_inner());
        if tails.get(&self.lane).is_some_and(|(id, _)| *id == self.id) {
            tails.remove(&self.lane);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn same_key_waits_other_keys_do_not() {
        let lanes = Arc::new(Lanes::default());
        let first = lanes.enter("t", "k");
        let second = lanes.enter("t", "k");
        let other_key = lanes.enter("t", "j");
        let other_target = lanes.enter("u", "k");
        // Independent lanes go at once.
        tokio::time::timeout(Duration::from_secs(1), other_key.turn())
            .await
            .expect("other key");
        tokio::time::timeout(Duration::from_secs(1), other_target.turn())
            .await
            .expect("other target");
        // The second version waits for the first.
        assert!(tokio::time::timeout(Duration::from_secs(1), second.turn())
            .await
            .is_err());
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), second.turn())
            .await
            .expect("after first");
        drop((second, other_key, other_target));
        assert_eq!(lanes.busy(), 0, "finished lanes are forgotten");
    }
}

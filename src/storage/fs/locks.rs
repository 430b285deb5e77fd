//! Per-key async locks: within one process, the writes and deletes of one key happen one at a
//! time, and a reader never sees a key between its data file and its sidecar being replaced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Below this many remembered keys the map is never swept: sweeping costs a pass over it.
const SWEEP_FLOOR: usize = 1024;

/// The locks of the keys in use; a key's lock lives as long as someone holds or awaits it.
#[derive(Default)]
pub struct KeyLocks {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    locks: HashMap<String, Weak<AsyncMutex<()>>>,
    /// The map is swept of dead entries when it grows past this (twice the live count after
    /// the last sweep), so sweeping stays amortised O(1) per lock.
    sweep_at: usize,
}

impl KeyLocks {
    /// Waits for `key`'s lock; it is released when the guard is dropped.
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match state.locks.get(key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    if state.locks.len() >= state.sweep_at.max(SWEEP_FLOOR) {
                        state.locks.retain(|_, lock| lock.strong_count() > 0);
                        state.sweep_at = state.locks.len() * 2;
                    }
                    let lock = Arc::new(AsyncMutex::new(()));
                    state.locks.insert(key.to_string(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .locks
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn one_holder_per_key_others_free() {
        let locks = Arc::new(KeyLocks::default());
        let held = locks.lock("a").await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { drop(locks.lock("a").await) })
        };
        // Another key is not held up.
        drop(locks.lock("b").await);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        drop(held);
        waiter
            .await
            .expect("the waiter gets the lock once it is released");
    }

    #[tokio::test]
    async fn unused_locks_are_swept() {
        let locks = KeyLocks::default();
        for i in 0..(3 * SWEEP_FLOOR) {
            drop(locks.lock(&i.to_string()).await);
        }
        assert!(locks.remembered() <= SWEEP_FLOOR + 1);
    }
}

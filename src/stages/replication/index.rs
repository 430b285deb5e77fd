//! `KeyIndex`: which keys each target held when this process listed it, so that the first copy
//! of a key the target never had skips the pre-check (one request fewer per object on a first
//! sync, where a HEAD can only answer "not there").
//!
//! The pre-check exists for keys ferry may have written before: a redelivered entry finds its
//! earlier copy, and an older version does not go over a newer one. A key absent from a
//! listing taken after this process got its partitions, and not written by this process since,
//! cannot be either: only the owner of a key's partition writes it (retries, which another
//! instance may own, always pre-check). So each listing belongs to one assignment generation
//! (a rebalance lists again), and every key this process claims or writes is remembered beside
//! it. Both are [`KeySet`]s — Bloom filters, about 1.2 bytes a key: a target of 10 million
//! keys is indexed in ~15 MiB, and a "maybe" (1 % of new keys) only costs the pre-check. After
//! [`RENEW_AFTER`] claims the target is listed again, which bounds the claims' filter. The
//! listing runs in the background: until it is done every copy pre-checks, so a start never
//! waits for a listing of the whole target.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::bloom::KeySet;
use crate::storage::Store;

/// Claims and writes remembered before the target is listed anew.
pub const RENEW_AFTER: usize = 10_000_000;
/// A failed listing is tried again after this long (until then every copy pre-checks).
const RELIST_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Where a listing is.
enum Phase {
    /// Not started, or failed at the instant given.
    Idle(Option<Instant>),
    /// Under way on a task of its own, stopped if the listing is dropped first.
    Running(tokio::task::AbortHandle),
}

/// One listing of one target, for one assignment generation.
struct Listing {
    generation: u64,
    /// The keys the target held at listing time, once listed.
    listed: OnceLock<KeySet>,
    phase: Mutex<Phase>,
    /// Keys claimed or written by this process since the listing was created.
    touched: Mutex<KeySet>,
}

impl Drop for Listing {
    /// A listing of a generation that ended is of no use: stop it.
    fn drop(&mut self) {
        if let Phase::Running(task) = &*self.phase.get_mut().unwrap_or_else(|p| p.into_inner()) {
            task.abort();
        }
    }
}

impl Listing {
    fn new(generation: u64) -> Arc<Self> {
        Arc::new(Self {
            generation,
            listed: OnceLock::new(),
            phase: Mutex::new(Phase::Idle(None)),
            touched: Mutex::default(),
        })
    }

    fn touched(&self) -> std::sync::MutexGuard<'_, KeySet> {
        self.touched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts listing `target` in the background unless a listing is under way or failed
    /// less than [`RELIST_AFTER_FAILURE`] ago. The copies meanwhile pre-check, so the first
    /// copy after a start never waits for a listing of the whole target.
    fn start(self: &Arc<Self>, target: &Store) {
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        match &*phase {
            Phase::Running(_) => return,
            Phase::Idle(Some(failed)) if failed.elapsed() < RELIST_AFTER_FAILURE => return,
            Phase::Idle(_) => {}
        }
        let (me, target) = (Arc::downgrade(self), target.clone());
        let task = tokio::spawn(list(me, target));
        *phase = Phase::Running(task.abort_handle());
    }
}

/// Lists `target` into `listing` (if it still exists when done).
async fn list(listing: Weak<Listing>, target: Store) {
    let started = Instant::now();
    let mut keys = KeySet::default();
    let listed = target.each_key(|key| keys.insert(key)).await;
    let Some(listing) = listing.upgrade() else {
        return;
    };
    let mut phase = listing.phase.lock().unwrap_or_else(|p| p.into_inner());
    match listed {
        Ok(()) => {
            tracing::debug!(
                target = target.name(),
                keys = keys.len(),
                bytes = keys.bytes(),
                seconds = started.elapsed().as_secs_f64(),
                "target listed for the key index"
            );
            let _ = listing.listed.set(keys);
            *phase = Phase::Idle(None);
        }
        Err(e) => {
            tracing::warn!(target = target.name(), error = %e, "listing the target for the key index failed; every copy pre-checks until a listing succeeds");
            *phase = Phase::Idle(Some(Instant::now()));
        }
    }
}

/// Per target location, its current listing.
#[derive(Default)]
pub struct KeyIndex {
    targets: Mutex<HashMap<String, Arc<Listing>>>,
}

impl KeyIndex {
    /// Whether `key` is certainly new on `target`; if so, claims it (the next call for the same
    /// key says no). `generation` counts this process's partition assignments. Any doubt (the
    /// target not listed yet or the listing failed, the filter says "maybe") says no, and the
    /// caller pre-checks.
    pub fn claim_new(&self, target: &Store, key: &str, generation: u64) -> bool {
        let listing = self.current(target.name(), generation);
        let Some(listed) = listing.listed.get() else {
            listing.start(target);
            return false;
        };
        let mut touched = listing.touched();
        if listed.may_contain(key) || touched.may_contain(key) {
            return false;
        }
        touched.insert(key);
        if touched.len() >= RENEW_AFTER {
            // Start over with a fresh listing, which holds every key written so far.
            drop(touched);
            self.renew(target.name(), &listing);
        }
        true
    }

    /// Remembers that this process wrote (or is about to write) `key` on `target`.
    pub fn touch(&self, target: &str, key: &str, generation: u64) {
        let listing = self.current(target, generation);
        let mut touched = listing.touched();
        touched.insert(key);
        if touched.len() >= RENEW_AFTER {
            drop(touched);
            self.renew(target, &listing);
        }
    }

    /// Whether `target`'s listing for `generation` is done (for tests).
    #[cfg(test)]
    fn is_listed(&self, target: &str, generation: u64) -> bool {
        self.current(target, generation).listed.get().is_some()
    }

    /// The target's listing for `generation`, a new one if the generation changed.
    fn current(&self, target: &str, generation: u64) -> Arc<Listing> {
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let slot = targets
            .entry(target.to_string())
            .or_insert_with(|| Listing::new(generation));
        if slot.generation != generation {
            *slot = Listing::new(generation);
        }
        slot.clone()
    }

    /// Replaces `old` (if still current) with a listing to be taken anew.
    fn renew(&self, target: &str, old: &Arc<Listing>) {
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = targets.get_mut(target) {
            if Arc::ptr_eq(slot, old) {
                *slot = Listing::new(old.generation);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{FsStore, ObjectMeta};
    use base64::Engine;
    use md5::{Digest, Md5};

    async fn store_holding(keys: &[&str]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::Fs(FsStore::new(
            "t",
            "t",
            dir.path().join("store"),
            std::time::Duration::ZERO,
        ));
        store.check().await.expect("the store sets itself up");
        for key in keys {
            let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(b"x"));
            store
                .put(key, "x".into(), &md5, &ObjectMeta::default(), None)
                .await
                .expect("put");
        }
        (dir, store)
    }

    /// Claims `key` once the target's listing for `generation` is done.
    async fn claim_listed(index: &KeyIndex, store: &Store, key: &str, generation: u64) -> bool {
        for _ in 0..500 {
            let claimed = index.claim_new(store, key, generation);
            if index.is_listed("t", generation) {
                return claimed || index.claim_new(store, key, generation);
            }
            assert!(!claimed, "nothing is new before the listing is done");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the target was not listed in 5 s");
    }

    #[tokio::test]
    async fn only_a_key_the_target_never_had_is_new_and_only_once() {
        let (_dir, store) = store_holding(&["old"]).await;
        let index = KeyIndex::default();
        assert!(
            !index.claim_new(&store, "new", 0),
            "not listed yet: pre-check"
        );
        assert!(!claim_listed(&index, &store, "old", 0).await, "listed");
        assert!(index.claim_new(&store, "new", 0));
        assert!(!index.claim_new(&store, "new", 0), "claimed once");
        index.touch("t", "written", 0);
        assert!(!index.claim_new(&store, "written", 0), "written here");
    }

    #[tokio::test]
    async fn a_new_assignment_lists_again() {
        let (_dir, store) = store_holding(&[]).await;
        let index = KeyIndex::default();
        assert!(claim_listed(&index, &store, "k", 0).await);
        // Written meanwhile by whoever owned the partition: the next generation's listing
        // shows it.
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(b"x"));
        store
            .put("other", "x".into(), &md5, &ObjectMeta::default(), None)
            .await
            .expect("put");
        assert!(!claim_listed(&index, &store, "other", 1).await);
        assert!(
            index.claim_new(&store, "k", 1),
            "forgotten with the old listing"
        );
    }

    #[tokio::test]
    async fn a_target_that_cannot_be_listed_is_never_new() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("file"), b"").expect("write");
        let store = Store::Fs(FsStore::new(
            "t",
            "t",
            dir.path().join("file/sub"),
            std::time::Duration::ZERO,
        ));
        let index = KeyIndex::default();
        for _ in 0..20 {
            assert!(!index.claim_new(&store, "k", 0));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!index.is_listed("t", 0));
    }
}

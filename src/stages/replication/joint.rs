//! `JointCopy`: gathers the targets of one entry that are ready at the same time, so the
//! source version is read once for all of them.
//!
//! Each target's task, once its key lane, gates and permit allow and its pre-check found a copy
//! is needed, joins the entry's group. When every target has either joined or finished without
//! copying — or [`JOIN_WINDOW`] after the first joined, so a target stuck behind an earlier
//! version does not hold the others — the task that notices becomes the leader: it reads the
//! source once and writes it to every member, and hands each member its result. A target that
//! arrives after the copy started reads the source on its own.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use super::copier::Outcome;
use crate::storage::{StorageError, Store};

/// How long the first ready target waits for the others before the copy starts without them.
/// Targets of one entry normally become ready within milliseconds of each other.
const JOIN_WINDOW: Duration = Duration::from_millis(250);

type Reply = oneshot::Sender<Result<Outcome, StorageError>>;

/// The group of one entry.
pub struct JointCopy {
    targets: usize,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    members: Vec<(Store, Reply)>,
    /// Targets that finished without joining (already there, or failed before).
    left: usize,
    started: bool,
}

/// What joining gave.
pub enum Joined {
    /// This task leads: copy to these stores and send each its result (this task's own is
    /// among them; it then reads it from the receiver).
    Lead(
        Vec<(Store, Reply)>,
        oneshot::Receiver<Result<Outcome, StorageError>>,
    ),
    /// Another task leads; wait here for this target's result.
    Follow(oneshot::Receiver<Result<Outcome, StorageError>>),
    /// The joint copy already started: copy on your own.
    Alone,
}

impl JointCopy {
    pub fn new(targets: usize) -> Self {
        Self {
            targets,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A target that will not join (no copy needed, or it gave up) says so.
    pub fn leave(&self) {
        self.lock().left += 1;
        self.changed.notify_waiters();
    }

    /// Joins with `store`; see [`Joined`].
    pub async fn join(&self, store: Store) -> Joined {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.lock();
            if state.started {
                return Joined::Alone;
            }
            state.members.push((store, tx));
        }
        self.changed.notify_waiters();
        let deadline = tokio::time::Instant::now() + JOIN_WINDOW;
        loop {
            let notified = self.changed.notified();
            {
                let mut state = self.lock();
                if state.started {
                    return Joined::Follow(rx);
                }
                let everyone = state.members.len() + state.left >= self.targets;
                if everyone || tokio::time::Instant::now() >= deadline {
                    state.started = true;
                    return Joined::Lead(std::mem::take(&mut state.members), rx);
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChecksumCalculation, LocationConfig, RetryPolicy, StaticCredentials};

    async fn store(name: &str) -> Store {
        let s3 = crate::storage::S3Store::connect(&LocationConfig {
            name: name.into(),
            kind: crate::config::LocationKind::S3,
            endpoint: Some("http://127.0.0.1:1".into()),
            region: "us-east-1".into(),
            bucket: name.into(),
            path_style: true,
            credentials: Some(StaticCredentials {
                access_key_id: "k".into(),
                secret_access_key: "s".into(),
            }),
            checksum_calculation: ChecksumCalculation::WhenRequired,
            transient: false,
            concurrency: 1,
            retry: RetryPolicy {
                max_attempts: 1,
                initial_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(1),
            },
        })
        .await;
        Store::S3(s3)
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_to_join_leads_and_late_comers_go_alone() {
        let joint = std::sync::Arc::new(JointCopy::new(3));
        let first = tokio::spawn({
            let (joint, a) = (joint.clone(), store("a").await);
            async move { matches!(joint.join(a).await, Joined::Follow(_)) }
        });
        tokio::task::yield_now().await;
        joint.leave();
        match joint.join(store("b").await).await {
            Joined::Lead(members, _) => assert_eq!(members.len(), 2, "leads both that joined"),
            _ => panic!("the last of three (one left) leads"),
        }
        assert!(first.await.expect("task"), "the first follows");
        assert!(matches!(joint.join(store("c").await).await, Joined::Alone));
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_target_does_not_hold_the_others_past_the_window() {
        let joint = JointCopy::new(2);
        let started = tokio::time::Instant::now();
        match joint.join(store("a").await).await {
            Joined::Lead(members, _) => assert_eq!(members.len(), 1),
            _ => panic!("leads alone after the window"),
        }
        assert!(started.elapsed() >= JOIN_WINDOW);
    }
}

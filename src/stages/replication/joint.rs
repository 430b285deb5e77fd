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
use crate::storage::{S3Store, StorageError};

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
    members: Vec<(S3Store, Reply)>,
    /// Targets that finished without joining (already there, or failed before).
    left: usize,
    started: bool,
}

/// What joining gave.
pub enum Joined {
    /// This task leads: copy to these stores and send each its result (this task's own is
    /// among them; it then reads it from the receiver).
    Lead(
        Vec<(S3Store, Reply)>,
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
    pub async fn join(&self, store: S3Store) -> Joined {
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

//! `JointCopy`: gathers the targets of one entry that are ready at the same time, so the
//! source version is read once for all of them.
//!
//! Each target's task, once its key lane, gates and pauses allow, joins the entry's group —
//! before it waits for its target's concurrency permit. When every target has either joined or
//! finished without copying — or [`JOIN_WINDOW`] after the first joined, so a target stuck
//! behind an earlier version does not hold the others — the task that notices becomes the
//! leader. It takes the members' permits ([`take_permits`]: in one fixed order, so two leaders
//! never wait for each other), reads the source once, writes it to every member, and hands
//! each member its result. Waiting for permits together keeps the targets of an entry in step
//! under a backlog; had each target waited for its own permit first, their queues drift apart
//! and the window expires (measured: 1.26 source reads per byte for 3 targets). A member whose
//! permit does not come within [`PERMIT_WAIT`] of the leader's first one, or a target that
//! arrives after the copy started, copies on its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use super::copier::Outcome;
use crate::storage::{StorageError, Store};

/// How long the first ready target waits for the others before the copy starts without them.
/// Targets of one entry normally become ready within milliseconds of each other.
const JOIN_WINDOW: Duration = Duration::from_millis(250);

/// How long a leader that holds one member's permit waits for each other member's: a slower
/// target holds the faster ones' permits at most this long per copy.
const PERMIT_WAIT: Duration = Duration::from_millis(250);

/// A target of the entry, with what copying to it needs.
pub struct Member {
    pub target: String,
    pub store: Store,
    /// The target's concurrency limit.
    pub limit: Arc<Semaphore>,
}

/// What a member is told: its copy's result, or `None` if the leader could not get its permit
/// in time (then it copies on its own).
pub type Answer = Option<Result<Outcome, StorageError>>;

pub type Reply = oneshot::Sender<Answer>;

/// The group of one entry.
pub struct JointCopy {
    targets: usize,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    members: Vec<(Member, Reply)>,
    /// Targets that finished without joining (paused, deferred, or failed before).
    left: usize,
    started: bool,
}

/// What joining gave.
pub enum Joined {
    /// This task leads: take the members' permits, copy to them and send each its answer
    /// (this task's own is among them; it then reads it from the receiver).
    Lead(Vec<(Member, Reply)>, oneshot::Receiver<Answer>),
    /// Another task leads; wait here for this target's answer.
    Follow(oneshot::Receiver<Answer>),
    /// The joint copy already started: copy on your own.
    Alone,
}

/// Takes the permits of `members`, in the order of their target names, and returns those that
/// got one; the others are told to copy on their own. The first permit is waited for as long
/// as it takes (it is the entry's turn at that target's limit), the others for [`PERMIT_WAIT`]
/// each. Deadlock-free: every leader takes permits in the same order, and every other holder
/// of a permit (a copy on its own) waits for nothing else that a leader holds.
pub async fn take_permits(
    mut members: Vec<(Member, Reply)>,
) -> Vec<(Member, Reply, OwnedSemaphorePermit)> {
    members.sort_by(|a, b| a.0.target.cmp(&b.0.target));
    let mut held = Vec::with_capacity(members.len());
    for (member, reply) in members {
        let acquire = member.limit.clone().acquire_owned();
        let permit = if held.is_empty() {
            acquire.await.ok()
        } else {
            tokio::time::timeout(PERMIT_WAIT, acquire)
                .await
                .ok()
                .and_then(Result::ok)
        };
        match permit {
            Some(permit) => held.push((member, reply, permit)),
            None => {
                let _ = reply.send(None);
            }
        }
    }
    held
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

    /// How many targets left without joining.
    #[cfg(test)]
    pub fn left(&self) -> usize {
        self.lock().left
    }

    /// A target that will not join (no copy needed, or it gave up) says so.
    pub fn leave(&self) {
        self.lock().left += 1;
        self.changed.notify_waiters();
    }

    /// Joins as `member`; see [`Joined`].
    pub async fn join(&self, member: Member) -> Joined {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.lock();
            if state.started {
                return Joined::Alone;
            }
            state.members.push((member, tx));
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

    async fn member(name: &str, limit: &Arc<Semaphore>) -> Member {
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
        Member {
            target: name.into(),
            store: Store::S3(s3),
            limit: limit.clone(),
        }
    }

    fn limit(permits: usize) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(permits))
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_to_join_leads_and_late_comers_go_alone() {
        let joint = Arc::new(JointCopy::new(3));
        let first = tokio::spawn({
            let (joint, a) = (joint.clone(), member("a", &limit(1)).await);
            async move { matches!(joint.join(a).await, Joined::Follow(_)) }
        });
        tokio::task::yield_now().await;
        joint.leave();
        match joint.join(member("b", &limit(1)).await).await {
            Joined::Lead(members, _) => assert_eq!(members.len(), 2, "leads both that joined"),
            _ => panic!("the last of three (one left) leads"),
        }
        assert!(first.await.expect("task"), "the first follows");
        assert!(matches!(
            joint.join(member("c", &limit(1)).await).await,
            Joined::Alone
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_target_does_not_hold_the_others_past_the_window() {
        let joint = JointCopy::new(2);
        let started = tokio::time::Instant::now();
        match joint.join(member("a", &limit(1)).await).await {
            Joined::Lead(members, _) => assert_eq!(members.len(), 1),
            _ => panic!("leads alone after the window"),
        }
        assert!(started.elapsed() >= JOIN_WINDOW);
    }

    #[tokio::test(start_paused = true)]
    async fn permits_are_taken_in_target_order_and_a_busy_target_copies_on_its_own() {
        let (busy, free) = (limit(1), limit(1));
        let _taken = busy.clone().try_acquire_owned().expect("permit");
        let (to_b, from_b) = oneshot::channel();
        let (to_a, mut from_a) = oneshot::channel();
        // "b" waits as long as it takes (first in order); "c" gets PERMIT_WAIT and is told to
        // copy on its own.
        let members = vec![
            (member("c", &busy).await, to_a),
            (member("b", &free).await, to_b),
        ];
        let held = take_permits(members).await;
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].0.target, "b");
        assert!(matches!(from_a.try_recv(), Ok(None)), "told to go alone");
        drop(held);
        assert!(from_b.await.is_err(), "no answer sent for a held member");
        assert_eq!(free.available_permits(), 1, "released with the copy");
    }
}

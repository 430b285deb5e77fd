//! What holds copies back: operators' pauses shared by every ferry instance (here), and the
//! location [`gate`]s a configuration error or an unreachable server closes in one instance.
//!
//! A pause is a record in the compacted `<p>control` topic, so it survives restarts and every
//! instance sees it, whichever one the operator asked. Each instance keeps a [`Pauses`]
//! registry, loaded at start and re-read every [`RELOAD_EVERY`]; the instance that records a
//! decision applies it at once. A pause may carry a resume time: past it the pause no longer
//! holds, on every instance, without anyone writing a record.

pub mod gate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusError, Publisher, StateReader, Topics};
use crate::model::{self, TargetPause};

/// How often each instance re-reads the control topic: a pause asked on another instance takes
/// effect here within this; the topic is tiny, so reading it this often costs little.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The pause decisions this instance knows, by target; cheap to clone.
#[derive(Clone)]
pub struct Pauses {
    state: Arc<watch::Sender<BTreeMap<String, TargetPause>>>,
}

impl Default for Pauses {
    fn default() -> Self {
        let (tx, _) = watch::channel(BTreeMap::new());
        Self {
            state: Arc::new(tx),
        }
    }
}

impl Pauses {
    /// The pause holding `target` now, if there is one.
    pub fn holding(&self, target: &str) -> Option<TargetPause> {
        let now = model::now_ms();
        self.state
            .borrow()
            .get(target)
            .filter(|p| p.holds_at(now))
            .cloned()
    }

    /// Every decision known, held or not (for `targets list`).
    pub fn snapshot(&self) -> BTreeMap<String, TargetPause> {
        self.state.borrow().clone()
    }

    /// Waits until no pause holds `target`; false if shutdown came first.
    pub async fn wait_resumed(&self, target: &str, shutdown: &CancellationToken) -> bool {
        let mut changes = self.state.subscribe();
        loop {
            let Some(pause) = self.holding(target) else {
                return true;
            };
            // Wake for a new decision, the scheduled resume, or shutdown.
            let until_resume = pause
                .resume_at_ms
                .map(|at| Duration::from_millis((at - model::now_ms()).max(0) as u64))
                .unwrap_or(Duration::MAX);
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                changed = changes.changed() => if changed.is_err() { return true },
                _ = tokio::time::sleep(until_resume.min(Duration::from_secs(3600))) => {}
            }
        }
    }

    /// Applies one decision here (newer decisions win, so a stale re-read cannot undo one).
    fn apply(&self, pause: TargetPause) {
        self.state
            .send_if_modified(|state| match state.get(&pause.target) {
                Some(known) if known.at_ms > pause.at_ms || *known == pause => false,
                _ => {
                    state.insert(pause.target.clone(), pause);
                    true
                }
            });
    }

    /// Reads the whole control topic and applies what it holds.
    pub async fn reload(&self, reader: &StateReader, topics: &Topics) -> Result<(), BusError> {
        for (key, value) in reader.read_partition(&topics.control, 0).await? {
            let Some(value) = value else { continue };
            match model::decode::<TargetPause>("target pause", &value) {
                Ok(pause) => self.apply(pause),
                Err(e) => {
                    let key = String::from_utf8_lossy(&key);
                    tracing::warn!(key = %key, error = %e, "unreadable control record skipped");
                }
            }
        }
        Ok(())
    }

    /// Records `pause` durably in the control topic, then applies it here.
    pub async fn record(
        &self,
        publisher: &Publisher,
        topics: &Topics,
        pause: TargetPause,
    ) -> Result<(), BusError> {
        publisher
            .publish(
                &topics.control,
                &TargetPause::key(&pause.target),
                Some(&model::encode(&pause)),
            )
            .await?;
        if pause.paused {
            tracing::warn!(target = %pause.target, resume_at_ms = ?pause.resume_at_ms, reason = pause.reason.as_deref().unwrap_or(""), "target PAUSED by operator");
        } else {
            tracing::warn!(target = %pause.target, "target RESUMED by operator");
        }
        self.apply(pause);
        Ok(())
    }

    /// Re-reads the control topic every [`RELOAD_EVERY`] until `shutdown`.
    pub async fn follow(self, bus: Bus, topics: Topics, shutdown: CancellationToken) {
        let reader = match bus.state_reader() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot follow the control topic; pauses asked elsewhere are not seen here");
                return;
            }
        };
        let mut failing = false;
        while crate::stages::sleep_or_shutdown(RELOAD_EVERY, &shutdown).await {
            match self.reload(&reader, &topics).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("control topic readable again");
                }
                Ok(()) => {}
                // Logged once per outage: the broker being away is reported elsewhere too.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "control topic not read; keeping the pauses known");
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause(target: &str, paused: bool, resume_at_ms: Option<i64>, at_ms: i64) -> TargetPause {
        TargetPause {
            schema: model::SCHEMA,
            target: target.into(),
            paused,
            resume_at_ms,
            reason: None,
            at_ms,
        }
    }

    #[test]
    fn newer_decisions_win() {
        let pauses = Pauses::default();
        pauses.apply(pause("a", true, None, 10));
        assert!(pauses.holding("a").is_some());
        pauses.apply(pause("a", false, None, 5));
        assert!(
            pauses.holding("a").is_some(),
            "an older record does not undo it"
        );
        pauses.apply(pause("a", false, None, 20));
        assert!(pauses.holding("a").is_none());
        assert!(pauses.holding("b").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn waits_until_resumed_or_the_scheduled_time() {
        let pauses = Pauses::default();
        let never = CancellationToken::new();
        assert!(
            pauses.wait_resumed("a", &never).await,
            "not paused: no wait"
        );

        pauses.apply(pause("a", true, None, 1));
        let waiting = tokio::spawn({
            let pauses = pauses.clone();
            async move { pauses.wait_resumed("a", &CancellationToken::new()).await }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!waiting.is_finished(), "waits while paused");
        pauses.apply(pause("a", false, None, 2));
        assert!(waiting.await.expect("joined"));

        let shutdown = CancellationToken::new();
        pauses.apply(pause("a", true, None, 3));
        shutdown.cancel();
        assert!(
            !pauses.wait_resumed("a", &shutdown).await,
            "shutdown ends the wait"
        );
    }

    #[test]
    fn a_past_resume_time_does_not_hold() {
        let pauses = Pauses::default();
        pauses.apply(pause("a", true, Some(model::now_ms() - 1), 1));
        assert!(pauses.holding("a").is_none());
        assert_eq!(pauses.snapshot().len(), 1, "still listed");
    }
}

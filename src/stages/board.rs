//! The stage board: which stages this process runs and what each is doing — messages taken,
//! in flight, finished, refused, the last error — for `/readyz` and `/api/v1/stages`.
//!
//! The runner keeps the counts of the stages it runs ([`super::runner::consume`]); a stage
//! records its own errors (a copy FAILED, a GC refusal) with [`StageStatus::error`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// One stage's counters; shared by the stage and the board.
#[derive(Debug, Default)]
pub struct StageStatus {
    received: AtomicU64,
    in_flight: AtomicU64,
    processed: AtomicU64,
    dead_letters: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<LastError>>,
}

/// The most recent error a stage recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub message: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

impl StageStatus {
    /// A message was taken from the inbox (and decoded).
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// A message's work began.
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A message's work ended (acknowledged, or left for the partition's next owner).
    pub fn finished(&self) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// A message went to the dead-letter topic.
    pub fn dead_lettered(&self) {
        self.dead_letters.fetch_add(1, Ordering::Relaxed);
    }

    /// The stage could not do what a message asked (it is logged where it happened).
    pub fn error(&self, message: impl Into<String>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let last = LastError {
            message: message.into(),
            at_ms: crate::model::now_ms(),
        };
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(last);
    }

    fn report(&self, name: &str, running: bool) -> StageReport {
        StageReport {
            name: name.to_string(),
            state: if running {
                StageState::Running
            } else {
                StageState::Stopped
            },
            received: self.received.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            processed: self.processed.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// Whether a stage still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageState {
    Running,
    Stopped,
}

/// What `/api/v1/stages` says of one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReport {
    pub name: String,
    pub state: StageState,
    /// Messages taken from its inbox since this process started.
    pub received: u64,
    pub in_flight: u64,
    /// Messages whose work ended.
    pub processed: u64,
    pub dead_letters: u64,
    pub errors: u64,
    pub last_error: Option<LastError>,
}

struct Entry {
    running: bool,
    status: Arc<StageStatus>,
}

/// The stages this process started.
#[derive(Default)]
pub struct Board(Mutex<BTreeMap<&'static str, Entry>>);

impl Board {
    /// Adds stage `name` with its counters (a stage not registered is added, with fresh
    /// counters, when it first starts).
    pub fn register(&self, name: &'static str, status: Arc<StageStatus>) {
        self.lock().insert(
            name,
            Entry {
                running: false,
                status,
            },
        );
    }

    /// Adds stage `name` with fresh counters, and returns them.
    pub fn add(&self, name: &'static str) -> Arc<StageStatus> {
        let status = Arc::new(StageStatus::default());
        self.register(name, status.clone());
        status
    }

    /// Marks stage `name` running or stopped.
    pub fn set_running(&self, name: &'static str, running: bool) {
        self.lock()
            .entry(name)
            .or_insert_with(|| Entry {
                running,
                status: Arc::default(),
            })
            .running = running;
    }

    /// Stages started and no longer running.
    pub fn stopped(&self) -> Vec<&'static str> {
        self.lock()
            .iter()
            .filter(|(_, e)| !e.running)
            .map(|(name, _)| *name)
            .collect()
    }

    /// Each stage and whether it runs (the `/readyz` answer's `stages`).
    pub fn running(&self) -> BTreeMap<&'static str, bool> {
        self.lock().iter().map(|(n, e)| (*n, e.running)).collect()
    }

    /// Every stage's counters, by name.
    pub fn reports(&self) -> Vec<StageReport> {
        self.lock()
            .iter()
            .map(|(name, e)| e.status.report(name, e.running))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Entry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_the_last_error_are_reported_per_stage() {
        let board = Board::default();
        let gc = Arc::new(StageStatus::default());
        board.register("gc", gc.clone());
        board.set_running("gc", true);
        board.set_running("status", true);
        gc.received();
        gc.started();
        gc.received();
        gc.started();
        gc.finished();
        gc.error("refused: not transient");
        gc.error("refused: a target is missing its copy");
        gc.dead_lettered();
        let reports = board.reports();
        assert_eq!(reports.len(), 2);
        let gc = &reports[0];
        assert_eq!((gc.name.as_str(), gc.state), ("gc", StageState::Running));
        assert_eq!((gc.received, gc.in_flight, gc.processed), (2, 1, 1));
        assert_eq!((gc.errors, gc.dead_letters), (2, 1));
        assert_eq!(
            gc.last_error.as_ref().map(|e| e.message.as_str()),
            Some("refused: a target is missing its copy")
        );
        assert_eq!(reports[1].received, 0, "a stage added by starting it");
    }

    #[test]
    fn a_stopped_stage_is_named() {
        let board = Board::default();
        board.set_running("replication", true);
        board.set_running("gc", true);
        board.set_running("gc", false);
        assert_eq!(board.stopped(), vec!["gc"]);
        assert_eq!(board.running().get("replication"), Some(&true));
    }

    #[test]
    fn in_flight_never_wraps_below_zero() {
        let status = StageStatus::default();
        status.finished();
        assert_eq!(status.report("x", true).in_flight, 0);
    }
}

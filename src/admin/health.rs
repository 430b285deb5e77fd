//! Which stages of this process are running, for readiness.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The stages this process started, and whether each still runs.
#[derive(Default)]
pub struct Stages(Mutex<BTreeMap<&'static str, bool>>);

impl Stages {
    pub fn set(&self, stage: &'static str, running: bool) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stage, running);
    }

    /// Stages started and no longer running.
    pub fn stopped(&self) -> Vec<&'static str> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, running)| !**running)
            .map(|(stage, _)| *stage)
            .collect()
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, bool> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

//! `TargetPause`: an operator's pause of one target, a record of the compacted control topic.

use serde::{Deserialize, Serialize};

/// One record of `<p>control`, keyed `target/NAME`: the latest decision about that target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetPause {
    pub schema: u32,
    pub target: String,
    /// True while the operator wants no copies made to the target.
    pub paused: bool,
    /// A scheduled resume (ms since epoch): past it the pause no longer holds.
    pub resume_at_ms: Option<i64>,
    /// What the operator said, for `targets list`.
    pub reason: Option<String>,
    /// When the decision was made.
    pub at_ms: i64,
}

impl TargetPause {
    /// The control topic's key for `target`.
    pub fn key(target: &str) -> String {
        format!("target/{target}")
    }

    /// Whether the pause holds at `now_ms`.
    pub fn holds_at(&self, now_ms: i64) -> bool {
        self.paused && self.resume_at_ms.is_none_or(|at| now_ms < at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduled_resume_ends_the_pause() {
        let mut pause = TargetPause {
            schema: 1,
            target: "t".into(),
            paused: true,
            resume_at_ms: Some(100),
            reason: None,
            at_ms: 0,
        };
        assert!(pause.holds_at(99));
        assert!(!pause.holds_at(100));
        pause.resume_at_ms = None;
        assert!(pause.holds_at(i64::MAX));
        pause.paused = false;
        assert!(!pause.holds_at(0));
    }
}

//! Per-target results, the per-entry status state machine, and the garbage-collection task.
//!
//! Statuses use S3's replication vocabulary. A target that reached COMPLETED never goes back:
//! a late or duplicated failure for it (e.g. the source was already garbage-collected when a
//! redelivered entry ran again) cannot undo a verified copy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ReplicationEntry;

/// S3's replication status vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplicationStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl ReplicationStatus {
    /// COMPLETED or FAILED: nothing more happens to this copy unless an operator retries it.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

/// One message on the status topic: the outcome of one entry on one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetResult {
    pub schema: u32,
    pub entry: ReplicationEntry,
    pub target: String,
    /// COMPLETED or FAILED.
    pub status: ReplicationStatus,
    /// The version id the target gave the copy (or the delete marker), when versioned.
    pub target_version_id: Option<String>,
    /// Why it failed, for FAILED.
    pub error: Option<String>,
    pub attempts: u32,
    pub at_ms: i64,
}

/// What the status processor knows about one target of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetState {
    pub status: ReplicationStatus,
    pub target_version_id: Option<String>,
    pub error: Option<String>,
    pub attempts: u32,
    pub updated_at_ms: i64,
}

/// The status processor's record of one entry (its changelog value).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryState {
    pub schema: u32,
    pub entry: ReplicationEntry,
    pub targets: BTreeMap<String, TargetState>,
    pub overall: ReplicationStatus,
    pub completed_at_ms: Option<i64>,
}

impl EntryState {
    /// A new state with every target of `entry` PENDING.
    pub fn new(entry: ReplicationEntry) -> Self {
        let targets = entry
            .targets
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    TargetState {
                        status: ReplicationStatus::Pending,
                        target_version_id: None,
                        error: None,
                        attempts: 0,
                        updated_at_ms: entry.enqueued_at_ms,
                    },
                )
            })
            .collect();
        Self {
            schema: super::SCHEMA,
            entry,
            targets,
            overall: ReplicationStatus::Pending,
            completed_at_ms: None,
        }
    }

    /// Applies one target result; returns whether anything changed.
    pub fn apply(&mut self, result: &TargetResult) -> bool {
        let Some(state) = self.targets.get_mut(&result.target) else {
            return false;
        };
        if state.status == ReplicationStatus::Completed {
            return false;
        }
        let next = TargetState {
            status: result.status,
            target_version_id: result.target_version_id.clone(),
            error: result.error.clone(),
            attempts: result.attempts,
            updated_at_ms: result.at_ms,
        };
        if *state == next {
            return false;
        }
        *state = next;
        self.overall = overall(self.targets.values().map(|t| t.status));
        if self.overall == ReplicationStatus::Completed && self.completed_at_ms.is_none() {
            self.completed_at_ms = Some(result.at_ms);
        }
        true
    }

    /// Where each target holds its copy, for the garbage collector's check.
    pub fn copies(&self) -> Vec<TargetCopy> {
        self.targets
            .iter()
            .map(|(target, s)| TargetCopy {
                target: target.clone(),
                version_id: s.target_version_id.clone(),
            })
            .collect()
    }
}

/// S3's rule: any FAILED → FAILED; any not yet done → PROCESSING; all COMPLETED → COMPLETED.
fn overall(statuses: impl Iterator<Item = ReplicationStatus> + Clone) -> ReplicationStatus {
    use ReplicationStatus::*;
    if statuses.clone().any(|s| s == Failed) {
        Failed
    } else if statuses.clone().all(|s| s == Completed) {
        Completed
    } else if statuses.clone().all(|s| s == Pending) {
        Pending
    } else {
        Processing
    }
}

/// One message on the retry topic: a copy of `entry` to `target` that failed transiently and
/// waits for its next attempt, no earlier than `due_at_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetryTask {
    pub schema: u32,
    /// Unique per publication; lets the retry consumer recognise a task it put back.
    pub id: String,
    pub entry: ReplicationEntry,
    pub target: String,
    /// Attempts made so far.
    pub attempts: u32,
    pub due_at_ms: i64,
    /// The last error, for logs and the FAILED record.
    pub last_error: Option<String>,
    /// The entry's offset in its replication partition, where every version of a key is
    /// in source order: orders the deferred versions of one key (absent for re-enqueued
    /// FAILED entries, which wait for nothing).
    #[serde(default)]
    pub origin: Option<i64>,
}

/// Where one target holds its copy of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetCopy {
    pub target: String,
    pub version_id: Option<String>,
}

/// One message on the GC topic: delete this transient source version once verified.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcTask {
    pub schema: u32,
    pub entry: ReplicationEntry,
    pub copies: Vec<TargetCopy>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EntryKind;

    fn entry() -> ReplicationEntry {
        ReplicationEntry {
            schema: 1,
            rule: "r".into(),
            source: "src".into(),
            bucket: "b".into(),
            key: "k".into(),
            version_id: Some("v1".into()),
            kind: EntryKind::Object,
            size: 3,
            etag: Some("e".into()),
            last_modified_ms: 1,
            targets: vec!["a".into(), "b".into()],
            transient: true,
            enqueued_at_ms: 2,
        }
    }

    fn result(target: &str, status: ReplicationStatus) -> TargetResult {
        TargetResult {
            schema: 1,
            entry: entry(),
            target: target.into(),
            status,
            target_version_id: Some(format!("{target}-v")),
            error: None,
            attempts: 1,
            at_ms: 10,
        }
    }

    #[test]
    fn completes_only_when_every_target_completed() {
        let mut state = EntryState::new(entry());
        assert_eq!(state.overall, ReplicationStatus::Pending);
        assert!(state.apply(&result("a", ReplicationStatus::Completed)));
        assert_eq!(state.overall, ReplicationStatus::Processing);
        assert!(state.apply(&result("b", ReplicationStatus::Completed)));
        assert_eq!(state.overall, ReplicationStatus::Completed);
        assert_eq!(state.completed_at_ms, Some(10));
    }

    #[test]
    fn completed_target_never_regresses() {
        let mut state = EntryState::new(entry());
        state.apply(&result("a", ReplicationStatus::Completed));
        assert!(!state.apply(&result("a", ReplicationStatus::Failed)));
        assert_eq!(state.targets["a"].status, ReplicationStatus::Completed);
    }

    #[test]
    fn failure_is_overall_failure_and_duplicates_change_nothing() {
        let mut state = EntryState::new(entry());
        assert!(state.apply(&result("a", ReplicationStatus::Failed)));
        assert_eq!(state.overall, ReplicationStatus::Failed);
        assert!(!state.apply(&result("a", ReplicationStatus::Failed)));
        assert!(!state.apply(&result("unknown", ReplicationStatus::Completed)));
    }
}

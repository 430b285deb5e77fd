//! What the stages refuse to work on: entries, retry tasks and results naming locations this
//! process does not have, or targets in numbers or repeats no rule produces. A stale or forged
//! message goes to the dead-letter topic with the reason, before it takes a lane, a permit, a
//! state record or a metric label of its own.

use std::collections::HashSet;

use crate::model::{ReplicationEntry, RetryTask, TargetResult};

/// The locations of this process's configuration.
#[derive(Debug, Clone, Default)]
pub struct Known {
    locations: HashSet<String>,
}

impl<S: Into<String>> FromIterator<S> for Known {
    fn from_iter<I: IntoIterator<Item = S>>(names: I) -> Self {
        Self {
            locations: names.into_iter().map(Into::into).collect(),
        }
    }
}

impl Known {
    fn has(&self, name: &str) -> bool {
        self.locations.contains(name)
    }

    /// Why `entry` is not worked on here, if it is not.
    pub fn entry_refusal(&self, entry: &ReplicationEntry) -> Option<String> {
        entry_refusal(entry, self)
    }

    /// Why the retry `task` is not worked on here, if it is not.
    pub fn retry_refusal(&self, task: &RetryTask) -> Option<String> {
        if !task.entry.targets.contains(&task.target) {
            return Some(format!(
                "the retry is for target {:?}, which its entry does not name",
                task.target
            ));
        }
        entry_refusal(&task.entry, self)
    }

    /// Why `result` is not recorded here, if it is not.
    pub fn result_refusal(&self, result: &TargetResult) -> Option<String> {
        if !result.entry.targets.contains(&result.target) {
            return Some(format!(
                "the result is for target {:?}, which its entry does not name",
                result.target
            ));
        }
        entry_refusal(&result.entry, self)
    }
}

fn entry_refusal(entry: &ReplicationEntry, stores: &Known) -> Option<String> {
    let known = stores.locations.len();
    if entry.targets.is_empty() {
        return Some("the entry names no target".into());
    }
    if entry.targets.len() > known {
        return Some(format!(
            "the entry names {} targets; this configuration has {known} locations",
            entry.targets.len()
        ));
    }
    if !stores.has(&entry.source) {
        return Some(format!(
            "source {:?} is not a location of this configuration",
            entry.source
        ));
    }
    let mut seen = HashSet::new();
    for target in &entry.targets {
        if !seen.insert(target.as_str()) {
            return Some(format!("the entry names target {target:?} twice"));
        }
        if target == &entry.source {
            return Some(format!("the entry copies {target:?} onto itself"));
        }
        if !stores.has(target) {
            return Some(format!(
                "target {target:?} is not a location of this configuration"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EntryKind, SCHEMA};

    fn stores(names: &[&str]) -> Known {
        names.iter().copied().collect()
    }

    fn entry(source: &str, targets: &[&str]) -> ReplicationEntry {
        ReplicationEntry {
            schema: SCHEMA,
            rule: "r".into(),
            source: source.into(),
            bucket: "b".into(),
            key: "k".into(),
            version_id: None,
            kind: EntryKind::Object,
            size: 1,
            etag: None,
            last_modified_ms: 0,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            transient: false,
            enqueued_at_ms: 0,
        }
    }

    #[test]
    fn only_configured_distinct_targets_are_taken() {
        let stores = stores(&["src", "a", "b"]);
        assert_eq!(stores.entry_refusal(&entry("src", &["a", "b"])), None);
        let refused = |e: ReplicationEntry| stores.entry_refusal(&e).unwrap_or_default();
        assert!(refused(entry("src", &[])).contains("no target"));
        assert!(refused(entry("src", &["a", "a"])).contains("twice"));
        assert!(refused(entry("src", &["src"])).contains("onto itself"));
        assert!(refused(entry("src", &["a", "evil"])).contains("\"evil\" is not a location"));
        assert!(refused(entry("elsewhere", &["a"])).contains("source"));
        let many: Vec<String> = (0..10_000).map(|i| format!("t{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(refused(entry("src", &many)).contains("10000 targets"));
    }

    #[test]
    fn a_retry_names_one_of_its_entry_s_targets() {
        let stores = stores(&["src", "a", "b"]);
        let task = |target: &str| RetryTask {
            schema: SCHEMA,
            id: "1".into(),
            entry: entry("src", &["a"]),
            target: target.into(),
            attempts: 1,
            due_at_ms: 0,
            last_error: None,
            origin: None,
        };
        assert_eq!(stores.retry_refusal(&task("a")), None);
        assert!(stores.retry_refusal(&task("b")).is_some());
    }
}

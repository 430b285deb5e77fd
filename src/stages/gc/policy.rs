//! What the running configuration lets the garbage collector delete. A GC task carries what was
//! true when its entry was made (the source transient, the rule's targets then); an operator
//! may have changed both since. Only a location transient *now* is emptied, and only once the
//! task's copies cover every target its rule has *now*.

use std::collections::{HashMap, HashSet};

use crate::config::Config;
use crate::model::GcTask;

/// The transient locations and each rule's targets, as configured in this process.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    transient: HashSet<String>,
    targets: HashMap<String, Vec<String>>,
}

impl Policy {
    pub fn new(config: &Config) -> Self {
        Self {
            transient: config
                .locations
                .values()
                .filter(|l| l.transient)
                .map(|l| l.name.clone())
                .collect(),
            targets: config
                .rules
                .iter()
                .map(|r| (r.name.clone(), r.targets.clone()))
                .collect(),
        }
    }

    /// Why `task` may delete nothing under the running configuration, if so.
    pub fn refusal(&self, task: &GcTask) -> Option<String> {
        let entry = &task.entry;
        if !self.transient.contains(&entry.source) {
            return Some(format!(
                "location {:?} is not transient in the running configuration: its copy stays",
                entry.source
            ));
        }
        let Some(targets) = self.targets.get(&entry.rule) else {
            return Some(format!(
                "rule {:?} is not in the running configuration",
                entry.rule
            ));
        };
        let covered: HashSet<&str> = task.copies.iter().map(|c| c.target.as_str()).collect();
        let missing: Vec<&str> = targets
            .iter()
            .map(String::as_str)
            .filter(|t| !covered.contains(t))
            .collect();
        if !missing.is_empty() {
            return Some(format!(
                "rule {:?} now also copies to {}, which this version was not replicated to: \
                 its source copy stays (`ferry backfill --rule {}` copies it there)",
                entry.rule,
                missing.join(", "),
                entry.rule
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EntryKind, ReplicationEntry, TargetCopy, SCHEMA};

    fn policy(transient: &[&str], rule_targets: &[&str]) -> Policy {
        Policy {
            transient: transient.iter().map(|s| s.to_string()).collect(),
            targets: HashMap::from([(
                "r".to_string(),
                rule_targets.iter().map(|s| s.to_string()).collect(),
            )]),
        }
    }

    fn task(copies: &[&str]) -> GcTask {
        GcTask {
            schema: SCHEMA,
            entry: ReplicationEntry {
                schema: SCHEMA,
                rule: "r".into(),
                source: "src".into(),
                bucket: "b".into(),
                key: "k".into(),
                version_id: Some("v".into()),
                kind: EntryKind::Object,
                size: 1,
                etag: None,
                last_modified_ms: 0,
                targets: copies.iter().map(|s| s.to_string()).collect(),
                transient: true,
                enqueued_at_ms: 0,
            },
            copies: copies
                .iter()
                .map(|t| TargetCopy {
                    target: t.to_string(),
                    version_id: Some("c".into()),
                })
                .collect(),
        }
    }

    #[test]
    fn deletes_only_from_a_transient_source_with_every_current_target_covered() {
        assert_eq!(
            policy(&["src"], &["a", "b"]).refusal(&task(&["a", "b"])),
            None
        );
        // A target removed from the rule since: the copies still cover the rule.
        assert_eq!(policy(&["src"], &["a"]).refusal(&task(&["a", "b"])), None);
        let not_transient = policy(&[], &["a", "b"]).refusal(&task(&["a", "b"]));
        assert!(not_transient.is_some_and(|w| w.contains("not transient")));
        let added = policy(&["src"], &["a", "b", "c"]).refusal(&task(&["a", "b"]));
        assert!(added.is_some_and(|w| w.contains("now also copies to c")));
        let mut other_rule = task(&["a"]);
        other_rule.entry.rule = "gone".into();
        let gone = policy(&["src"], &["a"]).refusal(&other_rule);
        assert!(gone.is_some_and(|w| w.contains("not in the running configuration")));
    }
}

//! The offset ledger: which offset of a partition may be committed, given out-of-order completion.
//!
//! Messages of a partition are worked on concurrently and finish in any order. The committed
//! position must never pass a message whose work is not durably done, so the ledger commits
//! only the contiguous prefix: the position is the lowest offset still pending, or one past
//! the highest received when nothing is pending.

use std::collections::{BTreeSet, HashMap};

/// Per-partition bookkeeping; see the module doc.
#[derive(Debug, Default)]
pub struct OffsetLedger {
    partitions: HashMap<(String, i32), PartitionLedger>,
    generations: u64,
}

#[derive(Debug)]
struct PartitionLedger {
    /// Distinguishes this assignment of the partition from an earlier one, so a late
    /// acknowledgement from before a revocation cannot move the new owner's position.
    generation: u64,
    /// Offsets received and not yet done.
    pending: BTreeSet<i64>,
    /// One past the highest offset received.
    next: i64,
    /// The position last handed out for committing.
    stored: i64,
}

impl OffsetLedger {
    /// Records that `offset` was received; returns the generation its acknowledgement must carry.
    pub fn received(&mut self, topic: &str, partition: i32, offset: i64) -> u64 {
        let generations = &mut self.generations;
        let ledger = self
            .partitions
            .entry((topic.to_string(), partition))
            .or_insert_with(|| {
                *generations += 1;
                PartitionLedger {
                    generation: *generations,
                    pending: BTreeSet::new(),
                    next: offset,
                    stored: offset,
                }
            });
        ledger.pending.insert(offset);
        ledger.next = ledger.next.max(offset + 1);
        ledger.generation
    }

    /// Records that the work for `offset` is durably done. Returns the new position to
    /// commit (the next offset to consume) when it advanced.
    pub fn done(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        generation: u64,
    ) -> Option<i64> {
        let ledger = self.partitions.get_mut(&(topic.to_string(), partition))?;
        if ledger.generation != generation || !ledger.pending.remove(&offset) {
            return None;
        }
        let position = ledger.pending.first().copied().unwrap_or(ledger.next);
        (position > ledger.stored).then(|| {
            ledger.stored = position;
            position
        })
    }

    /// Whether `partition` of `topic` is held at the assignment `generation` (not revoked since).
    pub fn owns(&self, topic: &str, partition: i32, generation: u64) -> bool {
        self.partitions
            .get(&(topic.to_string(), partition))
            .is_some_and(|l| l.generation == generation)
    }

    /// Forgets a partition this consumer no longer owns; its pending acknowledgements are void.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_string(), partition));
    }

    /// Messages received and not yet done, over all partitions.
    pub fn pending(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut l = OffsetLedger::default();
        let g = l.received("t", 0, 10);
        l.received("t", 0, 11);
        l.received("t", 0, 12);
        assert_eq!(l.done("t", 0, 12, g), None, "10 and 11 are still pending");
        assert_eq!(l.done("t", 0, 10, g), Some(11));
        assert_eq!(l.done("t", 0, 11, g), Some(13));
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn duplicate_and_unknown_acks_change_nothing() {
        let mut l = OffsetLedger::default();
        let g = l.received("t", 0, 5);
        assert_eq!(l.done("t", 0, 5, g), Some(6));
        assert_eq!(l.done("t", 0, 5, g), None);
        assert_eq!(l.done("t", 1, 5, g), None);
        assert_eq!(l.done("u", 0, 5, g), None);
    }

    #[test]
    fn acks_from_before_a_revocation_are_ignored() {
        let mut l = OffsetLedger::default();
        let old = l.received("t", 0, 1);
        l.revoke("t", 0);
        let new = l.received("t", 0, 1);
        assert_ne!(old, new);
        assert_eq!(l.done("t", 0, 1, old), None);
        assert_eq!(l.done("t", 0, 1, new), Some(2));
    }

    #[test]
    fn partitions_are_independent() {
        let mut l = OffsetLedger::default();
        let a = l.received("t", 0, 0);
        let b = l.received("t", 1, 100);
        assert_eq!(l.done("t", 1, 100, b), Some(101));
        assert_eq!(l.pending(), 1);
        assert_eq!(l.done("t", 0, 0, a), Some(1));
    }
}

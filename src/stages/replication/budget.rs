//! `BufferBudget`: the bytes all copies of this process may hold in part buffers at once.

use std::sync::Arc;

/// The bytes all copies of this process may hold in part buffers at once: a part is read only
/// once its room is taken, and the room is freed when every target has sent it. (A part larger
/// than the whole budget takes all of it.) Small objects, one unit each, are never held back.
pub struct BufferBudget {
    units: Arc<tokio::sync::Semaphore>,
    total: u32,
}

/// One part's room in the [`BufferBudget`].
pub type Budget = tokio::sync::OwnedSemaphorePermit;

/// The budget's unit: 64 KiB.
const UNIT: usize = 64 << 10;

impl BufferBudget {
    pub fn new(bytes: u64) -> Self {
        let total = (bytes / UNIT as u64).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        Self {
            units: Arc::new(tokio::sync::Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits for room for `bytes` (`None` only if the budget were closed, which it never is).
    pub(super) async fn take(&self, bytes: usize) -> Option<Arc<Budget>> {
        let units = (bytes.div_ceil(UNIT).max(1) as u64).min(u64::from(self.total)) as u32;
        self.units
            .clone()
            .acquire_many_owned(units)
            .await
            .ok()
            .map(Arc::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_is_held_until_dropped_and_a_huge_part_takes_all_of_it() {
        let budget = BufferBudget::new(4 * UNIT as u64);
        let first = budget.take(3 * UNIT).await.expect("room");
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), budget.take(2 * UNIT));
        assert!(waiting.await.is_err(), "only one unit is left");
        drop(first);
        let all = budget
            .take(100 * UNIT)
            .await
            .expect("a part larger than the budget takes all of it");
        let none = tokio::time::timeout(std::time::Duration::from_millis(50), budget.take(1));
        assert!(none.await.is_err(), "the whole budget is held");
        drop(all);
        assert!(
            budget.take(0).await.is_some(),
            "an empty part still takes one unit"
        );
    }
}

//! `Fence`: notices that this process was frozen (SIGSTOP, a paused VM, a stalled host), so work
//! received before the freeze is not acted on until the consumer group has had its say.
//!
//! A member frozen longer than the session timeout is evicted and its partitions go to another
//! instance, which redoes their unacknowledged messages and may write newer versions. When the
//! frozen process resumes, its tasks resume too, before librdkafka has heard from the group
//! coordinator. A watchdog thread ticks every [`TICK`]; a gap of [`FREEZE`] between ticks is a
//! freeze. [`Fence::frozen_since`] also counts a tick that is overdue right now, so a task that
//! runs before the watchdog after a resume still sees it. After a freeze, ownership questions
//! wait [`SETTLE`] (heartbeats go every second), by which time librdkafka has marked an
//! evicted member's assignment lost and its partitions revoked ([`super::Delivery::still_owned`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

/// How often the watchdog ticks.
const TICK: Duration = Duration::from_millis(100);

/// A gap between ticks this long is a freeze (far above scheduling noise, far below the
/// session timeout).
const FREEZE: Duration = Duration::from_secs(2);

/// After a freeze, how long until the consumer has heard from the coordinator: two heartbeat
/// intervals and a margin.
pub const SETTLE: Duration = Duration::from_secs(3);

/// The process-wide freeze detector.
pub struct Fence {
    epoch: Instant,
    /// Milliseconds since `epoch` of the watchdog's last tick.
    last_tick: AtomicU64,
    /// Milliseconds since `epoch` at which the last freeze was noticed (0: none yet).
    last_freeze: AtomicU64,
}

impl Fence {
    /// The fence, its watchdog started on first use.
    pub fn global() -> &'static Fence {
        static FENCE: OnceLock<Fence> = OnceLock::new();
        static WATCHDOG: Once = Once::new();
        let fence = FENCE.get_or_init(|| Fence {
            epoch: Instant::now(),
            last_tick: AtomicU64::new(0),
            last_freeze: AtomicU64::new(0),
        });
        WATCHDOG.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("ferry-watchdog".into())
                .spawn(move || loop {
                    std::thread::sleep(TICK);
                    fence.tick();
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "freeze watchdog not started: a frozen process is not fenced");
            }
        });
        fence
    }

    /// Milliseconds since the fence started: the stamp of work beginning, for
    /// [`Fence::frozen_since`].
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn tick(&self) {
        let now = self.now();
        let last = self.last_tick.swap(now, Ordering::SeqCst);
        if now.saturating_sub(last) >= FREEZE.as_millis() as u64 {
            self.last_freeze.fetch_max(now, Ordering::SeqCst);
            tracing::warn!(
                frozen_ms = now - last,
                "this process was frozen; work received before it waits to learn whether its partitions moved"
            );
        }
    }

    /// Whether a freeze was noticed after `since` (a [`Fence::now`] stamp), counting one
    /// being noticed right now.
    pub fn frozen_since(&self, since: u64) -> bool {
        let now = self.now();
        if now.saturating_sub(self.last_tick.load(Ordering::SeqCst)) >= FREEZE.as_millis() as u64 {
            self.last_freeze.fetch_max(now, Ordering::SeqCst);
        }
        self.last_freeze.load(Ordering::SeqCst) > since
    }

    /// Waits until [`SETTLE`] has passed since the last freeze.
    pub async fn settle(&self) {
        let until = self.last_freeze.load(Ordering::SeqCst) + SETTLE.as_millis() as u64;
        let now = self.now();
        if until > now {
            tokio::time::sleep(Duration::from_millis(until - now)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overdue_tick_is_a_freeze_even_before_the_watchdog_runs() {
        // As if the process had been stopped just after the last tick, FREEZE ago.
        let f = Fence {
            epoch: Instant::now() - FREEZE - Duration::from_millis(10),
            last_tick: AtomicU64::new(0),
            last_freeze: AtomicU64::new(0),
        };
        assert!(
            f.frozen_since(0),
            "the overdue tick is seen by the asking task"
        );
        f.tick();
        std::thread::sleep(Duration::from_millis(5));
        let after = f.now();
        assert!(
            !f.frozen_since(after),
            "work begun after the freeze is not affected"
        );
        f.tick();
        assert!(!f.frozen_since(after), "a regular tick is no freeze");
    }
}

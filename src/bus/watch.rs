//! `WriteWatch`: notices that the brokers stopped acknowledging ferry's writes (too few in-sync
//! replicas, no leader, no broker), so readiness can say so while the producer keeps retrying.
//!
//! A metadata request alone cannot tell: with two of three brokers down, the one left still
//! answers it from its last view of the cluster while every `acks=all` write waits. What can
//! tell is the producer itself: messages in flight and no acknowledgement for a while.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Messages in flight and no acknowledgement for this long: the queue is not taking writes.
/// Far above a healthy round trip (milliseconds) and a leader election (a few seconds).
pub const STALL: Duration = Duration::from_secs(10);

/// When the last write was acknowledged and why the last one failed.
pub struct WriteWatch {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last acknowledgement (or of the start).
    last_ack_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Default for WriteWatch {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_ack_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }
}

impl WriteWatch {
    /// A write was acknowledged.
    pub fn acknowledged(&self) {
        self.last_ack_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A write failed with `error` (the caller retries it).
    pub fn failed(&self, error: &str) {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some(error.to_string());
    }

    /// With `in_flight` messages waiting for the brokers: what is wrong, if nothing was
    /// acknowledged for [`STALL`].
    pub fn stalled(&self, in_flight: u64) -> Option<String> {
        self.stalled_at(in_flight, self.now_ms())
    }

    fn stalled_at(&self, in_flight: u64, now_ms: u64) -> Option<String> {
        let quiet =
            Duration::from_millis(now_ms.saturating_sub(self.last_ack_ms.load(Ordering::Relaxed)));
        if in_flight == 0 || quiet < STALL {
            return None;
        }
        let last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        let cause = match last.as_deref() {
            Some(error) => format!("; last failure: {error}"),
            None => String::new(),
        };
        Some(format!(
            "{in_flight} messages waiting and no write acknowledged by the brokers for {} s{cause}",
            quiet.as_secs()
        ))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_in_flight_is_never_a_stall() {
        let watch = WriteWatch::default();
        assert_eq!(watch.stalled_at(0, 3_600_000), None);
    }

    #[test]
    fn a_recent_acknowledgement_is_not_a_stall() {
        let watch = WriteWatch::default();
        assert_eq!(watch.stalled_at(5, STALL.as_millis() as u64 - 1), None);
    }

    #[test]
    fn writes_waiting_past_the_stall_name_the_count_the_wait_and_the_last_failure() {
        let watch = WriteWatch::default();
        watch.failed("Broker: Not enough in-sync replicas");
        let problem = watch.stalled_at(7, 12_500).expect("a stall");
        assert!(problem.starts_with("7 messages waiting"), "{problem}");
        assert!(problem.contains("for 12 s"), "{problem}");
        assert!(problem.contains("Not enough in-sync replicas"), "{problem}");
    }

    #[test]
    fn an_acknowledgement_ends_the_stall() {
        let watch = WriteWatch::default();
        watch.acknowledged();
        let acked = watch.last_ack_ms.load(Ordering::Relaxed);
        assert_eq!(watch.stalled_at(3, acked + 1_000), None);
        assert!(watch.stalled_at(3, acked + 11_000).is_some());
    }
}

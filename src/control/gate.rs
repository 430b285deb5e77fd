//! Location gates: a location with a configuration problem is paused, not hammered.
//!
//! A missing bucket, denied access or bad credentials fail every copy the same way. The first
//! copy that meets such an error closes the location's gate and says so loudly; every copy
//! involving that location then waits at the gate instead of burning its attempts, and one
//! probe (HeadBucket) checks the location until it works again, then opens the gate.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One gate per location.
pub struct Gates {
    gates: HashMap<String, Gate>,
}

/// A location's gate: `None` when open, the reason when paused.
#[derive(Clone)]
pub struct Gate {
    state: Arc<watch::Sender<Option<String>>>,
}

impl Gates {
    pub fn new(locations: impl IntoIterator<Item = String>) -> Self {
        Self {
            gates: locations
                .into_iter()
                .map(|name| {
                    let (tx, _) = watch::channel(None);
                    (
                        name,
                        Gate {
                            state: Arc::new(tx),
                        },
                    )
                })
                .collect(),
        }
    }

    pub fn get(&self, location: &str) -> Option<&Gate> {
        self.gates.get(location)
    }
}

impl Gate {
    /// Waits until the gate is open; false if shutdown came first. An open gate lets the copy
    /// through even during shutdown (the entry is being finished, not abandoned).
    pub async fn open(&self, shutdown: &CancellationToken) -> bool {
        let mut rx = self.state.subscribe();
        tokio::select! {
            biased;
            open = rx.wait_for(Option::is_none) => open.is_ok(),
            _ = shutdown.cancelled() => false,
        }
    }

    /// Closes the gate with `reason`; true if it was open (the caller then starts the probe).
    pub fn pause(&self, reason: &str) -> bool {
        self.state.send_if_modified(|state| {
            if state.is_some() {
                return false;
            }
            *state = Some(reason.to_string());
            true
        })
    }

    pub fn resume(&self) {
        self.state.send_replace(None);
    }

    /// Why the gate is closed, if it is.
    pub fn paused(&self) -> Option<String> {
        self.state.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn copies_wait_while_paused_and_go_on_resume() {
        let gates = Gates::new(["t".to_string()]);
        let gate = gates.get("t").cloned().expect("gate");
        let never = CancellationToken::new();
        assert!(gate.open(&never).await, "open at first");
        assert!(gate.pause("NoSuchBucket"), "first pause transitions");
        assert!(!gate.pause("NoSuchBucket"), "second pause does not");
        assert_eq!(gate.paused().as_deref(), Some("NoSuchBucket"));
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.open(&CancellationToken::new()).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "waits while paused");
        gate.resume();
        assert!(waiting.await.expect("task"));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        for _ in 0..20 {
            assert!(
                gate.open(&shutdown).await,
                "an open gate lets through after shutdown"
            );
        }
        gate.pause("AccessDenied");
        assert!(!gate.open(&shutdown).await, "shutdown ends the wait");
    }
}

//! Watches a transient source while ferry runs: every source version that disappears must
//! already be on every target.
//!
//! Each poll lists the source first, then the targets. A version missing from the source must
//! appear in the target listings taken after it; since target copies are only ever added, a
//! violation seen this way is real (no false alarms). A version deleted before its copy existed
//! is caught unless the copy lands in the few milliseconds between the two listings.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::Client;

use super::s3::{versions, TargetIndex};

/// What the monitor saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub polls: usize,
    /// Written versions seen gone from the source, at the last poll.
    pub gone: usize,
    /// Versions gone from the source while some target lacked them.
    pub premature: Vec<String>,
    pub errors: usize,
}

/// A running monitor; [`Monitor::stop`] ends it and returns the report.
pub struct Monitor {
    /// Source version ids the test wrote (object versions only).
    pub written: Arc<Mutex<HashSet<String>>>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Report>,
}

impl Monitor {
    pub fn start(source: Client, source_bucket: String, targets: Vec<TargetIndex>) -> Self {
        let written = Arc::new(Mutex::new(HashSet::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(watch(
            source,
            source_bucket,
            targets,
            written.clone(),
            stop.clone(),
        ));
        Self {
            written,
            stop,
            task,
        }
    }

    /// Records a version the test wrote to the source.
    pub fn wrote(&self, version_id: Option<String>) {
        if let Some(v) = version_id {
            self.written.lock().expect("lock").insert(v);
        }
    }

    pub async fn stop(self) -> Report {
        self.stop.cancel();
        self.task.await.expect("monitor task")
    }
}

async fn watch(
    source: Client,
    bucket: String,
    mut targets: Vec<TargetIndex>,
    written: Arc<Mutex<HashSet<String>>>,
    stop: tokio_util::sync::CancellationToken,
) -> Report {
    let mut report = Report::default();
    // Versions seen gone from the source, and the targets whose next listing must show them.
    let mut pending: HashMap<String, HashSet<usize>> = HashMap::new();
    let mut settled: HashSet<String> = HashSet::new();
    while !stop.is_cancelled() {
        let expected: HashSet<String> = written.lock().expect("lock").clone();
        match versions(&source, &bucket).await {
            Ok(v) => {
                let present: HashSet<String> = v.into_iter().filter_map(|v| v.version_id).collect();
                let gone: Vec<&String> =
                    expected.iter().filter(|v| !present.contains(*v)).collect();
                report.gone = gone.len();
                for v in gone {
                    if !settled.contains(v) && !pending.contains_key(v) {
                        pending.insert(v.clone(), (0..targets.len()).collect());
                    }
                }
            }
            Err(_) => report.errors += 1,
        }
        for (i, t) in targets.iter_mut().enumerate() {
            if !pending.values().any(|waiting| waiting.contains(&i)) {
                continue;
            }
            // A target that is down (outage tests) is checked at its first listing after it
            // returns: it cannot have received anything while it was down.
            let Ok(held) = t.sources().await else {
                report.errors += 1;
                continue;
            };
            pending.retain(|v, waiting| {
                if !waiting.contains(&i) {
                    return true;
                }
                if !held.contains(v) {
                    report
                        .premature
                        .push(format!("{v} (missing on target {})", t.bucket));
                    settled.insert(v.clone());
                    return false;
                }
                waiting.remove(&i);
                if waiting.is_empty() {
                    settled.insert(v.clone());
                    false
                } else {
                    true
                }
            });
        }
        report.polls += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report
}

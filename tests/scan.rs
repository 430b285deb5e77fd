//! The scan feed at more than one listing page, against the real broker and radosgw: each
//! version enqueued once (across pages, passes and restarts), versions gone from the source
//! forgotten, so the progress topic's live records are the source's versions and no more.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use ferry::bus::{Bus, Topics};
use futures_util::StreamExt;
use support::admin::{metric, port};
use support::s3;
use support::{wait_until, Buckets, Ferry, TestEnv};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Live records of the populator-state topic (the latest per key, not a tombstone) that name
/// a source version.
async fn live_progress(bus: &Bus, topics: &Topics) -> usize {
    let mut live: HashMap<Vec<u8>, bool> = HashMap::new();
    let reader = bus.state_reader().expect("reader");
    reader
        .replay(&topics.populator_state, 0, 0, |_, key, payload| {
            live.insert(key.to_vec(), payload.is_some());
        })
        .await
        .expect("replay populator-state");
    live.iter()
        .filter(|(k, &present)| present && k.starts_with(b"[\"src\""))
        .count()
}

/// Entries this ferry process enqueued.
async fn enqueued(ferry: &Ferry) -> f64 {
    let port = port(&ferry.log()).expect("admin port");
    metric(port, "ferry_entries_enqueued_total").await
}

/// Waits until this ferry process completed `n` more scan passes.
async fn passes(ferry: &Ferry, n: f64) {
    let port = port(&ferry.log()).expect("admin port");
    let start = metric(port, "ferry_scan_passes_total").await;
    wait_until(TIMEOUT, "scan passes", || async {
        metric(port, "ferry_scan_passes_total").await >= start + n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_over_many_pages_enqueues_each_version_once_and_forgets_deleted_ones() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "scanpages").await;
    let (clients, src) = (&buckets.clients, &buckets.source);
    // 2,000 keys and one with 12 versions right after the 999th: three ListObjectVersions
    // pages of 1,000 entries, the first ending inside the hot key's versions.
    let keys: Vec<String> = (0..2000).map(|i| format!("k{i:05}")).collect();
    let written: Vec<Option<String>> = futures_util::stream::iter(keys.iter())
        .map(|key| {
            let put = s3::Put {
                key: key.clone(),
                seed: 1,
                size: 16,
                ..s3::Put::default()
            };
            async move { s3::put(&clients[0], src, &put).await }
        })
        .buffered(16)
        .collect()
        .await;
    let mut hot = Vec::new();
    for seed in 0..12 {
        hot.push(buckets.put_source("k00998-hot", seed, 8).await);
    }
    let total = 2012;
    let bus = Bus::connect(&buckets.queue(&env)).expect("bus");
    let topics = Topics::new(&format!("{}.", buckets.id));

    let mut ferry = Ferry::start(&buckets.config(&env, false));
    wait_until(TIMEOUT, "every version copied to both targets", || async {
        buckets.target_counts().await == (total, total)
    })
    .await;
    assert_eq!(
        enqueued(&ferry).await,
        total as f64,
        "each version enqueued once"
    );
    assert_eq!(live_progress(&bus, &topics).await, total);

    // 55 versions removed for good at the source (50 keys, 5 of the hot key's), 10 new keys.
    for (key, version) in keys.iter().zip(&written).take(50) {
        s3::delete_version(&clients[0], src, key, version.as_deref()).await;
    }
    for version in hot.iter().take(5) {
        s3::delete_version(&clients[0], src, "k00998-hot", version.as_deref()).await;
    }
    for i in 0..10 {
        buckets.put_source(&format!("new{i}"), 7, 8).await;
    }
    let now = total - 55 + 10;
    wait_until(
        TIMEOUT,
        "removed versions forgotten, new ones recorded",
        || async { live_progress(&bus, &topics).await == now },
    )
    .await;
    wait_until(TIMEOUT, "the new keys copied", || async {
        buckets.target_counts().await == (total + 10, total + 10)
    })
    .await;
    passes(&ferry, 2.0).await;
    assert_eq!(enqueued(&ferry).await, (total + 10) as f64);

    // A restart rebuilds the progress store from the topic (no state_dir: a temporary one)
    // and enqueues only what is new.
    ferry.restart();
    buckets.put_source("after-restart", 9, 8).await;
    wait_until(
        TIMEOUT,
        "the key written after the restart copied",
        || async { buckets.target_counts().await == (total + 11, total + 11) },
    )
    .await;
    wait_until(TIMEOUT, "the restarted ferry's admin server", || async {
        port(&ferry.log()).is_some()
    })
    .await;
    passes(&ferry, 2.0).await;
    assert_eq!(enqueued(&ferry).await, 1.0, "{}", ferry.log_tail());
    assert!(ferry.logs().contains("scan progress loaded"));
    for n in 1..3 {
        let (_, duplicates) = buckets.held(n).await;
        assert_eq!(duplicates, 0);
    }
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

//! The scan feed at more than one listing page, against the real broker and radosgw: each
//! version enqueued once (across pages, passes and restarts), versions gone from the source
//! forgotten, so the progress topic's live records are the source's versions and no more.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use ferry::bus::{Bus, Topics};
use futures_util::StreamExt;
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

/// Messages ever published to the replication topic (the sum of its partitions' ends).
async fn enqueued(bus: &Bus, topics: &Topics) -> i64 {
    let reader = bus.state_reader().expect("reader");
    let mut total = 0;
    for p in 0..4 {
        total += reader
            .replay(&topics.replication, p, i64::MAX, |_, _, _| {})
            .await
            .expect("replication topic end");
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_over_many_pages_enqueues_each_version_once_and_forgets_deleted_ones() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "scanpages").await;
    let (clients, src) = (&buckets.clients, &buckets.source);
    // 2,000 keys and one with 1,100 versions in the middle of the listing: three
    // ListObjectVersions pages of 1,000, the hot key's versions spanning two of them.
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
    for seed in 0..1100 {
        hot.push(buckets.put_source("k00999-hot", seed, 8).await);
    }
    let total = 3100;
    let bus = Bus::connect(&buckets.queue(&env)).expect("bus");
    let topics = Topics::new(&format!("{}.", buckets.id));

    let mut ferry = Ferry::start(&buckets.config(&env, false));
    wait_until(TIMEOUT, "every version copied to both targets", || async {
        buckets.target_counts().await == (total, total)
    })
    .await;
    let first = enqueued(&bus, &topics).await;
    assert_eq!(first, total as i64, "each version enqueued once");
    assert_eq!(live_progress(&bus, &topics).await, total);

    // 100 versions removed for good at the source (50 keys, 50 of the hot key's), 10 new keys.
    for (key, version) in keys.iter().zip(&written).take(50) {
        s3::delete_version(&clients[0], src, key, version.as_deref()).await;
    }
    for version in hot.iter().take(50) {
        s3::delete_version(&clients[0], src, "k00999-hot", version.as_deref()).await;
    }
    for i in 0..10 {
        buckets.put_source(&format!("new{i}"), 7, 8).await;
    }
    let now = total - 100 + 10;
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
    assert_eq!(enqueued(&bus, &topics).await, first + 10);

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
    // Two more passes over the whole bucket.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        enqueued(&bus, &topics).await,
        first + 11,
        "{}",
        ferry.log_tail()
    );
    assert!(ferry.logs().contains("scan progress loaded"));
    for n in 1..3 {
        let (_, duplicates) = buckets.held(n).await;
        assert_eq!(duplicates, 0);
    }
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

//! End-to-end: ferry replicates from a real radosgw source to two real radosgw targets through
//! a three-node Apache Kafka cluster, all started by `scripts/test-env.sh`.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use support::monitor::Monitor;
use support::s3::{self, Put, TargetIndex};
use support::{rgw, wait_until, Buckets, Ferry, Queue, TestEnv};

/// Long enough for 300 versions (80 MiB) on a 2-core machine running everything.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(300);

/// The 300-version workload: sizes from 0 B to 40 MiB, metadata and tags on some, keys with
/// spaces, unicode and `%`, one key written 4 times.
fn workload() -> Vec<Put> {
    let mut puts = Vec::new();
    for i in 0..296u64 {
        let key = match i % 5 {
            0 => format!("plain/{i}"),
            1 => format!("with space/file {i}.txt"),
            2 => format!("unicodé/ключ-日本-{i}"),
            3 => format!("percent%25/{i}%20%"),
            _ => format!("deep/a b/c+d/{i}=x&y"),
        };
        let size = match i {
            0 => 0,
            7 => 40 << 20,
            50 => 20 << 20,
            100 => 9 << 20,
            150 => (8 << 20) + 1,
            200 => 8 << 20,
            201 => (5 << 20) + 3,
            _ => ((i * 7919) % 150_000) as usize,
        };
        let mut put = Put {
            key,
            seed: i,
            size,
            ..Put::default()
        };
        if i % 3 == 0 {
            put.content_type = Some("application/x-ferry-test".into());
            put.cache_control = Some("max-age=3600".into());
            put.content_disposition = Some(format!("attachment; filename=\"f{i}.bin\""));
            put.content_encoding = Some("gzip".into());
            put.metadata = HashMap::from([
                ("origin".to_string(), "test".to_string()),
                ("index".to_string(), i.to_string()),
            ]);
        }
        if i % 4 == 0 {
            put.tagging = Some(format!("team=blue&case={i}&odd%20key=a%2Fb%20c"));
        }
        puts.push(put);
    }
    for n in 0..4u64 {
        puts.push(Put {
            key: "overwritten/key".into(),
            seed: 1000 + n,
            size: 1000 + n as usize,
            metadata: HashMap::from([("generation".to_string(), n.to_string())]),
            ..Put::default()
        });
    }
    puts
}

/// Per key, the source's versions (object version ids, newest first) and delete markers.
#[derive(Debug, Default, PartialEq)]
struct KeyHistory {
    objects_newest_first: Vec<String>,
    delete_markers: usize,
    latest_is_delete_marker: bool,
}

async fn histories(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    stamps: Option<&mut TargetIndexStamps<'_>>,
) -> BTreeMap<String, KeyHistory> {
    let mut map: BTreeMap<String, KeyHistory> = BTreeMap::new();
    let versions = s3::versions(client, bucket).await.expect("list versions");
    let mut stamps = stamps;
    for v in versions {
        let h = map.entry(v.key.clone()).or_default();
        if v.delete_marker {
            h.delete_markers += 1;
            h.latest_is_delete_marker |= v.is_latest;
        } else {
            let id = v.version_id.clone().unwrap_or_default();
            let id = match stamps.as_deref_mut() {
                Some(s) => s.stamp(&v.key, &id).await,
                None => id,
            };
            h.objects_newest_first.push(id);
        }
    }
    map
}

/// Maps target version ids to the source version ids ferry stamped on them.
struct TargetIndexStamps<'a> {
    client: &'a aws_sdk_s3::Client,
    bucket: &'a str,
}

impl TargetIndexStamps<'_> {
    async fn stamp(&mut self, key: &str, version: &str) -> String {
        let head = self
            .client
            .head_object()
            .bucket(self.bucket)
            .key(key)
            .version_id(version)
            .send()
            .await
            .expect("head target version");
        head.metadata()
            .and_then(|m| m.get("ferry-source-version-id"))
            .cloned()
            .unwrap_or_else(|| format!("unstamped:{version}"))
    }
}

async fn replicates_every_version_with_metadata_tags_and_delete_markers_in_order(queue: Queue) {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "order").await;
    let src = &buckets.clients[0];

    // Write everything first, so one scan sees many versions of a key at once and must order them.
    let started = Instant::now();
    let mut written = Vec::new();
    for put in workload() {
        let version = s3::put(src, &buckets.source, &put).await;
        assert!(version.is_some(), "the source must be versioned");
        written.push((put, version));
    }
    s3::delete(src, &buckets.source, "plain/5").await;
    s3::delete(src, &buckets.source, "with space/file 6.txt").await;
    eprintln!(
        "wrote 300 versions + 2 delete markers in {:?}",
        started.elapsed()
    );

    let mut ferry = Ferry::start(&buckets.config_on(&env, false, queue));
    let started = Instant::now();
    wait_until(
        REPLICATION_TIMEOUT,
        "300 versions and 2 delete markers on both targets",
        || async {
            let count = |v: Vec<s3::Version>| {
                (
                    v.iter().filter(|v| !v.delete_marker).count(),
                    v.iter().filter(|v| v.delete_marker).count(),
                )
            };
            let a = count(
                s3::versions(&buckets.clients[1], &buckets.a)
                    .await
                    .unwrap_or_default(),
            );
            let b = count(
                s3::versions(&buckets.clients[2], &buckets.b)
                    .await
                    .unwrap_or_default(),
            );
            a.0 >= 300 && b.0 >= 300 && a.1 >= 2 && b.1 >= 2
        },
    )
    .await;
    eprintln!("replicated to both targets in {:?}", started.elapsed());

    // Order and delete markers: each key's history on each target mirrors the source's.
    let source_history = histories(src, &buckets.source, None).await;
    for (n, bucket) in [(1, &buckets.a), (2, &buckets.b)] {
        let client = &buckets.clients[n];
        let mut stamps = TargetIndexStamps { client, bucket };
        let target_history = histories(client, bucket, Some(&mut stamps)).await;
        assert_eq!(
            target_history.len(),
            source_history.len(),
            "key count on {bucket}"
        );
        for (key, expected) in &source_history {
            assert_eq!(
                target_history.get(key),
                Some(expected),
                "history of {key:?} on {bucket}"
            );
        }
    }

    // Bytes, headers, user metadata and tags of every version.
    for (put, version) in &written {
        let expected = s3::fetch(src, &buckets.source, &put.key, version.as_deref()).await;
        assert_eq!(
            expected.body,
            s3::data(put.seed, put.size),
            "source bytes of {}",
            put.key
        );
        for (n, bucket) in [(1, &buckets.a), (2, &buckets.b)] {
            let client = &buckets.clients[n];
            let target_version = find_copy(
                client,
                bucket,
                &put.key,
                version.as_deref().unwrap_or("null"),
            )
            .await;
            let got = s3::fetch(client, bucket, &put.key, Some(&target_version)).await;
            assert!(
                got.body == expected.body,
                "bytes of {} on {bucket} differ",
                put.key
            );
            assert_eq!(
                got.content_type, expected.content_type,
                "content-type of {}",
                put.key
            );
            assert_eq!(
                got.cache_control, expected.cache_control,
                "cache-control of {}",
                put.key
            );
            assert_eq!(
                got.content_disposition, expected.content_disposition,
                "content-disposition of {}",
                put.key
            );
            assert_eq!(
                got.content_encoding, expected.content_encoding,
                "content-encoding of {}",
                put.key
            );
            let mut user = got.metadata.clone();
            user.retain(|k, _| !k.starts_with("ferry-"));
            assert_eq!(user, expected.metadata, "user metadata of {}", put.key);
            assert_eq!(got.tags, expected.tags, "tags of {}", put.key);
        }
    }

    let status = ferry.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "ferry should exit 0 on SIGTERM, got {status:?}\n{}",
        ferry.log_tail()
    );
    buckets.remove().await;
}

/// The target version holding ferry's copy of source version `source_version` of `key`.
async fn find_copy(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    source_version: &str,
) -> String {
    let versions = s3::versions(client, bucket).await.expect("list");
    for v in versions.iter().filter(|v| v.key == key && !v.delete_marker) {
        let id = v.version_id.clone().unwrap_or_default();
        let head = client
            .head_object()
            .bucket(bucket)
            .key(key)
            .version_id(&id)
            .send()
            .await
            .expect("head");
        if head
            .metadata()
            .and_then(|m| m.get("ferry-source-version-id"))
            .map(String::as_str)
            == Some(source_version)
        {
            return id;
        }
    }
    panic!("no copy of {key}@{source_version} on {bucket}");
}

/// Writes `count` small objects named `{prefix}{i}`, recording each version with the monitor.
async fn write_small(
    buckets: &Buckets,
    monitor: &Monitor,
    prefix: &str,
    range: std::ops::Range<u64>,
) {
    for i in range {
        let put = Put {
            key: format!("{prefix}{i:04}"),
            seed: i,
            size: 1024 + (i as usize * 37) % 30_000,
            ..Put::default()
        };
        monitor.wrote(s3::put(&buckets.clients[0], &buckets.source, &put).await);
    }
}

fn start_monitor(buckets: &Buckets) -> Monitor {
    Monitor::start(
        buckets.clients[0].clone(),
        buckets.source.clone(),
        vec![
            TargetIndex::new(buckets.clients[1].clone(), &buckets.a),
            TargetIndex::new(buckets.clients[2].clone(), &buckets.b),
        ],
    )
}

async fn source_is_empty(buckets: &Buckets) -> bool {
    s3::versions(&buckets.clients[0], &buckets.source)
        .await
        .is_ok_and(|v| v.is_empty())
}

async fn transient_source_is_emptied_only_after_both_targets_hold_each_version(queue: Queue) {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "transient").await;
    let monitor = start_monitor(&buckets);
    let mut ferry = Ferry::start(&buckets.config_on(&env, true, queue));

    // Writes arrive while ferry runs; a few are big enough for multipart.
    let mut expected = 0;
    for i in 0..120u64 {
        let size = match i {
            10 => 20 << 20,
            60 => 9 << 20,
            _ => (i as usize * 4099) % 200_000,
        };
        let put = Put {
            key: format!("t/{i:03} é"),
            seed: 5000 + i,
            size,
            ..Put::default()
        };
        monitor.wrote(s3::put(&buckets.clients[0], &buckets.source, &put).await);
        expected += 1;
    }
    wait_until(
        REPLICATION_TIMEOUT,
        "source emptied and both targets complete",
        || async {
            let (a, b) = buckets.target_counts().await;
            a >= expected && b >= expected && source_is_empty(&buckets).await
        },
    )
    .await;
    let report = monitor.stop().await;
    eprintln!("monitor: {report:?}");
    assert!(
        report.premature.is_empty(),
        "source versions deleted before both targets held them: {:?}",
        report.premature
    );
    assert!(report.polls > 3, "the monitor must have watched the run");

    // Every version is on both targets, byte for byte.
    for (n, bucket) in [(1, &buckets.a), (2, &buckets.b)] {
        let versions = s3::versions(&buckets.clients[n], bucket)
            .await
            .expect("list");
        for v in versions.iter().filter(|v| !v.delete_marker) {
            let i: u64 = v.key[2..5].parse().expect("index in key");
            let got = s3::fetch(&buckets.clients[n], bucket, &v.key, v.version_id.as_deref()).await;
            let size = match i {
                10 => 20 << 20,
                60 => 9 << 20,
                _ => (i as usize * 4099) % 200_000,
            };
            assert!(
                got.body == s3::data(5000 + i, size),
                "bytes of {} on {bucket}",
                v.key
            );
        }
    }
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

async fn sigkill_mid_run_and_restart_loses_nothing(queue: Queue) {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "sigkill").await;
    let monitor = start_monitor(&buckets);
    write_small(&buckets, &monitor, "k/", 0..500).await;

    let mut ferry = Ferry::start(&buckets.config_on(&env, true, queue));
    wait_until(
        REPLICATION_TIMEOUT,
        "a third of the objects on target a",
        || async { buckets.target_counts().await.0 >= 160 },
    )
    .await;
    ferry.kill();
    let at_kill = buckets.target_counts().await;
    eprintln!("SIGKILL with {at_kill:?} versions on the targets");
    assert!(
        at_kill.0 < 500 || at_kill.1 < 500,
        "the kill must land mid-run"
    );
    // Restarted at once: the new process joins the consumer groups the killed one never left,
    // and Kafka hands it the dead member's partitions once that member's session (10 s) ends.
    ferry.restart();

    wait_until(
        REPLICATION_TIMEOUT,
        "all 500 on both targets and the source empty",
        || async {
            let (a, b) = buckets.target_counts().await;
            a >= 500 && b >= 500 && source_is_empty(&buckets).await
        },
    )
    .await;
    let report = monitor.stop().await;
    assert!(
        report.premature.is_empty(),
        "premature deletes: {:?}",
        report.premature
    );
    // The restarted process resumed from state kept in Kafka, not from scratch.
    let log = ferry.log();
    let number = |message: &str, field: &str| -> u64 {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message)
            .map(|v| v[field].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(
        number("scan progress loaded", "versions") > 0,
        "scan progress replayed"
    );
    assert!(
        number("state replayed", "records") > 0,
        "status state replayed"
    );

    for (n, bucket) in [(1, &buckets.a), (2, &buckets.b)] {
        let mut index = TargetIndex::new(buckets.clients[n].clone(), bucket);
        let held = index.sources().await.expect("target listing");
        let versions = s3::versions(&buckets.clients[n], bucket)
            .await
            .expect("list");
        let objects = versions.iter().filter(|v| !v.delete_marker).count();
        eprintln!(
            "{bucket}: {objects} versions for 500 objects ({} duplicates)",
            objects - held.len()
        );
        assert_eq!(held.len(), 500, "every source version on {bucket}");
    }
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

async fn target_outage_does_not_stop_the_other_target_and_catches_up(queue: Queue) {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "outage").await;
    let monitor = start_monitor(&buckets);
    let mut ferry = Ferry::start(&buckets.config_on(&env, true, queue));

    write_small(&buckets, &monitor, "o/", 0..60).await;
    wait_until(REPLICATION_TIMEOUT, "first objects on target b", || async {
        buckets.target_counts().await.1 >= 20
    })
    .await;

    rgw("stop-rgw", 2);
    let down_at = Instant::now();
    let before = buckets.target_counts().await.0;
    write_small(&buckets, &monitor, "o/", 60..160).await;
    // Target a keeps going while b is down: it receives everything written so far.
    wait_until(
        Duration::from_secs(60),
        "target a complete while b is down",
        || async { buckets.target_counts().await.0 >= 160 },
    )
    .await;
    let during = buckets.target_counts().await.0;
    assert!(
        during > before,
        "target a made progress during the outage ({before} -> {during})"
    );
    let source_left = s3::versions(&buckets.clients[0], &buckets.source)
        .await
        .expect("list")
        .len();
    assert!(
        source_left > 0,
        "versions not yet on b must stay in the transient source"
    );
    let down_for = Duration::from_secs(20).saturating_sub(down_at.elapsed());
    tokio::time::sleep(down_for).await;
    eprintln!(
        "target b down for {:?}; a had {during}/160, source kept {source_left}",
        down_at.elapsed()
    );
    rgw("start-rgw", 2);

    wait_until(
        REPLICATION_TIMEOUT,
        "target b caught up and source empty",
        || async {
            let (a, b) = buckets.target_counts().await;
            a >= 160 && b >= 160 && source_is_empty(&buckets).await
        },
    )
    .await;
    let report = monitor.stop().await;
    assert!(
        report.premature.is_empty(),
        "premature deletes: {:?}",
        report.premature
    );
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

/// The four scenarios on the Kafka-protocol broker.
mod on_kafka {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicates_every_version_with_metadata_tags_and_delete_markers_in_order() {
        super::replicates_every_version_with_metadata_tags_and_delete_markers_in_order(Queue::Kafka)
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transient_source_is_emptied_only_after_both_targets_hold_each_version() {
        super::transient_source_is_emptied_only_after_both_targets_hold_each_version(Queue::Kafka)
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigkill_mid_run_and_restart_loses_nothing() {
        super::sigkill_mid_run_and_restart_loses_nothing(Queue::Kafka).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn target_outage_does_not_stop_the_other_target_and_catches_up() {
        super::target_outage_does_not_stop_the_other_target_and_catches_up(Queue::Kafka).await
    }
}

/// The same scenarios on the embedded queue (no broker).
mod on_embedded {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicates_every_version_with_metadata_tags_and_delete_markers_in_order() {
        super::replicates_every_version_with_metadata_tags_and_delete_markers_in_order(
            Queue::Embedded,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transient_source_is_emptied_only_after_both_targets_hold_each_version() {
        super::transient_source_is_emptied_only_after_both_targets_hold_each_version(
            Queue::Embedded,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigkill_mid_run_and_restart_loses_nothing() {
        super::sigkill_mid_run_and_restart_loses_nothing(Queue::Embedded).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn target_outage_does_not_stop_the_other_target_and_catches_up() {
        super::target_outage_does_not_stop_the_other_target_and_catches_up(Queue::Embedded).await
    }
}

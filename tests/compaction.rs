//! Kafka's log cleaner at work on ferry's compacted topics: with small segments and short lags
//! set on them (as an operator would with kafka-configs), the cleaner removes the records and
//! tombstones of retired entries for real, and a ferry restarted afterwards rebuilds the same
//! state from what is left: versions' status, failed entries, a paused target, scan progress.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::admin::{cli_ok, get_json, metric, port};
use support::kafka;
use support::proxy::{Fault, FaultProxy};
use support::{wait_until, Buckets, Ferry, TestEnv};

const TIMEOUT: Duration = Duration::from_secs(240);
const TOKEN: &str = "compaction-test-token";
/// Retired entries: replicated, then garbage-collected from the transient source.
const DONE: usize = 300;
/// Entries held back by a paused target.
const HELD: usize = 20;

/// What the admin API says about the state the restart must rebuild.
async fn state(port: u16, src: &str) -> (Value, Value, Value, Value) {
    let mut targets = get_json(port, "/api/v1/targets").await;
    // Throughput and timings differ between two processes; states and backlogs must not.
    for target in targets["targets"].as_array_mut().into_iter().flatten() {
        if let Some(fields) = target.as_object_mut() {
            fields.retain(|k, _| {
                ["name", "state", "reason", "backlog", "failed"].contains(&k.as_str())
            });
        }
    }
    let failed = get_json(port, "/api/v1/failed").await;
    let held = get_json(port, &format!("/api/v1/objects/{src}/held/0003")).await;
    let bad = get_json(port, &format!("/api/v1/objects/{src}/bad/one")).await;
    (targets, failed, held, bad)
}

/// Records of `topic` whose key names an object under `prefix`, and tombstones in all.
fn count(env: &TestEnv, topic: &str, prefix: &str) -> (usize, usize, usize) {
    let records = kafka::records(env, topic);
    let retired = records
        .iter()
        .filter(|(key, _)| String::from_utf8_lossy(key).contains(prefix))
        .count();
    let tombstones = records.iter().filter(|(_, value)| value.is_none()).count();
    (records.len(), retired, tombstones)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_cleaner_removes_retired_entries_and_a_restart_rebuilds_the_same_state() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "compact").await;
    let src = buckets.source.clone();
    // site-b is reached through a proxy that corrupts the uploads of `bad/` keys: they FAIL.
    let proxy = FaultProxy::start(&env.rgw[2]).await;
    proxy.only_paths_with("bad");
    proxy.set(Fault::FlipUploads);
    // Completed entries are retired (their status records tombstoned) 2 s after completion.
    let config = buckets
        .config_with(&env, true, "\n[status]\ncompleted_retention = \"2s\"\n")
        .replace(&env.rgw[2], &proxy.endpoint)
        .replace(
            &format!("bucket = \"{}\"\n", buckets.b),
            &format!("bucket = \"{}\"\nmax_attempts = 2\n", buckets.b),
        )
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"\n",
            &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
        );
    let mut ferry = Ferry::start(&config);
    wait_until(Duration::from_secs(60), "the admin server", || async {
        port(&ferry.log()).is_some()
    })
    .await;
    let admin = port(&ferry.log()).expect("port");

    // Retired entries: every record they had in the changelogs is tombstoned.
    for i in 0..DONE {
        buckets
            .put_source(&format!("done/{i:04}"), i as u64, 1_000)
            .await;
    }
    buckets.put_source("bad/one", 1, 1_000).await;
    buckets.put_source("bad/two", 2, 1_000).await;
    wait_until(
        TIMEOUT,
        "done/ replicated and collected, bad/ FAILED",
        || async {
            buckets.count(0).await.0 == 2
                && get_json(admin, "/api/v1/failed").await["entries"]
                    .as_array()
                    .is_some_and(|e| e.len() == 2)
        },
    )
    .await;

    // Small segments, compaction as soon as anything is dirty, tombstones kept 1 s.
    let topics = ferry::bus::Topics::new(&format!("{}.", buckets.id));
    for topic in [
        &topics.status_state,
        &topics.populator_state,
        &topics.failed,
        &topics.control,
    ] {
        kafka::set_compacted_topic_config(
            &env,
            topic,
            &[
                ("segment.ms", "1000"),
                ("min.cleanable.dirty.ratio", "0.01"),
                ("min.compaction.lag.ms", "0"),
                ("delete.retention.ms", "1000"),
            ],
        )
        .await;
    }
    let before = count(&env, &topics.status_state, "done/");
    eprintln!("status-state before cleaning: {before:?} (records, of done/, tombstones)");
    assert!(
        before.1 >= DONE,
        "the retired entries' records are in the log: {before:?}"
    );

    // A pause (control topic), and entries it holds back (live status records). Writing
    // them also rolls the segments that hold the retired records, so the cleaner can take them.
    cli_ok(
        admin,
        &[
            "targets",
            "pause",
            "site-a",
            "--reason",
            "compaction test",
            "--token",
            TOKEN,
        ],
    )
    .await;
    for i in 0..HELD {
        buckets
            .put_source(&format!("held/{i:04}"), 1_000 + i as u64, 1_000)
            .await;
    }
    wait_until(TIMEOUT, "held/ on site-b", || async {
        buckets.count(2).await.0 >= DONE + HELD
    })
    .await;

    // The cleaner removes the retired records, then (a pass after their horizon) their
    // tombstones. Each look writes nothing; a later write makes the log dirty again.
    let cleaning = std::time::Instant::now();
    let mut nudges = 0u64;
    let after = loop {
        let now = count(&env, &topics.status_state, "done/");
        if now.1 == 0 {
            break now;
        }
        assert!(
            cleaning.elapsed() < TIMEOUT,
            "the retired entries' records still in status-state after {TIMEOUT:?}: {now:?}"
        );
        nudges += 1;
        buckets
            .put_source(&format!("nudge/{nudges}"), 5_000 + nudges, 100)
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    eprintln!("status-state after cleaning: {after:?} ({nudges} nudges)");
    let progress = count(&env, &topics.populator_state, "done/");
    eprintln!("populator-state: {progress:?}");
    assert_eq!(
        progress.1, 0,
        "scan progress of collected versions is gone: {progress:?}"
    );

    // What the restart must rebuild.
    let wanted = state(admin, &src).await;
    let held_on_a = &wanted.2["versions"][0]["targets"]["site-a"]["status"];
    assert!(
        held_on_a.is_string() && held_on_a != "COMPLETED",
        "held back by the pause: {}",
        wanted.2
    );
    let enqueued = metric(admin, "ferry_entries_enqueued_total").await;
    ferry.terminate(Duration::from_secs(30));
    ferry.restart();
    wait_until(
        Duration::from_secs(60),
        "the admin server again",
        || async { port(&ferry.log()).is_some() },
    )
    .await;
    let admin = port(&ferry.log()).expect("port");
    wait_until(Duration::from_secs(60), "two scan passes", || async {
        metric(admin, "ferry_scan_passes_total").await >= 2.0
    })
    .await;
    let rebuilt = state(admin, &src).await;
    assert_eq!(rebuilt.0, wanted.0, "targets: states, pause and backlogs");
    assert_eq!(rebuilt.1, wanted.1, "failed entries");
    assert_eq!(rebuilt.2, wanted.2, "a held version's status");
    assert_eq!(rebuilt.3, wanted.3, "a failed version's status");
    assert_eq!(
        metric(admin, "ferry_entries_enqueued_total").await,
        0.0,
        "the scan's progress was rebuilt: nothing enqueued again (before the restart: {enqueued})"
    );

    // And it goes on from there: site-a resumed, the held versions complete and are collected.
    cli_ok(admin, &["targets", "resume", "site-a", "--token", TOKEN]).await;
    proxy.set(Fault::None);
    cli_ok(admin, &["failed", "retry", "--all", "--token", TOKEN]).await;
    wait_until(
        TIMEOUT,
        "every version replicated and the source empty",
        || async { buckets.count(0).await.0 == 0 && buckets.count(1).await.0 >= DONE + HELD + 2 },
    )
    .await;
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

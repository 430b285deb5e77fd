//! ferry's state follows the work in flight, not its history (real broker, real S3): a
//! COMPLETED entry's status record is retired `status.completed_retention` after it completed,
//! so the status changelog holds only the entries still in flight, and a retired version's
//! status is still answered — from the copies' stamps on the targets.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use ferry::bus::Bus;
use support::admin::{cli_ok, get_json, port};
use support::{wait_until, Buckets, Ferry, TestEnv};

const TIMEOUT: Duration = Duration::from_secs(300);

/// The live records (latest per key, not a tombstone) of `<id>.status-state`.
async fn live_status_records(bus: &Bus, id: &str) -> usize {
    let reader = bus.state_reader().expect("reader");
    let mut latest: HashMap<Vec<u8>, bool> = HashMap::new();
    for p in 0..4 {
        for (key, value) in reader
            .read_partition(&format!("{id}.status-state"), p)
            .await
            .unwrap_or_default()
        {
            latest.insert(key, value.is_some());
        }
    }
    latest.values().filter(|live| **live).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_records_are_retired_and_their_status_is_read_from_the_targets() {
    const DONE: usize = 300;
    const HELD: usize = 40;
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "history").await;
    let cfg = buckets.config_with(&env, true, "\n[status]\ncompleted_retention = \"2s\"\n");
    let mut ferry = Ferry::start(&cfg);
    wait_until(Duration::from_secs(60), "the admin server", || async {
        port(&ferry.log()).is_some()
    })
    .await;
    let admin = port(&ferry.log()).expect("the admin port");
    let bus = Bus::connect(&buckets.queue(&env)).expect("bus");

    let mut versions = Vec::new();
    for i in 0..DONE {
        versions.push(
            buckets
                .put_source(&format!("done/{i:04}"), i as u64, 2_000)
                .await,
        );
    }
    wait_until(
        TIMEOUT,
        "both targets hold every version, the source is empty",
        || async { buckets.target_counts().await == (DONE, DONE) && buckets.count(0).await.0 == 0 },
    )
    .await;
    wait_until(TIMEOUT, "every completed record is retired", || async {
        live_status_records(&bus, &buckets.id).await == 0
    })
    .await;

    // With site-b paused, new entries stay in flight: exactly they are live.
    cli_ok(admin, &["targets", "pause", "site-b", "--reason", "test"]).await;
    for i in 0..HELD {
        buckets
            .put_source(&format!("held/{i:04}"), 1000 + i as u64, 2_000)
            .await;
    }
    wait_until(TIMEOUT, "site-a holds the new versions", || async {
        buckets.target_counts().await.0 == DONE + HELD
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        live_status_records(&bus, &buckets.id).await,
        HELD,
        "the live records are the entries in flight"
    );

    // A retired version is answered from the targets' copies.
    let answer = get_json(
        admin,
        &format!("/api/v1/objects/{}/done/0007", buckets.source),
    )
    .await;
    let version = &answer["versions"][0];
    assert_eq!(
        version["version_id"].as_str(),
        versions[7].as_deref(),
        "{answer}"
    );
    assert_eq!(version["status"], "COMPLETED", "{answer}");
    for target in ["site-a", "site-b"] {
        assert_eq!(
            version["targets"][target]["status"], "COMPLETED",
            "{answer}"
        );
        assert!(
            version["targets"][target]["target_version_id"].is_string(),
            "{answer}"
        );
    }
    // One in flight is answered from its live record: site-b waits behind the pause.
    let answer = get_json(
        admin,
        &format!("/api/v1/objects/{}/held/0003", buckets.source),
    )
    .await;
    assert_eq!(
        answer["versions"][0]["targets"]["site-b"]["status"], "PROCESSING",
        "{answer}"
    );

    // A restart replays only the live records, and the paused entries then complete.
    ferry.terminate(Duration::from_secs(30));
    ferry.restart();
    wait_until(
        Duration::from_secs(60),
        "the admin server again",
        || async { port(&ferry.log()).is_some() },
    )
    .await;
    let admin = port(&ferry.log()).expect("the admin port");
    cli_ok(admin, &["targets", "resume", "site-b"]).await;
    wait_until(
        TIMEOUT,
        "site-b catches up and the source empties",
        || async {
            buckets.target_counts().await == (DONE + HELD, DONE + HELD)
                && buckets.count(0).await.0 == 0
        },
    )
    .await;
    wait_until(TIMEOUT, "their records are retired too", || async {
        live_status_records(&bus, &buckets.id).await == 0
    })
    .await;
    let replayed: usize = ferry
        .log()
        .lines()
        .filter(|l| l.contains("state replayed"))
        .filter_map(|l| {
            let at = l.find("\"entries\":")? + "\"entries\":".len();
            l[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(
        replayed <= HELD,
        "the restart replayed {replayed} records, more than the {HELD} in flight"
    );
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

//! ferry's state follows the work in flight, not its history (real broker, real S3): a
//! COMPLETED entry's status record is retired `status.completed_retention` after it completed,
//! so the status changelog holds only the entries still in flight, and a retired version's
//! status is still answered — from the copies' stamps on the targets.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use ferry::bus::Bus;
use ferry::config::{QueueConfig, QueueKind};
use support::admin::{cli_ok, get_json, port};
use support::{files, free_port, unique, wait_until, Buckets, Ferry, TestEnv};

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

/// `FERRY_TEST_HISTORY_ENTRIES` (default 100,000: about 7 minutes here) objects through the
/// ingest endpoint into an fs buffer, replicated to
/// an fs target over the Kafka cluster and garbage-collected, their status records retired:
/// then every admin answer stays under 50 ms and a restart reaches its first new copy within
/// 5 s — the cost follows the work in flight, not the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_entries_of_history_answers_stay_fast_and_a_restart_copies_within_5s() {
    const WRITERS: usize = 16;
    let entries: usize = std::env::var("FERRY_TEST_HISTORY_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let env = TestEnv::get();
    let id = unique("historyn");
    let dir = tempfile::Builder::new()
        .prefix("ferry-history-")
        .tempdir()
        .expect("tempdir");
    let (buffer, site) = (dir.path().join("buffer"), dir.path().join("site-a"));
    let ingest = free_port();
    let config = format!(
        r#"
shutdown_timeout = "20s"

[queue]
kind = "kafka"
brokers = "{kafka}"
topic_prefix = "{id}."
partitions = 4
replication_factor = 3

[ingest]
listen = "127.0.0.1:{ingest}"
location = "inbox"
access_key_id = "k"
secret_access_key = "s"

[locations.inbox]
kind = "fs"
path = "{buffer}"
transient = true

[locations.site-a]
kind = "fs"
path = "{site}"

[[rules]]
name = "all"
source = "inbox"
targets = ["site-a"]

[populator]
feeds = ["scan"]
scan_interval = "60s"

[status]
completed_retention = "2s"

[admin]
listen = "127.0.0.1:0"
"#,
        kafka = env.kafka,
        buffer = buffer.display(),
        site = site.display(),
    );
    let mut ferry = Ferry::start(&config);
    wait_until(Duration::from_secs(60), "the ingest endpoint", || async {
        ferry.log().contains("ingest endpoint ready")
    })
    .await;
    let admin = port(&ferry.log()).expect("the admin port");
    let bus = Bus::connect(&QueueConfig {
        kind: QueueKind::Kafka,
        brokers: env.kafka.clone(),
        topic_prefix: format!("{id}."),
        partitions: 4,
        replication_factor: 3,
        group_prefix: format!("{id}."),
    })
    .expect("bus");

    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = support::s3::endpoint_client(ingest, "k", "s");
        writers.push(tokio::spawn(async move {
            for i in (w..entries).step_by(WRITERS) {
                let key = format!("h/{i:06}");
                client
                    .put_object()
                    .bucket("inbox")
                    .key(&key)
                    .body(ByteStream::from(key.clone().into_bytes()))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
            }
        }));
    }
    for writer in writers {
        writer.await.expect("a writer");
    }
    let written = started.elapsed();
    wait_until(TIMEOUT * 4, "every entry completed", || async {
        completed(admin).await >= entries
    })
    .await;
    wait_until(TIMEOUT, "the buffer is empty", || async {
        files(&buffer).is_empty()
    })
    .await;
    let copied = started.elapsed();
    wait_until(TIMEOUT, "every completed record is retired", || async {
        live_status_records(&bus, &id).await == 0
    })
    .await;
    println!(
        "{entries} entries: written in {:.0} s, on the target and out of the buffer in {:.0} s",
        written.as_secs_f64(),
        copied.as_secs_f64()
    );

    // A retired version is answered from its copy's stamps; the lists from maintained views.
    for path in [
        "/api/v1/objects/inbox/h/000007",
        "/api/v1/targets",
        "/api/v1/failed",
    ] {
        let ms = median_ms(admin, path).await;
        println!("GET {path}: {ms:.1} ms (median of 11)");
        assert!(
            ms < 50.0,
            "GET {path} took {ms:.1} ms with {entries} entries of history"
        );
    }
    let answer = get_json(admin, "/api/v1/objects/inbox/h/000007").await;
    assert_eq!(answer["versions"][0]["status"], "COMPLETED", "{answer}");

    // A restart replays the live records only: the first new copy within 5 s.
    ferry.terminate(Duration::from_secs(30));
    let restarted = Instant::now();
    ferry.restart();
    let client = support::s3::endpoint_client(ingest, "k", "s");
    while client
        .put_object()
        .bucket("inbox")
        .key("after-restart")
        .body(ByteStream::from_static(b"first after the restart"))
        .send()
        .await
        .is_err()
    {
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "the endpoint did not come back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while !site.join("after-restart").exists() {
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "no copy after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_copy = restarted.elapsed().as_secs_f64();
    println!("restart to the first new copy: {first_copy:.2} s");
    assert!(
        first_copy < 5.0,
        "the first copy after a restart with {entries} entries of history took {first_copy:.2} s"
    );
    ferry.terminate(Duration::from_secs(30));
}

/// ferry_entries_completed_total, from the admin server's metrics.
async fn completed(admin: u16) -> usize {
    let page = support::admin::get(admin, "/metrics").await.1;
    page.lines()
        .find_map(|l| l.strip_prefix("ferry_entries_completed_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as usize)
}

/// The median of 11 timed answers of `path` (after one that loads what it needs).
async fn median_ms(admin: u16, path: &str) -> f64 {
    get_json(admin, path).await;
    let mut times = Vec::new();
    for _ in 0..11 {
        let started = Instant::now();
        get_json(admin, path).await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times[5]
}

//! Broker faults on the real engine: the three-node Kafka cluster of the test environment loses
//! the broker that leads most of ferry's partitions, restarts every broker in turn, and drops
//! below `min.insync.replicas`, each in the middle of a run with a transient source and two
//! targets. Every run ends with every version on both targets, the source emptied, and no
//! version deleted from the source before both targets held it (a monitor watches the whole
//! run). Had ferry acknowledged work before the brokers had its writes, the entries, results
//! or status records lost with a broker would leave versions uncopied or deleted early.
//!
//! Each test leaves the cluster whole again (every node running), also when it fails.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::kafka::{self, Partition};
use support::monitor::Monitor;
use support::s3::{self, Put, TargetIndex};
use support::{admin, wait_until, Buckets, Ferry, TestEnv};

/// A run of 2,000 versions to two targets on 2 cores, with a broker fault in it.
const TIMEOUT: Duration = Duration::from_secs(420);

/// Starts every Kafka node that is not running, on drop: a failed test must not leave the
/// next one a broken cluster.
struct HealCluster;

impl Drop for HealCluster {
    fn drop(&mut self) {
        for n in 0..3 {
            let _ = std::process::Command::new("bash")
                .arg(support::scripts_dir().join("test-env.sh"))
                .arg("start-kafka")
                .arg(n.to_string())
                .status();
        }
    }
}

/// A run in progress: the versions written to a transient source, ferry copying them, a
/// monitor watching for early deletes.
struct Run {
    env: TestEnv,
    buckets: Buckets,
    monitor: Monitor,
    ferry: Ferry,
    versions: usize,
}

impl Run {
    /// Writes `versions` versions (half as many keys, two versions each: order per key counts)
    /// and starts ferry; returns once the first copies landed.
    async fn start(name: &str, versions: usize) -> Run {
        let env = TestEnv::get();
        let buckets = Buckets::create(&env, name).await;
        let monitor = Monitor::start(
            buckets.clients[0].clone(),
            buckets.source.clone(),
            vec![
                TargetIndex::new(buckets.clients[1].clone(), &buckets.a),
                TargetIndex::new(buckets.clients[2].clone(), &buckets.b),
            ],
        );
        for round in 0..2u64 {
            for i in 0..(versions / 2) as u64 {
                let put = Put {
                    key: format!("k/{i:04}"),
                    seed: round * 10_000 + i,
                    size: 512 + (i as usize * 131) % 8_000,
                    ..Put::default()
                };
                monitor.wrote(s3::put(&buckets.clients[0], &buckets.source, &put).await);
            }
        }
        let ferry = Ferry::start(&buckets.config(&env, true));
        let run = Run {
            env,
            buckets,
            monitor,
            ferry,
            versions,
        };
        wait_until(Duration::from_secs(120), "the first copies", || async {
            run.buckets.target_counts().await.0 >= versions / 10
        })
        .await;
        run
    }

    /// ferry's partitions (every topic it made for this run).
    fn partitions(&self) -> Vec<Partition> {
        kafka::partitions(&self.env, &format!("{}.", self.buckets.id))
    }

    /// The admin server's port.
    fn admin_port(&self) -> u16 {
        admin::port(&self.ferry.log()).expect("admin server started")
    }

    /// Waits for the end of the run and checks it: every version on both targets, the source
    /// empty, nothing deleted early, ferry still running. Prints the duplicates per target.
    async fn finish(mut self) {
        let versions = self.versions;
        let buckets = &self.buckets;
        wait_until(
            TIMEOUT,
            "every version on both targets and the source empty",
            || async {
                let (a, b) = buckets.target_counts().await;
                a >= versions
                    && b >= versions
                    && s3::versions(&buckets.clients[0], &buckets.source)
                        .await
                        .is_ok_and(|v| v.is_empty())
            },
        )
        .await;
        let written: HashSet<String> = self.monitor.written.lock().expect("lock").clone();
        assert_eq!(written.len(), versions, "versions written");
        let report = self.monitor.stop().await;
        eprintln!("monitor: {report:?}");
        assert!(
            report.premature.is_empty(),
            "source versions deleted before both targets held them: {:?}",
            report.premature
        );
        for n in [1, 2] {
            let (held, duplicates) = buckets.held(n).await;
            let bucket = buckets.bucket(n);
            eprintln!("{bucket}: {versions} source versions, {duplicates} duplicate copies");
            assert_eq!(
                held, written,
                "{bucket} holds exactly the source versions written"
            );
        }
        assert!(self.ferry.running(), "ferry kept running through the fault");
        self.ferry.terminate(Duration::from_secs(30));
        buckets.remove().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_broker_leading_most_partitions_loses_nothing() {
    let _heal = HealCluster;
    let run = Run::start("brokerkill", 2000).await;
    let led = kafka::leaders(&run.partitions());
    let (&victim, &count) = led
        .iter()
        .max_by_key(|(_, &count)| count)
        .expect("ferry's partitions have leaders");
    eprintln!("partitions led per node: {led:?}; SIGKILL node {victim} ({count} partitions)");
    let at_kill = run.buckets.target_counts().await;
    assert!(at_kill.0 < run.versions, "the kill must land mid-run");
    kafka::node("stop-kafka", victim, "KILL");

    // Leaders move to the two others (still `min.insync.replicas`): copying goes on.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = run.buckets.target_counts().await;
    let moved = kafka::leaders(&run.partitions());
    eprintln!("after 20 s without node {victim}: {during:?} on the targets, leaders {moved:?}");
    assert!(
        !moved.contains_key(&victim),
        "no partition is still led by the dead node: {moved:?}"
    );
    assert!(
        during.0 > at_kill.0 || during.0 >= run.versions,
        "copying went on without node {victim}: {at_kill:?} -> {during:?}"
    );
    kafka::node("start-kafka", victim, "KILL");
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_broker_loses_nothing() {
    let _heal = HealCluster;
    let run = Run::start("rolling", 2000).await;
    let prefix = format!("{}.", run.buckets.id);
    for n in 0..3 {
        // As an operator does it: the next broker only once every replica is back in sync.
        wait_until(
            Duration::from_secs(120),
            "every replica of ferry's partitions in sync",
            || async { kafka::fully_replicated(&run.env, &prefix) },
        )
        .await;
        let before = run.buckets.target_counts().await;
        let started = Instant::now();
        kafka::node("stop-kafka", n, "TERM");
        kafka::node("start-kafka", n, "TERM");
        eprintln!(
            "node {n} restarted in {:?}; targets {before:?} -> {:?}",
            started.elapsed(),
            run.buckets.target_counts().await
        );
    }
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_insync_replicas_ferry_waits_reports_not_ready_and_resumes() {
    let _heal = HealCluster;
    let run = Run::start("minisr", 1000).await;
    let port = run.admin_port();
    let completed = || async { admin::metric(port, "ferry_entries_completed_total").await };
    kafka::node("stop-kafka", 1, "KILL");
    kafka::node("stop-kafka", 2, "KILL");
    let down = Instant::now();

    // Writes need two in-sync replicas: none is acknowledged, and readiness says the queue.
    let body = loop {
        let (status, body) = admin::get(port, "/readyz").await;
        if status == 503 && body.contains("\"queue\"") {
            break body;
        }
        assert!(
            down.elapsed() < Duration::from_secs(90),
            "/readyz still does not name the queue 90 s after two brokers went: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "not ready {:?} after two brokers went: {body}",
        down.elapsed()
    );
    let at_stall = (completed().await, run.buckets.target_counts().await);
    tokio::time::sleep(Duration::from_secs(15)).await;
    let later = (completed().await, run.buckets.target_counts().await);
    eprintln!("entries completed, targets: {at_stall:?} -> 15 s later {later:?}");
    assert_eq!(
        at_stall.0, later.0,
        "no entry completes while the brokers cannot take a write"
    );

    kafka::node("start-kafka", 1, "KILL");
    kafka::node("start-kafka", 2, "KILL");
    wait_until(Duration::from_secs(120), "/readyz 200 again", || async {
        admin::get(port, "/readyz").await.0 == 200
    })
    .await;
    run.finish().await;
}

//! Scale-out: several ferry instances in one set of consumer groups on the real broker and real
//! S3 servers, one SIGKILLed mid-run and restarted — the others take its partitions and finish
//! its work; an instance joining and one leaving mid-run do not stop the copying (cooperative
//! rebalancing). Nothing is lost, nothing is garbage-collected early.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::monitor::Monitor;
use support::s3::{self, Put, TargetIndex};
use support::{wait_until, Buckets, Ferry, TestEnv};

/// 2,000 versions to 2 targets through 3 instances (and one restart) on 2 cores.
const TIMEOUT: Duration = Duration::from_secs(420);
const VERSIONS: usize = 2000;

/// Copies this run of an instance made (its debug "copy timings" lines, one per copy).
fn copies(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("\"copy timings\""))
        .count()
}

/// "time assigned|revoked partitions" for the consumer groups whose name ends with `group`.
fn rebalances(log: &str, group: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["group"].as_str().is_some_and(|g| g.ends_with(group)))
        .filter_map(|v| {
            let what = v["message"]
                .as_str()?
                .strip_prefix("partitions ")?
                .to_string();
            let at = v["timestamp"].as_str()?.get(11..23)?.to_string();
            Some(format!(
                "{at} {what} {}",
                v["partitions"].as_str().unwrap_or("")
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_split_the_work_and_absorb_a_sigkill() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "scale").await;
    let monitor = Monitor::start(
        buckets.clients[0].clone(),
        buckets.source.clone(),
        vec![
            TargetIndex::new(buckets.clients[1].clone(), &buckets.a),
            TargetIndex::new(buckets.clients[2].clone(), &buckets.b),
        ],
    );
    // 1,000 keys, two versions each, so ordering within a key matters across instances.
    for round in 0..2u64 {
        for i in 0..(VERSIONS / 2) as u64 {
            let put = Put {
                key: format!("s/{i:04}"),
                seed: round * 10_000 + i,
                size: 512 + (i as usize * 131) % 8_000,
                ..Put::default()
            };
            monitor.wrote(s3::put(&buckets.clients[0], &buckets.source, &put).await);
        }
    }

    // Instance 0 runs every stage (the one scan populator); 1 every stage but the populator;
    // 2 only the replication processor — the splits `[stages]` lets an operator make.
    let full = buckets.config(&env, true);
    let worker = format!("{full}\n[stages]\npopulator = false\n");
    let copier = format!("{full}\n[stages]\npopulator = false\nstatus = false\ngc = false\n");
    let mut instances = [
        Ferry::start(&full),
        Ferry::start(&worker),
        Ferry::start(&copier),
    ];
    // The group spreads the partitions over its members: every instance gets a share.
    wait_until(
        Duration::from_secs(60),
        "all three instances copying",
        || async { instances.iter().all(|f| copies(&f.log()) > 0) },
    )
    .await;
    let before: Vec<usize> = instances.iter().map(|f| copies(&f.log())).collect();
    eprintln!("copies per instance when all three were working: {before:?}");

    // The worker with the most work goes.
    let victim = if before[1] >= before[2] { 1 } else { 2 };
    instances[victim].kill();
    let at_kill = buckets.target_counts().await;
    eprintln!("SIGKILL of instance {victim} with {at_kill:?} versions on the targets");
    assert!(
        at_kill.0 < VERSIONS || at_kill.1 < VERSIONS,
        "the kill must land mid-run"
    );
    // Its partitions move to the other two once its session (10 s) expires; it is restarted
    // after that, so the survivors are seen doing its work alone.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let moved = buckets.target_counts().await;
    instances[victim].restart();

    wait_until(
        TIMEOUT,
        "every version on both targets and the source empty",
        || async {
            let (a, b) = buckets.target_counts().await;
            a >= VERSIONS
                && b >= VERSIONS
                && s3::versions(&buckets.clients[0], &buckets.source)
                    .await
                    .is_ok_and(|v| v.is_empty())
        },
    )
    .await;
    let written: HashSet<String> = monitor.written.lock().expect("lock").clone();
    let report = monitor.stop().await;
    eprintln!("monitor: {report:?}");
    assert!(
        moved.0 > at_kill.0 || moved.1 > at_kill.1,
        "the survivors kept copying while instance {victim} was dead: {at_kill:?} -> {moved:?}"
    );
    assert!(
        report.premature.is_empty(),
        "source versions deleted before both targets held them: {:?}",
        report.premature
    );

    for n in [1, 2] {
        let (held, duplicates) = buckets.held(n).await;
        let bucket = buckets.bucket(n);
        eprintln!(
            "{bucket}: {} versions for {VERSIONS} source versions ({duplicates} duplicates)",
            held.len() + duplicates
        );
        assert_eq!(
            held, written,
            "{bucket} holds exactly the source versions written"
        );
    }
    let done: Vec<usize> = instances.iter().map(|f| copies(&f.logs())).collect();
    eprintln!("copies per instance, all runs: {done:?}");
    // How the replication group's partitions moved, per instance (all runs): what to look at
    // when the work was not spread.
    for (i, ferry) in instances.iter().enumerate() {
        for line in rebalances(&ferry.logs(), ".replication") {
            eprintln!("instance {i}: {line}");
        }
    }
    for (i, ferry) in instances.iter_mut().enumerate() {
        assert!(ferry.running(), "instance {i} still running");
        ferry.terminate(Duration::from_secs(30));
    }
    buckets.remove().await;
}

/// Times (seconds of the day) of every copy in `logs`, sorted.
fn copy_times(logs: &[String]) -> Vec<f64> {
    let mut times: Vec<f64> = logs
        .iter()
        .flat_map(|log| log.lines())
        .filter(|l| l.contains("\"copy timings\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let t = v["timestamp"].as_str()?.get(11..23)?.to_string();
            let (h, rest) = t.split_once(':')?;
            let (m, s) = rest.split_once(':')?;
            Some(
                h.parse::<f64>().ok()? * 3600.0
                    + m.parse::<f64>().ok()? * 60.0
                    + s.parse::<f64>().ok()?,
            )
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_joining_and_one_leaving_do_not_stop_the_copying() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "rebalance").await;
    let monitor = Monitor::start(
        buckets.clients[0].clone(),
        buckets.source.clone(),
        vec![
            TargetIndex::new(buckets.clients[1].clone(), &buckets.a),
            TargetIndex::new(buckets.clients[2].clone(), &buckets.b),
        ],
    );
    for round in 0..2u64 {
        for i in 0..(VERSIONS / 2) as u64 {
            let put = Put {
                key: format!("r/{i:04}"),
                seed: round * 10_000 + i,
                size: 512 + (i as usize * 131) % 8_000,
                ..Put::default()
            };
            monitor.wrote(s3::put(&buckets.clients[0], &buckets.source, &put).await);
        }
    }
    // 8 partitions, so four members all get some.
    let full = buckets
        .config(&env, true)
        .replace("partitions = 4\n", "partitions = 8\n");
    let worker = format!("{full}\n[stages]\npopulator = false\n");
    let mut instances = vec![
        Ferry::start(&full),
        Ferry::start(&worker),
        Ferry::start(&worker),
    ];
    wait_until(
        Duration::from_secs(60),
        "three instances copying",
        || async { instances.iter().all(|f| copies(&f.log()) > 0) },
    )
    .await;

    // A fourth instance joins mid-run...
    let joined_with = buckets.target_counts().await;
    instances.push(Ferry::start(&worker));
    wait_until(
        Duration::from_secs(60),
        "the fourth instance copying",
        || async { copies(&instances[3].log()) > 0 },
    )
    .await;
    // ...and, once it works, one leaves in an orderly way (SIGTERM): it hands its
    // partitions over as it goes, no session timeout to wait for.
    let left_with = buckets.target_counts().await;
    eprintln!("joined with {joined_with:?} on the targets, instance 1 leaves with {left_with:?}");
    assert!(left_with.0 < VERSIONS, "the leave must land mid-run");
    let status = instances[1].terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "instance 1 stopped cleanly: {status:?}"
    );

    wait_until(
        TIMEOUT,
        "every version on both targets and the source empty",
        || async {
            let (a, b) = buckets.target_counts().await;
            a >= VERSIONS
                && b >= VERSIONS
                && s3::versions(&buckets.clients[0], &buckets.source)
                    .await
                    .is_ok_and(|v| v.is_empty())
        },
    )
    .await;
    let written: HashSet<String> = monitor.written.lock().expect("lock").clone();
    let report = monitor.stop().await;
    assert!(
        report.premature.is_empty(),
        "source versions deleted before both targets held them: {:?}",
        report.premature
    );
    for n in [1, 2] {
        let (held, duplicates) = buckets.held(n).await;
        let bucket = buckets.bucket(n);
        eprintln!("{bucket}: {VERSIONS} source versions, {duplicates} duplicate copies");
        assert_eq!(
            held, written,
            "{bucket} holds exactly the source versions written"
        );
    }

    // The copying never stopped: the longest pause between two copies (any instance) over the
    // whole run, rebalances included.
    let logs: Vec<String> = instances.iter().map(Ferry::logs).collect();
    let times = copy_times(&logs);
    let (gap, at) = times
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .fold((0.0, 0.0), |best, g| if g.0 > best.0 { g } else { best });
    eprintln!(
        "{} copies from {:.1} to {:.1}; longest pause {gap:.2} s after {at:.1}",
        times.len(),
        times.first().copied().unwrap_or(0.0),
        times.last().copied().unwrap_or(0.0)
    );
    for (i, log) in logs.iter().enumerate() {
        for line in rebalances(log, ".replication") {
            eprintln!("instance {i}: {line}");
        }
    }
    assert!(
        gap < 5.0,
        "copying paused {gap:.2} s (after {at:.1}): longer than a rebalance takes"
    );
    for (i, ferry) in instances.iter_mut().enumerate() {
        if i != 1 {
            assert!(ferry.running(), "instance {i} still running");
            ferry.terminate(Duration::from_secs(30));
        }
    }
    buckets.remove().await;
}

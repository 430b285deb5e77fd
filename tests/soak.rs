//! Soak: three ferry instances replicate a steady stream of versions from a transient source to
//! two targets while a target is stopped and restarted, an instance is killed and restarted and
//! a Kafka node is SIGKILLed and started again, in turn, every few minutes; then every
//! invariant is checked and the figures printed.
//!
//! Short (100 s) in the default test run; `bash scripts/soak.sh` runs it for an hour.
//! Knobs: `FERRY_SOAK_SECONDS` (default 100), `FERRY_SOAK_RATE` (versions per second, default
//! 10), `FERRY_SOAK_FAULT_EVERY` (seconds between faults, default 30).

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::monitor::Monitor;
use support::s3::{self, Put, TargetIndex};
use support::{rgw, Buckets, Ferry, TestEnv};

/// A killed instance is restarted after its consumer-group session (10 s) has expired, as a
/// supervisor with a restart delay would.
const RESTART_DELAY: Duration = Duration::from_secs(12);
/// A SIGKILLed Kafka node is started again after this long.
const BROKER_DOWN: Duration = Duration::from_secs(20);
/// How long the last backlog may take to drain once writing stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(420);

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What went wrong on purpose, and when.
#[derive(Default)]
struct Faults {
    outages: usize,
    kills: usize,
    /// The target gateway that is down and when it comes back.
    down: Option<(Instant, usize)>,
    /// The instance that is dead and when it is restarted.
    dead: Option<(Instant, usize)>,
    broker_kills: usize,
    /// The Kafka node that is dead and when it is started again.
    broker: Option<(Instant, usize)>,
}

impl Faults {
    /// Starts fault number `slot`, in turn: a target gateway stopped, an instance killed, a
    /// Kafka node killed.
    async fn inject(&mut self, slot: usize, outage: Duration, instances: &mut [Ferry]) {
        let round = slot / 3;
        if slot % 3 == 2 {
            let node = round % 3;
            blocking_kafka("stop-kafka", node).await;
            eprintln!("soak: Kafka node {node} killed");
            self.broker = Some((Instant::now() + BROKER_DOWN, node));
            self.broker_kills += 1;
        } else if slot.is_multiple_of(3) {
            let gateway = 1 + round % 2;
            blocking_rgw("stop-rgw", gateway).await;
            eprintln!("soak: target gateway {gateway} stopped");
            self.down = Some((Instant::now() + outage, gateway));
            self.outages += 1;
        } else {
            let k = round % instances.len();
            instances[k].kill();
            eprintln!("soak: instance {k} killed");
            self.dead = Some((Instant::now() + RESTART_DELAY, k));
            self.kills += 1;
        }
    }

    /// Ends the faults whose time is up (all of them with `all`).
    async fn heal(&mut self, instances: &mut [Ferry], all: bool) {
        if let Some((at, gateway)) = self.down {
            if all || Instant::now() >= at {
                blocking_rgw("start-rgw", gateway).await;
                eprintln!("soak: target gateway {gateway} back");
                self.down = None;
            }
        }
        if let Some((at, node)) = self.broker {
            if all || Instant::now() >= at {
                blocking_kafka("start-kafka", node).await;
                eprintln!("soak: Kafka node {node} back");
                self.broker = None;
            }
        }
        if let Some((at, k)) = self.dead {
            if all && Instant::now() < at {
                tokio::time::sleep(at - Instant::now()).await;
            }
            if Instant::now() >= at {
                instances[k].restart();
                eprintln!("soak: instance {k} restarted");
                self.dead = None;
            }
        }
    }

    fn active(&self) -> bool {
        self.down.is_some() || self.dead.is_some() || self.broker.is_some()
    }
}

async fn blocking_kafka(action: &'static str, n: usize) {
    tokio::task::spawn_blocking(move || support::kafka::node(action, n, "KILL"))
        .await
        .expect("test-env task");
}

async fn blocking_rgw(action: &'static str, n: usize) {
    tokio::task::spawn_blocking(move || rgw(action, n))
        .await
        .expect("test-env task");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_writes_with_target_outages_and_instance_kills_lose_nothing() {
    let seconds = knob("FERRY_SOAK_SECONDS", 100);
    let rate = knob("FERRY_SOAK_RATE", 10).max(1);
    let every = Duration::from_secs(knob("FERRY_SOAK_FAULT_EVERY", 30).max(15));
    let outage = (every / 2).min(Duration::from_secs(60));
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "soak").await;
    let monitor = Monitor::start(
        buckets.clients[0].clone(),
        buckets.source.clone(),
        vec![
            TargetIndex::new(buckets.clients[1].clone(), &buckets.a),
            TargetIndex::new(buckets.clients[2].clone(), &buckets.b),
        ],
    );
    let written = monitor.written.clone();

    // One instance with every stage (the scan populator), two without the populator.
    let full = buckets.config(&env, true);
    let worker = format!("{full}\n[stages]\npopulator = false\n");
    let mut instances = [
        Ferry::start(&full),
        Ferry::start(&worker),
        Ferry::start(&worker),
    ];

    // The writer: `rate` versions a second over a key space that a version revisits about
    // every 30 s, so keys get several versions while earlier ones are still in flight.
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (client, bucket, stop) = (
            buckets.clients[0].clone(),
            buckets.source.clone(),
            stop.clone(),
        );
        let written = written.clone();
        tokio::spawn(async move {
            let keys = rate * 30;
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            let (mut n, mut refused) = (0u64, 0u64);
            while !stop.is_cancelled() {
                tick.tick().await;
                let put = Put {
                    key: format!("soak/{:06}", n % keys),
                    seed: n,
                    size: 256 + (n as usize * 7919) % 16_000,
                    ..Put::default()
                };
                // radosgw now and then refuses a PUT racing a delete of the same key's older
                // version (NoSuchKey): that version was not written; the next key is.
                match s3::try_put(&client, &bucket, &put).await {
                    Ok(Some(v)) => {
                        written.lock().expect("lock").insert(v);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        refused += 1;
                        eprintln!("soak: the source refused a write: {e}");
                    }
                }
                n += 1;
            }
            (n - refused, refused)
        })
    };

    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut faults = Faults::default();
    let mut next_fault = started + every;
    let mut slot = 0;
    let mut peak_rss = 0u64;
    while Instant::now() < deadline {
        for ferry in &instances {
            peak_rss = peak_rss.max(ferry.rss().unwrap_or(0));
        }
        faults.heal(&mut instances, false).await;
        if Instant::now() >= next_fault && !faults.active() {
            faults.inject(slot, outage, &mut instances).await;
            slot += 1;
            next_fault = Instant::now() + every;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    faults.heal(&mut instances, true).await;
    stop.cancel();
    let (puts, refused) = writer.await.expect("writer task");
    let expected: HashSet<String> = written.lock().expect("lock").clone();
    eprintln!(
        "soak: {puts} versions written ({refused} writes refused by the source) in {:.0} s; draining",
        started.elapsed().as_secs_f64()
    );

    let drain = Instant::now();
    loop {
        for ferry in &instances {
            peak_rss = peak_rss.max(ferry.rss().unwrap_or(0));
        }
        let (a, b) = buckets.target_counts().await;
        let source_empty = s3::versions(&buckets.clients[0], &buckets.source)
            .await
            .is_ok_and(|v| v.is_empty());
        if a >= expected.len() && b >= expected.len() && source_empty {
            break;
        }
        assert!(
            drain.elapsed() < DRAIN_TIMEOUT,
            "not drained after {DRAIN_TIMEOUT:?}: targets hold {a} and {b} of {} versions, \
             source empty: {source_empty}\n{}",
            expected.len(),
            instances.iter().map(Ferry::log_tail).collect::<String>()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let drained = drain.elapsed();
    let report = monitor.stop().await;

    let mut lost = Vec::new();
    let mut replicated = Vec::new();
    let mut duplicates = Vec::new();
    for n in [1, 2] {
        let (held, extra) = buckets.held(n).await;
        replicated.push(expected.intersection(&held).count());
        lost.push(expected.difference(&held).count());
        duplicates.push(extra);
    }
    let mut lags: Vec<f64> = instances
        .iter()
        .flat_map(|f| {
            f.logs()
                .lines()
                .filter(|l| l.contains("\"COMPLETED on every target\""))
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|j| j["latency_ms"].as_f64())
                .map(|ms| ms / 1000.0)
                .collect::<Vec<_>>()
        })
        .collect();
    lags.sort_by(f64::total_cmp);
    println!(
        "soak: {seconds} s at {rate} versions/s, 3 instances, 2 targets, transient source; \
         {} target outages of {} s, {} instance kills (restart after {} s) and {} Kafka node \
         SIGKILLs (restart after {} s), one every {} s",
        faults.outages,
        outage.as_secs(),
        faults.kills,
        RESTART_DELAY.as_secs(),
        faults.broker_kills,
        BROKER_DOWN.as_secs(),
        every.as_secs()
    );
    println!(
        "soak: versions written {}; replicated site-a {} site-b {}; lost site-a {} site-b {}; premature GC {}; \
         duplicates site-a {} site-b {}; lag p99 {:.1} s, max {:.1} s ({} completions); \
         peak RSS {} MiB (largest instance); drained {:.0} s after the last write",
        expected.len(),
        replicated[0],
        replicated[1],
        lost[0],
        lost[1],
        report.premature.len(),
        duplicates[0],
        duplicates[1],
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0.0),
        lags.len(),
        peak_rss >> 20,
        drained.as_secs_f64()
    );
    assert_eq!(lost, [0, 0], "versions lost on site-a, site-b");
    assert!(
        report.premature.is_empty(),
        "source versions deleted before both targets held them: {:?}",
        report.premature
    );
    assert!(
        faults.outages >= 1 && faults.kills >= 1 && (seconds < 300 || faults.broker_kills >= 1),
        "the run must have had every kind of fault (a broker kill from 300 s on)"
    );
    for (i, ferry) in instances.iter_mut().enumerate() {
        assert!(ferry.running(), "instance {i} running at the end");
        ferry.terminate(Duration::from_secs(30));
    }
    buckets.remove().await;
}

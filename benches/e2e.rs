//! End-to-end benchmark: ferry and `rclone copy` side by side on the same objects, servers and
//! machine, in one run (absolute numbers on a shared 2-core machine are noise; ratios measured
//! side by side are not). Run through `scripts/bench.sh`, which starts the test environment.
//!
//! For each workload the source bucket is written once; then, alternating (ABBA), ferry (start →
//! every entry COMPLETED, from its own metrics) and rclone (start → exit) copy it into fresh
//! target buckets, `--reps` times; the median is reported. Every copy is checked by listing the
//! targets. The upload-only rate (rclone from a local directory into a target) is the limit
//! no replicator can beat.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::admin::{get, port};
use support::s3::{self, Put};
use support::{unique, TestEnv};

/// rclone's flags: its concurrency raised to ferry's defaults (16 copies per target, 4 parts
/// of one object at once, 8 MiB parts) so that neither tool wins on a setting; its
/// single-request limit is its default (200 MiB). The benchmark's large sources are uploaded
/// in parts, as S3 clients do, so both tools copy them in parts. (Up to 512 MiB ferry streams
/// a source whose ETag is its MD5 in one request; rclone's limit, raised to match, would let it
/// send multipart sources in one request with no checksum to check it against.)
const RCLONE_FLAGS: &[&str] = &[
    "--transfers",
    "16",
    "--checkers",
    "16",
    "--s3-upload-concurrency",
    "4",
    "--s3-chunk-size",
    "8M",
    "--s3-upload-cutoff",
    "200M",
];

/// The most a single tool run may take before the benchmark gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

struct Workload {
    name: &'static str,
    count: usize,
    size: usize,
    targets: usize,
}

/// What one run of one tool measured.
#[derive(Clone, Copy, Default)]
struct Run {
    seconds: f64,
    /// Peak resident memory, summed over the tool's processes.
    rss_mib: f64,
    /// Bytes read from the source per byte written to one target (None when unknown).
    source_read_ratio: Option<f64>,
    /// S3 requests the servers logged for this run's buckets, per object.
    requests: Requests,
}

/// S3 requests by method, counted from radosgw's access log (what the server saw, not what the
/// tool says it sent), summed per object copied.
#[derive(Clone, Copy, Default)]
struct Requests {
    get: f64,
    head: f64,
    put: f64,
    post: f64,
    list: f64,
    other: f64,
}

impl Requests {
    fn total(&self) -> f64 {
        self.get + self.head + self.put + self.post + self.list + self.other
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, n) in [
            ("GET", self.get),
            ("HEAD", self.head),
            ("PUT", self.put),
            ("POST", self.post),
            ("LIST", self.list),
            ("other", self.other),
        ] {
            if n >= 0.005 {
                parts.push(format!("{n:.2} {name}"));
            }
        }
        format!("{:.2} ({})", self.total(), parts.join(" + "))
    }
}

/// The requests of one run, once radosgw's log thread has written them out.
async fn count_requests(
    marks: &[u64],
    source: &str,
    targets: &[(usize, String)],
    w: &Workload,
) -> Requests {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut buckets = vec![source];
    buckets.extend(targets.iter().map(|(_, b)| b.as_str()));
    let r = requests_since(marks, &buckets, w.count);
    eprintln!("bench: S3 requests per object: {}", r.describe());
    r
}

/// Where each radosgw's log ends now: [`requests_since`] counts what is appended after.
fn log_marks() -> Vec<u64> {
    (0..3)
        .map(|n| std::fs::metadata(rgw_log(n)).map_or(0, |m| m.len()))
        .collect()
}

fn rgw_log(n: usize) -> std::path::PathBuf {
    let dir = std::env::var("FERRY_TEST_ENV").unwrap_or_else(|_| "/tmp/ferry-test-env".into());
    Path::new(&dir).join(format!("logs/client.rgw.{n}.log"))
}

/// The requests radosgw logged since `marks` for any of `buckets`, divided by `objects`. An
/// access-log line reads `… "METHOD /bucket/key?query HTTP/1.1" status …`.
fn requests_since(marks: &[u64], buckets: &[&str], objects: usize) -> Requests {
    use std::io::{Read, Seek, SeekFrom};
    let mut r = Requests::default();
    for (n, mark) in marks.iter().enumerate() {
        let Ok(mut file) = std::fs::File::open(rgw_log(n)) else {
            continue;
        };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(*mark)).is_err() || file.read_to_string(&mut text).is_err() {
            continue;
        }
        for line in text.lines().filter(|l| l.contains(" beast: ")) {
            let Some(request) = line.split('"').nth(1) else {
                continue;
            };
            let mut words = request.split_whitespace();
            let (Some(method), Some(target)) = (words.next(), words.next()) else {
                continue;
            };
            let path = target.trim_start_matches('/');
            let bucket = path.split(['/', '?']).next().unwrap_or("");
            if !buckets.contains(&bucket) {
                continue;
            }
            let has_key = !path[bucket.len()..]
                .trim_start_matches('/')
                .split('?')
                .next()
                .unwrap_or("")
                .is_empty();
            let slot = match method {
                "GET" if !has_key => &mut r.list,
                "GET" => &mut r.get,
                "HEAD" => &mut r.head,
                "PUT" => &mut r.put,
                "POST" => &mut r.post,
                _ => &mut r.other,
            };
            *slot += 1.0;
        }
    }
    let per = objects.max(1) as f64;
    for n in [
        &mut r.get,
        &mut r.head,
        &mut r.put,
        &mut r.post,
        &mut r.list,
        &mut r.other,
    ] {
        *n /= per;
    }
    r
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    runs[runs.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    // For profiling: `--only small` runs one workload, `--count N` changes its size,
    // `--ferry-only` skips rclone and the upload-only limit.
    let only = value("--only");
    let count: Option<usize> = value("--count").and_then(|c| c.parse().ok());
    let ferry_only = args.iter().any(|a| a == "--ferry-only");
    let scale = |full: usize, small: usize| count.unwrap_or(if quick { small } else { full });
    let workloads = [
        Workload {
            name: "small",
            count: scale(5000, 200),
            size: 16 << 10,
            targets: 1,
        },
        Workload {
            name: "medium",
            count: scale(500, 20),
            size: 1 << 20,
            targets: 1,
        },
        Workload {
            name: "large",
            count: scale(8, 2),
            size: scale(256 << 20, 32 << 20),
            targets: 1,
        },
        Workload {
            name: "fan-out small",
            count: scale(2000, 100),
            size: 16 << 10,
            targets: 3,
        },
        Workload {
            name: "fan-out large",
            count: scale(8, 2),
            size: scale(256 << 20, 32 << 20),
            targets: 3,
        },
    ];
    let workloads: Vec<Workload> = workloads
        .into_iter()
        .filter(|w| only.as_deref().is_none_or(|o| o == w.name))
        .collect();
    let steady = only
        .as_deref()
        .is_none_or(|o| o == "steady")
        .then_some(Steady {
            rate: if quick { 50 } else { 100 },
            seconds: if quick { 10 } else { 60 },
            size: 16 << 10,
            targets: 2,
        });
    let svg = value("--svg");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = runtime.block_on(run_all(&workloads, reps, quick, ferry_only));
    if let Some(st) = steady {
        eprintln!(
            "bench: steady — {} objects/s for {} s to {} targets",
            st.rate, st.seconds, st.targets
        );
        let (samples, rss) = runtime.block_on(run_steady(&TestEnv::get(), &st));
        let part = steady_report(&st, &samples, rss, svg.as_deref());
        eprint!("{part}");
        report.push_str(&part);
    }
    print!("{report}");
    if let Some(path) = out {
        std::fs::write(&path, &report).unwrap_or_else(|e| panic!("write {path}: {e}"));
        eprintln!("bench: wrote {path}");
    }
}

async fn run_all(workloads: &[Workload], reps: usize, quick: bool, ferry_only: bool) -> String {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().expect("tempdir");
    let rclone_conf = dir.path().join("rclone.conf");
    std::fs::write(&rclone_conf, rclone_config(&env)).expect("rclone config");
    let mut report = header(reps, quick);
    for w in workloads {
        eprintln!(
            "bench: {} — {} × {} KiB to {} target(s)",
            w.name,
            w.count,
            w.size >> 10,
            w.targets
        );
        let source = unique("bench-src");
        let src = s3::client(&env, 0);
        s3::create_bucket(&src, &source, true).await;
        write_source(&src, &source, w).await;
        let limit = if ferry_only {
            None
        } else {
            upload_only(&env, &rclone_conf, dir.path(), w).await
        };
        let (mut ferry, mut rclone) = (Vec::new(), Vec::new());
        // ferry, rclone, rclone, ferry, ferry, rclone...: the servers get slower over a run
        // (memstore, radosgw's logs), and neither tool always goes first.
        for rep in 0..reps {
            let rclone_first = rep % 2 == 1 && !ferry_only;
            for tool in 0..2 {
                if (tool == 0) != rclone_first {
                    eprintln!("bench: {} rep {}: ferry", w.name, rep + 1);
                    ferry.push(run_ferry(&env, &source, w).await);
                } else if !ferry_only {
                    eprintln!("bench: {} rep {}: rclone", w.name, rep + 1);
                    rclone.push(run_rclone(&env, &rclone_conf, &source, w).await);
                }
            }
        }
        s3::remove_bucket(&src, &source).await;
        collect_garbage();
        let f = median(ferry);
        eprintln!(
            "bench: {} ferry {:.2}s ({:.0} objects/s), peak RSS {:.0} MiB",
            w.name,
            f.seconds,
            w.count as f64 / f.seconds,
            f.rss_mib
        );
        if !ferry_only {
            report.push_str(&table(w, f, median(rclone), limit));
        }
    }
    report
}

fn header(reps: usize, quick: bool) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or("?".into(), |kib| format!("{} GiB", kib >> 20));
    let version = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(String::from)
            })
            .unwrap_or_else(|| "?".into())
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {cpus} cores, {memory}; servers on 127.0.0.1: Ceph radosgw ({}) as source and \
         targets, Apache Kafka ({}, three KRaft nodes, replication factor 3) as the broker.  \nferry {} (release build); {}.  \nMode: {}, {reps} \
         repetition(s) per tool, median reported; the tools alternate, each going first in turn.  \nrclone flags: `{}`.\n",
        version("radosgw", "--version"),
        kafka_release(),
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "?".into()),
        version(&rclone(), "version"),
        if quick { "quick (smoke test)" } else { "full" },
        RCLONE_FLAGS.join(" "),
    );
    out
}

fn table(w: &Workload, ferry: Run, rclone: Run, limit: Option<f64>) -> String {
    let mib = (w.count * w.size) as f64 / f64::from(1 << 20);
    let row = |name: &str, r: Run| {
        format!(
            "| {name} | {:.2} | {:.0} | {:.1} | {:.0} | {} | {} |\n",
            r.seconds,
            w.count as f64 / r.seconds,
            mib / r.seconds,
            r.rss_mib,
            r.source_read_ratio
                .map_or("?".into(), |x| format!("{x:.2}")),
            r.requests.describe(),
        )
    };
    let mut out = format!(
        "\n### {} — {} objects × {} KiB, {} target(s)\n\n| tool | seconds | objects/s | MiB/s (per target) | peak RSS MiB | source bytes read / bytes | S3 requests per object (all targets) |\n|---|---|---|---|---|---|---|\n",
        w.name,
        w.count,
        w.size >> 10,
        w.targets
    );
    out.push_str(&row("ferry", ferry));
    out.push_str(&row("rclone copy", rclone));
    let _ = writeln!(
        out,
        "\nferry / rclone: **{:.2}×** objects/s.",
        rclone.seconds / ferry.seconds
    );
    if let Some(seconds) = limit {
        let _ = writeln!(
            out,
            "Upload-only limit (rclone from a local directory into one target): {:.0} objects/s, {:.1} MiB/s; ferry reaches {:.0} % of it.",
            w.count as f64 / seconds,
            mib / seconds,
            100.0 * seconds / ferry.seconds
        );
    }
    out
}

async fn write_source(client: &aws_sdk_s3::Client, bucket: &str, w: &Workload) {
    use futures_util::StreamExt;
    let started = Instant::now();
    futures_util::stream::iter(0..w.count)
        .map(|i| {
            let put = Put {
                key: format!("obj/{i:06}"),
                seed: i as u64,
                size: w.size,
                ..Put::default()
            };
            async move { s3::put(client, bucket, &put).await }
        })
        .buffer_unordered(32)
        .for_each(|_| async {})
        .await;
    eprintln!(
        "bench: source written in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Target buckets for one run: on gateways 1, 2, 1, … (the source is on gateway 0).
async fn targets(env: &TestEnv, n: usize) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for i in 0..n {
        let gateway = 1 + i % 2;
        let bucket = unique(&format!("bench-t{i}"));
        s3::create_bucket(&s3::client(env, gateway), &bucket, true).await;
        out.push((gateway, bucket));
    }
    out
}

async fn check_and_remove(env: &TestEnv, targets: &[(usize, String)], w: &Workload, tool: &str) {
    for (gateway, bucket) in targets {
        let client = s3::client(env, *gateway);
        let held = s3::versions(&client, bucket).await.map(|v| v.len());
        assert_eq!(
            held,
            Ok(w.count),
            "{tool}: target {bucket} holds the wrong number of objects"
        );
        s3::remove_bucket(&client, bucket).await;
    }
    collect_garbage();
}

/// Has radosgw free the space of deleted objects now rather than in an hour: memstore holds
/// everything in RAM, up to its configured size, and the large workload fills it otherwise.
fn collect_garbage() {
    let conf = Path::new(
        &std::env::var("FERRY_TEST_ENV").unwrap_or_else(|_| "/tmp/ferry-test-env".into()),
    )
    .join("ceph.conf");
    let _ = Command::new("timeout")
        .args(["120", "radosgw-admin", "-c"])
        .arg(conf)
        .args(["gc", "process", "--include-all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Deletes the topics whose names start with `prefix`. tansu keeps every message in memory
/// and gets slower with every topic it holds (its CPU for the same run grew 0.5 s → 3.3 s over
/// a bench run's worth of earlier runs): without this, each ferry run would pay for the ones
/// before it, and rclone, which uses no broker, would not.
async fn delete_topics(env: &TestEnv, prefix: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = match rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.kafka)
        .create()
    {
        Ok(a) => a,
        Err(e) => return eprintln!("bench: topics of {prefix} not deleted: {e}"),
    };
    let names: Vec<String> = match admin.inner().fetch_metadata(None, Duration::from_secs(10)) {
        Ok(m) => m
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| n.starts_with(prefix))
            .collect(),
        Err(e) => return eprintln!("bench: topics of {prefix} not deleted: {e}"),
    };
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    match admin.delete_topics(&names, &AdminOptions::new()).await {
        Ok(results) => {
            for failed in results.iter().filter_map(|r| r.as_ref().err()) {
                eprintln!("bench: topic {} not deleted: {}", failed.0, failed.1);
            }
        }
        Err(e) => eprintln!("bench: topics of {prefix} not deleted: {e}"),
    }
}

/// A running ferry, started by [`start_ferry`].
struct Ferry {
    child: std::process::Child,
    admin: u16,
    /// Its topics' prefix, to delete them after the run.
    prefix: String,
    log_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Ferry {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until `count` entries are COMPLETED (from /metrics).
    async fn wait_completed(&self, count: usize, started: Instant) {
        let done = format!("ferry_entries_completed_total {count}");
        loop {
            let page = get(self.admin, "/metrics").await.1;
            if page.lines().any(|l| l == done) {
                return;
            }
            assert!(
                started.elapsed() < RUN_TIMEOUT,
                "ferry timed out:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then deletes the run's topics; returns the log of the whole run.
    async fn stop(mut self, env: &TestEnv) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        if let Ok(keep) = std::env::var("FERRY_BENCH_KEEP_LOG") {
            let _ = std::fs::copy(&self.log_path, keep);
        }
        delete_topics(env, &self.prefix).await;
        self.log()
    }
}

/// Starts ferry on the scan feed of `source` into `targets`, and waits for its admin server.
/// `scan_interval`: how often the feed lists the source again (`None`: ferry's default).
async fn start_ferry(
    env: &TestEnv,
    source: &str,
    targets: &[(usize, String)],
    scan_interval: Option<&str>,
    started: Instant,
) -> Ferry {
    let id = unique("bench");
    let mut config = format!(
        r#"
[queue]
kind = "kafka"
brokers = "{kafka}"
topic_prefix = "{id}."
partitions = 8
replication_factor = 3

[populator]
feeds = ["scan"]
{scan_interval}{replication}
[admin]
listen = "127.0.0.1:0"

[locations.src]
kind = "s3"
endpoint = "{rgw0}"
bucket = "{source}"
access_key_id = "{ak}"
secret_access_key = "{sk}"
"#,
        kafka = env.kafka,
        scan_interval = scan_interval
            .map(|i| format!("scan_interval = \"{i}\"\n"))
            .unwrap_or_default(),
        // FERRY_BENCH_REPLICATION: extra `[replication]` settings, to try some out.
        replication = std::env::var("FERRY_BENCH_REPLICATION")
            .map(|r| format!("\n[replication]\n{r}\n"))
            .unwrap_or_default(),
        rgw0 = env.rgw[0],
        ak = env.access_key,
        sk = env.secret_key,
    );
    let mut names = Vec::new();
    for (i, (gateway, bucket)) in targets.iter().enumerate() {
        let name = format!("t{i}");
        let _ = write!(
            config,
            "\n[locations.{name}]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{bucket}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            env.rgw[*gateway], env.access_key, env.secret_key
        );
        names.push(format!("\"{name}\""));
    }
    let _ = write!(
        config,
        "\n[[rules]]\nname = \"all\"\nsource = \"src\"\ntargets = [{}]\n",
        names.join(", ")
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, config).expect("write config");
    let log_path = dir.path().join("ferry.log");
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("start ferry");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let admin = loop {
        if let Some(p) = port(&log()) {
            break p;
        }
        assert!(
            started.elapsed() < RUN_TIMEOUT,
            "ferry did not start:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ferry {
        child,
        admin,
        prefix: format!("{id}."),
        log_path,
        _dir: dir,
    }
}

async fn run_ferry(env: &TestEnv, source: &str, w: &Workload) -> Run {
    let targets = targets(env, w.targets).await;
    let servers_before = cpu_by_command();
    let marks = log_marks();
    let started = Instant::now();
    // The objects are all there when ferry starts: its first scan finds them, and the run
    // lists the source again only as often as ferry does by default.
    let ferry = start_ferry(env, source, &targets, None, started).await;
    ferry.wait_completed(w.count, started).await;
    let seconds = started.elapsed().as_secs_f64();
    let rss_mib = peak_rss_mib(ferry.child.id());
    eprintln!(
        "bench: ferry run {seconds:.2}s; CPU used: ferry {:.1}s, {}",
        cpu_seconds(ferry.child.id()),
        servers_used(&servers_before)
    );
    let log = ferry.stop(env).await;
    // The shutdown line counts the bytes read from the source and written to the targets.
    let totals = log
        .lines()
        .find(|l| l.contains("\"replication totals\""))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    let source_read_ratio = totals.and_then(|t| {
        let read = t["source_bytes"].as_f64()?;
        Some(read / (w.count * w.size) as f64)
    });
    let requests = count_requests(&marks, source, &targets, w).await;
    check_and_remove(env, &targets, w, "ferry").await;
    Run {
        seconds,
        rss_mib,
        source_read_ratio,
        requests,
    }
}

/// The steady workload: objects written to the source at a fixed rate while ferry runs;
/// the lag of each (source write → COMPLETED on every target), over time.
struct Steady {
    rate: usize,
    seconds: usize,
    size: usize,
    targets: usize,
}

/// Lag samples of a steady run: (seconds since the first write, lag in seconds).
async fn run_steady(env: &TestEnv, s: &Steady) -> (Vec<(f64, f64)>, f64) {
    let source = unique("bench-steady");
    let src = s3::client(env, 0);
    s3::create_bucket(&src, &source, true).await;
    let targets = targets(env, s.targets).await;
    let started = Instant::now();
    let ferry = start_ferry(env, &source, &targets, Some("1s"), started).await;
    // Let the consumers join before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let count = s.rate * s.seconds;
    let first_write_ms = ferry::model::now_ms();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / s.rate as f64));
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..count {
        tick.tick().await;
        let (client, bucket) = (src.clone(), source.clone());
        let size = s.size;
        writes.spawn(async move {
            let put = Put {
                key: format!("steady/{i:06}"),
                seed: i as u64,
                size,
                ..Put::default()
            };
            s3::put(&client, &bucket, &put).await;
        });
    }
    while writes.join_next().await.is_some() {}
    eprintln!(
        "bench: steady: {count} objects written in {:.1}s",
        (ferry::model::now_ms() - first_write_ms) as f64 / 1000.0
    );
    ferry.wait_completed(count, started).await;
    let rss_mib = peak_rss_mib(ferry.child.id());
    let log = ferry.stop(env).await;
    // Each COMPLETED line carries the lag from the source's write time.
    let mut samples: Vec<(f64, f64)> = log
        .lines()
        .filter(|l| l.contains("\"COMPLETED on every target\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|j| {
            let lag_ms = j["latency_ms"].as_f64()?;
            let at = chrono_ms(j["timestamp"].as_str()?)?;
            Some(((at - first_write_ms) as f64 / 1000.0, lag_ms / 1000.0))
        })
        .collect();
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let w = Workload {
        name: "steady",
        count,
        size: s.size,
        targets: s.targets,
    };
    check_and_remove(env, &targets, &w, "ferry (steady)").await;
    s3::remove_bucket(&src, &source).await;
    (samples, rss_mib)
}

/// Milliseconds since the epoch of an RFC 3339 UTC timestamp as ferry logs it
/// (`2026-12-01T10:38:16.784800Z`).
fn chrono_ms(ts: &str) -> Option<i64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + min * 60) as f64 * 1000.0 + sec * 1000.0) as i64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The steady run's table, and its plot as SVG.
fn steady_report(s: &Steady, samples: &[(f64, f64)], rss_mib: f64, svg: Option<&str>) -> String {
    let mut lags: Vec<f64> = samples.iter().map(|(_, l)| *l).collect();
    lags.sort_by(f64::total_cmp);
    let mut out = format!(
        "\n### steady — {} objects/s × {} KiB for {} s, {} targets (ferry only)\n\n\
         Lag: from the object's write time at the source to COMPLETED on every target (ferry's \
         own per-entry latency, logged with each completion). ferry's scan feed lists the source \
         every second; rclone has no continuous mode (run from cron, its lag is the cron interval \
         plus a full listing and copy).\n\n\
         | versions | lag p50 s | lag p99 s | lag max s | peak RSS MiB |\n|---|---|---|---|---|\n\
         | {} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
        s.rate,
        s.size >> 10,
        s.seconds,
        s.targets,
        samples.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0.0),
        rss_mib
    );
    if let Some(path) = svg {
        match std::fs::write(path, lag_svg(samples)) {
            // The path is relative to the repository, as BENCHMARKS.md is.
            Ok(()) => {
                let _ = writeln!(out, "\n![lag over time in the steady run]({path})");
            }
            Err(e) => eprintln!("bench: could not write {path}: {e}"),
        }
    }
    out
}

/// A plot of lag (y) over time (x): one dot per completed version, with labelled axes.
fn lag_svg(samples: &[(f64, f64)]) -> String {
    let (w, h, left, bottom, top, right) = (800.0, 360.0, 60.0, 40.0, 20.0, 20.0);
    let max_t = samples.iter().map(|s| s.0).fold(1.0, f64::max);
    let max_lag = samples.iter().map(|s| s.1).fold(0.5, f64::max) * 1.1;
    let x = |t: f64| left + (w - left - right) * t / max_t;
    let y = |l: f64| h - bottom - (h - bottom - top) * l / max_lag;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">seconds since the first write</text>\n\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">lag, s</text>\n",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        (w + left) / 2.0,
        h - 6.0,
        h / 2.0,
        h / 2.0
    );
    for i in 0..=5 {
        let (t, l) = (max_t * f64::from(i) / 5.0, max_lag * f64::from(i) / 5.0);
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.0}</text>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{l:.2}</text>",
            x(t),
            h - bottom + 16.0,
            left - 6.0,
            y(l) + 4.0
        );
    }
    for (t, l) in samples {
        let _ = writeln!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.2\" fill=\"steelblue\"/>",
            x(*t),
            y(*l)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The rclone binary compared with: `FERRY_BENCH_RCLONE` (scripts/bench.sh builds the current
/// release there), else the one on the PATH.
fn rclone() -> String {
    std::env::var("FERRY_BENCH_RCLONE").unwrap_or_else(|_| "rclone".into())
}

/// The Kafka release of the test environment, from the name of its broker jar.
fn kafka_release() -> String {
    let tools = std::env::var("FERRY_TOOLS").unwrap_or_else(|_| {
        format!(
            "{}/.cache/ferry-tools",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    std::fs::read_dir(Path::new(&tools).join("kafka/libs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .find_map(|name| {
            name.strip_prefix("kafka_2.13-")?
                .strip_suffix(".jar")
                .map(|v| format!("Kafka {v}"))
        })
        .unwrap_or_else(|| "Kafka".into())
}

async fn run_rclone(env: &TestEnv, conf: &Path, source: &str, w: &Workload) -> Run {
    let targets = targets(env, w.targets).await;
    let servers_before = cpu_by_command();
    let marks = log_marks();
    let started = Instant::now();
    // One rclone per target, at once: rclone has no fan-out, so that is how it is run.
    let children: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(i, (_, bucket))| {
            Command::new("/usr/bin/time")
                .env_remove("AWS_CA_BUNDLE")
                .args(["-f", "%U %S %M"])
                .arg(rclone())
                .arg("--config")
                .arg(conf)
                .args([
                    "copy",
                    &format!("src:{source}"),
                    &format!("dst{i}:{bucket}"),
                ])
                .args(RCLONE_FLAGS)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start rclone (is it installed? scripts/bench.sh installs it)")
        })
        .collect();
    let mut rss_mib = 0.0;
    let mut cpu = 0.0;
    for child in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("joined")
            .expect("rclone ran");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "rclone failed: {stderr}");
        // /usr/bin/time's last line: user and system seconds, peak RSS in KiB.
        let usage: Vec<f64> = stderr
            .lines()
            .last()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if let [user, system, kib] = usage[..] {
            cpu += user + system;
            rss_mib += kib / 1024.0;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "bench: rclone run {seconds:.2}s; CPU used: rclone {cpu:.1}s, {}",
        servers_used(&servers_before)
    );
    let requests = count_requests(&marks, source, &targets, w).await;
    check_and_remove(env, &targets, w, "rclone").await;
    Run {
        seconds,
        rss_mib,
        // rclone reads the source once per target.
        source_read_ratio: Some(w.targets as f64),
        requests,
    }
}

/// rclone from local files into one target: the upload-only limit, in seconds.
async fn upload_only(env: &TestEnv, conf: &Path, dir: &Path, w: &Workload) -> Option<f64> {
    let files = dir.join("upload-only");
    std::fs::create_dir_all(files.join("obj")).ok()?;
    for i in 0..w.count {
        std::fs::write(
            files.join(format!("obj/{i:06}")),
            s3::data(i as u64, w.size),
        )
        .ok()?;
    }
    let targets = targets(env, 1).await;
    let started = Instant::now();
    let status = Command::new(rclone())
        .env_remove("AWS_CA_BUNDLE")
        .arg("--config")
        .arg(conf)
        .arg("copy")
        .arg(&files)
        .arg(format!("dst0:{}", targets[0].1))
        .args(RCLONE_FLAGS)
        .stdout(Stdio::null())
        .status()
        .ok()?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&files);
    check_and_remove(env, &targets, w, "upload-only").await;
    status.success().then_some(seconds)
}

/// rclone's configuration. (rclone is run without `AWS_CA_BUNDLE`, which this environment sets
/// and rclone's S3 client cannot load; the servers are plain HTTP on loopback anyway.)
fn rclone_config(env: &TestEnv) -> String {
    // Different remote names for source and targets: with one remote rclone would use
    // server-side CopyObject, which a replicator between sites cannot.
    let remote = |name: &str, endpoint: &str| {
        format!(
            "[{name}]\ntype = s3\nprovider = Ceph\nendpoint = {endpoint}\nregion = us-east-1\n\
             force_path_style = true\naccess_key_id = {}\nsecret_access_key = {}\n\n",
            env.access_key, env.secret_key
        )
    };
    let mut conf = remote("src", &env.rgw[0]);
    for i in 0..3 {
        conf.push_str(&remote(&format!("dst{i}"), &env.rgw[1 + i % 2]));
    }
    conf
}

/// User + system CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which is in parentheses and may hold spaces).
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// CPU seconds used so far by every process on the machine, summed by command name (the
/// servers' share of a run is the difference of two of these).
fn cpu_by_command() -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        *out.entry(name.trim().to_string()).or_insert(0.0) += cpu_seconds(pid);
    }
    out
}

/// The CPU seconds the servers used since `before` (kernel threads summed as one).
fn servers_used(before: &std::collections::HashMap<String, f64>) -> String {
    let mut used: std::collections::BTreeMap<String, f64> = Default::default();
    for (name, t) in cpu_by_command() {
        let delta = t - before.get(&name).copied().unwrap_or(0.0);
        let name = if name.starts_with("kworker") {
            "kernel workers".into()
        } else {
            name
        };
        if ["radosgw", "ceph-osd", "ceph-mon", "java", "kernel workers"].contains(&name.as_str()) {
            *used.entry(name).or_default() += delta;
        }
    }
    used.iter()
        .map(|(name, t)| format!("{name} {t:.1}s"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// VmHWM of a running process: its peak resident memory so far, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

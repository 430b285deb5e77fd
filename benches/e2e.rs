//! End-to-end benchmark: ferry and `rclone copy` side by side on the same objects, servers and
//! machine, in one run (absolute numbers on a shared 2-core machine are noise; ratios measured
//! side by side are not). Run through `scripts/bench.sh`, which starts the test environment.
//!
//! For each workload the source bucket is written once; then, alternating, ferry (start →
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
/// of one object at once, 8 MiB parts) so that neither tool wins on a setting.
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
    "16M",
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
    let scale = |full: usize, small: usize| if quick { small } else { full };
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
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(run_all(&workloads, reps, quick));
    print!("{report}");
    if let Some(path) = out {
        std::fs::write(&path, &report).unwrap_or_else(|e| panic!("write {path}: {e}"));
        eprintln!("bench: wrote {path}");
    }
}

async fn run_all(workloads: &[Workload], reps: usize, quick: bool) -> String {
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
        let limit = upload_only(&env, &rclone_conf, dir.path(), w).await;
        let (mut ferry, mut rclone) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            eprintln!("bench: {} rep {}: ferry", w.name, rep + 1);
            ferry.push(run_ferry(&env, &source, w).await);
            eprintln!("bench: {} rep {}: rclone", w.name, rep + 1);
            rclone.push(run_rclone(&env, &rclone_conf, &source, w).await);
        }
        s3::remove_bucket(&src, &source).await;
        let (f, r) = (median(ferry), median(rclone));
        report.push_str(&table(w, f, r, limit));
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
         targets, tansu as the broker.  \nferry {} (release build); {}.  \nMode: {}, {reps} \
         repetition(s) per tool, median reported; the tools alternate.  \nrclone flags: `{}`.\n",
        version("radosgw", "--version"),
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "?".into()),
        version("rclone", "version"),
        if quick { "quick (smoke test)" } else { "full" },
        RCLONE_FLAGS.join(" "),
    );
    out
}

fn table(w: &Workload, ferry: Run, rclone: Run, limit: Option<f64>) -> String {
    let mib = (w.count * w.size) as f64 / f64::from(1 << 20);
    let row = |name: &str, r: Run| {
        format!(
            "| {name} | {:.2} | {:.0} | {:.1} | {:.0} | {} |\n",
            r.seconds,
            w.count as f64 / r.seconds,
            mib / r.seconds,
            r.rss_mib,
            r.source_read_ratio
                .map_or("?".into(), |x| format!("{x:.2}")),
        )
    };
    let mut out = format!(
        "\n### {} — {} objects × {} KiB, {} target(s)\n\n| tool | seconds | objects/s | MiB/s (per target) | peak RSS MiB | source bytes read / bytes |\n|---|---|---|---|---|---|\n",
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
}

async fn run_ferry(env: &TestEnv, source: &str, w: &Workload) -> Run {
    let targets = targets(env, w.targets).await;
    let id = unique("bench");
    let mut config = format!(
        r#"
[queue]
kind = "kafka"
brokers = "{kafka}"
topic_prefix = "{id}."
partitions = 8
replication_factor = 1

[populator]
feeds = ["scan"]
scan_interval = "2s"

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
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
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
    let done = format!("ferry_entries_completed_total {}", w.count);
    loop {
        let page = get(admin, "/metrics").await.1;
        if page.lines().any(|l| l == done) {
            break;
        }
        assert!(
            started.elapsed() < RUN_TIMEOUT,
            "ferry timed out:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss_mib = peak_rss_mib(child.id());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    // The shutdown line counts the bytes read from the source and written to the targets.
    let totals = log()
        .lines()
        .find(|l| l.contains("\"replication totals\""))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    let source_read_ratio = totals.and_then(|t| {
        let read = t["source_bytes"].as_f64()?;
        Some(read / (w.count * w.size) as f64)
    });
    check_and_remove(env, &targets, w, "ferry").await;
    Run {
        seconds,
        rss_mib,
        source_read_ratio,
    }
}

async fn run_rclone(env: &TestEnv, conf: &Path, source: &str, w: &Workload) -> Run {
    let targets = targets(env, w.targets).await;
    let started = Instant::now();
    // One rclone per target, at once: rclone has no fan-out, so that is how it is run.
    let children: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(i, (_, bucket))| {
            Command::new("/usr/bin/time")
                .env_remove("AWS_CA_BUNDLE")
                .args(["-f", "%M"])
                .arg("rclone")
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
    for child in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("joined")
            .expect("rclone ran");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "rclone failed: {stderr}");
        rss_mib += stderr
            .lines()
            .last()
            .and_then(|kib| kib.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0;
    }
    let seconds = started.elapsed().as_secs_f64();
    check_and_remove(env, &targets, w, "rclone").await;
    Run {
        seconds,
        rss_mib,
        // rclone reads the source once per target.
        source_read_ratio: Some(w.targets as f64),
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
    let status = Command::new("rclone")
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

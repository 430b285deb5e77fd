//! Cost versus history: what ferry costs after N entries of history, as a new user runs it
//! (embedded queue, an fs transient buffer behind the ingest endpoint, one fs target). Rounds of
//! small objects are written through the endpoint by 16 clients; after each round is replicated
//! and garbage-collected (the buffer empty again) and the status records' retention has passed,
//! it prints ferry's RSS, the queue file's size, and the latency of `GET /api/v1/objects/...`
//! and `/api/v1/targets`; at the end it restarts ferry and times the first new copy.
//!
//!     cargo bench --bench history -- [--rounds 5] [--per-round 20000]

mod common;

use common::{admin, admin_port, arg, free_port, rss_mib, start, wait_for};

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

/// The status records' retention in this run (the default is 10 minutes).
const RETENTION_S: u64 = 20;
const WRITERS: usize = 16;

/// Regular files under `dir`, `.ferry` left out.
fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.file_name().is_some_and(|n| n == ".ferry") {
                0
            } else if path.is_dir() {
                count_files(&path)
            } else {
                1
            }
        })
        .sum()
}

/// Median of `n` timed GETs of `path`, in ms.
async fn latency_ms(port: u16, path: &str, n: usize) -> f64 {
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let (status, body) = admin::get(port, path).await;
        assert!(status == 200, "GET {path}: {status} {body}");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times[n / 2]
}

async fn write_round(client: &Client, round: usize, count: usize) {
    let client = Arc::new(client.clone());
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..count).step_by(WRITERS) {
                let key = format!("round{round}/f{i:07}");
                client
                    .put_object()
                    .bucket("inbox")
                    .key(&key)
                    .body(ByteStream::from(vec![b'x'; 1024]))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds = arg("--rounds", 5);
    let per_round = arg("--per-round", 20_000);
    let dir = tempfile::Builder::new()
        .prefix("ferry-history-")
        .tempdir()
        .expect("tempdir");
    let ingest = free_port();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[queue]
kind = "embedded"
path = "{d}/queue"
partitions = 4

[ingest]
listen = "127.0.0.1:{ingest}"
location = "inbox"
access_key_id = "k"
secret_access_key = "s"

[locations.inbox]
kind = "fs"
path = "{d}/buffer"
transient = true

[locations.site-a]
kind = "fs"
path = "{d}/site-a"

[[rules]]
name = "all"
source = "inbox"
targets = ["site-a"]

[populator]
feeds = ["scan"]
scan_interval = "60s"

[status]
completed_retention = "{RETENTION_S}s"

[admin]
listen = "127.0.0.1:0"
"#,
            d = dir.path().display()
        ),
    )
    .expect("config");
    let log = dir.path().join("ferry.log");
    let mut ferry = start(&config, &log);
    let port = admin_port(&log).await;
    let client = Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(format!("http://127.0.0.1:{ingest}"))
            .force_path_style(true)
            .credentials_provider(Credentials::new("k", "s", None, None, "bench"))
            .build(),
    );
    let buffer = dir.path().join("buffer");
    let site = dir.path().join("site-a");
    println!("| history (entries) | write + replicate + GC, s | RSS MiB | queue file MiB | GET /objects ms (retired version) | GET /targets ms |");
    println!("|---|---|---|---|---|---|");
    for round in 0..rounds {
        let started = Instant::now();
        write_round(&client, round, per_round).await;
        let total = (round + 1) * per_round;
        wait_for("the round on the target", Duration::from_secs(3600), || {
            count_files(&site) == total
        })
        .await;
        wait_for("the buffer empty", Duration::from_secs(3600), || {
            count_files(&buffer) == 0
        })
        .await;
        let took = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(RETENTION_S + 5)).await;
        let object = latency_ms(
            port,
            &format!("/api/v1/objects/inbox/round{round}/f0000007"),
            21,
        )
        .await;
        let targets = latency_ms(port, "/api/v1/targets", 21).await;
        let queue = std::fs::metadata(dir.path().join("queue/queue.redb"))
            .map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64);
        println!(
            "| {total} | {took:.1} | {:.0} | {queue:.0} | {object:.1} | {targets:.1} |",
            rss_mib(ferry.id())
        );
    }
    // Restart: start-up to the first new copy.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(ferry.id().to_string())
        .status();
    let _ = ferry.wait();
    let started = Instant::now();
    let log = dir.path().join("ferry-restart.log");
    ferry = start(&config, &log);
    let key = "after-restart/first";
    loop {
        let put = client
            .put_object()
            .bucket("inbox")
            .key(key)
            .body(ByteStream::from(b"first after restart".to_vec()))
            .send()
            .await;
        if put.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the endpoint did not come back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for(
        "the first copy after the restart",
        Duration::from_secs(120),
        || site.join(key).exists(),
    )
    .await;
    println!(
        "\nrestart to the first new copy: {:.2} s; RSS after it {:.0} MiB",
        started.elapsed().as_secs_f64(),
        rss_mib(ferry.id())
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(ferry.id().to_string())
        .status();
    let _ = ferry.wait();
}

//! Cost versus history: what ferry costs after N entries of history, as a new user runs it
//! (embedded queue, an fs transient buffer behind the ingest endpoint, one fs target). Rounds of
//! small objects are written through the endpoint by 16 clients; after each round is replicated
//! and garbage-collected (the buffer empty again) and the status records' retention has passed,
//! it prints ferry's RSS, the queue file's size, and the latency of `GET /api/v1/objects/...`
//! and `/api/v1/targets`; at the end it restarts ferry and times the first new copy.
//!
//!     cargo bench --bench history -- [--rounds 5] [--per-round 20000] [--kafka]
//!
//! `--kafka`: the queue is the test environment's Apache Kafka cluster and the target a Ceph
//! radosgw bucket (`scripts/test-env.sh start`, its `env` file exported); the queue column is
//! then the size of the run's topics on one broker.

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
    let kafka = std::env::args()
        .any(|a| a == "--kafka")
        .then(Kafka::from_env);
    if let Some(k) = &kafka {
        k.create_bucket().await;
    }
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, config_text(dir.path(), ingest, kafka.as_ref())).expect("config");
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
        match &kafka {
            Some(_) => wait_completed(port, total).await,
            None => {
                wait_for("the round on the target", Duration::from_secs(3600), || {
                    count_files(&site) == total
                })
                .await
            }
        }
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
        let queue = match &kafka {
            Some(k) => k.topics_mib(),
            None => std::fs::metadata(dir.path().join("queue/queue.redb"))
                .map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64),
        };
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
    match &kafka {
        Some(k) => k.wait_for_copy(key, started).await,
        None => {
            wait_for(
                "the first copy after the restart",
                Duration::from_secs(120),
                || site.join(key).exists(),
            )
            .await
        }
    }
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
    if let Some(k) = &kafka {
        k.clean_up().await;
    }
}

/// ferry's configuration: the ingest endpoint in front of an fs transient buffer, one target
/// (an fs directory, or with `kafka` a radosgw bucket), the embedded queue or Kafka.
fn config_text(dir: &Path, ingest: u16, kafka: Option<&Kafka>) -> String {
    let (queue, target) = match kafka {
        Some(k) => (
            format!(
                "kind = \"kafka\"\nbrokers = \"{}\"\ntopic_prefix = \"{}.\"\n\
                 partitions = 4\nreplication_factor = 3",
                k.brokers, k.prefix
            ),
            format!(
                "kind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\n\
                 access_key_id = \"{}\"\nsecret_access_key = \"{}\"",
                k.endpoint, k.prefix, k.access_key, k.secret_key
            ),
        ),
        None => (
            format!(
                "kind = \"embedded\"\npath = \"{}/queue\"\npartitions = 4",
                dir.display()
            ),
            format!("kind = \"fs\"\npath = \"{}/site-a\"", dir.display()),
        ),
    };
    format!(
        r#"
[queue]
{queue}

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
{target}

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
        d = dir.display()
    )
}

/// Waits until `total` entries are COMPLETED, from ferry's metrics.
async fn wait_completed(port: u16, total: usize) {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let page = admin::get(port, "/metrics").await.1;
        let done = page
            .lines()
            .find_map(|l| l.strip_prefix("ferry_entries_completed_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if done as usize >= total {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {total} completed entries"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The test environment's Kafka cluster and a radosgw bucket of this run (`--kafka`).
struct Kafka {
    brokers: String,
    endpoint: String,
    access_key: String,
    secret_key: String,
    /// The run's topic prefix and target bucket.
    prefix: String,
    /// A broker's log directory, to size the run's topics.
    log_dir: std::path::PathBuf,
    s3: Client,
}

impl Kafka {
    fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!(
                    "--kafka needs {name}: run scripts/test-env.sh start and export its env file"
                )
            })
        };
        let (endpoint, access_key, secret_key) = (
            var("FERRY_TEST_RGW_1"),
            var("FERRY_TEST_ACCESS_KEY"),
            var("FERRY_TEST_SECRET_KEY"),
        );
        let s3 = Client::from_conf(
            aws_sdk_s3::config::Builder::new()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(&endpoint)
                .force_path_style(true)
                .credentials_provider(Credentials::new(
                    &access_key,
                    &secret_key,
                    None,
                    None,
                    "bench",
                ))
                .build(),
        );
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            brokers: var("FERRY_TEST_KAFKA"),
            log_dir: Path::new(&var("FERRY_TEST_ENV")).join("kafka.0/data"),
            endpoint,
            access_key,
            secret_key,
            prefix: format!("history-{stamp}"),
            s3,
        }
    }

    async fn create_bucket(&self) {
        self.s3
            .create_bucket()
            .bucket(&self.prefix)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {}: {e:?}", self.prefix));
    }

    /// MiB of the run's topics' logs on one broker.
    fn topics_mib(&self) -> f64 {
        let Ok(entries) = std::fs::read_dir(&self.log_dir) else {
            return 0.0;
        };
        let bytes: u64 = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&self.prefix))
            .map(|e| dir_bytes(&e.path()))
            .sum();
        bytes as f64 / (1 << 20) as f64
    }

    async fn wait_for_copy(&self, key: &str, started: Instant) {
        while self
            .s3
            .head_object()
            .bucket(&self.prefix)
            .key(key)
            .send()
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no copy of {key} on the target"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Empties and removes the target bucket (the run's topics stay for inspection until the
    /// test environment stops).
    async fn clean_up(&self) {
        let mut token = None;
        loop {
            let page = self
                .s3
                .list_objects_v2()
                .bucket(&self.prefix)
                .set_continuation_token(token.take())
                .send()
                .await;
            let Ok(page) = page else { break };
            for object in page.contents() {
                if let Some(key) = object.key() {
                    let _ = self
                        .s3
                        .delete_object()
                        .bucket(&self.prefix)
                        .key(key)
                        .send()
                        .await;
                }
            }
            match page.next_continuation_token() {
                Some(next) => token = Some(next.to_string()),
                None => break,
            }
        }
        let _ = self.s3.delete_bucket().bucket(&self.prefix).send().await;
    }
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

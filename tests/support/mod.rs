//! Shared test harness: the local broker and S3 servers (started by `scripts/test-env.sh`),
//! S3 clients, a ferry process to start, kill and restart, and an S3 inspector.
#![allow(dead_code)]

pub mod admin;
pub mod kafka;
pub mod monitor;
pub mod proxy;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Addresses of the test environment, from the variables `scripts/test-env.sh` writes.
#[derive(Debug, Clone)]
pub struct TestEnv {
    pub kafka: String,
    pub rgw: [String; 3],
    pub access_key: String,
    pub secret_key: String,
}

impl TestEnv {
    /// Reads the environment; fails with instructions when it is not there, so a test run
    /// without the servers fails loudly instead of passing vacuously.
    pub fn get() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!(
                    "{name} is not set: integration tests need the local broker and S3 servers; \
                     run them through `bash scripts/test.sh` (or `bash scripts/test-env.sh start` \
                     and source the env file it prints)"
                )
            })
        };
        Self {
            kafka: var("FERRY_TEST_KAFKA"),
            rgw: [
                var("FERRY_TEST_RGW_0"),
                var("FERRY_TEST_RGW_1"),
                var("FERRY_TEST_RGW_2"),
            ],
            access_key: var("FERRY_TEST_ACCESS_KEY"),
            secret_key: var("FERRY_TEST_SECRET_KEY"),
        }
    }
}

/// A name unique to this test run: lowercase, usable in bucket and topic names.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{:x}{:04x}",
        nanos % 0xffff_ffff,
        std::process::id() % 0xffff
    )
}

/// A free port on 127.0.0.1 (bound and released; the race with other processes is harmless).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The object files under the directory `root` (relative paths, sorted), ferry's own `.ferry`
/// directory left out.
pub fn files(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if dir == root && path.file_name().is_some_and(|n| n == ".ferry") {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Where the project's scripts live.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// Stops (`"stop-rgw"`) or starts (`"start-rgw"`) radosgw number `n` of the test environment.
pub fn rgw(action: &str, n: usize) {
    let status = Command::new("bash")
        .arg(scripts_dir().join("test-env.sh"))
        .arg(action)
        .arg(n.to_string())
        .status()
        .expect("run scripts/test-env.sh");
    assert!(status.success(), "scripts/test-env.sh {action} {n} failed");
}

/// A ferry daemon run as a child process, with its log in a temporary directory.
pub struct Ferry {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
    runs: usize,
    /// Set in the daemon's environment, beside the runner's.
    env: Vec<(String, String)>,
}

impl Ferry {
    /// Writes `config` to a file and starts `ferry run` on it.
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, config).expect("write config");
        let mut ferry = Self {
            child: None,
            config: path,
            log: dir.path().join("ferry-0.log"),
            _dir: dir,
            runs: 0,
            env: Vec::new(),
        };
        ferry.spawn();
        ferry
    }

    fn spawn(&mut self) {
        self.log = self
            .config
            .with_file_name(format!("ferry-{}.log", self.runs));
        self.runs += 1;
        let log = std::fs::File::create(&self.log).expect("create log");
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(&self.config)
            // The test runner's FERRY_LOG (e.g. with `librdkafka=debug`) wins.
            .env(
                "FERRY_LOG",
                std::env::var("FERRY_LOG").unwrap_or_else(|_| "info,ferry=debug".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ferry");
        self.child = Some(child);
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts ferry again on the same configuration.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// After a clean stop, starts ferry again on the same configuration with `env` added to
    /// its environment.
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        self.terminate(Duration::from_secs(30));
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn();
    }

    /// SIGTERM, then waits for the exit status (killing after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id of the running ferry.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the running ferry, in bytes (from /proc).
    pub fn rss(&self) -> Option<u64> {
        self.status_kib("VmRSS:").map(|kib| kib * 1024)
    }

    /// The most resident memory the running ferry has had, in bytes (from /proc).
    pub fn peak_rss(&self) -> Option<u64> {
        self.status_kib("VmHWM:").map(|kib| kib * 1024)
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The current run's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every run's log, in order (a killed run's included).
    pub fn logs(&self) -> String {
        (0..self.runs)
            .map(|run| {
                std::fs::read_to_string(self.config.with_file_name(format!("ferry-{run}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The last lines of every run's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for run in 0..self.runs {
            let path = self.config.with_file_name(format!("ferry-{run}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- ferry run {run} (last 40 lines) ---\n"));
            for line in &lines[lines.len().saturating_sub(40)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("{}", self.log_tail());
            let state = self.child.as_mut().map(Child::try_wait);
            eprintln!("--- ferry process: {state:?} (Ok(None): still running) ---");
        }
        // FERRY_TEST_KEEP_LOGS=DIR keeps a failed test's whole logs for a closer look;
        // FERRY_TEST_KEEP_ALL_LOGS=DIR every test's.
        let keep = std::env::var_os("FERRY_TEST_KEEP_ALL_LOGS").or(panicking
            .then(|| std::env::var_os("FERRY_TEST_KEEP_LOGS"))
            .flatten());
        if let Some(dir) = keep {
            let keep = Path::new(&dir).join(unique("ferry-logs"));
            if std::fs::create_dir_all(&keep).is_ok() {
                for run in 0..self.runs {
                    let name = format!("ferry-{run}.log");
                    let _ = std::fs::copy(self.config.with_file_name(&name), keep.join(&name));
                }
                eprintln!("--- logs kept in {} ---", keep.display());
            }
        }
        self.kill();
    }
}

/// The ferry configuration for a test: `source` on gateway 0, targets `a` and `b` on gateways
/// 1 and 2, own topic prefix, fast scans and retries. `extra` is appended.
pub fn config(
    env: &TestEnv,
    id: &str,
    source: &str,
    transient: bool,
    targets: [&str; 2],
    extra: &str,
) -> String {
    format!(
        r#"
shutdown_timeout = "20s"

[queue]
kind = "kafka"
brokers = "{kafka}"
topic_prefix = "{id}."
partitions = 4
replication_factor = 3

[locations.src]
kind = "s3"
endpoint = "{rgw0}"
bucket = "{source}"
access_key_id = "{ak}"
secret_access_key = "{sk}"
transient = {transient}

[locations.site-a]
kind = "s3"
endpoint = "{rgw1}"
bucket = "{a}"
access_key_id = "{ak}"
secret_access_key = "{sk}"

[locations.site-b]
kind = "s3"
endpoint = "{rgw2}"
bucket = "{b}"
access_key_id = "{ak}"
secret_access_key = "{sk}"

[[rules]]
name = "all"
source = "src"
targets = ["site-a", "site-b"]

[populator]
feeds = ["scan"]
scan_interval = "1s"

[admin]
listen = "127.0.0.1:0"

[replication]
multipart_threshold = "8MiB"
part_size = "5MiB"
retry_initial_delay = "200ms"
retry_max_delay = "2s"
{extra}
"#,
        kafka = env.kafka,
        rgw0 = env.rgw[0],
        rgw1 = env.rgw[1],
        rgw2 = env.rgw[2],
        ak = env.access_key,
        sk = env.secret_key,
        a = targets[0],
        b = targets[1],
    )
}

/// Polls `check` every 250 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Which queue a test runs ferry on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// The test broker.
    Kafka,
    /// The embedded queue, in a directory the test owns.
    Embedded,
}

/// A source bucket on gateway 0 and two target buckets on gateways 1 and 2, named for one test.
pub struct Buckets {
    pub id: String,
    pub source: String,
    pub a: String,
    pub b: String,
    pub clients: [aws_sdk_s3::Client; 3],
    /// Where an embedded queue of this test lives (removed with the value).
    pub queue_dir: tempfile::TempDir,
}

impl Buckets {
    /// Names the buckets (unique to this run) without creating them.
    pub fn named(env: &TestEnv, name: &str) -> Self {
        let id = unique(name);
        let clients = [s3::client(env, 0), s3::client(env, 1), s3::client(env, 2)];
        Self {
            source: format!("{id}-src"),
            a: format!("{id}-a"),
            b: format!("{id}-b"),
            id,
            clients,
            queue_dir: tempfile::Builder::new()
                .prefix("ferry-test-queue-")
                .tempdir()
                .expect("a temporary directory for the embedded queue"),
        }
    }

    /// Names and creates all three, versioned.
    pub async fn create(env: &TestEnv, name: &str) -> Self {
        let b = Self::named(env, name);
        for n in 0..3 {
            b.create_one(n).await;
        }
        b
    }

    /// Creates bucket `n` (0 source, 1 target a, 2 target b), versioned.
    pub async fn create_one(&self, n: usize) {
        s3::create_bucket(&self.clients[n], self.bucket(n), true).await;
    }

    /// The name of bucket `n` (0 source, 1 target a, 2 target b).
    pub fn bucket(&self, n: usize) -> &str {
        [&self.source, &self.a, &self.b][n]
    }

    /// Deletes every version and the buckets.
    pub async fn remove(&self) {
        for n in 0..3 {
            s3::remove_bucket(&self.clients[n], self.bucket(n)).await;
        }
    }

    /// The ferry configuration for these buckets; `extra` is appended.
    pub fn config_with(&self, env: &TestEnv, transient: bool, extra: &str) -> String {
        config(
            env,
            &self.id,
            &self.source,
            transient,
            [&self.a, &self.b],
            extra,
        )
    }

    /// The ferry configuration for these buckets.
    pub fn config(&self, env: &TestEnv, transient: bool) -> String {
        config(
            env,
            &self.id,
            &self.source,
            transient,
            [&self.a, &self.b],
            "",
        )
    }

    /// The ferry configuration for these buckets, on `queue`.
    pub fn config_on(&self, env: &TestEnv, transient: bool, queue: Queue) -> String {
        let config = self.config(env, transient);
        match queue {
            Queue::Kafka => config,
            Queue::Embedded => config
                .replace(
                    &format!("kind = \"kafka\"\nbrokers = \"{}\"", env.kafka),
                    &format!(
                        "kind = \"embedded\"\npath = \"{}\"",
                        self.queue_dir.path().display()
                    ),
                )
                .replace("replication_factor = 3\n", ""),
        }
    }

    /// (object versions, delete markers) in bucket `n`.
    pub async fn count(&self, n: usize) -> (usize, usize) {
        let v = s3::versions(&self.clients[n], self.bucket(n))
            .await
            .unwrap_or_default();
        (
            v.iter().filter(|v| !v.delete_marker).count(),
            v.iter().filter(|v| v.delete_marker).count(),
        )
    }

    /// The queue settings ferry uses for these buckets' test (to publish or read its topics).
    pub fn queue(&self, env: &TestEnv) -> ferry::config::QueueConfig {
        ferry::config::QueueConfig {
            kind: ferry::config::QueueKind::Kafka,
            brokers: env.kafka.clone(),
            topic_prefix: format!("{}.", self.id),
            partitions: 4,
            replication_factor: 3,
            group_prefix: format!("{}.", self.id),
        }
    }

    /// What target `n` (1 or 2) holds: the source versions it has a copy of, and how many
    /// copies it holds beyond one per source version (duplicates).
    pub async fn held(&self, n: usize) -> (std::collections::HashSet<String>, usize) {
        let mut index = s3::TargetIndex::new(self.clients[n].clone(), self.bucket(n));
        let held = index.sources().await.expect("target listing");
        let objects = s3::versions(&self.clients[n], self.bucket(n))
            .await
            .expect("target listing")
            .iter()
            .filter(|v| !v.delete_marker)
            .count();
        let duplicates = objects - held.len();
        (held, duplicates)
    }

    /// Writes `size` bytes made from `seed` to `key` at the source; the version id.
    pub async fn put_source(&self, key: &str, seed: u64, size: usize) -> Option<String> {
        let put = s3::Put {
            key: key.to_string(),
            seed,
            size,
            ..s3::Put::default()
        };
        s3::put(&self.clients[0], &self.source, &put).await
    }

    /// How many object versions each target holds.
    pub async fn target_counts(&self) -> (usize, usize) {
        (self.count(1).await.0, self.count(2).await.0)
    }
}

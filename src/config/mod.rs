//! Typed, validated configuration: loaded from TOML plus `FERRY__…` environment overrides.
//!
//! Loading is two steps: [`load`] reads the file into a [`raw::RawConfig`] (unknown keys are
//! errors), then [`validate::validate`] — a pure function — checks every value and builds the
//! [`Config`] the rest of ferry uses. Nothing is connected to before validation succeeds.

mod describe;
pub mod raw;
mod units;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use describe::describe;
pub use units::{parse_duration, parse_size};

/// Everything ferry needs to run, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub queue: QueueConfig,
    pub stages: StagesConfig,
    /// Named buckets by name, in name order.
    pub locations: BTreeMap<String, LocationConfig>,
    pub rules: Vec<RuleConfig>,
    pub populator: PopulatorConfig,
    pub replication: ReplicationConfig,
    pub gc: GcConfig,
    pub status: StatusConfig,
    /// The S3 endpoint writing into a transient location, if configured.
    pub ingest: Option<IngestConfig>,
    pub admin: AdminConfig,
    /// Bound on the orderly shutdown: in-flight work gets this long to finish.
    pub shutdown_timeout: Duration,
}

/// Where the topics live and how they are named.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub kind: QueueKind,
    /// Kafka bootstrap servers, `host:port[,host:port]` (empty for the embedded queue).
    pub brokers: String,
    /// Prepended to every topic name (`ferry.` gives `ferry.replication`, …).
    pub topic_prefix: String,
    /// Partition count for the topics ferry creates; the unit of parallelism across instances.
    pub partitions: i32,
    /// Replication factor for the topics ferry creates; -1 leaves it to the broker's default.
    pub replication_factor: i32,
    /// Prepended to every consumer group id; instances with the same prefix share the work.
    pub group_prefix: String,
}

/// Which queue implementation carries the topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueKind {
    /// A Kafka cluster (or any Kafka-protocol broker): several instances can share the work.
    Kafka,
    /// A durable log on local disk inside this process: one host, nothing else to run.
    Embedded { path: PathBuf },
}

/// Which stages this process runs (operators may split them across hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagesConfig {
    pub populator: bool,
    pub replication: bool,
    pub status: bool,
    pub gc: bool,
}

/// One named bucket: an S3 bucket, or a local directory used as one.
#[derive(Clone)]
pub struct LocationConfig {
    pub name: String,
    pub kind: LocationKind,
    /// Custom S3 endpoint; `None` means AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// The S3 bucket; for an `fs` location, the location's name (it names the bucket in
    /// entries, logs and the ingest endpoint).
    pub bucket: String,
    /// Path-style addressing (`http://host/bucket/key`), needed by most non-AWS servers.
    pub path_style: bool,
    /// Static keys; `None` means the standard AWS credential chain.
    pub credentials: Option<StaticCredentials>,
    pub checksum_calculation: ChecksumCalculation,
    /// Replicated versions are deleted here once every target holds a verified copy.
    pub transient: bool,
    /// As a target: how many copies to it run at once.
    pub concurrency: usize,
    /// As a target: how failed copies to it are retried.
    pub retry: RetryPolicy,
}

/// What kind of store a location is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocationKind {
    S3,
    /// A directory on local disk.
    Fs {
        path: PathBuf,
        /// An ordinary file (one ferry did not write) is an object once it has not changed for
        /// this long (`stable_after`, default 5 s): one still being written waits.
        stable_after: Duration,
    },
}

/// How transient failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before the entry is FAILED for the target (configuration errors do not count:
    /// they pause the target instead).
    pub max_attempts: u32,
    /// First delay; it doubles, with jitter, up to `max_delay`.
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl fmt::Debug for LocationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocationConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("path_style", &self.path_style)
            .field("credentials", &self.credentials)
            .field("checksum_calculation", &self.checksum_calculation)
            .field("transient", &self.transient)
            .field("concurrency", &self.concurrency)
            .field("retry", &self.retry)
            .finish()
    }
}

/// An access key pair. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticCredentials({}, <secret>)", self.access_key_id)
    }
}

/// When the S3 client computes request checksums (the SDK's `request_checksum_calculation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumCalculation {
    /// Only where the operation requires one: what third-party servers (radosgw, …) accept.
    WhenRequired,
    /// Whenever the operation supports one: the SDK's default for AWS.
    WhenSupported,
}

/// `[[rules]]`: objects of `source` under `prefix` go to every location in `targets`.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    pub name: String,
    pub source: String,
    pub prefix: String,
    pub targets: Vec<String>,
    /// Delete markers are replicated as delete markers.
    pub replicate_deletes: bool,
    /// Permanent deletions of a specific version delete ferry's copy of it on the targets.
    /// Off by default: the copies are the safety net against a mistaken or malicious deletion
    /// at the source, which this would carry to every target.
    pub replicate_version_deletes: bool,
}

/// Where the queue populator learns about changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Periodic listing of each rule's source bucket.
    Scan,
    /// S3 event notification records consumed from a Kafka topic.
    Events,
}

#[derive(Debug, Clone)]
pub struct PopulatorConfig {
    pub feeds: Vec<Feed>,
    pub scan_interval: Duration,
    /// Topic the S3 server sends its event notifications to (not prefixed).
    pub events_topic: String,
    /// Where the scan feed keeps its progress store (a cache of the populator-state topic);
    /// `None`: a temporary file, rebuilt from the topic at every start.
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// Entries being worked on at once by this process (bounds memory and open requests).
    pub max_in_flight: usize,
    /// Copies to one target at once.
    pub target_concurrency: usize,
    /// Objects larger than this are copied with multipart upload.
    pub multipart_threshold: u64,
    /// Part size for multipart copies (grown to stay within 10,000 parts).
    pub part_size: u64,
    /// Parts of one object uploaded at once; peak buffer memory per object copy is about
    /// `(part_concurrency + 1) × part_size`.
    pub part_concurrency: usize,
    /// Bytes all copies together may hold in part buffers; a copy waits for room before it
    /// reads its next part (the process's peak memory is about this plus ~60 MiB).
    pub buffer_memory: u64,
    /// Default retry policy of targets that set none.
    pub retry: RetryPolicy,
    /// Attempts made in place before a failing copy is deferred to the retry topic, freeing
    /// its slot so later entries and the partition's committed offset move on.
    pub defer_after: u32,
}

/// `[admin]`: the HTTP server for health, readiness, metrics and operations.
#[derive(Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token required by mutating routes; required when `listen` is not loopback.
    pub token: Option<String>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

/// `[ingest]`: an S3 endpoint whose writes land in a transient location and are enqueued
/// for replication at once.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub listen: SocketAddr,
    /// The (transient) location objects are written to; its `bucket` is the bucket name
    /// clients use.
    pub location: String,
    /// The key pair clients sign with (SigV4).
    pub credentials: StaticCredentials,
    pub region: String,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client has to send a request's headers, and how long an idle keep-alive
    /// connection stays open.
    pub header_timeout: Duration,
    /// TLS (`tls_cert` and `tls_key`), loaded and checked with the configuration; none
    /// serves plain HTTP.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Bytes of request bodies held in memory at once, over all connections; a body waits
    /// for room before it is read.
    pub body_memory: u64,
    /// Bytes of parts staged in open multipart uploads of an fs buffer at once; UploadPart
    /// answers SlowDown beyond.
    pub max_staged: u64,
}

#[derive(Debug, Clone)]
pub struct GcConfig {
    /// GC tasks checked and executed at once.
    pub concurrency: usize,
    /// How long a task whose check failed for a passing reason (a target unreachable, a
    /// throttled HEAD) waits before it is checked again (`max_attempts` is not used: a task
    /// is retried until it is settled, its partition moves, or ferry stops).
    pub retry: RetryPolicy,
}

/// `[status]`: the status processor.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// A COMPLETED entry's state record is deleted (tombstoned) this long after it completed,
    /// so the state and its changelog hold the entries in flight and the recently completed,
    /// not the whole history; a duplicate result arriving within it changes nothing.
    pub completed_retention: Duration,
}

/// A configuration problem, naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {message}")]
    Read { path: String, message: String },
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Reads `path` (TOML), applies `FERRY__SECTION__KEY` environment overrides, and validates.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let read_error = |message: String| ConfigError::Read {
        path: path.display().to_string(),
        message,
    };
    if !path.is_file() {
        return Err(read_error("no such file".into()));
    }
    let raw: raw::RawConfig = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("FERRY")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("populator.feeds"),
        )
        .build()
        .map_err(|e| read_error(e.to_string()))?
        .try_deserialize()
        .map_err(|e| read_error(e.to_string()))?;
    validate::validate(raw)
}

impl Config {
    /// The locations some rule uses as its source.
    pub fn sources(&self) -> impl Iterator<Item = &LocationConfig> {
        self.locations
            .values()
            .filter(|l| self.rules.iter().any(|r| r.source == l.name))
    }
}

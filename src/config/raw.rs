//! The configuration file exactly as written: serde types that reject unknown keys.
//!
//! Nothing here is interpreted; [`super::validate`] turns a [`RawConfig`] into a typed
//! [`super::Config`] and names the key of every problem it finds.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// How the stages talk to each other.
    pub queue: RawQueue,
    /// Which stages this process runs.
    #[serde(default)]
    pub stages: RawStages,
    /// Named buckets: sources, targets, transient buffers.
    #[serde(default)]
    pub locations: BTreeMap<String, RawLocation>,
    /// What to copy where.
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// Queue populator settings.
    #[serde(default)]
    pub populator: RawPopulator,
    /// Replication processor settings.
    #[serde(default)]
    pub replication: RawReplication,
    /// Garbage collector settings.
    #[serde(default)]
    pub gc: RawGc,
    /// Status processor settings.
    #[serde(default)]
    pub status: RawStatus,
    /// The S3 endpoint that writes into a transient location.
    pub ingest: Option<RawIngest>,
    /// The admin HTTP server.
    #[serde(default)]
    pub admin: RawAdmin,
    /// How long in-flight work may take to finish after SIGTERM.
    pub shutdown_timeout: Option<String>,
}

/// `[queue]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub kind: String,
    /// Directory of the embedded queue (`kind = "embedded"`).
    pub path: Option<String>,
    pub brokers: Option<String>,
    pub topic_prefix: Option<String>,
    pub partitions: Option<i64>,
    pub replication_factor: Option<i64>,
    /// Prefix of the consumer group ids; instances sharing it share the work.
    pub group_prefix: Option<String>,
}

/// `[stages]`: every stage runs unless switched off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStages {
    #[serde(default = "yes")]
    pub populator: bool,
    #[serde(default = "yes")]
    pub replication: bool,
    #[serde(default = "yes")]
    pub status: bool,
    #[serde(default = "yes")]
    pub gc: bool,
}

impl Default for RawStages {
    fn default() -> Self {
        Self {
            populator: true,
            replication: true,
            status: true,
            gc: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// `[locations.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocation {
    pub kind: String,
    /// Directory used as the bucket (`kind = "fs"`).
    pub path: Option<String>,
    /// `kind = "fs"`: how long an ordinary file must be unchanged before it is listed.
    pub stable_after: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub path_style: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub checksum_calculation: Option<String>,
    #[serde(default)]
    pub transient: bool,
    /// As a target: copies to it at once (default `replication.target_concurrency`).
    pub concurrency: Option<i64>,
    /// As a target: attempts per entry before it is FAILED (default `replication.max_attempts`).
    pub max_attempts: Option<i64>,
    pub retry_initial_delay: Option<String>,
    pub retry_max_delay: Option<String>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
}

/// `[ingest]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIngest {
    pub listen: String,
    pub location: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub region: Option<String>,
    pub max_connections: Option<i64>,
    pub header_timeout: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub body_memory: Option<RawSize>,
    pub max_staged: Option<RawSize>,
}

/// `[[rules]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub source: String,
    #[serde(default)]
    pub prefix: String,
    pub targets: Vec<String>,
    pub replicate_deletes: Option<bool>,
    pub replicate_version_deletes: Option<bool>,
}

/// `[populator]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPopulator {
    pub feeds: Option<Vec<String>>,
    pub scan_interval: Option<String>,
    pub events_topic: Option<String>,
    pub state_dir: Option<String>,
}

/// `[replication]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplication {
    pub max_in_flight: Option<i64>,
    pub max_attempts: Option<i64>,
    pub defer_after: Option<i64>,
    pub target_concurrency: Option<i64>,
    pub multipart_threshold: Option<RawSize>,
    pub part_size: Option<RawSize>,
    pub part_concurrency: Option<i64>,
    pub buffer_memory: Option<RawSize>,
    pub retry_initial_delay: Option<String>,
    pub retry_max_delay: Option<String>,
}

/// `[gc]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGc {
    pub concurrency: Option<i64>,
    pub retry_initial_delay: Option<String>,
    pub retry_max_delay: Option<String>,
}

/// `[status]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    /// How long a COMPLETED entry's state record is kept before it is deleted.
    pub completed_retention: Option<String>,
}

/// A byte size written either as a number of bytes or as text such as `"8MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

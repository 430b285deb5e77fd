//! The pure step from [`RawConfig`] to [`Config`]: every check, every default, no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

mod ingest;

use super::raw::{RawConfig, RawLocation, RawSize};
use super::*;
use ingest::ingest;

/// Default part size: large enough that a 5 GiB object is ~640 parts, small enough that
/// `target_concurrency` copies of one part each stay well under 1 GiB of buffers.
const DEFAULT_PART_SIZE: u64 = 8 << 20;
/// Objects up to this size whose source ETag is their MD5 are streamed in one request (the
/// target checks the source's MD5 and keeps its ETag; no buffers, no hashing in ferry). Larger
/// ones go in parts, which resume part by part and upload several parts at once.
const DEFAULT_MULTIPART_THRESHOLD: u64 = 512 << 20;
/// 16 parts of the default size: with the rest of the process (~100 MiB under load: the
/// runtime, librdkafka's queues, HTTP buffers), ferry stays under 256 MiB. (At 160 MiB, eight
/// 256 MiB copies at once peaked at 263 MiB.)
const DEFAULT_BUFFER_MEMORY: u64 = 128 << 20;
/// S3's minimum part size (every part but the last must be at least this big).
const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's maximum part size.
const MAX_PART_SIZE: u64 = 5 << 30;

/// Checks `raw` and builds the typed configuration, or names the first key that is wrong.
pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let queue = queue(&raw)?;
    let replication = replication(&raw)?;
    let locations = raw
        .locations
        .iter()
        .map(|(name, loc)| location(name, loc, &replication).map(|l| (name.clone(), l)))
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let rules = rules(&raw, &locations)?;
    let populator = populator(&raw, &queue)?;
    let gc = GcConfig {
        concurrency: positive("gc.concurrency", raw.gc.concurrency, 16, 4096)?,
        retry: retry_policy(
            "gc.",
            None,
            raw.gc.retry_initial_delay.as_deref(),
            raw.gc.retry_max_delay.as_deref(),
            replication.retry,
        )?,
    };
    let status = StatusConfig {
        completed_retention: duration(
            "status.completed_retention",
            raw.status.completed_retention.as_deref(),
            "10m",
        )?,
    };
    let shutdown_timeout = duration("shutdown_timeout", raw.shutdown_timeout.as_deref(), "30s")?;
    if let QueueKind::Embedded { .. } = queue.kind {
        for (stage, on) in [
            ("populator", raw.stages.populator),
            ("replication", raw.stages.replication),
            ("status", raw.stages.status),
            ("gc", raw.stages.gc),
        ] {
            if !on {
                return Err(ConfigError::invalid(
                    format!("stages.{stage}"),
                    "the embedded queue belongs to one process, so that process runs every stage; \
                     split stages across hosts with queue.kind = \"kafka\"",
                ));
            }
        }
        if populator.feeds.contains(&Feed::Events) {
            return Err(ConfigError::invalid(
                "populator.feeds",
                "the \"events\" feed reads S3 notifications from a Kafka topic; with the embedded \
                 queue use \"scan\" or the [ingest] endpoint",
            ));
        }
    }
    let admin = admin(&raw)?;
    let ingest = match &raw.ingest {
        Some(ingest) => Some(self::ingest(ingest, &locations)?),
        None => None,
    };
    Ok(Config {
        queue,
        stages: StagesConfig {
            populator: raw.stages.populator,
            replication: raw.stages.replication,
            status: raw.stages.status,
            gc: raw.stages.gc,
        },
        locations,
        rules,
        populator,
        replication,
        gc,
        status,
        ingest,
        admin,
        shutdown_timeout,
    })
}

/// `[admin]`: where it listens; a token is required off loopback.
fn admin(raw: &RawConfig) -> Result<AdminConfig, ConfigError> {
    let text = raw.admin.listen.as_deref().unwrap_or("127.0.0.1:9410");
    let listen: std::net::SocketAddr = text.parse().map_err(|_| {
        ConfigError::invalid(
            "admin.listen",
            format!("{text:?} is not an address:port (e.g. \"127.0.0.1:9410\")"),
        )
    })?;
    let token = raw.admin.token.clone().filter(|t| !t.is_empty());
    if !listen.ip().is_loopback() && token.is_none() {
        return Err(ConfigError::invalid(
            "admin.token",
            format!(
                "required when admin.listen ({listen}) is reachable from other hosts; set it \
                 (e.g. through FERRY__ADMIN__TOKEN) or listen on 127.0.0.1"
            ),
        ));
    }
    Ok(AdminConfig { listen, token })
}

fn queue(raw: &RawConfig) -> Result<QueueConfig, ConfigError> {
    let kind = match raw.queue.kind.as_str() {
        "kafka" => {
            only_for("queue.path", raw.queue.path.is_some(), "embedded")?;
            QueueKind::Kafka
        }
        "embedded" => {
            only_for("queue.brokers", raw.queue.brokers.is_some(), "kafka")?;
            only_for(
                "queue.replication_factor",
                raw.queue.replication_factor.is_some(),
                "kafka",
            )?;
            QueueKind::Embedded {
                path: directory("queue.path", raw.queue.path.as_deref())?,
            }
        }
        other => {
            return Err(ConfigError::invalid(
                "queue.kind",
                format!("unknown queue kind {other:?} (supported: \"kafka\", \"embedded\")"),
            ))
        }
    };
    let brokers = raw.queue.brokers.clone().unwrap_or_default();
    if kind == QueueKind::Kafka && brokers.trim().is_empty() {
        return Err(ConfigError::invalid(
            "queue.brokers",
            "required for kind = \"kafka\" (e.g. \"127.0.0.1:9092\")",
        ));
    }
    let topic_prefix = raw
        .queue
        .topic_prefix
        .clone()
        .unwrap_or_else(|| "ferry.".into());
    check_topic_chars("queue.topic_prefix", &topic_prefix)?;
    let group_prefix = raw
        .queue
        .group_prefix
        .clone()
        .unwrap_or_else(|| topic_prefix.clone());
    let partitions = positive("queue.partitions", raw.queue.partitions, 8, 10_000)?;
    let replication_factor = match raw.queue.replication_factor {
        None => -1,
        Some(n) if n == -1 || (1..=16).contains(&n) => n as i32,
        Some(n) => {
            return Err(ConfigError::invalid(
                "queue.replication_factor",
                format!("{n} is out of range (1 to 16, or -1 for the broker's default)"),
            ))
        }
    };
    Ok(QueueConfig {
        kind,
        replication_factor,
        brokers,
        topic_prefix,
        partitions: partitions as i32,
        group_prefix,
    })
}

fn check_topic_chars(key: &str, text: &str) -> Result<(), ConfigError> {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!(
                "{text:?}: Kafka topic names allow only ASCII letters, digits, '.', '_' and '-'"
            ),
        ))
    }
}

fn location(
    name: &str,
    raw: &RawLocation,
    defaults: &ReplicationConfig,
) -> Result<LocationConfig, ConfigError> {
    let key = |field: &str| format!("locations.{name}.{field}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        return Err(ConfigError::invalid(
            format!("locations.{name}"),
            "location names use ASCII letters, digits, '-' and '_'",
        ));
    }
    match raw.kind.as_str() {
        "s3" => {
            only_for(&key("path"), raw.path.is_some(), "fs")?;
            only_for(&key("stable_after"), raw.stable_after.is_some(), "fs")?;
        }
        "fs" => return fs_location(name, raw, defaults),
        other => {
            return Err(ConfigError::invalid(
                key("kind"),
                format!("unknown location kind {other:?} (supported: \"s3\", \"fs\")"),
            ))
        }
    }
    let bucket = raw.bucket.clone().unwrap_or_default();
    if bucket.is_empty() {
        return Err(ConfigError::invalid(key("bucket"), "required"));
    }
    if let Some(endpoint) = &raw.endpoint {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ConfigError::invalid(
                key("endpoint"),
                format!("{endpoint:?} is not an http:// or https:// URL"),
            ));
        }
    }
    let credentials = match (&raw.access_key_id, &raw.secret_access_key) {
        (Some(id), Some(secret)) => Some(StaticCredentials {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::invalid(
                key("secret_access_key"),
                "missing while access_key_id is set (set both, or neither for the AWS credential chain)",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::invalid(
                key("access_key_id"),
                "missing while secret_access_key is set (set both, or neither for the AWS credential chain)",
            ))
        }
    };
    // Third-party S3 servers commonly reject the SDK's newer default (trailing checksums on
    // streamed uploads), so a custom endpoint defaults to the conservative setting.
    let checksum_calculation = match raw.checksum_calculation.as_deref() {
        Some("when_required") => ChecksumCalculation::WhenRequired,
        Some("when_supported") => ChecksumCalculation::WhenSupported,
        None if raw.endpoint.is_some() => ChecksumCalculation::WhenRequired,
        None => ChecksumCalculation::WhenSupported,
        Some(other) => {
            return Err(ConfigError::invalid(
                key("checksum_calculation"),
                format!("{other:?} (expected \"when_required\" or \"when_supported\")"),
            ))
        }
    };
    Ok(LocationConfig {
        name: name.to_string(),
        kind: LocationKind::S3,
        endpoint: raw.endpoint.clone(),
        region: raw.region.clone().unwrap_or_else(|| "us-east-1".into()),
        bucket,
        path_style: raw.path_style.unwrap_or(raw.endpoint.is_some()),
        credentials,
        checksum_calculation,
        transient: raw.transient,
        concurrency: match raw.concurrency {
            None => defaults.target_concurrency,
            v => positive(&key("concurrency"), v, 0, 10_000)?,
        },
        retry: retry_policy(
            &format!("locations.{name}."),
            raw.max_attempts,
            raw.retry_initial_delay.as_deref(),
            raw.retry_max_delay.as_deref(),
            defaults.retry,
        )?,
    })
}

/// A retry policy from optional overrides of `defaults`; `prefix` is the keys' section
/// (`"replication."` or `"locations.NAME."`).
/// A directory used as a bucket: only the keys that mean something for it are allowed.
fn fs_location(
    name: &str,
    raw: &RawLocation,
    defaults: &ReplicationConfig,
) -> Result<LocationConfig, ConfigError> {
    let key = |field: &str| format!("locations.{name}.{field}");
    for (field, set) in [
        ("endpoint", raw.endpoint.is_some()),
        ("region", raw.region.is_some()),
        ("bucket", raw.bucket.is_some()),
        ("path_style", raw.path_style.is_some()),
        ("access_key_id", raw.access_key_id.is_some()),
        ("secret_access_key", raw.secret_access_key.is_some()),
        ("checksum_calculation", raw.checksum_calculation.is_some()),
    ] {
        only_for(&key(field), set, "s3")?;
    }
    Ok(LocationConfig {
        name: name.to_string(),
        kind: LocationKind::Fs {
            path: directory(&key("path"), raw.path.as_deref())?,
            stable_after: duration(&key("stable_after"), raw.stable_after.as_deref(), "5s")?,
        },
        endpoint: None,
        region: "us-east-1".into(),
        bucket: name.to_string(),
        path_style: true,
        credentials: None,
        checksum_calculation: ChecksumCalculation::WhenRequired,
        transient: raw.transient,
        concurrency: match raw.concurrency {
            None => defaults.target_concurrency,
            v => positive(&key("concurrency"), v, 0, 10_000)?,
        },
        retry: retry_policy(
            &format!("locations.{name}."),
            raw.max_attempts,
            raw.retry_initial_delay.as_deref(),
            raw.retry_max_delay.as_deref(),
            defaults.retry,
        )?,
    })
}

/// A key that only means something for another `kind`.
fn only_for(key: &str, set: bool, kind: &str) -> Result<(), ConfigError> {
    if set {
        Err(ConfigError::invalid(
            key,
            format!("only applies to kind = {kind:?}"),
        ))
    } else {
        Ok(())
    }
}

/// A required directory path (relative paths are relative to ferry's working directory).
fn directory(key: &str, value: Option<&str>) -> Result<PathBuf, ConfigError> {
    match value {
        Some(path) if !path.trim().is_empty() => Ok(PathBuf::from(path)),
        _ => Err(ConfigError::invalid(key, "required (a directory path)")),
    }
}

fn retry_policy(
    prefix: &str,
    max_attempts: Option<i64>,
    initial: Option<&str>,
    max: Option<&str>,
    defaults: RetryPolicy,
) -> Result<RetryPolicy, ConfigError> {
    let key = |field: &str| format!("{prefix}{field}");
    let max_attempts = match max_attempts {
        None => defaults.max_attempts,
        v => positive(&key("max_attempts"), v, 0, 1_000_000)? as u32,
    };
    let optional = |field: &str, value: Option<&str>, default: Duration| match value {
        None => Ok(default),
        Some(v) => parse_duration(v).map_err(|m| ConfigError::invalid(key(field), m)),
    };
    let initial_delay = optional("retry_initial_delay", initial, defaults.initial_delay)?;
    let max_delay = optional("retry_max_delay", max, defaults.max_delay)?;
    if max_delay < initial_delay {
        return Err(ConfigError::invalid(
            key("retry_max_delay"),
            "smaller than retry_initial_delay",
        ));
    }
    Ok(RetryPolicy {
        max_attempts,
        initial_delay,
        max_delay,
    })
}

fn rules(
    raw: &RawConfig,
    locations: &BTreeMap<String, LocationConfig>,
) -> Result<Vec<RuleConfig>, ConfigError> {
    if raw.rules.is_empty() {
        return Err(ConfigError::invalid(
            "rules",
            "at least one [[rules]] entry is required",
        ));
    }
    let mut names = BTreeSet::new();
    let mut rules: Vec<RuleConfig> = Vec::new();
    for (i, rule) in raw.rules.iter().enumerate() {
        let key = |field: &str| format!("rules[{i}].{field} (rule {:?})", rule.name);
        if rule.name.is_empty() {
            return Err(ConfigError::invalid(format!("rules[{i}].name"), "required"));
        }
        if !names.insert(rule.name.as_str()) {
            return Err(ConfigError::invalid(
                key("name"),
                "two rules have this name",
            ));
        }
        let Some(source) = locations.get(&rule.source) else {
            return Err(ConfigError::invalid(
                key("source"),
                format!("no location named {:?}", rule.source),
            ));
        };
        if rule.targets.is_empty() {
            return Err(ConfigError::invalid(
                key("targets"),
                "at least one target is required",
            ));
        }
        let mut seen = BTreeSet::new();
        for target in &rule.targets {
            let Some(location) = locations.get(target) else {
                return Err(ConfigError::invalid(
                    key("targets"),
                    format!("no location named {target:?}"),
                ));
            };
            if target == &rule.source {
                return Err(ConfigError::invalid(
                    key("targets"),
                    format!("{target:?} is the rule's own source"),
                ));
            }
            if location.transient {
                return Err(ConfigError::invalid(
                    key("targets"),
                    format!("{target:?} is transient: its data would be garbage-collected, so it cannot be a target"),
                ));
            }
            if same_bucket(location, source) {
                return Err(ConfigError::invalid(
                    key("targets"),
                    format!(
                        "{target:?} is the same bucket as the source {:?}",
                        rule.source
                    ),
                ));
            }
            if !seen.insert(target) {
                return Err(ConfigError::invalid(
                    key("targets"),
                    format!("{target:?} is listed twice"),
                ));
            }
        }
        // An object matched by two rules would become two entries; with a transient source the
        // first to complete would garbage-collect the copy the second still needs.
        if let Some(other) = rules.iter().find(|r| {
            r.source == rule.source
                && (r.prefix.starts_with(&rule.prefix) || rule.prefix.starts_with(&r.prefix))
        }) {
            return Err(ConfigError::invalid(
                key("prefix"),
                format!(
                    "overlaps rule {:?} on the same source (prefixes {:?} and {:?}); give each object one rule",
                    other.name, other.prefix, rule.prefix
                ),
            ));
        }
        let replicate_version_deletes = rule.replicate_version_deletes.unwrap_or(false);
        if replicate_version_deletes && source.transient {
            return Err(ConfigError::invalid(
                key("replicate_version_deletes"),
                format!(
                    "the source {:?} is transient: ferry itself deletes its versions once replicated, \
                     and those deletions must not reach the targets",
                    rule.source
                ),
            ));
        }
        rules.push(RuleConfig {
            name: rule.name.clone(),
            source: rule.source.clone(),
            prefix: rule.prefix.clone(),
            targets: rule.targets.clone(),
            replicate_deletes: rule.replicate_deletes.unwrap_or(true),
            replicate_version_deletes,
        });
    }
    Ok(rules)
}

fn same_bucket(a: &LocationConfig, b: &LocationConfig) -> bool {
    match (&a.kind, &b.kind) {
        (LocationKind::Fs { path: p, .. }, LocationKind::Fs { path: q, .. }) => p == q,
        (LocationKind::S3, LocationKind::S3) => {
            a.endpoint == b.endpoint && a.bucket == b.bucket && a.region == b.region
        }
        _ => false,
    }
}

fn populator(raw: &RawConfig, queue: &QueueConfig) -> Result<PopulatorConfig, ConfigError> {
    let feeds = match &raw.populator.feeds {
        None => vec![Feed::Scan],
        Some(list) if list.is_empty() => {
            return Err(ConfigError::invalid(
                "populator.feeds",
                "at least one feed is required",
            ))
        }
        Some(list) => list
            .iter()
            .map(|f| match f.as_str() {
                "scan" => Ok(Feed::Scan),
                "events" => Ok(Feed::Events),
                other => Err(ConfigError::invalid(
                    "populator.feeds",
                    format!("unknown feed {other:?} (expected \"scan\" or \"events\")"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let events_topic = raw
        .populator
        .events_topic
        .clone()
        .unwrap_or_else(|| "s3-events".into());
    check_topic_chars("populator.events_topic", &events_topic)?;
    Ok(PopulatorConfig {
        feeds,
        scan_interval: duration(
            "populator.scan_interval",
            raw.populator.scan_interval.as_deref(),
            "10s",
        )?,
        events_topic,
        state_dir: match (&raw.populator.state_dir, &queue.kind) {
            (Some(dir), _) => Some(directory("populator.state_dir", Some(dir))?),
            // The embedded queue's directory is this process's own already.
            (None, QueueKind::Embedded { path }) => Some(path.clone()),
            (None, QueueKind::Kafka) => None,
        },
    })
}

fn replication(raw: &RawConfig) -> Result<ReplicationConfig, ConfigError> {
    let r = &raw.replication;
    let part_size = size(
        "replication.part_size",
        r.part_size.as_ref(),
        DEFAULT_PART_SIZE,
    )?;
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
        return Err(ConfigError::invalid(
            "replication.part_size",
            format!("{part_size} bytes is outside S3's part size limits (5 MiB to 5 GiB)"),
        ));
    }
    let multipart_threshold = size(
        "replication.multipart_threshold",
        r.multipart_threshold.as_ref(),
        DEFAULT_MULTIPART_THRESHOLD,
    )?;
    if multipart_threshold > MAX_PART_SIZE {
        return Err(ConfigError::invalid(
            "replication.multipart_threshold",
            "larger than S3's 5 GiB single-upload limit",
        ));
    }
    let buffer_memory = size(
        "replication.buffer_memory",
        r.buffer_memory.as_ref(),
        DEFAULT_BUFFER_MEMORY,
    )?;
    if buffer_memory < part_size {
        return Err(ConfigError::invalid(
            "replication.buffer_memory",
            format!("{buffer_memory} bytes cannot hold one part of replication.part_size ({part_size} bytes)"),
        ));
    }
    // Ten attempts with delays doubling from 0.5 s to at most 60 s span about five minutes:
    // enough to ride out a restart or a throttling burst, short enough that a broken copy is
    // reported FAILED within the hour.
    let retry = retry_policy(
        "replication.",
        r.max_attempts,
        r.retry_initial_delay.as_deref(),
        r.retry_max_delay.as_deref(),
        RetryPolicy {
            max_attempts: 10,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        },
    )?;
    Ok(ReplicationConfig {
        max_in_flight: positive("replication.max_in_flight", r.max_in_flight, 512, 1_000_000)?,
        target_concurrency: positive(
            "replication.target_concurrency",
            r.target_concurrency,
            16,
            10_000,
        )?,
        multipart_threshold,
        part_size,
        part_concurrency: positive("replication.part_concurrency", r.part_concurrency, 4, 64)?,
        buffer_memory,
        retry,
        defer_after: positive("replication.defer_after", r.defer_after, 3, 1_000_000)? as u32,
    })
}

fn positive(
    key: &str,
    value: Option<i64>,
    default: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v >= 1 && (v as u64) <= max as u64 => Ok(v as usize),
        Some(v) => Err(ConfigError::invalid(
            key,
            format!("{v} is out of range (1 to {max})"),
        )),
    }
}

fn duration(key: &str, value: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
    parse_duration(value.unwrap_or(default)).map_err(|m| ConfigError::invalid(key, m))
}

fn size(key: &str, value: Option<&RawSize>, default: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(RawSize::Bytes(n)) => Ok(*n),
        Some(RawSize::Text(t)) => parse_size(t).map_err(|m| ConfigError::invalid(key, m)),
    }
}

#[cfg(test)]
mod tests;

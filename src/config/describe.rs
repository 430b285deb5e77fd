//! The `check-config` report: what ferry understood, without secrets.

use std::fmt::Write;

use super::{Config, Feed, LocationKind, QueueKind};
use crate::bus::{topic_specs, Topics};

/// A human-readable summary of `config`. Secret keys are never printed.
pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "configuration OK\n");
    queue(&mut out, config);
    stages(&mut out, config);
    locations(&mut out, config);
    rules(&mut out, config);
    work(&mut out, config);
    endpoints(&mut out, config);
    let _ = writeln!(out, "shutdown timeout: {:?}", config.shutdown_timeout);
    out
}

/// The queue and the topics ferry creates on it.
fn queue(out: &mut String, config: &Config) {
    let _ = match &config.queue.kind {
        QueueKind::Kafka => writeln!(
            out,
            "queue: kafka at {} (group prefix {:?})",
            config.queue.brokers, config.queue.group_prefix
        ),
        QueueKind::Embedded { path } => {
            writeln!(out, "queue: embedded, stored in {}", path.display())
        }
    };
    let topics = Topics::new(&config.queue.topic_prefix);
    for spec in topic_specs(&config.queue, &topics) {
        let _ = writeln!(
            out,
            "  topic {} ({} partitions{})",
            spec.name,
            spec.partitions,
            if spec.compacted { ", compacted" } else { "" }
        );
    }
}

/// Which stages this process runs.
fn stages(out: &mut String, config: &Config) {
    let s = config.stages;
    let on = |b: bool| if b { "on" } else { "off" };
    let _ = writeln!(
        out,
        "\nstages: populator {}, replication {}, status {}, gc {}",
        on(s.populator),
        on(s.replication),
        on(s.status),
        on(s.gc)
    );
}

/// Each location: where it is, how ferry signs in (never the secret), whether transient.
fn locations(out: &mut String, config: &Config) {
    let _ = writeln!(out, "\nlocations:");
    for l in config.locations.values() {
        let credentials = match &l.credentials {
            Some(c) => format!("static key {}", c.access_key_id),
            None => "AWS credential chain".into(),
        };
        let transient = if l.transient {
            ", TRANSIENT: replicated versions are deleted here"
        } else {
            ""
        };
        let _ = match &l.kind {
            LocationKind::S3 => writeln!(
                out,
                "  {}: s3 bucket {:?} at {} ({}, {}, checksums {:?}){transient}",
                l.name,
                l.bucket,
                l.endpoint.as_deref().unwrap_or("AWS"),
                l.region,
                credentials,
                l.checksum_calculation,
            ),
            LocationKind::Fs { path, stable_after } => writeln!(
                out,
                "  {}: directory {} (ordinary files once unchanged for {}){transient}",
                l.name,
                path.display(),
                humantime::format_duration(*stable_after)
            ),
        };
    }
}

/// Each rule: source, prefix, targets.
fn rules(out: &mut String, config: &Config) {
    let _ = writeln!(out, "\nrules:");
    for r in &config.rules {
        let _ = writeln!(
            out,
            "  {}: {} prefix {:?} -> {}",
            r.name,
            r.source,
            r.prefix,
            r.targets.join(", ")
        );
    }
}

/// How the populator, the replication processor and the GC work.
fn work(out: &mut String, config: &Config) {
    let feeds: Vec<&str> = config
        .populator
        .feeds
        .iter()
        .map(|f| match f {
            Feed::Scan => "scan",
            Feed::Events => "events",
        })
        .collect();
    let _ = writeln!(
        out,
        "\npopulator: feeds {} (scan every {:?}, progress in {}; events from topic {})",
        feeds.join(" + "),
        config.populator.scan_interval,
        config
            .populator
            .state_dir
            .as_ref()
            .map_or("a temporary file".into(), |d| d.display().to_string()),
        config.populator.events_topic
    );
    let r = &config.replication;
    let _ = writeln!(
        out,
        "replication: {} entries in flight, {} copies per target, multipart above {} bytes in {} byte parts, {} bytes of part buffers, retry {:?}..{:?}",
        r.max_in_flight, r.target_concurrency, r.multipart_threshold, r.part_size, r.buffer_memory, r.retry.initial_delay, r.retry.max_delay
    );
    let _ = writeln!(
        out,
        "gc: {} tasks at once, rechecked after {:?}..{:?}",
        config.gc.concurrency, config.gc.retry.initial_delay, config.gc.retry.max_delay
    );
}

/// The admin server and the ingest endpoint.
fn endpoints(out: &mut String, config: &Config) {
    let _ = writeln!(
        out,
        "admin: http://{} (/healthz, /readyz, /metrics){}",
        config.admin.listen,
        if config.admin.token.is_some() {
            ", token required for changes"
        } else {
            ""
        }
    );
    if let Some(ingest) = &config.ingest {
        let _ =
            writeln!(
            out,
            "ingest: S3 endpoint on {}://{} writing to {} (bucket {:?}), clients sign with key {}",
            if ingest.tls.is_some() { "https" } else { "http" },
            ingest.listen,
            ingest.location,
            config
                .locations
                .get(&ingest.location)
                .map_or("", |l| l.bucket.as_str()),
            ingest.credentials.access_key_id
        );
    }
}

//! Prometheus metrics: one process-wide registry (like tracing's global subscriber), updated
//! where the work happens and rendered in the text exposition format at `/metrics`.
//!
//! Names and labels are a contract with dashboards; the README lists them.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub target: String,
    /// transient, unreachable, not-found, configuration, permanent.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    /// The consumer group (`<group_prefix><stage>`).
    pub group: String,
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: String,
}

/// Every metric ferry exports.
pub struct Metrics {
    registry: Registry,
    /// Versions copied to a target (COMPLETED results, including ones already there).
    pub objects_replicated: Family<TargetLabel, Counter>,
    /// Bytes of those versions.
    pub bytes_replicated: Family<TargetLabel, Counter>,
    /// Copies that ended FAILED for a target, by error kind.
    pub failures: Family<FailureLabels, Counter>,
    /// Attempts that failed transiently and will be retried.
    pub retries: Family<TargetLabel, Counter>,
    /// Entries being replicated right now by this process.
    pub in_flight: Gauge,
    /// Per target: entries of this process's status partitions whose copy to it is not done
    /// (PENDING or PROCESSING).
    pub backlog: Family<TargetLabel, Gauge>,
    /// Messages of a topic not yet committed by a group, over the partitions this process has.
    pub consumer_lag: Family<LagLabels, Gauge>,
    /// Source write time → every target COMPLETED, in seconds: the replication lag (RPO).
    pub latency: Histogram,
    /// Entries COMPLETED on every target.
    pub completed: Counter,
    /// Transient source copies deleted by the garbage collector.
    pub gc_deletions: Counter,
    /// Deletions the garbage collector refused (a copy missing or not verified).
    pub gc_refusals: Counter,
    /// Messages sent to the dead-letter topic, by the stage that could not read them.
    pub dead_letters: Family<StageLabel, Counter>,
    /// Entries enqueued by the populator feeds and the ingest endpoint.
    pub enqueued: Counter,
    /// Scan passes completed over a source, and the LIST requests (pages) they made.
    pub scan_passes: Counter,
    pub scan_list_requests: Counter,
    /// Objects written through the ingest endpoint, and their bytes.
    pub ingested_objects: Counter,
    pub ingested_bytes: Counter,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let m = Self {
            objects_replicated: Family::default(),
            bytes_replicated: Family::default(),
            failures: Family::default(),
            retries: Family::default(),
            in_flight: Gauge::default(),
            backlog: Family::default(),
            consumer_lag: Family::default(),
            // 50 ms to about 1.8 hours.
            latency: Histogram::new(exponential_buckets(0.05, 2.0, 18)),
            completed: Counter::default(),
            gc_deletions: Counter::default(),
            gc_refusals: Counter::default(),
            dead_letters: Family::default(),
            enqueued: Counter::default(),
            scan_passes: Counter::default(),
            scan_list_requests: Counter::default(),
            ingested_objects: Counter::default(),
            ingested_bytes: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "objects_replicated",
            "Versions copied to a target (COMPLETED per target)",
            m.objects_replicated.clone(),
        );
        registry.register(
            "bytes_replicated",
            "Bytes of the versions copied to a target",
            m.bytes_replicated.clone(),
        );
        registry.register(
            "replication_failures",
            "Copies that ended FAILED for a target, by error kind",
            m.failures.clone(),
        );
        registry.register(
            "replication_retries",
            "Copy attempts that failed transiently and are retried",
            m.retries.clone(),
        );
        registry.register(
            "entries_in_flight",
            "Entries being replicated by this process",
            m.in_flight.clone(),
        );
        registry.register(
            "target_backlog",
            "Entries whose copy to a target is not done yet (PENDING or PROCESSING), on this process's status partitions",
            m.backlog.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages not yet committed by a consumer group, over the partitions this process consumes",
            m.consumer_lag.clone(),
        );
        registry.register(
            "replication_latency_seconds",
            "Source write time to COMPLETED on every target (the RPO)",
            m.latency.clone(),
        );
        registry.register(
            "entries_completed",
            "Entries COMPLETED on every target",
            m.completed.clone(),
        );
        registry.register(
            "gc_deletions",
            "Transient source copies deleted once every target held them",
            m.gc_deletions.clone(),
        );
        registry.register(
            "gc_refusals",
            "Transient source deletions refused because a copy was missing or unverified",
            m.gc_refusals.clone(),
        );
        registry.register(
            "dead_letters",
            "Unreadable messages sent to the dead-letter topic",
            m.dead_letters.clone(),
        );
        registry.register(
            "entries_enqueued",
            "Replication entries enqueued by the populator feeds and the ingest endpoint",
            m.enqueued.clone(),
        );
        registry.register(
            "scan_passes",
            "Scan passes over a source completed (listed to the end)",
            m.scan_passes.clone(),
        );
        registry.register(
            "scan_list_requests",
            "LIST requests (pages of up to 1,000 versions) made by the scan feed",
            m.scan_list_requests.clone(),
        );
        registry.register(
            "ingested_objects",
            "Objects written through the ingest endpoint",
            m.ingested_objects.clone(),
        );
        registry.register(
            "ingested_bytes",
            "Bytes written through the ingest endpoint",
            m.ingested_bytes.clone(),
        );
        Self { registry, ..m }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics not rendered");
        }
        out
    }

    pub fn target(&self, target: &str) -> TargetLabel {
        TargetLabel {
            target: target.to_string(),
        }
    }
}

//! ferry: replicates every object version from a source S3 bucket to one or several targets.
//!
//! Four stages connected by topics — on Kafka, or on the embedded queue for a single host
//! ([`bus`]) — with an optional S3 endpoint that writes into a transient location
//! ([`stages::populator::ingest`]):
//!
//! 1. [`stages::populator::QueuePopulator`-like feeds](stages::populator) turn source changes
//!    (bucket scans, S3 event notifications) into entries on `<prefix>replication`, keyed
//!    `bucket/key` so all versions of one object stay in order.
//! 2. [`stages::replication::ReplicationProcessor`] copies each entry's exact source version to
//!    every target, verified, and publishes one result per target on `<prefix>status`.
//! 3. [`stages::status::StatusProcessor`] folds results into each entry's status
//!    (PENDING / PROCESSING / COMPLETED / FAILED); a COMPLETED entry whose source is transient
//!    becomes a task on `<prefix>gc`.
//! 4. [`stages::gc::GarbageCollector`] checks every target copy and only then deletes the
//!    transient source version.
//!
//! Delivery is at least once with harmless duplicates: an offset is committed only after the
//! work for its message (and every earlier one of its partition) is durably done. See
//! `docs/design.md`.

pub mod admin;
pub mod app;
pub mod backoff;
pub mod bus;
pub mod client;
pub mod config;
pub mod control;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod model;
pub mod stages;
pub mod storage;
pub mod telemetry;

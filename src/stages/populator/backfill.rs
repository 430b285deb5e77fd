//! `ferry backfill --rule NAME`: enqueues every existing version of a rule's source once, e.g.
//! when a rule or a target is added, or when the source is fed by events only.
//!
//! Keys are enqueued in order, each key's versions oldest first. Progress — the last key whose
//! versions are all enqueued — is recorded in the populator-state topic under `backfill/RULE`
//! every [`RECORD_EVERY`] and at the end, so an interrupted backfill resumes after that key.
//! A version enqueued twice (the keys after the last record, on resume) is recognised by the
//! replication processor's pre-check and not copied again.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{entry_for, wanted, Observed};
use crate::bus::{Bus, BusError, Topics};
use crate::config::Config;
use crate::model::{self, ReplicationEntry};
use crate::storage::{StorageError, Stores};

/// How often progress is recorded: at most this much work is redone after an interruption.
const RECORD_EVERY: Duration = Duration::from_secs(2);
/// Entries published at once (see the scan feed's batches).
const BATCH: usize = 500;

/// Why a backfill stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("no rule named {0:?} in the configuration")]
    UnknownRule(String),
    #[error("listing the source failed: {0}")]
    List(#[from] StorageError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("the backfill of rule {rule:?} already completed ({enqueued} versions); pass --restart to enqueue everything again")]
    AlreadyDone { rule: String, enqueued: u64 },
}

/// The progress record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    schema: u32,
    /// Every version of this key and of the keys before it is enqueued.
    after_key: Option<String>,
    enqueued: u64,
    done: bool,
}

/// What a backfill did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backfilled {
    /// Versions enqueued by this run.
    pub enqueued: u64,
    /// Versions skipped because an earlier, interrupted run enqueued them.
    pub skipped: u64,
}

/// Runs the backfill of `rule`; `progress` is called with (versions handled, versions listed).
pub async fn backfill(
    config: &Config,
    rule: &str,
    restart: bool,
    mut progress: impl FnMut(u64, u64),
) -> Result<Backfilled, BackfillError> {
    let rule = config
        .rules
        .iter()
        .find(|r| r.name == rule)
        .ok_or_else(|| BackfillError::UnknownRule(rule.to_string()))?;
    let Some(source) = config.locations.get(&rule.source) else {
        return Err(BackfillError::UnknownRule(rule.name.clone()));
    };
    let (bus, topics) = connect(config).await?;
    let publisher = bus.publisher();
    let record_key = format!("backfill/{}", rule.name);

    let mut state = if restart {
        Progress::default()
    } else {
        load(&bus, &topics, &record_key).await?
    };
    if state.done {
        return Err(BackfillError::AlreadyDone {
            rule: rule.name.clone(),
            enqueued: state.enqueued,
        });
    }

    let stores = Stores::connect(config).await;
    let Some(store) = stores.get(&source.name) else {
        return Err(BackfillError::UnknownRule(rule.name.clone()));
    };
    let mut listed = if store.is_versioned().await? {
        store.list_versions(&rule.prefix).await?
    } else {
        store.list_current(&rule.prefix).await?
    };
    super::scan::order_oldest_first(&mut listed);
    let total = listed.len() as u64;
    let resume_after = state.after_key.clone();
    let mut done = Backfilled {
        enqueued: 0,
        skipped: 0,
    };
    let mut last_record = Instant::now();
    let mut batch: Vec<ReplicationEntry> = Vec::new();
    for (i, l) in listed.iter().enumerate() {
        let handled = i as u64 + 1;
        if resume_after.as_ref().is_some_and(|after| l.key <= *after) {
            done.skipped += 1;
            progress(handled, total);
            continue;
        }
        if l.key.starts_with(&rule.prefix) && wanted(rule, l.kind) {
            batch.push(entry_for(rule, source, Observed::from(l)));
        }
        // Sent at key boundaries only, so a recorded key always has every version enqueued.
        let boundary = listed.get(i + 1).is_none_or(|next| next.key != l.key);
        if boundary && batch.len() >= BATCH {
            let sent = batch.len() as u64;
            enqueue(&publisher, &topics, std::mem::take(&mut batch)).await?;
            state.enqueued += sent;
            done.enqueued += sent;
            if last_record.elapsed() >= RECORD_EVERY {
                state.after_key = Some(l.key.clone());
                record(&publisher, &topics, &record_key, &state).await?;
                last_record = Instant::now();
            }
        }
        progress(handled, total);
    }
    let sent = batch.len() as u64;
    enqueue(&publisher, &topics, batch).await?;
    state.enqueued += sent;
    done.enqueued += sent;
    state.after_key = listed.last().map(|l| l.key.clone());
    state.done = true;
    record(&publisher, &topics, &record_key, &state).await?;
    Ok(done)
}

/// Publishes `entries`; fails if the queue refused any.
async fn enqueue(
    publisher: &crate::bus::Publisher,
    topics: &Topics,
    entries: Vec<ReplicationEntry>,
) -> Result<(), BusError> {
    super::enqueue_all(publisher, &topics.replication, &entries)
        .await
        .into_iter()
        .collect()
}

/// Connects to the queue and makes sure ferry's topics exist (a backfill may come first).
async fn connect(config: &Config) -> Result<(Bus, Topics), BusError> {
    let topics = Topics::new(&config.queue.topic_prefix);
    let bus = Bus::connect(&config.queue)?;
    bus.ensure_topics(
        &crate::bus::topic_specs(&config.queue, &topics),
        config.queue.replication_factor,
    )
    .await?;
    Ok((bus, topics))
}

async fn load(bus: &Bus, topics: &Topics, key: &str) -> Result<Progress, BusError> {
    let reader = bus.state_reader()?;
    let mut state = Progress::default();
    for (k, v) in reader.read_partition(&topics.populator_state, 0).await? {
        if k != key.as_bytes() {
            continue;
        }
        state = match v.map(|v| model::decode::<Progress>("backfill progress", &v)) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                tracing::warn!(key, error = %e, "unreadable backfill progress; starting over");
                Progress::default()
            }
            None => Progress::default(),
        };
    }
    Ok(state)
}

async fn record(
    publisher: &crate::bus::Publisher,
    topics: &Topics,
    key: &str,
    state: &Progress,
) -> Result<(), BusError> {
    let state = Progress {
        schema: model::SCHEMA,
        ..state.clone()
    };
    publisher
        .publish(&topics.populator_state, key, Some(&model::encode(&state)))
        .await
        .map(|_| ())
}

/// Publishes a progress record as an interrupted backfill would have left it (for tests).
#[doc(hidden)]
pub async fn record_interrupted(
    config: &Config,
    rule: &str,
    after_key: &str,
) -> Result<(), BusError> {
    let (bus, topics) = connect(config).await?;
    let state = Progress {
        schema: model::SCHEMA,
        after_key: Some(after_key.to_string()),
        enqueued: 0,
        done: false,
    };
    record(
        &bus.publisher(),
        &topics,
        &format!("backfill/{rule}"),
        &state,
    )
    .await
}

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
use crate::storage::{Listed, StorageError, Stores};

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
pub(crate) struct Progress {
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

/// Runs the backfill of `rule`, listing the source a page at a time; `progress` is called
/// with the versions handled so far after each page.
pub async fn backfill(
    config: &Config,
    rule: &str,
    restart: bool,
    mut progress: impl FnMut(u64),
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
    let versioned = store.is_versioned().await?;
    let mut pages = store.pages(&rule.prefix, versioned);
    let resume_after = state.after_key.clone();
    let mut done = Backfilled {
        enqueued: 0,
        skipped: 0,
    };
    let mut last_record = Instant::now();
    let mut batch: Vec<ReplicationEntry> = Vec::new();
    let mut handled = 0u64;
    let mut keys = KeyGroups::default();
    let mut last_key: Option<String> = None;
    loop {
        let page = pages.next().await?;
        let end = page.is_none();
        let group = match page {
            Some(page) => keys.add(page),
            None => keys.finish(),
        };
        for l in &group {
            handled += 1;
            if resume_after.as_ref().is_some_and(|after| l.key <= *after) {
                done.skipped += 1;
                continue;
            }
            if l.key.starts_with(&rule.prefix) && wanted(rule, l.kind) {
                batch.push(entry_for(rule, source, Observed::from(l)));
            }
        }
        if let Some(l) = group.last() {
            last_key = Some(l.key.clone());
        }
        // A group holds whole keys, so a recorded key always has every version enqueued.
        if batch.len() >= BATCH || end {
            let sent = batch.len() as u64;
            enqueue(&publisher, &topics, std::mem::take(&mut batch)).await?;
            state.enqueued += sent;
            done.enqueued += sent;
            if last_record.elapsed() >= RECORD_EVERY && !end {
                state.after_key = last_key.clone().or(state.after_key.take());
                record(&publisher, &topics, &record_key, &state).await?;
                last_record = Instant::now();
            }
        }
        progress(handled);
        if end {
            break;
        }
    }
    state.after_key = last_key.or(state.after_key);
    state.done = true;
    record(&publisher, &topics, &record_key, &state).await?;
    Ok(done)
}

/// Groups a listing's pages into whole keys, each key's versions oldest first: a page's last
/// key is held back until the next page shows whether it has more versions.
#[derive(Default)]
struct KeyGroups {
    held: Vec<Listed>,
}

impl KeyGroups {
    /// Adds a page; returns the versions of the keys it completes.
    fn add(&mut self, page: Vec<Listed>) -> Vec<Listed> {
        self.held.extend(page);
        let Some(last) = self.held.iter().map(|l| l.key.clone()).max() else {
            return Vec::new();
        };
        let (hold, mut done): (Vec<Listed>, Vec<Listed>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|l| l.key == last);
        self.held = hold;
        super::scan::order_oldest_first(&mut done);
        done
    }

    /// The versions still held, at the end of the listing.
    fn finish(&mut self) -> Vec<Listed> {
        let mut rest = std::mem::take(&mut self.held);
        super::scan::order_oldest_first(&mut rest);
        rest
    }
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

/// The last progress record under `key`, read as the topic streams by (it also holds the
/// scan feed's records, one per source version: nothing else is kept).
async fn load(bus: &Bus, topics: &Topics, key: &str) -> Result<Progress, BusError> {
    let reader = bus.state_reader()?;
    let mut last: Option<Option<Vec<u8>>> = None;
    reader
        .replay(&topics.populator_state, 0, 0, |_, k, v| {
            if k == key.as_bytes() {
                last = Some(v.map(<[u8]>::to_vec));
            }
        })
        .await?;
    Ok(
        match last
            .flatten()
            .map(|v| model::decode::<Progress>("backfill progress", &v))
        {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                tracing::warn!(key, error = %e, "unreadable backfill progress; starting over");
                Progress::default()
            }
            None => Progress::default(),
        },
    )
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

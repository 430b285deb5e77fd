//! Reading the status processor's changelog from outside the stage: what the admin API shows
//! (a version's status, a target's backlog) on any instance, whichever one owns the partition.
//!
//! Each call reads every partition of `<p>status-state` to its end and keeps the latest record
//! per entry, so its cost grows with the number of entries the changelog holds.

use std::collections::BTreeMap;

use crate::bus::{Bus, BusError, Topics};
use crate::model::{self, EntryState};

/// The latest state of every entry `keep` selects, by entry id.
pub async fn states(
    bus: &Bus,
    topics: &Topics,
    keep: impl Fn(&EntryState) -> bool,
) -> Result<BTreeMap<String, EntryState>, BusError> {
    let reader = bus.state_reader()?;
    let partitions = bus.partition_count(&topics.status_state).await?;
    let mut latest = BTreeMap::new();
    for partition in 0..partitions {
        for (key, value) in reader
            .read_partition(&topics.status_state, partition)
            .await?
        {
            let id = String::from_utf8_lossy(&key).into_owned();
            let state = value.and_then(|v| model::decode::<EntryState>("entry state", &v).ok());
            match state {
                Some(state) if keep(&state) => {
                    latest.insert(id, state);
                }
                _ => {
                    latest.remove(&id);
                }
            }
        }
    }
    Ok(latest)
}

/// Per target: entries that reached the status processor and are not final there yet
/// (PENDING or PROCESSING, e.g. waiting in the retry topic or behind a pause).
pub fn backlog(states: &BTreeMap<String, EntryState>) -> BTreeMap<String, u64> {
    let mut backlog = BTreeMap::new();
    for state in states.values() {
        for (target, t) in &state.targets {
            *backlog.entry(target.clone()).or_default() += u64::from(!t.status.is_final());
        }
    }
    backlog
}

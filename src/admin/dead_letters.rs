//! Dead letters (`<p>dead-letter`): the messages no stage could read, with where they came from
//! and why. Listed for an operator, and replayed onto the topic they came from once the cause
//! is fixed (a configuration that names the location now, a ferry that reads the newer
//! schema); a replayed message that still cannot be read is dead-lettered again.

use serde_json::{json, Value};

use super::Admin;
use crate::bus::BusError;

/// The dead-letter topic has one partition.
const PARTITION: i32 = 0;

/// One dead letter as the dead-letter topic holds it.
#[derive(Debug, serde::Deserialize)]
struct Record {
    stage: Option<String>,
    origin: String,
    reason: Option<String>,
    key: Option<String>,
    payload: Option<String>,
    at_ms: Option<i64>,
}

/// A page of dead letters from offset `from`, at most `limit`, oldest first, and the offset
/// the next page starts at (none: this page reaches the end).
pub async fn list(
    admin: &Admin,
    from: i64,
    limit: usize,
) -> Result<(Vec<Value>, Option<i64>), BusError> {
    let mut page = Vec::new();
    let mut next = None;
    admin
        .bus
        .state_reader()?
        .replay(
            &admin.topics.dead_letter,
            PARTITION,
            from,
            |offset, _, payload| {
                if page.len() == limit {
                    next.get_or_insert(offset);
                    return;
                }
                page.push(describe(offset, payload));
            },
        )
        .await?;
    Ok((page, next))
}

/// What replaying one dead letter did.
#[derive(Debug, PartialEq, Eq)]
pub enum Replayed {
    /// Published again to `topic`.
    Sent { topic: String },
    /// Left alone, and why.
    Skipped(String),
}

/// Publishes the dead letters at `offsets` (every one, if `None`) again to the topics they came
/// from; answers what became of each, by offset.
pub async fn replay(
    admin: &Admin,
    offsets: Option<&[i64]>,
) -> Result<Vec<(i64, Replayed)>, BusError> {
    let mut wanted: Vec<(i64, Option<Record>)> = Vec::new();
    admin
        .bus
        .state_reader()?
        .replay(
            &admin.topics.dead_letter,
            PARTITION,
            0,
            |offset, _, payload| {
                if offsets.is_none_or(|o| o.contains(&offset)) {
                    let record = payload.and_then(|p| serde_json::from_slice(p).ok());
                    wanted.push((offset, record));
                }
            },
        )
        .await?;
    let mut done = Vec::with_capacity(wanted.len());
    for (offset, record) in wanted {
        let outcome = match record {
            None => Replayed::Skipped("not a dead-letter record ferry wrote".into()),
            Some(record) => send(admin, &record).await?,
        };
        done.push((offset, outcome));
    }
    if let Some(offsets) = offsets {
        for offset in offsets {
            if !done.iter().any(|(o, _)| o == offset) {
                done.push((
                    *offset,
                    Replayed::Skipped("no dead letter at this offset".into()),
                ));
            }
        }
    }
    Ok(done)
}

async fn send(admin: &Admin, record: &Record) -> Result<Replayed, BusError> {
    let topics = &admin.topics;
    let consumed = [
        topics.replication.name(),
        topics.retry.name(),
        topics.status.name(),
        topics.gc.name(),
        admin.config.populator.events_topic.as_str(),
    ];
    let Some(topic) = origin_topic(&record.origin, &consumed) else {
        return Ok(Replayed::Skipped(format!(
            "it came from {:?}, not a topic ferry consumes",
            record.origin
        )));
    };
    let Some(payload) = &record.payload else {
        return Ok(Replayed::Skipped("it has no payload".into()));
    };
    let key = record.key.clone().unwrap_or_default();
    admin
        .publisher
        .publish(&topic, &key, Some(payload.as_bytes()))
        .await?;
    tracing::warn!(origin = %record.origin, topic, "dead letter replayed");
    Ok(Replayed::Sent { topic })
}

/// The topic of an origin `topic/partition@offset`, if it is one of `consumed`.
pub(crate) fn origin_topic(origin: &str, consumed: &[&str]) -> Option<String> {
    let (topic, _) = origin.rsplit_once('@')?;
    let (topic, _) = topic.rsplit_once('/')?;
    consumed.contains(&topic).then(|| topic.to_string())
}

/// A dead letter as the admin API shows it.
pub(crate) fn describe(offset: i64, payload: Option<&[u8]>) -> Value {
    match payload.and_then(|p| serde_json::from_slice::<Record>(p).ok()) {
        Some(r) => json!({
            "offset": offset,
            "stage": r.stage,
            "origin": r.origin,
            "reason": r.reason,
            "key": r.key,
            "payload": r.payload,
            "at_ms": r.at_ms,
        }),
        None => json!({
            "offset": offset,
            "reason": "not a dead-letter record ferry wrote",
            "payload": payload.map(String::from_utf8_lossy),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::origin_topic;

    #[test]
    fn only_topics_ferry_consumes_are_replayed_onto() {
        let consumed = ["p.replication", "p.status"];
        assert_eq!(
            origin_topic("p.replication/3@1200", &consumed).as_deref(),
            Some("p.replication")
        );
        assert_eq!(origin_topic("p.control/0@1", &consumed), None);
        assert_eq!(origin_topic("garbage", &consumed), None);
        assert_eq!(origin_topic("p.status@1", &consumed), None);
    }
}

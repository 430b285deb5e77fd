//! The events feed: S3 event notification records (AWS, MinIO, Ceph RGW) from a Kafka topic.
//!
//! Object creations become object entries; `DeleteMarkerCreated` (and an unversioned
//! `Delete`) become delete-marker entries; deletions of a specific version are not replicated
//! (as in S3 replication). A record is acknowledged once its entries are published.

use std::sync::Arc;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{entry_for, rule_for, wanted, Observed};
use crate::bus::{Publisher, Subscription, Topics};
use crate::config::Config;
use crate::model::{self, EntryKind, ReplicationEntry};
use crate::stages::board::StageStatus;
use crate::stages::{receive, refuse, StageError};
use crate::storage::unquote;

const STAGE: &str = "populator";

/// An S3 event notification message.
#[derive(Debug, Deserialize)]
pub struct EventMessage {
    #[serde(rename = "Records")]
    pub records: Vec<EventRecord>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    pub event_name: String,
    pub event_time: Option<String>,
    pub s3: EventS3,
}

#[derive(Debug, Deserialize)]
pub struct EventS3 {
    pub bucket: EventBucket,
    pub object: EventObject,
}

#[derive(Debug, Deserialize)]
pub struct EventBucket {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventObject {
    /// URL-encoded, with `+` for spaces.
    pub key: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub e_tag: Option<String>,
    #[serde(default)]
    pub version_id: Option<String>,
    #[serde(default)]
    pub sequencer: Option<String>,
}

/// Why an event message cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("not an S3 event notification: {0}")]
    Json(#[from] serde_json::Error),
    #[error("object key {0:?} is not valid URL-encoded UTF-8")]
    Key(String),
}

/// What to do about one event record.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Write(EntryKind),
    Ignore,
}

/// Classifies an event name (`ObjectCreated:Put`, `s3:ObjectRemoved:DeleteMarkerCreated`, …).
pub fn change_of(record: &EventRecord) -> Change {
    let name = record
        .event_name
        .strip_prefix("s3:")
        .unwrap_or(&record.event_name);
    let versioned = record
        .s3
        .object
        .version_id
        .as_deref()
        .is_some_and(|v| !v.is_empty() && v != "null");
    if name.starts_with("ObjectCreated:") {
        Change::Write(EntryKind::Object)
    } else if name == "ObjectRemoved:DeleteMarkerCreated"
        || (name == "ObjectRemoved:Delete" && !versioned)
    {
        Change::Write(EntryKind::DeleteMarker)
    } else if name == "ObjectRemoved:Delete" {
        Change::Write(EntryKind::VersionDelete)
    } else {
        Change::Ignore
    }
}

/// Decodes an event key: `+` is a space, then percent-decoding.
pub fn decode_key(raw: &str) -> Result<String, EventError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| EventError::Key(raw.to_string()))
}

/// Turns one event message into the entries it implies, per `config`'s rules.
pub fn entries_of(
    config: &Config,
    payload: &[u8],
) -> Result<(Vec<ReplicationEntry>, usize), EventError> {
    let message: EventMessage = serde_json::from_slice(payload)?;
    let mut entries = Vec::new();
    let mut ignored = 0;
    for record in &message.records {
        let Change::Write(kind) = change_of(record) else {
            ignored += 1;
            continue;
        };
        let key = decode_key(&record.s3.object.key)?;
        let source = config.sources().find(|l| {
            l.bucket == record.s3.bucket.name && rule_for(config, &l.name, &key).is_some()
        });
        let Some(source) = source else {
            ignored += 1;
            continue;
        };
        let Some(rule) = rule_for(config, &source.name, &key) else {
            ignored += 1;
            continue;
        };
        if !wanted(rule, kind) {
            ignored += 1;
            continue;
        }
        let etag = record.s3.object.e_tag.as_deref().map(unquote);
        let version = record
            .s3
            .object
            .version_id
            .as_deref()
            .filter(|v| !v.is_empty());
        entries.push(entry_for(
            rule,
            source,
            Observed {
                key: &key,
                version_id: version,
                kind,
                size: record.s3.object.size.unwrap_or(0),
                etag: etag.as_deref().filter(|e| !e.is_empty()),
                last_modified_ms: event_millis(record.event_time.as_deref()),
            },
        ));
    }
    Ok((entries, ignored))
}

fn event_millis(time: Option<&str>) -> i64 {
    time.and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or_else(model::now_ms)
}

/// The events feed.
pub struct EventFeed {
    pub config: Arc<Config>,
    pub publisher: Publisher,
    pub topics: Topics,
    pub subscription: Subscription,
    /// Its counters on the stage board.
    pub status: Arc<StageStatus>,
}

impl EventFeed {
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StageError> {
        while let Some(delivery) = receive(&self.subscription, STAGE, &shutdown).await {
            self.status.received();
            let parsed = match delivery.payload.as_deref() {
                Some(p) => entries_of(&self.config, p).map_err(|e| e.to_string()),
                None => Err("empty message".to_string()),
            };
            let (entries, ignored) = match parsed {
                Ok(parsed) => parsed,
                Err(reason) => {
                    refuse(
                        &self.publisher,
                        &self.topics.dead_letter,
                        STAGE,
                        &self.status,
                        delivery,
                        &reason,
                        &shutdown,
                    )
                    .await;
                    continue;
                }
            };
            self.status.started();
            tracing::debug!(
                stage = STAGE,
                entries = entries.len(),
                ignored,
                "event message read"
            );
            let mut all = true;
            for entry in &entries {
                all &= self
                    .topics
                    .replication
                    .publish(&self.publisher, entry, &shutdown)
                    .await;
                if !all {
                    break;
                }
                crate::metrics::metrics().enqueued.inc();
            }
            if all {
                delivery.ack();
            }
            self.status.finished();
        }
        self.subscription
            .commit()
            .await
            .map_err(|source| StageError::Bus {
                stage: STAGE,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, version: Option<&str>) -> EventRecord {
        EventRecord {
            event_name: name.into(),
            event_time: None,
            s3: EventS3 {
                bucket: EventBucket { name: "b".into() },
                object: EventObject {
                    key: "k".into(),
                    size: Some(1),
                    e_tag: None,
                    version_id: version.map(String::from),
                    sequencer: None,
                },
            },
        }
    }

    #[test]
    fn classifies_event_names_from_every_server() {
        assert_eq!(
            change_of(&record("ObjectCreated:Put", Some("v"))),
            Change::Write(EntryKind::Object)
        );
        assert_eq!(
            change_of(&record("s3:ObjectCreated:CompleteMultipartUpload", None)),
            Change::Write(EntryKind::Object)
        );
        assert_eq!(
            change_of(&record("ObjectRemoved:DeleteMarkerCreated", Some("d"))),
            Change::Write(EntryKind::DeleteMarker)
        );
        assert_eq!(
            change_of(&record("s3:ObjectRemoved:Delete", None)),
            Change::Write(EntryKind::DeleteMarker)
        );
        assert_eq!(
            change_of(&record("ObjectRemoved:Delete", Some("v"))),
            Change::Write(EntryKind::VersionDelete),
            "a version delete, replicated only where a rule asks for it"
        );
        assert_eq!(
            change_of(&record("s3:ObjectAccessed:Get", None)),
            Change::Ignore
        );
    }

    #[test]
    fn decodes_keys() {
        assert_eq!(decode_key("a+b%2Bc%25d").ok().as_deref(), Some("a b+c%d"));
        assert_eq!(decode_key("caf%C3%A9").ok().as_deref(), Some("café"));
        assert!(decode_key("%FF").is_err());
    }

    #[test]
    fn event_time() {
        assert_eq!(event_millis(Some("1970-01-01T00:00:01.500Z")), 1500);
    }
}

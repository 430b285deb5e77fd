//! The messages the stages exchange, and the per-entry status state machine.
//!
//! Every message is JSON with a `schema` field, the major version of its format. A reader
//! rejects a major version it does not know instead of guessing (the message goes to the
//! dead-letter topic, nothing is lost). Within a major version a newer ferry may add fields —
//! a *minor* change: older readers ignore them, so a rolling upgrade does not dead-letter the
//! work in flight. A field an older reader must not ignore (one that makes a stage do less,
//! e.g. delete nothing) is a major change: bump [`SCHEMA`].

mod control;
mod entry;
pub mod stamps;
mod status;

pub use control::TargetPause;
pub use entry::{EntryKind, ReplicationEntry};
pub use status::{
    EntryState, GcTask, ReplicationStatus, RetryTask, TargetCopy, TargetResult, TargetState,
};

use std::time::{SystemTime, UNIX_EPOCH};

/// The schema (major) version every message ferry writes carries.
pub const SCHEMA: u32 = 1;

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not valid JSON for {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{what} has schema {found}, this ferry reads schema {SCHEMA} (a message of a newer \
         ferry's incompatible format, or not ferry's)"
    )]
    Schema { what: &'static str, found: u64 },
}

/// Decodes a ferry message of type `T`, checking its schema version first.
pub fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    payload: &[u8],
) -> Result<T, DecodeError> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        schema: Option<u64>,
    }
    let version: Versioned =
        serde_json::from_slice(payload).map_err(|source| DecodeError::Json { what, source })?;
    match version.schema {
        Some(v) if v == u64::from(SCHEMA) => {}
        other => {
            return Err(DecodeError::Schema {
                what,
                found: other.unwrap_or(0),
            })
        }
    }
    serde_json::from_slice(payload).map_err(|source| DecodeError::Json { what, source })
}

/// A message ferry publishes to one of its [`crate::bus::Topic`]s.
pub trait Message: serde::Serialize {
    /// The message key: every version of one object lands on one partition, in order.
    fn message_key(&self) -> String;
}

impl Message for ReplicationEntry {
    fn message_key(&self) -> String {
        ReplicationEntry::message_key(self)
    }
}

impl Message for TargetResult {
    fn message_key(&self) -> String {
        self.entry.message_key()
    }
}

impl Message for RetryTask {
    fn message_key(&self) -> String {
        self.entry.message_key()
    }
}

impl Message for GcTask {
    fn message_key(&self) -> String {
        self.entry.message_key()
    }
}

/// Encodes a ferry message; our own types always serialize.
pub fn encode<T: serde::Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_else(|e| panic!("ferry message failed to serialize: {e}"))
}

/// Milliseconds since the Unix epoch, the timestamp unit of every message.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_schema_and_garbage() {
        assert!(matches!(
            decode::<ReplicationEntry>("entry", br#"{"schema":7}"#),
            Err(DecodeError::Schema { found: 7, .. })
        ));
        assert!(matches!(
            decode::<ReplicationEntry>("entry", b"not json"),
            Err(DecodeError::Json { .. })
        ));
        assert!(matches!(
            decode::<ReplicationEntry>("entry", br#"{"schema":1,"bucket":"b"}"#),
            Err(DecodeError::Json { .. })
        ));
    }

    #[test]
    fn a_newer_minor_version_with_added_fields_is_read() {
        let entry = ReplicationEntry {
            schema: SCHEMA,
            rule: "r".into(),
            source: "src".into(),
            bucket: "b".into(),
            key: "k".into(),
            version_id: Some("v".into()),
            kind: EntryKind::Object,
            size: 1,
            etag: None,
            last_modified_ms: 0,
            targets: vec!["a".into()],
            transient: false,
            enqueued_at_ms: 0,
        };
        let mut json: serde_json::Value = serde_json::from_slice(&encode(&entry)).expect("json");
        json["added_by_a_newer_ferry"] = serde_json::json!({"any": ["shape"]});
        let read: ReplicationEntry =
            decode("entry", json.to_string().as_bytes()).expect("a minor addition is read");
        assert_eq!(read, entry);
        let task = GcTask {
            schema: SCHEMA,
            entry,
            copies: vec![],
        };
        let mut json: serde_json::Value = serde_json::from_slice(&encode(&task)).expect("json");
        json["entry"]["nested_addition"] = serde_json::json!(1);
        assert!(decode::<GcTask>("GC task", json.to_string().as_bytes()).is_ok());
    }
}

//! The messages the stages exchange, and the per-entry status state machine.
//!
//! Every message is JSON with a `schema` field; a reader rejects a schema it does not know
//! instead of guessing (the message goes to the dead-letter topic, nothing is lost).

mod control;
mod entry;
mod status;

pub use control::TargetPause;
pub use entry::{EntryKind, ReplicationEntry};
pub use status::{
    EntryState, GcTask, ReplicationStatus, RetryTask, TargetCopy, TargetResult, TargetState,
};

use std::time::{SystemTime, UNIX_EPOCH};

/// The schema version every message ferry writes carries.
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
    #[error("{what} has schema {found}, this ferry reads schema {SCHEMA}")]
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
}

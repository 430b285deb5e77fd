//! Entry points for the `cargo fuzz` targets in `fuzz/`: each feeds arbitrary input to one of
//! ferry's parsers of untrusted data and ignores the outcome. None may panic, whatever the input.
//!
//! The targets and their seed corpora live in `fuzz/`; `scripts/fuzz.sh` runs each for a fixed
//! time. Not part of ferry's API.

use std::sync::OnceLock;

use crate::admin::dead_letters;
use crate::config::raw::RawConfig;
use crate::config::{validate, Config};
use crate::model::{
    self, EntryState, GcTask, ReplicationEntry, RetryTask, TargetPause, TargetResult,
};
use crate::stages::populator::backfill::Progress;
use crate::stages::populator::events::entries_of;
use crate::stages::populator::progress::Version;
use crate::storage::fs::{keys, meta};

/// Decodes `bytes` as the message of every topic, as its consumer does: replication entries,
/// retry tasks, target results (the status and failed topics), GC tasks, entry states (the
/// status-state changelog), target pauses (control), the populator-state topic's backfill
/// progress values and scan record keys, and dead letters (as the admin API lists them, and
/// the topic a replay would send one back to).
pub fn message(bytes: &[u8]) {
    let listed = dead_letters::describe(0, Some(bytes));
    if let Some(origin) = listed["origin"].as_str() {
        let _ = dead_letters::origin_topic(origin, &["ferry.replication", "ferry.status"]);
    }
    let _ = model::decode::<ReplicationEntry>("replication entry", bytes);
    let _ = model::decode::<RetryTask>("retry task", bytes);
    let _ = model::decode::<TargetResult>("target result", bytes);
    let _ = model::decode::<GcTask>("GC task", bytes);
    let _ = model::decode::<EntryState>("entry state", bytes);
    let _ = model::decode::<TargetPause>("target pause", bytes);
    let _ = model::decode::<Progress>("backfill progress", bytes);
    let _ = Version::from_record_key(bytes);
}

/// Turns `bytes`, as an S3 event notification message, into replication entries with the
/// events feed's parser, under a fixed configuration ([`EVENTS_CONFIG`]).
pub fn s3_event(bytes: &[u8]) {
    let _ = entries_of(events_config(), bytes);
}

/// Checks `text` as an object key of an `fs` location (the path it maps to, or why none).
pub fn key(text: &str) {
    let _ = keys::components(text);
}

/// Parses and validates `text` as a configuration file (see [`parse_config`]).
pub fn config(text: &str) {
    let _ = parse_config(text);
}

/// Reads `bytes` as an `fs` location's sidecar (its metadata JSON file), as the store does,
/// and describes the object it records.
pub fn sidecar(bytes: &[u8]) {
    if let Ok(sidecar) = serde_json::from_slice::<meta::Sidecar>(bytes) {
        let _ = sidecar.head();
        let _ = sidecar.listed("key");
    }
}

/// Parses configuration TOML the way [`crate::config::load`] reads a file, without the
/// `FERRY__…` environment overrides, and validates it.
pub fn parse_config(text: &str) -> Result<Config, String> {
    let raw: RawConfig = ::config::Config::builder()
        .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| e.to_string())?;
    validate::validate(raw).map_err(|e| e.to_string())
}

/// The configuration [`s3_event`] parses under: an events-fed source whose rule takes every
/// key and every kind of change, and another whose rule takes only `logs/` and no deletions.
pub const EVENTS_CONFIG: &str = r#"
[queue]
kind = "kafka"
brokers = "127.0.0.1:9092"

[locations.primary]
kind = "s3"
region = "us-east-1"
bucket = "primary"

[locations.other]
kind = "s3"
region = "us-east-1"
bucket = "other"

[locations.replica]
kind = "s3"
endpoint = "http://127.0.0.1:9000"
region = "us-east-1"
bucket = "replica"
path_style = true

[[rules]]
name = "everything"
source = "primary"
targets = ["replica"]
replicate_deletes = true
replicate_version_deletes = true

[[rules]]
name = "logs"
source = "other"
prefix = "logs/"
targets = ["replica"]
replicate_deletes = false

[populator]
feeds = ["events"]
events_topic = "s3-events"
"#;

/// [`EVENTS_CONFIG`], parsed once.
fn events_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        parse_config(EVENTS_CONFIG)
            .unwrap_or_else(|e| panic!("the fuzzing configuration is invalid: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The seed corpus of `target`, as (file name, content).
    fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|f| {
                let path = f.expect("corpus entry").path();
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                (name, std::fs::read(&path).expect("corpus file"))
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} is empty", dir.display());
        files
    }

    fn text(name: &str, bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap_or_else(|_| panic!("{name} is not UTF-8"))
    }

    #[test]
    fn every_seed_message_is_a_message_of_its_topic() {
        for (name, bytes) in corpus("message") {
            message(&bytes);
            let topic = name.split('-').next().unwrap_or_default();
            let read = match topic {
                "replication" => model::decode::<ReplicationEntry>("", &bytes).is_ok(),
                "retry" => model::decode::<RetryTask>("", &bytes).is_ok(),
                "status" | "failed" => model::decode::<TargetResult>("", &bytes).is_ok(),
                "gc" => model::decode::<GcTask>("", &bytes).is_ok(),
                "state" => model::decode::<EntryState>("", &bytes).is_ok(),
                "control" => model::decode::<TargetPause>("", &bytes).is_ok(),
                "backfill" => model::decode::<Progress>("", &bytes).is_ok(),
                "scankey" => Version::from_record_key(&bytes).is_some(),
                "dead" => dead_letters::describe(0, Some(&bytes))["origin"].is_string(),
                _ => panic!("{name}: name it after its topic"),
            };
            assert!(read, "{name} does not decode");
        }
    }

    #[test]
    fn seed_events_yield_entries() {
        let mut entries = 0;
        for (_, bytes) in corpus("s3_event") {
            s3_event(&bytes);
            if let Ok((found, _)) = entries_of(events_config(), &bytes) {
                entries += found.len();
            }
        }
        assert!(entries >= 3, "the seed events make {entries} entries");
    }

    #[test]
    fn seed_keys_and_sidecars_parse_and_seed_configs_validate() {
        for (name, bytes) in corpus("key") {
            key(&text(&name, &bytes));
        }
        for (name, bytes) in corpus("config") {
            let text = text(&name, &bytes);
            assert!(
                parse_config(&text).is_ok(),
                "{name}: {:?}",
                parse_config(&text).err()
            );
        }
        for (name, bytes) in corpus("sidecar") {
            assert!(
                serde_json::from_slice::<meta::Sidecar>(&bytes).is_ok(),
                "{name} is not a sidecar"
            );
        }
    }
}

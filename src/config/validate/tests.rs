//! Unit tests of validation: defaults, inherited policies and the key each error names.

use std::time::Duration;

use super::validate;
use crate::config::raw::RawConfig;
use crate::config::{Config, ConfigError};

const BASE: &str = r#"
[queue]
kind = "embedded"
path = "/tmp/ferry-validate-test/queue"

[locations.inbox]
kind = "fs"
path = "/tmp/ferry-validate-test/inbox"
transient = true

[locations.site]
kind = "fs"
path = "/tmp/ferry-validate-test/site"

[[rules]]
name = "all"
source = "inbox"
targets = ["site"]
"#;

fn parse(extra: &str) -> Result<Config, ConfigError> {
    let text = format!("{BASE}\n{extra}");
    let raw: RawConfig = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .expect("the test TOML deserializes");
    validate(raw)
}

fn invalid_key(extra: &str) -> String {
    match parse(extra) {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an invalid key, got {other:?}"),
    }
}

#[test]
fn gc_retry_defaults_to_the_replication_policy() {
    let config = parse("[replication]\nretry_initial_delay = \"2s\"\nretry_max_delay = \"30s\"")
        .expect("valid");
    assert_eq!(config.gc.retry.initial_delay, Duration::from_secs(2));
    assert_eq!(config.gc.retry.max_delay, Duration::from_secs(30));
}

#[test]
fn gc_retry_can_be_set_on_its_own() {
    let config =
        parse("[gc]\nretry_initial_delay = \"100ms\"\nretry_max_delay = \"5s\"").expect("valid");
    assert_eq!(config.gc.retry.initial_delay, Duration::from_millis(100));
    assert_eq!(config.gc.retry.max_delay, Duration::from_secs(5));
    assert_eq!(
        config.replication.retry.initial_delay,
        Duration::from_millis(500),
        "the replication policy keeps its default"
    );
}

#[test]
fn gc_retry_max_below_initial_names_the_gc_key() {
    let key = invalid_key("[gc]\nretry_initial_delay = \"10s\"\nretry_max_delay = \"1s\"");
    assert_eq!(key, "gc.retry_max_delay");
}

#[test]
fn a_target_inherits_the_replication_retry_policy() {
    let config = parse("[replication]\nmax_attempts = 4").expect("valid");
    let site = &config.locations["site"];
    assert_eq!(site.retry.max_attempts, 4);
}

#[test]
fn a_rule_naming_an_unknown_target_is_refused_by_its_key() {
    let text = BASE.replace("targets = [\"site\"]", "targets = [\"nowhere\"]");
    let raw: RawConfig = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .expect("deserializes");
    match validate(raw) {
        Err(ConfigError::Invalid { key, message }) => {
            assert!(key.starts_with("rules[0].targets"), "{key}");
            assert!(message.contains("nowhere"), "{message}");
        }
        other => panic!("expected the unknown target refused, got {other:?}"),
    }
}

#[test]
fn a_part_size_outside_s3_limits_is_refused() {
    assert_eq!(
        invalid_key("[replication]\npart_size = \"1MiB\""),
        "replication.part_size"
    );
}

#[test]
fn buffer_memory_must_hold_one_part() {
    assert_eq!(
        invalid_key("[replication]\npart_size = \"64MiB\"\nbuffer_memory = \"32MiB\""),
        "replication.buffer_memory"
    );
}

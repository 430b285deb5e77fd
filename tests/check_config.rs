//! `ferry check-config`: every shipped example passes; broken ones fail with exit status 2 and
//! a message naming what is wrong; secrets never appear in the output.

use std::path::Path;
use std::process::{Command, Output};

fn check(config: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, config).expect("write");
    check_file(&path)
}

fn check_file(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["check-config", "--config"])
        .arg(path)
        .env_remove("FERRY_CONFIG")
        .output()
        .expect("run ferry")
}

const VALID: &str = r#"
[queue]
kind = "kafka"
brokers = "127.0.0.1:9092"

[locations.primary]
kind = "s3"
endpoint = "http://127.0.0.1:7480"
bucket = "inbox"
access_key_id = "AKIDEXAMPLE"
secret_access_key = "very-secret-value"
transient = true

[locations.site-a]
kind = "s3"
bucket = "a"

[[rules]]
name = "everything"
source = "primary"
targets = ["site-a"]
"#;

fn assert_fails_naming(config: &str, needles: &[&str]) {
    let out = check(config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2, stderr: {stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "error should name {needle:?}: {stderr}"
        );
    }
}

#[test]
fn shipped_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = check_file(&path);
            assert!(
                out.status.success(),
                "{} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "expected the example configs in config/");
}

#[test]
fn valid_config_is_described_without_secrets() {
    let out = check(VALID);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "primary",
        "site-a",
        "everything",
        "ferry.replication",
        "ferry.status",
        "ferry.gc",
        "TRANSIENT",
        "AKIDEXAMPLE",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("very-secret-value"),
        "secret printed:\n{stdout}"
    );
}

#[test]
fn unknown_key_is_named() {
    let config = VALID.replace("transient = true", "transient = true\ntransiant = false");
    assert_fails_naming(&config, &["transiant"]);
    let config = VALID.replace("[queue]", "[queue]\nbrokerz = \"x\"");
    assert_fails_naming(&config, &["brokerz"]);
}

#[test]
fn missing_location_is_named() {
    let config = VALID.replace(
        r#"targets = ["site-a"]"#,
        r#"targets = ["site-a", "site-z"]"#,
    );
    assert_fails_naming(&config, &["rules[0].targets", "site-z"]);
    let config = VALID.replace(r#"source = "primary""#, r#"source = "nowhere""#);
    assert_fails_naming(&config, &["rules[0].source", "nowhere"]);
}

#[test]
fn target_that_is_its_own_source_is_named() {
    let config = VALID.replace(r#"targets = ["site-a"]"#, r#"targets = ["primary"]"#);
    assert_fails_naming(&config, &["rules[0].targets", "primary", "own source"]);
}

#[test]
fn bad_values_are_named() {
    assert_fails_naming(
        &VALID.replace(r#"kind = "kafka""#, r#"kind = "rabbit""#),
        &["queue.kind", "rabbit"],
    );
    assert_fails_naming(
        &format!("{VALID}\n[populator]\nscan_interval = \"soon\"\n"),
        &["populator.scan_interval"],
    );
    assert_fails_naming(
        &format!("{VALID}\n[replication]\npart_size = \"1KiB\"\n"),
        &["replication.part_size"],
    );
    assert_fails_naming(
        &VALID.replace(r#"secret_access_key = "very-secret-value""#, ""),
        &["locations.primary.secret_access_key"],
    );
}

#[test]
fn missing_file_is_exit_2() {
    let out = check_file(Path::new("/nonexistent/ferry.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ferry.toml"));
}

#[test]
fn secrets_can_come_from_the_environment() {
    let config = VALID.replace(r#"secret_access_key = "very-secret-value""#, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, config).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env(
            "FERRY__LOCATIONS__PRIMARY__SECRET_ACCESS_KEY",
            "from-env-secret",
        )
        .output()
        .expect("run ferry");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("from-env-secret"));
}

#[test]
fn unreachable_broker_stops_ferry_with_an_error_naming_it() {
    // Nothing listens on port 1: ferry must say which broker it could not reach and exit
    // non-zero (for the supervisor), not hang or panic.
    let config = VALID.replace("127.0.0.1:9092", "127.0.0.1:1");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, config).expect("write");
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path)
        .output()
        .expect("run ferry");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "names the broker: {stderr}");
    assert!(!stderr.contains("very-secret-value"), "no secret in logs");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(90));
}

#[test]
fn version_deletes_cannot_be_replicated_from_a_transient_source() {
    let config = VALID.replace(
        r#"targets = ["site-a"]"#,
        "targets = [\"site-a\"]\nreplicate_version_deletes = true",
    );
    assert_fails_naming(
        &config,
        &["rules[0].replicate_version_deletes", "transient"],
    );
}

const EMBEDDED: &str = r#"
[queue]
kind = "embedded"
path = "/tmp/ferry-check-config-queue"

[ingest]
listen = "127.0.0.1:9000"
location = "buffer"
access_key_id = "ingest-key"
secret_access_key = "ingest-secret-value"

[locations.buffer]
kind = "fs"
path = "/tmp/ferry-check-config/buffer"
transient = true

[locations.site-a]
kind = "fs"
path = "/tmp/ferry-check-config/site-a"

[[rules]]
name = "everything"
source = "buffer"
targets = ["site-a"]
"#;

#[test]
fn one_host_configuration_is_described_and_its_mistakes_named() {
    let out = check(EMBEDDED);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout.contains("queue: embedded"), "{stdout}");
    assert!(
        stdout.contains("directory /tmp/ferry-check-config/buffer"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ingest: S3 endpoint on http://127.0.0.1:9000"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("ingest-secret-value"),
        "secret printed: {stdout}"
    );

    // A stage switched off: nobody else could run it.
    assert_fails_naming(
        &format!("{EMBEDDED}\n[stages]\ngc = false\n"),
        &["stages.gc", "embedded"],
    );
    // The events feed needs Kafka.
    assert_fails_naming(
        &format!("{EMBEDDED}\n[populator]\nfeeds = [\"events\"]\n"),
        &["populator.feeds"],
    );
    // S3 keys on a directory, a missing path, brokers on the embedded queue.
    assert_fails_naming(
        &EMBEDDED.replace(
            "kind = \"fs\"\npath = \"/tmp/ferry-check-config/site-a\"",
            "kind = \"fs\"\npath = \"/tmp/x\"\nbucket = \"b\"",
        ),
        &["locations.site-a.bucket", "s3"],
    );
    assert_fails_naming(
        &EMBEDDED.replace("path = \"/tmp/ferry-check-config/site-a\"\n", ""),
        &["locations.site-a.path"],
    );
    assert_fails_naming(
        &EMBEDDED.replace(
            "kind = \"embedded\"",
            "kind = \"embedded\"\nbrokers = \"x:1\"",
        ),
        &["queue.brokers"],
    );
    // The ingest endpoint writes only into a transient location, and needs a key.
    assert_fails_naming(
        &EMBEDDED.replace("location = \"buffer\"", "location = \"site-a\""),
        &["ingest.location", "not transient"],
    );
    assert_fails_naming(
        &EMBEDDED.replace("secret_access_key = \"ingest-secret-value\"\n", ""),
        &["ingest.access_key_id"],
    );
    assert_fails_naming(
        &EMBEDDED.replace("127.0.0.1:9000", "localhost"),
        &["ingest.listen"],
    );
    // TLS: a certificate needs its key, and files that are not PEM are named.
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
    let with_tls = |cert: &Path, key: Option<&Path>| {
        let mut lines = format!("[ingest]\ntls_cert = {:?}\n", cert.display().to_string());
        if let Some(key) = key {
            lines.push_str(&format!("tls_key = {:?}\n", key.display().to_string()));
        }
        EMBEDDED.replace("[ingest]\n", &lines)
    };
    let out = check(&with_tls(&tls.join("cert.pem"), Some(&tls.join("key.pem"))));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains("ingest: S3 endpoint on https://127.0.0.1:9000"),
        "{stdout}"
    );
    assert_fails_naming(
        &with_tls(&tls.join("cert.pem"), None),
        &["ingest.tls_cert", "tls_key"],
    );
    assert_fails_naming(
        &with_tls(&tls.join("README.md"), Some(&tls.join("key.pem"))),
        &["ingest.tls_cert", "README.md", "no PEM certificate"],
    );
    assert_fails_naming(
        &with_tls(&tls.join("cert.pem"), Some(&tls.join("missing.pem"))),
        &["ingest.tls_cert", "missing.pem"],
    );
    assert_fails_naming(
        &with_tls(&tls.join("cert.pem"), Some(&tls.join("ca.pem"))),
        &["ingest.tls_cert", "ca.pem", "no PEM private key"],
    );
    // A device is refused at once, never read (found by the config fuzz target: it hung).
    assert_fails_naming(
        &with_tls(Path::new("/dev/zero"), Some(&tls.join("key.pem"))),
        &["ingest.tls_cert", "/dev/zero", "not a regular file"],
    );
}

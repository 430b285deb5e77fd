//! Operating a running ferry (real broker, real S3 servers) through its admin API and the
//! `ferry` command-line client: a version's status, failed entries listed and retried until
//! they complete, a target paused (its backlog grows while the other target keeps completing)
//! and resumed (it drains), and an orderly shutdown on SIGTERM that loses and redoes nothing.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::admin::{cli, cli_ok, get, get_json, port};
use support::proxy::{Fault, FaultProxy};
use support::{wait_until, Buckets, Ferry, TestEnv};

const TIMEOUT: Duration = Duration::from_secs(180);
const TOKEN: &str = "ops-test-token";

async fn put(buckets: &Buckets, key: &str, seed: u64) {
    buckets.put_source(key, seed, 20_000).await;
}

/// The `targets` entry named `name` of a `/api/v1/targets` answer.
fn target<'a>(answer: &'a Value, name: &str) -> &'a Value {
    answer["targets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no target {name} in {answer}"))
}

async fn wait_for_admin(ferry: &Ferry) -> u16 {
    wait_until(Duration::from_secs(60), "the admin server", || async {
        port(&ferry.log()).is_some()
    })
    .await;
    port(&ferry.log()).expect("port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_failed_retry_and_pause_through_the_api_and_the_cli() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "ops").await;
    // site-b is reached through a proxy that corrupts uploads: its copies FAIL (2 attempts).
    let proxy = FaultProxy::start(&env.rgw[2]).await;
    proxy.set(Fault::FlipUploads);
    let cfg = buckets
        .config(&env, true)
        .replace(&env.rgw[2], &proxy.endpoint)
        .replace(
            &format!("bucket = \"{}\"\n", buckets.b),
            &format!("bucket = \"{}\"\nmax_attempts = 2\n", buckets.b),
        )
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"\n",
            &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
        );
    let mut ferry = Ferry::start(&cfg);
    let port = wait_for_admin(&ferry).await;
    let src = buckets.source.clone();

    // --- Failed entries and a version's status.
    put(&buckets, "bad/one", 1).await;
    put(&buckets, "bad/two two", 2).await;
    wait_until(TIMEOUT, "both entries FAILED for site-b", || async {
        get_json(port, "/api/v1/failed").await["entries"]
            .as_array()
            .is_some_and(|e| e.len() == 2)
    })
    .await;
    let status = get_json(port, &format!("/api/v1/objects/{src}/bad/one")).await;
    let version = &status["versions"][0];
    assert_eq!(version["status"], "FAILED", "{status}");
    assert_eq!(
        version["targets"]["site-a"]["status"], "COMPLETED",
        "{status}"
    );
    assert_eq!(version["targets"]["site-b"]["status"], "FAILED", "{status}");
    assert_eq!(version["targets"]["site-b"]["attempts"], 2, "{status}");
    assert!(
        version["targets"]["site-b"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "the last error is shown: {status}"
    );
    let shown = cli_ok(port, &["status", &format!("{src}/bad/one")]).await;
    assert!(
        shown.contains("FAILED") && shown.contains("site-a") && shown.contains("COMPLETED"),
        "{shown}"
    );
    // A key with a space, through the CLI's encoding.
    let shown = cli_ok(port, &["status", &format!("{src}/bad/two two"), "--json"]).await;
    let parsed: Value = serde_json::from_str(&shown).expect("--json prints JSON");
    assert_eq!(parsed["key"], "bad/two two");
    let (code, body) = get(port, &format!("/api/v1/objects/{src}/never-written")).await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("never-written"), "{body}");

    // Pages of one.
    let first = get_json(port, "/api/v1/failed?target=site-b&limit=1").await;
    assert_eq!(
        first["entries"].as_array().map(Vec::len),
        Some(1),
        "{first}"
    );
    let next = first["next"].as_str().expect("a next page").to_string();
    let second = get_json(
        port,
        &format!(
            "/api/v1/failed?limit=1&after={}",
            support::admin::encode(&next)
        ),
    )
    .await;
    assert_eq!(
        second["entries"].as_array().map(Vec::len),
        Some(1),
        "{second}"
    );
    assert!(second["next"].is_null(), "last page: {second}");
    assert_ne!(first["entries"][0]["key"], second["entries"][0]["key"]);
    let none = get_json(port, "/api/v1/failed?target=site-a").await;
    assert_eq!(none["entries"].as_array().map(Vec::len), Some(0), "{none}");
    let listed = cli_ok(port, &["failed", "list"]).await;
    assert!(
        listed.contains("bad/one") && listed.contains("bad/two two"),
        "{listed}"
    );

    // Mutating routes need the token.
    let refused = cli(port, &["failed", "retry", "--all"]).await;
    assert_eq!(refused.code, Some(1), "{}", refused.stdout);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    let refused = cli(port, &["failed", "retry", "--all", "--token", "wrong"]).await;
    assert!(
        refused.stderr.contains("wrong admin token"),
        "{}",
        refused.stderr
    );
    let refused = cli(port, &["failed", "retry", "--token", TOKEN]).await;
    assert!(
        refused.stderr.contains("no filter given"),
        "{}",
        refused.stderr
    );

    // The data path is clean again: retry site-b's failures; they complete, the source empties.
    proxy.set(Fault::None);
    let retried = cli_ok(
        port,
        &["failed", "retry", "--target", "site-b", "--token", TOKEN],
    )
    .await;
    assert!(retried.starts_with("2 failed entries"), "{retried}");
    wait_until(TIMEOUT, "the retried entries COMPLETED", || async {
        let s = get_json(port, &format!("/api/v1/objects/{src}/bad/one")).await;
        s["versions"][0]["status"] == "COMPLETED"
            && buckets.count(2).await.0 == 2
            && buckets.count(0).await.0 == 0
    })
    .await;
    let empty = get_json(port, "/api/v1/failed").await;
    assert_eq!(
        empty["entries"].as_array().map(Vec::len),
        Some(0),
        "{empty}"
    );

    // --- Pause site-b: its backlog grows while site-a keeps completing.
    let paused = cli_ok(
        port,
        &[
            "targets",
            "pause",
            "site-b",
            "--reason",
            "maintenance",
            "--token",
            TOKEN,
        ],
    )
    .await;
    assert!(paused.contains("site-b: paused"), "{paused}");
    let unknown = cli(port, &["targets", "pause", "site-z", "--token", TOKEN]).await;
    assert!(
        unknown.stderr.contains("404") && unknown.stderr.contains("site-a, site-b"),
        "{}",
        unknown.stderr
    );
    for i in 0..5u64 {
        put(&buckets, &format!("paused/{i}"), 10 + i).await;
    }
    wait_until(TIMEOUT, "site-a has the new objects", || async {
        buckets.count(1).await.0 == 7
    })
    .await;
    wait_until(TIMEOUT, "site-b's backlog holds them", || async {
        target(&get_json(port, "/api/v1/targets").await, "site-b")["backlog"] == 5
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        buckets.count(2).await.0,
        2,
        "nothing copied to a paused target"
    );
    assert_eq!(
        buckets.count(0).await.0,
        5,
        "the transient source keeps what site-b lacks"
    );
    let page = get(port, "/metrics").await.1;
    for (target, backlog) in [("site-a", 0), ("site-b", 5)] {
        let line = format!("ferry_target_backlog{{target=\"{target}\"}} {backlog}");
        assert!(page.lines().any(|l| l == line), "{line} in {page}");
    }
    let targets = get_json(port, "/api/v1/targets").await;
    assert_eq!(target(&targets, "site-b")["state"], "paused", "{targets}");
    assert_eq!(
        target(&targets, "site-b")["reason"],
        "maintenance",
        "{targets}"
    );
    assert_eq!(target(&targets, "site-a")["state"], "active", "{targets}");
    assert_eq!(target(&targets, "site-a")["backlog"], 0, "{targets}");
    let table = cli_ok(port, &["targets", "list"]).await;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("site-b") && l.contains("paused") && l.contains("maintenance")),
        "{table}"
    );
    let overview = cli_ok(port, &["status"]).await;
    assert!(overview.starts_with("ready: yes"), "{overview}");
    for stage in ["populator-scan", "replication", "status", "gc"] {
        assert!(
            overview
                .lines()
                .any(|l| l.starts_with(stage) && l.contains(" running ")),
            "{stage} on the stage board: {overview}"
        );
    }
    let board = get_json(port, "/api/v1/stages").await;
    let replication = board["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "replication"))
        .unwrap_or_else(|| panic!("replication on the board: {board}"));
    assert!(
        replication["received"].as_u64() >= Some(7),
        "every entry received (and the deferred copies for site-b): {board}"
    );
    assert!(
        replication["errors"].as_u64() >= Some(2),
        "the two FAILED copies: {board}"
    );
    assert!(
        replication["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("to site-b: FAILED")),
        "{board}"
    );

    // Resume: the backlog drains.
    let resumed = cli_ok(port, &["targets", "resume", "site-b", "--token", TOKEN]).await;
    assert!(resumed.contains("site-b: active"), "{resumed}");
    wait_until(TIMEOUT, "site-b drained and the source emptied", || async {
        buckets.count(2).await.0 == 7 && buckets.count(0).await.0 == 0
    })
    .await;
    wait_until(TIMEOUT, "site-b's backlog is empty", || async {
        target(&get_json(port, "/api/v1/targets").await, "site-b")["backlog"] == 0
    })
    .await;

    // A pause with a scheduled end ends by itself.
    let paused = cli_ok(
        port,
        &[
            "targets", "pause", "site-b", "--for", "4s", "--token", TOKEN,
        ],
    )
    .await;
    assert!(paused.contains("paused until"), "{paused}");
    put(&buckets, "later", 99).await;
    wait_until(
        TIMEOUT,
        "the pause ended and the object arrived",
        || async { buckets.count(2).await.0 == 8 },
    )
    .await;
    let targets = get_json(port, "/api/v1/targets").await;
    assert_eq!(target(&targets, "site-b")["state"], "active", "{targets}");

    assert_eq!(
        ferry
            .terminate(Duration::from_secs(30))
            .and_then(|s| s.code()),
        Some(0)
    );
    let log = ferry.log();
    assert!(!log.contains(TOKEN), "the admin token appears in the log");
    buckets.remove().await;
}

/// Lines of `log` whose message is exactly `message`.
fn count(log: &str, message: &str) -> usize {
    let needle = format!("\"message\":\"{message}\"");
    log.lines().filter(|l| l.contains(&needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_copies_and_a_restart_redoes_nothing() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "sigterm").await;
    let total = 120u64;
    for i in 0..total {
        put(&buckets, &format!("t/{i:03}"), i).await;
    }
    // Few entries in flight at once, so that SIGTERM finds most of the work not yet received.
    let mut ferry = Ferry::start(&buckets.config_with(&env, true, "max_in_flight = 8\n"));
    wait_until(TIMEOUT, "a part of the objects replicated", || async {
        buckets.count(1).await.0 >= 30
    })
    .await;
    let status = ferry.terminate(Duration::from_secs(40));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit 0 on SIGTERM");
    let first = ferry.log();
    assert!(
        first.contains("shutting down: finishing in-flight work"),
        "{first}"
    );
    assert!(
        !first.contains("did not finish in time"),
        "in-flight work finished within shutdown_timeout"
    );
    let copied_before = count(&first, "replicated");
    assert!(
        copied_before < 2 * total as usize,
        "SIGTERM came mid-run ({copied_before} copies made)"
    );

    ferry.restart();
    wait_until(
        TIMEOUT,
        "everything replicated, the source empty",
        || async {
            buckets.target_counts().await == (total as usize, total as usize)
                && buckets.count(0).await.0 == 0
        },
    )
    .await;
    // Every entry received was finished and acknowledged before the exit, so the restart
    // resumes exactly after them: nothing is copied, or even looked at, twice.
    let unacknowledged: usize = first
        .lines()
        .find(|l| l.contains("unacknowledged entries are redone after restart"))
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .and_then(|v| v["unacknowledged"].as_u64())
        .expect("the shutdown says how many entries it left")
        as usize;
    let second = ferry.log();
    assert_eq!(unacknowledged, 0, "every entry received was finished");
    assert_eq!(
        count(&second, "already on the target (redelivery)"),
        0,
        "nothing finished before SIGTERM is consumed again"
    );
    assert_eq!(
        copied_before + count(&second, "replicated"),
        2 * total as usize,
        "each version copied once to each target, over both runs"
    );
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

/// Runs `ferry backfill ARGS…` on the configuration file `config`.
async fn backfill(config: &std::path::Path, args: &[&str]) -> support::admin::Cli {
    let mut all = vec!["backfill", "--config"];
    let config = config.display().to_string();
    all.push(&config);
    all.extend_from_slice(args);
    cli(0, &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_enqueues_every_existing_version_once_and_resumes() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "backfill").await;
    for i in 0..20u64 {
        put(&buckets, &format!("k/{i:02}"), i).await;
    }
    // The events feed only: nothing but a backfill enqueues objects written before.
    let cfg = buckets.config(&env, false).replace(
        "feeds = [\"scan\"]",
        &format!(
            "feeds = [\"events\"]\nevents_topic = \"{}.events\"",
            buckets.id
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, &cfg).expect("write config");

    let unknown = backfill(&path, &["--rule", "nope"]).await;
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown.stderr.contains("no rule named \"nope\""),
        "{}",
        unknown.stderr
    );

    // An earlier backfill was interrupted after enqueueing every version up to k/09.
    let config = ferry::config::load(&path).expect("config");
    ferry::stages::populator::backfill::record_interrupted(&config, "all", "k/09")
        .await
        .expect("progress recorded");
    let resumed = backfill(&path, &["--rule", "all"]).await;
    assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
    assert!(
        resumed.stdout.contains("10 versions enqueued, 10 skipped"),
        "{}",
        resumed.stdout
    );

    let mut ferry = Ferry::start(&cfg);
    wait_until(TIMEOUT, "k/10..k/19 on both targets", || async {
        buckets.target_counts().await == (10, 10)
    })
    .await;
    let again = backfill(&path, &["--rule", "all"]).await;
    assert_eq!(again.code, Some(1));
    assert!(
        again.stderr.contains("already completed") && again.stderr.contains("--restart"),
        "{}",
        again.stderr
    );

    let restarted = backfill(&path, &["--rule", "all", "--restart"]).await;
    assert!(
        restarted.stdout.contains("20 versions enqueued, 0 skipped"),
        "{}{}",
        restarted.stdout,
        restarted.stderr
    );
    wait_until(TIMEOUT, "every version on both targets", || async {
        buckets.target_counts().await == (20, 20)
    })
    .await;
    wait_until(TIMEOUT, "the re-enqueued versions recognised", || async {
        count(&ferry.log(), "already on the target (redelivery)") == 20
    })
    .await;
    assert_eq!(
        buckets.target_counts().await,
        (20, 20),
        "versions enqueued twice are not copied twice"
    );
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_topics_with_another_partition_count_stop_ferry_naming_them() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "parts").await;
    let config = buckets.config(&env, false);
    // The first start creates the topics with 4 partitions...
    let mut first = Ferry::start(&config);
    wait_until(Duration::from_secs(60), "topics created", || async {
        first.log().contains("\"topics ready\"")
    })
    .await;
    first.terminate(Duration::from_secs(30));
    // ...a second one configured for 8 must not run on them.
    let changed = config.replace("partitions = 4", "partitions = 8");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, changed).expect("write config");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(&path)
            .output()
            .expect("run ferry")
    })
    .await
    .expect("ferry task");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(".replication") && stderr.contains("has 4 partitions, ferry needs 8"),
        "names the topic and both counts: {stderr}"
    );
    buckets.remove().await;
}

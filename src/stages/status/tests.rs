//! The status processor against the embedded queue (no servers): results fold into an entry's
//! state, a GC task is published only once every target of a transient entry COMPLETED, a
//! FAILED copy is recorded in the failed topic, and unreadable results are dead-lettered.

use std::time::Duration;

use super::*;
use crate::bus::{Bus, Subscription};
use crate::model::{EntryKind, GcTask, ReplicationEntry};
use crate::stages::testing::local_site;

struct Site {
    _dir: tempfile::TempDir,
    bus: Bus,
    topics: Topics,
    stop: CancellationToken,
    run: tokio::task::JoinHandle<Result<(), StageError>>,
    status: Arc<StageStatus>,
}

async fn site() -> Site {
    let site = local_site(
        r#"
[queue]
kind = "embedded"
path = "{root}/queue"

[locations.inbox]
kind = "fs"
path = "{root}/inbox"
transient = true

[locations.site-a]
kind = "fs"
path = "{root}/a"

[locations.site-b]
kind = "fs"
path = "{root}/b"

[[rules]]
name = "all"
source = "inbox"
targets = ["site-a", "site-b"]
"#,
    )
    .await;
    let (config, bus, topics) = (site.config, site.bus, site.topics);
    let processor = StatusProcessor::new(
        bus.publisher(),
        topics.clone(),
        bus.subscribe("status", &[&topics.status])
            .expect("subscribe"),
        bus.state_reader().expect("state reader"),
        &config.status,
        config.locations.keys().cloned().collect(),
    );
    let status = processor.status();
    let stop = CancellationToken::new();
    let run = tokio::spawn(processor.run(stop.clone()));
    Site {
        _dir: site.dir,
        bus,
        topics,
        stop,
        run,
        status,
    }
}

fn entry(key: &str) -> ReplicationEntry {
    ReplicationEntry {
        schema: model::SCHEMA,
        rule: "all".into(),
        source: "inbox".into(),
        bucket: "inbox".into(),
        key: key.into(),
        version_id: Some("v1".into()),
        kind: EntryKind::Object,
        size: 5,
        etag: Some("0123456789abcdef0123456789abcdef".into()),
        last_modified_ms: 1,
        targets: vec!["site-a".into(), "site-b".into()],
        transient: true,
        enqueued_at_ms: model::now_ms(),
    }
}

fn result(key: &str, target: &str, status: ReplicationStatus) -> TargetResult {
    TargetResult {
        schema: model::SCHEMA,
        entry: entry(key),
        target: target.into(),
        status,
        target_version_id: Some(format!("{target}-v")),
        error: (status == ReplicationStatus::Failed).then(|| "the target said no".into()),
        attempts: 1,
        at_ms: model::now_ms(),
    }
}

/// The next message on `sub`, decoded, within a few seconds; `None` if none came.
async fn next<T: serde::de::DeserializeOwned>(sub: &Subscription) -> Option<T> {
    let delivery = tokio::time::timeout(Duration::from_secs(3), sub.recv())
        .await
        .ok()?
        .expect("receive");
    let message = model::decode("test message", delivery.payload.as_deref()?).ok();
    delivery.ack();
    message
}

impl Site {
    async fn send(&self, result: &TargetResult) {
        self.topics
            .status
            .send(&self.bus.publisher(), result)
            .await
            .expect("published");
    }

    async fn stop(self) {
        self.stop.cancel();
        self.run
            .await
            .expect("joined")
            .expect("the processor stops cleanly");
    }
}

#[tokio::test]
async fn a_gc_task_only_once_every_target_completed() {
    let site = site().await;
    let gc = site.bus.subscribe("t-gc", &[&site.topics.gc]).expect("gc");
    site.send(&result("k", "site-a", ReplicationStatus::Completed))
        .await;
    assert!(
        next::<GcTask>(&gc).await.is_none(),
        "no GC task while site-b has no copy"
    );
    site.send(&result("k", "site-b", ReplicationStatus::Completed))
        .await;
    let task: GcTask = next(&gc).await.expect("a GC task once both completed");
    assert_eq!(task.entry.key, "k");
    let mut copies: Vec<(String, Option<String>)> = task
        .copies
        .iter()
        .map(|c| (c.target.clone(), c.version_id.clone()))
        .collect();
    copies.sort();
    assert_eq!(
        copies,
        vec![
            ("site-a".into(), Some("site-a-v".into())),
            ("site-b".into(), Some("site-b-v".into()))
        ],
        "the task names each verified copy"
    );
    // A redelivered result changes no state but sends the task again (the batch that
    // completed the entry may have stopped before its task was durable; the GC re-checks).
    site.send(&result("k", "site-b", ReplicationStatus::Completed))
        .await;
    let again: GcTask = next(&gc).await.expect("the task again, at least once");
    assert_eq!(again.entry.key, "k");
    // A FAILED result after COMPLETED does not undo it (a stale, reordered result).
    site.send(&result("k", "site-a", ReplicationStatus::Failed))
        .await;
    let still: GcTask = next(&gc).await.expect("still COMPLETED");
    assert_eq!(still.copies.len(), 2);
    site.stop().await;
}

#[tokio::test]
async fn a_failed_copy_is_recorded_and_never_collected() {
    let site = site().await;
    let gc = site.bus.subscribe("t-gc", &[&site.topics.gc]).expect("gc");
    let failed = site
        .bus
        .subscribe("t-failed", &[&site.topics.failed])
        .expect("failed");
    site.send(&result("f", "site-a", ReplicationStatus::Completed))
        .await;
    site.send(&result("f", "site-b", ReplicationStatus::Failed))
        .await;
    // The failed record is the result that failed its entry.
    let record: TargetResult = next(&failed).await.expect("a failed record");
    assert_eq!(
        (record.entry.key.as_str(), record.target.as_str()),
        ("f", "site-b")
    );
    assert_eq!(record.error.as_deref(), Some("the target said no"));
    assert!(
        next::<GcTask>(&gc).await.is_none(),
        "a FAILED entry is kept"
    );
    site.stop().await;
}

#[tokio::test]
async fn unreadable_and_unknown_results_are_dead_lettered_and_counted() {
    let site = site().await;
    let dead = site
        .bus
        .subscribe("t-dead", &[&site.topics.dead_letter])
        .expect("dead letters");
    site.bus
        .publisher()
        .publish(&site.topics.status, "x", Some(b"{not json"))
        .await
        .expect("published");
    site.send(&result("u", "site-z", ReplicationStatus::Completed))
        .await;
    let first: serde_json::Value = next(&dead).await.expect("the unreadable one");
    let second: serde_json::Value = next(&dead).await.expect("the unknown target");
    assert_eq!(first["stage"], "status", "{first}");
    assert!(
        second["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("site-z"),
        "{second}"
    );
    let report = {
        let board = crate::stages::board::Board::default();
        board.register("status", site.status.clone());
        board.reports().remove(0)
    };
    assert_eq!((report.received, report.dead_letters), (2, 2), "{report:?}");
    site.stop().await;
}

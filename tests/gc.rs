//! The garbage collector deletes a transient source version only when every target copy checks
//! out, against the real broker and S3 servers, with GC tasks crafted to fail each check.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use ferry::bus::Bus;
use ferry::model::{EntryKind, GcTask, ReplicationEntry, TargetCopy, SCHEMA};
use support::s3::{self, Put};
use support::{admin, wait_until, Buckets, Ferry, TestEnv};

/// Writes a copy of `data` to `bucket` stamped as ferry's copy of `source_version`.
async fn stamped_copy(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    data: Vec<u8>,
    source_version: &str,
    etag: &str,
) -> String {
    let out = client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data))
        .set_metadata(Some(HashMap::from([
            (
                "ferry-source-version-id".to_string(),
                source_version.to_string(),
            ),
            ("ferry-source-etag".to_string(), etag.to_string()),
        ])))
        .send()
        .await
        .expect("put copy");
    out.version_id().expect("versioned target").to_string()
}

fn task(
    src: &str,
    key: &str,
    version: &str,
    etag: &str,
    size: u64,
    copies: [(&str, &str); 2],
) -> GcTask {
    GcTask {
        schema: SCHEMA,
        entry: ReplicationEntry {
            schema: SCHEMA,
            rule: "all".into(),
            source: "src".into(),
            bucket: src.into(),
            key: key.into(),
            version_id: Some(version.into()),
            kind: EntryKind::Object,
            size,
            etag: Some(etag.into()),
            last_modified_ms: 0,
            targets: vec!["site-a".into(), "site-b".into()],
            transient: true,
            enqueued_at_ms: 0,
        },
        copies: copies
            .iter()
            .map(|(t, v)| TargetCopy {
                target: t.to_string(),
                version_id: Some(v.to_string()),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_only_versions_every_target_verifiably_holds() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "gc").await;
    let (id, clients, src, a, b) = (
        &buckets.id,
        &buckets.clients,
        &buckets.source,
        &buckets.a,
        &buckets.b,
    );

    // Three source versions; only "good" has a verified copy on both targets.
    let mut versions = HashMap::new();
    for (n, key) in ["good", "missing", "short"].iter().enumerate() {
        let version = s3::put(
            &clients[0],
            src,
            &Put {
                key: key.to_string(),
                seed: n as u64,
                size: 5000,
                ..Put::default()
            },
        )
        .await
        .expect("versioned");
        let head = clients[0]
            .head_object()
            .bucket(src)
            .key(*key)
            .version_id(&version)
            .send()
            .await
            .expect("head");
        let etag = head
            .e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string();
        versions.insert(*key, (version, etag, s3::data(n as u64, 5000)));
    }
    let (gv, ge, gd) = &versions["good"];
    let good = task(
        src,
        "good",
        gv,
        ge,
        5000,
        [
            (
                "site-a",
                &stamped_copy(&clients[1], a, "good", gd.clone(), gv, ge).await,
            ),
            (
                "site-b",
                &stamped_copy(&clients[2], b, "good", gd.clone(), gv, ge).await,
            ),
        ],
    );
    let (mv, me, md) = &versions["missing"];
    let missing = task(
        src,
        "missing",
        mv,
        me,
        5000,
        [
            (
                "site-a",
                &stamped_copy(&clients[1], a, "missing", md.clone(), mv, me).await,
            ),
            ("site-b", "no-such-version"),
        ],
    );
    let (sv, se, sd) = &versions["short"];
    let short = task(
        src,
        "short",
        sv,
        se,
        5000,
        [
            (
                "site-a",
                &stamped_copy(&clients[1], a, "short", sd.clone(), sv, se).await,
            ),
            (
                "site-b",
                &stamped_copy(&clients[2], b, "short", sd[..4000].to_vec(), sv, se).await,
            ),
        ],
    );

    // Only the garbage collector runs; the tasks are published as the status processor would.
    let only_gc = "\n[stages]\npopulator = false\nreplication = false\nstatus = false\ngc = true\n";
    let mut ferry = Ferry::start(&buckets.config_with(&env, true, only_gc));
    let bus = Bus::connect(&buckets.queue(&env)).expect("bus");
    let gc_topic = format!("{id}.gc");
    wait_until(Duration::from_secs(60), "ferry's gc topic", || async {
        bus.partition_count(&gc_topic).await.unwrap_or(0) == 4
    })
    .await;
    for t in [&missing, &short, &good] {
        let payload = ferry::model::encode(t);
        bus.publisher()
            .publish(&gc_topic, &t.entry.message_key(), Some(&payload))
            .await
            .expect("publish");
    }

    let source_has = |key: &'static str, version: String| {
        let client = clients[0].clone();
        let bucket = src.clone();
        async move {
            client
                .head_object()
                .bucket(bucket)
                .key(key)
                .version_id(version)
                .send()
                .await
                .is_ok()
        }
    };
    wait_until(
        Duration::from_secs(60),
        "the verified version deleted",
        || {
            let present = source_has("good", gv.clone());
            async move { !present.await }
        },
    )
    .await;
    wait_until(Duration::from_secs(30), "both refusals logged", || async {
        ferry
            .log()
            .matches("not deleting the transient source copy")
            .count()
            >= 2
    })
    .await;
    assert!(
        source_has("missing", mv.clone()).await,
        "a version missing on a target is kept"
    );
    assert!(
        source_has("short", sv.clone()).await,
        "a version whose copy is short is kept"
    );
    let log = ferry.log();
    assert!(
        log.contains("does not hold version") && log.contains("no-such-version"),
        "says which copy is missing"
    );
    assert!(
        log.contains("holds 4000 bytes, the source version has 5000"),
        "says what is wrong with the copy"
    );
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

/// A source version and, on both targets, a verified copy of it: (version, its GC task).
async fn verified(buckets: &Buckets, key: &str, seed: u64) -> (String, GcTask) {
    let (clients, src) = (&buckets.clients, &buckets.source);
    let data = s3::data(seed, 3000);
    let version = s3::put(
        &clients[0],
        src,
        &Put {
            key: key.to_string(),
            seed,
            size: 3000,
            ..Put::default()
        },
    )
    .await
    .expect("versioned");
    let etag = clients[0]
        .head_object()
        .bucket(src)
        .key(key)
        .version_id(&version)
        .send()
        .await
        .expect("head")
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    let on_a = stamped_copy(&clients[1], &buckets.a, key, data.clone(), &version, &etag).await;
    let on_b = stamped_copy(&clients[2], &buckets.b, key, data, &version, &etag).await;
    let task = task(
        src,
        key,
        &version,
        &etag,
        3000,
        [("site-a", &on_a), ("site-b", &on_b)],
    );
    (version, task)
}

/// A GC task carries what was true when its entry was made; the collector decides by what is
/// configured now: nothing is deleted from a location that is no longer transient, nor before
/// a target added to the rule since holds the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_decides_by_the_running_configuration_not_the_task() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "gcconf").await;
    let (_, still_transient) = verified(&buckets, "a-task-of-when-it-was-transient", 1).await;
    let (_, mut one_target) = verified(&buckets, "enqueued-before-site-b-was-added", 2).await;
    one_target.entry.targets = vec!["site-a".into()];
    one_target.copies.retain(|c| c.target == "site-a");
    let only_gc = "\n[stages]\npopulator = false\nreplication = false\nstatus = false\ngc = true\n";
    let publish = |bus: Bus, gc_topic: String, task: GcTask| async move {
        bus.publisher()
            .publish(
                &gc_topic,
                &task.entry.message_key(),
                Some(&ferry::model::encode(&task)),
            )
            .await
            .expect("publish");
    };
    let bus = Bus::connect(&buckets.queue(&env)).expect("bus");
    let gc_topic = format!("{}.gc", buckets.id);

    // The source is no longer transient: its versions stay.
    let mut ferry = Ferry::start(&buckets.config_with(&env, false, only_gc));
    wait_until(Duration::from_secs(60), "ferry's gc topic", || async {
        bus.partition_count(&gc_topic).await.unwrap_or(0) == 4
    })
    .await;
    publish(bus.clone(), gc_topic.clone(), still_transient).await;
    wait_until(Duration::from_secs(60), "the refusal", || async {
        ferry
            .log()
            .contains("not transient in the running configuration")
    })
    .await;
    // The stage board counts the task and names the refusal as the collector's last error.
    let port = admin::port(&ferry.log()).expect("admin server started");
    let gc_stage = |board: &serde_json::Value| {
        board["stages"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "gc"))
            .cloned()
            .unwrap_or_default()
    };
    wait_until(Duration::from_secs(10), "the task processed", || async {
        gc_stage(&admin::get_json(port, "/api/v1/stages").await)["processed"] == 1
    })
    .await;
    let board = admin::get_json(port, "/api/v1/stages").await;
    let stages = board["stages"].as_array().expect("a list of stages");
    let gc = gc_stage(&board);
    assert_eq!(gc["state"], "running", "{board}");
    assert_eq!(
        (
            &gc["received"],
            &gc["processed"],
            &gc["in_flight"],
            &gc["errors"]
        ),
        (&1.into(), &1.into(), &0.into(), &1.into()),
        "{board}"
    );
    let last = gc["last_error"]["message"].as_str().unwrap_or_default();
    assert!(
        last.contains("not transient in the running configuration")
            && last.contains("a-task-of-when-it-was-transient"),
        "{board}"
    );
    assert!(
        stages.iter().all(|s| s["name"] == "gc"),
        "only the gc stage runs: {board}"
    );
    ferry.terminate(Duration::from_secs(30));
    assert_eq!(buckets.count(0).await.0, 2, "a version was deleted");

    // Transient again, but the rule now has a target the task does not account for.
    let mut ferry = Ferry::start(&buckets.config_with(&env, true, only_gc));
    publish(bus.clone(), gc_topic.clone(), one_target.clone()).await;
    wait_until(Duration::from_secs(60), "the refusal", || async {
        ferry.log().contains("now also copies to site-b")
    })
    .await;
    let one_target_still_there = clients_head(&buckets, &one_target).await;
    assert!(one_target_still_there, "deleted before site-b holds it");
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

/// Whether the source still holds the task's version.
async fn clients_head(buckets: &Buckets, task: &GcTask) -> bool {
    buckets.clients[0]
        .head_object()
        .bucket(&buckets.source)
        .key(&task.entry.key)
        .set_version_id(task.entry.version_id.clone())
        .send()
        .await
        .is_ok()
}

//! The populator's event feed, dead letters, and bad locations — against the real broker and
//! S3 servers.

mod support;

use std::time::Duration;

use ferry::bus::{Bus, TopicSpec};
use support::s3::{self, Put};
use support::{wait_until, Buckets, Ferry, TestEnv};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Every record of a single-partition topic, as text.
async fn read_topic(bus: &Bus, topic: &str) -> Vec<String> {
    let reader = bus.state_reader().expect("reader");
    reader
        .read_partition(topic, 0)
        .await
        .expect("read topic")
        .into_iter()
        .filter_map(|(_, v)| v.map(|v| String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

/// An S3 event notification message as AWS (or, with `s3:` names, MinIO and Ceph) sends it.
fn event(
    name: &str,
    bucket: &str,
    encoded_key: &str,
    version: Option<&str>,
    size: usize,
) -> String {
    serde_json::json!({
        "Records": [{
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "eventTime": "2026-11-25T10:00:00.000Z",
            "eventName": name,
            "s3": {
                "bucket": {"name": bucket},
                "object": {"key": encoded_key, "size": size, "versionId": version, "sequencer": "0055AED6DCD90281E5"}
            }
        }]
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_feed_replicates_writes_and_deletes_and_dead_letters_garbage() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "events").await;
    let (id, clients, src, a) = (&buckets.id, &buckets.clients, &buckets.source, &buckets.a);

    let events_topic = format!("{id}.s3-events");
    let bus = Bus::connect(&buckets.queue(&env)).expect("bus");
    bus.ensure_topics(
        &[TopicSpec {
            name: events_topic.clone(),
            partitions: 1,
            compacted: false,
        }],
        1,
    )
    .await
    .expect("events topic");
    let extra = format!("\n[populator]\nfeeds = [\"events\"]\nevents_topic = \"{events_topic}\"\n");
    let cfg = buckets.config(&env, false).replace(
        "[populator]\nfeeds = [\"scan\"]\nscan_interval = \"1s\"\n",
        "",
    ) + &extra;
    let mut ferry = Ferry::start(&cfg);

    // Writes at the source, each announced by an event; the feed must decode `+` and `%XX`.
    let publisher = bus.publisher();
    let writes = [
        ("a b/c+d%.txt", "a+b/c%2Bd%25.txt"),
        ("日本.bin", "%E6%97%A5%E6%9C%AC.bin"),
        ("plain", "plain"),
    ];
    let mut versions = Vec::new();
    for (n, (key, encoded)) in writes.iter().enumerate() {
        let version = s3::put(
            &clients[0],
            src,
            &Put {
                key: key.to_string(),
                seed: n as u64,
                size: 100 + n,
                ..Put::default()
            },
        )
        .await;
        let name = if n % 2 == 0 {
            "ObjectCreated:Put"
        } else {
            "s3:ObjectCreated:Put"
        };
        let message = event(name, src, encoded, version.as_deref(), 100 + n);
        publisher
            .publish(&events_topic, key, Some(message.as_bytes()))
            .await
            .expect("publish event");
        versions.push(version);
    }
    publisher
        .publish(&events_topic, "junk", Some(b"this is not an event"))
        .await
        .expect("publish junk");
    let marker = s3::delete(&clients[0], src, "plain").await;
    let message = event(
        "s3:ObjectRemoved:DeleteMarkerCreated",
        src,
        "plain",
        marker.as_deref(),
        0,
    );
    publisher
        .publish(&events_topic, "plain", Some(message.as_bytes()))
        .await
        .expect("publish delete");
    // A version delete is not replicated; a bucket ferry does not know is ignored.
    let message = event(
        "ObjectRemoved:Delete",
        src,
        "plain",
        Some("some-version"),
        0,
    );
    publisher
        .publish(&events_topic, "plain", Some(message.as_bytes()))
        .await
        .expect("publish");
    let message = event("ObjectCreated:Put", "someone-elses-bucket", "x", None, 1);
    publisher
        .publish(&events_topic, "x", Some(message.as_bytes()))
        .await
        .expect("publish");

    // A forged deletion: the "marker" it names is the object's own version. The source
    // contradicts it, so the targets keep the object.
    let message = event(
        "ObjectRemoved:DeleteMarkerCreated",
        src,
        "%E6%97%A5%E6%9C%AC.bin",
        versions[1].as_deref(),
        0,
    );
    publisher
        .publish(&events_topic, "日本.bin", Some(message.as_bytes()))
        .await
        .expect("publish forged delete");

    wait_until(
        TIMEOUT,
        "3 objects and 1 delete marker on both targets",
        || async { buckets.count(1).await == (3, 1) && buckets.count(2).await == (3, 1) },
    )
    .await;
    wait_until(TIMEOUT, "the forged deletion refused", || async {
        ferry.log().contains("is an object, not a delete marker")
    })
    .await;
    assert_eq!(
        buckets.count(1).await,
        (3, 1),
        "site-a applied a forged deletion"
    );
    assert_eq!(
        buckets.count(2).await,
        (3, 1),
        "site-b applied a forged deletion"
    );
    for (key, _) in writes.iter().filter(|(k, _)| *k != "plain") {
        let got = s3::fetch(&clients[1], a, key, None).await;
        assert!(
            got.metadata.contains_key("ferry-source-version-id"),
            "{key} is ferry's copy"
        );
    }
    let dead = read_topic(&bus, &format!("{id}.dead-letter")).await;
    assert_eq!(
        dead.len(),
        1,
        "exactly the junk message is dead-lettered: {dead:?}"
    );
    assert!(
        dead[0].contains("this is not an event") && dead[0].contains(&events_topic),
        "{}",
        dead[0]
    );
    assert!(ferry.running(), "the feed keeps going after bad input");
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_dead_lettered_and_replication_continues() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "dead").await;
    let (id, clients, src) = (&buckets.id, &buckets.clients, &buckets.source);
    let mut ferry = Ferry::start(&buckets.config(&env, false));
    let bus = Bus::connect(&buckets.queue(&env)).expect("bus");

    // Wait until ferry created its topics, then poison the replication and status topics.
    wait_until(TIMEOUT, "ferry's topics", || async {
        bus.partition_count(&format!("{id}.replication"))
            .await
            .unwrap_or(0)
            == 4
    })
    .await;
    let publisher = bus.publisher();
    publisher
        .publish(&format!("{id}.replication"), "k", Some(b"{not json"))
        .await
        .expect("publish");
    publisher
        .publish(
            &format!("{id}.replication"),
            "k",
            Some(br#"{"schema": 99, "bucket": "b"}"#),
        )
        .await
        .expect("publish");
    publisher
        .publish(&format!("{id}.status"), "k", Some(br#"{"schema": 1}"#))
        .await
        .expect("publish");
    // Well-formed, of a newer minor version (an added field), but forged: a target that is no
    // location of this configuration, named among thousands.
    let mut targets: Vec<String> = (0..500).map(|i| format!("evil-{i}")).collect();
    targets.insert(0, "site-a".into());
    let forged = serde_json::json!({
        "schema": 1, "rule": "all", "source": "src", "bucket": src, "key": "forged",
        "version_id": null, "kind": "object", "size": 1, "etag": null,
        "last_modified_ms": 0, "targets": targets, "transient": false, "enqueued_at_ms": 0,
        "added_by_a_newer_ferry": true,
    });
    publisher
        .publish(
            &format!("{id}.replication"),
            "forged",
            Some(forged.to_string().as_bytes()),
        )
        .await
        .expect("publish");
    // A forged result for a target that is no location here.
    let mut entry = forged.clone();
    entry["targets"] = serde_json::json!(["site-a", "evil-result"]);
    let result = serde_json::json!({
        "schema": 1, "entry": entry, "target": "evil-result", "status": "COMPLETED",
        "target_version_id": null, "error": null, "attempts": 1, "at_ms": 0,
    });
    publisher
        .publish(
            &format!("{id}.status"),
            "forged",
            Some(result.to_string().as_bytes()),
        )
        .await
        .expect("publish");
    s3::put(
        &clients[0],
        src,
        &Put {
            key: "after-the-garbage".into(),
            seed: 1,
            size: 10,
            ..Put::default()
        },
    )
    .await;

    wait_until(TIMEOUT, "the good object on both targets", || async {
        buckets.target_counts().await == (1, 1)
    })
    .await;
    let topic = format!("{id}.dead-letter");
    wait_until(TIMEOUT, "five dead letters", || async {
        read_topic(&bus, &topic).await.len() >= 5
    })
    .await;
    let dead = read_topic(&bus, &topic).await;
    let all = dead.join("\n");
    assert!(all.contains("schema 99"), "names the unknown schema: {all}");
    assert!(
        all.contains("501 targets; this configuration has 3 locations"),
        "names what is wrong with the forged entry"
    );
    assert!(
        all.contains("target \\\"evil-result\\\" is not a location of this configuration"),
        "names what is wrong with the forged result"
    );
    let metrics = support::admin::get(
        support::admin::port(&ferry.log()).expect("admin port"),
        "/metrics",
    )
    .await
    .1;
    assert!(
        !metrics.contains("evil-"),
        "a forged target got a metric label"
    );
    assert!(
        all.contains("not valid JSON"),
        "names the JSON error: {all}"
    );
    assert!(
        all.contains(&format!("{id}.replication/")) && all.contains(&format!("{id}.status/")),
        "names the origin: {all}"
    );

    // An operator lists them and replays them onto the topics they came from; still
    // unreadable, each is dead-lettered again (with its new origin), nothing is lost.
    let port = support::admin::port(&ferry.log()).expect("admin port");
    let listed = support::admin::cli_ok(port, &["dead-letter", "list"]).await;
    assert!(
        listed.contains("REASON") && listed.contains("schema 99"),
        "{listed}"
    );
    let before = dead.len();
    let replayed = support::admin::cli_ok(port, &["dead-letter", "replay", "--all"]).await;
    assert_eq!(
        replayed
            .lines()
            .filter(|l| l.contains(&format!("sent to {id}.")))
            .count(),
        before,
        "{replayed}"
    );
    wait_until(
        TIMEOUT,
        "the replayed messages dead-lettered again",
        || async { read_topic(&bus, &topic).await.len() >= 2 * before },
    )
    .await;
    let again = support::admin::cli_ok(port, &["dead-letter", "replay", "0", "999999"]).await;
    assert!(
        again.contains("0: sent to") && again.contains("999999: skipped: no dead letter"),
        "{again}"
    );
    assert!(ferry.running());
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_target_bucket_is_named_and_nothing_is_lost_until_it_exists() {
    let env = TestEnv::get();
    let buckets = Buckets::named(&env, "nobucket");
    let (clients, src, b) = (&buckets.clients, &buckets.source, &buckets.b);
    buckets.create_one(0).await;
    buckets.create_one(1).await;
    // Target b's bucket does not exist yet; the source is transient.
    let mut ferry = Ferry::start(&buckets.config(&env, true));
    for i in 0..5u64 {
        s3::put(
            &clients[0],
            src,
            &Put {
                key: format!("k{i}"),
                seed: i,
                size: 1000,
                ..Put::default()
            },
        )
        .await;
    }
    wait_until(TIMEOUT, "target a has everything", || async {
        buckets.count(1).await.0 == 5
    })
    .await;
    wait_until(
        TIMEOUT,
        "an error naming site-b and its missing bucket",
        || async {
            let log = ferry.log();
            log.lines().any(|l| {
                l.contains("site-b") && l.contains(b.as_str()) && l.contains("NoSuchBucket")
            })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let paused = ferry.log().matches("location PAUSED").count();
    assert_eq!(paused, 1, "the target is paused once, not once per object");
    assert_eq!(
        buckets.count(0).await.0,
        5,
        "nothing leaves the transient source while b lacks it"
    );

    buckets.create_one(2).await;
    wait_until(TIMEOUT, "b catches up and the source empties", || async {
        buckets.count(2).await.0 == 5 && buckets.count(0).await.0 == 0
    })
    .await;
    assert!(ferry.log().contains("RESUMED"), "the resume is logged");
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

/// Malformed message number `i`: every kind of bad input a topic can carry.
fn garbage(i: usize) -> Option<Vec<u8>> {
    match i % 6 {
        0 => Some(b"not json at all".to_vec()),
        1 => Some(format!(r#"{{"schema": {}, "bucket": "b"}}"#, 2 + i).into_bytes()),
        2 => Some(br#"{"schema": 1, "bucket": "b"}"#.to_vec()),
        3 => Some(vec![0xff, 0xfe, 0x00, (i % 251) as u8]),
        4 => Some(br#"[1, 2, 3]"#.to_vec()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_malformed_messages_on_every_topic_are_dead_lettered_while_valid_work_flows() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "flood").await;
    let id = &buckets.id;
    let events_topic = format!("{id}.s3-events");
    let extra = format!("\n[populator]\nfeeds = [\"scan\", \"events\"]\nevents_topic = \"{events_topic}\"\nscan_interval = \"1s\"\n");
    let cfg = buckets.config(&env, true).replace(
        "[populator]\nfeeds = [\"scan\"]\nscan_interval = \"1s\"\n",
        "",
    ) + &extra;
    let mut ferry = Ferry::start(&cfg);
    let bus = Bus::connect(&buckets.queue(&env)).expect("bus");
    wait_until(TIMEOUT, "ferry's topics", || async {
        bus.partition_count(&events_topic).await.unwrap_or(0) > 0
            && bus.partition_count(&format!("{id}.gc")).await.unwrap_or(0) == 4
    })
    .await;

    let topics = [
        format!("{id}.replication"),
        format!("{id}.status"),
        format!("{id}.gc"),
        format!("{id}.retry"),
        events_topic.clone(),
    ];
    let publisher = bus.publisher();
    let mut written = 0;
    for round in 0..10 {
        // Valid work interleaved with the garbage: an object at the source every round.
        s3::put(
            &buckets.clients[0],
            &buckets.source,
            &Put {
                key: format!("valid/{round}"),
                seed: round,
                size: 2000,
                ..Put::default()
            },
        )
        .await;
        written += 1;
        let mut sends = Vec::new();
        for topic in &topics {
            for i in 0..100 {
                let n = round as usize * 100 + i;
                let payload = garbage(n);
                let publisher = publisher.clone();
                let topic = topic.clone();
                sends.push(tokio::spawn(async move {
                    publisher
                        .publish(&topic, &format!("junk-{n}"), payload.as_deref())
                        .await
                        .expect("publish junk");
                }));
            }
        }
        for s in sends {
            s.await.expect("send task");
        }
    }

    wait_until(
        Duration::from_secs(240),
        "valid objects replicated and the transient source emptied",
        || async {
            buckets.target_counts().await == (written, written) && buckets.count(0).await.0 == 0
        },
    )
    .await;
    // What the broker holds: every junk record of every topic (keys `junk-N`).
    let reader = bus.state_reader().expect("reader");
    let mut junk = Vec::new();
    for topic in &topics {
        let partitions = bus.partition_count(topic).await.expect("partitions");
        let mut n = 0;
        for p in 0..partitions {
            let records = reader.read_partition(topic, p).await.expect("read topic");
            n += records
                .iter()
                .filter(|(k, _)| k.starts_with(b"junk-"))
                .count();
        }
        junk.push(n);
    }
    eprintln!("junk records the broker holds per topic: {junk:?}");
    let dead_letter = format!("{id}.dead-letter");
    let expected: usize = junk.iter().sum();
    wait_until(
        Duration::from_secs(240),
        "every junk record dead-lettered",
        || async { read_topic(&bus, &dead_letter).await.len() >= expected },
    )
    .await;
    let dead = read_topic(&bus, &dead_letter).await;
    for (topic, held) in topics.iter().zip(&junk) {
        // Delivery is at least once: a rebalance under load redelivers what was not yet
        // committed, and those messages are dead-lettered again under the same origin
        // (topic/partition@offset). What must hold is that every one of them is there.
        let origins: Vec<&str> = dead
            .iter()
            .filter_map(|d| {
                let start = d.find(&format!("\"origin\":\"{topic}/"))? + "\"origin\":\"".len();
                let len = d[start..].find('"')?;
                Some(&d[start..start + len])
            })
            .collect();
        let distinct: std::collections::HashSet<&str> = origins.iter().copied().collect();
        eprintln!(
            "{topic}: {} dead letters, {} distinct origins, {} redelivered",
            origins.len(),
            distinct.len(),
            origins.len() - distinct.len()
        );
        assert_eq!(
            distinct.len(),
            *held,
            "every malformed message of {topic} is dead-lettered"
        );
        assert_eq!(
            *held, 1000,
            "the broker kept the 1,000 malformed messages sent to {topic}"
        );
    }
    assert!(ferry.running(), "nothing crashed");
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_version_gone_before_its_copy_is_failed_and_recorded() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "gone").await;
    let id = &buckets.id;
    let events_topic = format!("{id}.s3-events");
    let extra = format!("\n[populator]\nfeeds = [\"events\"]\nevents_topic = \"{events_topic}\"\n");
    let cfg = buckets.config(&env, true).replace(
        "[populator]\nfeeds = [\"scan\"]\nscan_interval = \"1s\"\n",
        "",
    ) + &extra;
    let bus = Bus::connect(&buckets.queue(&env)).expect("bus");
    bus.ensure_topics(
        &[TopicSpec {
            name: events_topic.clone(),
            partitions: 1,
            compacted: false,
        }],
        1,
    )
    .await
    .expect("events topic");
    let mut ferry = Ferry::start(&cfg);

    // The version is written and deleted before ferry gets to it; the event still arrives.
    let put = Put {
        key: "short-lived".into(),
        seed: 1,
        size: 100,
        ..Put::default()
    };
    let version = s3::put(&buckets.clients[0], &buckets.source, &put)
        .await
        .expect("versioned");
    buckets.clients[0]
        .delete_object()
        .bucket(&buckets.source)
        .key("short-lived")
        .version_id(&version)
        .send()
        .await
        .expect("delete version");
    let message = event(
        "ObjectCreated:Put",
        &buckets.source,
        "short-lived",
        Some(&version),
        100,
    );
    bus.publisher()
        .publish(&events_topic, "short-lived", Some(message.as_bytes()))
        .await
        .expect("publish");

    let failed_topic = format!("{id}.failed");
    wait_until(TIMEOUT, "a FAILED record per target", || async {
        let reader = bus.state_reader().expect("reader");
        let mut records = 0;
        for p in 0..4 {
            records += reader
                .read_partition(&failed_topic, p)
                .await
                .map(|r| r.len())
                .unwrap_or(0);
        }
        records >= 2
    })
    .await;
    let log = ferry.log();
    assert!(
        log.contains("copy FAILED") && log.contains("NoSuch"),
        "the failure says why"
    );
    assert_eq!(buckets.target_counts().await, (0, 0));
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_replication_follows_the_rule() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "deletes").await;
    let id = &buckets.id;
    let (src, clients) = (&buckets.source, &buckets.clients);
    let events_topic = format!("{id}.s3-events");
    let bus = Bus::connect(&buckets.queue(&env)).expect("bus");
    bus.ensure_topics(
        &[TopicSpec {
            name: events_topic.clone(),
            partitions: 1,
            compacted: false,
        }],
        1,
    )
    .await
    .expect("events topic");
    // Delete markers are not replicated; permanent version deletes are.
    let cfg = buckets
        .config(&env, false)
        .replace("[populator]\nfeeds = [\"scan\"]\nscan_interval = \"1s\"\n", "")
        .replace(
            "targets = [\"site-a\", \"site-b\"]\n",
            "targets = [\"site-a\", \"site-b\"]\nreplicate_deletes = false\nreplicate_version_deletes = true\n",
        )
        + &format!("\n[populator]\nfeeds = [\"events\"]\nevents_topic = \"{events_topic}\"\n");
    let mut ferry = Ferry::start(&cfg);
    let publisher = bus.publisher();
    let announce = |name: &'static str, key: &'static str, version: Option<String>| {
        let message = event(name, src, key, version.as_deref(), 10);
        let publisher = publisher.clone();
        let topic = events_topic.clone();
        async move {
            publisher
                .publish(&topic, key, Some(message.as_bytes()))
                .await
                .expect("publish")
        }
    };

    let kept = s3::put(
        &clients[0],
        src,
        &Put {
            key: "kept".into(),
            seed: 1,
            size: 10,
            ..Put::default()
        },
    )
    .await;
    announce("ObjectCreated:Put", "kept", kept).await;
    let gone = s3::put(
        &clients[0],
        src,
        &Put {
            key: "gone".into(),
            seed: 2,
            size: 10,
            ..Put::default()
        },
    )
    .await;
    announce("ObjectCreated:Put", "gone", gone.clone()).await;
    wait_until(TIMEOUT, "both objects on both targets", || async {
        buckets.target_counts().await == (2, 2)
    })
    .await;

    let marker = s3::delete(&clients[0], src, "kept").await;
    announce("ObjectRemoved:DeleteMarkerCreated", "kept", marker).await;
    let version = gone.clone().expect("versioned");
    clients[0]
        .delete_object()
        .bucket(src)
        .key("gone")
        .version_id(&version)
        .send()
        .await
        .expect("delete version");
    announce("ObjectRemoved:Delete", "gone", gone).await;

    wait_until(TIMEOUT, "the deleted version's copies removed", || async {
        buckets.target_counts().await == (1, 1)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in [1, 2] {
        assert_eq!(
            buckets.count(n).await,
            (1, 0),
            "target {n}: 'kept' without a delete marker, 'gone' gone"
        );
        let versions = s3::versions(&clients[n], buckets.bucket(n))
            .await
            .expect("list");
        assert_eq!(versions[0].key, "kept");
    }
    ferry.terminate(Duration::from_secs(30));
    buckets.remove().await;
}

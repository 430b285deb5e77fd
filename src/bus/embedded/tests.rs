//! The embedded queue against the contract the stages rely on.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

fn spec(name: &str, partitions: i32, compacted: bool) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions,
        compacted,
    }
}

/// Opens `dir`, waiting for a previous bus on it (dropped just before) to let go of the file.
async fn open(dir: &std::path::Path) -> EmbeddedBus {
    for _ in 0..100 {
        match EmbeddedBus::open(dir, "t.") {
            Ok(bus) => return bus,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("queue file still locked");
}

async fn next(sub: &Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("a record within 5s")
        .expect("recv")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_keep_their_order_and_unacknowledged_work_comes_back_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let bus = open(dir.path()).await;
        bus.ensure_topics(&[spec("work", 4, false)])
            .await
            .expect("topics");
        let publisher = bus.publisher();
        for i in 0..100 {
            let payload = format!("{i}");
            publisher
                .send(
                    "work",
                    None,
                    &format!("k{}", i % 10),
                    Some(payload.as_bytes()),
                )
                .await
                .expect("published");
        }
        let sub = bus.subscribe("g", &["work"]).expect("subscribe");
        let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut deliveries = Vec::new();
        for _ in 0..100 {
            let d = next(&sub).await;
            let n: i64 = String::from_utf8_lossy(d.payload.as_deref().unwrap_or_default())
                .parse()
                .expect("number");
            let key = d.key.clone().unwrap_or_default();
            assert!(
                last.get(&key).is_none_or(|prev| *prev < n),
                "order of {key:?}"
            );
            last.insert(key, n);
            deliveries.push((n, d));
        }
        // Acknowledge everything but the last record of each key (90 to 99).
        for (n, d) in deliveries {
            if n < 90 {
                d.ack();
            }
        }
        sub.commit().await.expect("commit");
        assert_eq!(sub.in_flight(), 10);
    }
    // A new process: the group resumes from its committed positions, so the unacknowledged
    // records (and everything after them in their partition) are delivered again.
    let bus = open(dir.path()).await;
    bus.ensure_topics(&[spec("work", 4, false)])
        .await
        .expect("same topics");
    let sub = bus.subscribe("g", &["work"]).expect("subscribe");
    let mut again = Vec::new();
    while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(300), sub.recv()).await {
        again.push(String::from_utf8_lossy(d.payload.as_deref().unwrap_or_default()).to_string());
    }
    for i in 90..100 {
        assert!(again.contains(&i.to_string()), "{i} redelivered: {again:?}");
    }
    assert_eq!(
        again.len(),
        10,
        "acknowledged records are not redelivered: {again:?}"
    );
    // Another group starts from the beginning.
    let other = bus.subscribe("h", &["work"]).expect("subscribe");
    let mut count = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), other.recv()).await {
        count += 1;
    }
    assert_eq!(count, 100);
    // A different partition count is refused, naming the topic.
    let err = bus
        .ensure_topics(&[spec("work", 8, false)])
        .await
        .expect_err("partition change refused");
    assert!(err.to_string().contains("work"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_topics_keep_the_latest_value_per_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(dir.path()).await;
    bus.ensure_topics(&[spec("state", 1, true)])
        .await
        .expect("topics");
    let p = bus.publisher();
    p.send("state", None, "a", Some(b"1")).await.expect("a1");
    p.send("state", None, "b", Some(b"1")).await.expect("b1");
    p.send("state", None, "a", Some(b"2")).await.expect("a2");
    p.send("state", None, "b", None).await.expect("b tombstone");
    p.send("state", None, "c", Some(b"1")).await.expect("c1");
    let records = bus
        .state_reader()
        .read_partition("state", 0)
        .expect("replay");
    // The tombstone stays (for TOMBSTONE_RETENTION), so a replay from a checkpoint before it
    // learns that "b" is gone.
    assert_eq!(
        records,
        vec![
            (b"a".to_vec(), Some(b"2".to_vec())),
            (b"b".to_vec(), None),
            (b"c".to_vec(), Some(b"1".to_vec()))
        ]
    );
    let err = p
        .send("missing", None, "k", Some(b"x"))
        .await
        .expect_err("no such topic");
    assert!(err.to_string().contains("missing"), "{err}");
    // A replay from a checkpoint hands only what came at or after it, with offsets, and
    // says where the partition ends.
    let (_, at) = p.send("state", None, "d", Some(b"1")).await.expect("d1");
    p.send("state", None, "a", Some(b"3")).await.expect("a3");
    let mut seen = Vec::new();
    let end = bus
        .state_reader()
        .replay("state", 0, at, |offset, key, payload| {
            seen.push((offset, key.to_vec(), payload.map(<[u8]>::to_vec)))
        })
        .expect("replay from a checkpoint");
    assert_eq!(end, at + 2);
    assert_eq!(
        seen,
        vec![
            (at, b"d".to_vec(), Some(b"1".to_vec())),
            (at + 1, b"a".to_vec(), Some(b"3".to_vec()))
        ]
    );
    let end_again = bus
        .state_reader()
        .replay("state", 0, end, |_, _, _| panic!("nothing after the end"))
        .expect("replay at the end");
    assert_eq!(end_again, end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumed_records_are_trimmed_and_waiting_consumers_wake_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(dir.path()).await;
    bus.ensure_topics(&[spec("work", 1, false)])
        .await
        .expect("topics");
    let sub = bus.subscribe("g", &["work"]).expect("subscribe");
    let waiting = tokio::spawn({
        let sub = sub.clone();
        async move { next(&sub).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let p = bus.publisher();
    p.send("work", None, "k", Some(b"first"))
        .await
        .expect("first");
    let first = waiting.await.expect("joined");
    assert_eq!(first.payload.as_deref(), Some(&b"first"[..]));
    first.ack();
    for _ in 0..9 {
        p.send("work", None, "k", Some(b"more"))
            .await
            .expect("more");
    }
    for _ in 0..9 {
        next(&sub).await.ack();
    }
    sub.commit().await.expect("commit");
    assert_eq!(bus.trim().await.expect("trim"), 10, "all ten consumed");
    assert_eq!(bus.trim().await.expect("trim"), 0);
    // Offsets keep growing after a trim.
    let (_, offset) = p
        .send("work", None, "k", Some(b"late"))
        .await
        .expect("late");
    assert_eq!(offset, 10);
    assert_eq!(next(&sub).await.offset, 10);
}

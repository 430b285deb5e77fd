//! A zombie: an instance frozen (SIGSTOP) past its session timeout with a copy of an old
//! version on the wire; its partitions move to a second instance, which copies that version and
//! a newer one, and the transient source is emptied. Then the held copy lands and the zombie
//! resumes (SIGCONT). It must not leave the old version above the newer one on the target,
//! publish a status that regresses a COMPLETED entry, or start a garbage collection.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry::bus::Bus;
use support::proxy::{Fault, FaultProxy};
use support::s3::{self, Put};
use support::{wait_until, Buckets, Ferry, TestEnv};

const KEY: &str = "zombie/key";

fn signal(ferry: &Ferry, name: &str) {
    let pid = ferry.pid().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} {pid}");
}

/// The source version the key's latest version on target bucket `n` is a copy of.
async fn latest_copy_of(buckets: &Buckets, n: usize) -> Option<String> {
    let head = buckets.clients[n]
        .head_object()
        .bucket(buckets.bucket(n))
        .key(KEY)
        .send()
        .await
        .ok()?;
    head.metadata()?.get("ferry-source-version-id").cloned()
}

fn count(log: &str, message: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(&format!("\"message\":\"{message}")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_instance_cannot_undo_the_new_owners_work() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "zombie").await;
    let proxy = FaultProxy::start(&env.rgw[1]).await;
    proxy.only_paths_with(KEY);
    proxy.set(Fault::HoldSome);
    let put = |seed: u64| Put {
        key: KEY.into(),
        seed,
        size: 1000 + seed as usize,
        ..Put::default()
    };
    let v1 = s3::put(&buckets.clients[0], &buckets.source, &put(1))
        .await
        .expect("v1 written");

    // The zombie-to-be reaches site-a through the proxy, which holds its upload of v1.
    let direct = buckets.config(&env, true);
    let through_proxy = direct.replace(
        &format!("endpoint = \"{}\"", env.rgw[1]),
        &format!("endpoint = \"{}\"", proxy.endpoint),
    );
    let mut zombie = Ferry::start(&through_proxy);
    wait_until(
        Duration::from_secs(90),
        "the upload of v1 to site-a held on the wire",
        || async { proxy.faulted.load(Ordering::SeqCst) >= 1 },
    )
    .await;
    signal(&zombie, "STOP");

    // The new owner gets the partitions once the zombie's session expires: it copies v1
    // (uncommitted by the zombie) and v2, and empties the transient source.
    let mut owner = Ferry::start(&direct);
    let v2 = s3::put(&buckets.clients[0], &buckets.source, &put(2))
        .await
        .expect("v2 written");
    wait_until(
        Duration::from_secs(180),
        "v1 and v2 COMPLETED by the new owner and the source emptied",
        || async {
            count(&owner.log(), "COMPLETED on every target") >= 2
                && s3::versions(&buckets.clients[0], &buckets.source)
                    .await
                    .is_ok_and(|v| v.is_empty())
        },
    )
    .await;
    assert_eq!(
        latest_copy_of(&buckets, 1).await.as_deref(),
        Some(v2.as_str())
    );

    // The held copy of v1 lands now, above v2; then the zombie wakes up.
    proxy.set(Fault::None);
    wait_until(
        Duration::from_secs(30),
        "the held upload landed",
        || async { latest_copy_of(&buckets, 1).await.as_deref() == Some(v1.as_str()) },
    )
    .await;
    let revoked_before = count(&zombie.log(), "partitions revoked");
    signal(&zombie, "CONT");
    wait_until(
        Duration::from_secs(60),
        "the zombie's consumers to learn they lost their partitions",
        || async { count(&zombie.log(), "partitions revoked") > revoked_before },
    )
    .await;
    wait_until(
        Duration::from_secs(60),
        "site-a's latest version to be the copy of v2 again",
        || async { latest_copy_of(&buckets, 1).await.as_deref() == Some(v2.as_str()) },
    )
    .await;
    // And it stays so.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        latest_copy_of(&buckets, 1).await.as_deref(),
        Some(v2.as_str()),
        "site-a: the newer version stays the latest"
    );
    assert_eq!(
        latest_copy_of(&buckets, 2).await.as_deref(),
        Some(v2.as_str()),
        "site-b"
    );

    // No entry's state regressed from COMPLETED in the status changelog.
    let bus = Bus::connect(&buckets.queue(&env)).expect("bus");
    let reader = bus.state_reader().expect("reader");
    let mut states: HashMap<String, Vec<String>> = HashMap::new();
    for p in 0..4 {
        for (key, value) in reader
            .read_partition(&format!("{}.status-state", buckets.id), p)
            .await
            .expect("status-state partition read")
        {
            let Some(value) = value else { continue };
            let state: serde_json::Value = serde_json::from_slice(&value).expect("state record");
            states
                .entry(String::from_utf8_lossy(&key).into_owned())
                .or_default()
                .push(state["overall"].as_str().unwrap_or("?").to_string());
        }
    }
    for (entry, history) in &states {
        eprintln!("status-state {entry}: {history:?}");
        if let Some(done) = history.iter().position(|s| s == "COMPLETED") {
            assert!(
                history[done..].iter().all(|s| s == "COMPLETED"),
                "{entry} regressed after COMPLETED: {history:?}"
            );
        }
    }
    assert_eq!(states.len(), 2, "one state per version");

    let zombie_log = zombie.logs();
    eprintln!(
        "zombie: {} late copies undone, {} effects dropped; new owner: {} COMPLETED",
        count(
            &zombie_log,
            "a copy written after this member lost the partition"
        ),
        count(&zombie_log, "partition no longer ours"),
        count(&owner.log(), "COMPLETED on every target")
    );
    assert_eq!(
        count(&zombie_log, "COMPLETED on every target"),
        0,
        "the zombie completed nothing (so published no GC task)"
    );
    assert_eq!(
        count(&zombie_log, "transient source copy deleted"),
        0,
        "the zombie deleted nothing from the source"
    );
    assert!(owner.terminate(Duration::from_secs(30)).is_some());
    assert!(zombie.terminate(Duration::from_secs(30)).is_some());
    buckets.remove().await;
}

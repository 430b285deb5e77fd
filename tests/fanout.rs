//! Fan-out: a version replicated to three targets is read from the source once.

mod support;

use std::time::Duration;

use support::s3::{self, Put};
use support::{wait_until, Buckets, Ferry, TestEnv};

/// The `replication totals` line ferry logs when its replication stage stops.
fn totals(log: &str) -> serde_json::Value {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "replication totals")
        .unwrap_or_else(|| panic!("no replication totals in the log:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_targets_cost_one_source_read() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "fanout").await;
    let third = format!("{}-c", buckets.id);
    s3::create_bucket(&buckets.clients[1], &third, true).await;

    // Six of different sizes, then a backlog of small ones (more than a target's concurrency):
    // under a backlog the targets' copies must stay in step, not drift apart and re-read.
    let mut sizes: Vec<usize> = vec![30 << 20, 1, 1000, 100_000, 3 << 20, 0];
    sizes.extend(std::iter::repeat_n(2000, 300));
    let mut total = 0u64;
    for (i, size) in sizes.iter().enumerate() {
        s3::put(
            &buckets.clients[0],
            &buckets.source,
            &Put {
                key: format!("f/{i}"),
                seed: i as u64,
                size: *size,
                ..Put::default()
            },
        )
        .await;
        total += *size as u64;
    }
    let cfg = buckets
        .config(&env, false)
        .replace("targets = [\"site-a\", \"site-b\"]", "targets = [\"site-a\", \"site-b\", \"site-c\"]")
        + &format!(
            "\n[locations.site-c]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{third}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            env.rgw[1], env.access_key, env.secret_key
        );
    let mut ferry = Ferry::start(&cfg);
    let objects = sizes.len();
    wait_until(
        Duration::from_secs(180),
        "every object on the three targets",
        || async {
            let third_count = s3::versions(&buckets.clients[1], &third)
                .await
                .map(|v| v.len())
                .unwrap_or(0);
            buckets.target_counts().await == (objects, objects) && third_count == objects
        },
    )
    .await;
    let status = ferry.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()));
    let totals = totals(&ferry.log());
    let (read, written) = (
        totals["source_bytes"].as_u64().unwrap_or(0),
        totals["target_bytes"].as_u64().unwrap_or(0),
    );
    eprintln!(
        "{total} bytes of objects: {read} bytes read from the source, {written} written to targets"
    );
    assert_eq!(
        read, total,
        "each version read from the source exactly once"
    );
    assert_eq!(
        written,
        3 * total,
        "each version written to each of the three targets"
    );
    for (i, size) in sizes.iter().enumerate().take(6) {
        let got = s3::fetch(&buckets.clients[1], &third, &format!("f/{i}"), None).await;
        assert!(
            got.body == s3::data(i as u64, *size),
            "content of f/{i} on the third target"
        );
    }
    s3::remove_bucket(&buckets.clients[1], &third).await;
    buckets.remove().await;
}

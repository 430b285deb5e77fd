//! The admin server of a running ferry (real broker, real S3 servers): health, readiness,
//! metrics that match what was replicated, and logs that never show a secret.

mod support;

use std::time::Duration;

use support::admin::{get, port as admin_port};
use support::s3::{self, Put};
use support::{wait_until, Buckets, Ferry, TestEnv};

const TIMEOUT: Duration = Duration::from_secs(180);

/// The value of the sample `name` (with its exact label set) in a metrics page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_was_replicated_and_logs_hold_no_secret() {
    let env = TestEnv::get();
    let buckets = Buckets::create(&env, "admin").await;
    let mut ferry = Ferry::start(&buckets.config(&env, true));
    wait_until(Duration::from_secs(60), "the admin server", || async {
        admin_port(&ferry.log()).is_some()
    })
    .await;
    let port = admin_port(&ferry.log()).expect("port");
    assert_eq!(get(port, "/healthz").await.0, 200);

    let mut bytes = 0u64;
    let count = 25u64;
    for i in 0..count {
        let put = Put {
            key: format!("m/{i:03}"),
            seed: i,
            size: 1000 + i as usize * 100,
            ..Put::default()
        };
        bytes += put.size as u64;
        s3::put(&buckets.clients[0], &buckets.source, &put).await;
    }
    // The status processor counts an entry COMPLETED once all its writes of the batch are
    // durable; the GC task is one of them, so a deletion may be counted first.
    wait_until(TIMEOUT, "every object replicated and collected", || async {
        let page = get(port, "/metrics").await.1;
        sample(&page, "ferry_gc_deletions_total") == Some(count as f64)
            && sample(&page, "ferry_entries_completed_total") == Some(count as f64)
    })
    .await;

    let page = get(port, "/metrics").await.1;
    for target in ["site-a", "site-b"] {
        assert_eq!(
            sample(
                &page,
                &format!("ferry_objects_replicated_total{{target=\"{target}\"}}")
            ),
            Some(count as f64),
            "{target}: {page}"
        );
        assert_eq!(
            sample(
                &page,
                &format!("ferry_bytes_replicated_total{{target=\"{target}\"}}")
            ),
            Some(bytes as f64),
            "{target} bytes"
        );
    }
    assert_eq!(
        sample(&page, "ferry_entries_completed_total"),
        Some(count as f64)
    );
    assert_eq!(
        sample(&page, "ferry_replication_latency_seconds_count"),
        Some(count as f64)
    );
    assert_eq!(
        sample(&page, "ferry_entries_enqueued_total"),
        Some(count as f64)
    );
    assert_eq!(sample(&page, "ferry_entries_in_flight"), Some(0.0));

    // librdkafka reports lag every 5 s: the replication group has consumed everything.
    let lag = format!(
        "ferry_consumer_lag{{group=\"{id}.replication\",topic=\"{id}.replication\"}}",
        id = buckets.id
    );
    wait_until(
        Duration::from_secs(30),
        "replication lag reported as 0",
        || async { sample(&get(port, "/metrics").await.1, &lag) == Some(0.0) },
    )
    .await;
    let page = get(port, "/metrics").await.1;
    assert_eq!(
        sample(&page, "ferry_target_backlog{target=\"site-b\"}"),
        Some(0.0),
        "{page}"
    );

    let (status, body) = get(port, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["ready"], true, "{body}");
    assert_eq!(ready["stages"]["replication"], true, "{body}");

    // A target down: readiness says which check failed.
    support::rgw("stop-rgw", 2);
    let (status, body) = get(port, "/readyz").await;
    support::rgw("start-rgw", 2);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("location site-b"), "{body}");

    assert_eq!(
        ferry
            .terminate(Duration::from_secs(30))
            .and_then(|s| s.code()),
        Some(0)
    );
    let log = ferry.log();
    assert!(!log.is_empty());
    assert!(
        !log.contains(&env.secret_key),
        "the S3 secret key appears in the log"
    );
    buckets.remove().await;
}

//! An S3 location's object data against a real radosgw: what ferry's PutObject writes is what
//! the SDK reads back (bytes, headers, metadata, tags, version), what its GetObject reads is
//! what the SDK wrote, and failures are classified and name what failed.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use ferry::config::{
    ChecksumCalculation, LocationConfig, LocationKind, RetryPolicy, StaticCredentials,
};
use ferry::storage::{ErrorKind, ObjectMeta, S3Store, Store};
use support::{s3, unique, TestEnv};

fn location(env: &TestEnv, endpoint: &str, bucket: &str, secret: &str) -> LocationConfig {
    LocationConfig {
        name: "gateway".into(),
        kind: LocationKind::S3,
        endpoint: Some(endpoint.into()),
        region: "us-east-1".into(),
        bucket: bucket.into(),
        path_style: true,
        credentials: Some(StaticCredentials {
            access_key_id: env.access_key.clone(),
            secret_access_key: secret.into(),
        }),
        checksum_calculation: ChecksumCalculation::WhenRequired,
        transient: false,
        concurrency: 1,
        retry: RetryPolicy {
            max_attempts: 1,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        },
    }
}

fn md5_base64(data: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

async fn read_all(
    store: &Store,
    key: &str,
    version: Option<&str>,
) -> (ferry::storage::ObjectHead, Vec<u8>) {
    let (head, mut body) = store.get(key, version).await.expect("get");
    let mut bytes = Vec::new();
    while let Some(chunk) = body.chunk().await.expect("body chunk") {
        bytes.extend_from_slice(&chunk);
    }
    (head, bytes)
}

#[tokio::test]
async fn object_data_round_trips_with_the_sdk_and_failures_name_what_failed() {
    let env = TestEnv::get();
    let client = s3::client(&env, 0);
    let bucket = format!("{}-store", unique("wire"));
    s3::create_bucket(&client, &bucket, true).await;
    let s3_store = S3Store::connect(&location(&env, &env.rgw[0], &bucket, &env.secret_key)).await;
    assert!(
        s3_store.direct(),
        "radosgw with static keys takes the direct path"
    );
    let store = Store::S3(s3_store);

    // ferry writes, the SDK reads: a key that needs encoding, every header ferry copies.
    let key = "dir one/ü+x?&=%.bin";
    let data = s3::data(7, 20_000);
    let meta = ObjectMeta {
        content_type: Some("application/x-test".into()),
        cache_control: Some("max-age=60".into()),
        content_disposition: Some("attachment; filename=\"a b.bin\"".into()),
        content_encoding: Some("identity".into()),
        user: HashMap::from([
            ("origin".to_string(), "site-a".to_string()),
            ("two-words".to_string(), "v 1".to_string()),
        ]),
    };
    let tagging = ferry::storage::encode_tagging(&[
        ("team".into(), "a&b".into()),
        ("tier".into(), "gold".into()),
    ]);
    let first = store
        .put(
            key,
            Bytes::from(data.clone()),
            &md5_base64(&data),
            &meta,
            tagging,
        )
        .await
        .expect("put");
    let version = first
        .version_id
        .clone()
        .expect("a versioned bucket names the version");
    let fetched = s3::fetch(&client, &bucket, key, Some(&version)).await;
    assert_eq!(fetched.body, data);
    assert_eq!(fetched.content_type, meta.content_type);
    assert_eq!(fetched.cache_control, meta.cache_control);
    assert_eq!(fetched.content_disposition, meta.content_disposition);
    assert_eq!(fetched.content_encoding, meta.content_encoding);
    assert_eq!(fetched.metadata, meta.user);
    let tags = vec![
        ("team".to_string(), "a&b".to_string()),
        ("tier".to_string(), "gold".to_string()),
    ];
    assert_eq!(fetched.tags, tags);

    // A newer version on top; ferry reads each version exactly, with its head.
    let newer = s3::data(8, 3);
    store
        .put(
            key,
            Bytes::from(newer.clone()),
            &md5_base64(&newer),
            &ObjectMeta::default(),
            None,
        )
        .await
        .expect("second put");
    let (head, bytes) = read_all(&store, key, Some(&version)).await;
    assert_eq!(bytes, data);
    assert_eq!(head.size, data.len() as u64);
    assert_eq!(head.version_id.as_deref(), Some(version.as_str()));
    assert_eq!(head.etag, first.etag);
    assert_eq!(head.meta, meta);
    assert_eq!(head.tag_count, 2);
    assert!(
        head.last_modified_ms > 1_600_000_000_000,
        "{}",
        head.last_modified_ms
    );
    let (head, bytes) = read_all(&store, key, None).await;
    assert_eq!(bytes, newer);
    assert_eq!(head.tag_count, 0);
    assert!(head.meta.user.is_empty());

    // The SDK writes, ferry reads.
    let written = s3::Put {
        key: "from the sdk/ä".into(),
        seed: 9,
        size: 70_000,
        content_type: Some("text/plain".into()),
        cache_control: Some("no-cache".into()),
        metadata: HashMap::from([("written-by".to_string(), "sdk".to_string())]),
        tagging: Some("k=v".into()),
        ..Default::default()
    };
    let sdk_version = s3::put(&client, &bucket, &written).await;
    let (head, bytes) = read_all(&store, &written.key, sdk_version.as_deref()).await;
    assert_eq!(bytes, s3::data(9, 70_000));
    assert_eq!(head.version_id, sdk_version);
    assert_eq!(head.meta.content_type, written.content_type);
    assert_eq!(head.meta.cache_control, written.cache_control);
    assert_eq!(head.meta.user, written.metadata);
    assert_eq!(head.tag_count, 1);

    // Bytes that are not what Content-MD5 says are refused, and nothing is written.
    let wrong = store
        .put(
            "corrupt",
            Bytes::from_static(b"abc"),
            &md5_base64(b"abd"),
            &meta,
            None,
        )
        .await
        .expect_err("a wrong Content-MD5 is refused");
    assert_eq!(wrong.kind, ErrorKind::Transient, "{wrong}");
    assert!(wrong.message.contains("BadDigest"), "{wrong}");
    assert_eq!((wrong.op, wrong.key.as_str()), ("PutObject", "corrupt"));
    let missing = store
        .get("corrupt", None)
        .await
        .err()
        .expect("nothing was written");
    assert_eq!(missing.kind, ErrorKind::NotFound, "{missing}");
    assert!(missing.message.contains("NoSuchKey"), "{missing}");
    assert_eq!(missing.op, "GetObject");

    // A missing bucket, a wrong secret, a server that is not there.
    let other = format!("{bucket}-absent");
    let absent =
        Store::S3(S3Store::connect(&location(&env, &env.rgw[0], &other, &env.secret_key)).await);
    let e = absent.get(key, None).await.err().expect("no such bucket");
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.message.contains("NoSuchBucket"), "{e}");
    let forged =
        Store::S3(S3Store::connect(&location(&env, &env.rgw[0], &bucket, "not-the-secret")).await);
    let e = forged
        .put(
            key,
            Bytes::from_static(b"x"),
            &md5_base64(b"x"),
            &meta,
            None,
        )
        .await;
    let e = e.expect_err("a wrong secret is refused");
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert!(e.message.contains("SignatureDoesNotMatch"), "{e}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = closed.local_addr().expect("its address").port();
    drop(closed);
    let down = Store::S3(
        S3Store::connect(&location(
            &env,
            &format!("http://127.0.0.1:{port}"),
            &bucket,
            &env.secret_key,
        ))
        .await,
    );
    let e = down
        .get(key, None)
        .await
        .err()
        .expect("nothing listens there");
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");

    // The SDK's checksums asked for: the SDK makes these requests itself.
    let mut supported = location(&env, &env.rgw[0], &bucket, &env.secret_key);
    supported.checksum_calculation = ChecksumCalculation::WhenSupported;
    assert!(!S3Store::connect(&supported).await.direct());

    s3::remove_bucket(&client, &bucket).await;
}

//! The fs location as the place ferry holds the only copy of someone's data: many clients
//! writing through the ingest endpoint while the scan lists and the garbage collector deletes
//! under the same prefix, and ordinary files that another program puts in a source directory
//! or in the buffer. Real endpoint, embedded queue, fs and radosgw targets.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

use support::admin::{cli_ok, port};
use support::{files, free_port, s3, unique, wait_until, Ferry, TestEnv};

const TIMEOUT: Duration = Duration::from_secs(600);

/// Every path under `dir` (directories too).
fn everything(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.display().to_string());
            }
            if path.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The current object of `key` in an S3 target: its bytes and the source version it copies.
async fn s3_current(client: &Client, bucket: &str, key: &str) -> Option<(Vec<u8>, String)> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .ok()?;
    let stamp = out
        .metadata()
        .and_then(|m| m.get("ferry-source-version-id"))
        .cloned()
        .unwrap_or_default();
    let body = out.body.collect().await.ok()?.into_bytes().to_vec();
    Some((body, stamp))
}

/// The body of the `n`th write of `key`: its key and round, padded to about 1 KiB.
fn body_of(key: &str, round: usize) -> Vec<u8> {
    let line = format!("{key} write {round}\n");
    line.repeat(1024 / line.len() + 1).into_bytes()
}

/// The last acknowledged write of each key: its bytes and version id.
type Acked = BTreeMap<String, (Vec<u8>, String)>;

fn key_of(i: usize) -> String {
    match i % 4 {
        0 | 1 => format!("round0/f{i:06}"),
        n => format!("round0/sub{}/deeper/f{i:06}", n + i % 3),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_writers_through_the_endpoint_while_scan_and_gc_run_lose_nothing() {
    const WRITERS: usize = 16;
    const KEYS_PER_WRITER: usize = 640;
    /// Every fourth key is written a second time (an overwrite): 10,240 objects, 12,800 PUTs.
    const OVERWRITE_EVERY: usize = 4;
    let env = TestEnv::get();
    let target = unique("fsbuf");
    let s3_client = s3::client(&env, 1);
    s3::create_bucket(&s3_client, &target, true).await;
    let dir = tempfile::Builder::new()
        .prefix("ferry-fsbuf-")
        .tempdir()
        .expect("tempdir");
    let (buffer, site) = (dir.path().join("buffer"), dir.path().join("site-a"));
    let ingest = free_port();
    let config = format!(
        r#"
shutdown_timeout = "20s"

[queue]
kind = "embedded"
path = "{queue}"
partitions = 4

[ingest]
listen = "127.0.0.1:{ingest}"
location = "inbox"
access_key_id = "k"
secret_access_key = "s"

[locations.inbox]
kind = "fs"
path = "{buffer}"
transient = true

[locations.site-a]
kind = "fs"
path = "{site}"

[locations.site-s3]
kind = "s3"
endpoint = "{rgw}"
bucket = "{target}"
access_key_id = "{ak}"
secret_access_key = "{sk}"

[[rules]]
name = "all"
source = "inbox"
targets = ["site-a", "site-s3"]

[populator]
feeds = ["scan"]
scan_interval = "1s"

[admin]
listen = "127.0.0.1:0"

[replication]
retry_initial_delay = "200ms"
retry_max_delay = "2s"
"#,
        queue = dir.path().join("queue").display(),
        buffer = buffer.display(),
        site = site.display(),
        rgw = env.rgw[1],
        ak = env.access_key,
        sk = env.secret_key,
    );
    let mut ferry = Ferry::start(&config);
    wait_until(Duration::from_secs(60), "the ingest endpoint", || async {
        ferry.log().contains("ingest endpoint ready")
    })
    .await;

    // Each writer owns its keys, so the last acknowledged write of each is known.
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (acked, refused) = (acked.clone(), refused.clone());
        let client = s3::endpoint_client(ingest, "k", "s");
        writers.push(tokio::spawn(async move {
            for n in 0..KEYS_PER_WRITER {
                let key = key_of(n * WRITERS + w);
                let rounds = if n % OVERWRITE_EVERY == 0 { 2 } else { 1 };
                for round in 0..rounds {
                    let body = body_of(&key, round);
                    match client
                        .put_object()
                        .bucket("inbox")
                        .key(&key)
                        .body(ByteStream::from(body.clone()))
                        .send()
                        .await
                    {
                        Ok(out) => {
                            let version = out.version_id().unwrap_or_default().to_string();
                            acked.lock().unwrap().insert(key.clone(), (body, version));
                        }
                        Err(e) => {
                            let status = e.raw_response().map(|r| r.status().as_u16());
                            let message = e.message().unwrap_or_default().to_string();
                            refused
                                .lock()
                                .unwrap()
                                .push(format!("{key}: {status:?} {message}"));
                        }
                    }
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("a writer");
    }
    let refused = refused.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    let tmp = dir.path().display().to_string();
    assert!(
        refused.iter().all(|r| !r.contains("Some(404)")),
        "a PUT was answered 404: {:?}",
        &refused[..refused.len().min(5)]
    );
    assert!(
        refused
            .iter()
            .all(|r| !r.contains(&tmp) && !r.contains(".ferry")),
        "an answer carries a server path: {:?}",
        &refused[..refused.len().min(5)]
    );
    // The SDK retries a 503 itself: every write is acknowledged in the end.
    assert!(
        refused.is_empty(),
        "refused writes: {:?}",
        &refused[..refused.len().min(5)]
    );
    assert_eq!(acked.len(), WRITERS * KEYS_PER_WRITER);

    wait_until(TIMEOUT, "the buffer is empty", || async {
        files(&buffer).is_empty()
    })
    .await;
    // Every acknowledged object's last write is on both targets.
    let mut missing = Vec::new();
    for (key, (body, version)) in &acked {
        let on_fs = std::fs::read(site.join(key)).ok();
        if on_fs.as_ref() != Some(body) {
            missing.push(format!("site-a {key}"));
        }
        match s3_current(&s3_client, &target, key).await {
            Some((bytes, stamp)) if bytes == *body && stamp == *version => {}
            other => missing.push(format!(
                "site-s3 {key}: {:?}",
                other.map(|(b, s)| (b.len(), s))
            )),
        }
    }
    assert!(
        missing.is_empty(),
        "{} copies missing or stale, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // No data file, no sidecar, no directory of the keys left in the buffer.
    let left: Vec<String> = everything(&buffer)
        .into_iter()
        .filter(|p| {
            !matches!(
                p.as_str(),
                ".ferry"
                    | ".ferry/meta"
                    | ".ferry/tmp"
                    | ".ferry/uploads"
                    | ".ferry/clock"
                    | ".ferry/lock"
            )
        })
        .collect();
    assert!(
        left.is_empty(),
        "left in the buffer: {:?}",
        &left[..left.len().min(10)]
    );
    ferry.terminate(Duration::from_secs(30));
    s3::remove_bucket(&s3_client, &target).await;
}

/// Writes `data` to `path` as another program would: created in place, not renamed.
fn write_in_place(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, data).expect("write");
}

/// The ordinary files the next test places, with their final contents.
fn ordinary_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("top.txt", b"at the top".to_vec()),
        ("docs/2026/12/report.txt", b"nested three deep".to_vec()),
        ("a/b/c/d/e/deep.bin", s3::data(5, 4096)),
        ("empty", Vec::new()),
        ("large/video.bin", s3::data(7, 21 << 20)),
    ]
}

/// What a target holds of `key`: its bytes, or `None`.
async fn held(
    fs_target: &Path,
    s3_client: &Client,
    bucket: &str,
    key: &str,
) -> [Option<Vec<u8>>; 2] {
    [
        std::fs::read(fs_target.join(key)).ok(),
        s3_current(s3_client, bucket, key).await.map(|(b, _)| b),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_files_in_a_source_and_in_a_buffer_are_replicated_once_stable() {
    let env = TestEnv::get();
    let id = unique("plain");
    let s3_client = s3::client(&env, 1);
    let (bucket_src, bucket_buf) = (format!("{id}-src"), format!("{id}-buf"));
    s3::create_bucket(&s3_client, &bucket_src, true).await;
    s3::create_bucket(&s3_client, &bucket_buf, true).await;
    let dir = tempfile::Builder::new()
        .prefix("ferry-plain-")
        .tempdir()
        .expect("tempdir");
    let path = |name: &str| -> PathBuf { dir.path().join(name) };
    let config = format!(
        r#"
shutdown_timeout = "20s"

[queue]
kind = "embedded"
path = "{queue}"
partitions = 4

[locations.plain]
kind = "fs"
path = "{plain}"
stable_after = "4s"

[locations.buffer]
kind = "fs"
path = "{buffer}"
transient = true
stable_after = "4s"

[locations.fs-src]
kind = "fs"
path = "{fs_src}"

[locations.fs-buf]
kind = "fs"
path = "{fs_buf}"

[locations.s3-src]
kind = "s3"
endpoint = "{rgw}"
bucket = "{bucket_src}"
access_key_id = "{ak}"
secret_access_key = "{sk}"

[locations.s3-buf]
kind = "s3"
endpoint = "{rgw}"
bucket = "{bucket_buf}"
access_key_id = "{ak}"
secret_access_key = "{sk}"

[[rules]]
name = "plain"
source = "plain"
targets = ["fs-src", "s3-src"]

[[rules]]
name = "buffer"
source = "buffer"
targets = ["fs-buf", "s3-buf"]

[populator]
feeds = ["scan"]
scan_interval = "1s"

[admin]
listen = "127.0.0.1:0"

[replication]
multipart_threshold = "8MiB"
part_size = "5MiB"
retry_initial_delay = "200ms"
retry_max_delay = "1s"
"#,
        queue = path("queue").display(),
        plain = path("plain").display(),
        buffer = path("buffer").display(),
        fs_src = path("fs-src").display(),
        fs_buf = path("fs-buf").display(),
        rgw = env.rgw[1],
        ak = env.access_key,
        sk = env.secret_key,
    );
    let mut ferry = Ferry::start(&config);
    wait_until(Duration::from_secs(60), "the admin server", || async {
        port(&ferry.log()).is_some()
    })
    .await;
    let admin = port(&ferry.log()).expect("the admin port");
    // The buffer's S3 target is paused first: nothing may leave the buffer before it holds it.
    cli_ok(admin, &["targets", "pause", "s3-buf", "--reason", "test"]).await;

    for root in ["plain", "buffer"] {
        for (key, data) in ordinary_files() {
            write_in_place(&path(root).join(key), &data);
        }
    }
    // A file that keeps growing for 6 s while the scan runs every second, in both.
    let growing: Vec<u8> = s3::data(11, 64 * 1024);
    let writer = {
        let (plain, buffer, growing) = (path("plain"), path("buffer"), growing.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut files: Vec<std::fs::File> = [plain, buffer]
                .iter()
                .map(|root| {
                    std::fs::create_dir_all(root.join("logs")).expect("mkdir");
                    std::fs::File::create(root.join("logs/growing.log")).expect("create")
                })
                .collect();
            for chunk in growing.chunks(growing.len() / 12) {
                for file in &mut files {
                    file.write_all(chunk).expect("append");
                    file.flush().expect("flush");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let mut expected: BTreeMap<&str, Vec<u8>> = ordinary_files().into_iter().collect();
    expected.insert("logs/growing.log", growing.clone());

    // The source's files reach both of its targets, byte for byte, the growing one whole.
    wait_until(TIMEOUT, "the source's files on both targets", || async {
        for (key, data) in &expected {
            let [fs, s3] = held(&path("fs-src"), &s3_client, &bucket_src, key).await;
            if fs.as_ref() != Some(data) || s3.as_ref() != Some(data) {
                return false;
            }
        }
        true
    })
    .await;
    writer.join().expect("the growing file's writer");
    // The buffer's files reach the fs target, and stay in the buffer while s3-buf is paused.
    wait_until(TIMEOUT, "the buffer's files on fs-buf", || async {
        for (key, data) in &expected {
            if std::fs::read(path("fs-buf").join(key)).ok().as_ref() != Some(data) {
                return false;
            }
        }
        true
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut in_buffer = files(&path("buffer"));
    let mut want: Vec<String> = expected.keys().map(|k| k.to_string()).collect();
    want.sort();
    in_buffer.sort();
    assert_eq!(
        in_buffer, want,
        "nothing leaves the buffer before every target holds it"
    );
    // A buffer file replaced in place while s3-buf is paused: its first version, which fs-buf
    // holds, is never deleted in its place; the new one is replicated to both, then deleted.
    let rewritten = b"the buffer's top.txt, written again in place".to_vec();
    write_in_place(&path("buffer").join("top.txt"), &rewritten);
    expected.insert("top.txt", rewritten.clone());
    wait_until(TIMEOUT, "the rewritten buffer file on fs-buf", || async {
        std::fs::read(path("fs-buf").join("top.txt")).ok().as_ref() == Some(&rewritten)
    })
    .await;
    assert_eq!(
        std::fs::read(path("buffer").join("top.txt")).ok().as_ref(),
        Some(&rewritten),
        "the new version stays in the buffer while s3-buf is paused"
    );
    cli_ok(admin, &["targets", "resume", "s3-buf"]).await;
    wait_until(
        TIMEOUT,
        "the buffer empties once s3-buf holds everything",
        || async { files(&path("buffer")).is_empty() },
    )
    .await;
    for (key, data) in &expected {
        let [fs, s3] = held(&path("fs-buf"), &s3_client, &bucket_buf, key).await;
        assert_eq!(fs.as_ref(), Some(data), "fs-buf {key}");
        assert_eq!(s3.as_ref(), Some(data), "s3-buf {key}");
    }

    // A file of the source replaced in place (same path, new bytes): the new version is
    // replicated over the old one.
    let replaced = b"the second content of top.txt, longer than the first".to_vec();
    write_in_place(&path("plain").join("top.txt"), &replaced);
    wait_until(TIMEOUT, "the replaced file on both targets", || async {
        let [fs, s3] = held(&path("fs-src"), &s3_client, &bucket_src, "top.txt").await;
        fs.as_ref() == Some(&replaced) && s3.as_ref() == Some(&replaced)
    })
    .await;
    // Nothing FAILED: the buffer's first top.txt, gone when it was written again, is
    // superseded at the source, not a failure.
    let failed = support::admin::get_json(admin, "/api/v1/failed").await;
    assert_eq!(
        failed["entries"].as_array().map(Vec::len),
        Some(0),
        "{failed}"
    );
    // Each S3 target version of the growing file is the whole file: never a partial copy.
    let versions = s3::versions(&s3_client, &bucket_src)
        .await
        .expect("versions");
    for v in versions.iter().filter(|v| v.key == "logs/growing.log") {
        let fetched = s3::fetch(&s3_client, &bucket_src, &v.key, v.version_id.as_deref()).await;
        assert_eq!(
            fetched.body.len(),
            growing.len(),
            "a partial copy of the growing file"
        );
        assert!(
            fetched.body == growing,
            "a copy of the growing file with other bytes"
        );
    }
    ferry.terminate(Duration::from_secs(30));
    s3::remove_bucket(&s3_client, &bucket_src).await;
    s3::remove_bucket(&s3_client, &bucket_buf).await;
}

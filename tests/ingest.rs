//! ferry on one host: the S3 ingest endpoint writing into a transient local buffer, two local
//! targets, the embedded queue — no broker, no S3 server. Driven with aws-sdk-s3 as a client.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;

use support::{files, free_port, wait_until, Ferry};

const TIMEOUT: Duration = Duration::from_secs(120);

struct Site {
    dir: tempfile::TempDir,
    port: u16,
}

impl Site {
    fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("ferry-ingest-")
                .tempdir()
                .expect("tempdir"),
            port: free_port(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> String {
        format!(
            r#"
shutdown_timeout = "20s"

[queue]
kind = "embedded"
path = "{queue}"
partitions = 4

[ingest]
listen = "127.0.0.1:{port}"
location = "inbox"
access_key_id = "ingestkey"
secret_access_key = "ingestsecret"

[locations.inbox]
kind = "fs"
path = "{buffer}"
transient = true

[locations.site-a]
kind = "fs"
path = "{a}"

[locations.site-b]
kind = "fs"
path = "{b}"

[[rules]]
name = "all"
source = "inbox"
targets = ["site-a", "site-b"]

[populator]
feeds = ["scan"]
scan_interval = "30s"

[admin]
listen = "127.0.0.1:0"

[replication]
multipart_threshold = "8MiB"
part_size = "5MiB"
retry_initial_delay = "200ms"
retry_max_delay = "2s"
"#,
            queue = self.path("queue").display(),
            port = self.port,
            buffer = self.path("buffer").display(),
            a = self.path("site-a").display(),
            b = self.path("site-b").display(),
        )
    }

    fn client(&self, key: &str, secret: &str) -> Client {
        support::s3::endpoint_client(self.port, key, secret)
    }

    async fn ready(&self, ferry: &Ferry) {
        wait_until(Duration::from_secs(60), "the ingest endpoint", || async {
            ferry.log().contains("ingest endpoint ready")
        })
        .await;
    }
}

fn data(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..size).map(|_| rng.u8(..)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_written_to_the_endpoint_reach_both_targets_and_leave_the_buffer() {
    let site = Site::new();
    let mut ferry = Ferry::start(&site.config());
    site.ready(&ferry).await;
    let client = site.client("ingestkey", "ingestsecret");

    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, size) in [0usize, 1, 1000, 70_000, 3 << 20].into_iter().enumerate() {
        let key = format!("small/{i}-é %.bin");
        let body = data(i as u64, size);
        client
            .put_object()
            .bucket("inbox")
            .key(&key)
            .content_type("application/x-test")
            .metadata("origin", "ingest-test")
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {key}: {:?}", e.into_service_error()));
        expected.push((key, body));
    }

    // Multipart: two 5 MiB parts and a short last one, as a client uploads a large file.
    let key = "large/multipart.bin".to_string();
    let body = data(99, (10 << 20) + 12345);
    let upload = client
        .create_multipart_upload()
        .bucket("inbox")
        .key(&key)
        .send()
        .await
        .expect("create multipart upload");
    let upload_id = upload.upload_id().expect("upload id").to_string();
    let mut parts = Vec::new();
    for (n, chunk) in body.chunks(5 << 20).enumerate() {
        let number = n as i32 + 1;
        let out = client
            .upload_part()
            .bucket("inbox")
            .key(&key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .expect("upload part");
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .e_tag(out.e_tag().unwrap_or_default())
                .build(),
        );
    }
    let done = client
        .complete_multipart_upload()
        .bucket("inbox")
        .key(&key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("complete multipart upload");
    assert!(
        done.e_tag().is_some_and(|t| t.contains("-3")),
        "multipart ETag: {:?}",
        done.e_tag()
    );
    expected.push((key, body));

    let mut keys: Vec<String> = expected.iter().map(|(k, _)| k.clone()).collect();
    keys.sort();
    wait_until(
        TIMEOUT,
        "every object in both targets and none left in the buffer",
        || async {
            files(&site.path("site-a")) == keys
                && files(&site.path("site-b")) == keys
                && files(&site.path("buffer")).is_empty()
        },
    )
    .await;
    for (key, body) in &expected {
        for target in ["site-a", "site-b"] {
            let held = std::fs::read(site.path(target).join(key)).expect("copy readable");
            assert!(held == *body, "{target}/{key}: content differs");
        }
    }

    // Read back: gone from the buffer once replicated, with a message that says so.
    let err = client
        .get_object()
        .bucket("inbox")
        .key("small/1-é %.bin")
        .send()
        .await
        .expect_err("replicated objects leave the buffer");
    assert_eq!(err.into_service_error().code(), Some("NoSuchKey"));
    let listed = client
        .list_objects_v2()
        .bucket("inbox")
        .send()
        .await
        .expect("list");
    assert_eq!(listed.key_count(), Some(0));

    assert_eq!(
        ferry
            .terminate(Duration::from_secs(30))
            .and_then(|s| s.code()),
        Some(0),
        "clean exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_unknown_keys_and_unknown_operations_get_s3_errors() {
    let site = Site::new();
    let mut ferry = Ferry::start(&site.config());
    site.ready(&ferry).await;

    let put = |client: Client| async move {
        client
            .put_object()
            .bucket("inbox")
            .key("x")
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
    };
    let err = put(site.client("ingestkey", "wrongsecret"))
        .await
        .expect_err("a bad signature is refused");
    assert_eq!(
        err.into_service_error().code(),
        Some("SignatureDoesNotMatch")
    );
    let err = put(site.client("nobody", "ingestsecret"))
        .await
        .expect_err("an unknown key is refused");
    assert_eq!(err.into_service_error().code(), Some("InvalidAccessKeyId"));

    let client = site.client("ingestkey", "ingestsecret");
    let err = client
        .get_bucket_acl()
        .bucket("inbox")
        .send()
        .await
        .expect_err("not served");
    assert_eq!(err.into_service_error().code(), Some("NotImplemented"));
    let err = client
        .put_object()
        .bucket("other")
        .key("x")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .expect_err("one bucket only");
    assert_eq!(err.into_service_error().code(), Some("NoSuchBucket"));

    // Unsigned requests are refused too.
    let raw = format!(
        "PUT /inbox/anonymous HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
        site.port
    );
    let response = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", site_port(&raw))).expect("connect");
        stream.write_all(raw.as_bytes()).expect("send");
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        out
    })
    .await
    .expect("joined");
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");

    // Nothing was stored, and the endpoint still works.
    assert!(files(&site.path("buffer")).is_empty());
    put(client.clone()).await.expect("a signed put works");
    assert!(ferry.running(), "ferry survived all of it");
    ferry.terminate(Duration::from_secs(30));
}

/// ListObjects v1 (rclone's default for a generic S3 provider, s3fs, older SDKs) and v2 page
/// the buffer as S3 does: markers and continuation tokens, a delimiter's common prefixes, and
/// `max-keys=0` as an empty page that is not truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_v1_and_v2_page_the_buffer_as_s3_does() {
    let site = Site::new();
    let mut ferry = Ferry::start(&site.config());
    site.ready(&ferry).await;
    // A paused target keeps every object in the buffer (the garbage collector waits for it).
    let admin = support::admin::port(&ferry.log()).expect("the admin port");
    support::admin::cli_ok(admin, &["targets", "pause", "site-a", "--reason", "test"]).await;
    let client = site.client("ingestkey", "ingestsecret");
    for key in ["a/1", "a/2", "b", "c/x/1", "d"] {
        client
            .put_object()
            .bucket("inbox")
            .key(key)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }
    let v1 = |marker: Option<&str>, delimiter: Option<&str>, max_keys: i32| {
        client
            .list_objects()
            .bucket("inbox")
            .set_marker(marker.map(str::to_string))
            .set_delimiter(delimiter.map(str::to_string))
            .max_keys(max_keys)
            .send()
    };
    let keys = |objects: &[aws_sdk_s3::types::Object]| -> Vec<String> {
        objects
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    };
    let prefixes = |common: &[aws_sdk_s3::types::CommonPrefix]| -> Vec<String> {
        common
            .iter()
            .filter_map(|p| p.prefix().map(str::to_string))
            .collect()
    };

    let first = v1(None, Some("/"), 2).await.expect("ListObjects");
    assert_eq!(prefixes(first.common_prefixes()), ["a/"]);
    assert_eq!(keys(first.contents()), ["b"]);
    assert_eq!(first.is_truncated(), Some(true));
    assert_eq!(first.next_marker(), Some("b"));
    let second = v1(first.next_marker(), Some("/"), 2).await.expect("page 2");
    assert_eq!(prefixes(second.common_prefixes()), ["c/"]);
    assert_eq!(keys(second.contents()), ["d"]);
    assert_eq!(second.is_truncated(), Some(false));

    let flat = v1(None, None, 3).await.expect("no delimiter");
    assert_eq!(keys(flat.contents()), ["a/1", "a/2", "b"]);
    assert_eq!(flat.is_truncated(), Some(true));
    let rest = v1(Some("b"), None, 1000).await.expect("after b");
    assert_eq!(keys(rest.contents()), ["c/x/1", "d"]);
    assert_eq!(rest.is_truncated(), Some(false));

    let none = v1(None, None, 0).await.expect("max-keys 0");
    assert!(none.contents().is_empty(), "{none:?}");
    assert_eq!(none.is_truncated(), Some(false));
    let none = client
        .list_objects_v2()
        .bucket("inbox")
        .max_keys(0)
        .send()
        .await
        .expect("v2, max-keys 0");
    assert!(none.contents().is_empty(), "{none:?}");
    assert_eq!(none.is_truncated(), Some(false));
    assert_eq!(none.next_continuation_token(), None);

    let err = client
        .list_objects()
        .bucket("other")
        .send()
        .await
        .expect_err("one bucket only");
    assert_eq!(err.into_service_error().code(), Some("NoSuchBucket"));
    ferry.terminate(Duration::from_secs(30));
}

/// Idle and slow clients cannot hold the endpoint: a connection that sends no complete
/// request headers within `ingest.header_timeout` is closed, and at `ingest.max_connections`
/// further clients wait until a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_time_out_and_the_connection_cap_makes_others_wait() {
    use std::io::{Read, Write};
    use std::time::Instant;
    let site = Site::new();
    let config = site.config().replace(
        "secret_access_key = \"ingestsecret\"\n",
        "secret_access_key = \"ingestsecret\"\nmax_connections = 2\nheader_timeout = \"2s\"\n",
    );
    let mut ferry = Ferry::start(&config);
    site.ready(&ferry).await;
    let port = site.port;
    let outcome = tokio::task::spawn_blocking(move || {
        let connect = || std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        // Two clients take both slots: one sends nothing, one half a request line.
        let silent = connect();
        let mut slow = connect();
        slow.write_all(b"GET /inbox/x HTTP/1.1\r\nHost: ")
            .expect("send");
        std::thread::sleep(Duration::from_millis(300));
        // A third waits in the backlog: its (unsigned) request is answered once a slot frees.
        let started = Instant::now();
        let mut third = connect();
        third
            .write_all(b"GET /inbox/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut answer = String::new();
        let _ = third.read_to_string(&mut answer);
        let waited = started.elapsed();
        // Both stalled clients were closed by the server.
        let closed = |mut stream: std::net::TcpStream| {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).is_ok()
        };
        (answer, waited, closed(silent), closed(slow))
    })
    .await
    .expect("joined");
    let (answer, waited, silent_closed, slow_closed) = outcome;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        waited >= Duration::from_millis(1200),
        "the third client was served after {waited:?}, while both slots were taken"
    );
    assert!(
        waited < Duration::from_secs(10),
        "served only after {waited:?}"
    );
    assert!(silent_closed, "the silent connection was not closed");
    assert!(slow_closed, "the slow connection was not closed");
    assert!(ferry.running());
    ferry.terminate(Duration::from_secs(30));
}

/// Sends `head` (request line and headers, no body) and reads the answer: what the endpoint
/// refuses before the body must be answered without it.
async fn answer_without_body(port: u16, head: String) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(head.as_bytes()).expect("send");
        let mut answer = [0u8; 4096];
        let n = stream.read(&mut answer).unwrap_or(0);
        String::from_utf8_lossy(&answer[..n]).into_owned()
    })
    .await
    .expect("joined")
}

/// What AWS refuses today is refused here too, before a byte of the body is read: SigV2
/// signatures, a credential scope of another region, presigned URLs valid for more than 7
/// days, browser POST uploads, and bodies over the endpoint's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outdated_signatures_other_regions_and_oversized_bodies_are_refused_unread() {
    let site = Site::new();
    let mut ferry = Ferry::start(&site.config());
    site.ready(&ferry).await;
    let port = site.port;
    let host = format!("Host: 127.0.0.1:{port}");
    let refused = |answer: &str, status: &str, code: &str| {
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")) && answer.contains(code),
            "expected {status} {code}: {answer}"
        );
    };
    let sigv2 = answer_without_body(
        port,
        format!("GET /inbox/x HTTP/1.1\r\n{host}\r\nDate: Thu, 03 Dec 2026 14:00:00 GMT\r\nAuthorization: AWS ingestkey:c2lnbmF0dXJl\r\n\r\n"),
    )
    .await;
    refused(&sigv2, "400", "InvalidRequest");
    let presigned_v2 = answer_without_body(
        port,
        format!("GET /inbox/x?AWSAccessKeyId=ingestkey&Expires=1999999999&Signature=c2ln HTTP/1.1\r\n{host}\r\n\r\n"),
    )
    .await;
    refused(&presigned_v2, "400", "InvalidRequest");
    let eight_days = answer_without_body(
        port,
        format!(
            "GET /inbox/x?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ingestkey%2F20261203%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261203T140000Z&X-Amz-Expires=691200&X-Amz-SignedHeaders=host&X-Amz-Signature=00 HTTP/1.1\r\n{host}\r\n\r\n"
        ),
    )
    .await;
    refused(&eight_days, "400", "AuthorizationQueryParametersError");
    // A form upload of 100 MB, refused before the form is sent.
    let post = answer_without_body(
        port,
        format!("POST /inbox HTTP/1.1\r\n{host}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000000\r\n\r\n"),
    )
    .await;
    refused(&post, "501", "NotImplemented");
    let too_big = answer_without_body(
        port,
        format!("PUT /inbox/big?partNumber=1&uploadId=00 HTTP/1.1\r\n{host}\r\nAuthorization: AWS4-HMAC-SHA256 Credential=ingestkey/20261203/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\nContent-Length: {}\r\n\r\n", (64u64 << 20) + 1),
    )
    .await;
    refused(&too_big, "400", "EntityTooLarge");

    // A client that signs for another region, with the right key.
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(Region::new("eu-west-3"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            "ingestkey",
            "ingestsecret",
            None,
            None,
            "test",
        ))
        .build();
    let err = Client::from_conf(config)
        .put_object()
        .bucket("inbox")
        .key("x")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .expect_err("another region is refused");
    assert_eq!(
        err.into_service_error().code(),
        Some("AuthorizationHeaderMalformed")
    );

    // Nothing was stored, and a correct client still writes.
    assert!(files(&site.path("buffer")).is_empty());
    site.client("ingestkey", "ingestsecret")
        .put_object()
        .bucket("inbox")
        .key("x")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .expect("a correct put");
    assert!(ferry.running());
    ferry.terminate(Duration::from_secs(30));
}

/// A web page cannot change anything through the admin API: a cross-site request (its
/// `Origin` or `Sec-Fetch-Site`) and, without a token, a rebound host name are refused; the
/// CLI's requests are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_pause_a_target_through_the_admin_api() {
    use support::admin::{cli_ok, get_json, request};
    let site = Site::new();
    let mut ferry = Ferry::start(&site.config());
    site.ready(&ferry).await;
    let admin = support::admin::port(&ferry.log()).expect("the admin port");
    let pause = "/api/v1/targets/site-a/pause";
    let host = format!("127.0.0.1:{admin}");
    for headers in [
        vec![("Host", host.as_str()), ("Origin", "https://evil.example")],
        vec![("Host", host.as_str()), ("Sec-Fetch-Site", "cross-site")],
        vec![("Host", "evil.example"), ("Origin", "http://evil.example")],
    ] {
        let (status, body) = request(admin, "POST", pause, &headers).await;
        assert_eq!(status, 403, "{headers:?}: {body}");
    }
    let paused = || async {
        get_json(admin, "/api/v1/targets")
            .await
            .to_string()
            .contains("\"state\":\"paused\"")
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!paused().await, "a refused request paused the target");
    cli_ok(admin, &["targets", "pause", "site-a", "--reason", "test"]).await;
    wait_until(Duration::from_secs(10), "the CLI's pause", paused).await;
    ferry.terminate(Duration::from_secs(30));
}

/// The port in a raw request's Host header.
fn site_port(raw: &str) -> u16 {
    raw.lines()
        .find_map(|l| l.strip_prefix("Host: 127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("port in Host header")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_keys_are_refused_and_nothing_lands_outside_the_buffer() {
    let site = Site::new();
    let mut ferry = Ferry::start(&site.config());
    site.ready(&ferry).await;
    let client = site.client("ingestkey", "ingestsecret");
    for key in [
        "../x",
        "/etc/x",
        "a/../../b",
        "a/./b",
        "a//b",
        ".ferry/meta/x",
    ] {
        let result = client
            .put_object()
            .bucket("inbox")
            .key(key)
            .body(ByteStream::from_static(b"escape"))
            .send()
            .await;
        let err = result.expect_err("an unsafe key is refused");
        let err = err.into_service_error();
        assert_eq!(err.code(), Some("InvalidArgument"), "{key:?}: {err:?}");
        eprintln!("{key:?}: {:?}", err.message());
    }
    // Look everywhere around the site.
    for outside in ["x", "b", "etc"] {
        assert!(
            !site.dir.path().join(outside).exists(),
            "{outside} was created outside the locations"
        );
    }
    assert!(
        std::fs::read("/etc/x").map_or(true, |d| d != b"escape"),
        "/etc/x written"
    );
    for root in ["buffer", "site-a", "site-b"] {
        for file in files(&site.path(root)) {
            assert!(
                !file
                    .split('/')
                    .any(|c| c == ".." || c == "." || c.is_empty()),
                "{root}/{file} is not a safe path"
            );
        }
    }
    assert!(ferry.running());
    ferry.terminate(Duration::from_secs(30));
}

/// `ferry run` started the way the README's quick start does, and killed when dropped.
struct QuickStart {
    child: std::process::Child,
    log: PathBuf,
}

impl QuickStart {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for QuickStart {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- ferry log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The README's first command: `ferry run` without `--config`, in a fresh directory holding
/// only the shipped `config/ferry.toml` (no broker, no S3 server). Only the two ports are moved
/// off their defaults, through the environment, so the test cannot collide with anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_replicates_an_upload_to_both_sites_and_empties_the_buffer() {
    let site = Site::new();
    let work = site.dir.path();
    std::fs::create_dir_all(work.join("config")).expect("config dir");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ferry.toml"),
        work.join("config/ferry.toml"),
    )
    .expect("copy the shipped configuration");
    let log = work.join("ferry.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--log-format", "json", "run"])
        .current_dir(work)
        .env("FERRY__INGEST__LISTEN", format!("127.0.0.1:{}", site.port))
        .env("FERRY__ADMIN__LISTEN", "127.0.0.1:0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start ferry");
    let ferry = QuickStart { child, log };
    wait_until(Duration::from_secs(60), "the ingest endpoint", || async {
        ferry.log().contains("ingest endpoint ready")
    })
    .await;

    // The key and bucket the README tells a reader to use.
    let client = site.client("ferry", "ferrysecret");
    let body = data(7, 300_000);
    client
        .put_object()
        .bucket("inbox")
        .key("photos/some-file")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("PutObject");
    let data_dir = work.join("data");
    wait_until(
        TIMEOUT,
        "the file on both sites, gone from the buffer",
        || async {
            ["site-a", "site-b"].iter().all(|s| {
                std::fs::read(data_dir.join(s).join("photos/some-file")).is_ok_and(|b| b == body)
            }) && !data_dir.join("buffer/photos/some-file").exists()
        },
    )
    .await;
    let log = ferry.log();
    for line in [
        "ingested and enqueued",
        "COMPLETED on every target",
        "transient source copy deleted",
    ] {
        assert!(log.contains(line), "the log says {line:?}:\n{log}");
    }
}

/// A client that hangs up while the endpoint commits cannot leave an object in the buffer that
/// replication does not know about: what the endpoint stores it also enqueues (or removes
/// again), whatever the client does meanwhile. Joining 128 MiB of parts takes a while; the
/// client gives up after 100 ms, as an SDK with a short timeout does. The hourly scan would
/// not find an object left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_commit_leaves_nothing_unreplicated() {
    let site = Site::new();
    let config = site
        .config()
        .replace("scan_interval = \"30s\"", "scan_interval = \"1h\"");
    let mut ferry = Ferry::start(&config);
    site.ready(&ferry).await;
    let client = site.client("ingestkey", "ingestsecret");
    let key = "hung-up/large.bin";
    let body = data(7, 128 << 20);
    let upload = client
        .create_multipart_upload()
        .bucket("inbox")
        .key(key)
        .send()
        .await
        .expect("create multipart upload");
    let upload_id = upload.upload_id().expect("upload id").to_string();
    let mut parts = Vec::new();
    for (n, chunk) in body.chunks(32 << 20).enumerate() {
        let number = n as i32 + 1;
        let out = client
            .upload_part()
            .bucket("inbox")
            .key(key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .expect("upload part");
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .e_tag(out.e_tag().unwrap_or_default())
                .build(),
        );
    }
    let impatient = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_millis(100))
        .build();
    let gave_up = client
        .complete_multipart_upload()
        .bucket("inbox")
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .customize()
        .config_override(
            aws_sdk_s3::config::Config::builder()
                .timeout_config(impatient)
                .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled()),
        )
        .send()
        .await;
    assert!(
        gave_up.is_err(),
        "the client was meant to hang up before the answer"
    );
    wait_until(
        TIMEOUT,
        "the object on both targets and the buffer emptied",
        || async {
            files(&site.path("site-a")) == [key]
                && files(&site.path("site-b")) == [key]
                && files(&site.path("buffer")).is_empty()
        },
    )
    .await;
    for target in ["site-a", "site-b"] {
        let held = std::fs::read(site.path(target).join(key)).expect("copy readable");
        assert!(held == body, "{target}: content differs");
    }
    assert!(ferry.running());
    ferry.terminate(Duration::from_secs(30));
}

/// The additional checksums clients send (`x-amz-checksum-*`, in a header or in the trailer of
/// an aws-chunked body) are checked before anything is stored: a mismatch is `BadDigest` and
/// leaves the buffer as it was; the SDK's own checksums (its default) pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn additional_checksums_are_verified_and_a_mismatch_stores_nothing() {
    use aws_sdk_s3::config::RequestChecksumCalculation;
    use aws_sdk_s3::types::ChecksumAlgorithm;
    let site = Site::new();
    let mut ferry = Ferry::start(&site.config());
    site.ready(&ferry).await;
    let client = site.client("ingestkey", "ingestsecret");

    let err = client
        .put_object()
        .bucket("inbox")
        .key("sums/header")
        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
        .checksum_crc32_c("AAAAAA==")
        .body(ByteStream::from_static(b"hello"))
        .send()
        .await
        .expect_err("a wrong CRC32C header is refused");
    assert_eq!(err.into_service_error().code(), Some("BadDigest"));

    let trailer = |value: &str| chunked_put(site.port, "sums/trailer", b"hello", value);
    let answer = tokio::task::spawn_blocking(trailer("AAAAAA=="))
        .await
        .expect("joined");
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("BadDigest"),
        "{answer}"
    );
    assert!(files(&site.path("buffer")).is_empty(), "nothing stored");

    // Right values pass: a trailer, and the SDK computing its own (CRC32 by default).
    let answer = tokio::task::spawn_blocking(trailer("NhCmhg=="))
        .await
        .expect("joined");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let config = client
        .config()
        .to_builder()
        .request_checksum_calculation(RequestChecksumCalculation::WhenSupported)
        .build();
    let body = data(3, 3 << 20);
    Client::from_conf(config)
        .put_object()
        .bucket("inbox")
        .key("sums/sdk")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("the SDK's own checksum matches");
    wait_until(TIMEOUT, "both objects on both targets", || async {
        files(&site.path("site-a")) == ["sums/sdk", "sums/trailer"]
            && files(&site.path("site-b")) == ["sums/sdk", "sums/trailer"]
    })
    .await;
    let held = std::fs::read(site.path("site-a").join("sums/sdk")).expect("copy");
    assert!(held == body, "sums/sdk: content differs");
    assert!(ferry.running());
    ferry.terminate(Duration::from_secs(30));
}

/// A signed PUT whose body is aws-chunked with an unsigned trailer carrying
/// `x-amz-checksum-crc32: crc32`, sent over a plain socket; returns the answer's head.
fn chunked_put(port: u16, key: &str, body: &[u8], crc32: &str) -> impl FnOnce() -> String {
    use aws_sigv4::http_request::{
        sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
        SigningSettings,
    };
    let mut encoded = format!("{:x}\r\n", body.len()).into_bytes();
    encoded.extend_from_slice(body);
    encoded.extend_from_slice(format!("\r\n0\r\nx-amz-checksum-crc32:{crc32}\r\n\r\n").as_bytes());
    let url = format!("http://127.0.0.1:{port}/inbox/{key}");
    let mut request = http::Request::put(&url)
        .header("host", format!("127.0.0.1:{port}"))
        .header("content-encoding", "aws-chunked")
        .header("x-amz-decoded-content-length", body.len().to_string())
        .header("x-amz-trailer", "x-amz-checksum-crc32")
        .header("content-length", encoded.len().to_string())
        .body(())
        .expect("request");
    let identity =
        aws_credential_types::Credentials::new("ingestkey", "ingestsecret", None, None, "test")
            .into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(std::time::SystemTime::now())
        .settings(settings)
        .build()
        .expect("params")
        .into();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().expect("text").to_string()))
        .collect();
    let signable = SignableRequest::new(
        "PUT",
        &url,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Precomputed("STREAMING-UNSIGNED-PAYLOAD-TRAILER".into()),
    )
    .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("signed").into_parts();
    instructions.apply_to_request_http1x(&mut request);
    let mut head = format!("PUT /inbox/{key} HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        head.push_str(&format!("{name}: {}\r\n", value.to_str().expect("text")));
    }
    head.push_str("\r\n");
    move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(head.as_bytes()).expect("send the head");
        stream.write_all(&encoded).expect("send the body");
        let mut answer = [0u8; 4096];
        let n = stream.read(&mut answer).unwrap_or(0);
        String::from_utf8_lossy(&answer[..n]).into_owned()
    }
}

/// With `tls_cert`/`tls_key` the endpoint speaks TLS only: a client trusting the certificate's
/// CA writes over https and the object is replicated; one that does not trust it, and a
/// plain-HTTP request on the port, get nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_serves_tls_with_the_configured_certificate() {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    let site = Site::new();
    let material = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
    let config = site.config().replace(
        "[ingest]\n",
        &format!(
            "[ingest]\ntls_cert = {:?}\ntls_key = {:?}\n",
            material.join("cert.pem").display().to_string(),
            material.join("key.pem").display().to_string()
        ),
    );
    let mut ferry = Ferry::start(&config);
    site.ready(&ferry).await;
    let https = |trusted: Option<Vec<u8>>| {
        let mut store = TrustStore::empty().with_native_roots(false);
        if let Some(pem) = trusted {
            store = store.with_pem_certificate(pem);
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(
                TlsContext::builder()
                    .with_trust_store(store)
                    .build()
                    .expect("TLS context"),
            )
            .build_https();
        let config = support::s3::endpoint_client(site.port, "ingestkey", "ingestsecret")
            .config()
            .to_builder()
            .endpoint_url(format!("https://127.0.0.1:{}", site.port))
            .http_client(http)
            .build();
        Client::from_conf(config)
    };
    let ca = std::fs::read(material.join("ca.pem")).expect("CA");
    let body = data(5, 200_000);
    https(Some(ca))
        .put_object()
        .bucket("inbox")
        .key("tls/object")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("a PUT over TLS");
    https(None)
        .put_object()
        .bucket("inbox")
        .key("tls/untrusted")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .expect_err("a client that does not trust the certificate does not connect");
    let plain = answer_without_body(
        site.port,
        format!(
            "GET /inbox/tls/object HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            site.port
        ),
    )
    .await;
    assert!(
        !plain.starts_with("HTTP/1.1 2"),
        "plain HTTP answered: {plain}"
    );
    wait_until(TIMEOUT, "the object on both targets", || async {
        files(&site.path("site-a")) == ["tls/object"]
            && files(&site.path("site-b")) == ["tls/object"]
    })
    .await;
    let held = std::fs::read(site.path("site-a").join("tls/object")).expect("copy");
    assert!(held == body, "content differs");
    assert!(ferry.running());
    ferry.terminate(Duration::from_secs(30));
}

/// The request head of a PUT of `len` bytes to `key` at a presigned URL (UNSIGNED-PAYLOAD).
async fn presigned_head(client: &Client, port: u16, key: &str, len: usize) -> String {
    use aws_sdk_s3::presigning::PresigningConfig;
    let presigned = client
        .put_object()
        .bucket("inbox")
        .key(key)
        .presigned(PresigningConfig::expires_in(Duration::from_secs(600)).expect("config"))
        .await
        .expect("presign");
    let uri: http::Uri = presigned.uri().parse().expect("presigned URI");
    let mut head = format!(
        "PUT {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len}\r\n",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
    );
    for (name, value) in presigned.headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Part bodies in memory are bounded over all connections (`ingest.body_memory`): while a
/// client holds the room with a 60 MiB part it sends slowly, another's part waits; a body that
/// sends nothing for `header_timeout` is dropped (`RequestTimeout`), and the waiting part goes
/// on. A stalled PutObject (streamed, so it holds no room) times out the same way and leaves
/// nothing in the buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part_bodies_in_memory_are_bounded_and_a_stalled_body_times_out() {
    use aws_sdk_s3::presigning::PresigningConfig;
    let site = Site::new();
    let config = site.config().replace(
        "[ingest]\n",
        "[ingest]\nbody_memory = \"64MiB\"\nheader_timeout = \"3s\"\n",
    );
    let mut ferry = Ferry::start(&config);
    site.ready(&ferry).await;
    let client = site.client("ingestkey", "ingestsecret");
    let upload = client
        .create_multipart_upload()
        .bucket("inbox")
        .key("bounded/parts")
        .send()
        .await
        .expect("create multipart upload");
    let upload_id = upload.upload_id().expect("upload id").to_string();
    let presigned = client
        .upload_part()
        .bucket("inbox")
        .key("bounded/parts")
        .upload_id(&upload_id)
        .part_number(1)
        .presigned(PresigningConfig::expires_in(Duration::from_secs(600)).expect("config"))
        .await
        .expect("presign");
    let uri: http::Uri = presigned.uri().parse().expect("presigned URI");
    let port = site.port;
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\r\n",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        60 << 20
    );
    let stalled_part = tokio::task::spawn_blocking(move || stall(port, head));
    let stalled_put = {
        let head = presigned_head(&client, port, "bounded/stalled", 10 << 20).await;
        tokio::task::spawn_blocking(move || stall(port, head))
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    client
        .upload_part()
        .bucket("inbox")
        .key("bounded/parts")
        .upload_id(&upload_id)
        .part_number(2)
        .body(ByteStream::from(data(11, 10 << 20)))
        .send()
        .await
        .expect("the waiting part goes on once the room is free");
    let waited = started.elapsed();
    for stalled in [stalled_part, stalled_put] {
        let answer = stalled.await.expect("joined");
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains("RequestTimeout"),
            "{answer}"
        );
    }
    assert!(
        waited >= Duration::from_secs(2),
        "the second part did not wait for room: {waited:?}"
    );
    assert!(
        files(&site.path("buffer")).is_empty(),
        "a stalled PutObject left data"
    );
    assert!(ferry.running());
    ferry.terminate(Duration::from_secs(30));
}

/// Sends `head` and the first KiB of its body, then nothing; returns the answer.
fn stall(port: u16, head: String) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.write_all(head.as_bytes()).expect("send the head");
    stream.write_all(&[0u8; 1024]).expect("send the first KiB");
    let mut answer = [0u8; 4096];
    let n = stream.read(&mut answer).unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// A PutObject is streamed into the buffer: one of 300 MiB (over the in-memory part limit)
/// is taken, replicated and collected while ferry's memory stays far below its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_object_larger_than_memory_is_streamed_into_the_buffer() {
    let site = Site::new();
    let config = site.config().replace(
        "[replication]\n",
        "[replication]\nbuffer_memory = \"32MiB\"\n",
    );
    let mut ferry = Ferry::start(&config);
    site.ready(&ferry).await;
    let body = data(13, 300 << 20);
    site.client("ingestkey", "ingestsecret")
        .put_object()
        .bucket("inbox")
        .key("streamed/large.bin")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("a 300 MiB PutObject");
    wait_until(
        TIMEOUT,
        "the object on both targets, the buffer empty",
        || async {
            files(&site.path("site-a")) == ["streamed/large.bin"]
                && files(&site.path("site-b")) == ["streamed/large.bin"]
                && files(&site.path("buffer")).is_empty()
        },
    )
    .await;
    let peak = ferry.peak_rss().expect("peak RSS");
    eprintln!(
        "ferry's peak RSS for a 300 MiB PutObject: {} MiB",
        peak >> 20
    );
    assert!(
        peak < 200 << 20,
        "ferry's peak RSS {} MiB for a 300 MiB object",
        peak >> 20
    );
    for target in ["site-a", "site-b"] {
        let held = std::fs::read(site.path(target).join("streamed/large.bin")).expect("copy");
        assert!(held == body, "{target}: content differs");
    }
    ferry.terminate(Duration::from_secs(30));
}

/// Two processes on one fs location would race each other's writes and deletes (the per-key
/// locks hold within a process): a second ferry using the same buffer stops at start with an
/// error naming the directory, and the first goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_fs_location_is_refused() {
    let site = Site::new();
    let mut first = Ferry::start(&site.config());
    site.ready(&first).await;
    let second_queue = site.path("queue-2");
    let config = site
        .config()
        .replace(
            &format!("127.0.0.1:{}", site.port),
            &format!("127.0.0.1:{}", free_port()),
        )
        .replace(
            &site.path("queue").display().to_string(),
            &second_queue.display().to_string(),
        );
    let mut second = Ferry::start(&config);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while second.running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the second process runs on"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = second.log();
    assert!(
        log.contains("another process") && log.contains(".ferry/lock"),
        "{log}"
    );
    assert!(first.running());
    site.client("ingestkey", "ingestsecret")
        .put_object()
        .bucket("inbox")
        .key("still/served")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .expect("the first process still serves");
    first.terminate(Duration::from_secs(30));
    second.terminate(Duration::from_secs(5));
}

/// The order of a key's versions is the buffer's, never this process's clock: after a
/// restart with ferry's clock an hour behind (libfaketime), a new write of a key whose older
/// version was replicated is still newer than the targets' copies, so it is copied. (Stamped
/// by ferry's clock, it looked an hour older than the copy and was taken as superseded; only
/// the GC's check of the copies kept the buffer from deleting it, and only a later scan
/// copied it.) The fs buffer's own stamps never go back either (`storage/fs/clock.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_back_does_not_make_a_new_write_look_superseded() {
    let faketime = std::fs::read_dir("/usr/lib")
        .expect("/usr/lib")
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime (Debian's faketime; scripts/install-deps.sh installs it)");
    let site = Site::new();
    // No scan during the test: the ingest endpoint's entry alone must copy the version.
    let config = site
        .config()
        .replace("scan_interval = \"30s\"", "scan_interval = \"1h\"");
    let mut ferry = Ferry::start(&config);
    site.ready(&ferry).await;
    let put = |body: &'static [u8]| {
        let client = site.client("ingestkey", "ingestsecret");
        async move {
            client
                .put_object()
                .bucket("inbox")
                .key("clock/k")
                .body(ByteStream::from_static(body))
                .send()
                .await
                .expect("put");
        }
    };
    let copies_hold = |body: &'static [u8]| {
        let site = &site;
        move || async move {
            ["site-a", "site-b"]
                .iter()
                .all(|t| std::fs::read(site.path(t).join("clock/k")).ok().as_deref() == Some(body))
                && files(&site.path("buffer")).is_empty()
        }
    };
    put(b"first").await;
    wait_until(
        TIMEOUT,
        "the first version copied and collected",
        copies_hold(b"first"),
    )
    .await;

    ferry.restart_with_env(&[
        ("LD_PRELOAD", &faketime.display().to_string()),
        ("FAKETIME", "-1h"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    site.ready(&ferry).await;
    put(b"second, written an hour 'earlier'").await;
    wait_until(
        TIMEOUT,
        "the second version on both targets",
        copies_hold(b"second, written an hour 'earlier'"),
    )
    .await;
    assert!(ferry.running());
    ferry.terminate(Duration::from_secs(30));
}

/// The parts staged in an fs buffer's open uploads are bounded (`ingest.max_staged`): a part
/// that would pass the limit is answered SlowDown, one sent again in place of an earlier one
/// counts only the difference, and aborting an upload gives its room back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_parts_are_bounded_and_aborting_frees_the_room() {
    let site = Site::new();
    let config = site
        .config()
        .replace("[ingest]\n", "[ingest]\nmax_staged = \"64MiB\"\n");
    let mut ferry = Ferry::start(&config);
    site.ready(&ferry).await;
    let client = site.client("ingestkey", "ingestsecret");
    let start = |key: &'static str| {
        let client = client.clone();
        async move {
            let upload = client
                .create_multipart_upload()
                .bucket("inbox")
                .key(key)
                .send()
                .await
                .expect("create multipart upload");
            upload.upload_id().expect("upload id").to_string()
        }
    };
    let part = |key: &'static str, id: String, n: i32, len: usize| {
        let client = client.clone();
        async move {
            client
                .upload_part()
                .bucket("inbox")
                .key(key)
                .upload_id(id)
                .part_number(n)
                .body(ByteStream::from(data(n as u64, len)))
                .send()
                .await
        }
    };
    let first = start("staged/first").await;
    part("staged/first", first.clone(), 1, 40 << 20)
        .await
        .expect("within the limit");
    let second = start("staged/second").await;
    let refused = part("staged/second", second.clone(), 1, 30 << 20)
        .await
        .expect_err("past the limit");
    let code = refused
        .into_service_error()
        .meta()
        .code()
        .map(str::to_string);
    assert_eq!(code.as_deref(), Some("SlowDown"));
    part("staged/second", second.clone(), 1, 24 << 20)
        .await
        .expect("exactly at the limit");
    part("staged/first", first.clone(), 1, 30 << 20)
        .await
        .expect("a part sent again counts the difference only");
    client
        .abort_multipart_upload()
        .bucket("inbox")
        .key("staged/first")
        .upload_id(&first)
        .send()
        .await
        .expect("abort");
    part("staged/second", second, 2, 40 << 20)
        .await
        .expect("room again after the abort");
    assert!(ferry.running());
    ferry.terminate(Duration::from_secs(30));
}

/// rclone, with its defaults for a generic S3 provider (ListObjects v1, path-style, multipart
/// above its cutoff), copies a directory to the endpoint and the objects reach both targets.
/// Before ListObjects v1 was served it failed with `NotImplemented`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rclone_copies_a_directory_to_the_endpoint() {
    let site = Site::new();
    let mut ferry = Ferry::start(&site.config());
    site.ready(&ferry).await;
    let local = site.path("local");
    std::fs::create_dir_all(local.join("sub")).expect("mkdir");
    let files_written = [
        ("a.txt", data(1, 10)),
        ("sub/b.bin", data(2, 300_000)),
        ("sub/large.bin", data(3, 12 << 20)),
    ];
    for (name, body) in &files_written {
        std::fs::write(local.join(name), body).expect("write a local file");
    }
    let copy = |local: PathBuf| {
        let port = site.port;
        move || {
            std::process::Command::new("rclone")
                .args(["copy", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M"])
                .arg(&local)
                .arg("ferry:inbox/rclone")
                // A CA bundle of the host is for TLS, which this plain endpoint does not use
                // (and rclone refuses to load one into its own transport).
                .env_remove("AWS_CA_BUNDLE")
                .env("RCLONE_CONFIG", local.with_file_name("rclone.conf"))
                .env("RCLONE_CONFIG_FERRY_TYPE", "s3")
                .env("RCLONE_CONFIG_FERRY_PROVIDER", "Other")
                .env("RCLONE_CONFIG_FERRY_ACCESS_KEY_ID", "ingestkey")
                .env("RCLONE_CONFIG_FERRY_SECRET_ACCESS_KEY", "ingestsecret")
                .env(
                    "RCLONE_CONFIG_FERRY_ENDPOINT",
                    format!("http://127.0.0.1:{port}"),
                )
                .env("RCLONE_CONFIG_FERRY_REGION", "us-east-1")
                .output()
                .expect("rclone runs (scripts/install-deps.sh installs it)")
        }
    };
    let out = tokio::task::spawn_blocking(copy(local))
        .await
        .expect("joined");
    assert!(
        out.status.success(),
        "rclone copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut keys: Vec<String> = files_written
        .iter()
        .map(|(name, _)| format!("rclone/{name}"))
        .collect();
    keys.sort();
    wait_until(TIMEOUT, "rclone's objects on both targets", || async {
        files(&site.path("site-a")) == keys
            && files(&site.path("site-b")) == keys
            && files(&site.path("buffer")).is_empty()
    })
    .await;
    for (name, body) in &files_written {
        let held = std::fs::read(site.path("site-b").join("rclone").join(name)).expect("copy");
        assert!(held == *body, "{name}: content differs");
    }
    assert!(ferry.running());
    ferry.terminate(Duration::from_secs(30));
}

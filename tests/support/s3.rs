//! S3 helpers for tests: clients for the local gateways, writing test objects, and reading back
//! what a bucket holds (versions in order, bytes, metadata, tags).

use std::collections::HashMap;

use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
use aws_sdk_s3::Client;

use super::TestEnv;

/// The longest a test's own S3 request may take (a 256 MiB object on a loaded machine takes
/// seconds).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// A client for gateway `n` of the test environment.
pub fn client(env: &TestEnv, n: usize) -> Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&env.rgw[n])
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            &env.access_key,
            &env.secret_key,
            None,
            None,
            "test",
        ))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        // A request the servers never answer (an OSD that believes itself full holds every
        // write) fails the test with a timeout rather than hanging it without a word.
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .operation_timeout(REQUEST_TIMEOUT)
                .build(),
        )
        .build();
    Client::from_conf(config)
}

/// A client of a ferry ingest endpoint on `port` that signs with `key`/`secret`.
pub fn endpoint_client(port: u16, key: &str, secret: &str) -> Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            key, secret, None, None, "test",
        ))
        .build();
    Client::from_conf(config)
}

/// Creates `bucket`, versioned or not.
pub async fn create_bucket(client: &Client, bucket: &str, versioned: bool) {
    client
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("create bucket");
    if versioned {
        client
            .put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .expect("enable versioning");
    }
}

/// Deletes every version of every object, then the bucket (cleanup; errors ignored).
pub async fn remove_bucket(client: &Client, bucket: &str) {
    use futures_util::StreamExt;
    // 16 at a time: a soak's buckets hold tens of thousands of versions.
    futures_util::stream::iter(versions(client, bucket).await.unwrap_or_default())
        .for_each_concurrent(16, |v| async move {
            let _ = client
                .delete_object()
                .bucket(bucket)
                .key(&v.key)
                .set_version_id(v.version_id.clone())
                .send()
                .await;
        })
        .await;
    let _ = client.delete_bucket().bucket(bucket).send().await;
}

/// Deterministic pseudo-random bytes: the same `seed` and `size` always give the same data.
pub fn data(seed: u64, size: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// How a test object is written.
#[derive(Debug, Clone, Default)]
pub struct Put {
    pub key: String,
    pub seed: u64,
    pub size: usize,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub metadata: HashMap<String, String>,
    /// URL-encoded tagging header value.
    pub tagging: Option<String>,
}

/// Writes `put` in one request (up to 6 MiB); returns the version id, or what the server said.
pub async fn try_put(client: &Client, bucket: &str, put: &Put) -> Result<Option<String>, String> {
    let out = client
        .put_object()
        .bucket(bucket)
        .key(&put.key)
        .body(ByteStream::from(data(put.seed, put.size)))
        .set_content_type(put.content_type.clone())
        .set_cache_control(put.cache_control.clone())
        .set_content_disposition(put.content_disposition.clone())
        .set_content_encoding(put.content_encoding.clone())
        .set_metadata(Some(put.metadata.clone()))
        .set_tagging(put.tagging.clone())
        .send()
        .await
        .map_err(|e| format!("put {}: {e:?}", put.key))?;
    Ok(out.version_id().map(String::from))
}

/// Writes `put` (single request, or multipart for big objects); returns the version id.
pub async fn put(client: &Client, bucket: &str, put: &Put) -> Option<String> {
    const PART: usize = 6 << 20;
    if put.size <= PART {
        return try_put(client, bucket, put)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let body = data(put.seed, put.size);
    let upload = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(&put.key)
        .set_content_type(put.content_type.clone())
        .set_metadata(Some(put.metadata.clone()))
        .set_tagging(put.tagging.clone())
        .send()
        .await
        .expect("create multipart");
    let id = upload.upload_id().expect("upload id").to_string();
    let mut parts = Vec::new();
    for (i, chunk) in body.chunks(PART).enumerate() {
        let n = i as i32 + 1;
        let out = client
            .upload_part()
            .bucket(bucket)
            .key(&put.key)
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .expect("upload part");
        parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(n)
                .e_tag(out.e_tag().unwrap_or_default())
                .build(),
        );
    }
    let out = client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(&put.key)
        .upload_id(&id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("complete multipart");
    out.version_id().map(String::from)
}

/// Deletes `key` without a version id (a delete marker in a versioned bucket).
pub async fn delete(client: &Client, bucket: &str, key: &str) -> Option<String> {
    let out = client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("delete");
    out.version_id().map(String::from)
}

/// Deletes exactly `version_id` of `key` (for good, no delete marker).
pub async fn delete_version(client: &Client, bucket: &str, key: &str, version_id: Option<&str>) {
    client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .set_version_id(version_id.map(str::to_string))
        .send()
        .await
        .expect("delete version");
}

/// One version or delete marker in a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub key: String,
    pub version_id: Option<String>,
    pub delete_marker: bool,
    pub is_latest: bool,
    pub size: i64,
    pub last_modified_ms: i64,
}

/// Every version and delete marker of `bucket`; versions of a key newest first, as listed.
pub async fn versions(client: &Client, bucket: &str) -> Result<Vec<Version>, String> {
    let mut out = Vec::new();
    let (mut key_marker, mut version_marker): (Option<String>, Option<String>) = (None, None);
    loop {
        let page = client
            .list_object_versions()
            .bucket(bucket)
            .set_key_marker(key_marker.take())
            .set_version_id_marker(version_marker.take())
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        for v in page.versions() {
            out.push(Version {
                key: v.key().unwrap_or_default().into(),
                version_id: v.version_id().map(String::from),
                delete_marker: false,
                is_latest: v.is_latest().unwrap_or(false),
                size: v.size().unwrap_or(0),
                last_modified_ms: v
                    .last_modified()
                    .and_then(|t| t.to_millis().ok())
                    .unwrap_or(0),
            });
        }
        for m in page.delete_markers() {
            out.push(Version {
                key: m.key().unwrap_or_default().into(),
                version_id: m.version_id().map(String::from),
                delete_marker: true,
                is_latest: m.is_latest().unwrap_or(false),
                size: 0,
                last_modified_ms: m
                    .last_modified()
                    .and_then(|t| t.to_millis().ok())
                    .unwrap_or(0),
            });
        }
        if !page.is_truncated().unwrap_or(false) {
            return Ok(out);
        }
        key_marker = page.next_key_marker().map(String::from);
        version_marker = page.next_version_id_marker().map(String::from);
    }
}

/// A version's bytes, headers, user metadata and tags.
#[derive(Debug)]
pub struct Fetched {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub metadata: HashMap<String, String>,
    pub tags: Vec<(String, String)>,
}

/// Reads one version completely.
pub async fn fetch(client: &Client, bucket: &str, key: &str, version: Option<&str>) -> Fetched {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_version_id(version.map(String::from))
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {bucket}/{key}@{version:?}: {e:?}"));
    let content_type = out.content_type().map(String::from);
    let cache_control = out.cache_control().map(String::from);
    let content_disposition = out.content_disposition().map(String::from);
    let content_encoding = out.content_encoding().map(String::from);
    let metadata = out.metadata().cloned().unwrap_or_default();
    let tag_count = out.tag_count().unwrap_or(0);
    let body = out
        .body
        .collect()
        .await
        .expect("read body")
        .into_bytes()
        .to_vec();
    // radosgw answers GetObjectTagging of an untagged object with an empty body, which the
    // SDK cannot parse: ask only when the object says it has tags.
    let mut tags: Vec<(String, String)> = Vec::new();
    if tag_count > 0 {
        let tagging = client
            .get_object_tagging()
            .bucket(bucket)
            .key(key)
            .set_version_id(version.map(String::from))
            .send()
            .await
            .expect("get tagging");
        tags = tagging
            .tag_set()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect();
    }
    tags.sort();
    Fetched {
        body,
        content_type,
        cache_control,
        content_disposition,
        content_encoding,
        metadata,
        tags,
    }
}

/// Which source versions a target bucket holds, by ferry's stamp. Target versions never
/// change, so each is HEADed once and remembered.
pub struct TargetIndex {
    pub client: Client,
    pub bucket: String,
    stamps: HashMap<String, Option<String>>,
}

impl TargetIndex {
    pub fn new(client: Client, bucket: &str) -> Self {
        Self {
            client,
            bucket: bucket.to_string(),
            stamps: HashMap::new(),
        }
    }

    /// Source version ids of every object version the target holds now.
    pub async fn sources(&mut self) -> Result<std::collections::HashSet<String>, String> {
        let mut set = std::collections::HashSet::new();
        for v in versions(&self.client, &self.bucket).await? {
            let (false, Some(id)) = (v.delete_marker, v.version_id.clone()) else {
                continue;
            };
            if !self.stamps.contains_key(&id) {
                let head = self
                    .client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(&v.key)
                    .version_id(&id)
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let stamp = head
                    .metadata()
                    .and_then(|m| m.get("ferry-source-version-id"))
                    .cloned();
                self.stamps.insert(id.clone(), stamp);
            }
            if let Some(Some(stamp)) = self.stamps.get(&id) {
                set.insert(stamp.clone());
            }
        }
        Ok(set)
    }
}

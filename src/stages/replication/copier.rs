//! `Copier`: copies one source version to one target, verified, and recognises copies it made before.
//!
//! Every copy is stamped with the source version id, ETag and write time (user metadata
//! `ferry-source-*`), so a redelivered entry finds its earlier copy and does not write it
//! again. Bytes are checked on the way: the server verifies each request's Content-MD5, the
//! target's ETag must equal the MD5 (or multipart MD5) ferry computed while streaming, the
//! length must match the source's, and a source whose ETag is a plain MD5 must match it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use tokio::task::JoinSet;

use super::ReplicationStats;
use crate::model::ReplicationEntry;
use crate::storage::{
    encode_tagging, etag_is_md5, ErrorKind, Head, ObjectHead, S3Store, StorageError, Written,
};

/// User-metadata names of the stamps (S3 lower-cases metadata names).
pub const STAMP_VERSION: &str = "ferry-source-version-id";
pub const STAMP_ETAG: &str = "ferry-source-etag";
pub const STAMP_MTIME: &str = "ferry-source-mtime";
/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u64 = 10_000;
/// S3's smallest and largest part (all but the last part of an upload).
const MIN_PART: u64 = 5 << 20;
const MAX_PART: u64 = 5 << 30;
/// How many versions of one key the duplicate search looks at before giving up.
const SEARCH_LIMIT: usize = 200;

/// What a copy attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written now; the target's version id.
    Copied { target_version_id: Option<String> },
    /// An earlier attempt already put this exact version there.
    AlreadyThere { target_version_id: Option<String> },
    /// The target already holds a newer version of the key, written by ferry; the entry is
    /// older than what the target shows, so writing it would make an old version current.
    Superseded,
}

/// Copies between one source and one target bucket.
pub struct Copier<'a> {
    pub source: &'a S3Store,
    pub target: &'a S3Store,
    pub multipart_threshold: u64,
    pub part_size: u64,
    /// Parts of one object uploaded at once.
    pub part_concurrency: usize,
    /// Where bytes read and written are counted.
    pub stats: Arc<ReplicationStats>,
    /// Uploads of failed attempts whose abort failed too (the target was away): aborted at the
    /// next attempt, so no orphaned parts stay behind.
    pub unaborted: std::sync::Mutex<Vec<String>>,
}

impl Copier<'_> {
    /// Copies the object version `entry` names.
    pub async fn copy_object(&self, entry: &ReplicationEntry) -> Result<Outcome, StorageError> {
        let key = entry.key.as_str();
        match self.target.head(key, None).await? {
            Head::Object(current) if is_copy_of(&current, entry) => {
                return Ok(Outcome::AlreadyThere {
                    target_version_id: current.version_id,
                })
            }
            Head::Object(current)
                if stamped_mtime(&current).is_some_and(|m| m > entry.last_modified_ms) =>
            {
                return self.search(entry).await;
            }
            Head::DeleteMarker { .. } => {
                if let Some(outcome) = self.find_earlier_copy(entry).await? {
                    return Ok(outcome);
                }
            }
            _ => {}
        }
        let (head, mut body) = self.source.get(key, entry.version_id.as_deref()).await?;
        let tags = if head.tag_count > 0 {
            self.source.tags(key, entry.version_id.as_deref()).await?
        } else {
            Vec::new()
        };
        let mut meta = head.meta.clone();
        meta.user.insert(STAMP_VERSION.into(), stamp_version(entry));
        meta.user
            .insert(STAMP_ETAG.into(), head.etag.clone().unwrap_or_default());
        meta.user
            .insert(STAMP_MTIME.into(), entry.last_modified_ms.to_string());
        let tagging = encode_tagging(&tags);

        // A source uploaded in N equal parts of P bytes is copied with the same layout, so the
        // target's ETag must come out identical to the source's: an end-to-end check of every
        // byte, comparable later by the garbage collector.
        let source_layout = self.source_layout(entry, &head).await?;
        if head.size <= self.multipart_threshold && source_layout.is_none() {
            let mut data = BytesMut::with_capacity(head.size as usize);
            while let Some(chunk) = body.chunk().await? {
                data.extend_from_slice(&chunk);
                if data.len() as u64 > head.size {
                    break;
                }
            }
            let data = data.freeze();
            self.stats
                .source_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            let md5 = Md5::digest(&data);
            self.check_source(&head, data.len() as u64, &hex(&md5))?;
            let length = data.len() as u64;
            let written = self
                .target
                .put(key, data, &base64(&md5), &meta, tagging)
                .await?;
            self.stats.target_bytes.fetch_add(length, Ordering::Relaxed);
            if let Some(etag) = &written.etag {
                if etag_is_md5(etag) && *etag != hex(&md5) {
                    return Err(self.integrity(
                        key,
                        format!(
                            "target ETag {etag} is not the MD5 {} of the data sent",
                            hex(&md5)
                        ),
                    ));
                }
            }
            return Ok(Outcome::Copied {
                target_version_id: written.version_id,
            });
        }

        let upload_id = self.target.create_multipart(key, &meta, tagging).await?;
        let result = self
            .upload_parts(entry, &head, &mut body, &upload_id, source_layout)
            .await;
        if result.is_err() {
            self.lock_unaborted().push(upload_id);
            self.abort_failed_uploads(key).await;
        }
        result
    }

    /// Aborts the uploads of failed attempts; those that still cannot be aborted are kept for
    /// the next call.
    pub async fn abort_failed_uploads(&self, key: &str) {
        let pending = std::mem::take(&mut *self.lock_unaborted());
        for upload_id in pending {
            if let Err(e) = self.target.abort_multipart(key, &upload_id).await {
                if e.kind == ErrorKind::NotFound {
                    continue;
                }
                tracing::warn!(error = %e, upload_id, "could not abort a failed multipart upload yet");
                self.lock_unaborted().push(upload_id);
            }
        }
    }

    fn lock_unaborted(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.unaborted.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn upload_parts(
        &self,
        entry: &ReplicationEntry,
        head: &ObjectHead,
        body: &mut crate::storage::ObjectBody,
        upload_id: &str,
        source_layout: Option<u64>,
    ) -> Result<Outcome, StorageError> {
        let key = entry.key.as_str();
        let part_size =
            source_layout.unwrap_or_else(|| part_size_for(head.size, self.part_size)) as usize;
        let mut whole = Md5::new();
        let mut buffer = BytesMut::with_capacity(part_size);
        let mut total: u64 = 0;
        let mut numbered = 0;
        // Parts in flight: at most `part_concurrency` buffers of `part_size` exist at once,
        // whatever the object's size.
        let mut uploads: JoinSet<Result<UploadedPart, StorageError>> = JoinSet::new();
        let mut done: Vec<UploadedPart> = Vec::new();
        loop {
            let chunk = body.chunk().await?;
            let end = chunk.is_none();
            if let Some(chunk) = chunk {
                total += chunk.len() as u64;
                self.stats
                    .source_bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                whole.update(&chunk);
                buffer.extend_from_slice(&chunk);
            }
            while buffer.len() >= part_size || (end && !buffer.is_empty()) {
                while uploads.len() >= self.part_concurrency {
                    done.push(joined(uploads.join_next().await)?);
                }
                let part: Bytes = buffer.split_to(buffer.len().min(part_size)).freeze();
                numbered += 1;
                uploads.spawn(upload_one(
                    self.target.clone(),
                    key.to_string(),
                    upload_id.to_string(),
                    numbered,
                    part,
                    self.stats.clone(),
                ));
            }
            if end {
                break;
            }
        }
        while !uploads.is_empty() {
            done.push(joined(uploads.join_next().await)?);
        }
        self.check_source(head, total, &hex(&whole.finalize()))?;
        done.sort_by_key(|p| p.number);
        let parts: Vec<(i32, String)> = done.iter().map(|p| (p.number, p.etag.clone())).collect();
        let digests: Vec<u8> = done.iter().flat_map(|p| p.md5).collect();
        let written: Written = self
            .target
            .complete_multipart(key, upload_id, &parts)
            .await?;
        // The multipart ETag is the MD5 of the parts' MD5s, dash, part count: compare it with
        // what the target reports for the version it made (not the Complete response, which
        // some servers fill differently).
        let expected = format!("{}-{}", hex(&Md5::digest(&digests)), parts.len());
        if source_layout.is_some() && head.etag.as_deref() != Some(expected.as_str()) {
            return Err(self.source.local_error(
                "GetObject (verify)",
                key,
                ErrorKind::Transient,
                format!(
                    "data read has multipart ETag {expected}, the source's is {:?}",
                    head.etag
                ),
            ));
        }
        match self.target.head(key, written.version_id.as_deref()).await? {
            Head::Object(h) if h.size == total && h.etag.as_deref() == Some(expected.as_str()) => Ok(Outcome::Copied {
                target_version_id: written.version_id.or(h.version_id),
            }),
            Head::Object(h) => Err(self.integrity(
                key,
                format!(
                    "target holds {} bytes with ETag {:?}; expected {total} bytes with ETag {expected}",
                    h.size, h.etag
                ),
            )),
            _ => Err(self.integrity(key, "the completed upload is not readable on the target".into())),
        }
    }

    /// Replicates the delete marker `entry` names as a delete marker on the target.
    pub async fn copy_delete_marker(
        &self,
        entry: &ReplicationEntry,
    ) -> Result<Outcome, StorageError> {
        match self.target.head(&entry.key, None).await? {
            Head::DeleteMarker { version_id } => Ok(Outcome::AlreadyThere {
                target_version_id: version_id,
            }),
            Head::Object(current)
                if stamped_mtime(&current).is_some_and(|m| m > entry.last_modified_ms) =>
            {
                Ok(Outcome::Superseded)
            }
            _ => {
                let written = self.target.put_delete_marker(&entry.key).await?;
                Ok(Outcome::Copied {
                    target_version_id: written.version_id,
                })
            }
        }
    }

    /// The target shows something newer than `entry`: either this entry was copied before
    /// (a redelivery after a crash) — then say where — or it never will be in order.
    async fn search(&self, entry: &ReplicationEntry) -> Result<Outcome, StorageError> {
        Ok(self
            .find_earlier_copy(entry)
            .await?
            .unwrap_or(Outcome::Superseded))
    }

    async fn find_earlier_copy(
        &self,
        entry: &ReplicationEntry,
    ) -> Result<Option<Outcome>, StorageError> {
        let versions = self.target.key_versions(&entry.key).await?;
        for listed in versions
            .iter()
            .filter(|l| l.kind == crate::model::EntryKind::Object && l.size == entry.size)
            .take(SEARCH_LIMIT)
        {
            if let Head::Object(h) = self
                .target
                .head(&entry.key, listed.version_id.as_deref())
                .await?
            {
                if is_copy_of(&h, entry) {
                    return Ok(Some(Outcome::AlreadyThere {
                        target_version_id: h.version_id,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The source's part size when its ETag says it was uploaded in parts and the parts are
    /// uniform (all but the last of one size, within S3's limits); `None` otherwise.
    async fn source_layout(
        &self,
        entry: &ReplicationEntry,
        head: &ObjectHead,
    ) -> Result<Option<u64>, StorageError> {
        let Some(parts) = head
            .etag
            .as_deref()
            .and_then(|e| e.split_once('-'))
            .and_then(|(_, n)| n.parse::<u64>().ok())
        else {
            return Ok(None);
        };
        let Some(part) = self
            .source
            .first_part_size(&entry.key, entry.version_id.as_deref())
            .await?
        else {
            return Ok(None);
        };
        let uniform = head.size.div_ceil(part) == parts;
        Ok(
            (uniform && (MIN_PART..=MAX_PART).contains(&part) && parts <= MAX_PARTS)
                .then_some(part),
        )
    }

    fn check_source(
        &self,
        head: &ObjectHead,
        length: u64,
        md5_hex: &str,
    ) -> Result<(), StorageError> {
        let fail = |message| {
            Err(self
                .source
                .local_error("GetObject (verify)", "", ErrorKind::Transient, message))
        };
        if length != head.size {
            return fail(format!(
                "read {length} bytes, the source announced {}",
                head.size
            ));
        }
        match head.etag.as_deref().filter(|e| etag_is_md5(e)) {
            Some(etag) if etag != md5_hex => fail(format!(
                "data read has MD5 {md5_hex}, the source ETag is {etag}"
            )),
            _ => Ok(()),
        }
    }

    fn integrity(&self, key: &str, message: String) -> StorageError {
        self.target
            .local_error("verify copy", key, ErrorKind::Transient, message)
    }
}

/// One uploaded part: its number, the target's ETag, and the MD5 ferry computed.
struct UploadedPart {
    number: i32,
    etag: String,
    md5: [u8; 16],
}

/// Uploads one part with its Content-MD5 and checks the ETag the target returns.
async fn upload_one(
    target: S3Store,
    key: String,
    upload_id: String,
    number: i32,
    part: Bytes,
    stats: Arc<ReplicationStats>,
) -> Result<UploadedPart, StorageError> {
    let md5: [u8; 16] = Md5::digest(&part).into();
    let length = part.len() as u64;
    let etag = target
        .upload_part(&key, &upload_id, number, part, &base64(&md5))
        .await?;
    if etag_is_md5(&etag) && etag != hex(&md5) {
        return Err(target.local_error(
            "verify copy",
            &key,
            ErrorKind::Transient,
            format!(
                "part {number}: target ETag {etag} is not the MD5 {}",
                hex(&md5)
            ),
        ));
    }
    stats.target_bytes.fetch_add(length, Ordering::Relaxed);
    Ok(UploadedPart { number, etag, md5 })
}

/// The result of a joined part upload (a panicked upload task is a transient failure).
fn joined(
    result: Option<Result<Result<UploadedPart, StorageError>, tokio::task::JoinError>>,
) -> Result<UploadedPart, StorageError> {
    match result {
        Some(Ok(part)) => part,
        Some(Err(e)) => Err(StorageError {
            kind: ErrorKind::Transient,
            op: "UploadPart",
            location: String::new(),
            bucket: String::new(),
            key: String::new(),
            message: format!("upload task failed: {e}"),
        }),
        None => Err(StorageError {
            kind: ErrorKind::Transient,
            op: "UploadPart",
            location: String::new(),
            bucket: String::new(),
            key: String::new(),
            message: "no upload to wait for".into(),
        }),
    }
}

/// Whether `head` is ferry's copy of exactly the version `entry` names.
pub fn is_copy_of(head: &ObjectHead, entry: &ReplicationEntry) -> bool {
    head.meta.user.get(STAMP_VERSION) == Some(&stamp_version(entry))
        && match (&entry.etag, head.meta.user.get(STAMP_ETAG)) {
            (Some(expected), Some(stamped)) => expected == stamped,
            _ => true,
        }
}

fn stamp_version(entry: &ReplicationEntry) -> String {
    entry.version_id.clone().unwrap_or_else(|| "null".into())
}

fn stamped_mtime(head: &ObjectHead) -> Option<i64> {
    head.meta.user.get(STAMP_MTIME).and_then(|m| m.parse().ok())
}

/// The part size for an object: the configured one, grown to stay within S3's 10,000 parts,
/// rounded up to a whole MiB.
pub fn part_size_for(size: u64, configured: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let needed = size.div_ceil(MAX_PARTS);
    configured.max(needed.div_ceil(MIB) * MIB)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_to_fit_ten_thousand_parts() {
        assert_eq!(part_size_for(100 << 20, 8 << 20), 8 << 20);
        let five_tib: u64 = 5 << 40;
        let size = part_size_for(five_tib, 8 << 20);
        assert!(five_tib.div_ceil(size) <= MAX_PARTS);
        assert_eq!(size % (1 << 20), 0);
    }

    #[test]
    fn hex_and_base64_of_md5() {
        let d = Md5::digest(b"");
        assert_eq!(hex(&d), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(base64(&d), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }
}

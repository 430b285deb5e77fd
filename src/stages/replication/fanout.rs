//! `Fanout`: one read of a source version, written to one or several targets at once.
//!
//! The source is read once, in parts; each part (with its MD5, computed once, or for a
//! single-request copy the source's own MD5 ETag, which the targets check) is handed to a
//! writer per target through a bounded channel, so memory stays at a few parts whatever the
//! object's size, and source egress is one read for any number of targets. A writer that does
//! not take a part within [`SEND_TIMEOUT`] is cut off (its copy fails and is retried on its
//! own) so one slow target cannot hold the others.
//!
//! Nothing is completed before the source checks out: a writer finishes its upload only when
//! it receives the end marker, which is sent after the byte count and the source's ETag (plain
//! MD5, or multipart ETag when the source's part layout is known) have been verified.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::copier::{
    base64, hex, part_size_for, stamp_meta, Outcome, MAX_PART, MAX_PARTS, MIN_PART,
};
use super::ReplicationStats;
use crate::model::ReplicationEntry;
use crate::storage::{
    encode_tagging, etag_is_md5, ErrorKind, Head, ObjectHead, ObjectMeta, StorageError, Store,
};

/// How long a writer may take to accept the next part before it is cut off: generous for a
/// busy target, short enough that a stalled one does not hold the other targets for long.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// What flows from the reader to each writer.
enum Piece {
    /// The next part of the object, with its MD5 and its share of the buffer budget.
    Part(Bytes, [u8; 16], Arc<Budget>),
    /// Every part was sent and the source checked out: complete the upload.
    End,
}

/// One uploaded part: number, the target's ETag, ferry's MD5 of it, its length.
type UploadedPart = (i32, String, [u8; 16], u64);
/// A finished part-upload task.
type JoinedPart = Option<Result<Result<UploadedPart, StorageError>, tokio::task::JoinError>>;

/// The bytes all copies of this process may hold in part buffers at once: a part is read only
/// once its room is taken, and the room is freed when every target has sent it. (A part larger
/// than the whole budget takes all of it.) Small objects, one unit each, are never held back.
pub struct BufferBudget {
    units: Arc<tokio::sync::Semaphore>,
    total: u32,
}

/// One part's room in the [`BufferBudget`].
pub type Budget = tokio::sync::OwnedSemaphorePermit;

/// The budget's unit: 64 KiB.
const UNIT: usize = 64 << 10;

impl BufferBudget {
    pub fn new(bytes: u64) -> Self {
        let total = (bytes / UNIT as u64).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        Self {
            units: Arc::new(tokio::sync::Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits for room for `bytes` (`None` only if the budget were closed, which it never is).
    async fn take(&self, bytes: usize) -> Option<Arc<Budget>> {
        let units = (bytes.div_ceil(UNIT).max(1) as u64).min(u64::from(self.total)) as u32;
        self.units
            .clone()
            .acquire_many_owned(units)
            .await
            .ok()
            .map(Arc::new)
    }
}

/// Multipart uploads whose abort failed (the target was away), to abort later.
pub type PendingAborts = Arc<Mutex<Vec<(Store, String, String)>>>;

/// Settings and counters for fan-out copies.
pub struct Fanout<'a> {
    pub source: &'a Store,
    /// Bounds the part buffers of all copies together.
    pub budget: &'a BufferBudget,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub part_concurrency: usize,
    pub stats: Arc<ReplicationStats>,
    pub pending_aborts: PendingAborts,
}

impl Fanout<'_> {
    /// Copies the object version `entry` names to every store in `targets`; one result per
    /// target, in order.
    pub async fn copy(
        &self,
        entry: &ReplicationEntry,
        targets: &[Store],
    ) -> Vec<Result<Outcome, StorageError>> {
        self.abort_pending(targets).await;
        match self.copy_all(entry, targets).await {
            Ok(results) => results,
            Err(e) => targets.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn copy_all(
        &self,
        entry: &ReplicationEntry,
        targets: &[Store],
    ) -> Result<Vec<Result<Outcome, StorageError>>, StorageError> {
        let key = entry.key.as_str();
        let version = entry.version_id.as_deref();
        let started = std::time::Instant::now();
        let (head, mut body) = self.source.get(key, version).await?;
        let answered = started.elapsed();
        let tags = if head.tag_count > 0 {
            self.source.tags(key, version).await?
        } else {
            Vec::new()
        };
        let meta = stamp_meta(&head, entry);
        let tagging = encode_tagging(&tags);
        let layout = self.source_layout(entry, &head).await?;
        let single = head.size <= self.multipart_threshold && layout.is_none();
        let part_size = if single {
            head.size.max(1) as usize
        } else {
            layout.unwrap_or_else(|| part_size_for(head.size, self.part_size)) as usize
        };

        // An object that travels in one request, from a source whose ETag is its MD5, is sent
        // with that ETag as its Content-MD5: every target checks the bytes it receives against
        // the source's own digest, and ferry does not hash them (half of its CPU on 1 MiB
        // objects). Otherwise ferry hashes each part once.
        let source_md5 = single
            .then(|| head.etag.as_deref().and_then(md5_of_etag))
            .flatten();

        let mut senders = Vec::new();
        let mut writers = JoinSet::new();
        for (index, target) in targets.iter().enumerate() {
            let (tx, rx) = mpsc::channel(self.part_concurrency);
            senders.push(Some(tx));
            let writer = Writer {
                target: target.clone(),
                key: key.to_string(),
                meta: meta.clone(),
                tagging: tagging.clone(),
                single,
                md5_from_source: source_md5.is_some(),
                part_concurrency: self.part_concurrency,
                stats: self.stats.clone(),
                pending_aborts: self.pending_aborts.clone(),
            };
            writers.spawn(async move { (index, writer.write(rx).await) });
        }

        // The MD5 of the whole object is needed only to check a plain-MD5 source ETag of an
        // object sent in parts.
        let mut whole = (!single && head.etag.as_deref().is_some_and(etag_is_md5)).then(Md5::new);
        let mut held: Option<Arc<Budget>> = None;
        let mut digests: Vec<u8> = Vec::new();
        let mut parts = 0u64;
        let mut total = 0u64;
        let mut buffer = BytesMut::with_capacity(part_size.min(64 << 20));
        let mut cut: Vec<Option<StorageError>> = targets.iter().map(|_| None).collect();
        loop {
            if held.is_none() {
                // Room for the next part in the process-wide buffer budget, before reading it.
                let remaining = head.size.saturating_sub(total).max(1);
                held = Some(self.room(part_size.min(remaining as usize), key).await?);
            }
            let chunk = body.chunk().await?;
            let end = chunk.is_none();
            if let Some(chunk) = chunk {
                total += chunk.len() as u64;
                self.stats
                    .source_bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if let Some(whole) = whole.as_mut() {
                    whole.update(&chunk);
                }
                buffer.extend_from_slice(&chunk);
            }
            while buffer.len() >= part_size || (end && (!buffer.is_empty() || parts == 0)) {
                let part = buffer.split_to(buffer.len().min(part_size)).freeze();
                let md5: [u8; 16] = source_md5.unwrap_or_else(|| Md5::digest(&part).into());
                digests.extend_from_slice(&md5);
                parts += 1;
                // The part's share of the budget goes with it, freed once every target is done.
                let room = match held.take() {
                    Some(room) => room,
                    None => self.room(part.len(), key).await?,
                };
                for (index, sender) in senders.iter_mut().enumerate() {
                    let Some(tx) = sender else { continue };
                    let piece = Piece::Part(part.clone(), md5, room.clone());
                    let sent = tokio::time::timeout(SEND_TIMEOUT, tx.send(piece)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        *sender = None;
                        cut[index] = Some(targets[index].local_error(
                            "fan-out",
                            key,
                            ErrorKind::Transient,
                            format!("the target took more than {}s to accept a part; retrying on its own", SEND_TIMEOUT.as_secs()),
                        ));
                    }
                }
                if end && buffer.is_empty() {
                    break;
                }
            }
            if end {
                break;
            }
        }
        let whole_md5 = match whole {
            Some(whole) => Some(hex(&whole.finalize())),
            // The source's ETag itself when `source_md5` is set: the targets check the bytes.
            None if parts == 1 => Some(hex(&digests)),
            None => None,
        };
        self.check_source(
            &head,
            total,
            whole_md5.as_deref(),
            layout.map(|_| (&digests, parts)),
        )?;
        let read = started.elapsed();
        for tx in senders.iter().flatten() {
            let _ = tx.send(Piece::End).await;
        }
        drop(senders);

        let mut results: Vec<Option<Result<Outcome, StorageError>>> =
            targets.iter().map(|_| None).collect();
        while let Some(joined) = writers.join_next().await {
            match joined {
                Ok((index, result)) => results[index] = Some(result),
                Err(e) => tracing::error!(error = %e, "a target writer task failed"),
            }
        }
        tracing::debug!(
            answered_ms = answered.as_secs_f64() * 1e3,
            read_ms = read.as_secs_f64() * 1e3,
            written_ms = started.elapsed().as_secs_f64() * 1e3,
            "copy timings"
        );
        Ok(results
            .into_iter()
            .zip(cut)
            .zip(targets)
            .map(|((result, cut), target)| match (cut, result) {
                (Some(e), _) => Err(e),
                (None, Some(r)) => r,
                (None, None) => Err(target.local_error(
                    "fan-out",
                    key,
                    ErrorKind::Transient,
                    "the writer stopped".into(),
                )),
            })
            .collect())
    }

    async fn room(&self, bytes: usize, key: &str) -> Result<Arc<Budget>, StorageError> {
        self.budget.take(bytes).await.ok_or_else(|| {
            self.source.local_error(
                "fan-out",
                key,
                ErrorKind::Transient,
                "the buffer budget was closed".into(),
            )
        })
    }

    /// The source's part size when its ETag says it was uploaded in parts and the server
    /// reports a uniform layout (all parts but the last of one size, within S3's limits).
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

    /// The bytes read must be as many as announced and match the source's ETag where it is
    /// comparable: a plain MD5, or (layout known) the MD5 of the parts' MD5s.
    fn check_source(
        &self,
        head: &ObjectHead,
        length: u64,
        md5_hex: Option<&str>,
        layout: Option<(&Vec<u8>, u64)>,
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
        let etag = head.etag.as_deref().unwrap_or_default();
        if etag_is_md5(etag) && md5_hex != Some(etag) {
            return fail(format!(
                "data read has MD5 {}, the source ETag is {etag}",
                md5_hex.unwrap_or("(not computed)")
            ));
        }
        if let Some((digests, parts)) = layout {
            let expected = format!("{}-{parts}", hex(&Md5::digest(digests)));
            if expected != etag {
                return fail(format!(
                    "data read has multipart ETag {expected}, the source's is {etag}"
                ));
            }
        }
        Ok(())
    }

    /// Retries aborting earlier failed uploads on these targets.
    async fn abort_pending(&self, targets: &[Store]) {
        let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
        let mine: Vec<(Store, String, String)> = {
            let mut pending = self
                .pending_aborts
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let (mine, rest) = pending
                .drain(..)
                .partition(|(t, _, _)| names.contains(&t.name()));
            *pending = rest;
            mine
        };
        for (target, key, upload_id) in mine {
            abort(&target, &key, &upload_id, &self.pending_aborts).await;
        }
    }
}

/// The 16 bytes of a plain-MD5 ETag (32 hex digits); `None` for a multipart or other ETag.
fn md5_of_etag(etag: &str) -> Option<[u8; 16]> {
    if !etag_is_md5(etag) {
        return None;
    }
    let mut md5 = [0u8; 16];
    for (i, byte) in md5.iter_mut().enumerate() {
        *byte = u8::from_str_radix(etag.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(md5)
}

/// Aborts `upload_id`; if the target cannot be reached, remembers it for later.
async fn abort(target: &Store, key: &str, upload_id: &str, pending: &PendingAborts) {
    match target.abort_multipart(key, upload_id).await {
        Ok(()) => {}
        Err(e) if e.kind == ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(error = %e, upload_id, "could not abort a failed multipart upload yet; will retry");
            pending.lock().unwrap_or_else(|p| p.into_inner()).push((
                target.clone(),
                key.to_string(),
                upload_id.to_string(),
            ));
        }
    }
}

/// Writes the parts it receives to one target.
struct Writer {
    target: Store,
    key: String,
    meta: ObjectMeta,
    tagging: Option<String>,
    single: bool,
    /// The single part's Content-MD5 is the source's ETag, not ferry's hash of the bytes.
    md5_from_source: bool,
    part_concurrency: usize,
    stats: Arc<ReplicationStats>,
    pending_aborts: PendingAborts,
}

impl Writer {
    async fn write(self, mut rx: mpsc::Receiver<Piece>) -> Result<Outcome, StorageError> {
        if self.single {
            let Some(Piece::Part(data, md5, _room)) = rx.recv().await else {
                return Err(self.interrupted());
            };
            if !matches!(rx.recv().await, Some(Piece::End)) {
                return Err(self.interrupted());
            }
            let length = data.len() as u64;
            let written = self
                .target
                .put(
                    &self.key,
                    data,
                    &base64(&md5),
                    &self.meta,
                    self.tagging.clone(),
                )
                .await
                .map_err(|e| self.named_digest_error(e, &md5))?;
            self.stats.target_bytes.fetch_add(length, Ordering::Relaxed);
            if let Some(etag) = written.etag.as_deref().filter(|e| etag_is_md5(e)) {
                if etag != hex(&md5) {
                    // A target that ignored Content-MD5 kept bytes that are not the source's:
                    // remove that version before the copy is retried.
                    if written.version_id.is_some() {
                        if let Err(e) = self
                            .target
                            .delete_version(&self.key, written.version_id.as_deref())
                            .await
                        {
                            tracing::warn!(error = %e, "could not remove a copy that failed its check");
                        }
                    }
                    return Err(self.integrity(format!(
                        "target ETag {etag} is not the MD5 {} {}",
                        hex(&md5),
                        if self.md5_from_source {
                            "of the source (its ETag)"
                        } else {
                            "of the data sent"
                        }
                    )));
                }
            }
            return Ok(Outcome::Copied {
                target_version_id: written.version_id,
            });
        }
        let upload_id = self
            .target
            .create_multipart(&self.key, &self.meta, self.tagging.clone())
            .await?;
        let result = self.upload(&mut rx, &upload_id).await;
        if result.is_err() {
            abort(&self.target, &self.key, &upload_id, &self.pending_aborts).await;
        }
        result
    }

    async fn upload(
        &self,
        rx: &mut mpsc::Receiver<Piece>,
        upload_id: &str,
    ) -> Result<Outcome, StorageError> {
        let mut uploads: JoinSet<Result<UploadedPart, StorageError>> = JoinSet::new();
        let mut done = Vec::new();
        let mut number = 0;
        loop {
            match rx.recv().await {
                Some(Piece::Part(data, md5, room)) => {
                    while uploads.len() >= self.part_concurrency {
                        done.push(self.joined(uploads.join_next().await)?);
                    }
                    number += 1;
                    let (target, key, id) =
                        (self.target.clone(), self.key.clone(), upload_id.to_string());
                    uploads.spawn(async move {
                        let _room = room;
                        let length = data.len() as u64;
                        let etag = target
                            .upload_part(&key, &id, number, data, &base64(&md5))
                            .await?;
                        Ok((number, etag, md5, length))
                    });
                }
                Some(Piece::End) => break,
                None => return Err(self.interrupted()),
            }
        }
        while !uploads.is_empty() {
            done.push(self.joined(uploads.join_next().await)?);
        }
        done.sort_by_key(|(n, ..)| *n);
        for (n, etag, md5, _) in &done {
            if etag_is_md5(etag) && *etag != hex(md5) {
                return Err(self.integrity(format!(
                    "part {n}: target ETag {etag} is not the MD5 {}",
                    hex(md5)
                )));
            }
        }
        let parts: Vec<(i32, String)> = done.iter().map(|(n, e, ..)| (*n, e.clone())).collect();
        let digests: Vec<u8> = done.iter().flat_map(|(_, _, m, _)| *m).collect();
        let total: u64 = done.iter().map(|(.., l)| *l).sum();
        let written = self
            .target
            .complete_multipart(&self.key, upload_id, &parts)
            .await?;
        // The multipart ETag is the MD5 of the parts' MD5s, dash, part count: compare it with
        // what the target reports for the version it made (not the Complete response, which
        // some servers fill differently).
        let expected = format!("{}-{}", hex(&Md5::digest(&digests)), parts.len());
        match self
            .target
            .head(&self.key, written.version_id.as_deref())
            .await?
        {
            Head::Object(h) if h.size == total && h.etag.as_deref() == Some(expected.as_str()) => {
                Ok(Outcome::Copied {
                    target_version_id: written.version_id.or(h.version_id),
                })
            }
            Head::Object(h) => Err(self.integrity(format!(
                "target holds {} bytes with ETag {:?}; expected {total} bytes with ETag {expected}",
                h.size, h.etag
            ))),
            _ => Err(self.integrity("the completed upload is not readable on the target".into())),
        }
    }

    fn joined(&self, joined: JoinedPart) -> Result<UploadedPart, StorageError> {
        match joined {
            Some(Ok(Ok(part))) => {
                self.stats.target_bytes.fetch_add(part.3, Ordering::Relaxed);
                Ok(part)
            }
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(self.target.local_error(
                "UploadPart",
                &self.key,
                ErrorKind::Transient,
                format!("upload task failed: {e}"),
            )),
            None => Err(self.interrupted()),
        }
    }

    fn interrupted(&self) -> StorageError {
        self.target.local_error(
            "fan-out",
            &self.key,
            ErrorKind::Transient,
            "the source stream ended early or failed its check; nothing was completed".into(),
        )
    }

    /// A target's BadDigest on a copy sent with the source's ETag as Content-MD5 means the
    /// bytes read from the source are not the object its ETag describes: say so.
    fn named_digest_error(&self, mut e: StorageError, md5: &[u8; 16]) -> StorageError {
        if self.md5_from_source && e.message.contains("BadDigest") {
            e.message = format!(
                "data read has MD5 other than the source ETag {}: the target rejected it ({})",
                hex(md5),
                e.message
            );
        }
        e
    }

    fn integrity(&self, message: String) -> StorageError {
        self.target
            .local_error("verify copy", &self.key, ErrorKind::Transient, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_md5_etag_gives_a_content_md5() {
        let md5: [u8; 16] = Md5::digest(b"ferry").into();
        assert_eq!(md5_of_etag(&hex(&md5)), Some(md5));
        assert_eq!(md5_of_etag(&hex(&md5).to_uppercase()), Some(md5));
        assert_eq!(md5_of_etag(&format!("{}-3", hex(&md5))), None);
        assert_eq!(md5_of_etag("not-an-etag"), None);
        assert_eq!(md5_of_etag(""), None);
    }
}

//! `Writer`: one target's side of a fan-out copy — a buffered PUT, a streamed PUT, or a
//! multipart upload — checked against the MD5 the bytes were sent with. A streamed PUT or a
//! multipart upload during which this process was frozen is abandoned at its commit point (the
//! last chunk, the Complete request): see [`crate::bus::fence`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::aborts::PendingAborts;
use super::budget::Budget;
use super::copier::{base64, hex, Outcome};
use super::ReplicationStats;
use crate::bus::fence::Fence;
use crate::storage::{
    etag_is_md5, BodyAborted, ErrorCode, ErrorKind, Head, ObjectMeta, StorageError, Store, Written,
};

/// Chunks of a streamed copy queued for its request body, per target.
const STREAM_QUEUE: usize = 8;

/// What flows from the reader to each writer.
pub(super) enum Piece {
    /// The next part of the object, with its MD5 and its share of the buffer budget.
    Part(Bytes, [u8; 16], Arc<Budget>),
    /// The next bytes of an object streamed in one request, as the source sent them.
    Chunk(Bytes),
    /// Every part was sent and the source checked out: complete the upload.
    End,
}

/// One part the target accepted.
struct UploadedPart {
    number: i32,
    /// The target's ETag for it.
    etag: String,
    /// ferry's MD5 of the bytes sent.
    md5: [u8; 16],
    length: u64,
}

/// A finished part-upload task.
type JoinedPart = Option<Result<Result<UploadedPart, StorageError>, tokio::task::JoinError>>;

/// Writes the parts it receives to one target.
pub(super) struct Writer {
    pub(super) target: Store,
    pub(super) key: String,
    pub(super) meta: ObjectMeta,
    pub(super) tagging: Option<String>,
    pub(super) single: bool,
    /// Streamed in one request: the object's length and its MD5 (the source's ETag).
    pub(super) streamed: Option<(u64, [u8; 16])>,
    /// The single part's Content-MD5 is the source's ETag, not ferry's hash of the bytes.
    pub(super) md5_from_source: bool,
    pub(super) part_concurrency: usize,
    pub(super) stats: Arc<ReplicationStats>,
    pub(super) pending_aborts: PendingAborts,
    /// When the copy began ([`Fence::now`]): a write this process was frozen during is not
    /// finished (its partition may have moved, and a newer version been written meanwhile).
    pub(super) started: u64,
}

impl Writer {
    pub(super) async fn write(
        self,
        mut rx: mpsc::Receiver<Piece>,
    ) -> Result<Outcome, StorageError> {
        if let Some((length, md5)) = self.streamed {
            return self.stream(rx, length, md5).await;
        }
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
            return self.checked(written, &md5).await;
        }
        let upload_id = self
            .target
            .create_multipart(&self.key, &self.meta, self.tagging.clone())
            .await?;
        let result = self.upload(&mut rx, &upload_id).await;
        if result.is_err() {
            self.pending_aborts
                .abort(&self.target, &self.key, &upload_id)
                .await;
        }
        result
    }

    /// One request whose body is the source's bytes as they arrive. The last chunk is held
    /// back until the reader's end marker, so the target cannot complete an object whose
    /// source stream failed; without the marker the body is aborted.
    async fn stream(
        &self,
        mut rx: mpsc::Receiver<Piece>,
        length: u64,
        md5: [u8; 16],
    ) -> Result<Outcome, StorageError> {
        let (tx, chunks) = mpsc::channel(STREAM_QUEUE);
        let content_md5 = base64(&md5);
        let put = self.target.put_stream(
            &self.key,
            length,
            Some(&content_md5),
            chunks,
            &self.meta,
            self.tagging.clone(),
        );
        let started = self.started;
        let forward = async move {
            let mut last: Option<Bytes> = None;
            loop {
                let next = match rx.recv().await {
                    Some(Piece::Chunk(data)) => last.replace(data).map(Ok),
                    Some(Piece::End) => {
                        let last = match last.take() {
                            _ if Fence::global().frozen_since(started) => {
                                Some(Err(BodyAborted(FROZEN.into())))
                            }
                            data => data.map(Ok),
                        };
                        if let Some(last) = last {
                            let _ = tx.send(last).await;
                        }
                        return;
                    }
                    Some(Piece::Part(..)) | None => Some(Err(BodyAborted(
                        "the source stream ended early or failed its check".into(),
                    ))),
                };
                let abort = matches!(next, Some(Err(_)));
                if let Some(next) = next {
                    if tx.send(next).await.is_err() || abort {
                        return;
                    }
                }
            }
        };
        let (written, ()) = tokio::join!(put, forward);
        let written = written.map_err(|e| self.named_digest_error(e, &md5))?;
        self.stats.target_bytes.fetch_add(length, Ordering::Relaxed);
        self.checked(written, &md5).await
    }

    /// A single-request copy is good when the target's ETag (where it is an MD5) is the
    /// MD5 the data was sent with.
    async fn checked(&self, written: Written, md5: &[u8; 16]) -> Result<Outcome, StorageError> {
        if let Some(etag) = written.etag.as_deref().filter(|e| etag_is_md5(e)) {
            if etag != hex(md5) {
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
                    hex(md5),
                    if self.md5_from_source {
                        "of the source (its ETag)"
                    } else {
                        "of the data sent"
                    }
                )));
            }
        }
        Ok(Outcome::Copied {
            target_version_id: written.version_id,
        })
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
                        Ok(UploadedPart {
                            number,
                            etag,
                            md5,
                            length,
                        })
                    });
                }
                Some(Piece::End) => break,
                Some(Piece::Chunk(_)) | None => return Err(self.interrupted()),
            }
        }
        while !uploads.is_empty() {
            done.push(self.joined(uploads.join_next().await)?);
        }
        done.sort_by_key(|p| p.number);
        for p in &done {
            if etag_is_md5(&p.etag) && p.etag != hex(&p.md5) {
                return Err(self.integrity(format!(
                    "part {}: target ETag {} is not the MD5 {}",
                    p.number,
                    p.etag,
                    hex(&p.md5)
                )));
            }
        }
        let parts: Vec<(i32, String)> = done.iter().map(|p| (p.number, p.etag.clone())).collect();
        let digests: Vec<u8> = done.iter().flat_map(|p| p.md5).collect();
        let total: u64 = done.iter().map(|p| p.length).sum();
        if Fence::global().frozen_since(self.started) {
            return Err(self.target.local_error(
                "write",
                &self.key,
                ErrorKind::Transient,
                FROZEN.into(),
            ));
        }
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
                self.stats
                    .target_bytes
                    .fetch_add(part.length, Ordering::Relaxed);
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
        if self.md5_from_source && e.is(ErrorCode::BadDigest) {
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

/// Why a write this process was frozen during is abandoned.
const FROZEN: &str = "this process was frozen during the copy: not completing a write whose partition may have moved meanwhile";

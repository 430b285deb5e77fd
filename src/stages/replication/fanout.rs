//! `Fanout`: one read of a source version, written to one or several targets at once.
//!
//! The source is read once and handed to a [`Writer`] per target through a bounded channel,
//! so memory stays small whatever the object's size, and source egress is one read for any
//! number of targets. Three shapes: a source whose ETag is its MD5 goes in one request with
//! that ETag as Content-MD5 (the target checks the bytes; up to one part buffered, larger
//! streamed through chunk by chunk up to the multipart threshold); other objects up to one
//! part go in one buffered request with ferry's MD5; the rest in parts, each hashed once.
//! A writer that does not take the next bytes within [`SEND_TIMEOUT`] is cut off (its copy
//! fails and is retried on its own) so one slow target cannot hold the others.
//!
//! Nothing is completed before the source checks out: a writer finishes its upload (or sends
//! a streamed body's last chunk) only when it receives the end marker, which is sent after the
//! byte count and the source's ETag (plain MD5, or multipart ETag when the source's part
//! layout is known) have been verified.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use md5::{Digest, Md5};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::aborts::PendingAborts;
use super::budget::{Budget, BufferBudget};
use super::copier::{hex, part_size_for, stamp_meta, Outcome, MAX_PART, MAX_PARTS, MIN_PART};
use super::writer::{Piece, Writer};
use super::ReplicationStats;
use crate::bus::fence::Fence;
use crate::model::ReplicationEntry;
use crate::storage::{
    encode_tagging, etag_is_md5, ErrorKind, ObjectBody, ObjectHead, StorageError, Store,
};

/// How long a writer may take to accept the next part before it is cut off: generous for a
/// busy target, short enough that a stalled one does not hold the other targets for long.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

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
        self.pending_aborts.retry(targets).await;
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
        let layout = self.source_layout(entry, &head).await?;
        let plan = Plan::new(&head, layout, self.part_size, self.multipart_threshold);
        let (mut senders, mut writers) = self.writers(entry, &head, &tags, &plan, targets);
        let mut cut: Vec<Option<StorageError>> = targets.iter().map(|_| None).collect();
        let mut sending = Sending {
            senders: &mut senders,
            cut: &mut cut,
            targets,
            key,
        };
        let read = if plan.streamed {
            let total = self.pass_through(&mut body, &mut sending).await?;
            // The source's ETag itself: the targets check the bytes.
            let md5 = plan.source_md5.map(|md5| hex(&md5));
            Read {
                total,
                md5,
                digests: Vec::new(),
                parts: 0,
            }
        } else {
            self.read_parts(&mut body, &head, &plan, &mut sending)
                .await?
        };
        self.check_source(
            &head,
            read.total,
            read.md5.as_deref(),
            layout.map(|_| (&read.digests, read.parts)),
        )?;
        let read_time = started.elapsed();
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
            read_ms = read_time.as_secs_f64() * 1e3,
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

    /// One writer task per target, each fed by its own bounded channel.
    fn writers(
        &self,
        entry: &ReplicationEntry,
        head: &ObjectHead,
        tags: &[(String, String)],
        plan: &Plan,
        targets: &[Store],
    ) -> (Vec<Option<mpsc::Sender<Piece>>>, Writers) {
        let meta = stamp_meta(head, entry);
        let tagging = encode_tagging(tags);
        let mut senders = Vec::new();
        let mut writers = JoinSet::new();
        for (index, target) in targets.iter().enumerate() {
            let (tx, rx) = mpsc::channel(self.part_concurrency);
            senders.push(Some(tx));
            let writer = Writer {
                target: target.clone(),
                key: entry.key.clone(),
                meta: meta.clone(),
                tagging: tagging.clone(),
                single: plan.single,
                streamed: plan
                    .source_md5
                    .filter(|_| plan.streamed)
                    .map(|md5| (head.size, md5)),
                md5_from_source: plan.source_md5.is_some(),
                part_concurrency: self.part_concurrency,
                stats: self.stats.clone(),
                pending_aborts: self.pending_aborts.clone(),
                started: Fence::global().now(),
            };
            writers.spawn(async move { (index, writer.write(rx).await) });
        }
        (senders, writers)
    }

    /// Reads the source in parts, each held in the buffer budget until every target has sent
    /// it, hashing each part (and the whole object where its ETag is a plain MD5).
    async fn read_parts(
        &self,
        body: &mut ObjectBody,
        head: &ObjectHead,
        plan: &Plan,
        sending: &mut Sending<'_>,
    ) -> Result<Read, StorageError> {
        let key = sending.key;
        let part_size = plan.part_size;
        // The MD5 of the whole object is needed only to check a plain-MD5 source ETag of an
        // object sent in parts.
        let mut whole =
            (!plan.single && head.etag.as_deref().is_some_and(etag_is_md5)).then(Md5::new);
        let mut held: Option<Arc<Budget>> = None;
        let mut digests: Vec<u8> = Vec::new();
        let mut parts = 0u64;
        let mut total = 0u64;
        let mut buffer = BytesMut::with_capacity(part_size.min(64 << 20));
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
                let md5: [u8; 16] = plan.source_md5.unwrap_or_else(|| Md5::digest(&part).into());
                digests.extend_from_slice(&md5);
                parts += 1;
                // The part's share of the budget goes with it, freed once every target is done.
                let room = match held.take() {
                    Some(room) => room,
                    None => self.room(part.len(), key).await?,
                };
                sending
                    .send(|| Piece::Part(part.clone(), md5, room.clone()))
                    .await;
                if end && buffer.is_empty() {
                    break;
                }
            }
            if end {
                break;
            }
        }
        let md5 = match whole {
            Some(whole) => Some(hex(&whole.finalize())),
            None if parts == 1 => Some(hex(&digests)),
            None => None,
        };
        Ok(Read {
            total,
            md5,
            digests,
            parts,
        })
    }

    /// Hands the source's chunks to every target as they come (the channels, a few chunks
    /// each, bound the memory); returns the bytes read.
    async fn pass_through(
        &self,
        body: &mut ObjectBody,
        sending: &mut Sending<'_>,
    ) -> Result<u64, StorageError> {
        let mut total = 0u64;
        while let Some(chunk) = body.chunk().await? {
            total += chunk.len() as u64;
            self.stats
                .source_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            sending.send(|| Piece::Chunk(chunk.clone())).await;
        }
        Ok(total)
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
}

/// The writers' channels, and why each target that no longer takes pieces was cut off.
struct Sending<'a> {
    senders: &'a mut [Option<mpsc::Sender<Piece>>],
    cut: &'a mut [Option<StorageError>],
    targets: &'a [Store],
    key: &'a str,
}

impl Sending<'_> {
    /// Hands one piece (made by `piece`) to every target still taking them; a target that
    /// does not take it within [`SEND_TIMEOUT`] is cut off, its copy failed to be retried on
    /// its own.
    async fn send(&mut self, piece: impl Fn() -> Piece) {
        for (index, sender) in self.senders.iter_mut().enumerate() {
            let Some(tx) = sender else { continue };
            let sent = tokio::time::timeout(SEND_TIMEOUT, tx.send(piece())).await;
            if !matches!(sent, Ok(Ok(()))) {
                *sender = None;
                self.cut[index] = Some(self.targets[index].local_error(
                    "fan-out",
                    self.key,
                    ErrorKind::Transient,
                    format!(
                        "the target took more than {}s to accept the next bytes; retrying on its own",
                        SEND_TIMEOUT.as_secs()
                    ),
                ));
            }
        }
    }
}

/// What was read of the source: its length, its MD5 where known (hex), and the parts' MD5s.
struct Read {
    total: u64,
    md5: Option<String>,
    digests: Vec<u8>,
    parts: u64,
}

/// The writer tasks of one copy: (target index, its result).
type Writers = JoinSet<(usize, Result<Outcome, StorageError>)>;

/// How one object travels, decided from its head before any byte is read.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// The source's ETag as MD5, sent as each request's Content-MD5 (single or streamed only).
    source_md5: Option<[u8; 16]>,
    /// One request whose body is the source's bytes as they arrive.
    streamed: bool,
    /// One buffered request.
    single: bool,
    /// Bytes per part (the whole object when `single`).
    part_size: usize,
}

impl Plan {
    /// A source whose ETag is its MD5 travels in one request up to the multipart threshold,
    /// with that ETag as its Content-MD5: every target checks the bytes it receives against
    /// the source's own digest (and ends with the source's ETag); ferry does not hash them.
    /// Up to one part it is buffered whole; larger, streamed through as the source sends it
    /// (no part buffers). Other sources go in one buffered request up to one part (hashed by
    /// ferry), in parts above — in the source's own layout when known (`layout`).
    fn new(head: &ObjectHead, layout: Option<u64>, part_size: u64, threshold: u64) -> Self {
        let source_md5 = head.etag.as_deref().and_then(md5_of_etag);
        let buffered_max = part_size.min(threshold);
        let streamed = source_md5.is_some() && head.size > buffered_max && head.size <= threshold;
        let single = !streamed && head.size <= buffered_max && layout.is_none();
        let part_size = if single {
            head.size.max(1) as usize
        } else {
            layout.unwrap_or_else(|| part_size_for(head.size, part_size)) as usize
        };
        Self {
            source_md5: source_md5.filter(|_| single || streamed),
            streamed,
            single,
            part_size,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(size: u64, etag: &str) -> ObjectHead {
        ObjectHead {
            size,
            etag: Some(etag.into()),
            version_id: None,
            last_modified_ms: 0,
            meta: crate::storage::ObjectMeta::default(),
            tag_count: 0,
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_plan_follows_the_source_etag_and_the_size() {
        let md5: [u8; 16] = Md5::digest(b"ferry").into();
        let plain = hex(&md5);
        let (part, threshold) = (8 * MIB, 512 * MIB);
        // Up to one part, a plain-MD5 source goes in one buffered request with its ETag.
        let small = Plan::new(&head(MIB, &plain), None, part, threshold);
        assert_eq!(
            small,
            Plan {
                source_md5: Some(md5),
                streamed: false,
                single: true,
                part_size: MIB as usize
            }
        );
        // Larger, up to the threshold: streamed through, still with the source's MD5.
        let mid = Plan::new(&head(100 * MIB, &plain), None, part, threshold);
        assert!(mid.streamed && !mid.single && mid.source_md5 == Some(md5));
        // Above the threshold: in parts, each hashed by ferry.
        let big = Plan::new(&head(600 * MIB, &plain), None, part, threshold);
        assert!(!big.streamed && !big.single && big.source_md5.is_none());
        assert_eq!(big.part_size, part as usize);
        // A multipart source: one request up to a part, else in parts of its own layout.
        let multi = format!("{plain}-3");
        let tiny = Plan::new(&head(MIB, &multi), None, part, threshold);
        assert!(tiny.single && tiny.source_md5.is_none());
        let laid_out = Plan::new(&head(20 * MIB, &multi), Some(7 * MIB), part, threshold);
        assert!(!laid_out.single && !laid_out.streamed);
        assert_eq!(laid_out.part_size, 7 * MIB as usize);
        // An empty object is one request of one (empty) part.
        let empty = Plan::new(&head(0, &plain), None, part, threshold);
        assert!(empty.single && empty.part_size == 1);
    }

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

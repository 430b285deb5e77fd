//! Request bodies of the ingest endpoint: a PutObject's streamed into the store as it arrives,
//! a part's read whole within its room; either way checked against the request's checksums
//! and dropped when it stalls.

use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use md5::{Digest, Md5};
use s3s::checksum::ChecksumHasher;
use s3s::dto::StreamingBlob;
use s3s::{s3_error, S3Request, S3Result};
use tokio::sync::OwnedSemaphorePermit;

use super::checksum::Claims;
use crate::storage::BodyAborted;

/// Largest body of one UploadPart: it is held in memory while it is verified and written
/// (S3 clients upload parts of 5–16 MiB by default).
pub const MAX_BODY: usize = 64 << 20;

/// Largest object of one PutObject (S3's own limit): it is streamed into the buffer.
pub const MAX_OBJECT: u64 = 5 << 30;

/// A request body read whole, and the room it takes in `ingest.body_memory`.
pub struct Body {
    pub bytes: Bytes,
    pub _room: OwnedSemaphorePermit,
}

/// Chunks of a streamed body queued between the client and the store.
pub const STREAM_QUEUE: usize = 4;

/// The body's length as the request declares it: the decoded length of an aws-chunked
/// body, else Content-Length.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    ["x-amz-decoded-content-length", "content-length"]
        .into_iter()
        .find_map(|name| headers.get(name)?.to_str().ok()?.parse::<u64>().ok())
}

/// Feeds a request body to the store as it arrives, hashing it for the request's checksums.
/// A body that stalls for `idle`, breaks off or does not match its checksums is aborted (the
/// store keeps nothing of it) and the reason returned.
pub async fn feed(
    body: Option<StreamingBlob>,
    chunks: tokio::sync::mpsc::Sender<Result<Bytes, BodyAborted>>,
    claims: &Claims,
    trailers: Option<s3s::TrailingHeaders>,
    idle: Duration,
) -> S3Result<()> {
    let mut hasher = claims.hasher();
    let outcome = async {
        if let Some(mut body) = body {
            while let Some(chunk) = next_chunk(&mut body, idle).await? {
                hasher.update(&chunk);
                if chunks.send(Ok(chunk)).await.is_err() {
                    // The store stopped taking the body: its error says why.
                    return Ok(());
                }
            }
        }
        let trailers = trailers.as_ref().and_then(|t| t.take());
        claims.verify(&hasher.finalize(), trailers.as_ref())
    }
    .await;
    if let Err(e) = &outcome {
        let _ = chunks.send(Err(BodyAborted(e.to_string()))).await;
    }
    outcome
}

/// The body's next chunk, `None` at its end; a body that sends nothing for `idle` is a
/// `RequestTimeout`.
async fn next_chunk(body: &mut StreamingBlob, idle: Duration) -> S3Result<Option<Bytes>> {
    match tokio::time::timeout(idle, body.next()).await {
        Err(_) => Err(s3_error!(
            RequestTimeout,
            "no body bytes arrived for {idle:?} (ingest.header_timeout)"
        )),
        Ok(None) => Ok(None),
        Ok(Some(chunk)) => chunk
            .map(Some)
            .map_err(|e| s3_error!(IncompleteBody, "reading the body: {e}")),
    }
}

/// Reads a request body whole, refusing more than [`MAX_BODY`], and checks it against the
/// request's additional checksums (headers or aws-chunked trailer).
pub async fn read_body<T>(
    req: &mut S3Request<T>,
    body: Option<StreamingBlob>,
    idle: Duration,
) -> S3Result<Bytes> {
    let claims = Claims::of(&req.headers)?;
    let mut hasher = claims.hasher();
    let body = read_whole(body, &mut hasher, idle).await?;
    let trailers = req.trailing_headers.as_ref().and_then(|t| t.take());
    claims.verify(&hasher.finalize(), trailers.as_ref())?;
    Ok(body)
}

async fn read_whole(
    body: Option<StreamingBlob>,
    hasher: &mut ChecksumHasher,
    idle: Duration,
) -> S3Result<Bytes> {
    let mut buf = BytesMut::new();
    if let Some(mut body) = body {
        while let Some(chunk) = next_chunk(&mut body, idle).await? {
            if buf.len() + chunk.len() > MAX_BODY {
                return Err(s3_error!(
                    EntityTooLarge,
                    "bodies above {} MiB go in parts (multipart upload)",
                    MAX_BODY >> 20
                ));
            }
            hasher.update(&chunk);
            buf.extend_from_slice(&chunk);
        }
    }
    Ok(buf.freeze())
}

/// The client's Content-MD5, or one computed here so the store still verifies what it wrote.
pub fn content_md5(given: Option<String>, body: &[u8]) -> String {
    given.unwrap_or_else(|| base64::engine::general_purpose::STANDARD.encode(Md5::digest(body)))
}

//! `ChannelBody`: an HTTP request body fed chunk by chunk through a channel, of known length.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::{BodyAborted, BodyChunks};

/// A body of exactly `remaining` bytes read from [`BodyChunks`]; an aborted chunk fails the
/// request (the server sees a body cut short and keeps nothing).
pub struct ChannelBody {
    chunks: BodyChunks,
    remaining: u64,
}

impl ChannelBody {
    pub fn new(chunks: BodyChunks, length: u64) -> Self {
        Self {
            chunks,
            remaining: length,
        }
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyAborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyAborted>>> {
        match self.chunks.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) if self.remaining > 0 => Poll::Ready(Some(Err(BodyAborted(
                format!("the stream ended {} bytes short", self.remaining),
            )))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(chunk))) => {
                let len = chunk.len() as u64;
                if len > self.remaining {
                    return Poll::Ready(Some(Err(BodyAborted(format!(
                        "the stream has more bytes than the {} announced",
                        self.remaining
                    )))));
                }
                self.remaining -= len;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

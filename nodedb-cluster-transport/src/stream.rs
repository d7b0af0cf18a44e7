//! Bulk byte streams (snapshots, vShard exports): chunked, bounded in memory by backpressure.

use crate::{BoxFuture, Bytes, TransportError};
use std::fmt;

/// Largest chunk one [`OutboundStream::write`] may carry. Larger writes are refused.
pub const STREAM_CHUNK_BYTES_MAX: usize = 1024 * 1024;

/// Implementation side of an outbound stream.
pub trait ChunkSink: Send {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), TransportError>>;
    /// Ends the stream and waits for the receiver's single response.
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<Bytes, TransportError>>;
}

/// Implementation side of an inbound stream.
pub trait ChunkSource: Send {
    /// The next chunk, or `None` once the sender finished cleanly. A stream that breaks or
    /// fails its checksum yields an error, never a silent short read.
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, TransportError>>;
}

/// The sending half of a bulk stream.
pub struct OutboundStream {
    sink: Box<dyn ChunkSink>,
}

/// The receiving half of a bulk stream, handed to [`crate::Handler::on_stream`].
pub struct InboundStream {
    source: Box<dyn ChunkSource>,
}

impl OutboundStream {
    pub fn new(sink: Box<dyn ChunkSink>) -> OutboundStream {
        OutboundStream { sink }
    }

    /// Sends one chunk of at most [`STREAM_CHUNK_BYTES_MAX`] bytes; waits while the receiver is
    /// behind, so memory stays bounded on both sides.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), TransportError> {
        if chunk.len() > STREAM_CHUNK_BYTES_MAX {
            return Err(TransportError::TooLarge {
                bytes: chunk.len() as u64,
                limit: STREAM_CHUNK_BYTES_MAX as u64,
            });
        }
        self.sink.write(chunk).await
    }

    /// Ends the stream and returns the receiver's response.
    pub async fn finish(self) -> Result<Bytes, TransportError> {
        self.sink.finish().await
    }
}

impl InboundStream {
    pub fn new(source: Box<dyn ChunkSource>) -> InboundStream {
        InboundStream { source }
    }

    /// The next chunk, or `None` at the clean end of the stream.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, TransportError> {
        self.source.next_chunk().await
    }
}

impl fmt::Debug for OutboundStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundStream").finish_non_exhaustive()
    }
}

impl fmt::Debug for InboundStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundStream").finish_non_exhaustive()
    }
}

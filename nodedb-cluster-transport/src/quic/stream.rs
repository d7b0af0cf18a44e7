//! Bulk streams over one QUIC stream: the sender writes chunk frames and an end frame with the
//! total length and CRC32C; the receiver reads a frame only when its handler asks for the next
//! chunk, so QUIC flow control holds the sender back and memory stays bounded on both sides.

use super::metrics;
use crate::codec::{Frame, FrameError, FrameKind, StreamChecksum, read_frame, read_required_frame};
use crate::{BoxFuture, Bytes, ChunkSink, ChunkSource, TransportError};
use nodedb_cluster_core::NodeId;
use std::time::Duration;

/// How long a sender whose write was refused waits for the receiver's error answer.
const EARLY_ANSWER_WAIT_MS: u64 = 1_000;

/// Sending half: chunk frames, then an end frame, then the receiver's answer.
pub(super) struct QuicSink {
    to: NodeId,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    checksum: StreamChecksum,
    timeout: Duration,
    failed: bool,
}

/// Receiving half, handed to the handler.
pub(super) struct QuicSource {
    from: NodeId,
    recv: quinn::RecvStream,
    checksum: StreamChecksum,
    idle: Duration,
    ended: bool,
}

impl QuicSink {
    pub(super) fn new(
        to: NodeId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        timeout: Duration,
    ) -> QuicSink {
        QuicSink {
            to,
            send,
            recv,
            checksum: StreamChecksum::default(),
            timeout,
            failed: false,
        }
    }

    /// After a refused write: the receiver may have answered with an error before it stopped
    /// reading; report that rather than a bare broken stream.
    async fn early_answer(&mut self, write_error: TransportError) -> TransportError {
        let wait = Duration::from_millis(EARLY_ANSWER_WAIT_MS).min(self.timeout);
        match tokio::time::timeout(wait, read_frame(&mut self.recv)).await {
            Ok(Ok(Some(frame))) if frame.kind == FrameKind::ErrorResponse => {
                match frame.handler_error() {
                    Ok(error) => TransportError::Remote {
                        node: self.to,
                        error,
                    },
                    Err(error) => error.into_transport(self.to),
                }
            }
            _ => write_error,
        }
    }
}

impl ChunkSink for QuicSink {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            if self.failed {
                return Err(TransportError::ConnectionLost {
                    node: self.to,
                    reason: "stream already failed".into(),
                });
            }
            self.checksum.update(&chunk);
            let frame = Frame::new(FrameKind::StreamChunk, chunk);
            let frames = [&frame];
            let written = tokio::time::timeout(
                self.timeout,
                super::send_frames(&mut self.send, self.to, &frames),
            );
            let result = match written.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => {
                    self.failed = true;
                    let error = error.into_transport(self.to);
                    Err(self.early_answer(error).await)
                }
                Err(_elapsed) => {
                    self.failed = true;
                    Err(TransportError::Timeout { node: self.to })
                }
            };
            metrics::outcome(self.to, &result);
            result
        })
    }

    fn finish(mut self: Box<Self>) -> BoxFuture<'static, Result<Bytes, TransportError>> {
        Box::pin(async move {
            let to = self.to;
            if self.failed {
                return Err(TransportError::ConnectionLost {
                    node: to,
                    reason: "stream already failed".into(),
                });
            }
            let end = Frame::stream_end(self.checksum.summary());
            let timeout = self.timeout;
            let sink = &mut *self;
            let finish = async {
                super::send_frames(&mut sink.send, to, &[&end]).await?;
                let _ = sink.send.finish();
                let answer = read_required_frame(&mut sink.recv).await?;
                metrics::frames_received(to, &[&answer]);
                Ok::<Frame, FrameError>(answer)
            };
            let result = match tokio::time::timeout(timeout, finish).await {
                Err(_elapsed) => Err(TransportError::Timeout { node: to }),
                Ok(Err(error)) => {
                    let error = error.into_transport(to);
                    Err(self.early_answer(error).await)
                }
                Ok(Ok(frame)) => super::response_of(to, frame),
            };
            metrics::outcome(to, &result);
            result
        })
    }
}

impl QuicSource {
    pub(super) fn new(from: NodeId, recv: quinn::RecvStream, idle: Duration) -> QuicSource {
        QuicSource {
            from,
            recv,
            checksum: StreamChecksum::default(),
            idle,
            ended: false,
        }
    }

    fn protocol(&self, reason: String) -> TransportError {
        TransportError::Protocol {
            node: self.from,
            reason,
        }
    }
}

impl ChunkSource for QuicSource {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, TransportError>> {
        Box::pin(async move {
            if self.ended {
                return Ok(None);
            }
            let frame =
                match tokio::time::timeout(self.idle, read_required_frame(&mut self.recv)).await {
                    Err(_elapsed) => return Err(TransportError::Timeout { node: self.from }),
                    Ok(Err(error)) => return Err(error.into_transport(self.from)),
                    Ok(Ok(frame)) => frame,
                };
            metrics::frames_received(self.from, &[&frame]);
            match frame.kind {
                FrameKind::StreamChunk => {
                    self.checksum.update(&frame.body);
                    Ok(Some(frame.body))
                }
                FrameKind::StreamEnd => {
                    let claimed = frame
                        .stream_end_summary()
                        .map_err(|error| error.into_transport(self.from))?;
                    let actual = self.checksum.summary();
                    if claimed != actual {
                        return Err(self.protocol(format!(
                            "stream summary mismatch: sender says {} bytes crc {:#010x}, \
                             received {} bytes crc {:#010x}",
                            claimed.total_bytes, claimed.crc, actual.total_bytes, actual.crc
                        )));
                    }
                    self.ended = true;
                    Ok(None)
                }
                other => Err(self.protocol(format!("unexpected {other:?} frame in a stream"))),
            }
        })
    }
}

//! In-memory bulk streams: a bounded channel of chunks between the two ends (backpressure),
//! with an explicit end marker so that a sender that vanishes is an error, not a short read.

use super::{Endpoint, MemoryNetwork, lost};
use crate::{BoxFuture, Bytes, ChunkSink, ChunkSource, HandlerError, TransportError};
use nodedb_cluster_core::NodeId;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Items on an in-memory stream: an explicit end marker, so that a sender that vanishes
/// without finishing is an error for the receiver, never a silent short read.
pub(super) enum StreamItem {
    Chunk(Bytes),
    End,
}

pub(super) struct MemorySink {
    pub(super) network: MemoryNetwork,
    /// The sender's own endpoint: a crashed sender cannot go on writing.
    pub(super) from_endpoint: Arc<Endpoint>,
    pub(super) from: NodeId,
    pub(super) to: NodeId,
    pub(super) chunks: Option<mpsc::Sender<StreamItem>>,
    pub(super) response: Option<oneshot::Receiver<Result<Bytes, HandlerError>>>,
    /// The receiver's answer when it came before `finish` (it stopped reading early).
    pub(super) early: Option<Result<Bytes, HandlerError>>,
    /// Bounds each step: every chunk write and the final answer.
    pub(super) timeout: Duration,
}

pub(super) struct MemorySource {
    pub(super) node: NodeId,
    pub(super) chunks: mpsc::Receiver<StreamItem>,
    pub(super) ended: bool,
}

impl MemorySink {
    fn check_link(&self) -> Result<(), TransportError> {
        if !self.from_endpoint.is_alive() {
            return Err(TransportError::Shutdown);
        }
        if self.network.is_blocked(self.from, self.to) {
            return Err(TransportError::ConnectionLost {
                node: self.to,
                reason: "link blocked by a partition".into(),
            });
        }
        Ok(())
    }
}

impl ChunkSink for MemorySink {
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            if let Some(early) = &self.early {
                return Err(early_error(self.to, early));
            }
            if let Err(error) = self.check_link() {
                self.chunks = None;
                return Err(error);
            }
            let Some(chunks) = &self.chunks else {
                return Err(lost(self.to, "stream already failed"));
            };
            let sent = tokio::time::timeout(self.timeout, chunks.send(StreamItem::Chunk(chunk)));
            match sent.await {
                Ok(Ok(())) => Ok(()),
                Err(_elapsed) => Err(TransportError::Timeout { node: self.to }),
                Ok(Err(_closed)) => {
                    // The receiver stopped reading: its handler returned, maybe with an error.
                    self.chunks = None;
                    let response = self.response.take();
                    let early = match response {
                        Some(response) => tokio::time::timeout(self.timeout, response).await,
                        None => return Err(lost(self.to, "stream already failed")),
                    };
                    match early {
                        Ok(Ok(result)) => {
                            let error = early_error(self.to, &result);
                            self.early = Some(result);
                            Err(error)
                        }
                        Ok(Err(_)) => Err(lost(self.to, "receiver closed the stream")),
                        Err(_) => Err(TransportError::Timeout { node: self.to }),
                    }
                }
            }
        })
    }

    fn finish(mut self: Box<Self>) -> BoxFuture<'static, Result<Bytes, TransportError>> {
        Box::pin(async move {
            let to = self.to;
            if let Some(early) = self.early.take() {
                return early.map_err(|error| TransportError::Remote { node: to, error });
            }
            self.check_link()?;
            if let Some(chunks) = self.chunks.take() {
                // A closed receiver is fine here: its response tells what happened.
                let _ = tokio::time::timeout(self.timeout, chunks.send(StreamItem::End)).await;
            }
            let Some(response) = self.response.take() else {
                return Err(lost(to, "stream already failed"));
            };
            match tokio::time::timeout(self.timeout, response).await {
                Ok(Ok(result)) => {
                    result.map_err(|error| TransportError::Remote { node: to, error })
                }
                Ok(Err(_)) => Err(lost(to, "receiver went away before answering")),
                Err(_) => Err(TransportError::Timeout { node: to }),
            }
        })
    }
}

impl ChunkSource for MemorySource {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, TransportError>> {
        Box::pin(async move {
            if self.ended {
                return Ok(None);
            }
            match self.chunks.recv().await {
                Some(StreamItem::Chunk(chunk)) => Ok(Some(chunk)),
                Some(StreamItem::End) => {
                    self.ended = true;
                    Ok(None)
                }
                None => Err(lost(
                    self.node,
                    "sender vanished before finishing the stream",
                )),
            }
        })
    }
}

/// What a write reports when the receiver answered before the stream ended.
fn early_error(node: NodeId, early: &Result<Bytes, HandlerError>) -> TransportError {
    match early {
        Err(error) => TransportError::Remote {
            node,
            error: error.clone(),
        },
        Ok(_) => lost(node, "receiver answered before the stream ended"),
    }
}

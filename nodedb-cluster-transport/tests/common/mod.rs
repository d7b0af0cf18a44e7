//! Handlers shared by the transport tests: an echo handler that counts calls, and a stream
//! handler that checks the bytes it receives while measuring how much it holds at once.

#![allow(dead_code)]

use nodedb_cluster_core::NodeId;
use nodedb_cluster_transport::{BoxFuture, Bytes, Handler, HandlerError, InboundStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Answers `b"echo:" + request`; requests starting with `b"sleep"` sleep first, `b"fail"` fail.
/// Streams: reads every chunk, answers with `total_len u64 LE`.
#[derive(Debug, Default)]
pub struct EchoHandler {
    pub requests: AtomicU64,
    pub senders: Mutex<Vec<NodeId>>,
    /// Second byte of each request starting with `r`, in arrival order.
    pub arrivals: Mutex<Vec<u8>>,
    pub sleep: Mutex<Duration>,
    /// Largest number of chunk bytes held at once by the stream handler.
    pub stream_bytes_held_max: AtomicU64,
    pub stream_bytes_total: AtomicU64,
    /// Chunk bytes consumed so far by stream handlers (updated per chunk).
    pub stream_bytes_consumed: AtomicU64,
    /// Streams that ended with a transport error instead of a clean end.
    pub stream_errors: AtomicU64,
    /// Pause between chunk reads, to make a slow reader.
    pub read_pause: Mutex<Duration>,
}

impl EchoHandler {
    pub fn new() -> EchoHandler {
        EchoHandler::default()
    }

    pub fn with_sleep(sleep: Duration) -> EchoHandler {
        let handler = EchoHandler::default();
        *handler.sleep.lock().unwrap() = sleep;
        handler
    }

    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Handler for EchoHandler {
    fn on_request(
        &self,
        from: NodeId,
        request: Bytes,
    ) -> BoxFuture<'_, Result<Bytes, HandlerError>> {
        Box::pin(async move {
            self.requests.fetch_add(1, Ordering::SeqCst);
            self.senders.lock().unwrap().push(from);
            if let [b'r', index] = request.as_ref() {
                self.arrivals.lock().unwrap().push(*index);
            }
            if request.starts_with(b"sleep") {
                let sleep = *self.sleep.lock().unwrap();
                tokio::time::sleep(sleep).await;
            }
            if request.starts_with(b"fail") {
                return Err(HandlerError::BadRequest("asked to fail".into()));
            }
            let mut response = b"echo:".to_vec();
            response.extend_from_slice(&request);
            Ok(Bytes::from(response))
        })
    }

    fn on_stream(
        &self,
        from: NodeId,
        header: Bytes,
        mut body: InboundStream,
    ) -> BoxFuture<'_, Result<Bytes, HandlerError>> {
        Box::pin(async move {
            self.senders.lock().unwrap().push(from);
            if header.starts_with(b"reject") {
                return Err(HandlerError::Failed("stream rejected".into()));
            }
            let pause = *self.read_pause.lock().unwrap();
            let mut total: u64 = 0;
            loop {
                let chunk = body.next_chunk().await.map_err(|error| {
                    self.stream_errors.fetch_add(1, Ordering::SeqCst);
                    HandlerError::Failed(error.to_string())
                })?;
                let Some(chunk) = chunk else { break };
                // Chunks are consumed one at a time: what this handler holds is one chunk.
                self.stream_bytes_held_max
                    .fetch_max(chunk.len() as u64, Ordering::SeqCst);
                for (offset, byte) in chunk.iter().enumerate() {
                    let expected = pattern_byte(total + offset as u64);
                    if *byte != expected {
                        return Err(HandlerError::Failed(format!(
                            "byte {} is {byte}, expected {expected}",
                            total + offset as u64
                        )));
                    }
                }
                total += chunk.len() as u64;
                self.stream_bytes_consumed
                    .fetch_add(chunk.len() as u64, Ordering::SeqCst);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            self.stream_bytes_total.store(total, Ordering::SeqCst);
            Ok(Bytes::copy_from_slice(&total.to_le_bytes()))
        })
    }
}

/// The byte at `position` of a test stream: a pattern that catches reordered or lost chunks.
pub fn pattern_byte(position: u64) -> u8 {
    (position.wrapping_mul(31) ^ (position >> 13)) as u8
}

/// A chunk of the test pattern starting at `start`.
pub fn pattern_chunk(start: u64, len: usize) -> Bytes {
    Bytes::from(
        (0..len as u64)
            .map(|offset| pattern_byte(start + offset))
            .collect::<Vec<u8>>(),
    )
}

/// Polls `condition` every few milliseconds until it holds or `deadline` passes.
pub async fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    let polls_max = 10_000;
    for _ in 0..polls_max {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    condition()
}

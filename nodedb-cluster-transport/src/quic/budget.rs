//! What one peer may hold in this node at once, over all its connections: streams being
//! served, and bytes of the frames they carry. A certified peer could otherwise open many
//! connections of many streams, each announcing a frame of the largest size, and make the node
//! buffer far more than it has. A stream past either budget is refused at once (reset, logged,
//! counted as `over_budget`), before its body is read; the peer's other streams go on, and
//! what it held is given back when those streams end.

use super::CONCURRENT_STREAMS_MAX;
use crate::STREAM_CHUNK_BYTES_MAX;
use crate::codec::FRAME_BYTES_MAX;
use nodedb_cluster_core::NodeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frame bytes one peer may have in this node at once: requests and stream openings being
/// read or served, plus one chunk for each of its bulk streams. Room for two frames of the
/// largest size.
pub const INBOUND_BYTES_PER_PEER_MAX: u32 = 2 * FRAME_BYTES_MAX;
/// Streams one peer may have being served at once, over all its connections: two connections'
/// worth, so a redial while the old connection drains is not refused.
pub const INBOUND_STREAMS_PER_PEER_MAX: u32 = 2 * CONCURRENT_STREAMS_MAX;

/// What one peer may hold in this node at once, over all its connections; the defaults are
/// [`INBOUND_BYTES_PER_PEER_MAX`] and [`INBOUND_STREAMS_PER_PEER_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundBudget {
    pub bytes_per_peer_max: u32,
    pub streams_per_peer_max: u32,
}

impl Default for InboundBudget {
    fn default() -> InboundBudget {
        InboundBudget {
            bytes_per_peer_max: INBOUND_BYTES_PER_PEER_MAX,
            streams_per_peer_max: INBOUND_STREAMS_PER_PEER_MAX,
        }
    }
}

/// A stream refused because its peer is at one of its budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum OverBudget {
    #[error("peer has {0} streams in service already")]
    Streams(u32),
    #[error("a frame of {wanted} bytes does not fit the peer's {max} byte budget")]
    Bytes { wanted: u64, max: u32 },
}

/// Every peer's budget, made on its first stream.
pub(super) struct Budgets {
    limits: InboundBudget,
    peers: Mutex<HashMap<NodeId, Arc<PeerBudget>>>,
}

struct PeerBudget {
    streams: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

/// What one stream holds of its peer's budget; given back when dropped.
pub(super) struct StreamBudget {
    peer: Arc<PeerBudget>,
    limits: InboundBudget,
    _stream: OwnedSemaphorePermit,
    bytes: Vec<OwnedSemaphorePermit>,
}

impl Budgets {
    pub(super) fn new(limits: InboundBudget) -> Budgets {
        Budgets {
            limits,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// One more stream of `peer`, or refused when it has too many in service.
    pub(super) fn admit_stream(&self, peer: NodeId) -> Result<StreamBudget, OverBudget> {
        let budget = {
            let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
            let limits = self.limits;
            Arc::clone(peers.entry(peer).or_insert_with(|| {
                Arc::new(PeerBudget {
                    streams: Arc::new(Semaphore::new(limits.streams_per_peer_max as usize)),
                    bytes: Arc::new(Semaphore::new(limits.bytes_per_peer_max as usize)),
                })
            }))
        };
        let stream = Arc::clone(&budget.streams)
            .try_acquire_owned()
            .map_err(|_| OverBudget::Streams(self.limits.streams_per_peer_max))?;
        Ok(StreamBudget {
            peer: budget,
            limits: self.limits,
            _stream: stream,
            bytes: Vec::new(),
        })
    }
}

impl StreamBudget {
    /// Holds `bytes` more of the peer's byte budget for the rest of this stream, or refuses.
    pub(super) fn reserve(&mut self, bytes: u64) -> Result<(), OverBudget> {
        let refused = OverBudget::Bytes {
            wanted: bytes,
            max: self.limits.bytes_per_peer_max,
        };
        let count = u32::try_from(bytes).map_err(|_| refused)?;
        if count == 0 {
            return Ok(());
        }
        let permit = Arc::clone(&self.peer.bytes)
            .try_acquire_many_owned(count)
            .map_err(|_| refused)?;
        self.bytes.push(permit);
        Ok(())
    }

    /// What a stream opening of `body_len` bytes holds: its body, plus one chunk in flight for
    /// a bulk stream.
    pub(super) fn opening_bytes(bulk: bool, body_len: u32) -> u64 {
        u64::from(body_len)
            + if bulk {
                STREAM_CHUNK_BYTES_MAX as u64
            } else {
                0
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_over_its_budget_is_refused_and_gets_it_back_when_streams_end() {
        let budgets = Budgets::new(InboundBudget {
            bytes_per_peer_max: 100,
            streams_per_peer_max: 2,
        });
        let mut first = budgets.admit_stream(NodeId(1)).unwrap();
        first.reserve(60).unwrap();
        let mut second = budgets.admit_stream(NodeId(1)).unwrap();
        assert_eq!(
            second.reserve(50),
            Err(OverBudget::Bytes {
                wanted: 50,
                max: 100
            })
        );
        second.reserve(40).unwrap();
        assert_eq!(
            budgets.admit_stream(NodeId(1)).err(),
            Some(OverBudget::Streams(2))
        );
        // Another peer has its own budget.
        let mut other = budgets.admit_stream(NodeId(2)).unwrap();
        other.reserve(100).unwrap();
        drop(first);
        let mut third = budgets.admit_stream(NodeId(1)).unwrap();
        third.reserve(60).unwrap();
        assert!(third.reserve(u64::from(u32::MAX) + 1).is_err());
        third.reserve(0).unwrap();
    }

    #[test]
    fn the_defaults_fit_the_largest_frames() {
        let budget = InboundBudget::default();
        assert!(
            u64::from(budget.bytes_per_peer_max)
                >= StreamBudget::opening_bytes(true, FRAME_BYTES_MAX)
        );
        assert!(budget.streams_per_peer_max >= CONCURRENT_STREAMS_MAX);
    }
}

//! Counters of the QUIC transport, recorded through the `metrics` facade (a no-op until the
//! process installs a recorder). Labels stay bounded: `peer` is a node id, `kind` a fixed set.
//! Bytes are frame bytes (header and body) of RPCs and bulk streams, not QUIC's own overhead.

use crate::TransportError;
use crate::codec::{FRAME_HEADER_BYTES, Frame};
use nodedb_cluster_core::NodeId;

/// RPCs this node started, per peer (failed ones included).
pub const RPCS_SENT: &str = "nodedb_cluster_transport_rpcs_sent_total";
/// RPC requests this node received and handed to its handler, per peer.
pub const RPCS_RECEIVED: &str = "nodedb_cluster_transport_rpcs_received_total";
/// Bulk streams this node opened, per peer.
pub const STREAMS_OPENED: &str = "nodedb_cluster_transport_streams_opened_total";
/// Bulk streams this node accepted, per peer.
pub const STREAMS_ACCEPTED: &str = "nodedb_cluster_transport_streams_accepted_total";
/// Failed outgoing RPCs, stream opens and stream writes, per peer and error kind.
pub const ERRORS: &str = "nodedb_cluster_transport_errors_total";
/// Incoming connections or streams refused, per kind (no peer: it may not be known yet).
pub const INBOUND_ERRORS: &str = "nodedb_cluster_transport_inbound_errors_total";
/// Frame bytes written to a peer.
pub const BYTES_SENT: &str = "nodedb_cluster_transport_bytes_sent_total";
/// Frame bytes read from a peer.
pub const BYTES_RECEIVED: &str = "nodedb_cluster_transport_bytes_received_total";

/// Why an incoming connection or stream was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InboundError {
    Handshake,
    NoIdentity,
    IdentityMismatch,
    BadFrame,
    UnexpectedFrame,
    Idle,
    OverBudget,
}

/// Gives every series above its help text; call once after installing a recorder.
pub fn describe() {
    metrics::describe_counter!(
        RPCS_SENT,
        "RPCs started towards a peer, failed ones included"
    );
    metrics::describe_counter!(RPCS_RECEIVED, "RPC requests received from a peer");
    metrics::describe_counter!(STREAMS_OPENED, "bulk streams opened towards a peer");
    metrics::describe_counter!(STREAMS_ACCEPTED, "bulk streams accepted from a peer");
    metrics::describe_counter!(ERRORS, "failed outgoing RPCs and streams, by peer and kind");
    metrics::describe_counter!(INBOUND_ERRORS, "refused incoming connections and streams");
    metrics::describe_counter!(BYTES_SENT, "frame bytes written to a peer");
    metrics::describe_counter!(BYTES_RECEIVED, "frame bytes read from a peer");
}

pub(super) fn rpc_sent(peer: NodeId) {
    metrics::counter!(RPCS_SENT, "peer" => peer_label(peer)).increment(1);
}

pub(super) fn rpc_received(peer: NodeId) {
    metrics::counter!(RPCS_RECEIVED, "peer" => peer_label(peer)).increment(1);
}

pub(super) fn stream_opened(peer: NodeId) {
    metrics::counter!(STREAMS_OPENED, "peer" => peer_label(peer)).increment(1);
}

pub(super) fn stream_accepted(peer: NodeId) {
    metrics::counter!(STREAMS_ACCEPTED, "peer" => peer_label(peer)).increment(1);
}

/// Counts `result` as an error of `peer` when it is one.
pub(super) fn outcome<T>(peer: NodeId, result: &Result<T, TransportError>) {
    if let Err(error) = result {
        metrics::counter!(ERRORS, "peer" => peer_label(peer), "kind" => error_kind(error))
            .increment(1);
    }
}

pub(super) fn inbound_error(kind: InboundError) {
    let kind = match kind {
        InboundError::Handshake => "handshake",
        InboundError::NoIdentity => "no_identity",
        InboundError::IdentityMismatch => "identity_mismatch",
        InboundError::BadFrame => "bad_frame",
        InboundError::UnexpectedFrame => "unexpected_frame",
        InboundError::Idle => "idle",
        InboundError::OverBudget => "over_budget",
    };
    metrics::counter!(INBOUND_ERRORS, "kind" => kind).increment(1);
}

/// Counts frames written to `peer`.
pub(super) fn frames_sent(peer: NodeId, frames: &[&Frame]) {
    metrics::counter!(BYTES_SENT, "peer" => peer_label(peer)).increment(wire_bytes(frames));
}

/// Counts frames read from `peer`.
pub(super) fn frames_received(peer: NodeId, frames: &[&Frame]) {
    metrics::counter!(BYTES_RECEIVED, "peer" => peer_label(peer)).increment(wire_bytes(frames));
}

/// Header and body bytes of `frames` as they travel.
fn wire_bytes(frames: &[&Frame]) -> u64 {
    frames
        .iter()
        .map(|frame| (FRAME_HEADER_BYTES + frame.body.len()) as u64)
        .sum()
}

fn peer_label(peer: NodeId) -> String {
    peer.0.to_string()
}

/// A fixed name per error variant, so the label set stays bounded.
fn error_kind(error: &TransportError) -> &'static str {
    match error {
        TransportError::UnknownPeer { .. } => "unknown_peer",
        TransportError::Unreachable { .. } => "unreachable",
        TransportError::CircuitOpen { .. } => "circuit_open",
        TransportError::Timeout { .. } => "timeout",
        TransportError::ConnectionLost { .. } => "connection_lost",
        TransportError::Remote { .. } => "remote",
        TransportError::Protocol { .. } => "protocol",
        TransportError::TooLarge { .. } => "too_large",
        TransportError::UnreachableAddr { .. } => "unreachable_addr",
        TransportError::Shutdown => "shutdown",
    }
}

//! Calls by address, for joining through seed addresses before any node id is known: a one-off
//! connection whose server certificate is checked against the CA and whose node id is read
//! from that certificate.

use super::server::certified_node;
use super::{QuicTransport, rpc};
use crate::{Bytes, TransportError};
use nodedb_cluster_core::NodeId;
use std::net::SocketAddr;
use tokio::time::Instant;

/// Server name sent when dialing by address; the verifier checks the name the certificate
/// itself carries instead.
const ADDR_CALL_SERVER_NAME: &str = "any-node.nodedb-cluster";

impl QuicTransport {
    pub(super) async fn call_addr_inner(
        &self,
        addr: SocketAddr,
        request: Bytes,
        deadline: Instant,
    ) -> Result<(NodeId, Bytes), TransportError> {
        let unreachable = |reason: String| TransportError::UnreachableAddr { addr, reason };
        let connecting = self
            .endpoint
            .connect_with(self.addr_client_config.clone(), addr, ADDR_CALL_SERVER_NAME)
            .map_err(|error| unreachable(format!("cannot dial: {error}")))?;
        let connection = match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return Err(unreachable(format!("handshake: {error}"))),
            Err(_elapsed) => return Err(unreachable("connect timed out".into())),
        };
        let Some(node) = certified_node(&connection) else {
            connection.close(quinn::VarInt::from_u32(0), b"no node identity");
            return Err(unreachable("server certificate names no node".into()));
        };
        let opened = tokio::time::timeout_at(deadline, connection.open_bi()).await;
        let result = match opened {
            Ok(Ok((send, recv))) => rpc(self.node, node, send, recv, request, deadline).await,
            Ok(Err(error)) => Err(TransportError::Unreachable {
                node,
                reason: format!("connection closed: {error}"),
            }),
            Err(_elapsed) => Err(TransportError::Timeout { node }),
        };
        connection.close(quinn::VarInt::from_u32(0), b"done");
        result.map(|response| (node, response))
    }
}

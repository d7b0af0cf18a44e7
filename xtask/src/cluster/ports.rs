//! Free loopback ports for the nodes of a local cluster. The OS picks them (bind to port 0,
//! read the port, let go); another process may take one before the node binds it, a small race
//! the launcher answers by starting again with fresh ports.

use anyhow::{Context, Result};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

/// The two addresses of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePorts {
    /// QUIC (UDP).
    pub listen_addr: SocketAddr,
    /// HTTP admin API (TCP).
    pub admin_addr: SocketAddr,
}

/// Picks `count` pairs of free loopback ports. All sockets are held until every pair is
/// picked, so the pairs are distinct from one another.
pub fn allocate(count: usize) -> Result<Vec<NodePorts>> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding a UDP socket on 127.0.0.1:0 to find a free QUIC port")?;
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding a TCP listener on 127.0.0.1:0 to find a free admin port")?;
        held.push((udp, tcp));
    }
    held.iter()
        .map(|(udp, tcp)| {
            Ok(NodePorts {
                listen_addr: udp.local_addr()?,
                admin_addr: tcp.local_addr()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn ports_are_loopback_nonzero_and_distinct() {
        let ports = allocate(5).unwrap();
        assert_eq!(ports.len(), 5);
        let udp: BTreeSet<u16> = ports.iter().map(|p| p.listen_addr.port()).collect();
        let tcp: BTreeSet<u16> = ports.iter().map(|p| p.admin_addr.port()).collect();
        assert_eq!(udp.len(), 5);
        assert_eq!(tcp.len(), 5);
        for pair in &ports {
            assert!(pair.listen_addr.ip().is_loopback() && pair.admin_addr.ip().is_loopback());
            assert_ne!(pair.listen_addr.port(), 0);
            assert_ne!(pair.admin_addr.port(), 0);
        }
    }

    #[test]
    fn allocated_ports_can_be_bound_again() {
        let ports = allocate(2).unwrap();
        for pair in ports {
            UdpSocket::bind(pair.listen_addr).unwrap();
            TcpListener::bind(pair.admin_addr).unwrap();
        }
    }
}

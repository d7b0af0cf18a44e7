//! The endpoint's UDP socket, and how large a datagram MTU discovery may try on it.
//!
//! Fewer, larger packets mean fewer syscalls, seals and acks per byte. Paths that carry
//! datagrams past Ethernet's size are loopback (64 KiB) and jumbo frames (9000 B); MTU
//! discovery finds what a path carries, up to the bound chosen here. Datagrams of 64 KiB pay
//! only when the receiving socket can queue a burst of them: with a small receive buffer a
//! burst overflows it, the losses shrink the congestion window, and a bulk copy ends slower
//! than with jumbo-sized packets.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Send and receive buffer asked of the kernel (it grants at most `net.core.rmem_max` /
/// `wmem_max`).
const BUFFER_BYTES: usize = 4 << 20;
/// Largest UDP payload QUIC allows, the bound probed when the receive buffer is large enough.
const UDP_PAYLOAD_MAX: u16 = 65527;
/// Jumbo frames (9000) less the IPv6 and UDP headers: the bound otherwise.
const UDP_PAYLOAD_JUMBO: u16 = 8952;
/// Largest datagrams the receive buffer must hold for [`UDP_PAYLOAD_MAX`] to be probed.
const LARGE_DATAGRAMS_QUEUED: usize = 32;

/// A bound socket and the largest UDP payload MTU discovery may probe on it.
pub(super) struct BoundSocket {
    pub socket: UdpSocket,
    pub udp_payload_probed_max: u16,
}

/// Binds `addr` with large send and receive buffers where the kernel grants them.
pub(super) fn bind(addr: SocketAddr) -> io::Result<BoundSocket> {
    let socket = UdpSocket::bind(addr)?;
    let buffers = socket2::SockRef::from(&socket);
    // Refusals are not errors: the socket works with the default buffers, only the probed
    // datagram size depends on what was granted.
    let _ = buffers.set_send_buffer_size(BUFFER_BYTES);
    let _ = buffers.set_recv_buffer_size(BUFFER_BYTES);
    let received = buffers.recv_buffer_size().unwrap_or(0);
    let udp_payload_probed_max = probed_max(received);
    tracing::debug!(
        %addr,
        receive_buffer = received,
        udp_payload_probed_max,
        "UDP socket bound"
    );
    Ok(BoundSocket {
        socket,
        udp_payload_probed_max,
    })
}

/// The probed bound for a receive buffer of `received` bytes (as the kernel reports it).
fn probed_max(received: usize) -> u16 {
    if received >= LARGE_DATAGRAMS_QUEUED * usize::from(UDP_PAYLOAD_MAX) {
        UDP_PAYLOAD_MAX
    } else {
        UDP_PAYLOAD_JUMBO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_datagrams_only_with_room_for_a_burst_of_them() {
        // Linux's default receive buffer (212992 B, reported doubled).
        assert_eq!(probed_max(425_984), UDP_PAYLOAD_JUMBO);
        assert_eq!(probed_max(0), UDP_PAYLOAD_JUMBO);
        assert_eq!(probed_max(8 << 20), UDP_PAYLOAD_MAX);
    }

    #[test]
    fn binds_a_loopback_socket() {
        let bound = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(bound.socket.local_addr().unwrap().port() != 0);
        assert!([UDP_PAYLOAD_JUMBO, UDP_PAYLOAD_MAX].contains(&bound.udp_payload_probed_max));
    }
}

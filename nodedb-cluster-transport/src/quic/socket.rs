//! The endpoint's UDP socket, with send and receive buffers large enough to queue a burst of
//! bulk traffic (a snapshot, a vShard copy) without the kernel dropping it.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Send and receive buffer asked of the kernel (it grants at most `net.core.rmem_max` /
/// `wmem_max`).
const BUFFER_BYTES: usize = 4 << 20;

/// Binds `addr` with large send and receive buffers where the kernel grants them.
pub(super) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    let buffers = socket2::SockRef::from(&socket);
    // Refusals are not errors: the socket works with the default buffers.
    let _ = buffers.set_send_buffer_size(BUFFER_BYTES);
    let _ = buffers.set_recv_buffer_size(BUFFER_BYTES);
    tracing::debug!(
        %addr,
        receive_buffer = buffers.recv_buffer_size().unwrap_or(0),
        send_buffer = buffers.send_buffer_size().unwrap_or(0),
        "UDP socket bound"
    );
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_a_loopback_socket() {
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(socket.local_addr().unwrap().port() != 0);
    }
}

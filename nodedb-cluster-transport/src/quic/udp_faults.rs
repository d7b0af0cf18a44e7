//! A fault layer under QUIC for chaos runs: it wraps the endpoint's UDP socket and delays,
//! reorders and duplicates outgoing datagrams, which the kernel cannot do here without the
//! netem qdisc. Reordering comes from the delays: every datagram waits its own random time, so
//! later ones overtake earlier ones. Only [`super::QuicTransport::bind_with_udp_faults`] puts
//! it in place; [`super::QuicTransport::bind`] never does.

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

/// Longest delay the layer accepts, so a misconfigured run cannot stall a node for minutes.
pub const DELAY_MS_MAX: u64 = 10_000;

/// What the layer does to every outgoing datagram.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UdpFaults {
    /// Each copy of a datagram is sent after a uniform random delay in `0..=delay_ms_max`.
    pub delay_ms_max: u64,
    /// Chance, in `0.0..=1.0`, that a datagram is sent twice (each copy with its own delay).
    pub duplicate_probability: f64,
    /// Seed of the layer's random choices.
    pub seed: u64,
}

/// Why a [`UdpFaults`] was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum UdpFaultsError {
    #[error("delay_ms_max must be at most {DELAY_MS_MAX}, got {0}")]
    DelayTooLong(u64),
    #[error("duplicate_probability must be between 0 and 1, got {0}")]
    Probability(f64),
}

impl UdpFaults {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), UdpFaultsError> {
        if self.delay_ms_max > DELAY_MS_MAX {
            return Err(UdpFaultsError::DelayTooLong(self.delay_ms_max));
        }
        if !(0.0..=1.0).contains(&self.duplicate_probability) {
            return Err(UdpFaultsError::Probability(self.duplicate_probability));
        }
        Ok(())
    }

    /// The send delays of the copies of one datagram: one, or two when duplicated.
    pub fn copies(&self, rng: &mut SmallRng) -> Vec<Duration> {
        let copies = 1 + usize::from(rng.random_bool(self.duplicate_probability));
        (0..copies)
            .map(|_| Duration::from_millis(rng.random_range(0..=self.delay_ms_max)))
            .collect()
    }
}

/// The endpoint's socket with [`UdpFaults`] applied to what it sends. Receiving is untouched:
/// the peer's layer, if any, faults the other direction.
pub(crate) struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    faults: UdpFaults,
    rng: Mutex<SmallRng>,
    runtime: tokio::runtime::Handle,
}

impl FaultySocket {
    /// Wraps `inner`; delayed copies are sent from tasks on `runtime`.
    pub(crate) fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        faults: UdpFaults,
        runtime: tokio::runtime::Handle,
    ) -> FaultySocket {
        FaultySocket {
            inner,
            faults,
            rng: Mutex::new(SmallRng::seed_from_u64(faults.seed)),
            runtime,
        }
    }
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket")
            .field("inner", &self.inner)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let delays = {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            self.faults.copies(&mut rng)
        };
        for delay in delays {
            let owned = OwnedTransmit::from(transmit);
            let inner = Arc::clone(&self.inner);
            // A copy that finds the socket busy is lost, like a datagram on a full link.
            self.runtime.spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = inner.try_send(&owned.as_transmit());
            });
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A [`Transmit`] that owns its bytes, to be sent later.
struct OwnedTransmit {
    destination: SocketAddr,
    ecn: Option<quinn::udp::EcnCodepoint>,
    contents: Vec<u8>,
    segment_size: Option<usize>,
    src_ip: Option<IpAddr>,
}

impl From<&Transmit<'_>> for OwnedTransmit {
    fn from(transmit: &Transmit<'_>) -> OwnedTransmit {
        OwnedTransmit {
            destination: transmit.destination,
            ecn: transmit.ecn,
            contents: transmit.contents.to_vec(),
            segment_size: transmit.segment_size,
            src_ip: transmit.src_ip,
        }
    }
}

impl OwnedTransmit {
    fn as_transmit(&self) -> Transmit<'_> {
        Transmit {
            destination: self.destination,
            ecn: self.ecn,
            contents: &self.contents,
            segment_size: self.segment_size,
            src_ip: self.src_ip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(delay_ms_max: u64, duplicate_probability: f64) -> UdpFaults {
        UdpFaults {
            delay_ms_max,
            duplicate_probability,
            seed: 7,
        }
    }

    #[test]
    fn copies_follow_the_settings() {
        let mut rng = SmallRng::seed_from_u64(1);
        let none = faults(0, 0.0);
        for _ in 0..100 {
            assert_eq!(none.copies(&mut rng), [Duration::ZERO]);
        }
        let always = faults(20, 1.0);
        for _ in 0..100 {
            let copies = always.copies(&mut rng);
            assert_eq!(copies.len(), 2);
            assert!(
                copies
                    .iter()
                    .all(|delay| *delay <= Duration::from_millis(20))
            );
        }
        let some = faults(50, 0.3);
        let duplicated = (0..10_000)
            .filter(|_| some.copies(&mut rng).len() == 2)
            .count();
        assert!((2_500..3_500).contains(&duplicated), "{duplicated}");
    }

    #[tokio::test]
    async fn every_copy_reaches_the_destination() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, sender).unwrap();
        let handle = tokio::runtime::Handle::current();
        let socket = FaultySocket::new(inner, faults(5, 1.0), handle);
        for payload in [&b"first"[..], b"second"] {
            let transmit = Transmit {
                destination: receiver.local_addr().unwrap(),
                ecn: None,
                contents: payload,
                segment_size: None,
                src_ip: None,
            };
            socket.try_send(&transmit).unwrap();
        }
        let received = tokio::task::spawn_blocking(move || {
            let mut buffer = [0_u8; 64];
            let mut received: Vec<Vec<u8>> = (0..4)
                .map(|_| {
                    let length = receiver.recv(&mut buffer).unwrap();
                    buffer[..length].to_vec()
                })
                .collect();
            received.sort();
            received
        })
        .await
        .unwrap();
        assert_eq!(received, [&b"first"[..], b"first", b"second", b"second"]);
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        assert_eq!(faults(10, 0.5).validate(), Ok(()));
        assert_eq!(
            faults(DELAY_MS_MAX + 1, 0.5).validate(),
            Err(UdpFaultsError::DelayTooLong(DELAY_MS_MAX + 1))
        );
        assert_eq!(
            faults(10, 1.5).validate(),
            Err(UdpFaultsError::Probability(1.5))
        );
        assert!(faults(10, f64::NAN).validate().is_err());
    }
}

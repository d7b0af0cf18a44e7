//! The QUIC transport on 127.0.0.1: round trips, concurrency, a 64 MiB stream with bounded
//! buffering, peer restart, deadlines, the circuit breaker, certificate checks (wrong CA, no
//! client certificate, a certificate used to claim another node) and garbage datagrams.

mod common;

use common::{EchoHandler, pattern_chunk, wait_until};
use nodedb_cluster_core::NodeId;
use nodedb_cluster_transport::codec::{
    ALPN_PROTOCOL, Frame, FrameKind, read_required_frame, write_frame,
};
use nodedb_cluster_transport::quic::{
    BreakerConfig, BreakerState, QuicConfig, QuicTimings, QuicTransport,
};
use nodedb_cluster_transport::tls::{self, CaMaterial, TlsMaterial, TlsMode, node_server_name};
use nodedb_cluster_transport::{Bytes, HandlerError, Transport, TransportError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(20);

fn node(id: u64) -> NodeId {
    NodeId(id)
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn bind(ca: &CaMaterial, id: u64, addr: SocketAddr, timings: QuicTimings) -> Arc<QuicTransport> {
    let material = TlsMaterial::issue(ca, node(id)).unwrap();
    QuicTransport::bind(QuicConfig {
        node_id: node(id),
        listen_addr: addr,
        tls: TlsMode::Secure(material),
        timings,
    })
    .unwrap()
}

/// Two connected nodes with echo handlers.
fn pair(ca: &CaMaterial) -> (Arc<QuicTransport>, Arc<QuicTransport>, Arc<EchoHandler>) {
    let a = bind(ca, 1, loopback(), QuicTimings::default());
    let b = bind(ca, 2, loopback(), QuicTimings::default());
    let handler = Arc::new(EchoHandler::new());
    b.set_handler(handler.clone());
    a.set_handler(Arc::new(EchoHandler::new()));
    a.set_peer_addr(node(2), b.local_addr().unwrap());
    b.set_peer_addr(node(1), a.local_addr().unwrap());
    (a, b, handler)
}

#[tokio::test]
async fn rpc_round_trip_with_authenticated_sender() {
    let ca = tls::generate_ca("test").unwrap();
    let (a, b, b_handler) = pair(&ca);

    let response = a.call(node(2), Bytes::from_static(b"hi"), TIMEOUT).await;
    assert_eq!(response, Ok(Bytes::from_static(b"echo:hi")));
    assert_eq!(*b_handler.senders.lock().unwrap(), vec![node(1)]);

    let failed = a.call(node(2), Bytes::from_static(b"fail"), TIMEOUT).await;
    assert!(matches!(
        failed,
        Err(TransportError::Remote {
            error: HandlerError::BadRequest(_),
            ..
        })
    ));
    // The other direction uses its own connection.
    let back = b.call(node(1), Bytes::from_static(b"yo"), TIMEOUT).await;
    assert_eq!(back, Ok(Bytes::from_static(b"echo:yo")));

    let unknown = a.call(node(9), Bytes::from_static(b"x"), TIMEOUT).await;
    assert_eq!(unknown, Err(TransportError::UnknownPeer { node: node(9) }));

    a.shutdown().await;
    b.shutdown().await;
    let after = a.call(node(2), Bytes::from_static(b"x"), TIMEOUT).await;
    assert_eq!(after, Err(TransportError::Shutdown));
}

#[tokio::test]
async fn call_by_address_learns_the_node_id_from_the_certificate() {
    let ca = tls::generate_ca("test").unwrap();
    let other_ca = tls::generate_ca("other").unwrap();
    let a = bind(&ca, 1, loopback(), QuicTimings::default());
    let b = bind(&ca, 2, loopback(), QuicTimings::default());
    let handler = Arc::new(EchoHandler::new());
    b.set_handler(handler.clone());

    let answer = a
        .call_addr(b.local_addr().unwrap(), Bytes::from_static(b"who"), TIMEOUT)
        .await;
    assert_eq!(answer, Ok((node(2), Bytes::from_static(b"echo:who"))));
    assert_eq!(*handler.senders.lock().unwrap(), vec![node(1)]);

    // A server of another cluster is not trusted, whatever it is called.
    let stranger = bind(&other_ca, 3, loopback(), QuicTimings::default());
    stranger.set_handler(Arc::new(EchoHandler::new()));
    let refused = a
        .call_addr(
            stranger.local_addr().unwrap(),
            Bytes::from_static(b"x"),
            TIMEOUT,
        )
        .await;
    assert!(
        matches!(refused, Err(TransportError::UnreachableAddr { .. })),
        "{refused:?}"
    );

    // Nothing listening: refused within the deadline, nothing delivered.
    let black_hole = std::net::UdpSocket::bind(loopback()).unwrap();
    let nobody = a
        .call_addr(
            black_hole.local_addr().unwrap(),
            Bytes::from_static(b"x"),
            Duration::from_millis(200),
        )
        .await;
    assert!(
        matches!(nobody, Err(TransportError::UnreachableAddr { .. })),
        "{nobody:?}"
    );
}

#[tokio::test]
async fn missing_handler_answers_not_ready() {
    let ca = tls::generate_ca("test").unwrap();
    let a = bind(&ca, 1, loopback(), QuicTimings::default());
    let b = bind(&ca, 2, loopback(), QuicTimings::default());
    a.set_peer_addr(node(2), b.local_addr().unwrap());
    let result = a.call(node(2), Bytes::from_static(b"x"), TIMEOUT).await;
    assert!(matches!(
        result,
        Err(TransportError::Remote {
            error: HandlerError::NotReady,
            ..
        })
    ));
}

#[tokio::test]
async fn two_hundred_concurrent_rpcs() {
    let ca = tls::generate_ca("test").unwrap();
    let (a, _b, b_handler) = pair(&ca);
    let calls = (0..200u32).map(|i| {
        let a = Arc::clone(&a);
        async move {
            let request = Bytes::from(format!("r{i}"));
            let response = a.call(node(2), request, TIMEOUT).await;
            (i, response)
        }
    });
    for (i, response) in futures::future::join_all(calls).await {
        assert_eq!(response, Ok(Bytes::from(format!("echo:r{i}"))));
    }
    assert_eq!(b_handler.request_count(), 200);
}

#[tokio::test]
async fn stream_of_64_mib_with_bounded_buffering() {
    let ca = tls::generate_ca("test").unwrap();
    let (a, _b, b_handler) = pair(&ca);
    let chunk_len = nodedb_cluster_transport::STREAM_CHUNK_BYTES_MAX;
    let chunks = 64u64;
    let total = chunks * chunk_len as u64;
    // QUIC buffers at most the send window plus the receive window; nothing near 64 MiB.
    let in_flight_bytes_max = 16 * 1024 * 1024;

    let mut stream = a
        .open_stream(node(2), Bytes::from_static(b"snapshot"), TIMEOUT)
        .await
        .unwrap();
    let mut in_flight_seen_max = 0;
    for index in 0..chunks {
        let start = index * chunk_len as u64;
        stream.write(pattern_chunk(start, chunk_len)).await.unwrap();
        let consumed = b_handler.stream_bytes_consumed.load(Ordering::SeqCst);
        in_flight_seen_max = in_flight_seen_max.max(start + chunk_len as u64 - consumed);
    }
    let response = stream.finish().await.unwrap();
    assert_eq!(response.as_ref(), total.to_le_bytes());
    assert_eq!(b_handler.stream_bytes_total.load(Ordering::SeqCst), total);
    let held = b_handler.stream_bytes_held_max.load(Ordering::SeqCst);
    assert!(
        held <= chunk_len as u64,
        "handler held {held} bytes at once"
    );
    assert!(
        in_flight_seen_max <= in_flight_bytes_max,
        "{in_flight_seen_max} bytes written but not yet consumed"
    );
}

#[tokio::test]
async fn stream_rejected_by_the_handler_reports_its_error() {
    let ca = tls::generate_ca("test").unwrap();
    let (a, _b, _) = pair(&ca);
    let mut stream = a
        .open_stream(node(2), Bytes::from_static(b"reject"), TIMEOUT)
        .await
        .unwrap();
    let mut write_error = None;
    for index in 0..16u64 {
        if let Err(error) = stream.write(pattern_chunk(index * 65536, 65536)).await {
            write_error = Some(error);
            break;
        }
    }
    let outcome = match write_error {
        Some(error) => Err(error),
        None => stream.finish().await,
    };
    assert!(
        matches!(
            outcome,
            Err(TransportError::Remote {
                error: HandlerError::Failed(_),
                ..
            })
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn peer_restart_and_reconnect() {
    let ca = tls::generate_ca("test").unwrap();
    let (a, b, _) = pair(&ca);
    let b_addr = b.local_addr().unwrap();
    assert!(
        a.call(node(2), Bytes::from_static(b"x"), TIMEOUT)
            .await
            .is_ok()
    );

    b.shutdown().await;
    drop(b);
    let restarted = rebind(&ca, 2, b_addr).await;
    let handler = Arc::new(EchoHandler::new());
    restarted.set_handler(handler.clone());

    let mut answered = false;
    let until = tokio::time::Instant::now() + DEADLINE;
    for _ in 0..200 {
        let short = Duration::from_millis(500);
        if a.call(node(2), Bytes::from_static(b"x"), short)
            .await
            .is_ok()
        {
            answered = true;
            break;
        }
        if tokio::time::Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered, "no answer from the restarted peer");
    assert!(handler.request_count() >= 1);
}

/// Binds on the same port again; the old socket may take a moment to be released.
async fn rebind(ca: &CaMaterial, id: u64, addr: SocketAddr) -> Arc<QuicTransport> {
    let material = TlsMaterial::issue(ca, node(id)).unwrap();
    for _ in 0..200 {
        let bound = QuicTransport::bind(QuicConfig {
            node_id: node(id),
            listen_addr: addr,
            tls: TlsMode::Secure(material.clone()),
            timings: QuicTimings::default(),
        });
        if let Ok(transport) = bound {
            return transport;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("could not bind {addr} again");
}

#[tokio::test]
async fn slow_handler_times_out_with_outcome_unknown() {
    let ca = tls::generate_ca("test").unwrap();
    let a = bind(&ca, 1, loopback(), QuicTimings::default());
    let b = bind(&ca, 2, loopback(), QuicTimings::default());
    let handler = Arc::new(EchoHandler::with_sleep(Duration::from_secs(3)));
    b.set_handler(handler.clone());
    a.set_peer_addr(node(2), b.local_addr().unwrap());
    assert!(
        a.call(node(2), Bytes::from_static(b"warm-up"), TIMEOUT)
            .await
            .is_ok()
    );

    let result = a
        .call(
            node(2),
            Bytes::from_static(b"sleep"),
            Duration::from_millis(300),
        )
        .await;
    assert_eq!(result, Err(TransportError::Timeout { node: node(2) }));
    // A timeout on a live connection says nothing about reachability.
    assert_eq!(a.breaker_state(node(2)), Some(BreakerState::Closed));
}

#[tokio::test]
async fn breaker_opens_then_a_probe_closes_it() {
    let ca = tls::generate_ca("test").unwrap();
    let timings = QuicTimings {
        breaker: BreakerConfig {
            failures_max: 3,
            open_ms: 300,
            backoff_ms_min: 5,
            backoff_ms_max: 20,
        },
        ..QuicTimings::default()
    };
    let a = bind(&ca, 1, loopback(), timings);
    // A socket that swallows every datagram: handshakes never complete.
    let black_hole = std::net::UdpSocket::bind(loopback()).unwrap();
    a.set_peer_addr(node(2), black_hole.local_addr().unwrap());

    let short = Duration::from_millis(100);
    let mut opened = false;
    for _ in 0..50 {
        match a.call(node(2), Bytes::from_static(b"x"), short).await {
            Err(TransportError::CircuitOpen { .. }) => {
                opened = true;
                break;
            }
            Err(TransportError::Unreachable { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(opened, "breaker never opened");
    assert_eq!(a.breaker_state(node(2)), Some(BreakerState::Open));
    // Open: calls fail fast without dialing.
    let fast = a.call(node(2), Bytes::from_static(b"x"), TIMEOUT).await;
    assert_eq!(fast, Err(TransportError::CircuitOpen { node: node(2) }));

    // The peer comes up elsewhere; after the open period one probe goes through and closes it.
    let b = bind(&ca, 2, loopback(), QuicTimings::default());
    b.set_handler(Arc::new(EchoHandler::new()));
    a.set_peer_addr(node(2), b.local_addr().unwrap());
    let mut closed = false;
    for _ in 0..200 {
        if a.call(node(2), Bytes::from_static(b"x"), TIMEOUT)
            .await
            .is_ok()
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "breaker never closed");
    assert_eq!(a.breaker_state(node(2)), Some(BreakerState::Closed));
}

#[tokio::test]
async fn a_call_from_a_peer_closes_its_open_breaker() {
    let ca = tls::generate_ca("test").unwrap();
    // Open for far longer than the test runs: only the peer's own call can close it.
    let timings = QuicTimings {
        breaker: BreakerConfig {
            failures_max: 3,
            open_ms: 600_000,
            backoff_ms_min: 60_000,
            backoff_ms_max: 60_000,
        },
        ..QuicTimings::default()
    };
    let a = bind(&ca, 1, loopback(), timings);
    a.set_handler(Arc::new(EchoHandler::new()));
    let black_hole = std::net::UdpSocket::bind(loopback()).unwrap();
    a.set_peer_addr(node(2), black_hole.local_addr().unwrap());
    let short = Duration::from_millis(100);
    for _ in 0..3 {
        let failed = a.call(node(2), Bytes::from_static(b"x"), short).await;
        assert!(
            matches!(failed, Err(TransportError::Unreachable { .. })),
            "{failed:?}"
        );
    }
    assert_eq!(a.breaker_state(node(2)), Some(BreakerState::Open));

    // The peer comes back (at another address) and calls first.
    let b = bind(&ca, 2, loopback(), QuicTimings::default());
    b.set_handler(Arc::new(EchoHandler::new()));
    b.set_peer_addr(node(1), a.local_addr().unwrap());
    a.set_peer_addr(node(2), b.local_addr().unwrap());
    assert_eq!(a.breaker_state(node(2)), Some(BreakerState::Open));
    let inbound = b.call(node(1), Bytes::from_static(b"hello"), TIMEOUT).await;
    assert!(inbound.is_ok(), "{inbound:?}");
    assert_eq!(a.breaker_state(node(2)), Some(BreakerState::Closed));
    let outbound = a.call(node(2), Bytes::from_static(b"back"), TIMEOUT).await;
    assert!(
        outbound.is_ok(),
        "the breaker lets calls through: {outbound:?}"
    );
}

#[tokio::test]
async fn server_with_another_ca_is_unreachable() {
    let ca = tls::generate_ca("test").unwrap();
    let other_ca = tls::generate_ca("other").unwrap();
    let a = bind(&ca, 1, loopback(), QuicTimings::default());
    let b = bind(&other_ca, 2, loopback(), QuicTimings::default());
    let handler = Arc::new(EchoHandler::new());
    b.set_handler(handler.clone());
    a.set_peer_addr(node(2), b.local_addr().unwrap());
    let result = a.call(node(2), Bytes::from_static(b"x"), TIMEOUT).await;
    assert!(
        matches!(result, Err(TransportError::Unreachable { .. })),
        "{result:?}"
    );
    assert_eq!(handler.request_count(), 0);
}

#[tokio::test]
async fn client_with_another_ca_is_rejected() {
    let ca = tls::generate_ca("test").unwrap();
    let other_ca = tls::generate_ca("other").unwrap();
    let (_, b, b_handler) = pair(&ca);
    // Trusts the real CA (so it accepts the server) but presents a foreign certificate.
    let foreign = TlsMaterial::issue(&other_ca, node(1)).unwrap();
    let client = raw_client(&ca.cert_pem, Some(&foreign));
    let result = raw_call(&client, b.local_addr().unwrap(), node(2), node(1)).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(b_handler.request_count(), 0);
}

#[tokio::test]
async fn client_without_certificate_is_rejected() {
    let ca = tls::generate_ca("test").unwrap();
    let (_, b, b_handler) = pair(&ca);
    let client = raw_client(&ca.cert_pem, None);
    let result = raw_call(&client, b.local_addr().unwrap(), node(2), node(1)).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(b_handler.request_count(), 0);
}

#[tokio::test]
async fn another_protocol_version_fails_in_the_handshake() {
    let ca = tls::generate_ca("test").unwrap();
    let (_, b, b_handler) = pair(&ca);
    let material = TlsMaterial::issue(&ca, node(1)).unwrap();
    let client = raw_client_with_alpn(&ca.cert_pem, Some(&material), b"nodedb-cluster/2");
    let result = raw_call(&client, b.local_addr().unwrap(), node(2), node(1)).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(b_handler.request_count(), 0);
}

#[tokio::test]
async fn certificate_of_node_2_cannot_claim_node_3() {
    let ca = tls::generate_ca("test").unwrap();
    let b = bind(&ca, 5, loopback(), QuicTimings::default());
    let handler = Arc::new(EchoHandler::new());
    b.set_handler(handler.clone());
    let material = TlsMaterial::issue(&ca, node(2)).unwrap();
    let client = raw_client(&ca.cert_pem, Some(&material));
    let addr = b.local_addr().unwrap();

    let honest = raw_call(&client, addr, node(5), node(2)).await;
    assert_eq!(honest.map(|frame| frame.kind), Ok(FrameKind::Response));
    let lying = raw_call(&client, addr, node(5), node(3)).await;
    assert!(lying.is_err(), "{lying:?}");
    assert_eq!(
        handler.request_count(),
        1,
        "only the honest request was served"
    );
    assert_eq!(*handler.senders.lock().unwrap(), vec![node(2)]);

    // And the transport refuses to start with a certificate for another node.
    let wrong = QuicTransport::bind(QuicConfig {
        node_id: node(3),
        listen_addr: loopback(),
        tls: TlsMode::Secure(material),
        timings: QuicTimings::default(),
    });
    assert!(wrong.is_err());
}

#[tokio::test]
async fn garbage_datagrams_do_not_disturb_a_live_connection() {
    let ca = tls::generate_ca("test").unwrap();
    let (a, b, b_handler) = pair(&ca);
    assert!(
        a.call(node(2), Bytes::from_static(b"x"), TIMEOUT)
            .await
            .is_ok()
    );

    let noise = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    let target = b.local_addr().unwrap();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..500usize {
        let len = 1 + round % 1400;
        let datagram: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        noise.send_to(&datagram, target).await.unwrap();
        if round % 50 == 0 {
            let response = a.call(node(2), Bytes::from_static(b"y"), TIMEOUT).await;
            assert_eq!(response, Ok(Bytes::from_static(b"echo:y")));
        }
    }
    let response = a.call(node(2), Bytes::from_static(b"z"), TIMEOUT).await;
    assert_eq!(response, Ok(Bytes::from_static(b"echo:z")));
    assert!(wait_until(TIMEOUT, || b_handler.request_count() == 12).await);
}

#[tokio::test]
async fn malformed_streams_are_dropped_and_the_connection_lives_on() {
    let ca = tls::generate_ca("test").unwrap();
    let (_, b, b_handler) = pair(&ca);
    let material = TlsMaterial::issue(&ca, node(1)).unwrap();
    let client = raw_client(&ca.cert_pem, Some(&material));
    let connection = client
        .connect(b.local_addr().unwrap(), &node_server_name(node(2)))
        .unwrap()
        .await
        .unwrap();

    let hello = Frame::hello(node(1)).encode().unwrap();
    let request = Frame::new(FrameKind::Request, Bytes::from_static(b"ok"))
        .encode()
        .unwrap();
    let mut unknown_kind = request.clone();
    unknown_kind[2] = 99;
    let mut bad_crc = request.clone();
    *bad_crc.last_mut().unwrap() ^= 0xFF;
    let oversize = [
        0xDB,
        1,
        FrameKind::Request as u8,
        0,
        0xFF,
        0xFF,
        0xFF,
        0xFF,
        0,
        0,
        0,
        0,
    ];
    let response_first = Frame::new(FrameKind::Response, Bytes::new())
        .encode()
        .unwrap();
    for garbage in [
        unknown_kind,
        bad_crc,
        oversize.to_vec(),
        response_first,
        b"plain garbage".to_vec(),
        Vec::new(),
    ] {
        let mut bytes = hello.clone();
        bytes.extend_from_slice(&garbage);
        let result = raw_stream(&connection, &bytes).await;
        assert!(result.is_err(), "{result:?}");
    }
    let answer = raw_stream(&connection, &[hello.clone(), request].concat()).await;
    assert_eq!(
        answer.map(|frame| frame.body),
        Ok(Bytes::from_static(b"echo:ok"))
    );
    assert_eq!(b_handler.request_count(), 1);
}

#[tokio::test]
async fn stream_with_a_wrong_summary_or_cut_short_is_an_error_for_the_receiver() {
    use nodedb_cluster_transport::codec::StreamEnd;
    let ca = tls::generate_ca("test").unwrap();
    let (_, b, b_handler) = pair(&ca);
    let material = TlsMaterial::issue(&ca, node(1)).unwrap();
    let client = raw_client(&ca.cert_pem, Some(&material));
    let connection = client
        .connect(b.local_addr().unwrap(), &node_server_name(node(2)))
        .unwrap()
        .await
        .unwrap();
    let frames = |frames: &[Frame]| -> Vec<u8> {
        frames
            .iter()
            .flat_map(|frame| frame.encode().unwrap())
            .collect()
    };
    let hello = Frame::hello(node(1));
    let open = Frame::new(FrameKind::StreamOpen, Bytes::from_static(b"snapshot"));
    let chunk = Frame::new(FrameKind::StreamChunk, pattern_chunk(0, 1000));

    let wrong_summary = Frame::stream_end(StreamEnd {
        total_bytes: 1000,
        crc: 12345,
    });
    let answer = raw_stream(
        &connection,
        &frames(&[hello.clone(), open.clone(), chunk.clone(), wrong_summary]),
    )
    .await
    .unwrap();
    assert_eq!(answer.kind, FrameKind::ErrorResponse);
    assert_eq!(b_handler.stream_errors.load(Ordering::SeqCst), 1);

    // No end frame: the sender finished its side early. Not a clean end.
    let answer = raw_stream(&connection, &frames(&[hello, open, chunk]))
        .await
        .unwrap();
    assert_eq!(answer.kind, FrameKind::ErrorResponse);
    assert_eq!(b_handler.stream_errors.load(Ordering::SeqCst), 2);
    assert_eq!(b_handler.stream_bytes_total.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn insecure_mode_takes_the_id_from_hello() {
    let bind_insecure = |id: u64| {
        QuicTransport::bind(QuicConfig {
            node_id: node(id),
            listen_addr: loopback(),
            tls: TlsMode::Insecure,
            timings: QuicTimings::default(),
        })
        .unwrap()
    };
    let a = bind_insecure(1);
    let b = bind_insecure(2);
    let handler = Arc::new(EchoHandler::new());
    b.set_handler(handler.clone());
    a.set_peer_addr(node(2), b.local_addr().unwrap());
    let response = a.call(node(2), Bytes::from_static(b"x"), TIMEOUT).await;
    assert_eq!(response, Ok(Bytes::from_static(b"echo:x")));
    assert_eq!(*handler.senders.lock().unwrap(), vec![node(1)]);
    let by_addr = a
        .call_addr(b.local_addr().unwrap(), Bytes::from_static(b"y"), TIMEOUT)
        .await;
    assert_eq!(by_addr, Ok((node(2), Bytes::from_static(b"echo:y"))));
}

// ---------------------------------------------------------------------------------------------

/// A bare quinn client, to act as a misbehaving peer.
fn raw_client(ca_pem: &str, identity: Option<&TlsMaterial>) -> quinn::Endpoint {
    raw_client_with_alpn(ca_pem, identity, ALPN_PROTOCOL)
}

fn raw_client_with_alpn(
    ca_pem: &str,
    identity: Option<&TlsMaterial>,
    alpn: &[u8],
) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(tls::ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(material) => {
            let chain = CertificateDer::pem_slice_iter(material.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).unwrap();
    let mut endpoint = quinn::Endpoint::client(loopback()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// Writes `bytes` on a new stream of `connection` and reads one frame back.
async fn raw_stream(connection: &quinn::Connection, bytes: &[u8]) -> Result<Frame, String> {
    let attempt = async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(bytes)
            .await
            .map_err(|error| error.to_string())?;
        let _ = send.finish();
        read_required_frame(&mut recv)
            .await
            .map_err(|error| error.to_string())
    };
    match tokio::time::timeout(TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err("timed out".into()),
    }
}

/// One request on a fresh connection, claiming to be `claimed`.
async fn raw_call(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server: NodeId,
    claimed: NodeId,
) -> Result<Frame, String> {
    let attempt = async {
        let connecting = endpoint
            .connect(addr, &node_server_name(server))
            .map_err(|error| error.to_string())?;
        let connection = connecting.await.map_err(|error| error.to_string())?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &Frame::hello(claimed))
            .await
            .map_err(|error| error.to_string())?;
        let request = Frame::new(FrameKind::Request, Bytes::from_static(b"raw"));
        write_frame(&mut send, &request)
            .await
            .map_err(|error| error.to_string())?;
        let _ = send.finish();
        read_required_frame(&mut recv)
            .await
            .map_err(|error| error.to_string())
    };
    match tokio::time::timeout(TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err("timed out".into()),
    }
}

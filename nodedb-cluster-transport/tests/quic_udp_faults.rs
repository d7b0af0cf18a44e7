//! The QUIC transport over the UDP fault layer on 127.0.0.1: with every datagram delayed by a
//! random time (so reordered) and many duplicated, both ways, calls still get their own
//! answers, exactly once each; settings out of range are refused at bind.

mod common;

use common::EchoHandler;
use nodedb_cluster_core::NodeId;
use nodedb_cluster_transport::quic::{BindError, QuicConfig, QuicTransport, UdpFaults};
use nodedb_cluster_transport::tls::{self, CaMaterial, TlsMaterial, TlsMode};
use nodedb_cluster_transport::{Bytes, Transport};
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);
const CALLS: u64 = 200;

fn config(ca: &CaMaterial, id: u64) -> QuicConfig {
    let material = TlsMaterial::issue(ca, NodeId(id)).unwrap();
    QuicConfig::new(
        NodeId(id),
        "127.0.0.1:0".parse().unwrap(),
        TlsMode::Secure(material),
    )
}

fn faults(seed: u64) -> UdpFaults {
    UdpFaults {
        delay_ms_max: 15,
        duplicate_probability: 0.3,
        seed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_delayed_reordered_and_duplicated_datagrams() {
    let seed = 11;
    println!("udp fault seeds {seed} and {}", seed + 1);
    let ca = tls::generate_ca("test").unwrap();
    let a = QuicTransport::bind_with_udp_faults(config(&ca, 1), faults(seed)).unwrap();
    let b = QuicTransport::bind_with_udp_faults(config(&ca, 2), faults(seed + 1)).unwrap();
    let handler = Arc::new(EchoHandler::new());
    b.set_handler(handler.clone());
    a.set_handler(Arc::new(EchoHandler::new()));
    a.set_peer_addr(NodeId(2), b.local_addr().unwrap());
    b.set_peer_addr(NodeId(1), a.local_addr().unwrap());

    let calls = (0..CALLS).map(|index| {
        let a = Arc::clone(&a);
        tokio::spawn(async move {
            let request = Bytes::from(format!("call-{index}"));
            let answer = a.call(NodeId(2), request, TIMEOUT).await;
            (index, answer)
        })
    });
    for call in calls.collect::<Vec<_>>() {
        let (index, answer) = call.await.unwrap();
        assert_eq!(
            answer,
            Ok(Bytes::from(format!("echo:call-{index}"))),
            "call {index}"
        );
    }
    // QUIC drops duplicated datagrams: every request reached the handler once.
    assert_eq!(handler.request_count(), CALLS);
    let back = b
        .call(NodeId(1), Bytes::from_static(b"back"), TIMEOUT)
        .await;
    assert_eq!(back, Ok(Bytes::from_static(b"echo:back")));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn out_of_range_faults_are_refused_at_bind() {
    let ca = tls::generate_ca("test").unwrap();
    let mut wrong = faults(1);
    wrong.duplicate_probability = 2.0;
    let refused = QuicTransport::bind_with_udp_faults(config(&ca, 1), wrong);
    assert!(matches!(refused, Err(BindError::UdpFaults(_))));
}

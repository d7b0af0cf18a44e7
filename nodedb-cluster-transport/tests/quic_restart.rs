//! A peer killed without a word (kill -9) and restarted on the same port with the same key
//! is reached again at once: its new process answers the old connection's packets with a
//! stateless reset, so the caller redials instead of waiting for the idle timeout.

mod common;

use common::EchoHandler;
use nodedb_cluster_core::NodeId;
use nodedb_cluster_transport::quic::{QuicConfig, QuicTimings, QuicTransport};
use nodedb_cluster_transport::tls::{self, TlsMaterial, TlsMode};
use nodedb_cluster_transport::{Bytes, Transport, TransportError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Long enough for any live peer to answer; far shorter than the 30 s idle timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const BIND_ATTEMPTS_MAX: u32 = 200;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn bind(
    runtime: &tokio::runtime::Runtime,
    id: u64,
    addr: SocketAddr,
    material: &TlsMaterial,
) -> Option<Arc<QuicTransport>> {
    let _guard = runtime.enter();
    QuicTransport::bind(QuicConfig {
        node_id: NodeId(id),
        listen_addr: addr,
        tls: TlsMode::Secure(material.clone()),
        timings: QuicTimings::default(),
    })
    .ok()
}

#[test]
fn a_peer_killed_and_restarted_on_its_port_is_reached_again_at_once() {
    let ca = tls::generate_ca("test").unwrap();
    let material_a = TlsMaterial::issue(&ca, NodeId(1)).unwrap();
    let material_b = TlsMaterial::issue(&ca, NodeId(2)).unwrap();
    let caller_runtime = runtime();
    let a = bind(
        &caller_runtime,
        1,
        "127.0.0.1:0".parse().unwrap(),
        &material_a,
    )
    .unwrap();

    let first_life = runtime();
    let b = bind(&first_life, 2, "127.0.0.1:0".parse().unwrap(), &material_b).unwrap();
    b.set_handler(Arc::new(EchoHandler::new()));
    let b_addr = b.local_addr().unwrap();
    a.set_peer_addr(NodeId(2), b_addr);
    let warm_up =
        caller_runtime.block_on(a.call(NodeId(2), Bytes::from_static(b"x"), CALL_TIMEOUT));
    assert!(warm_up.is_ok(), "{warm_up:?}");

    // kill -9: the runtime stops mid-flight, no connection is closed politely.
    first_life.shutdown_background();
    drop(b);

    let second_life = runtime();
    let restarted = (0..BIND_ATTEMPTS_MAX)
        .find_map(|_| {
            let bound = bind(&second_life, 2, b_addr, &material_b);
            if bound.is_none() {
                std::thread::sleep(Duration::from_millis(25));
            }
            bound
        })
        .expect("port of the killed peer could be bound again");
    restarted.set_handler(Arc::new(EchoHandler::new()));

    let first = caller_runtime.block_on(a.call(NodeId(2), Bytes::from_static(b"x"), CALL_TIMEOUT));
    assert!(
        !matches!(first, Err(TransportError::Timeout { .. })),
        "the dead connection must be reset, not waited out: {first:?}"
    );
    let second = caller_runtime.block_on(a.call(NodeId(2), Bytes::from_static(b"x"), CALL_TIMEOUT));
    assert!(second.is_ok(), "the restarted peer answers: {second:?}");
}

//! Three real nodes (QUIC, mutual TLS) and an outsider holding a valid certificate of the same
//! CA that never joined. The outsider sends what a hostile peer would: empty payloads, unknown
//! channels, undecodable and wrong-version Raft RPCs, RPCs for groups nobody hosts, forged
//! leader messages naming another node, disruptive vote requests with huge terms, and garbage
//! control messages. Every one gets a typed answer, and afterwards the cluster still writes
//! and reads through every node.

mod real_cluster;

use metrics_exporter_prometheus::PrometheusBuilder;
use nodedb_cluster_core::NodeId;
use nodedb_cluster_raft::RaftTimings;
use nodedb_cluster_transport::quic::{QuicConfig, QuicTransport};
use nodedb_cluster_transport::tls::{TlsMaterial, TlsMode};
use nodedb_cluster_transport::{Bytes, HandlerError, Transport, TransportError};
use real_cluster::{NUM_GROUPS, OUTSIDER, RealCluster};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);
/// Disruptive vote requests sent to each node.
const VOTES_PER_NODE: u64 = 50;

/// Byte of the Raft channel in front of every Raft payload (docs/design.md, "Node channels").
const RAFT: u8 = 0x01;
const CONTROL: u8 = 0x02;

#[test]
fn a_certified_outsider_gets_typed_answers_and_the_cluster_keeps_serving() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let cluster = RealCluster::start(None, recorder.handle(), RaftTimings::for_tests());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outsider = runtime.block_on(async {
        let material = TlsMaterial::from_files(
            &cluster.certs.join("ca.pem"),
            &cluster.certs.join(format!("node-{}.pem", OUTSIDER.0)),
            &cluster.certs.join(format!("node-{}.key", OUTSIDER.0)),
        )
        .unwrap();
        let outsider = QuicTransport::bind(QuicConfig::new(
            OUTSIDER,
            "127.0.0.1:0".parse().unwrap(),
            TlsMode::Secure(material),
        ))
        .unwrap();
        for node in &cluster.nodes {
            outsider.set_peer_addr(node.id, node.transport.local_addr().unwrap());
        }
        outsider
    });
    let call = |to: NodeId, payload: Vec<u8>| {
        runtime.block_on(outsider.call(to, Bytes::from(payload), TIMEOUT))
    };

    for node in &cluster.nodes {
        let to = node.id;
        for refused in [vec![], vec![0x7F, 1, 2, 3]] {
            let answer = call(to, refused.clone());
            assert!(
                matches!(
                    answer,
                    Err(TransportError::Remote {
                        error: HandlerError::BadRequest(_),
                        ..
                    })
                ),
                "{to}: {refused:02x?} got {answer:?}"
            );
        }
        // RaftReply { version 1, Failed(BadMessage(..)) } starts 01 04 02.
        let bad_message = [1u8, 4, 2];
        for undecodable in [
            vec![RAFT],
            vec![RAFT, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
            // A vote for group 1 in wire version 9.
            vec![RAFT, 9, 1, 1, 4, 9, 0, 0, 0],
            // The same vote with its term as an overlong varint.
            vec![RAFT, 1, 1, 1, 0x84, 0x00, 9, 0, 0, 0],
            // AppendEntries for group 1 naming node 1 as leader at term 1000: a forgery.
            vec![RAFT, 1, 1, 0, 0xE8, 0x07, 1, 1, 0, 0, 0],
        ] {
            let answer = call(to, undecodable.clone()).unwrap();
            assert_eq!(
                answer[..3],
                bad_message,
                "{to}: {undecodable:02x?} answered {answer:02x?}"
            );
        }
        // A vote of the outsider itself (term 10, not committed, no last log id, not a
        // leadership transfer) for group 999, which nobody hosts: Failed(UnknownGroup(999)),
        // 01 04 00 e7 07.
        let answer = call(
            to,
            vec![RAFT, 1, 0xE7, 0x07, 1, 10, OUTSIDER.0 as u8, 0, 0, 0],
        )
        .unwrap();
        assert_eq!(answer.as_ref(), [1, 4, 0, 0xE7, 0x07], "{to}");
        // Disruptive votes: the outsider asks to lead real groups at ever higher terms, with
        // an empty log. Raft must not grant them, and the cluster must keep serving.
        for round in 0..VOTES_PER_NODE {
            let group = 1 + (round % u64::from(NUM_GROUPS)) as u8;
            let term = 1_000 + round;
            let mut vote = vec![RAFT, 1, group, 1];
            push_varint(&mut vote, term);
            // Not committed, no last log id; every other one claims to be a leadership transfer,
            // which a voter serves even while its leader's lease holds.
            vote.extend_from_slice(&[OUTSIDER.0 as u8, 0, 0, (round % 2) as u8]);
            let answer = call(to, vote);
            assert!(answer.is_ok(), "{to}: {answer:?}");
        }
        // The outsider names itself leader of a real group at a higher term, without entries:
        // Raft trusts a certified peer that far, so the group may stall until its members
        // elect a new leader; the writes below must still succeed.
        let mut takeover = vec![RAFT, 1, 1, 0];
        push_varint(&mut takeover, 2_000);
        takeover.extend_from_slice(&[OUTSIDER.0 as u8, 1, 0, 0, 0]);
        assert!(call(to, takeover).is_ok(), "{to}");
        for garbage in [
            vec![CONTROL],
            vec![CONTROL, 0xFF, 0xFF],
            vec![CONTROL, 2, 0x80],
        ] {
            let answer = call(to, garbage.clone());
            assert!(
                answer.is_ok() || matches!(answer, Err(TransportError::Remote { .. })),
                "{to}: {answer:?}"
            );
        }
    }

    for node in &cluster.nodes {
        let key = format!("after-attack-{}", node.id.0);
        let put = cluster.put(node.id.0, &key, b"still here");
        assert_eq!(put.status, 200, "{}: {}", node.id, put.text());
        for reader in &cluster.nodes {
            let got = cluster.get(reader.id.0, &key);
            assert_eq!(
                (got.status, got.body.as_slice()),
                (200, &b"still here"[..]),
                "{} reads {key}",
                reader.id
            );
        }
    }
    runtime.block_on(outsider.shutdown());
    drop(outsider);
    cluster.shutdown();
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

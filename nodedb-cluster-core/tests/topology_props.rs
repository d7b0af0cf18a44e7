//! Property tests of address parsing and the topology: arbitrary text never panics the parser,
//! accepted addresses keep their (lower-cased) text and split into host and port, and random
//! admissions never produce two nodes sharing an id or an address.

use nodedb_cluster_core::NodeId;
use nodedb_cluster_core::topology::{NodeInfo, NodeState, PeerAddr, Topology, TopologyError};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use std::collections::BTreeSet;

fn config() -> Config {
    Config {
        cases: 2048,
        rng_seed: RngSeed::Fixed(0x5EED_0005),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Text that looks like an address often enough to reach every branch of the parser.
fn address_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9.:\\[\\]-]{0,24}",
        "[0-9]{1,4}\\.[0-9]{1,4}\\.[0-9]{1,4}\\.[0-9]{1,4}:[0-9]{1,6}",
        "\\[[0-9a-f:.]{0,40}\\]:[0-9]{1,6}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parsing_never_panics_and_keeps_the_text(text in address_like()) {
        if let Ok(addr) = PeerAddr::parse(&text) {
            let canonical = text.to_ascii_lowercase();
            prop_assert_eq!(addr.as_str(), canonical.as_str());
            prop_assert_eq!(format!("{}:{}", addr.host(), addr.port()), canonical);
            prop_assert!(addr.port() != 0);
            let bytes = postcard::to_allocvec(&addr).unwrap();
            prop_assert_eq!(postcard::from_bytes::<PeerAddr>(&bytes).unwrap(), addr);
        }
    }

    #[test]
    fn admissions_keep_ids_and_addresses_unique(
        admissions in prop::collection::vec((0u64..8, 0u8..6, 0u8..6), 0..40),
    ) {
        let mut topology = Topology::new();
        for (id, host, admin_host) in admissions {
            let node = NodeInfo {
                id: NodeId(id),
                addr: PeerAddr::parse(&format!("10.0.0.{host}:9400")).unwrap(),
                admin_addr: PeerAddr::parse(&format!("10.0.0.{admin_host}:9401")).unwrap(),
                state: NodeState::Joining,
            };
            let before = topology.clone();
            match topology.insert(node) {
                Ok(_) => {}
                Err(TopologyError::InvalidNodeId) => prop_assert_eq!(id, 0),
                Err(_) => prop_assert_eq!(&topology, &before),
            }
            topology.validate().unwrap();
            let mut seen = BTreeSet::new();
            for info in topology.nodes() {
                prop_assert!(seen.insert(info.addr.clone()), "{} used twice", info.addr);
                prop_assert!(seen.insert(info.admin_addr.clone()), "{} used twice", info.admin_addr);
            }
        }
    }
}

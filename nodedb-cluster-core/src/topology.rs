//! Cluster membership at the node level: who the nodes are, where they listen and what state
//! they are in. Addresses are validated by pure parsing (no resolution): resolving and binding
//! is the IO layer's job.

use crate::ids::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Largest number of nodes a cluster may ever list, decommissioned ones included.
pub const NODES_MAX: usize = 1024;

/// Longest accepted address text: a 253-byte host name, brackets, colon and a 5-digit port.
pub const PEER_ADDR_BYTES_MAX: usize = 262;

/// A validated `host:port` address: a DNS name, an IPv4 address or a bracketed IPv6 address,
/// and a non-zero port. Kept as text; the IO layer resolves it. Canonical spelling: lower
/// case, no leading zeros in the port or in IPv4 octets, so that one address has one text
/// and duplicate detection can compare texts (IPv6 is compared as written).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct PeerAddr(String);

/// Why a text is not a valid `host:port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum AddrError {
    #[error("address is empty")]
    Empty,
    #[error("address is {bytes} bytes long, more than {max}")]
    TooLong { bytes: u64, max: u64 },
    #[error("address has no ':port'")]
    MissingPort,
    #[error("port is not a number in 1..=65535")]
    InvalidPort,
    #[error("host is not a DNS name, an IPv4 address or a bracketed IPv6 address")]
    InvalidHost,
}

/// Lifecycle of a node. Allowed transitions are listed by [`NodeState::can_become`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeState {
    /// Known to the cluster, catching up on metadata; holds no data replicas yet.
    Joining,
    /// Serving; eligible for replicas and leadership.
    Active,
    /// Being emptied on purpose (decommission); replicas move off, none move on.
    Draining,
    /// Silent past the failure timeout; replicas are replaced elsewhere.
    Down,
    /// Gone for good; its id is never reused.
    Decommissioned,
}

/// One cluster member as recorded in the metadata group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// QUIC (UDP) address for node-to-node traffic.
    pub addr: PeerAddr,
    /// HTTP admin address.
    pub admin_addr: PeerAddr,
    pub state: NodeState,
}

/// Every node the cluster has ever admitted, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TopologyRecord")]
pub struct Topology {
    nodes: BTreeMap<NodeId, NodeInfo>,
}

/// Why a topology change or a decoded topology was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum TopologyError {
    #[error("node id 0 is reserved and invalid")]
    InvalidNodeId,
    #[error("{node} is already registered with different addresses")]
    NodeIdConflict { node: NodeId },
    #[error("address {addr} of {node} is already used by {owner}")]
    AddrInUse {
        node: NodeId,
        addr: PeerAddr,
        owner: NodeId,
    },
    #[error("{node} is not a member of the cluster")]
    UnknownNode { node: NodeId },
    #[error("{node} is decommissioned; its id cannot be reused")]
    NodeDecommissioned { node: NodeId },
    #[error("a new node must start Joining or Active, not {state:?}")]
    InvalidInitialState { state: NodeState },
    #[error("{node} cannot go from {from:?} to {to:?}")]
    InvalidTransition {
        node: NodeId,
        from: NodeState,
        to: NodeState,
    },
    #[error("the cluster already has {max} nodes")]
    TooManyNodes { max: u64 },
    #[error("decoded topology stores {node} under the key {key}")]
    KeyMismatch { key: NodeId, node: NodeId },
}

impl PeerAddr {
    /// Validates `text` as `host:port` without resolving it; letters are lower-cased.
    pub fn parse(text: &str) -> Result<PeerAddr, AddrError> {
        validate_addr(text)?;
        Ok(PeerAddr(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host part, brackets included for IPv6.
    pub fn host(&self) -> &str {
        self.split().0
    }

    pub fn port(&self) -> u16 {
        self.split().1
    }

    fn split(&self) -> (&str, u16) {
        // Validated on construction, so the colon and the port are present.
        let (host, port) = self.0.rsplit_once(':').unwrap_or((&self.0, "0"));
        (host, port.parse().unwrap_or(0))
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for PeerAddr {
    type Err = AddrError;

    fn from_str(text: &str) -> Result<PeerAddr, AddrError> {
        PeerAddr::parse(text)
    }
}

impl TryFrom<String> for PeerAddr {
    type Error = AddrError;

    fn try_from(text: String) -> Result<PeerAddr, AddrError> {
        PeerAddr::parse(&text)
    }
}

impl NodeState {
    /// The lifecycle: Joining -> Active <-> Down, Active -> Draining -> Decommissioned; a
    /// Draining node may be put back to Active (decommission cancelled) or go Down; a Down or
    /// Joining node may be decommissioned directly. Decommissioned is final.
    pub fn can_become(self, to: NodeState) -> bool {
        use NodeState::*;
        matches!(
            (self, to),
            (Joining, Active | Down | Decommissioned)
                | (Active, Down | Draining)
                | (Down, Active | Draining | Decommissioned)
                | (Draining, Active | Down | Decommissioned)
        )
    }

    /// Whether a node in this state may receive new replicas and leadership.
    pub fn is_placeable(self) -> bool {
        self == NodeState::Active
    }
}

impl Topology {
    pub fn new() -> Topology {
        Topology::default()
    }

    pub fn get(&self, node: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&node)
    }

    pub fn state_of(&self, node: NodeId) -> Option<NodeState> {
        self.nodes.get(&node).map(|info| info.state)
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.nodes.contains_key(&node)
    }

    /// Every node in ascending id order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> + '_ {
        self.nodes.values()
    }

    /// Ids of nodes in `state`, ascending.
    pub fn ids_in(&self, state: NodeState) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .values()
            .filter(move |info| info.state == state)
            .map(|info| info.id)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Admits `node`. Returns `Ok(false)` if the same id is already registered with the same
    /// addresses (a retried join); refuses the same id with other addresses, an address already
    /// used by another node, id 0, a decommissioned id and an initial state other than
    /// Joining/Active.
    pub fn insert(&mut self, node: NodeInfo) -> Result<bool, TopologyError> {
        if !node.id.is_valid() {
            return Err(TopologyError::InvalidNodeId);
        }
        if let Some(existing) = self.nodes.get(&node.id) {
            if existing.state == NodeState::Decommissioned {
                return Err(TopologyError::NodeDecommissioned { node: node.id });
            }
            if existing.addr == node.addr && existing.admin_addr == node.admin_addr {
                return Ok(false);
            }
            return Err(TopologyError::NodeIdConflict { node: node.id });
        }
        if !matches!(node.state, NodeState::Joining | NodeState::Active) {
            return Err(TopologyError::InvalidInitialState { state: node.state });
        }
        if self.nodes.len() >= NODES_MAX {
            return Err(TopologyError::TooManyNodes {
                max: NODES_MAX as u64,
            });
        }
        check_addrs_free(self.nodes.values(), &node)?;
        self.nodes.insert(node.id, node);
        Ok(true)
    }

    /// Moves `node` to `state` along an allowed transition. Returns the previous state;
    /// setting the current state again is a no-op that returns it.
    pub fn set_state(
        &mut self,
        node: NodeId,
        state: NodeState,
    ) -> Result<NodeState, TopologyError> {
        let info = self
            .nodes
            .get_mut(&node)
            .ok_or(TopologyError::UnknownNode { node })?;
        let from = info.state;
        if from == state {
            return Ok(from);
        }
        if !from.can_become(state) {
            return Err(TopologyError::InvalidTransition {
                node,
                from,
                to: state,
            });
        }
        info.state = state;
        Ok(from)
    }

    /// Checks ids, keys and address uniqueness; run after decoding and in tests.
    pub fn validate(&self) -> Result<(), TopologyError> {
        if self.nodes.len() > NODES_MAX {
            return Err(TopologyError::TooManyNodes {
                max: NODES_MAX as u64,
            });
        }
        for (position, (key, info)) in self.nodes.iter().enumerate() {
            if *key != info.id {
                return Err(TopologyError::KeyMismatch {
                    key: *key,
                    node: info.id,
                });
            }
            if !key.is_valid() {
                return Err(TopologyError::InvalidNodeId);
            }
            check_addrs_free(self.nodes.values().skip(position + 1), info)?;
        }
        Ok(())
    }
}

/// Refuses `node` if one of its addresses is used by any of `others`.
fn check_addrs_free<'a>(
    others: impl Iterator<Item = &'a NodeInfo>,
    node: &NodeInfo,
) -> Result<(), TopologyError> {
    for other in others {
        for addr in [&node.addr, &node.admin_addr] {
            if *addr == other.addr || *addr == other.admin_addr {
                return Err(TopologyError::AddrInUse {
                    node: node.id,
                    addr: addr.clone(),
                    owner: other.id,
                });
            }
        }
    }
    Ok(())
}

fn validate_addr(text: &str) -> Result<(), AddrError> {
    if text.is_empty() {
        return Err(AddrError::Empty);
    }
    if text.len() > PEER_ADDR_BYTES_MAX {
        return Err(AddrError::TooLong {
            bytes: text.len() as u64,
            max: PEER_ADDR_BYTES_MAX as u64,
        });
    }
    let (host, port) = text.rsplit_once(':').ok_or(AddrError::MissingPort)?;
    let port_valid = (1..=5).contains(&port.len())
        && !port.starts_with('0')
        && port.bytes().all(|byte| byte.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|port| port != 0);
    if !port_valid {
        return Err(AddrError::InvalidPort);
    }
    let host_valid = match host
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        Some(ipv6) => is_ipv6_text(ipv6),
        None => is_dns_name_or_ipv4(host),
    };
    if host_valid {
        Ok(())
    } else {
        Err(AddrError::InvalidHost)
    }
}

/// Shape check of an IPv6 literal: hex groups separated by colons, optional dotted IPv4 tail,
/// at most one `::`. Zone ids are not accepted.
fn is_ipv6_text(text: &str) -> bool {
    let allowed = text
        .bytes()
        .all(|byte| byte.is_ascii_hexdigit() || byte == b':' || byte == b'.');
    let groups: Vec<&str> = text.split(':').collect();
    allowed
        && (2..=39).contains(&text.len())
        && text.matches("::").count() <= 1
        && !text.contains(":::")
        && (3..=9).contains(&groups.len())
        && groups
            .iter()
            .all(|group| group.len() <= 4 || (group.contains('.') && is_ipv4(group)))
}

fn is_dns_name_or_ipv4(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels
        .iter()
        .all(|label| !label.is_empty() && label.bytes().all(|byte| byte.is_ascii_digit()))
    {
        return is_ipv4(host);
    }
    labels.iter().all(|label| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

fn is_ipv4(text: &str) -> bool {
    let octets: Vec<&str> = text.split('.').collect();
    octets.len() == 4
        && octets.iter().all(|octet| {
            (1..=3).contains(&octet.len())
                && (octet.len() == 1 || !octet.starts_with('0'))
                && octet.bytes().all(|byte| byte.is_ascii_digit())
                && octet.parse::<u8>().is_ok()
        })
}

/// The encoded shape of [`Topology`]; decoding goes through it so that it is validated.
#[derive(Deserialize)]
struct TopologyRecord {
    nodes: BTreeMap<NodeId, NodeInfo>,
}

impl TryFrom<TopologyRecord> for Topology {
    type Error = TopologyError;

    fn try_from(record: TopologyRecord) -> Result<Topology, TopologyError> {
        let topology = Topology {
            nodes: record.nodes,
        };
        topology.validate()?;
        Ok(topology)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, state: NodeState) -> NodeInfo {
        NodeInfo {
            id: NodeId(id),
            addr: PeerAddr::parse(&format!("127.0.0.1:{}", 9400 + id * 10)).unwrap(),
            admin_addr: PeerAddr::parse(&format!("127.0.0.1:{}", 9401 + id * 10)).unwrap(),
            state,
        }
    }

    #[test]
    fn accepts_valid_addresses() {
        for text in [
            "127.0.0.1:9400",
            "localhost:1",
            "node-1.example.com:65535",
            "[::1]:9400",
            "[2001:db8::8a2e:370:7334]:443",
            "[::ffff:192.0.2.1]:80",
            "a:9",
        ] {
            let addr = PeerAddr::parse(text).unwrap_or_else(|error| panic!("{text}: {error}"));
            assert_eq!(addr.as_str(), text);
        }
        let addr = PeerAddr::parse("[::1]:9400").unwrap();
        assert_eq!((addr.host(), addr.port()), ("[::1]", 9400));
        let addr = PeerAddr::parse("Node-1.Example.COM:80").unwrap();
        assert_eq!(addr.as_str(), "node-1.example.com:80");
    }

    #[test]
    fn refuses_invalid_addresses() {
        let cases = [
            ("", AddrError::Empty),
            ("127.0.0.1", AddrError::MissingPort),
            ("127.0.0.1:", AddrError::InvalidPort),
            ("127.0.0.1:0", AddrError::InvalidPort),
            ("127.0.0.1:65536", AddrError::InvalidPort),
            ("127.0.0.1:+80", AddrError::InvalidPort),
            ("127.0.0.1:000080", AddrError::InvalidPort),
            ("127.0.0.1:09400", AddrError::InvalidPort),
            ("010.0.0.1:80", AddrError::InvalidHost),
            (":80", AddrError::InvalidHost),
            ("256.0.0.1:80", AddrError::InvalidHost),
            ("1.2.3:80", AddrError::InvalidHost),
            ("::1:80", AddrError::InvalidHost),
            ("[::1:80", AddrError::InvalidHost),
            ("[zz::1]:80", AddrError::InvalidHost),
            ("-bad.example:80", AddrError::InvalidHost),
            ("bad..example:80", AddrError::InvalidHost),
            ("spa ce:80", AddrError::InvalidHost),
            ("héllo:80", AddrError::InvalidHost),
        ];
        for (text, expected) in cases {
            assert_eq!(PeerAddr::parse(text), Err(expected), "{text:?}");
        }
        let long = format!("{}:80", "a".repeat(PEER_ADDR_BYTES_MAX));
        assert!(matches!(
            PeerAddr::parse(&long),
            Err(AddrError::TooLong { .. })
        ));
    }

    #[test]
    fn decoding_validates_addresses() {
        let bytes = postcard::to_allocvec(&"no-port".to_owned()).unwrap();
        assert!(postcard::from_bytes::<PeerAddr>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&"host:80".to_owned()).unwrap();
        assert_eq!(
            postcard::from_bytes::<PeerAddr>(&bytes).unwrap(),
            PeerAddr::parse("host:80").unwrap()
        );
    }

    #[test]
    fn insert_is_idempotent_and_refuses_conflicts() {
        let mut topology = Topology::new();
        assert_eq!(topology.insert(node(1, NodeState::Active)), Ok(true));
        assert_eq!(topology.insert(node(1, NodeState::Joining)), Ok(false));
        let mut moved = node(1, NodeState::Joining);
        moved.addr = PeerAddr::parse("127.0.0.2:9400").unwrap();
        assert_eq!(
            topology.insert(moved),
            Err(TopologyError::NodeIdConflict { node: NodeId(1) })
        );
        let mut clash = node(2, NodeState::Joining);
        clash.admin_addr = node(1, NodeState::Active).addr;
        assert!(matches!(
            topology.insert(clash),
            Err(TopologyError::AddrInUse {
                owner: NodeId(1),
                ..
            })
        ));
        assert_eq!(
            topology.insert(node(0, NodeState::Joining)),
            Err(TopologyError::InvalidNodeId)
        );
        assert_eq!(
            topology.insert(node(3, NodeState::Down)),
            Err(TopologyError::InvalidInitialState {
                state: NodeState::Down
            })
        );
        assert_eq!(topology.len(), 1);
        topology.validate().unwrap();
    }

    #[test]
    fn state_transitions_follow_the_lifecycle() {
        let mut topology = Topology::new();
        topology.insert(node(1, NodeState::Joining)).unwrap();
        let id = NodeId(1);
        assert_eq!(
            topology.set_state(id, NodeState::Active),
            Ok(NodeState::Joining)
        );
        assert_eq!(
            topology.set_state(id, NodeState::Active),
            Ok(NodeState::Active)
        );
        assert!(matches!(
            topology.set_state(id, NodeState::Decommissioned),
            Err(TopologyError::InvalidTransition { .. })
        ));
        topology.set_state(id, NodeState::Draining).unwrap();
        topology.set_state(id, NodeState::Decommissioned).unwrap();
        assert!(topology.set_state(id, NodeState::Active).is_err());
        assert_eq!(
            topology.insert(node(1, NodeState::Joining)),
            Err(TopologyError::NodeDecommissioned { node: id })
        );
        assert_eq!(
            topology.set_state(NodeId(9), NodeState::Active),
            Err(TopologyError::UnknownNode { node: NodeId(9) })
        );
    }

    #[test]
    fn decoding_refuses_duplicate_addresses() {
        let mut nodes = BTreeMap::new();
        nodes.insert(NodeId(1), node(1, NodeState::Active));
        let mut second = node(2, NodeState::Active);
        second.addr = nodes[&NodeId(1)].addr.clone();
        nodes.insert(NodeId(2), second);
        let bytes = postcard::to_allocvec(&nodes).unwrap();
        assert!(postcard::from_bytes::<Topology>(&bytes).is_err());
    }
}

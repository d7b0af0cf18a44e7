//! Three real nodes in one process: QUIC over loopback with mutual TLS from a fresh CA, each
//! node's HTTP admin API served on its own loopback port, and a blocking HTTP client for the
//! test thread. Shared by the HTTP and metrics tests.
#![allow(dead_code)] // each test file uses a different part of the fixture

use metrics_exporter_prometheus::PrometheusHandle;
use nodedb_cluster_core::{GroupId, NodeId, vshard_for_key};
use nodedb_cluster_node::NodeConfig;
use nodedb_cluster_node::cluster::{Cluster, ClusterConfig, start_cluster_on};
use nodedb_cluster_node::http::{ApiState, serve};
use nodedb_cluster_node::node_service::NodeService;
use nodedb_cluster_node::run::cluster_config;
use nodedb_cluster_raft::RaftTimings;
use nodedb_cluster_transport::Transport;
use nodedb_cluster_transport::quic::{QuicConfig, QuicTransport};
use nodedb_cluster_transport::tls::{self, TlsMaterial, TlsMode};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NUM_GROUPS: u32 = 4;
/// A node id with a certificate of the cluster CA that never joins: tests use it for a peer
/// that turns hostile.
pub const OUTSIDER: NodeId = NodeId(9);
/// Longest wait for any condition of a test.
pub const WAIT: Duration = Duration::from_secs(30);

/// One running node.
pub struct Node {
    pub id: NodeId,
    pub cluster: Cluster,
    pub transport: Arc<QuicTransport>,
    pub http: SocketAddr,
}

/// Three nodes and the runtime they run on.
pub struct RealCluster {
    pub nodes: Vec<Node>,
    pub token: Option<String>,
    /// The cluster CA and node certificates (`ca.pem`, `node-N.pem`, `node-N.key`), with one
    /// extra certificate for [`OUTSIDER`].
    pub certs: PathBuf,
    /// Nodes whose endpoint [`RealCluster::cut_off`] closed.
    cut: Vec<u64>,
    agent: ureq::Agent,
    runtime: tokio::runtime::Runtime,
    _data: tempfile::TempDir,
}

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<String>,
}

impl RealCluster {
    /// Starts nodes 1, 2 and 3 together (all seeds of each other) with `timings`, serves each
    /// one's admin API with `token` and `metrics`, and waits until every group has three voters
    /// and every node leads a data group.
    pub fn start(
        token: Option<&str>,
        metrics: PrometheusHandle,
        timings: RaftTimings,
    ) -> RealCluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let data = tempfile::tempdir().unwrap();
        let certs = write_certs(data.path());
        let ids = [NodeId(1), NodeId(2), NodeId(3)];
        let nodes = runtime.block_on(async {
            let mut bound = Vec::new();
            for id in ids {
                let material = TlsMaterial::from_files(
                    &certs.join("ca.pem"),
                    &certs.join(format!("node-{}.pem", id.0)),
                    &certs.join(format!("node-{}.key", id.0)),
                )
                .unwrap();
                let transport = QuicTransport::bind(QuicConfig::new(
                    id,
                    "127.0.0.1:0".parse().unwrap(),
                    TlsMode::Secure(material),
                ))
                .unwrap();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                bound.push((id, transport, listener));
            }
            let seeds: Vec<SocketAddr> = bound
                .iter()
                .map(|(_, transport, _)| transport.local_addr().unwrap())
                .collect();
            let starts = bound.into_iter().map(|(id, transport, listener)| {
                let mut config = node_config(
                    id,
                    transport.local_addr().unwrap(),
                    listener.local_addr().unwrap(),
                    &seeds,
                    data.path(),
                    &certs,
                );
                config.timings = timings;
                let state_metrics = metrics.clone();
                let token = token.map(Arc::from);
                async move {
                    let dyn_transport: Arc<dyn Transport> = transport.clone();
                    let cluster = start_cluster_on(config, dyn_transport).await.unwrap();
                    let http = listener.local_addr().unwrap();
                    let state = ApiState {
                        service: Arc::new(NodeService::new(cluster.clone())),
                        token,
                        metrics: state_metrics,
                    };
                    tokio::spawn(serve(listener, state, std::future::pending()));
                    Node {
                        id,
                        cluster,
                        transport,
                        http,
                    }
                }
            });
            futures::future::join_all(starts).await
        });
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let cluster = RealCluster {
            nodes,
            token: token.map(str::to_string),
            certs,
            cut: Vec::new(),
            agent,
            runtime,
            _data: data,
        };
        cluster.wait_until(
            "every group to have three voters and spread leaders",
            || cluster.fully_replicated() && cluster.leaders_spread(),
        );
        cluster
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|node| node.id.0 == id).unwrap()
    }

    /// Sends a request to node `id`'s admin API with the cluster's token.
    pub fn send(&self, id: u64, method: &str, path: &str, body: &[u8]) -> Answer {
        self.send_with_token(id, method, path, body, self.token.as_deref())
    }

    pub fn send_with_token(
        &self,
        id: u64,
        method: &str,
        path: &str,
        body: &[u8],
        token: Option<&str>,
    ) -> Answer {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.node(id).http));
        let request = match token {
            Some(token) => request.header("authorization", format!("Bearer {token}")),
            None => request,
        };
        let mut response = self
            .agent
            .run(request.body(body.to_vec()).unwrap())
            .unwrap_or_else(|error| panic!("{method} {path} on node {id}: {error}"));
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap().to_string());
        let body = response
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_vec()
            .unwrap();
        Answer {
            status,
            body,
            retry_after,
        }
    }

    pub fn put(&self, id: u64, key: &str, value: &[u8]) -> Answer {
        self.send(id, "PUT", &format!("/v1/kv/{key}"), value)
    }

    pub fn get(&self, id: u64, key: &str) -> Answer {
        self.send(id, "GET", &format!("/v1/kv/{key}"), b"")
    }

    pub fn get_stale(&self, id: u64, key: &str) -> Answer {
        self.send(id, "GET", &format!("/v1/kv/{key}?consistency=stale"), b"")
    }

    pub fn cas(&self, id: u64, key: &str, expected: Option<&str>, new: &str) -> Answer {
        let body = serde_json::json!({ "expected": expected, "new": new });
        self.send(
            id,
            "POST",
            &format!("/v1/kv/{key}/cas"),
            body.to_string().as_bytes(),
        )
    }

    /// The data group that owns `key`, from node 1's routing.
    pub fn group_of(&self, key: &str) -> GroupId {
        let metadata = self.nodes[0].cluster.metadata();
        let applied = metadata.borrow();
        applied
            .state
            .routing()
            .unwrap()
            .group_of(vshard_for_key(key.as_bytes()))
    }

    /// The first key `prefix-N` owned by `group`.
    pub fn key_in(&self, group: GroupId, prefix: &str) -> String {
        (0..100_000)
            .map(|n| format!("{prefix}-{n}"))
            .find(|key| self.group_of(key) == group)
            .unwrap_or_else(|| panic!("no key with prefix {prefix} lands in {group}"))
    }

    /// The leader of `group` as node `id`'s replica sees it.
    pub fn leader_seen_by(&self, id: u64, group: GroupId) -> Option<NodeId> {
        self.node(id)
            .cluster
            .raft()
            .status(group)
            .and_then(|status| status.leader)
    }

    /// Polls `check` every 50 ms until it holds; fails the test with `what` after [`WAIT`].
    pub fn wait_until(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Closes the QUIC endpoints of `ids`: to the other nodes they are gone, as after a crash.
    /// Their replicas keep running cut off, and their admin APIs keep answering.
    pub fn cut_off(&mut self, ids: &[u64]) {
        let transports: Vec<Arc<QuicTransport>> = ids
            .iter()
            .map(|id| self.node(*id).transport.clone())
            .collect();
        self.runtime.block_on(futures::future::join_all(
            transports.iter().map(|transport| transport.shutdown()),
        ));
        self.cut.extend_from_slice(ids);
    }

    /// Stops every node that was not cut off; those are dropped with the runtime.
    pub fn shutdown(self) {
        let RealCluster {
            nodes,
            runtime,
            cut,
            ..
        } = self;
        runtime.block_on(async {
            for node in nodes.iter().filter(|node| !cut.contains(&node.id.0)) {
                node.cluster.shutdown().await;
            }
        });
        runtime.shutdown_timeout(Duration::from_secs(5));
    }

    fn fully_replicated(&self) -> bool {
        self.nodes.iter().all(|node| {
            let raft = node.cluster.raft();
            raft.groups().len() == NUM_GROUPS as usize + 1
                && raft.groups().iter().all(|group| {
                    raft.status(*group).is_some_and(|status| {
                        status.voters.len() == 3 && status.learners.is_empty()
                    })
                })
        })
    }

    /// Every node leads at least one data group, as node 1 sees it.
    fn leaders_spread(&self) -> bool {
        let leaders: Vec<Option<NodeId>> = (1..=NUM_GROUPS)
            .map(|group| self.leader_seen_by(1, GroupId(group)))
            .collect();
        self.nodes
            .iter()
            .all(|node| leaders.contains(&Some(node.id)))
    }
}

/// A CA and certificates of nodes 1 to 3, as `nodedb-cluster certs` lays them out.
fn write_certs(root: &Path) -> PathBuf {
    let dir = root.join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = tls::generate_ca("real-cluster-test").unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
    for node in [1, 2, 3, OUTSIDER.0] {
        let issued = tls::issue_node_cert(&ca, NodeId(node)).unwrap();
        std::fs::write(dir.join(format!("node-{node}.pem")), &issued.cert_pem).unwrap();
        std::fs::write(dir.join(format!("node-{node}.key")), &issued.key_pem).unwrap();
    }
    dir
}

/// The library configuration of one node, built the way `nodedb-cluster start` builds it from
/// a config file; addresses are those already bound.
fn node_config(
    id: NodeId,
    listen_addr: SocketAddr,
    admin_addr: SocketAddr,
    seeds: &[SocketAddr],
    root: &Path,
    certs: &Path,
) -> ClusterConfig {
    let seeds: Vec<String> = seeds.iter().map(|seed| format!("\"{seed}\"")).collect();
    let text = format!(
        r#"
node_id = {node}
listen_addr = "{listen_addr}"
admin_addr = "{admin_addr}"
data_dir = "{data_dir}"
seeds = [{seeds}]
num_groups = {NUM_GROUPS}
replication_factor = 3

[tls]
ca_cert = "{certs}/ca.pem"
cert = "{certs}/node-{node}.pem"
key = "{certs}/node-{node}.key"

[raft]
node_down_timeout_ms = 30000
"#,
        node = id.0,
        data_dir = root.join(format!("node-{}", id.0)).display(),
        seeds = seeds.join(", "),
        certs = certs.display(),
    );
    let config = NodeConfig::parse(&text).unwrap_or_else(|error| panic!("{error}: {text}"));
    cluster_config(&config).unwrap()
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", String::from_utf8_lossy(&self.body)))
            .to_string()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

//! Five `nodedb-cluster start` processes on loopback (QUIC with mutual TLS from a fresh CA, HTTP
//! admin API), started at once: they form one cluster with every group at three voters. One
//! process is killed with SIGKILL, misses writes, and is restarted from its data dir: it comes
//! back as the same member (no join, no bootstrap) and its replicas catch up. Then every process
//! is killed with SIGKILL and all are restarted from their data dirs: the same cluster comes
//! back, and every acknowledged write is read through every node. Last, SIGTERM stops one node
//! cleanly (exit 0) while the others keep serving.

use nodedb_cluster_core::NodeId;
use nodedb_cluster_transport::tls;
use serde_json::Value;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const NODES: u64 = 5;
const NUM_GROUPS: usize = 4;
/// Longest wait for any condition: processes of a debug build on a busy machine.
const WAIT: Duration = Duration::from_secs(90);

struct Node {
    id: u64,
    config: PathBuf,
    log: PathBuf,
    http: SocketAddr,
    process: Option<Child>,
}

/// The processes of one run; killed when dropped, whatever the test's outcome.
struct Processes {
    nodes: Vec<Node>,
    agent: ureq::Agent,
    _root: tempfile::TempDir,
}

impl Processes {
    fn prepare() -> Processes {
        let root = tempfile::tempdir().unwrap();
        let certs = root.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let ca = tls::generate_ca("process-cluster-test").unwrap();
        std::fs::write(certs.join("ca.pem"), &ca.cert_pem).unwrap();
        for id in 1..=NODES {
            let issued = tls::issue_node_cert(&ca, NodeId(id)).unwrap();
            std::fs::write(certs.join(format!("node-{id}.pem")), &issued.cert_pem).unwrap();
            std::fs::write(certs.join(format!("node-{id}.key")), &issued.key_pem).unwrap();
        }
        // Ports picked by the kernel, held until every one is known, then given to the nodes.
        let sockets: Vec<(UdpSocket, TcpListener)> = (1..=NODES)
            .map(|_| {
                (
                    UdpSocket::bind("127.0.0.1:0").unwrap(),
                    TcpListener::bind("127.0.0.1:0").unwrap(),
                )
            })
            .collect();
        let quic: Vec<SocketAddr> = sockets
            .iter()
            .map(|(udp, _)| udp.local_addr().unwrap())
            .collect();
        let seeds: Vec<String> = quic.iter().map(|addr| format!("\"{addr}\"")).collect();
        let nodes = (1..=NODES)
            .zip(&sockets)
            .map(|(id, (udp, tcp))| {
                let http = tcp.local_addr().unwrap();
                let config = root.path().join(format!("node-{id}.toml"));
                let text = format!(
                    r#"node_id = {id}
listen_addr = "{listen}"
admin_addr = "{http}"
data_dir = "{data}"
seeds = [{seeds}]
num_groups = {NUM_GROUPS}
replication_factor = 3

[tls]
ca_cert = "{certs}/ca.pem"
cert = "{certs}/node-{id}.pem"
key = "{certs}/node-{id}.key"

[raft]
node_down_timeout_ms = 30000
"#,
                    listen = udp.local_addr().unwrap(),
                    data = root.path().join(format!("node-{id}")).display(),
                    seeds = seeds.join(", "),
                    certs = certs.display(),
                );
                std::fs::write(&config, text).unwrap();
                Node {
                    id,
                    config,
                    log: root.path().join(format!("node-{id}.log")),
                    http,
                    process: None,
                }
            })
            .collect();
        drop(sockets);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Processes {
            nodes,
            agent,
            _root: root,
        }
    }

    /// Starts every node at once.
    fn start_all(&mut self) {
        for id in 1..=NODES {
            self.start(id);
        }
    }

    /// Starts one node, appending to its log file.
    fn start(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let process = Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"))
            .arg("start")
            .arg("--config")
            .arg(&node.config)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        node.process = Some(process);
    }

    /// SIGKILL of every node: nothing is flushed or handed over.
    fn kill_all(&mut self) {
        for id in 1..=NODES {
            self.kill(id);
        }
    }

    /// SIGKILL of one node.
    fn kill(&mut self, id: u64) {
        if let Some(mut process) = self.nodes[(id - 1) as usize].process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// SIGTERM of one node; its exit status, waited for up to [`WAIT`].
    fn terminate(&mut self, id: u64) -> ExitStatus {
        let mut process = self.nodes[(id - 1) as usize].process.take().unwrap();
        let sent = Command::new("kill")
            .args(["-TERM", &process.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM node {id}");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = process.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = process.kill();
                panic!("node {id} still running {WAIT:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn request(&self, id: u64, method: &str, path: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
        let node = &self.nodes[(id - 1) as usize];
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", node.http))
            .body(body.to_vec())
            .unwrap();
        let mut response = self.agent.run(request).ok()?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_vec().ok()?;
        Some((status, body))
    }

    fn view(&self, id: u64) -> Option<Value> {
        match self.request(id, "GET", "/v1/cluster", b"")? {
            (200, body) => serde_json::from_slice(&body).ok(),
            _ => None,
        }
    }

    /// Polls `check` until it holds; fails with `what` and the tail of every node's log after
    /// [`WAIT`], or at once if a node exited.
    fn wait_until(&mut self, what: &str, mut check: impl FnMut(&Processes) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check(self) {
            for node in &mut self.nodes {
                if let Some(process) = node.process.as_mut()
                    && let Ok(Some(status)) = process.try_wait()
                {
                    panic!(
                        "node {} exited ({status}) while waiting for {what}\n{}",
                        node.id,
                        log_tail(&node.log)
                    );
                }
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|node| format!("--- node {}\n{}", node.id, log_tail(&node.log)))
                    .collect();
                panic!("timed out waiting for {what}\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every node answers with the same cluster id, five Active nodes, and every group at three
    /// voters with a leader. Returns the cluster id.
    fn one_healthy_cluster(&self) -> Option<String> {
        let mut cluster_id = None;
        for id in 1..=NODES {
            let view = self.view(id)?;
            let this_id = view["cluster_id"].as_str()?.to_string();
            if cluster_id.get_or_insert_with(|| this_id.clone()) != &this_id {
                return None;
            }
            let nodes = view["nodes"].as_array()?;
            let active = nodes
                .iter()
                .filter(|node| node["state"] == "active")
                .count();
            let groups = view["groups"].as_array()?;
            let replicated = groups.len() == NUM_GROUPS + 1
                && groups.iter().all(|group| {
                    group["id"] == 0
                        || (group["voters"].as_array().is_some_and(|v| v.len() == 3)
                            && group["learners"].as_array().is_some_and(Vec::is_empty)
                            && !group["leader"].is_null())
                });
            if nodes.len() != NODES as usize || active != NODES as usize || !replicated {
                return None;
            }
        }
        cluster_id
    }

    fn put(&self, id: u64, key: &str, value: &str) -> bool {
        matches!(
            self.request(id, "PUT", &format!("/v1/kv/{key}"), value.as_bytes()),
            Some((200, _))
        )
    }

    fn get(&self, id: u64, key: &str) -> Option<(u16, Vec<u8>)> {
        self.request(id, "GET", &format!("/v1/kv/{key}"), b"")
    }

    /// A read of node `id`'s own replica when it holds the key's group.
    fn get_stale(&self, id: u64, key: &str) -> Option<(u16, Vec<u8>)> {
        self.request(id, "GET", &format!("/v1/kv/{key}?consistency=stale"), b"")
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[test]
fn five_processes_form_one_cluster_one_restarts_alone_and_all_survive_kill_9() {
    let mut cluster = Processes::prepare();
    cluster.start_all();
    cluster.wait_until("one cluster of five with three voters per group", |c| {
        c.one_healthy_cluster().is_some()
    });
    let cluster_id = cluster.one_healthy_cluster().unwrap();

    // Acknowledged writes through every node; a write refused (503 while a leadership moves)
    // is retried until acknowledged.
    let keys: Vec<(String, String)> = (0..20)
        .map(|n| (format!("key-{n}"), format!("value-{n}")))
        .collect();
    for (n, (key, value)) in keys.iter().enumerate() {
        let writer = 1 + n as u64 % NODES;
        cluster.wait_until(&format!("{key} acknowledged"), |c| {
            c.put(writer, key, value)
        });
    }

    // One node killed for less than the down timeout: the others keep acknowledging writes,
    // among them writes to groups it holds replicas of.
    const RESTARTED: u64 = 2;
    cluster.kill(RESTARTED);
    let missed: Vec<(String, String)> = (0..20)
        .map(|n| (format!("missed-{n}"), format!("value-{n}")))
        .collect();
    let writers: Vec<u64> = (1..=NODES).filter(|id| *id != RESTARTED).collect();
    for (n, (key, value)) in missed.iter().enumerate() {
        let writer = writers[n % writers.len()];
        cluster.wait_until(
            &format!("{key} acknowledged without node {RESTARTED}"),
            |c| c.put(writer, key, value),
        );
    }
    cluster.start(RESTARTED);
    cluster.wait_until("the killed node back in the same cluster", |c| {
        c.one_healthy_cluster().as_ref() == Some(&cluster_id)
    });
    let log = std::fs::read_to_string(&cluster.nodes[(RESTARTED - 1) as usize].log).unwrap();
    assert_eq!(log.matches("restarting from the data dir").count(), 1);
    assert_eq!(
        log.matches("joined seed=").count(),
        1,
        "joined again:\n{log}"
    );
    assert!(!log.contains("bootstrapping a new cluster"));
    // Stale reads answer from the node's own replica where it holds the key's group: the
    // writes it missed arrive there.
    for (key, value) in &missed {
        cluster.wait_until(&format!("{key} on node {RESTARTED}"), |c| {
            c.get_stale(RESTARTED, key)
                .is_some_and(|(status, body)| status == 200 && body == value.as_bytes())
        });
    }

    cluster.kill_all();
    cluster.start_all();
    cluster.wait_until("the same cluster back with every group replicated", |c| {
        c.one_healthy_cluster().as_ref() == Some(&cluster_id)
    });
    for id in 1..=NODES {
        for (key, value) in keys.iter().chain(&missed) {
            cluster.wait_until(&format!("{key} read through node {id}"), |c| {
                match c.get(id, key) {
                    Some((200, body)) => {
                        assert_eq!(body, value.as_bytes(), "{key} through node {id}");
                        true
                    }
                    Some((404, _)) => panic!("acknowledged {key} lost (node {id})"),
                    _ => false,
                }
            });
        }
    }
    cluster.wait_until("a write after the restart", |c| c.put(3, "after", "v"));

    // SIGTERM: the node hands its leaderships over, stops and exits 0; the others go on.
    let status = cluster.terminate(1);
    assert!(status.success(), "node 1 after SIGTERM: {status}");
    let log = std::fs::read_to_string(&cluster.nodes[0].log).unwrap();
    let stopping = log.rfind("shutting down");
    assert!(
        stopping.is_some() && log.rfind(": stopped") > stopping,
        "{log}"
    );
    cluster.wait_until("a write after node 1 stopped", |c| c.put(3, "last", "v"));
}

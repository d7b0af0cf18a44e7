//! Stand-ins for the node's HTTP admin API, so that the driver is tested end to end over
//! real HTTP and real processes before a real cluster exists.
//!
//! - The store: one in-memory register per key behind one lock (linearizable by
//!   construction, or broken on purpose), which also tracks which fake nodes are alive and
//!   makes up a `/v1/cluster` view whose leaders move away from dead nodes.
//! - `cargo xtask fake-node --config node.toml` (hidden): a process that reads a node config,
//!   binds its admin address, tells the store it is alive, and relays every request to the
//!   store named by `XTASK_FAKE_STORE`. Killing it behaves like killing a node: its requests
//!   in flight are lost, its port refuses connections, and its groups get other leaders.

use anyhow::{Context, Result};
use nodedb_cluster_core::vshard_for_key;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Environment variable naming the store's address, for fake nodes.
pub const FAKE_STORE_ENV: &str = "XTASK_FAKE_STORE";
/// Largest request body the fakes read.
const BODY_BYTES_MAX: usize = 1024 * 1024;
/// A fake node silent for longer than this leads no group.
const ALIVE_TIMEOUT: Duration = Duration::from_millis(500);
/// Interval of a fake node's heartbeats, and how many it sends at most (its lifetime bound).
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
const HEARTBEATS_MAX: u32 = 36_000;
/// Header by which a fake node tells the store on whose behalf it asks.
const NODE_HEADER: &str = "x-fake-node";

/// How the fake store behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// A linearizable register per key.
    Correct,
    /// Acknowledges every fifth put without storing it.
    LosesEveryFifthPut,
}

#[derive(Debug)]
struct Store {
    behaviour: Behaviour,
    values: BTreeMap<String, String>,
    puts: u64,
    index: u64,
    /// Last heartbeat of every fake node ever seen.
    alive: BTreeMap<u64, Instant>,
    groups: u32,
    /// vShard moves asked for; a single register store moves nothing, so each is done at once.
    migrations: Vec<serde_json::Value>,
}

/// One request as the fakes read it.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    body: String,
    node: Option<u64>,
}

/// Starts a store on a free loopback port; it serves until the process ends.
#[cfg(test)]
pub fn start(behaviour: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound address");
    std::thread::spawn(move || serve_store(listener, behaviour));
    addr
}

/// `cargo xtask fake-store --addr A [--lose-writes]`: serves a store on `addr` until killed.
pub fn run_store(addr: SocketAddr, lose_writes: bool) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    eprintln!("fake store listening on {addr}");
    let behaviour = match lose_writes {
        true => Behaviour::LosesEveryFifthPut,
        false => Behaviour::Correct,
    };
    serve_store(listener, behaviour);
    Ok(())
}

/// `cargo xtask fake-node --config C`: relays the admin address of config `C` to the store.
pub fn run_node(config: &Path) -> Result<()> {
    let store: SocketAddr = std::env::var(FAKE_STORE_ENV)
        .with_context(|| format!("{FAKE_STORE_ENV} names no store"))?
        .parse()
        .with_context(|| format!("{FAKE_STORE_ENV} is not an address"))?;
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let table: toml::Table = text.parse().context("parsing the node config")?;
    let node_id = table["node_id"].as_integer().context("node_id")? as u64;
    let groups = table["num_groups"].as_integer().context("num_groups")? as u32;
    let admin: SocketAddr = table["admin_addr"]
        .as_str()
        .context("admin_addr")?
        .parse()
        .context("admin_addr")?;
    let listener = TcpListener::bind(admin).with_context(|| format!("binding {admin}"))?;
    eprintln!("fake node {node_id} serving {admin}, relaying to {store}");
    let agent = fake_agent();
    let heartbeat_agent = agent.clone();
    std::thread::spawn(move || {
        let url = format!("http://{store}/fake/alive/{node_id}/{groups}");
        for _ in 0..HEARTBEATS_MAX {
            let _ = heartbeat_agent.post(&url).send_empty();
            std::thread::sleep(HEARTBEAT_INTERVAL);
        }
    });
    for stream in listener.incoming().flatten() {
        let agent = agent.clone();
        std::thread::spawn(move || serve(stream, |request| relay(&agent, store, node_id, request)));
    }
    Ok(())
}

fn serve_store(listener: TcpListener, behaviour: Behaviour) {
    let store = Arc::new(Mutex::new(Store {
        behaviour,
        values: BTreeMap::new(),
        puts: 0,
        index: 0,
        alive: BTreeMap::new(),
        groups: 1,
        migrations: Vec::new(),
    }));
    for stream in listener.incoming().flatten() {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            serve(stream, |request| {
                store.lock().expect("fake store lock").answer(&request)
            })
        });
    }
}

/// Answers requests on one connection (keep-alive) until the client closes it.
fn serve(stream: TcpStream, mut answer: impl FnMut(Request) -> (u16, String)) {
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader);
    let mut writer = stream;
    while let Some(request) = read_request(&mut reader) {
        let (status, body) = answer(request);
        let response = format!(
            "HTTP/1.1 {status} FAKE\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn relay(agent: &ureq::Agent, store: SocketAddr, node_id: u64, request: Request) -> (u16, String) {
    let forwarded = ureq::http::Request::builder()
        .method(request.method.as_str())
        .uri(format!("http://{store}{}", request.path))
        .header(NODE_HEADER, node_id.to_string())
        .body(request.body.into_bytes());
    let Ok(forwarded) = forwarded else {
        return (400, r#"{"error":{"code":"bad_request"}}"#.to_string());
    };
    match agent.run(forwarded) {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.into_body().read_to_string().unwrap_or_default();
            (status, body)
        }
        Err(_) => (504, r#"{"error":{"code":"outcome_unknown"}}"#.to_string()),
    }
}

fn fake_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .new_agent()
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).ok()? == 0 {
        return None;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut content_length = 0;
    let mut node = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            content_length = value.trim().parse().ok()?;
        }
        if let Some(value) = lower.strip_prefix(&format!("{NODE_HEADER}:")) {
            node = value.trim().parse().ok();
        }
    }
    if content_length > BODY_BYTES_MAX {
        return None;
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).ok()?;
    let body = String::from_utf8_lossy(&body).into_owned();
    Some(Request {
        method,
        path,
        body,
        node,
    })
}

impl Store {
    fn answer(&mut self, request: &Request) -> (u16, String) {
        // One register per key: every read is linearizable, `?consistency=stale` included.
        let path = request.path.split('?').next().unwrap_or_default();
        let key_path = path.strip_prefix("/v1/kv/");
        match (request.method.as_str(), path, key_path) {
            ("POST", _, _) if path.starts_with("/fake/alive/") => self.heartbeat(path),
            ("GET", "/readyz", _) => (200, r#"{"ready":true}"#.to_string()),
            ("GET", "/v1/cluster", _) => (200, self.view(request.node.unwrap_or(1))),
            ("GET", "/v1/migrations", _) => {
                let answer = serde_json::json!({ "migrations": self.migrations });
                (200, answer.to_string())
            }
            ("POST", _, _) if path.starts_with("/v1/vshards/") => {
                self.move_vshard(path, &request.body)
            }
            ("POST", _, Some(rest)) if rest.ends_with("/cas") => {
                let key = rest.trim_end_matches("/cas").to_string();
                self.cas(key, &request.body)
            }
            ("PUT", _, Some(key)) => self.put(key.to_string(), request.body.clone()),
            ("DELETE", _, Some(key)) => {
                self.values.remove(key);
                self.receipt(key)
            }
            ("GET", _, Some(key)) => match self.values.get(key) {
                Some(value) => (200, value.clone()),
                None => not_found(),
            },
            _ => not_found(),
        }
    }

    fn heartbeat(&mut self, path: &str) -> (u16, String) {
        let mut parts = path.trim_start_matches("/fake/alive/").split('/');
        let node = parts.next().and_then(|text| text.parse().ok());
        let groups = parts.next().and_then(|text| text.parse().ok());
        match (node, groups) {
            (Some(node), Some(groups)) => {
                self.alive.insert(node, Instant::now());
                self.groups = self.groups.max(groups);
                (200, "{}".to_string())
            }
            _ => (400, r#"{"error":{"code":"bad_request"}}"#.to_string()),
        }
    }

    /// Every node ever seen is a member; group `g` is led by the `g`-th live node (in id
    /// order, wrapping), so leaders move when a node dies.
    fn view(&self, node_id: u64) -> String {
        let members: Vec<u64> = self.alive.keys().copied().collect();
        let live: Vec<u64> = self
            .alive
            .iter()
            .filter(|(_, seen)| seen.elapsed() < ALIVE_TIMEOUT)
            .map(|(node, _)| *node)
            .collect();
        let nodes: Vec<_> = members
            .iter()
            .map(|id| {
                serde_json::json!({ "id": id, "addr": format!("fake-{id}"),
                    "admin_addr": format!("fake-{id}"), "state": "active" })
            })
            .collect();
        let groups: Vec<_> = (0..=self.groups)
            .map(|group| {
                let leader = (!live.is_empty()).then(|| live[group as usize % live.len()]);
                serde_json::json!({ "id": group, "voters": members, "learners": [],
                    "leader": leader, "term": 1, "commit_index": self.index,
                    "applied_index": self.index, "vshard_count": 0 })
            })
            .collect();
        serde_json::json!({ "cluster_id": "fake", "node_id": node_id, "routing_version": 1,
            "nodes": nodes, "groups": groups })
        .to_string()
    }

    fn put(&mut self, key: String, value: String) -> (u16, String) {
        self.puts += 1;
        let lose = self.behaviour == Behaviour::LosesEveryFifthPut && self.puts.is_multiple_of(5);
        let receipt = self.receipt(&key);
        if !lose {
            self.values.insert(key, value);
        }
        receipt
    }

    fn cas(&mut self, key: String, body: &str) -> (u16, String) {
        let Ok(request) = serde_json::from_str::<serde_json::Value>(body) else {
            return (400, r#"{"error":{"code":"bad_request"}}"#.to_string());
        };
        let expected = request["expected"].as_str().map(str::to_string);
        let new = request["new"].as_str().unwrap_or_default().to_string();
        let current = self.values.get(&key).cloned();
        let swapped = current == expected;
        if swapped {
            self.values.insert(key.clone(), new);
        }
        let current = self.values.get(&key).cloned();
        let answer = serde_json::json!({ "swapped": swapped, "current": current });
        (200, answer.to_string())
    }

    /// `POST /v1/vshards/{id}/move`: recorded as a finished migration (the store holds every
    /// key in one place). Moving to the group that owns the vShard is a 409, as on a node.
    fn move_vshard(&mut self, path: &str, body: &str) -> (u16, String) {
        let vshard = path
            .strip_prefix("/v1/vshards/")
            .and_then(|rest| rest.strip_suffix("/move"))
            .and_then(|id| id.parse::<u16>().ok());
        let body = serde_json::from_str::<serde_json::Value>(body).ok();
        let to_group = body.and_then(|body| body["to_group"].as_u64());
        let (Some(vshard), Some(to_group)) = (vshard, to_group) else {
            return (400, r#"{"error":{"code":"bad_request"}}"#.to_string());
        };
        let from_group = 1 + u64::from(vshard) % u64::from(self.groups.max(1));
        if from_group == to_group {
            return (409, r#"{"error":{"code":"conflict"}}"#.to_string());
        }
        let migration = serde_json::json!({
            "id": self.migrations.len() + 1,
            "vshard": vshard,
            "from_group": from_group,
            "to_group": to_group,
            "phase": "cleaned",
            "bytes_copied": 0,
            "write_pause_ms": 0,
        });
        self.migrations.push(migration.clone());
        (202, migration.to_string())
    }

    /// A receipt naming the group of `key`'s vShard, so failover windows can be measured.
    fn receipt(&mut self, key: &str) -> (u16, String) {
        self.index += 1;
        let vshard = vshard_for_key(key.as_bytes()).0;
        let group = 1 + u32::from(vshard) % self.groups.max(1);
        let receipt = serde_json::json!({ "vshard": vshard, "group": group, "index": self.index });
        (200, receipt.to_string())
    }
}

fn not_found() -> (u16, String) {
    (404, r#"{"error":{"code":"not_found"}}"#.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Api;
    use crate::checks;
    use crate::report::Status;
    use crate::workload::{self, Recorder, WorkloadSpec};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    /// Runs `clients` workload clients against `node` until `ops` operations are recorded
    /// (or 30 s pass), then the final reads and the linearizability check.
    fn run_against(node: SocketAddr, clients: u32, ops: u64) -> (Status, String, Recorder) {
        let spec = WorkloadSpec {
            clients,
            first_key: 0,
            keys: 10,
            seed: 5,
            nodes: vec![node],
        };
        let recorder = Recorder::new(Instant::now());
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for client in 0..u64::from(clients) {
                let (spec, recorder, stop) = (&spec, &recorder, &stop);
                scope.spawn(move || workload::run_client(client, spec, recorder, stop));
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while recorder.counters.snapshot().total() < ops && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            stop.store(true, Ordering::Relaxed);
        });
        let api = Api::new(Duration::from_secs(2));
        let keys = workload::key_names(spec.keys);
        let reads = checks::final_reads(&[node], &api, &keys).unwrap();
        let (row, full) = checks::linearizable(&recorder.history(), reads);
        (row.status, full, recorder)
    }

    #[test]
    fn a_correct_store_passes_the_workload_and_the_checks() {
        let node = start(Behaviour::Correct);
        let (status, full, recorder) = run_against(node, 4, 400);
        assert_eq!(status, Status::Pass, "{full}");
        let counts = recorder.counters.snapshot();
        assert!(counts.total() >= 400, "{counts:?}");
        assert_eq!(counts.failed + counts.unknown, 0, "{counts:?}");
        let history = recorder.history();
        let kinds: std::collections::BTreeSet<_> = history
            .operations()
            .iter()
            .map(|op| op.kind.name())
            .collect();
        assert_eq!(
            kinds.len(),
            4,
            "every operation kind is exercised: {kinds:?}"
        );
        let swapped = history.operations().iter().any(|op| {
            matches!(
                &op.outcome,
                nodedb_cluster_core::linearizability::Outcome::Ok(
                    nodedb_cluster_core::linearizability::OpResult::Cas { swapped: true, .. }
                )
            )
        });
        assert!(swapped, "some CAS swaps");
        assert!(
            !recorder.writes().is_empty(),
            "acknowledged writes carry their group"
        );
    }

    #[test]
    fn a_store_that_loses_acknowledged_writes_is_caught() {
        let node = start(Behaviour::LosesEveryFifthPut);
        let (status, full, _) = run_against(node, 4, 400);
        assert_eq!(status, Status::Fail);
        assert!(full.contains("NOT linearizable"), "{full}");
    }
}

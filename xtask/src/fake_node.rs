//! A test stand-in for a node's HTTP admin API: a single in-memory register per key behind
//! one lock (so correct by construction), optionally broken on purpose, so that the
//! workload, the recording and the end checks are tested end to end over real HTTP without
//! a cluster.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// Largest request body the fake reads.
const BODY_BYTES_MAX: usize = 1024 * 1024;

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
}

/// Starts a fake node on a free loopback port; it serves until the test process ends.
pub fn start(behaviour: Behaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound address");
    let store = Arc::new(Mutex::new(Store {
        behaviour,
        values: BTreeMap::new(),
        puts: 0,
        index: 0,
    }));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let store = Arc::clone(&store);
            std::thread::spawn(move || serve(stream, &store));
        }
    });
    addr
}

fn serve(stream: TcpStream, store: &Mutex<Store>) {
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader);
    let mut writer = stream;
    // Keep-alive: answer requests on this connection until the client closes it.
    while let Some((method, path, body)) = read_request(&mut reader) {
        let (status, body) = {
            let mut store = store.lock().expect("fake store lock");
            store.answer(&method, &path, &body)
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, String, String)> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).ok()? == 0 {
        return None;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = value.trim().parse().ok()?;
        }
    }
    if content_length > BODY_BYTES_MAX {
        return None;
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).ok()?;
    Some((method, path, String::from_utf8_lossy(&body).into_owned()))
}

impl Store {
    fn answer(&mut self, method: &str, path: &str, body: &str) -> (&'static str, String) {
        let key_path = path.strip_prefix("/v1/kv/");
        match (method, path, key_path) {
            ("GET", "/readyz", _) => ("200 OK", r#"{"ready":true}"#.to_string()),
            ("GET", "/v1/cluster", _) => ("200 OK", CLUSTER_VIEW.to_string()),
            ("POST", _, Some(rest)) if rest.ends_with("/cas") => {
                let key = rest.trim_end_matches("/cas").to_string();
                self.cas(key, body)
            }
            ("PUT", _, Some(key)) => self.put(key.to_string(), body.to_string()),
            ("DELETE", _, Some(key)) => {
                self.values.remove(key);
                self.receipt()
            }
            ("GET", _, Some(key)) => match self.values.get(key) {
                Some(value) => ("200 OK", value.clone()),
                None => (
                    "404 Not Found",
                    r#"{"error":{"code":"not_found"}}"#.to_string(),
                ),
            },
            _ => (
                "404 Not Found",
                r#"{"error":{"code":"not_found"}}"#.to_string(),
            ),
        }
    }

    fn put(&mut self, key: String, value: String) -> (&'static str, String) {
        self.puts += 1;
        let lose = self.behaviour == Behaviour::LosesEveryFifthPut && self.puts.is_multiple_of(5);
        if !lose {
            self.values.insert(key, value);
        }
        self.receipt()
    }

    fn cas(&mut self, key: String, body: &str) -> (&'static str, String) {
        let Ok(request) = serde_json::from_str::<serde_json::Value>(body) else {
            return (
                "400 Bad Request",
                r#"{"error":{"code":"bad_request"}}"#.to_string(),
            );
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
        ("200 OK", answer.to_string())
    }

    fn receipt(&mut self) -> (&'static str, String) {
        self.index += 1;
        let group = 1 + self.index % 2;
        let receipt = serde_json::json!({ "vshard": 0, "group": group, "index": self.index });
        ("200 OK", receipt.to_string())
    }
}

const CLUSTER_VIEW: &str = r#"{"cluster_id":"fake","node_id":1,"routing_version":1,
"nodes":[{"id":1,"addr":"127.0.0.1:1","admin_addr":"127.0.0.1:2","state":"active"}],
"groups":[{"id":0,"voters":[1],"learners":[],"leader":1,"term":1,"commit_index":1,
"applied_index":1,"vshard_count":0}]}"#;

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

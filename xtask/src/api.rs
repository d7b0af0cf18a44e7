//! A blocking client of the node's HTTP admin API, as the outside contract describes it, and
//! the one place that turns status codes and transport errors into "done", "definitely
//! failed" or "outcome unknown" for the history.

use anyhow::{Context, Result, bail};
use nodedb_cluster_core::VShardId;
use serde::{Deserialize, Serialize};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

/// Largest response body the driver reads (the node's value limit is 1 MiB).
const RESPONSE_BYTES_MAX: u64 = 2 * 1024 * 1024;

/// How a request ended, as far as the history is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<T> {
    /// The node answered and the operation took effect with this result.
    Ok(T),
    /// The node answered that the operation did not take effect.
    Failed(String),
    /// The node refused the connection: nothing was sent, so the operation definitely did not
    /// take effect, and the node is probably down.
    Refused(String),
    /// The operation may or may not take effect.
    Unknown(String),
}

impl<T> Reply<T> {
    /// The same reply with the success value mapped.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Reply<U> {
        match self {
            Reply::Ok(value) => Reply::Ok(f(value)),
            Reply::Failed(why) => Reply::Failed(why),
            Reply::Refused(why) => Reply::Refused(why),
            Reply::Unknown(why) => Reply::Unknown(why),
        }
    }
}

/// The answer to a successful put or delete.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct WriteReceipt {
    pub vshard: u16,
    pub group: u32,
    pub index: u64,
}

/// The answer to a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CasReply {
    pub swapped: bool,
    pub current: Option<String>,
}

/// `GET /v1/cluster`. Fields the driver does not know are ignored, so a newer node still
/// parses.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct ClusterView {
    pub cluster_id: String,
    pub node_id: u64,
    pub routing_version: u64,
    pub nodes: Vec<NodeView>,
    pub groups: Vec<GroupView>,
}

/// One migration of `GET /v1/migrations`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct MigrationView {
    pub id: u64,
    pub vshard: u16,
    pub from_group: u32,
    pub to_group: u32,
    pub phase: String,
    pub bytes_copied: u64,
    pub write_pause_ms: Option<u64>,
}

/// One node of [`ClusterView`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
pub struct NodeView {
    pub id: u64,
    pub addr: String,
    pub admin_addr: String,
    pub state: String,
}

/// One group of [`ClusterView`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct GroupView {
    pub id: u32,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub leader: Option<u64>,
    /// The next three describe the answering node's replica: `None` where it hosts none
    /// (a cluster larger than the replication factor).
    pub term: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub vshard_count: u32,
    /// A hash of the replica's applied state, if the node exposes one.
    #[serde(default)]
    pub state_hash: Option<String>,
}

/// A client of one cluster's admin API with a per-request deadline.
#[derive(Clone, Debug)]
pub struct Api {
    agent: ureq::Agent,
}

impl Api {
    /// A client whose every request (connect, send, receive) ends within `timeout`.
    pub fn new(timeout: Duration) -> Api {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_idle_connections_per_host(4)
            .build();
        Api {
            agent: config.new_agent(),
        }
    }

    /// `PUT /v1/kv/{key}`.
    pub fn put(&self, node: SocketAddr, key: &str, value: &[u8]) -> Reply<Option<WriteReceipt>> {
        let result = self.agent.put(kv_url(node, key, "")).send(value);
        write_reply(result, |body| serde_json::from_slice(body).ok())
    }

    /// `DELETE /v1/kv/{key}`.
    pub fn delete(&self, node: SocketAddr, key: &str) -> Reply<Option<WriteReceipt>> {
        let result = self.agent.delete(kv_url(node, key, "")).call();
        write_reply(result, |body| serde_json::from_slice(body).ok())
    }

    /// `POST /v1/kv/{key}/cas`. A 200 whose body does not parse leaves the outcome unknown.
    pub fn cas(
        &self,
        node: SocketAddr,
        key: &str,
        expected: Option<&str>,
        new: &str,
    ) -> Reply<CasReply> {
        let body = serde_json::json!({ "expected": expected, "new": new }).to_string();
        let result = self
            .agent
            .post(kv_url(node, key, "/cas"))
            .header("content-type", "application/json")
            .send(body.as_bytes());
        match write_reply(result, |body| serde_json::from_slice::<CasReply>(body).ok()) {
            Reply::Ok(Some(reply)) => Reply::Ok(reply),
            Reply::Ok(None) => Reply::Unknown("200 with an unreadable CAS body".to_string()),
            other => other.map(|_| unreachable!("`Ok` is handled above")),
        }
    }

    /// `GET /v1/kv/{key}` (linearizable): the value, or `None` when absent.
    pub fn get(&self, node: SocketAddr, key: &str) -> Reply<Option<Vec<u8>>> {
        self.read(kv_url(node, key, ""))
    }

    /// `GET /v1/kv/{key}?consistency=stale`: the value in the answering node's replica, or
    /// `None` when absent there.
    pub fn get_stale(&self, node: SocketAddr, key: &str) -> Reply<Option<Vec<u8>>> {
        self.read(kv_url(node, key, "?consistency=stale"))
    }

    /// `POST url` with a JSON body, for services other than the node (etcd's gateway):
    /// a 2xx is done, like a write to the node.
    pub fn post_json(&self, url: &str, body: &str) -> Reply<()> {
        let result = self
            .agent
            .post(url)
            .content_type("application/json")
            .send(body);
        write_reply(result, |_| ())
    }

    /// The body of `GET url` when it answers 200.
    pub fn get_text(&self, url: &str) -> Option<String> {
        let response = self.agent.get(url).call().ok()?;
        if response.status().as_u16() != 200 {
            return None;
        }
        read_body(response)
            .ok()
            .map(|body| String::from_utf8_lossy(&body).into_owned())
    }

    fn read(&self, url: String) -> Reply<Option<Vec<u8>>> {
        let response = match self.agent.get(url).call() {
            Ok(response) => response,
            Err(error) => return classify_transport_error(&error).map(|()| None),
        };
        let status = response.status().as_u16();
        match (status, read_body(response)) {
            (200, Ok(body)) => Reply::Ok(Some(body)),
            (404, _) => Reply::Ok(None),
            (_, Err(error)) => Reply::Unknown(format!("{status}, body unreadable: {error}")),
            (status, Ok(body)) => Reply::Failed(status_text(status, &body)),
        }
    }

    /// `GET /readyz`: `Ok` when ready, otherwise what the node answered.
    pub fn readyz(&self, node: SocketAddr) -> Result<(), String> {
        let url = format!("http://{node}/readyz");
        match self.agent.get(&url).call() {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = read_body(response).unwrap_or_default();
                if status == 200 {
                    Ok(())
                } else {
                    Err(status_text(status, &body))
                }
            }
            Err(error) => Err(format!("no answer: {error}")),
        }
    }

    /// `POST /v1/vshards/{vshard}/move`: the migration begun (or already in flight).
    pub fn move_vshard(
        &self,
        node: SocketAddr,
        vshard: VShardId,
        to_group: u32,
    ) -> Result<MigrationView> {
        let url = format!("http://{node}/v1/vshards/{}/move", vshard.0);
        let body = serde_json::json!({ "to_group": to_group }).to_string();
        let response = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body.as_bytes())
            .with_context(|| format!("POST {url}"))?;
        json_answer(&url, response)
    }

    /// `POST /v1/nodes/{node_id}/decommission`: the node is Draining (or already further).
    pub fn decommission(&self, node: SocketAddr, node_id: u64) -> Result<()> {
        let url = format!("http://{node}/v1/nodes/{node_id}/decommission");
        let response = self
            .agent
            .post(&url)
            .send_empty()
            .with_context(|| format!("POST {url}"))?;
        json_answer::<serde_json::Value>(&url, response).map(drop)
    }

    /// `GET /v1/migrations`.
    pub fn migrations(&self, node: SocketAddr) -> Result<Vec<MigrationView>> {
        #[derive(Deserialize)]
        struct Migrations {
            migrations: Vec<MigrationView>,
        }
        let url = format!("http://{node}/v1/migrations");
        let response = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        json_answer::<Migrations>(&url, response).map(|answer| answer.migrations)
    }

    /// `GET /v1/cluster`.
    pub fn cluster(&self, node: SocketAddr) -> Result<ClusterView> {
        let url = format!("http://{node}/v1/cluster");
        let response = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let body = read_body(response).with_context(|| format!("reading GET {url}"))?;
        if status != 200 {
            bail!("GET {url}: {}", status_text(status, &body));
        }
        serde_json::from_slice(&body).with_context(|| format!("parsing GET {url}"))
    }
}

/// The JSON body of a 2xx answer, or the status and error text.
fn json_answer<T: serde::de::DeserializeOwned>(
    url: &str,
    response: ureq::http::Response<ureq::Body>,
) -> Result<T> {
    let status = response.status().as_u16();
    let body = read_body(response).with_context(|| format!("reading {url}"))?;
    if !(200..300).contains(&status) {
        bail!("{url}: {}", status_text(status, &body));
    }
    serde_json::from_slice(&body).with_context(|| format!("parsing {url}"))
}

/// What a write's status code says about whether it took effect.
pub fn classify_write_status(status: u16) -> Reply<()> {
    match status {
        200..=299 => Reply::Ok(()),
        // Refused before anything was proposed: bad input, absent, unauthorized, or
        // unavailable (no leader, no quorum, not ready; the contract promises "not applied").
        400 | 401 | 403 | 404 | 503 => Reply::Failed(format!("status {status}")),
        // 504 is "outcome unknown" by contract; anything else (409, 500, ...) is not a
        // promise that nothing happened, so it is unknown too.
        _ => Reply::Unknown(format!("status {status}")),
    }
}

/// What a transport error says about whether a write took effect: only a refused connection
/// proves the request never reached a node.
pub fn classify_transport_error(error: &ureq::Error) -> Reply<()> {
    match error {
        ureq::Error::Io(io) if io.kind() == ErrorKind::ConnectionRefused => {
            Reply::Refused(format!("connection refused: {io}"))
        }
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => Reply::Failed(error.to_string()),
        _ => Reply::Unknown(error.to_string()),
    }
}

/// The URL of `key` on `node`. Keys are percent-encoded outside the unreserved set.
pub fn kv_url(node: SocketAddr, key: &str, suffix: &str) -> String {
    let mut encoded = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("http://{node}/v1/kv/{encoded}{suffix}")
}

fn write_reply<T>(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    parse: impl FnOnce(&[u8]) -> T,
) -> Reply<T> {
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            return match classify_transport_error(&error) {
                Reply::Ok(()) => Reply::Unknown(error.to_string()),
                other => other.map(|()| unreachable!("`Ok` is handled above")),
            };
        }
    };
    let status = response.status().as_u16();
    let body = match read_body(response) {
        Ok(body) => body,
        // The status line arrived, so a success or a refusal was decided; a 2xx whose body
        // was lost still took effect, but its details are unknown.
        Err(error) => return Reply::Unknown(format!("{status}, body unreadable: {error}")),
    };
    match classify_write_status(status) {
        Reply::Ok(()) => Reply::Ok(parse(&body)),
        Reply::Failed(_) | Reply::Refused(_) => Reply::Failed(status_text(status, &body)),
        Reply::Unknown(_) => Reply::Unknown(status_text(status, &body)),
    }
}

fn read_body(response: ureq::http::Response<ureq::Body>) -> Result<Vec<u8>, ureq::Error> {
    response
        .into_body()
        .into_with_config()
        .limit(RESPONSE_BYTES_MAX)
        .read_to_vec()
}

/// `503: {"error":...}`, the body cut to a readable length.
fn status_text(status: u16, body: &[u8]) -> String {
    const SHOWN_BYTES_MAX: usize = 300;
    let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN_BYTES_MAX)]);
    format!("{status}: {}", text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    #[test]
    fn write_statuses_separate_failed_from_unknown() {
        assert_eq!(classify_write_status(200), Reply::Ok(()));
        for failed in [400, 404, 503] {
            assert!(
                matches!(classify_write_status(failed), Reply::Failed(_)),
                "{failed}"
            );
        }
        for unknown in [504, 500, 409, 502] {
            assert!(
                matches!(classify_write_status(unknown), Reply::Unknown(_)),
                "{unknown}"
            );
        }
    }

    #[test]
    fn only_a_refused_connection_is_a_definite_failure() {
        let refused = ureq::Error::Io(std::io::Error::from(ErrorKind::ConnectionRefused));
        assert!(matches!(
            classify_transport_error(&refused),
            Reply::Refused(_)
        ));
        let reset = ureq::Error::Io(std::io::Error::from(ErrorKind::ConnectionReset));
        assert!(matches!(
            classify_transport_error(&reset),
            Reply::Unknown(_)
        ));
        let timeout = ureq::Error::Timeout(ureq::Timeout::Global);
        assert!(matches!(
            classify_transport_error(&timeout),
            Reply::Unknown(_)
        ));
    }

    #[test]
    fn keys_are_percent_encoded() {
        let node: SocketAddr = "127.0.0.1:9401".parse().unwrap();
        assert_eq!(kv_url(node, "k007", ""), "http://127.0.0.1:9401/v1/kv/k007");
        assert_eq!(
            kv_url(node, "a b/c", "/cas"),
            "http://127.0.0.1:9401/v1/kv/a%20b%2Fc/cas"
        );
    }

    #[test]
    fn cluster_views_parse_and_ignore_unknown_fields() {
        let text = r#"{"cluster_id":"c1","node_id":2,"routing_version":7,"extra":1,
            "nodes":[{"id":1,"addr":"127.0.0.1:1","admin_addr":"127.0.0.1:2","state":"active"}],
            "groups":[{"id":0,"voters":[1,2,3],"learners":[],"leader":1,"term":3,
            "commit_index":10,"applied_index":10,"vshard_count":0},
            {"id":1,"voters":[1],"learners":[2],"leader":null,"term":1,"commit_index":1,
            "applied_index":1,"vshard_count":128,"state_hash":"ab"},
            {"id":2,"voters":[1],"learners":[],"leader":1,"term":null,"commit_index":null,
            "applied_index":null,"vshard_count":128,"state_hash":null}]}"#;
        let view: ClusterView = serde_json::from_str(text).unwrap();
        assert_eq!(view.routing_version, 7);
        assert_eq!(view.groups[0].leader, Some(1));
        assert_eq!(view.groups[1].leader, None);
        assert_eq!(view.groups[0].state_hash, None);
        assert_eq!(view.groups[1].state_hash.as_deref(), Some("ab"));
        assert_eq!(view.groups[1].applied_index, Some(1));
        assert_eq!(
            view.groups[2].applied_index, None,
            "no replica on this node"
        );
    }

    /// Serves one canned HTTP response per connection, `count` times.
    fn canned_server(responses: Vec<&'static str>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for response in responses {
                let (mut stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut content_length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(value) = lower.strip_prefix("content-length:") {
                        content_length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; content_length];
                std::io::Read::read_exact(&mut reader, &mut body).unwrap();
                stream.write_all(response.as_bytes()).unwrap();
            }
        });
        addr
    }

    fn http(status: &str, body: &str) -> &'static str {
        let text = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        Box::leak(text.into_boxed_str())
    }

    #[test]
    fn replies_follow_the_contract_over_real_http() {
        let node = canned_server(vec![
            http("200 OK", r#"{"vshard":5,"group":2,"index":9}"#),
            http(
                "503 Service Unavailable",
                r#"{"error":{"code":"unavailable"}}"#,
            ),
            http(
                "504 Gateway Timeout",
                r#"{"error":{"code":"outcome_unknown"}}"#,
            ),
            http("200 OK", r#"{"swapped":false,"current":"v1"}"#),
            http("404 Not Found", r#"{"error":{"code":"not_found"}}"#),
            http("200 OK", "value"),
        ]);
        let api = Api::new(Duration::from_secs(5));
        let receipt = WriteReceipt {
            vshard: 5,
            group: 2,
            index: 9,
        };
        assert_eq!(api.put(node, "k", b"v"), Reply::Ok(Some(receipt)));
        assert!(matches!(api.put(node, "k", b"v"), Reply::Failed(text) if text.contains("503")));
        assert!(matches!(api.delete(node, "k"), Reply::Unknown(text) if text.contains("504")));
        let cas = CasReply {
            swapped: false,
            current: Some("v1".to_string()),
        };
        assert_eq!(api.cas(node, "k", None, "v2"), Reply::Ok(cas));
        assert_eq!(api.get(node, "k"), Reply::Ok(None));
        assert_eq!(api.get(node, "k"), Reply::Ok(Some(b"value".to_vec())));
    }

    #[test]
    fn a_closed_port_is_a_definite_failure_for_writes() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let api = Api::new(Duration::from_secs(2));
        assert!(matches!(api.put(addr, "k", b"v"), Reply::Refused(_)));
        assert!(matches!(api.get(addr, "k"), Reply::Refused(_)));
        assert!(matches!(api.cas(addr, "k", None, "v"), Reply::Refused(_)));
        assert!(api.readyz(addr).unwrap_err().contains("no answer"));
    }
}

//! The HTTP admin API's outside contract, served for real on loopback over an in-memory
//! service: routes, JSON shapes, status codes (400/404/503/504), token auth and input limits.

use nodedb_cluster_core::{GroupId, NodeId, VShardId, vshard_for_key};
use nodedb_cluster_node::http::{ApiState, serve};
use nodedb_cluster_node::service::{
    CasOutcome, ClusterService, ClusterView, KEY_BYTES_MAX, MigrationView, ReadConsistency,
    ServiceError, ServiceResult, VALUE_BYTES_MAX, WriteReceipt,
};
use nodedb_cluster_transport::BoxFuture;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Keys with these prefixes make the fake answer with the matching failure.
const UNAVAILABLE_PREFIX: &str = "unavailable-";
const TIMEOUT_PREFIX: &str = "timeout-";

#[derive(Default)]
struct FakeService {
    ready: AtomicBool,
    data: Mutex<BTreeMap<String, Vec<u8>>>,
    index: AtomicU64,
}

impl FakeService {
    fn failure(key: &str) -> Option<ServiceError> {
        if key.starts_with(UNAVAILABLE_PREFIX) {
            Some(ServiceError::Unavailable {
                message: "no leader for group 3".to_string(),
                retry_after_secs: 1,
            })
        } else if key.starts_with(TIMEOUT_PREFIX) {
            Some(ServiceError::OutcomeUnknown(
                "deadline passed after proposing".to_string(),
            ))
        } else {
            None
        }
    }

    fn receipt(&self, key: &str) -> WriteReceipt {
        WriteReceipt {
            vshard: vshard_for_key(key.as_bytes()).0,
            group: 1,
            index: self.index.fetch_add(1, Ordering::SeqCst) + 1,
        }
    }
}

impl ClusterService for FakeService {
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn cluster(&self) -> BoxFuture<'_, ServiceResult<ClusterView>> {
        Box::pin(async {
            Ok(ClusterView {
                cluster_id: "test-cluster".to_string(),
                node_id: 1,
                routing_version: 7,
                nodes: Vec::new(),
                groups: Vec::new(),
            })
        })
    }

    fn kv_put(&self, key: String, value: Vec<u8>) -> BoxFuture<'_, ServiceResult<WriteReceipt>> {
        Box::pin(async move {
            if let Some(error) = FakeService::failure(&key) {
                return Err(error);
            }
            let receipt = self.receipt(&key);
            self.data.lock().unwrap().insert(key, value);
            Ok(receipt)
        })
    }

    fn kv_get(
        &self,
        key: String,
        consistency: ReadConsistency,
    ) -> BoxFuture<'_, ServiceResult<Option<Vec<u8>>>> {
        Box::pin(async move {
            if consistency == ReadConsistency::Linearizable
                && let Some(error) = FakeService::failure(&key)
            {
                return Err(error);
            }
            Ok(self.data.lock().unwrap().get(&key).cloned())
        })
    }

    fn kv_delete(&self, key: String) -> BoxFuture<'_, ServiceResult<WriteReceipt>> {
        Box::pin(async move {
            let receipt = self.receipt(&key);
            self.data.lock().unwrap().remove(&key);
            Ok(receipt)
        })
    }

    fn kv_cas(
        &self,
        key: String,
        expected: Option<String>,
        new: String,
    ) -> BoxFuture<'_, ServiceResult<CasOutcome>> {
        Box::pin(async move {
            let mut data = self.data.lock().unwrap();
            let current = data
                .get(&key)
                .map(|value| String::from_utf8_lossy(value).into_owned());
            if current == expected {
                data.insert(key, new.clone().into_bytes());
                Ok(CasOutcome {
                    swapped: true,
                    current: Some(new),
                })
            } else {
                Ok(CasOutcome {
                    swapped: false,
                    current,
                })
            }
        })
    }

    fn move_vshard(
        &self,
        vshard: VShardId,
        to_group: GroupId,
    ) -> BoxFuture<'_, ServiceResult<MigrationView>> {
        Box::pin(async move {
            if to_group.0 == 0 {
                return Err(ServiceError::BadRequest(
                    "group 0 holds no vShards".to_string(),
                ));
            }
            Ok(MigrationView {
                id: 1,
                vshard: vshard.0,
                from_group: 1,
                to_group: to_group.0,
                phase: "planned".to_string(),
                bytes_copied: 0,
                write_pause_ms: None,
            })
        })
    }

    fn migrations(&self) -> BoxFuture<'_, ServiceResult<Vec<MigrationView>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn decommission(&self, node: NodeId) -> BoxFuture<'_, ServiceResult<()>> {
        Box::pin(async move {
            match node.0 {
                1..=3 => Ok(()),
                _ => Err(ServiceError::NotFound(format!("{node} is not a member"))),
            }
        })
    }

    fn rebalance(&self) -> BoxFuture<'_, ServiceResult<Vec<MigrationView>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A served API and a client for it. The runtime lives as long as the fixture.
struct Fixture {
    address: SocketAddr,
    service: Arc<FakeService>,
    agent: ureq::Agent,
    _runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn start(token: Option<&str>) -> Fixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let service = Arc::new(FakeService::default());
        service.ready.store(true, Ordering::SeqCst);
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("nodedb_test_marker_total").increment(3);
        });
        let state = ApiState {
            service: service.clone(),
            token: token.map(Arc::from),
            metrics: recorder.handle(),
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        runtime.spawn(serve(listener, state, std::future::pending()));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Fixture {
            address,
            service,
            agent,
            _runtime: runtime,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn send(&self, method: &str, path: &str, body: &[u8], token: Option<&str>) -> Answer {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("content-type", "application/json");
        let request = match token {
            Some(token) => request.header("authorization", format!("Bearer {token}")),
            None => request,
        };
        let mut response = self
            .agent
            .run(request.body(body.to_vec()).unwrap())
            .unwrap();
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

    fn get(&self, path: &str) -> Answer {
        self.send("GET", path, b"", None)
    }
}

struct Answer {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<String>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap().to_string()
    }
}

#[test]
fn health_and_readiness() {
    let fixture = Fixture::start(None);
    assert_eq!(fixture.get("/healthz").status, 200);
    assert_eq!(fixture.get("/readyz").status, 200);
    fixture.service.ready.store(false, Ordering::SeqCst);
    let answer = fixture.get("/readyz");
    assert_eq!(answer.status, 503);
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    assert_eq!(answer.error_code(), "unavailable");
    assert_eq!(
        fixture.get("/healthz").status,
        200,
        "alive even when not ready"
    );
}

#[test]
fn put_get_delete_round_trip() {
    let fixture = Fixture::start(None);
    let answer = fixture.send("PUT", "/v1/kv/alpha", b"\x00\x01binary", None);
    assert_eq!(answer.status, 200);
    let receipt = answer.json();
    assert_eq!(receipt["vshard"], json!(vshard_for_key(b"alpha").0));
    assert_eq!(receipt["group"], json!(1));
    assert!(receipt["index"].as_u64().unwrap() >= 1);

    let answer = fixture.get("/v1/kv/alpha");
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (200, &b"\x00\x01binary"[..])
    );
    let answer = fixture.get("/v1/kv/alpha?consistency=stale");
    assert_eq!(answer.status, 200);

    assert_eq!(
        fixture.send("DELETE", "/v1/kv/alpha", b"", None).status,
        200
    );
    let answer = fixture.get("/v1/kv/alpha");
    assert_eq!(
        (answer.status, answer.error_code()),
        (404, "not_found".to_string())
    );
}

#[test]
fn percent_encoded_keys_are_decoded() {
    let fixture = Fixture::start(None);
    assert_eq!(
        fixture.send("PUT", "/v1/kv/a%2Fb%20c", b"v", None).status,
        200
    );
    assert!(fixture.service.data.lock().unwrap().contains_key("a/b c"));
}

#[test]
fn compare_and_swap() {
    let fixture = Fixture::start(None);
    let cas = |body: Value| fixture.send("POST", "/v1/kv/k/cas", body.to_string().as_bytes(), None);
    let answer = cas(json!({ "expected": null, "new": "one" }));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), json!({ "swapped": true, "current": "one" }));
    let answer = cas(json!({ "expected": "zero", "new": "two" }));
    assert_eq!(answer.json(), json!({ "swapped": false, "current": "one" }));
    let answer = cas(json!({ "expected": "one", "new": "two" }));
    assert_eq!(answer.json(), json!({ "swapped": true, "current": "two" }));
}

#[test]
fn unavailable_and_unknown_outcomes_are_distinct() {
    let fixture = Fixture::start(None);
    let answer = fixture.send("PUT", &format!("/v1/kv/{UNAVAILABLE_PREFIX}x"), b"v", None);
    assert_eq!(
        (answer.status, answer.error_code()),
        (503, "unavailable".to_string())
    );
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    let answer = fixture.send("PUT", &format!("/v1/kv/{TIMEOUT_PREFIX}x"), b"v", None);
    assert_eq!(
        (answer.status, answer.error_code()),
        (504, "outcome_unknown".to_string())
    );
    assert!(answer.retry_after.is_none());
    assert_eq!(
        fixture.get(&format!("/v1/kv/{TIMEOUT_PREFIX}x")).status,
        504
    );
    assert_eq!(
        fixture
            .get(&format!("/v1/kv/{TIMEOUT_PREFIX}x?consistency=stale"))
            .status,
        404,
        "a stale read is served locally"
    );
}

#[test]
fn malformed_input_is_400_and_the_node_keeps_serving() {
    let fixture = Fixture::start(None);
    let oversize_key = "k".repeat(KEY_BYTES_MAX + 1);
    let oversize_value = vec![b'v'; VALUE_BYTES_MAX + 1];
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        ("PUT", format!("/v1/kv/{oversize_key}"), b"v".to_vec()),
        ("PUT", "/v1/kv/big".to_string(), oversize_value),
        (
            "GET",
            "/v1/kv/k?consistency=eventual".to_string(),
            Vec::new(),
        ),
        ("POST", "/v1/kv/k/cas".to_string(), b"{not json".to_vec()),
        (
            "POST",
            "/v1/kv/k/cas".to_string(),
            br#"{"expected":null}"#.to_vec(),
        ),
        (
            "POST",
            "/v1/kv/k/cas".to_string(),
            br#"{"expected":1,"new":"x"}"#.to_vec(),
        ),
        (
            "POST",
            "/v1/kv/k/cas".to_string(),
            br#"{"new":"x","extra":true}"#.to_vec(),
        ),
        (
            "POST",
            "/v1/vshards/1024/move".to_string(),
            br#"{"to_group":1}"#.to_vec(),
        ),
        (
            "POST",
            "/v1/vshards/abc/move".to_string(),
            br#"{"to_group":1}"#.to_vec(),
        ),
        (
            "POST",
            "/v1/vshards/3/move".to_string(),
            br#"{"to_group":"x"}"#.to_vec(),
        ),
        (
            "POST",
            "/v1/vshards/3/move".to_string(),
            br#"{"to_group":0}"#.to_vec(),
        ),
        ("POST", "/v1/nodes/0/decommission".to_string(), Vec::new()),
        ("POST", "/v1/nodes/-4/decommission".to_string(), Vec::new()),
    ];
    for (method, path, body) in cases {
        let answer = fixture.send(method, &path, &body, None);
        assert_eq!(
            answer.status,
            400,
            "{method} {}",
            &path[..path.len().min(60)]
        );
        assert_eq!(answer.error_code(), "bad_request");
        assert!(
            !answer.json()["error"]["message"]
                .as_str()
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(fixture.send("PUT", "/v1/kv/after", b"v", None).status, 200);
}

#[test]
fn a_value_at_the_limit_is_accepted() {
    let fixture = Fixture::start(None);
    let value = vec![b'v'; VALUE_BYTES_MAX];
    assert_eq!(fixture.send("PUT", "/v1/kv/big", &value, None).status, 200);
    assert_eq!(fixture.get("/v1/kv/big").body.len(), VALUE_BYTES_MAX);
}

#[test]
fn unknown_paths_are_json_404() {
    let fixture = Fixture::start(None);
    let answer = fixture.get("/v2/nothing");
    assert_eq!(
        (answer.status, answer.error_code()),
        (404, "not_found".to_string())
    );
}

#[test]
fn admin_verbs() {
    let fixture = Fixture::start(None);
    let answer = fixture.send("POST", "/v1/vshards/5/move", br#"{"to_group":2}"#, None);
    assert_eq!(answer.status, 202);
    assert_eq!(answer.json()["vshard"], json!(5));
    assert_eq!(answer.json()["to_group"], json!(2));
    assert_eq!(
        fixture.get("/v1/migrations").json(),
        json!({ "migrations": [] })
    );
    assert_eq!(
        fixture
            .send("POST", "/v1/nodes/2/decommission", b"", None)
            .status,
        202
    );
    assert_eq!(
        fixture
            .send("POST", "/v1/nodes/9/decommission", b"", None)
            .status,
        404
    );
    assert_eq!(fixture.send("POST", "/v1/rebalance", b"", None).status, 202);
    let cluster = fixture.get("/v1/cluster").json();
    assert_eq!(cluster["routing_version"], json!(7));
    assert_eq!(cluster["cluster_id"], json!("test-cluster"));
}

#[test]
fn token_guards_everything_but_healthz() {
    let fixture = Fixture::start(Some("s3cret"));
    assert_eq!(fixture.get("/healthz").status, 200);
    for path in [
        "/readyz",
        "/metrics",
        "/v1/cluster",
        "/v1/kv/k",
        "/v1/migrations",
    ] {
        let answer = fixture.get(path);
        assert_eq!(
            (answer.status, answer.error_code()),
            (401, "unauthorized".to_string()),
            "{path}"
        );
        let answer = fixture.send("GET", path, b"", Some("wrong"));
        assert_eq!(answer.status, 401, "{path} with a wrong token");
    }
    assert_eq!(
        fixture.send("PUT", "/v1/kv/k", b"v", Some("s3cret")).status,
        200
    );
    assert_eq!(
        fixture.send("GET", "/v1/kv/k", b"", Some("s3cret")).status,
        200
    );
}

#[test]
fn metrics_are_prometheus_text() {
    let fixture = Fixture::start(None);
    let answer = fixture.get("/metrics");
    assert_eq!(answer.status, 200);
    let text = std::str::from_utf8(&answer.body).unwrap();
    assert!(text.contains("nodedb_test_marker_total 3"), "{text}");
}

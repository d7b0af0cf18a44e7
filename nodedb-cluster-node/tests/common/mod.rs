//! Test fixtures shared by the API and CLI tests: an in-memory `ClusterService` whose answers
//! are steered by key prefixes, served for real on a loopback port.
#![allow(dead_code)] // each test file uses a different part of the fixture

use nodedb_cluster_core::{GroupId, NodeId, VShardId, vshard_for_key};
use nodedb_cluster_node::http::{ApiState, serve};
use nodedb_cluster_node::service::{
    CasOutcome, ClusterService, ClusterView, MigrationView, ReadConsistency, ServiceError,
    ServiceResult, WriteReceipt,
};
use nodedb_cluster_transport::BoxFuture;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Keys with these prefixes make the fake answer with the matching failure.
pub const UNAVAILABLE_PREFIX: &str = "unavailable-";
pub const TIMEOUT_PREFIX: &str = "timeout-";

#[derive(Default)]
pub struct FakeService {
    pub ready: AtomicBool,
    pub data: Mutex<BTreeMap<String, Vec<u8>>>,
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
pub struct Fixture {
    pub address: SocketAddr,
    pub service: Arc<FakeService>,
    agent: ureq::Agent,
    _runtime: tokio::runtime::Runtime,
}

impl Fixture {
    pub fn start(token: Option<&str>) -> Fixture {
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

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn send(&self, method: &str, path: &str, body: &[u8], token: Option<&str>) -> Answer {
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

    pub fn get(&self, path: &str) -> Answer {
        self.send("GET", path, b"", None)
    }
}

pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<String>,
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
        self.json()["error"]["code"].as_str().unwrap().to_string()
    }
}

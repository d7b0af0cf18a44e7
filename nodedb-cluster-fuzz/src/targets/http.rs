//! `http-kv`: the admin API's request parsing (`nodedb-cluster-node/src/http`): keys in the
//! path, query strings, raw values and the JSON bodies of CAS and vShard moves, sent through
//! the real router to a service that records what reached it. A request the service sees must
//! carry exactly what the client sent; anything else must be refused with a 400 in the
//! contract's error shape.

use crate::{Target, Verdict, hex, outcome};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use nodedb_cluster_core::{GroupId, NodeId, VShardId, vshard_for_key};
use nodedb_cluster_node::http::{ApiState, router};
use nodedb_cluster_node::service::{
    CasOutcome, ClusterService, ClusterView, KEY_BYTES_MAX, MigrationView, ReadConsistency,
    ServiceError, ServiceResult, WriteReceipt,
};
use nodedb_cluster_transport::BoxFuture;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

/// The request shapes an input can take (its first byte picks one).
const SHAPES: u8 = 6;

#[derive(Debug)]
pub struct HttpTarget {
    runtime: tokio::runtime::Runtime,
    service: Arc<RecordingService>,
    state: ApiState,
}

impl HttpTarget {
    pub fn new() -> anyhow::Result<HttpTarget> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let service = Arc::new(RecordingService::default());
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let state = ApiState {
            service: Arc::clone(&service) as Arc<dyn ClusterService>,
            token: None,
            metrics,
        };
        Ok(HttpTarget {
            runtime,
            service,
            state,
        })
    }
}

impl Target for HttpTarget {
    fn name(&self) -> &'static str {
        "http-kv"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        let seed = |shape: u8, key: &[u8], body: &[u8]| {
            let mut bytes = vec![shape, key.len() as u8];
            bytes.extend_from_slice(key);
            bytes.extend_from_slice(body);
            bytes
        };
        vec![
            seed(0, b"k", br#"{"expected": null, "new": "one"}"#),
            seed(0, b"user:1", br#"{"expected":"one","new":"two \u00e9\n"}"#),
            seed(0, "clé".as_bytes(), br#"{"new":"x"}"#),
            seed(1, b"a/b c", b"\x00\x01binary"),
            seed(2, b"k", b"consistency=stale"),
            seed(3, b"1023", br#"{"to_group": 2}"#),
            seed(4, b"k", b""),
            seed(5, b"3", b""),
        ]
    }

    fn check(&mut self, input: &[u8]) -> Verdict {
        let Some((&shape, rest)) = input.split_first() else {
            return Ok(outcome("empty"));
        };
        let Some((&key_len, rest)) = rest.split_first() else {
            return Ok(outcome("no key"));
        };
        let key_len = usize::from(key_len).min(rest.len());
        let (key, body) = rest.split_at(key_len);
        let request = build_request(shape % SHAPES, key, body);
        *self.service.seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let router = router(self.state.clone());
        let (status, response) = self.runtime.block_on(async {
            let response = router
                .oneshot(request)
                .await
                .unwrap_or_else(|never| match never {});
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .map_err(|error| format!("response body unreadable: {error}"))?;
            Ok::<_, String>((status, bytes))
        })?;
        let seen = self
            .service
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let context = || {
            format!(
                "shape {} key {} body {}",
                shape % SHAPES,
                hex(key),
                hex(body)
            )
        };
        if status.is_server_error() {
            return Err(format!("{status} for {}", context()));
        }
        if status.is_client_error() {
            check_error_shape(status, &response)
                .map_err(|error| format!("{error} ({})", context()))?;
            if seen.is_some() {
                return Err(format!(
                    "{status} but the service was called: {seen:?} ({})",
                    context()
                ));
            }
            return Ok(outcome(&format!("{} {status}", shape % SHAPES)));
        }
        let seen =
            seen.ok_or_else(|| format!("{status} without a service call ({})", context()))?;
        check_seen(shape % SHAPES, key, body, &seen)
            .map_err(|error| format!("{error} ({})", context()))?;
        Ok(outcome(&format!("{} {status}", shape % SHAPES)))
    }
}

/// The request of `shape` with `key` percent-encoded into the path.
fn build_request(shape: u8, key: &[u8], body: &[u8]) -> Request<Body> {
    let key = percent_encode(key);
    let (method, uri) = match shape {
        0 => (Method::POST, format!("/v1/kv/{key}/cas")),
        1 => (Method::PUT, format!("/v1/kv/{key}")),
        2 => (
            Method::GET,
            format!("/v1/kv/{key}?{}", percent_encode_query(body)),
        ),
        3 => (Method::POST, format!("/v1/vshards/{key}/move")),
        4 => (Method::DELETE, format!("/v1/kv/{key}")),
        _ => (Method::POST, format!("/v1/nodes/{key}/decommission")),
    };
    let body = if shape == 2 {
        Vec::new()
    } else {
        body.to_vec()
    };
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body))
        .unwrap_or_else(|error| panic!("a percent-encoded request must build: {error}"))
}

/// What the service must have received for a request it accepted.
fn check_seen(shape: u8, key: &[u8], body: &[u8], seen: &Call) -> Result<(), String> {
    let key_text = || -> Result<&str, String> {
        let text = std::str::from_utf8(key).map_err(|_| "a key that is not UTF-8 was accepted")?;
        if text.is_empty() || text.len() > KEY_BYTES_MAX {
            return Err(format!("a key of {} bytes was accepted", text.len()));
        }
        Ok(text)
    };
    match (shape, seen) {
        (
            0,
            Call::Cas {
                key: got,
                expected,
                new,
            },
        ) => {
            if got != key_text()? {
                return Err(format!("cas reached the service for key {got:?}"));
            }
            let json: Value = serde_json::from_slice(body)
                .map_err(|error| format!("an invalid JSON body was accepted: {error}"))?;
            let object = json
                .as_object()
                .ok_or("a CAS body that is not an object was accepted")?;
            if object
                .keys()
                .any(|name| name != "expected" && name != "new")
            {
                return Err("a CAS body with unknown fields was accepted".into());
            }
            if object.get("new").and_then(Value::as_str) != Some(new.as_str()) {
                return Err(format!(
                    "`new` reached the service as {new:?}, the body says {json}"
                ));
            }
            let sent = object.get("expected").cloned().unwrap_or(Value::Null);
            let received = expected.clone().map(Value::String).unwrap_or(Value::Null);
            if sent != received {
                return Err(format!(
                    "`expected` reached the service as {expected:?}, the body says {json}"
                ));
            }
        }
        (1, Call::Put { key: got, value }) => {
            if got != key_text()? || value != body {
                return Err(format!(
                    "put reached the service as {got:?} = {}",
                    hex(value)
                ));
            }
        }
        (
            2,
            Call::Get {
                key: got,
                consistency,
            },
        ) => {
            if got != key_text()? {
                return Err(format!("the service was asked for key {got:?}"));
            }
            let stale_asked = body.windows(5).any(|window| window == b"stale");
            if *consistency == ReadConsistency::Stale && !stale_asked {
                return Err("a stale read nobody asked for".into());
            }
        }
        (4, Call::Delete { key: got }) => {
            if got != key_text()? {
                return Err(format!("the service was asked to delete key {got:?}"));
            }
        }
        (3, Call::Move { vshard, to_group }) => {
            let id: u16 = key_text()?
                .parse()
                .map_err(|_| "a non-numeric vShard id was accepted")?;
            if *vshard != VShardId(id) {
                return Err(format!(
                    "move reached the service for {vshard:?}, path says {id}"
                ));
            }
            let json: Value = serde_json::from_slice(body)
                .map_err(|error| format!("an invalid JSON body was accepted: {error}"))?;
            if json.get("to_group").and_then(Value::as_u64) != Some(u64::from(to_group.0)) {
                return Err(format!("move to {to_group:?} accepted from {json}"));
            }
        }
        (5, Call::Decommission { node }) => {
            let id: u64 = key_text()?
                .parse()
                .map_err(|_| "a non-numeric node id was accepted")?;
            if *node != NodeId(id) || id == 0 {
                return Err(format!("decommission of {node:?} accepted from path {id}"));
            }
        }
        (shape, call) => {
            return Err(format!(
                "request shape {shape} reached the service as {call:?}"
            ));
        }
    }
    Ok(())
}

/// Errors are `{"error":{"code","message"}}`, both strings.
fn check_error_shape(status: StatusCode, body: &[u8]) -> Result<(), String> {
    let json: Value = serde_json::from_slice(body)
        .map_err(|_| format!("{status} with a body that is not JSON: {}", hex(body)))?;
    let error = json
        .get("error")
        .ok_or_else(|| format!("{status} without `error`: {json}"))?;
    if error.get("code").and_then(Value::as_str).is_none()
        || error.get("message").and_then(Value::as_str).is_none()
    {
        return Err(format!("{status} with a malformed error: {json}"));
    }
    Ok(())
}

/// Every byte but unreserved ASCII as `%XX`: the URI is always valid and the router decodes it.
fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// Like [`percent_encode`] but keeps `=` and `&`, so the query keeps its structure.
fn percent_encode_query(bytes: &[u8]) -> String {
    bytes
        .split(|&byte| byte == b'&')
        .map(|pair| {
            pair.split(|&byte| byte == b'=')
                .map(percent_encode)
                .collect::<Vec<_>>()
                .join("=")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A call that reached the service.
#[derive(Debug, Clone)]
enum Call {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Get {
        key: String,
        consistency: ReadConsistency,
    },
    Delete {
        key: String,
    },
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
    Move {
        vshard: VShardId,
        to_group: GroupId,
    },
    Decommission {
        node: NodeId,
    },
}

/// Answers every call at once and remembers the last one.
#[derive(Debug, Default)]
struct RecordingService {
    seen: Mutex<Option<Call>>,
}

impl RecordingService {
    fn record(&self, call: Call) {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(call);
    }

    fn receipt(key: &str) -> WriteReceipt {
        WriteReceipt {
            vshard: vshard_for_key(key.as_bytes()).0,
            group: 1,
            index: 1,
        }
    }
}

fn ready<T: Send + 'static>(value: ServiceResult<T>) -> BoxFuture<'static, ServiceResult<T>> {
    Box::pin(async move { value })
}

impl ClusterService for RecordingService {
    fn is_ready(&self) -> bool {
        true
    }

    fn cluster(&self) -> BoxFuture<'_, ServiceResult<ClusterView>> {
        ready(Err(ServiceError::NotImplemented("not fuzzed".into())))
    }

    fn kv_put(&self, key: String, value: Vec<u8>) -> BoxFuture<'_, ServiceResult<WriteReceipt>> {
        let receipt = Self::receipt(&key);
        self.record(Call::Put { key, value });
        ready(Ok(receipt))
    }

    fn kv_get(
        &self,
        key: String,
        consistency: ReadConsistency,
    ) -> BoxFuture<'_, ServiceResult<Option<Vec<u8>>>> {
        self.record(Call::Get { key, consistency });
        ready(Ok(Some(b"value".to_vec())))
    }

    fn kv_delete(&self, key: String) -> BoxFuture<'_, ServiceResult<WriteReceipt>> {
        let receipt = Self::receipt(&key);
        self.record(Call::Delete { key });
        ready(Ok(receipt))
    }

    fn kv_cas(
        &self,
        key: String,
        expected: Option<String>,
        new: String,
    ) -> BoxFuture<'_, ServiceResult<CasOutcome>> {
        let answer = CasOutcome {
            swapped: true,
            current: Some(new.clone()),
        };
        self.record(Call::Cas { key, expected, new });
        ready(Ok(answer))
    }

    fn move_vshard(
        &self,
        vshard: VShardId,
        to_group: GroupId,
    ) -> BoxFuture<'_, ServiceResult<MigrationView>> {
        self.record(Call::Move { vshard, to_group });
        ready(Ok(MigrationView {
            id: 1,
            vshard: vshard.0,
            from_group: 1,
            to_group: to_group.0,
            phase: "copying".into(),
            bytes_copied: 0,
            write_pause_ms: None,
        }))
    }

    fn migrations(&self) -> BoxFuture<'_, ServiceResult<Vec<MigrationView>>> {
        ready(Ok(Vec::new()))
    }

    fn decommission(&self, node: NodeId) -> BoxFuture<'_, ServiceResult<()>> {
        self.record(Call::Decommission { node });
        ready(Ok(()))
    }

    fn rebalance(&self) -> BoxFuture<'_, ServiceResult<Vec<MigrationView>>> {
        ready(Ok(Vec::new()))
    }
}

//! The HTTP admin API's outside contract, served for real on loopback over an in-memory
//! service: routes, JSON shapes, status codes (400/404/503/504), token auth and input limits.

mod common;

use common::{Fixture, TIMEOUT_PREFIX, UNAVAILABLE_PREFIX};
use nodedb_cluster_core::vshard_for_key;
use nodedb_cluster_node::service::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

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

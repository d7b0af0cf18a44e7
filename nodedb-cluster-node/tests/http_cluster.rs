//! The HTTP admin API of three real nodes (QUIC over loopback, mutual TLS) end to end: writes
//! through every node, linearizable and stale reads through the others, CAS, token auth, bad
//! input, and the status codes of quorum loss: 503 with Retry-After where nothing was applied,
//! 504 where the outcome is unknown. One cluster for the whole story, to keep it short.

mod real_cluster;

use metrics_exporter_prometheus::PrometheusBuilder;
use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_raft::RaftTimings;
use real_cluster::{NUM_GROUPS, RealCluster};

const TOKEN: &str = "cluster-test-token";

#[test]
fn three_real_nodes_serve_the_http_api_and_say_when_the_outcome_is_unknown() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let mut cluster = RealCluster::start(Some(TOKEN), recorder.handle(), long_lease_timings());

    token_is_required(&cluster);
    writes_through_every_node_are_read_through_the_others(&cluster);
    compare_and_swap_works_through_any_node(&cluster);
    stale_reads_catch_up_on_every_node(&cluster);
    malformed_input_is_refused_and_the_node_keeps_serving(&cluster);
    quorum_loss_answers_503_or_504_never_a_false_success(&mut cluster);

    cluster.shutdown();
}

/// Test timings but slow elections: a leader's lease is the longest election timeout, and the
/// 504 check needs the survivor to still accept a write after it lost its quorum, for a few
/// seconds at least (the cut itself may take one). Failover is not part of this test.
fn long_lease_timings() -> RaftTimings {
    RaftTimings {
        election_timeout_ms_min: 4_000,
        election_timeout_ms_max: 8_000,
        ..RaftTimings::for_tests()
    }
}

fn token_is_required(cluster: &RealCluster) {
    for id in 1..=3 {
        let healthz = cluster.send_with_token(id, "GET", "/healthz", b"", None);
        assert_eq!(healthz.status, 200, "/healthz needs no token");
        let missing = cluster.send_with_token(id, "GET", "/v1/cluster", b"", None);
        assert_eq!(missing.status, 401);
        assert_eq!(missing.error_code(), "unauthorized");
        let wrong = cluster.send_with_token(id, "PUT", "/v1/kv/a", b"v", Some("not-it"));
        assert_eq!(wrong.status, 401);
        let metrics = cluster.send_with_token(id, "GET", "/metrics", b"", None);
        assert_eq!(metrics.status, 401, "/metrics needs the token too");
        let view = cluster.send(id, "GET", "/v1/cluster", b"");
        assert_eq!(view.status, 200, "{}", view.text());
        let view = view.json();
        assert_eq!(view["node_id"], id);
        assert_eq!(view["nodes"].as_array().unwrap().len(), 3);
        assert_eq!(
            view["groups"].as_array().unwrap().len(),
            NUM_GROUPS as usize + 1
        );
    }
    let unauthorized_write = cluster.get(1, "a");
    assert_eq!(
        unauthorized_write.status, 404,
        "the refused PUT wrote nothing"
    );
}

fn writes_through_every_node_are_read_through_the_others(cluster: &RealCluster) {
    for writer in 1..=3u64 {
        for group in 1..=NUM_GROUPS {
            let key = cluster.key_in(GroupId(group), &format!("w{writer}"));
            let value = format!("from-{writer}-to-{group}");
            let put = cluster.put(writer, &key, value.as_bytes());
            assert_eq!(put.status, 200, "put {key} via {writer}: {}", put.text());
            let receipt = put.json();
            assert_eq!(receipt["group"], group);
            assert!(receipt["index"].as_u64().unwrap() > 0);
            for reader in (1..=3).filter(|reader| *reader != writer) {
                let read = cluster.get(reader, &key);
                assert_eq!(read.status, 200, "get {key} via {reader}: {}", read.text());
                assert_eq!(
                    read.text(),
                    value,
                    "{key} written via {writer}, read via {reader}"
                );
            }
        }
    }
    let key = cluster.key_in(GroupId(1), "deleted");
    assert_eq!(cluster.put(1, &key, b"soon gone").status, 200);
    let delete = cluster.send(2, "DELETE", &format!("/v1/kv/{key}"), b"");
    assert_eq!(delete.status, 200, "{}", delete.text());
    let read = cluster.get(3, &key);
    assert_eq!(read.status, 404, "a delete via 2 is seen via 3");
    assert_eq!(read.error_code(), "not_found");
}

fn compare_and_swap_works_through_any_node(cluster: &RealCluster) {
    let key = cluster.key_in(GroupId(2), "cas");
    let created = cluster.cas(1, &key, None, "one").json();
    assert_eq!(created["swapped"], true);
    assert_eq!(created["current"], "one");
    let already = cluster.cas(2, &key, None, "other").json();
    assert_eq!(already["swapped"], false, "expected absent, but it exists");
    assert_eq!(already["current"], "one");
    let stale_expectation = cluster.cas(3, &key, Some("zero"), "two").json();
    assert_eq!(stale_expectation["swapped"], false);
    assert_eq!(stale_expectation["current"], "one");
    let swapped = cluster.cas(3, &key, Some("one"), "two").json();
    assert_eq!(swapped["swapped"], true);
    assert_eq!(swapped["current"], "two");
    assert_eq!(cluster.get(1, &key).text(), "two");
}

fn stale_reads_catch_up_on_every_node(cluster: &RealCluster) {
    for group in 1..=NUM_GROUPS {
        let key = cluster.key_in(GroupId(group), "stale");
        assert_eq!(cluster.put(1, &key, b"settled").status, 200);
        for reader in 1..=3 {
            cluster.wait_until(&format!("a stale read of {key} via {reader}"), || {
                let read = cluster.get_stale(reader, &key);
                assert!(
                    read.status == 200 || read.status == 404,
                    "a stale read answers the local state: {} {}",
                    read.status,
                    read.text()
                );
                read.status == 200 && read.text() == "settled"
            });
        }
    }
}

fn malformed_input_is_refused_and_the_node_keeps_serving(cluster: &RealCluster) {
    let bad_requests: [(&str, String, Vec<u8>); 7] = [
        ("POST", "/v1/kv/k/cas".into(), b"{not json".to_vec()),
        ("POST", "/v1/kv/k/cas".into(), br#"{"new": 5}"#.to_vec()),
        (
            "POST",
            "/v1/kv/k/cas".into(),
            br#"{"new":"a","x":1}"#.to_vec(),
        ),
        ("GET", "/v1/kv/k?consistency=eventual".into(), Vec::new()),
        ("PUT", format!("/v1/kv/{}", "k".repeat(1025)), b"v".to_vec()),
        ("PUT", "/v1/kv/big".into(), vec![b'x'; 1024 * 1024 + 1]),
        (
            "POST",
            "/v1/vshards/4096/move".into(),
            br#"{"to_group":1}"#.to_vec(),
        ),
    ];
    for id in 1..=3 {
        for (method, path, body) in &bad_requests {
            let answer = cluster.send(id, method, path, body);
            let shown: String = path.chars().take(40).collect();
            assert_eq!(
                answer.status,
                400,
                "{method} {shown} via {id}: {}",
                answer.text()
            );
            assert_eq!(answer.error_code(), "bad_request");
        }
        let key = format!("after-bad-input-{id}");
        assert_eq!(cluster.put(id, &key, b"fine").status, 200);
        assert_eq!(cluster.get(id, &key).text(), "fine");
    }
    assert_eq!(
        cluster.get(1, "big").status,
        404,
        "the oversize value was not stored"
    );
}

/// Nodes 2 and 3 are cut off; node 1 survives. A group node 1 leads takes a write into its
/// log while its leader lease lasts but cannot commit it: 504, outcome unknown. A group whose
/// leader is gone answers 503 with Retry-After: nothing was applied. Never a 200 or a 4xx.
fn quorum_loss_answers_503_or_504_never_a_false_success(cluster: &mut RealCluster) {
    let survivor = 1;
    let readable: Vec<(GroupId, String)> = (1..=NUM_GROUPS)
        .map(|group| (GroupId(group), cluster.key_in(GroupId(group), "readable")))
        .collect();
    for (_, key) in &readable {
        assert_eq!(cluster.put(survivor, key, b"before").status, 200);
    }
    cluster.wait_until("the survivor to apply the last writes", || {
        readable
            .iter()
            .all(|(_, key)| cluster.get_stale(survivor, key).text() == "before")
    });

    cluster.cut_off(&[2, 3]);

    // Nobody can win an election any more, so who leads what is settled (the leader balancer
    // may have moved a leadership just before the cut).
    let leads_here =
        |group: &GroupId| cluster.leader_seen_by(survivor, *group) == Some(NodeId(survivor));
    let groups: Vec<GroupId> = (1..=NUM_GROUPS).map(GroupId).collect();
    let led_here = *groups
        .iter()
        .find(|group| leads_here(group))
        .expect("leaders were spread: node 1 leads a data group");
    let led_elsewhere = *groups
        .iter()
        .find(|group| !leads_here(group))
        .expect("leaders were spread: node 1 does not lead every data group");

    // First, while node 1's leader lease (the election timeout) still runs.
    let unknown_key = cluster.key_in(led_here, "unknown");
    let unknown = cluster.put(survivor, &unknown_key, b"maybe");
    assert_eq!(
        unknown.status,
        504,
        "a leader that cannot reach a quorum cannot know: {}",
        unknown.text()
    );
    assert_eq!(unknown.error_code(), "outcome_unknown");

    let refused_key = cluster.key_in(led_elsewhere, "refused");
    let refused = cluster.put(survivor, &refused_key, b"never");
    assert_eq!(
        refused.status,
        503,
        "a group without a leader refuses: {}",
        refused.text()
    );
    assert_eq!(refused.error_code(), "unavailable");
    let retry_after: u32 = refused
        .retry_after
        .as_deref()
        .expect("a 503 carries Retry-After")
        .parse()
        .unwrap();
    assert!(retry_after >= 1);

    let (_, readable_key) = readable
        .iter()
        .find(|(group, _)| *group == led_elsewhere)
        .unwrap();
    let stale = cluster.get_stale(survivor, readable_key);
    assert_eq!(stale.status, 200, "stale reads need no quorum");
    assert_eq!(stale.text(), "before");
    let linearizable = cluster.get(survivor, readable_key);
    assert_eq!(
        linearizable.status,
        503,
        "a linearizable read needs the group's leader: {}",
        linearizable.text()
    );
    let healthz = cluster.send(survivor, "GET", "/healthz", b"");
    assert_eq!(healthz.status, 200, "the survivor keeps serving");
}

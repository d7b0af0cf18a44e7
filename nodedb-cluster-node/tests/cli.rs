//! The `nodedb-cluster` client verbs, run as real processes against an API served on loopback:
//! output on success, one-line errors and exit codes on failure.

mod common;

use common::{Fixture, TIMEOUT_PREFIX, UNAVAILABLE_PREFIX};
use std::process::{Command, Output};

fn run(fixture: &Fixture, args: &[&str], token: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"));
    command
        .args(args)
        .args(["--admin", &fixture.address.to_string()])
        .env_remove("NODEDB_CLUSTER_TOKEN");
    if let Some(token) = token {
        command.env("NODEDB_CLUSTER_TOKEN", token);
    }
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn kv_put_get_del() {
    let fixture = Fixture::start(None);
    let output = run(&fixture, &["kv", "put", "some/key", "hello world"], None);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("ok: vshard "),
        "{}",
        stdout(&output)
    );

    let output = run(&fixture, &["kv", "get", "some/key"], None);
    assert_eq!(stdout(&output), "hello world\n");
    let output = run(&fixture, &["kv", "get", "some/key", "--stale"], None);
    assert_eq!(stdout(&output), "hello world\n");

    assert!(
        run(&fixture, &["kv", "del", "some/key"], None)
            .status
            .success()
    );
    let output = run(&fixture, &["kv", "get", "some/key"], None);
    assert!(!output.status.success());
    assert_eq!(stderr(&output), "error: key `some/key` not found\n");
}

#[test]
fn failures_are_one_line_and_say_whether_the_outcome_is_known() {
    let fixture = Fixture::start(None);
    let key = format!("{UNAVAILABLE_PREFIX}k");
    let output = run(&fixture, &["kv", "put", &key, "v"], None);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: 503 unavailable: no leader for group 3 (nothing was applied; retry later)\n"
    );
    let key = format!("{TIMEOUT_PREFIX}k");
    let output = run(&fixture, &["kv", "put", &key, "v"], None);
    assert!(
        stderr(&output).contains("may or may not have applied"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_unreachable_node_is_a_clear_error() {
    let fixture = Fixture::start(None);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap().to_string();
    drop(listener);
    let output = Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"))
        .args(["kv", "get", "k", "--admin", &closed])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.starts_with("error: GET /v1/kv/k: cannot reach"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    drop(fixture);
}

#[test]
fn the_token_comes_from_the_environment() {
    let fixture = Fixture::start(Some("t0ken"));
    let output = run(&fixture, &["kv", "put", "k", "v"], None);
    assert!(
        stderr(&output).starts_with("error: 401 unauthorized"),
        "{}",
        stderr(&output)
    );
    let output = run(&fixture, &["kv", "put", "k", "v"], Some("t0ken"));
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn status_prints_a_table_or_json() {
    let fixture = Fixture::start(None);
    let output = run(&fixture, &["status"], None);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("cluster test-cluster  seen from node 1  routing version 7")
    );
    let output = run(&fixture, &["status", "--json"], None);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["routing_version"], serde_json::json!(7));
}

#[test]
fn admin_verbs_reach_their_endpoints() {
    let fixture = Fixture::start(None);
    let output = run(&fixture, &["vshard", "move", "5", "--to-group", "2"], None);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("\"to_group\": 2"),
        "{}",
        stdout(&output)
    );
    let output = run(&fixture, &["vshard", "move", "5", "--to-group", "0"], None);
    assert!(
        stderr(&output).starts_with("error: 400 bad_request"),
        "{}",
        stderr(&output)
    );
    let output = run(&fixture, &["node", "decommission", "2"], None);
    assert_eq!(stdout(&output), "node 2: decommission started\n");
    assert!(run(&fixture, &["rebalance"], None).status.success());
}

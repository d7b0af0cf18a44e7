//! Whole runs of `test-cluster` and `bench cluster` (launch, readiness, workload, leader
//! kills and restarts, progress, settle, agreement, final reads, linearizability, report,
//! cleanup, Ctrl-C) against stand-in node processes that relay to one fake store, so the
//! driver is known to work before the real node forms a cluster.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Kills a helper process and removes a directory when the test ends, however it ends.
struct Cleanup {
    child: Child,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fake store (correct or losing writes) and a node binary whose `start` is a fake node
/// relaying to it. Returns the guard, the binary, and the environment the driver needs.
fn fake_setup(name: &str, store_flags: &[&str]) -> (Cleanup, PathBuf, (String, String)) {
    let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new(XTASK)
        .args(["fake-store", "--addr", &addr.to_string()])
        .args(store_flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("xtask-fake-{name}-{}", std::process::id()));
    let cleanup = Cleanup {
        child,
        dir: dir.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the fake store did not start on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let binary = fake_binary(&dir);
    let env = ("XTASK_FAKE_STORE".to_string(), addr.to_string());
    (cleanup, binary, env)
}

/// A node binary whose `certs` writes the promised files and whose `start` is a fake node.
fn fake_binary(dir: &Path) -> PathBuf {
    let script = format!(
        "#!/bin/sh\n\
         case \"$1\" in\n\
         certs) if [ \"$2\" = init ]; then touch \"$4/ca.pem\" \"$4/ca.key\";\n\
                else touch \"$4/node-$6.pem\" \"$4/node-$6.key\"; fi ;;\n\
         start) shift; exec \"{XTASK}\" fake-node \"$@\" ;;\n\
         *) exit 2 ;;\n\
         esac\n"
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("fake-nodedb-cluster");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn test_cluster(binary: &Path, env: &(String, String), arguments: &[&str]) -> Command {
    let mut command = Command::new(XTASK);
    command
        .args(["test-cluster", "--nodes", "3", "--groups", "4"])
        .args(["--clients", "4", "--keys", "20"])
        .args(arguments)
        .arg("--node-binary")
        .arg(binary)
        .env(&env.0, &env.1);
    command
}

/// Runs a command with a deadline; kills it if the deadline passes.
fn run_with_deadline(mut command: Command) -> (Output, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + RUN_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let context = format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, context)
}

#[test]
fn a_full_run_against_fake_nodes_passes_and_cleans_up() {
    let (_cleanup, binary, env) = fake_setup("pass", &[]);
    // The fake nodes share one store and cannot leave the cluster: the join and decommission
    // phase runs against real nodes only (`cargo xtask test-cluster`).
    let args = ["--duration", "10s", "--seed", "11", "--no-membership"];
    let command = test_cluster(&binary, &env, &args);
    let (output, context) = run_with_deadline(command);
    assert!(output.status.success(), "{context}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "seed 11",
        "linearizable per key       pass",
        "routing/membership agree   pass",
        "skipped: not exposed by /v1/cluster",
        "kill leader of group 0 (metadata)",
        "failovers recovered        pass",
        "PASSED",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}`:\n{context}"
        );
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ops/s | ok"), "a progress line: {context}");
    assert!(stderr.contains("work dir removed"), "{context}");
}

#[test]
fn a_store_that_loses_writes_fails_the_run_with_logs_and_keeps_the_work_dir() {
    let (_cleanup, binary, env) = fake_setup("lose", &["--lose-writes"]);
    let command = test_cluster(&binary, &env, &["--duration", "3s", "--no-faults"]);
    let (output, context) = run_with_deadline(command);
    assert_eq!(output.status.code(), Some(1), "{context}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("linearizable per key       FAIL"),
        "{context}"
    );
    assert!(stdout.contains("NOT linearizable"), "{context}");
    assert!(
        stdout.contains("failovers recovered        skip"),
        "{context}"
    );
    assert!(stdout.trim_end().ends_with("FAILED"), "{context}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("---- node 3 ("),
        "the nodes' last log lines: {context}"
    );
    let kept = stderr
        .lines()
        .find_map(|line| line.strip_prefix("work dir kept: "))
        .unwrap_or_else(|| panic!("no kept work dir: {context}"));
    let kept = Path::new(kept);
    assert!(kept.join("history.json").is_file(), "{context}");
    assert!(kept.join("linearizability.txt").is_file(), "{context}");
    std::fs::remove_dir_all(kept).unwrap();
}

#[test]
fn ctrl_c_kills_every_node_and_exits_130() {
    let (_cleanup, binary, env) = fake_setup("interrupt", &[]);
    let mut command = test_cluster(&binary, &env, &["--duration", "60s", "--no-faults"]);
    let mut child = command
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !seen.contains("ops/s | ok") {
        assert!(Instant::now() < deadline, "no progress line: {seen}");
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("xtask ended early: {seen}");
        }
        seen.push_str(&line);
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(130), "{seen}{rest}");
    assert!(
        rest.contains("interrupted: killed 3 node processes"),
        "{seen}{rest}"
    );
    let kept = rest
        .lines()
        .find_map(|line| line.split("work dir kept at ").nth(1))
        .unwrap_or_else(|| panic!("no work dir named: {rest}"));
    std::fs::remove_dir_all(kept).unwrap();
}

#[test]
fn the_bench_measures_and_writes_its_json() {
    let json = bench("bench", &["--clients", "2", "--seconds", "1"]);
    assert_eq!(json["op"], "put");
    assert_eq!(json["profile"], "prebuilt binary");
    assert!(json["ops"].as_u64().unwrap() > 0, "{json}");
    assert!(json["latency_us"]["p99"].as_u64().unwrap() > 0, "{json}");
    let nodes = json["cpu_seconds_per_node"].as_object().unwrap();
    assert_eq!(nodes.len(), 3, "{json}");
    assert!(
        json["load_generator_cpu_seconds"].as_f64().unwrap() > 0.0,
        "{json}"
    );
}

#[test]
fn the_read_bench_reads_the_keys_it_filled() {
    let json = bench(
        "bench-read",
        &["--op", "get-stale", "--clients", "8", "--seconds", "1"],
    );
    assert_eq!(json["op"], "get-stale");
    assert!(json["ops"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["errors"], 0, "{json}");
}

/// Runs `bench cluster` on 3 fake nodes; the JSON it wrote (then removed).
fn bench(name: &str, arguments: &[&str]) -> serde_json::Value {
    let (_cleanup, binary, env) = fake_setup(name, &[]);
    let mut command = Command::new(XTASK);
    command
        .args(["bench", "cluster", "--nodes", "3"])
        .args(arguments)
        .arg("--node-binary")
        .arg(&binary)
        .env(&env.0, &env.1);
    let (output, context) = run_with_deadline(command);
    assert!(output.status.success(), "{context}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("ops/s"), "{context}");
    assert!(stdout.contains("latency ms: p50"), "{context}");
    assert!(stdout.contains("load generator"), "{context}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let path = stderr
        .lines()
        .find_map(|line| line.strip_prefix("results written to "))
        .unwrap_or_else(|| panic!("no results file: {context}"));
    let json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    std::fs::remove_file(path).unwrap();
    json
}

//! The whole `test-cluster` run (launch, readiness, workload, leader kills and restarts,
//! progress, settle, agreement, final reads, linearizability, report, cleanup) against
//! stand-in node processes that relay to one fake store, so the driver is known to work
//! before the real node forms a cluster.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Kills the fake store when the test ends, however it ends.
struct Store(Child);

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start_store() -> (Store, SocketAddr) {
    let addr = free_port();
    let child = Command::new(XTASK)
        .args(["fake-store", "--addr", &addr.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let store = Store(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the fake store did not start on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (store, addr)
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

/// Runs xtask with a deadline; kills it if the deadline passes.
fn run_with_deadline(mut command: Command) -> Output {
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
    child.wait_with_output().unwrap()
}

#[test]
fn a_full_run_against_fake_nodes_passes_and_cleans_up() {
    let (_store, store_addr) = start_store();
    let bin_dir = std::env::temp_dir().join(format!("xtask-fake-cluster-{}", std::process::id()));
    let binary = fake_binary(&bin_dir);
    let mut command = Command::new(XTASK);
    command
        .args([
            "test-cluster",
            "--nodes",
            "3",
            "--groups",
            "4",
            "--duration",
            "10s",
        ])
        .args(["--clients", "4", "--keys", "20", "--seed", "11"])
        .arg("--node-binary")
        .arg(&binary)
        .env("XTASK_FAKE_STORE", store_addr.to_string());
    let output = run_with_deadline(command);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(output.status.success(), "{context}");
    for expected in [
        "seed 11",
        "linearizable per key",
        "routing/membership agree",
        "skipped: not exposed by /v1/cluster",
        "kill leader of group 0 (metadata)",
        "failovers recovered",
        "PASSED",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}`:\n{context}"
        );
    }
    assert!(stderr.contains("ops/s | ok"), "a progress line: {context}");
    assert!(stderr.contains("work dir removed"), "{context}");
    std::fs::remove_dir_all(bin_dir).unwrap();
}

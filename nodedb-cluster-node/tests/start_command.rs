//! `nodedb-cluster start` as a process: a config file or flag it cannot use is refused at once
//! with a message naming the key, and flags override the file's keys.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn start(config: &Path, flags: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nodedb-cluster"));
    command
        .arg("start")
        .arg("--config")
        .arg(config)
        .args(flags)
        .env("RUST_LOG", "warn");
    command
}

/// Runs a start that must fail before serving; its output.
fn refused(config: &Path, flags: &[&str]) -> Output {
    let output = start(config, flags).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn free_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_tcp_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A valid single-node config without certificates (development mode).
fn insecure_config(dir: &Path, admin: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("node.toml");
    let text = format!(
        "node_id = 1\nlisten_addr = \"{}\"\nadmin_addr = \"{admin}\"\ndata_dir = \"data\"\n\
         num_groups = 2\nreplication_factor = 1\n\n[tls]\ninsecure = true\n",
        free_udp_port()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn an_unusable_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = insecure_config(dir.path(), free_tcp_port());
    let text = std::fs::read_to_string(&config).unwrap();

    std::fs::write(&config, text.replace("num_groups", "num_grops")).unwrap();
    let error = stderr(&refused(&config, &[]));
    assert!(error.contains("num_grops"), "{error}");

    let without_tls = text.replace("[tls]\ninsecure = true\n", "");
    std::fs::write(&config, without_tls).unwrap();
    let error = stderr(&refused(&config, &[]));
    assert!(
        error.contains("tls") && error.contains("certs init"),
        "{error}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the config is accepted"
    );
}

#[test]
fn flags_override_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = insecure_config(dir.path(), free_tcp_port());

    // Flags are checked like the keys they replace.
    let error = stderr(&refused(&config, &["--replication-factor", "0"]));
    assert!(error.contains("replication_factor"), "{error}");
    let error = stderr(&refused(&config, &["--num-groups", "5000"]));
    assert!(error.contains("num_groups"), "{error}");

    // The admin API listens where the flag says, not where the file does.
    let admin = free_tcp_port();
    let data = dir.path().join("from-flag");
    let mut node = start(
        &config,
        &[
            "--admin-addr",
            &admin.to_string(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        let answer = agent.get(&format!("http://{admin}/readyz")).call();
        if answer.is_ok_and(|response| response.status() == 200) {
            break true;
        }
        if Instant::now() >= deadline || node.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = node.kill();
    let _ = node.wait();
    assert!(ready, "no ready node on the flag's admin address {admin}");
    assert!(data.exists(), "the flag's data dir is used");
    assert!(
        !dir.path().join("data").exists(),
        "the file's data dir is not"
    );
}

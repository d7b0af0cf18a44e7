//! `bench cluster --vs-etcd`: the same closed-loop puts against an etcd cluster of as many
//! members on loopback (fsync on, as it ships), through etcd's HTTP/JSON gateway
//! (`POST /v3/kv/put`), so that both systems answer the same HTTP clients on the same machine;
//! prints and stores the ratios. Needs the `etcd` binary (Debian: `apt-get install
//! etcd-server`, then `systemctl disable --now etcd` if the packaged service runs), or its path
//! in `NODEDB_ETCD`.

use crate::api::{Api, Reply};
use crate::bench::{BenchResult, REQUEST_TIMEOUT, closed_loop, run_clients, summary_latency};
use crate::cli::BenchClusterArgs;
use crate::cluster::ports;
use crate::cluster::process::{Processes, log_tail};
use anyhow::{Context, Result, bail};
use rand::Rng;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Environment variable naming the etcd binary to run instead of `etcd` on the `PATH`.
pub const ETCD_BINARY_ENV: &str = "NODEDB_ETCD";
/// How long the members may take to elect a leader and answer `/health`.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTH_POLL: Duration = Duration::from_millis(200);
const LOG_TAIL_LINES: usize = 20;

/// The etcd binary, or a message that says how to get one.
pub fn find_etcd() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(ETCD_BINARY_ENV) {
        return Ok(PathBuf::from(path));
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => Ok(path),
        None => bail!(
            "--vs-etcd needs the etcd binary: install it (Debian: apt-get install etcd-server) \
             or set {ETCD_BINARY_ENV} to its path"
        ),
    }
}

/// `etcd --version`'s first line.
pub fn version(etcd: &Path) -> String {
    Command::new(etcd)
        .arg("--version")
        .output()
        .ok()
        .and_then(|output| {
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.lines().next().map(str::to_owned)
        })
        .unwrap_or_else(|| "etcd (version unknown)".to_owned())
}

/// Starts `args.nodes` etcd members under `work_dir`, runs the put benchmark against them and
/// stops them.
pub fn measure(etcd: &Path, args: &BenchClusterArgs, work_dir: &Path) -> Result<BenchResult> {
    std::fs::create_dir_all(work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let members = args.nodes as usize;
    // Two TCP ports per member: clients and peers.
    let ports = ports::allocate(members * 2)?;
    let client_addrs: Vec<SocketAddr> = ports[..members].iter().map(|p| p.admin_addr).collect();
    let peer_addrs: Vec<SocketAddr> = ports[members..].iter().map(|p| p.admin_addr).collect();
    let initial_cluster = peer_addrs
        .iter()
        .enumerate()
        .map(|(index, peer)| format!("e{}=http://{peer}", index + 1))
        .collect::<Vec<_>>()
        .join(",");
    let processes = Processes::new();
    let _kill_on_drop = processes.guard();
    for (index, (client, peer)) in client_addrs.iter().zip(&peer_addrs).enumerate() {
        let id = index as u64 + 1;
        let mut command = Command::new(etcd);
        command
            .arg("--name")
            .arg(format!("e{id}"))
            .arg("--data-dir")
            .arg(work_dir.join(format!("e{id}.etcd")))
            .arg("--listen-client-urls")
            .arg(format!("http://{client}"))
            .arg("--advertise-client-urls")
            .arg(format!("http://{client}"))
            .arg("--listen-peer-urls")
            .arg(format!("http://{peer}"))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{peer}"))
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-token")
            .arg("nodedb-bench")
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--log-level")
            .arg("warn");
        processes.spawn(id, command, &work_dir.join(format!("e{id}.log")))?;
    }
    let pids: BTreeMap<u64, u32> = (1..=members as u64)
        .filter_map(|id| Some((id, processes.pid(id)?)))
        .collect();
    let api = Api::new(REQUEST_TIMEOUT);
    if let Err(error) = wait_healthy(&api, &client_addrs) {
        for id in 1..=members {
            eprintln!(
                "etcd member {id}:\n{}",
                log_tail(&work_dir.join(format!("e{id}.log")), LOG_TAIL_LINES)
            );
        }
        return Err(error);
    }
    run_clients(args, &pids, |client, measure_from, stop| {
        // One client of its own per thread, as against the nodes.
        let api = Api::new(REQUEST_TIMEOUT);
        closed_loop(
            client,
            crate::bench::BENCH_KEYS,
            args.value_bytes,
            measure_from,
            stop,
            |rng, key, value| {
                let member = client_addrs[rng.random_range(0..client_addrs.len())];
                put(&api, member, key, value)
            },
        )
    })
}

/// Polls every member's `/health` until all say healthy.
fn wait_healthy(api: &Api, members: &[SocketAddr]) -> Result<()> {
    let started = Instant::now();
    loop {
        let unhealthy: Vec<SocketAddr> = members
            .iter()
            .copied()
            .filter(|member| {
                !api.get_text(&format!("http://{member}/health"))
                    .is_some_and(|body| body.contains("\"health\":\"true\""))
            })
            .collect();
        if unhealthy.is_empty() {
            return Ok(());
        }
        if started.elapsed() > HEALTHY_TIMEOUT {
            bail!("etcd members {unhealthy:?} not healthy after {HEALTHY_TIMEOUT:?}");
        }
        std::thread::sleep(HEALTH_POLL);
    }
}

/// `PUT key = value` through etcd's JSON gateway (keys and values in base64).
fn put(api: &Api, member: SocketAddr, key: &str, value: &[u8]) -> Reply<bool> {
    let body = json!({"key": base64(key.as_bytes()), "value": base64(value)}).to_string();
    api.post_json(&format!("http://{member}/v3/kv/put"), &body)
        .map(|_| true)
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = chunk.iter().enumerate().fold(0u32, |word, (i, byte)| {
            word | u32::from(*byte) << (16 - 8 * i)
        });
        for position in 0..4 {
            if position <= chunk.len() {
                let index = (word >> (18 - 6 * position)) & 0x3f;
                out.push(char::from(ALPHABET[index as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The etcd part of the summary JSON: its numbers and the ratios to nodedb-cluster's.
pub fn comparison_json(ours: &Value, etcd: &BenchResult, etcd_version: &str) -> Value {
    let etcd_rate = etcd.latencies_us.len() as f64 / etcd.measured.as_secs_f64().max(0.001);
    let latency = summary_latency(&etcd.latencies_us);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let ours_rate = ours["ops_per_second"].as_f64().unwrap_or(0.0);
    let ours_p = |name: &str| ours["latency_us"][name].as_f64().unwrap_or(0.0);
    let etcd_p = |name: &str| latency[name].as_f64().unwrap_or(0.0);
    json!({
        "etcd": {
            "version": etcd_version,
            "via": "HTTP/JSON gateway, POST /v3/kv/put",
            "ops_per_second": etcd_rate,
            "errors": etcd.errors,
            "error_examples": etcd.error_examples,
            "latency_us": latency,
            "bytes_written_by_members": etcd.usage.nodes_bytes_written,
            "cpu_seconds_per_member": etcd.usage.seconds_per_node(),
        },
        "ratio_to_etcd": {
            "ops_per_second": ratio(ours_rate, etcd_rate),
            "p50": ratio(ours_p("p50"), etcd_p("p50")),
            "p99": ratio(ours_p("p99"), etcd_p("p99")),
        },
    })
}

/// The comparison lines of the text report.
pub fn render_comparison(comparison: &Value) -> String {
    let etcd = &comparison["etcd"];
    let ratio = &comparison["ratio_to_etcd"];
    let ms = |value: &Value| value.as_f64().unwrap_or(0.0) / 1000.0;
    let number = |value: &Value| value.as_f64().unwrap_or(0.0);
    format!(
        "{} ({}): ops/s {:.0} ({} errors), latency ms p50 {:.2} p99 {:.2} p99.9 {:.2}\n\
         nodedb-cluster / etcd: ops/s {:.2}x, p50 {:.2}x, p99 {:.2}x (below 1 is faster)",
        etcd["version"].as_str().unwrap_or("etcd"),
        etcd["via"].as_str().unwrap_or("?"),
        number(&etcd["ops_per_second"]),
        etcd["errors"],
        ms(&etcd["latency_us"]["p50"]),
        ms(&etcd["latency_us"]["p99"]),
        ms(&etcd["latency_us"]["p99_9"]),
        number(&ratio["ops_per_second"]),
        number(&ratio["p50"]),
        number(&ratio["p99"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }
}

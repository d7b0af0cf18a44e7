//! `cargo xtask bench cluster`: closed-loop puts against a local cluster (release build by
//! default): writes per second and latency percentiles from an HDR histogram, printed and
//! written as JSON under `<target>/bench/`.

use crate::api::{Api, Reply};
use crate::cli::BenchClusterArgs;
use crate::cluster::config::RaftTimings;
use crate::cluster::process::Processes;
use crate::cluster::{Cluster, LOG_TAIL_LINES, LaunchSpec, build};
use anyhow::{Context, Result, anyhow};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Keys the benchmark writes to (spread over the vShards).
pub const BENCH_KEYS: u32 = 10_000;
/// Unmeasured time before the measurement starts.
pub const WARM_UP: Duration = Duration::from_secs(2);
/// Largest latency the histogram records; slower requests time out first.
const LATENCY_US_MAX: u64 = 60_000_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What one client measured.
#[derive(Debug)]
pub struct ClientResult {
    pub latencies_us: Histogram<u64>,
    pub errors: u64,
}

/// The merged measurement.
#[derive(Debug)]
pub struct BenchResult {
    pub measured: Duration,
    pub latencies_us: Histogram<u64>,
    pub errors: u64,
}

/// Runs the benchmark and writes its JSON; returns the path of the JSON file.
pub fn run(args: &BenchClusterArgs) -> Result<PathBuf> {
    args.validate()?;
    let binary = match &args.node_binary {
        Some(path) => path.clone(),
        None => build::build_node(!args.debug)?,
    };
    let (result, run) = on_cluster(
        "cluster",
        BenchCluster {
            binary,
            nodes: args.nodes,
            groups: args.groups,
            debug: args.debug,
        },
        |nodes| measure(nodes, args),
    )?;
    let (bench_dir, work_dir, stamp) = (run.bench_dir, run.work_dir, run.stamp);
    let summary = summary_json(args, &result, stamp);
    println!("{}", render(&summary));
    let path = bench_dir.join(format!("cluster-{stamp}.json"));
    let text = serde_json::to_string_pretty(&summary)?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    if !args.keep {
        std::fs::remove_dir_all(&work_dir)
            .with_context(|| format!("removing {}", work_dir.display()))?;
    }
    eprintln!("results written to {}", path.display());
    Ok(path)
}

/// The cluster a benchmark runs against.
#[derive(Debug)]
pub struct BenchCluster {
    pub binary: PathBuf,
    pub nodes: u32,
    pub groups: u32,
    /// Debug-profile timings (the binary is then a debug build too).
    pub debug: bool,
}

/// Where one benchmark run keeps its files.
#[derive(Debug)]
pub struct BenchRun {
    /// `<target>/bench`, where the JSON results go.
    pub bench_dir: PathBuf,
    /// The nodes' directories, `<bench_dir>/<name>-<stamp>`.
    pub work_dir: PathBuf,
    pub stamp: u64,
}

/// Launches `cluster` for the benchmark `name`, runs `measure` against the nodes' admin
/// addresses, then stops every node; on a failed measurement, prints the nodes' last log lines.
pub fn on_cluster<T>(
    name: &str,
    cluster: BenchCluster,
    measure: impl FnOnce(&[SocketAddr]) -> Result<T>,
) -> Result<(T, BenchRun)> {
    let stamp = unix_seconds();
    let bench_dir = build::target_dir()?.join("bench");
    let work_dir = bench_dir.join(format!("{name}-{stamp}"));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let processes = Processes::new();
    processes.kill_on_interrupt(&work_dir)?;
    let spec = LaunchSpec {
        binary: cluster.binary,
        work_dir: work_dir.clone(),
        nodes: cluster.nodes,
        num_groups: cluster.groups,
        ready_timeout: crate::cluster::READY_TIMEOUT,
        raft: RaftTimings::for_profile(!cluster.debug),
    };
    let launched = Cluster::launch(&spec, &processes)?;
    let nodes: Vec<SocketAddr> = launched.admin_addrs().into_values().collect();
    let result = match measure(&nodes) {
        Ok(result) => result,
        Err(error) => {
            eprintln!("{}", launched.log_tails(LOG_TAIL_LINES));
            return Err(error);
        }
    };
    drop(launched);
    let run = BenchRun {
        bench_dir,
        work_dir,
        stamp,
    };
    Ok((result, run))
}

/// Warm-up, then `args.seconds` of closed-loop puts from `args.clients` threads.
fn measure(nodes: &[SocketAddr], args: &BenchClusterArgs) -> Result<BenchResult> {
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let measure_from = started + WARM_UP;
    let measured = Duration::from_secs(args.seconds);
    let results: Vec<ClientResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..u64::from(args.clients))
            .map(|client| {
                let stop = &stop;
                scope.spawn(move || client_loop(client, nodes, args, measure_from, stop))
            })
            .collect();
        crate::nemesis::sleep_until(measure_from + measured, &AtomicBool::new(false));
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| anyhow!("a bench client panicked"))
            })
            .collect::<Result<_>>()
    })?;
    merge(results, measured)
}

/// Adds up the clients' histograms and errors.
pub fn merge(results: Vec<ClientResult>, measured: Duration) -> Result<BenchResult> {
    let mut latencies_us = new_histogram();
    let mut errors = 0;
    for result in results {
        latencies_us
            .add(&result.latencies_us)
            .map_err(|error| anyhow!("merging latency histograms: {error:?}"))?;
        errors += result.errors;
    }
    Ok(BenchResult {
        measured,
        latencies_us,
        errors,
    })
}

/// The JSON written for a run.
pub fn summary_json(args: &BenchClusterArgs, result: &BenchResult, unix_time: u64) -> Value {
    let histogram = &result.latencies_us;
    let writes = histogram.len();
    let seconds = result.measured.as_secs_f64().max(0.001);
    let percentile = |quantile: f64| histogram.value_at_quantile(quantile);
    json!({
        "bench": "cluster",
        "unix_time": unix_time,
        "profile": profile(args),
        "nodes": args.nodes,
        "groups": args.groups,
        "clients": args.clients,
        "value_bytes": args.value_bytes,
        "seconds": result.measured.as_secs_f64(),
        "writes": writes,
        "errors": result.errors,
        "writes_per_second": writes as f64 / seconds,
        "latency_us": {
            "p50": percentile(0.50),
            "p99": percentile(0.99),
            "p99_9": percentile(0.999),
            "max": histogram.max(),
            "mean": histogram.mean(),
        },
    })
}

/// A few readable lines from the summary JSON.
pub fn render(summary: &Value) -> String {
    let latency = &summary["latency_us"];
    let ms = |value: &Value| value.as_f64().unwrap_or(0.0) / 1000.0;
    format!(
        "bench cluster ({} profile): {} nodes, {} groups, {} clients, {} B values, {:.0}s\n\
         writes/s {:.0} ({} writes, {} errors)\n\
         latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        summary["profile"].as_str().unwrap_or("?"),
        summary["nodes"],
        summary["groups"],
        summary["clients"],
        summary["value_bytes"],
        summary["seconds"].as_f64().unwrap_or(0.0),
        summary["writes_per_second"].as_f64().unwrap_or(0.0),
        summary["writes"],
        summary["errors"],
        ms(&latency["p50"]),
        ms(&latency["p99"]),
        ms(&latency["p99_9"]),
        ms(&latency["max"]),
    )
}

fn profile(args: &BenchClusterArgs) -> &'static str {
    match (&args.node_binary, args.debug) {
        (Some(_), _) => "prebuilt binary",
        (None, true) => "dev",
        (None, false) => "release",
    }
}

fn client_loop(
    client: u64,
    nodes: &[SocketAddr],
    args: &BenchClusterArgs,
    measure_from: Instant,
    stop: &AtomicBool,
) -> ClientResult {
    let api = Api::new(REQUEST_TIMEOUT);
    let mut rng = SmallRng::seed_from_u64(client);
    let value = vec![b'v'; args.value_bytes as usize];
    let mut result = ClientResult {
        latencies_us: new_histogram(),
        errors: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        let key = format!("b{:05}", rng.random_range(0..BENCH_KEYS));
        let node = nodes[rng.random_range(0..nodes.len())];
        let sent = Instant::now();
        let reply = api.put(node, &key, &value);
        if sent < measure_from {
            continue;
        }
        match reply {
            Reply::Ok(_) => {
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                result
                    .latencies_us
                    .saturating_record(micros.clamp(1, LATENCY_US_MAX));
            }
            Reply::Failed(_) | Reply::Refused(_) | Reply::Unknown(_) => result.errors += 1,
        }
    }
    result
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid")
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BenchClusterArgs {
        BenchClusterArgs {
            nodes: 3,
            groups: 8,
            clients: 2,
            seconds: 10,
            value_bytes: 256,
            keep: false,
            debug: false,
            node_binary: None,
        }
    }

    fn client(latencies: &[u64], errors: u64) -> ClientResult {
        let mut histogram = new_histogram();
        for latency in latencies {
            histogram.record(*latency).unwrap();
        }
        ClientResult {
            latencies_us: histogram,
            errors,
        }
    }

    #[test]
    fn clients_merge_into_rates_and_percentiles() {
        let first: Vec<u64> = (1..=500).map(|i| i * 10).collect();
        let second: Vec<u64> = (501..=1000).map(|i| i * 10).collect();
        let result = merge(
            vec![client(&first, 1), client(&second, 2)],
            Duration::from_secs(10),
        )
        .unwrap();
        let summary = summary_json(&args(), &result, 1);
        assert_eq!(summary["writes"], 1000);
        assert_eq!(summary["errors"], 3);
        assert_eq!(summary["writes_per_second"], 100.0);
        let p50 = summary["latency_us"]["p50"].as_u64().unwrap();
        assert!((4990..=5010).contains(&p50), "p50 {p50}");
        let p999 = summary["latency_us"]["p99_9"].as_u64().unwrap();
        assert!((9980..=10010).contains(&p999), "p99.9 {p999}");
        assert_eq!(summary["profile"], "release");
    }

    #[test]
    fn the_summary_reads_in_milliseconds() {
        let result = merge(vec![client(&[1000, 2000, 3000], 0)], Duration::from_secs(1)).unwrap();
        let text = render(&summary_json(&args(), &result, 1));
        assert!(text.contains("writes/s 3 (3 writes, 0 errors)"), "{text}");
        assert!(text.contains("p50 2.00"), "{text}");
    }
}

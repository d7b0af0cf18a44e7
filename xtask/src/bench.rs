//! `cargo xtask bench cluster`: closed-loop puts, linearizable gets or stale gets against a
//! local cluster (release build by default): operations per second, latency percentiles from
//! an HDR histogram and the CPU seconds each node and the load generator used, printed and
//! written as JSON under `<target>/bench/`.

use crate::api::{Api, Reply};
use crate::bench_etcd;
use crate::cli::{BenchClusterArgs, BenchOp};
use crate::cluster::config::RaftTimings;
use crate::cluster::process::Processes;
use crate::cluster::{Cluster, LOG_TAIL_LINES, LaunchSpec, build};
use anyhow::{Context, Result, anyhow};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Keys the benchmark writes to (spread over the vShards).
pub const BENCH_KEYS: u32 = 10_000;
/// Keys a read benchmark writes first, then reads.
pub const READ_KEYS: u32 = 2_000;
/// Tries of each write that fills a key for reads.
const FILL_ATTEMPTS: u32 = 5;
const FILL_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Clock ticks per second of the times in `/proc/<pid>/stat`: Linux's `USER_HZ`.
const USER_HZ: f64 = 100.0;
/// Unmeasured time before the measurement starts.
pub const WARM_UP: Duration = Duration::from_secs(2);
/// Largest latency the histogram records; slower requests time out first.
const LATENCY_US_MAX: u64 = 60_000_000;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Failed replies shown with a run's error count.
const ERROR_EXAMPLES_MAX: usize = 3;

/// What one client measured.
#[derive(Debug)]
pub struct ClientResult {
    pub latencies_us: Histogram<u64>,
    pub errors: u64,
    /// The first failed request's reply.
    pub first_error: Option<String>,
}

/// User plus system CPU time, in clock ticks, of every node process and of this one, and the
/// bytes the node processes wrote to files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU ticks by node id.
    pub nodes: BTreeMap<u64, u64>,
    pub load_generator: u64,
    /// Bytes handed to `write(2)` and its kin by the node processes together (`wchar` of
    /// `/proc/<pid>/io`): their log and catalog files and log output. Sockets are sent to with
    /// `sendmsg`, which does not count.
    pub nodes_bytes_written: u64,
}

/// The merged measurement.
#[derive(Debug)]
pub struct BenchResult {
    pub measured: Duration,
    pub latencies_us: Histogram<u64>,
    pub errors: u64,
    /// Distinct first errors of the clients, at most [`ERROR_EXAMPLES_MAX`].
    pub error_examples: Vec<String>,
    /// Used during the measured time.
    pub usage: Usage,
}

/// Runs the benchmark and writes its JSON; returns the path of the JSON file.
pub fn run(args: &BenchClusterArgs) -> Result<PathBuf> {
    args.validate()?;
    // Before anything is built: a missing etcd is told at once.
    let etcd = args.vs_etcd.then(bench_etcd::find_etcd).transpose()?;
    let binary = build::node_binary(args.node_binary.as_deref(), !args.debug)?;
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
    let BenchRun {
        bench_dir,
        work_dir,
        stamp,
        id,
    } = run;
    let mut summary = summary_json(args, &result, stamp);
    println!("{}", render(&summary));
    if let Some(etcd) = &etcd {
        let etcd_dir = bench_dir.join(format!("etcd-{id}"));
        eprintln!("the same puts against etcd ({} members) ...", args.nodes);
        let etcd_result = bench_etcd::measure(etcd, args, &etcd_dir)?;
        let comparison =
            bench_etcd::comparison_json(&summary, &etcd_result, &bench_etcd::version(etcd));
        println!("{}", bench_etcd::render_comparison(&comparison));
        if let (Some(summary), Value::Object(comparison)) = (summary.as_object_mut(), comparison) {
            summary.extend(comparison);
        }
        if !args.keep {
            std::fs::remove_dir_all(&etcd_dir)
                .with_context(|| format!("removing {}", etcd_dir.display()))?;
        }
    }
    let path = bench_dir.join(format!("cluster-{id}.json"));
    let text = serde_json::to_string_pretty(&summary)?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    if args.keep {
        eprintln!("nodes' directories kept in {}", work_dir.display());
    } else if result.errors > 0 {
        // Failed operations in a healthy cluster are worth a look: the node logs stay.
        eprintln!(
            "{} operations failed: nodes' directories (logs) kept in {}",
            result.errors,
            work_dir.display()
        );
    } else {
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
    /// The nodes' directories, `<bench_dir>/<name>-<id>`.
    pub work_dir: PathBuf,
    /// When the run began, in Unix seconds.
    pub stamp: u64,
    /// `<stamp>-<process id>`: names this run's files, so that runs begun in the same second
    /// (tests run side by side) never share or remove each other's.
    pub id: String,
}

/// The launched nodes, as a measurement sees them.
#[derive(Debug)]
pub struct BenchNodes {
    /// Admin API addresses, in node id order.
    pub admin_addrs: Vec<SocketAddr>,
    /// Process ids by node id.
    pub pids: BTreeMap<u64, u32>,
}

/// Launches `cluster` for the benchmark `name`, runs `measure` against the nodes, then stops
/// every node; on a failed measurement, prints the nodes' last log lines.
pub fn on_cluster<T>(
    name: &str,
    cluster: BenchCluster,
    measure: impl FnOnce(&BenchNodes) -> Result<T>,
) -> Result<(T, BenchRun)> {
    let stamp = unix_seconds();
    let id = format!("{stamp}-{}", std::process::id());
    let bench_dir = build::target_dir()?.join("bench");
    let work_dir = bench_dir.join(format!("{name}-{id}"));
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
        // Measured as deployed: the node's own snapshot interval.
        snapshot_logs_since_last: None,
    };
    let launched = Cluster::launch(&spec, &processes)?;
    launched.wait_placed(crate::cluster::READY_TIMEOUT)?;
    let nodes = BenchNodes {
        admin_addrs: launched.admin_addrs().into_values().collect(),
        pids: launched
            .node_ids()
            .into_iter()
            .filter_map(|id| Some((id, launched.pid(id)?)))
            .collect(),
    };
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
        id,
    };
    Ok((result, run))
}

/// For reads, fills their keys first; then a warm-up and `args.seconds` of closed-loop
/// operations from `args.clients` threads.
fn measure(nodes: &BenchNodes, args: &BenchClusterArgs) -> Result<BenchResult> {
    let addrs = &nodes.admin_addrs;
    let keys = match args.op {
        BenchOp::Put => BENCH_KEYS,
        BenchOp::Get | BenchOp::GetStale => {
            fill(addrs, args)?;
            READ_KEYS
        }
    };
    run_clients(args, &nodes.pids, |client, measure_from, stop| {
        // One client of its own per thread: clones of one would share its connection pool.
        let api = Api::new(REQUEST_TIMEOUT);
        closed_loop(
            client,
            keys,
            args.value_bytes,
            measure_from,
            stop,
            |rng, key, value| {
                let node = addrs[rng.random_range(0..addrs.len())];
                match args.op {
                    BenchOp::Put => api.put(node, key, value).map(|_| true),
                    BenchOp::Get => api.get(node, key).map(|found| found.is_some()),
                    BenchOp::GetStale => api.get_stale(node, key).map(|found| found.is_some()),
                }
            },
        )
    })
}

/// Runs `args.clients` threads of `client` (given its number, the start of the measured time
/// and the stop flag) through a warm-up and `args.seconds` measured, and the CPU time of the
/// processes `pids` over the measured time.
pub fn run_clients(
    args: &BenchClusterArgs,
    pids: &BTreeMap<u64, u32>,
    client: impl Fn(u64, Instant, &AtomicBool) -> ClientResult + Sync,
) -> Result<BenchResult> {
    let stop = AtomicBool::new(false);
    let never = AtomicBool::new(false);
    let measure_from = Instant::now() + WARM_UP;
    let measured = Duration::from_secs(args.seconds);
    let (results, usage) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..u64::from(args.clients))
            .map(|number| {
                let (stop, client) = (&stop, &client);
                scope.spawn(move || client(number, measure_from, stop))
            })
            .collect();
        crate::nemesis::sleep_until(measure_from, &never);
        let before = usage(pids);
        crate::nemesis::sleep_until(measure_from + measured, &never);
        let after = usage(pids);
        stop.store(true, Ordering::Relaxed);
        let results = handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| anyhow!("a bench client panicked"))
            })
            .collect::<Result<Vec<ClientResult>>>()?;
        anyhow::Ok((results, after?.since(&before?)))
    })?;
    merge(results, measured, usage)
}

/// Writes keys `0..READ_KEYS` from `args.clients` threads, with a progress line every second.
fn fill(nodes: &[SocketAddr], args: &BenchClusterArgs) -> Result<()> {
    let started = Instant::now();
    let filled = AtomicU32::new(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.clients)
            .map(|client| {
                let filled = &filled;
                scope.spawn(move || fill_keys(client, nodes, args, filled))
            })
            .collect();
        let mut next_line = started + Duration::from_secs(1);
        while !handles.iter().all(|handle| handle.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            if Instant::now() >= next_line {
                eprintln!(
                    "filling: {}/{READ_KEYS} keys",
                    filled.load(Ordering::Relaxed)
                );
                next_line += Duration::from_secs(1);
            }
        }
        handles.into_iter().try_for_each(|handle| {
            handle
                .join()
                .map_err(|_| anyhow!("a fill client panicked"))?
        })
    })?;
    eprintln!(
        "filled {READ_KEYS} keys in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes every `args.clients`-th key from `client` on, each through the nodes in turn.
fn fill_keys(
    client: u32,
    nodes: &[SocketAddr],
    args: &BenchClusterArgs,
    filled: &AtomicU32,
) -> Result<()> {
    let api = Api::new(REQUEST_TIMEOUT);
    let value = vec![b'v'; args.value_bytes as usize];
    for index in (client..READ_KEYS).step_by(args.clients as usize) {
        let key = bench_key(index);
        let node = nodes[index as usize % nodes.len()];
        let mut attempt = 1;
        loop {
            match api.put(node, &key, &value) {
                Reply::Ok(_) => break,
                _ if attempt < FILL_ATTEMPTS => std::thread::sleep(FILL_RETRY_PAUSE),
                reply => anyhow::bail!("filling {key} through {node}: {reply:?}"),
            }
            attempt += 1;
        }
        filled.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// CPU time used so far by every node process and by this process, and bytes the nodes wrote.
pub fn usage(pids: &BTreeMap<u64, u32>) -> Result<Usage> {
    let process_ticks = |process: &str| proc_number(process, "stat", "CPU times", stat_cpu_ticks);
    Ok(Usage {
        nodes: pids
            .iter()
            .map(|(id, pid)| Ok((*id, process_ticks(&pid.to_string())?)))
            .collect::<Result<_>>()?,
        load_generator: process_ticks("self")?,
        nodes_bytes_written: pids
            .values()
            .map(|pid| proc_number(&pid.to_string(), "io", "wchar", io_bytes_written))
            .sum::<Result<u64>>()?,
    })
}

/// The largest resident memory any node process has had since it started (`VmHWM`), in bytes.
pub fn nodes_peak_resident_bytes(pids: &BTreeMap<u64, u32>) -> Result<u64> {
    pids.values()
        .map(|pid| proc_number(&pid.to_string(), "status", "VmHWM", peak_resident_bytes))
        .try_fold(0, |peak, bytes| Ok(peak.max(bytes?)))
}

/// The number `parse` finds in `/proc/<process>/<file>`, `what` naming it in the error.
fn proc_number(
    process: &str,
    file: &str,
    what: &str,
    parse: fn(&str) -> Option<u64>,
) -> Result<u64> {
    let path = format!("/proc/{process}/{file}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse(&text).with_context(|| format!("no {what} in {path}: {text}"))
}

/// The text after `name:` on its line of a `/proc` text, trimmed.
fn proc_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The `VmHWM` line of a `/proc/<pid>/status` text, in bytes.
fn peak_resident_bytes(status: &str) -> Option<u64> {
    let kib: u64 = proc_field(status, "VmHWM")?
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The `wchar` line of a `/proc/<pid>/io` text.
fn io_bytes_written(io: &str) -> Option<u64> {
    proc_field(io, "wchar")?.parse().ok()
}

/// User plus system time (fields 14 and 15) of a `/proc/<pid>/stat` text, in clock ticks.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // Field 2, the command name in parentheses, may hold spaces and parentheses itself.
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after_name.split_whitespace().skip(11);
    let mut ticks = || fields.next()?.parse::<u64>().ok();
    Some(ticks()? + ticks()?)
}

impl Usage {
    /// What was used since `earlier`.
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            nodes: self
                .nodes
                .iter()
                .map(|(id, ticks)| {
                    let before = earlier.nodes.get(id).copied().unwrap_or_default();
                    (*id, ticks.saturating_sub(before))
                })
                .collect(),
            load_generator: self.load_generator.saturating_sub(earlier.load_generator),
            nodes_bytes_written: self
                .nodes_bytes_written
                .saturating_sub(earlier.nodes_bytes_written),
        }
    }

    /// The nodes' time together, in seconds.
    pub fn nodes_seconds(&self) -> f64 {
        self.nodes.values().sum::<u64>() as f64 / USER_HZ
    }

    /// Each node's time in seconds, as JSON keyed by node id.
    pub fn seconds_per_node(&self) -> serde_json::Map<String, Value> {
        self.nodes
            .iter()
            .map(|(id, ticks)| (id.to_string(), json!(*ticks as f64 / USER_HZ)))
            .collect()
    }
}

/// Adds up the clients' histograms and errors.
pub fn merge(results: Vec<ClientResult>, measured: Duration, usage: Usage) -> Result<BenchResult> {
    let mut latencies_us = new_histogram();
    let mut errors = 0;
    let mut error_examples: Vec<String> = Vec::new();
    for result in results {
        latencies_us
            .add(&result.latencies_us)
            .map_err(|error| anyhow!("merging latency histograms: {error:?}"))?;
        errors += result.errors;
        if let Some(error) = result.first_error
            && error_examples.len() < ERROR_EXAMPLES_MAX
            && !error_examples.contains(&error)
        {
            error_examples.push(error);
        }
    }
    Ok(BenchResult {
        measured,
        latencies_us,
        errors,
        error_examples,
        usage,
    })
}

/// The JSON written for a run.
pub fn summary_json(args: &BenchClusterArgs, result: &BenchResult, unix_time: u64) -> Value {
    let histogram = &result.latencies_us;
    let ops = histogram.len();
    let seconds = result.measured.as_secs_f64().max(0.001);
    let written = result.usage.nodes_bytes_written;
    // What the nodes wrote to files for each byte of value put: the replication factor times
    // the log's own write amplification.
    let value_bytes_put = (ops * u64::from(args.value_bytes)) as f64;
    let written_per_value_byte = (args.op == BenchOp::Put && value_bytes_put > 0.0)
        .then(|| written as f64 / value_bytes_put);
    json!({
        "bench": "cluster",
        "op": args.op.name(),
        "unix_time": unix_time,
        "profile": profile(args.node_binary.as_deref(), args.debug),
        "nodes": args.nodes,
        "groups": args.groups,
        "clients": args.clients,
        "value_bytes": args.value_bytes,
        "seconds": result.measured.as_secs_f64(),
        "ops": ops,
        "errors": result.errors,
        "error_examples": result.error_examples,
        "ops_per_second": ops as f64 / seconds,
        "cores": std::thread::available_parallelism().map_or(1, usize::from),
        "cpu_seconds_per_node": result.usage.seconds_per_node(),
        "load_generator_cpu_seconds": result.usage.load_generator as f64 / USER_HZ,
        "nodes_bytes_written": written,
        "nodes_bytes_written_per_value_byte": written_per_value_byte,
        "latency_us": summary_latency(histogram),
    })
}

/// Percentiles, max and mean of a latency histogram in microseconds, as JSON.
pub fn summary_latency(histogram: &Histogram<u64>) -> Value {
    json!({
        "p50": histogram.value_at_quantile(0.50),
        "p99": histogram.value_at_quantile(0.99),
        "p99_9": histogram.value_at_quantile(0.999),
        "max": histogram.max(),
        "mean": histogram.mean(),
    })
}

/// A few readable lines from the summary JSON.
pub fn render(summary: &Value) -> String {
    let latency = &summary["latency_us"];
    let ms = |value: &Value| value.as_f64().unwrap_or(0.0) / 1000.0;
    let seconds = |value: &Value| value.as_f64().unwrap_or(0.0);
    let cpu_per_node: Vec<String> = summary["cpu_seconds_per_node"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(id, used)| format!("node {id} {:.2}", seconds(used)))
        .collect();
    format!(
        "bench cluster ({} profile): {}, {} nodes, {} groups, {} clients, {} B values, {:.0}s\n\
         ops/s {:.0} ({} ops, {} errors)\n\
         latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n\
         cpu s over the measured time ({} cores): {}  load generator {:.2}",
        summary["profile"].as_str().unwrap_or("?"),
        summary["op"].as_str().unwrap_or("?"),
        summary["nodes"],
        summary["groups"],
        summary["clients"],
        summary["value_bytes"],
        seconds(&summary["seconds"]),
        summary["ops_per_second"].as_f64().unwrap_or(0.0),
        summary["ops"],
        summary["errors"],
        ms(&latency["p50"]),
        ms(&latency["p99"]),
        ms(&latency["p99_9"]),
        ms(&latency["max"]),
        summary["cores"],
        cpu_per_node.join("  "),
        seconds(&summary["load_generator_cpu_seconds"]),
    ) + &written_line(summary)
        + &error_lines(summary)
}

/// What the nodes wrote to files, after a newline.
fn written_line(summary: &Value) -> String {
    let megabytes = summary["nodes_bytes_written"].as_f64().unwrap_or(0.0) / 1e6;
    match summary["nodes_bytes_written_per_value_byte"].as_f64() {
        Some(per_byte) => format!(
            "\nnodes wrote {megabytes:.1} MB to files, {per_byte:.2} bytes per value byte put"
        ),
        None => format!("\nnodes wrote {megabytes:.1} MB to files"),
    }
}

/// The run's example errors, one line each, after a newline; nothing without errors.
fn error_lines(summary: &Value) -> String {
    summary["error_examples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|error| format!("\nerror, for example: {error}"))
        .collect()
}

/// The build a benchmark measured, as its JSON names it.
pub fn profile(node_binary: Option<&Path>, debug: bool) -> &'static str {
    match (node_binary, debug) {
        (Some(_), _) => "prebuilt binary",
        (None, true) => "dev",
        (None, false) => "release",
    }
}

/// `operation` on random keys of `0..keys` with a value of `value_bytes` until `stop`, timed
/// from `measure_from` on; `Ok(false)` (a read that finds no value) counts as an error.
pub fn closed_loop(
    client: u64,
    keys: u32,
    value_bytes: u32,
    measure_from: Instant,
    stop: &AtomicBool,
    mut operation: impl FnMut(&mut SmallRng, &str, &[u8]) -> Reply<bool>,
) -> ClientResult {
    let mut rng = SmallRng::seed_from_u64(client);
    let value = vec![b'v'; value_bytes as usize];
    let mut result = ClientResult {
        latencies_us: new_histogram(),
        errors: 0,
        first_error: None,
    };
    while !stop.load(Ordering::Relaxed) {
        let key = bench_key(rng.random_range(0..keys));
        let sent = Instant::now();
        let reply = operation(&mut rng, &key, &value);
        if sent < measure_from {
            continue;
        }
        match reply {
            Reply::Ok(true) => {
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                result
                    .latencies_us
                    .saturating_record(micros.clamp(1, LATENCY_US_MAX));
            }
            Reply::Ok(false) => result.errors += 1,
            failed @ (Reply::Failed(_) | Reply::Refused(_) | Reply::Unknown(_)) => {
                result.errors += 1;
                result
                    .first_error
                    .get_or_insert_with(|| format!("{failed:?}"));
            }
        }
    }
    result
}

fn bench_key(index: u32) -> String {
    format!("b{index:05}")
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

    #[test]
    fn peak_resident_memory_is_read_from_the_status_text() {
        let status =
            "Name:\tnodedb-cluster\nVmPeak:\t 2000000 kB\nVmHWM:\t  431000 kB\nVmRSS:\t 12 kB\n";
        assert_eq!(peak_resident_bytes(status), Some(431_000 * 1024));
        assert_eq!(peak_resident_bytes("VmRSS:\t 12 kB\n"), None);
        let own = BTreeMap::from([(1, std::process::id())]);
        assert!(nodes_peak_resident_bytes(&own).unwrap() > 0);
    }

    fn args() -> BenchClusterArgs {
        BenchClusterArgs {
            nodes: 3,
            groups: 8,
            clients: 2,
            seconds: 10,
            value_bytes: 256,
            op: BenchOp::Put,
            keep: false,
            debug: false,
            node_binary: None,
            vs_etcd: false,
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
            first_error: (errors > 0).then(|| "Unknown(\"timed out\")".to_string()),
        }
    }

    #[test]
    fn clients_merge_into_rates_and_percentiles() {
        let first: Vec<u64> = (1..=500).map(|i| i * 10).collect();
        let second: Vec<u64> = (501..=1000).map(|i| i * 10).collect();
        let result = merge(
            vec![client(&first, 1), client(&second, 2)],
            Duration::from_secs(10),
            Usage::default(),
        )
        .unwrap();
        let summary = summary_json(&args(), &result, 1);
        assert_eq!(summary["op"], "put");
        assert_eq!(summary["ops"], 1000);
        assert_eq!(summary["errors"], 3);
        assert_eq!(summary["error_examples"], json!(["Unknown(\"timed out\")"]));
        assert!(render(&summary).ends_with("error, for example: Unknown(\"timed out\")"));
        assert_eq!(summary["ops_per_second"], 100.0);
        let p50 = summary["latency_us"]["p50"].as_u64().unwrap();
        assert!((4990..=5010).contains(&p50), "p50 {p50}");
        let p999 = summary["latency_us"]["p99_9"].as_u64().unwrap();
        assert!((9980..=10010).contains(&p999), "p99.9 {p999}");
        assert_eq!(summary["profile"], "release");
    }

    #[test]
    fn the_summary_reads_in_milliseconds_and_cpu_seconds() {
        let cpu = Usage {
            nodes: BTreeMap::from([(1, 451), (2, 320), (3, 7)]),
            load_generator: 612,
            nodes_bytes_written: 5_000_000,
        };
        let result = merge(
            vec![client(&[1000, 2000, 3000], 0)],
            Duration::from_secs(1),
            cpu,
        )
        .unwrap();
        let read_args = BenchClusterArgs {
            op: BenchOp::GetStale,
            ..args()
        };
        let summary = summary_json(&read_args, &result, 1);
        assert_eq!(summary["op"], "get-stale");
        assert_eq!(summary["cpu_seconds_per_node"]["1"], 4.51);
        assert_eq!(summary["load_generator_cpu_seconds"], 6.12);
        let text = render(&summary);
        assert!(text.contains("profile): get-stale, 3 nodes"), "{text}");
        assert!(text.contains("ops/s 3 (3 ops, 0 errors)"), "{text}");
        assert!(text.contains("p50 2.00"), "{text}");
        assert!(
            text.contains("node 1 4.51  node 2 3.20  node 3 0.07  load generator 6.12"),
            "{text}"
        );
        assert!(text.ends_with("\nnodes wrote 5.0 MB to files"), "{text}");
        assert!(summary["nodes_bytes_written_per_value_byte"].is_null());
    }

    #[test]
    fn puts_say_what_the_nodes_wrote_per_value_byte() {
        let puts = [1000, 2000, 3000, 4000];
        let value_bytes = u64::from(args().value_bytes);
        let usage = Usage {
            nodes_bytes_written: 3 * puts.len() as u64 * value_bytes + puts.len() as u64 * 64,
            ..Usage::default()
        };
        let result = merge(vec![client(&puts, 0)], Duration::from_secs(1), usage).unwrap();
        let summary = summary_json(&args(), &result, 1);
        let per_byte = summary["nodes_bytes_written_per_value_byte"]
            .as_f64()
            .unwrap();
        assert!((3.0..3.3).contains(&per_byte), "{per_byte}");
        assert!(render(&summary).contains(" bytes per value byte put"));
    }

    #[test]
    fn bytes_written_are_read_from_the_wchar_line() {
        let io = "rchar: 69805\nwchar: 392573668\nsyscr: 12\nwrite_bytes: 400130048\n";
        assert_eq!(io_bytes_written(io), Some(392_573_668));
        assert_eq!(io_bytes_written("rchar: 1\n"), None);
        let own = std::fs::read_to_string("/proc/self/io").unwrap();
        assert!(io_bytes_written(&own).is_some(), "{own}");
    }

    #[test]
    fn cpu_ticks_are_read_past_the_command_name() {
        let stat = "4242 (node (1) x) S 1 4242 4242 0 -1 4194560 2411 0 0 0 \
                    451 37 0 0 20 0 9 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(stat_cpu_ticks(stat), Some(488));
        assert_eq!(stat_cpu_ticks("4242 (node) S 1 2"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(stat_cpu_ticks(&own).is_some(), "{own}");
    }
}

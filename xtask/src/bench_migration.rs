//! `cargo xtask bench migration`: fills one vShard of a local 3-node cluster (release build by
//! default) with `--mb` megabytes, then moves it between data groups `--moves` times while a
//! client keeps writing to it. Reports each move's duration, the copy rate (the vShard is
//! copied once before the fence; after it only the writes made during the copy travel) and the
//! write pause the node measured from the fence to the routing switch, with the writer's
//! slowest write as a cross-check, and the CPU the three nodes used and the bytes they wrote to
//! files per copied megabyte (the writer's load included: on a machine whose cores the nodes
//! share, the copy is CPU-bound). Last, with the nodes stopped, the disk's rate for writes like
//! the Raft logs' (`disk_probe`), and the copy rate it would allow at the bytes written per
//! copied byte: the copy is disk-bound when it comes near that.

use crate::api::{Api, MigrationView, Reply};
use crate::bench::{BenchCluster, BenchNodes, on_cluster, usage};
use crate::cluster::build;
use crate::disk_probe;
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use nodedb_cluster_core::{VShardId, keys_in_vshard, vshard_for_key};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MOVE_WAIT: Duration = Duration::from_secs(120);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const GROUPS: u32 = 8;
/// Bytes each of the disk probe's three writers writes (see `disk_probe`).
const DISK_PROBE_BYTES_EACH: u64 = 256 << 20;
const MIB: f64 = (1 << 20) as f64;

/// `cargo xtask bench migration`.
#[derive(Debug, Clone, Args)]
pub struct BenchMigrationArgs {
    /// Megabytes of data in the moved vShard (at most 512).
    #[arg(long, default_value_t = 100)]
    pub mb: u32,
    /// Number of moves (back and forth between groups).
    #[arg(long, default_value_t = 10)]
    pub moves: u32,
    /// Size of each value written into the vShard.
    #[arg(long, default_value_t = 64 * 1024)]
    pub value_bytes: u32,
    /// Use the debug profile instead of release (numbers are then meaningless).
    #[arg(long)]
    pub debug: bool,
    /// Run this node binary instead of building `nodedb-cluster` (so that two builds can be
    /// measured side by side).
    #[arg(long)]
    pub node_binary: Option<PathBuf>,
    /// Keep the nodes' directories (data and logs) after the run.
    #[arg(long)]
    pub keep: bool,
}

/// One measured move.
#[derive(Debug)]
struct MoveSample {
    took: Duration,
    bytes_copied: u64,
    pause: Option<Duration>,
    slowest_write: Duration,
    /// CPU seconds of all nodes together during the move.
    node_cpu_seconds: f64,
    /// Bytes the nodes wrote to files during the move.
    nodes_bytes_written: u64,
}

pub fn run(args: &BenchMigrationArgs) -> Result<()> {
    if !(1..=512).contains(&args.mb) || !(1..=100).contains(&args.moves) {
        bail!("--mb must be in 1..=512 and --moves in 1..=100");
    }
    if !(1024..=1024 * 1024).contains(&args.value_bytes) {
        bail!("--value-bytes must be in 1024..=1048576");
    }
    let cluster = BenchCluster {
        binary: build::node_binary(args.node_binary.as_deref(), !args.debug)?,
        nodes: 3,
        groups: GROUPS,
        debug: args.debug,
    };
    let ((samples, peak_resident), run) = on_cluster("migration", cluster, |nodes| {
        let samples = measure(nodes, args)?;
        Ok((
            samples,
            crate::bench::nodes_peak_resident_bytes(&nodes.pids)?,
        ))
    })?;
    eprintln!(
        "largest node's peak memory {:.0} MB",
        peak_resident as f64 / 1e6
    );
    // With the nodes stopped: the disk's own rate for the log's kind of writes.
    let disk_rate = disk_probe::synced_write_rate(&run.work_dir, 3, DISK_PROBE_BYTES_EACH)?;
    let summary = summary_json(args, &samples, peak_resident, disk_rate);
    if let (Some(bound), Some(rate)) = (
        summary["copy_mb_per_s_disk_bound"].as_f64(),
        summary["copy_mb_per_s_mean"].as_f64(),
    ) {
        eprintln!(
            "disk: 3 writers syncing like the Raft log wrote {:.0} MB/s together; at the bytes the nodes wrote per copied byte, the disk would let a copy move {bound:.0} MB/s (this one moved {rate:.0}, {:.0}% of that)",
            disk_rate / MIB,
            100.0 * rate / bound,
        );
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    let path = run.bench_dir.join(format!("migration-{}.json", run.id));
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("results: {}", path.display());
    if args.keep {
        eprintln!("nodes' directories kept in {}", run.work_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&run.work_dir);
    }
    Ok(())
}

fn measure(bench: &BenchNodes, args: &BenchMigrationArgs) -> Result<Vec<MoveSample>> {
    let nodes = &bench.admin_addrs[..];
    let api = Api::new(REQUEST_TIMEOUT);
    let vshard = vshard_for_key(b"bench-migration");
    let keys = keys_in(
        vshard,
        (u64::from(args.mb) << 20) / u64::from(args.value_bytes),
    );
    let value = vec![b'v'; args.value_bytes as usize];
    eprintln!(
        "filling {vshard} with {} keys of {} bytes",
        keys.len(),
        args.value_bytes
    );
    let mut owner = 0;
    for key in &keys {
        owner = put(&api, nodes[0], key, &value)?;
    }
    let writer_key = keys[0].clone();
    let stop = AtomicBool::new(false);
    // The slowest write since the move began, and when it began.
    let slowest = Mutex::new((Duration::ZERO, Instant::now()));
    let writes = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let api = Api::new(REQUEST_TIMEOUT);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                if let Reply::Ok(_) = api.put(nodes[1], &writer_key, b"tick") {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                let took = started.elapsed();
                let mut slowest = slowest.lock().unwrap_or_else(|p| p.into_inner());
                if took > slowest.0 {
                    *slowest = (took, started);
                }
            }
        });
        let mut samples = Vec::new();
        let mut result = Ok(());
        for round in 0..args.moves {
            let to = owner % GROUPS + 1;
            let began = Instant::now();
            *slowest.lock().unwrap_or_else(|p| p.into_inner()) = (Duration::ZERO, began);
            let writes_before = writes.load(Ordering::Relaxed);
            let leaders = leaders_of(&api, nodes[0], [0, owner, to]);
            let before = usage(&bench.pids);
            let moved = move_once(&api, nodes, vshard, to)
                .and_then(|moved| Ok((moved, usage(&bench.pids)?.since(&before?))));
            match moved {
                Ok(((took, view), used)) => {
                    let node_cpu_seconds = used.nodes_seconds();
                    let nodes_bytes_written = used.nodes_bytes_written;
                    let acknowledged = writes.load(Ordering::Relaxed) - writes_before;
                    let (slowest_write, at) = *slowest.lock().unwrap_or_else(|p| p.into_inner());
                    eprintln!(
                        "move {round}: group {owner} -> {to} in {took:?}, pause {:?} ms, slowest write {slowest_write:?} (began {:?} into the move), {acknowledged} writes, nodes' CPU {node_cpu_seconds:.2} s, nodes wrote {:.0} MB, leaders (driver, source, target) {leaders}",
                        view.write_pause_ms,
                        at.saturating_duration_since(began),
                        nodes_bytes_written as f64 / 1e6,
                    );
                    samples.push(MoveSample {
                        took,
                        bytes_copied: view.bytes_copied,
                        pause: view.write_pause_ms.map(Duration::from_millis),
                        slowest_write,
                        node_cpu_seconds,
                        nodes_bytes_written,
                    });
                    owner = to;
                }
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer
            .join()
            .map_err(|_| anyhow!("the writer thread panicked"))?;
        result.map(|()| samples)
    })
}

/// Moves `vshard` to group `to` and waits until it is cleaned; the time and the view of the
/// node that drove it.
fn move_once(
    api: &Api,
    nodes: &[SocketAddr],
    vshard: VShardId,
    to: u32,
) -> Result<(Duration, MigrationView)> {
    let started = Instant::now();
    let begun = api.move_vshard(nodes[0], vshard, to)?;
    let mut cleaned_at = None;
    while started.elapsed() < MOVE_WAIT {
        let views: Vec<MigrationView> = nodes
            .iter()
            .filter_map(|node| api.migrations(*node).ok())
            .filter_map(|all| all.into_iter().find(|view| view.id == begun.id))
            .collect();
        if let Some(view) = views.iter().find(|view| view.phase == "aborted") {
            bail!("move {} was given up: {view:?}", begun.id);
        }
        let cleaned: Vec<&MigrationView> = views
            .iter()
            .filter(|view| view.phase == "cleaned")
            .collect();
        if let Some(first) = cleaned.first() {
            let took = *cleaned_at.get_or_insert_with(|| started.elapsed());
            // The pause is known on the node that drove the move; a view without it is
            // accepted only when no node has it a moment later (the driver changed).
            let measured = cleaned.iter().find(|view| view.write_pause_ms.is_some());
            if let Some(view) = measured {
                return Ok((took, (*view).clone()));
            }
            if started.elapsed() > took + Duration::from_secs(2) {
                return Ok((took, (*first).clone()));
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    bail!("move {} did not finish within {MOVE_WAIT:?}", begun.id)
}

/// The leaders of `groups` as `node` sees them, e.g. `[1, 3, 1]` (`?` where unknown): the
/// driver is the metadata group's leader, and where it leads neither data group the copy
/// crosses one more QUIC hop.
fn leaders_of(api: &Api, node: SocketAddr, groups: [u32; 3]) -> String {
    let view = api.cluster(node).ok();
    let leader = |group: u32| {
        view.as_ref()
            .and_then(|view| view.groups.iter().find(|g| g.id == group)?.leader)
            .map_or("?".to_string(), |leader| leader.to_string())
    };
    format!("[{}]", groups.map(leader).join(", "))
}

/// `count` distinct keys that all hash to `vshard`.
fn keys_in(vshard: VShardId, count: u64) -> Vec<String> {
    keys_in_vshard("m", vshard)
        .take(count.max(1) as usize)
        .collect()
}

fn put(api: &Api, node: SocketAddr, key: &str, value: &[u8]) -> Result<u32> {
    for _ in 0..20 {
        match api.put(node, key, value) {
            Reply::Ok(Some(receipt)) => return Ok(receipt.group),
            Reply::Ok(None) => bail!("a PUT answered without a receipt"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    bail!("PUT {key} kept failing")
}

fn percentile(sorted: &[Duration], quantile: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let index = ((last as f64) * quantile).round() as usize;
    Some(sorted[index.min(last)].as_secs_f64() * 1000.0)
}

fn summary_json(
    args: &BenchMigrationArgs,
    samples: &[MoveSample],
    peak_resident: u64,
    disk_bytes_per_second: f64,
) -> Value {
    let mut pauses: Vec<Duration> = samples.iter().filter_map(|sample| sample.pause).collect();
    pauses.sort();
    let mut took: Vec<Duration> = samples.iter().map(|sample| sample.took).collect();
    took.sort();
    let mut slowest: Vec<Duration> = samples.iter().map(|sample| sample.slowest_write).collect();
    slowest.sort();
    let rates: Vec<f64> = samples
        .iter()
        .map(|sample| sample.bytes_copied as f64 / MIB / sample.took.as_secs_f64())
        .collect();
    let mean_rate = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    let copied: u64 = samples.iter().map(|sample| sample.bytes_copied).sum();
    let copied_mb = copied as f64 / MIB;
    let node_cpu_seconds: f64 = samples.iter().map(|sample| sample.node_cpu_seconds).sum();
    let written: u64 = samples
        .iter()
        .map(|sample| sample.nodes_bytes_written)
        .sum();
    let written_per_copied = (copied > 0).then(|| written as f64 / copied as f64);
    json!({
        "benchmark": "migration",
        "profile": crate::bench::profile(args.node_binary.as_deref(), args.debug),
        "vshard_mb": args.mb,
        "value_bytes": args.value_bytes,
        "moves": samples.len(),
        "move_ms_p50": percentile(&took, 0.5),
        "copy_mb_per_s_mean": mean_rate,
        "node_cpu_ms_per_copied_mb": (copied_mb > 0.0).then(|| node_cpu_seconds * 1000.0 / copied_mb),
        "nodes_bytes_written_per_copied_byte": written_per_copied,
        "disk_synced_write_mb_per_s": disk_bytes_per_second / MIB,
        "copy_mb_per_s_disk_bound": written_per_copied.map(|per_byte| disk_bytes_per_second / MIB / per_byte),
        "write_pause_ms_p50": percentile(&pauses, 0.5),
        "write_pause_ms_p99": percentile(&pauses, 0.99),
        "slowest_write_ms_p50": percentile(&slowest, 0.5),
        "slowest_write_ms_max": percentile(&slowest, 1.0),
        "node_peak_resident_mb_max": peak_resident as f64 / 1e6,
    })
}

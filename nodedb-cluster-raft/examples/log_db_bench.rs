//! Throughput of the Raft log file on the commit path: appends/s and commits/s (one fsync each,
//! two with redb quick repair) with 1 and 64 concurrent appenders over 1 and 8 groups. Each
//! appender waits for its append to be durable before the next one, as a Raft leader does per
//! client request; appenders of one group share the group's next index, as openraft's per-group
//! pipeline does. The `recovery` mode times reopening after an unclean exit instead.
//!
//! Run: `cargo run --release -p nodedb-cluster-raft --example log_db_bench [seconds] [payload]`
//! or `... --example log_db_bench recovery [entries]`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodedb_cluster_core::GroupId;
use nodedb_cluster_raft::log_db::{LogDb, LogDbError, LogDbOptions};
use tokio::sync::oneshot;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), LogDbError> {
    let mut args = std::env::args().skip(1).peekable();
    match args.peek().map(String::as_str) {
        Some("recovery") => return recovery(args.nth(1)),
        Some("fill") => return fill(args.skip(1).collect()).await,
        _ => {}
    }
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let payload_bytes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    println!("run {seconds} s per case, payload {payload_bytes} B");
    println!("quick_repair appenders groups   appends/s    commits/s  appends/commit");
    let cases = [false, true].into_iter().flat_map(|quick_repair| {
        [(1, 1), (1, 8), (64, 1), (64, 8)]
            .map(|(appenders, groups)| (quick_repair, appenders, groups))
    });
    for (quick_repair, appenders, groups) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = LogDbOptions {
            quick_repair,
            ..LogDbOptions::default()
        };
        let db = LogDb::open_with(&dir.path().join("raft.redb"), options)?;
        let run = Duration::from_secs(seconds);
        let appends = run_case(&db, appenders, groups, payload_bytes, run).await?;
        let stats = db.stats();
        let secs = run.as_secs_f64();
        println!(
            "{quick_repair:>12} {appenders:>9} {groups:>6} {:>11.0} {:>12.0} {:>15.1}",
            appends as f64 / secs,
            stats.batches_committed as f64 / secs,
            stats.operations_committed as f64 / stats.batches_committed.max(1) as f64,
        );
        db.shutdown();
    }
    Ok(())
}

async fn run_case(
    db: &LogDb,
    appenders: u32,
    groups: u32,
    payload_bytes: usize,
    run: Duration,
) -> Result<u64, LogDbError> {
    let next: Arc<Vec<Mutex<u64>>> = Arc::new((0..groups).map(|_| Mutex::new(1)).collect());
    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    for appender in 0..appenders {
        let db = db.clone();
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let mut count = 0u64;
            while Instant::now() < deadline {
                // Round robin, so that even one appender spreads over every group.
                let group = ((u64::from(appender) + count) % u64::from(groups)) as u32;
                let (sender, receiver) = oneshot::channel();
                {
                    let mut index = next[group as usize].lock().expect("index lock");
                    db.append(
                        GroupId(group),
                        vec![(*index, vec![0xab; payload_bytes])],
                        Box::new(move |result| {
                            let _ = sender.send(result);
                        }),
                    );
                    *index += 1;
                }
                receiver.await.unwrap_or(Err(LogDbError::Closed))?;
                count += 1;
            }
            Ok::<u64, LogDbError>(count)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("appender task")?;
    }
    Ok(total)
}

/// Fills a file in a child process that exits without closing it (like a crash after its last
/// commit), then times the reopen, with and without quick repair.
fn recovery(entries: Option<String>) -> Result<(), LogDbError> {
    let entries: u64 = entries.and_then(|a| a.parse().ok()).unwrap_or(200_000);
    println!("recovery after an unclean exit, {entries} entries of 256 B over 8 groups");
    for quick_repair in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("raft.redb");
        let status = std::process::Command::new(std::env::current_exe().expect("own path"))
            .args(["fill", &path.display().to_string(), &entries.to_string()])
            .arg(quick_repair.to_string())
            .status()
            .expect("run filler");
        assert!(status.success(), "filler failed: {status}");
        let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let started = Instant::now();
        let db = LogDb::open(&path)?;
        let reopen = started.elapsed();
        let last = db.last_index(GroupId(0))?;
        println!(
            "quick_repair {quick_repair:>5}: file {:>6.1} MiB, reopen {:>8.1} ms, last index {last:?}",
            file_bytes as f64 / (1024.0 * 1024.0),
            reopen.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

/// Child side of `recovery`: `fill PATH ENTRIES QUICK_REPAIR`.
async fn fill(args: Vec<String>) -> Result<(), LogDbError> {
    let [path, entries, quick_repair] = args.as_slice() else {
        panic!("usage: fill PATH ENTRIES QUICK_REPAIR");
    };
    let entries: u64 = entries.parse().expect("entries");
    let options = LogDbOptions {
        quick_repair: quick_repair == "true",
        ..LogDbOptions::default()
    };
    let db = LogDb::open_with(std::path::Path::new(path), options)?;
    let per_group = entries / 8;
    let batch = 1000;
    let mut start = 1;
    while start <= per_group {
        let end = (start + batch).min(per_group + 1);
        for group in 0..8 {
            let payloads = (start..end).map(|i| (i, vec![0xcd; 256])).collect();
            db.append_durable(GroupId(group), payloads).await?;
        }
        start = end;
    }
    // Exit without closing the file, as a crash right after the last commit would.
    std::process::exit(0);
}

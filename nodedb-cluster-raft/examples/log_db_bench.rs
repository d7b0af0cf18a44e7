//! Throughput of the Raft log file on the commit path: appends/s and commits/s (one fsync each,
//! two with redb quick repair) with 1 and 64 concurrent appenders over 1 and 8 groups. Each appender waits for its append to be durable
//! before the next one, as a Raft leader does per client request; appenders of one group share
//! the group's next index, as openraft's per-group pipeline does.
//!
//! Run: `cargo run --release -p nodedb-cluster-raft --example log_db_bench [seconds] [payload]`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodedb_cluster_core::GroupId;
use nodedb_cluster_raft::log_db::{LogDb, LogDbError, LogDbOptions};
use tokio::sync::oneshot;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), LogDbError> {
    let mut args = std::env::args().skip(1);
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

//! Crash test of the Raft log file: a child process (this test binary, re-executed) appends to
//! several groups and reports each durable append on stdout; the parent kills it with SIGKILL at
//! seeded moments, reopens the file and checks that every reported append is there with its
//! exact bytes and that every group's log is contiguous.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nodedb_cluster_core::GroupId;
use nodedb_cluster_raft::log_db::{LogDb, LogDbOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Set in the child's environment to the log file path.
const CHILD_ENV: &str = "NODEDB_LOG_DB_CRASH_CHILD";
/// Set in the child's environment to commit with redb quick repair (odd rounds).
const QUICK_REPAIR_ENV: &str = "NODEDB_LOG_DB_CRASH_QUICK_REPAIR";
const GROUPS: u32 = 4;
const ROUNDS: usize = 12;
/// Durable appends the parent waits for before killing, at most.
const KILL_AFTER_MAX: usize = 300;
const WAIT_MAX: Duration = Duration::from_secs(60);
/// The child stops by itself after this long or this many appends per group, whichever first.
const CHILD_RUN_MAX: Duration = Duration::from_secs(120);
const CHILD_APPENDS_MAX: u64 = 200_000;

/// Deterministic payload of `index` in `group`, so that a rewrite after a crash is identical.
fn payload(group: u32, index: u64) -> Vec<u8> {
    let mut bytes = format!("group {group} index {index};").into_bytes();
    bytes.resize(bytes.len() + (index % 97) as usize * 3, (index % 251) as u8);
    bytes
}

#[test]
fn log_db_crash_child_process() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return; // Only does something when re-executed by the parent test.
    };
    let options = LogDbOptions {
        quick_repair: std::env::var(QUICK_REPAIR_ENV).is_ok(),
        ..LogDbOptions::default()
    };
    let db = LogDb::open_with(Path::new(&path), options).expect("child: open log");
    let started = Instant::now();
    let appenders: Vec<_> = (0..GROUPS)
        .map(|group| {
            let db = db.clone();
            std::thread::spawn(move || append_forever(&db, group, started))
        })
        .collect();
    println!("ready");
    for appender in appenders {
        appender.join().expect("child appender");
    }
}

fn append_forever(db: &LogDb, group: u32, started: Instant) {
    let id = GroupId(group);
    let mut next = db.last_index(id).unwrap().map_or(1, |last| last + 1);
    let mut appended = 0u64;
    while appended < CHILD_APPENDS_MAX && started.elapsed() < CHILD_RUN_MAX {
        let count = 1 + next % 3;
        let entries: Vec<(u64, Vec<u8>)> = (next..next + count)
            .map(|i| (i, payload(group, i)))
            .collect();
        let last = next + count - 1;
        db.append(
            id,
            entries,
            Box::new(move |result| {
                result.expect("child: append failed");
                println!("durable {group} {last}");
            }),
        );
        next += count;
        appended += count;
    }
}

#[test]
fn log_db_crash_keeps_every_durable_append() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let seed: u64 = std::env::var("NODEDB_LOG_DB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1099);
    println!("crash test seed {seed} (set NODEDB_LOG_DB_CRASH_SEED to replay)");
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let mut durable_max = [0u64; GROUPS as usize];
    for round in 0..ROUNDS {
        let kill_after = rng.random_range(0..=KILL_AFTER_MAX);
        let reported = run_child_and_kill(&path, kill_after, round % 2 == 1);
        for (group, index) in reported {
            let slot = &mut durable_max[group as usize];
            *slot = (*slot).max(index);
        }
        verify(&path, &durable_max, round, seed);
        println!(
            "round {round}: killed after {kill_after} reports, durable through {durable_max:?}"
        );
    }
}

fn run_child_and_kill(path: &Path, kill_after: usize, quick_repair: bool) -> Vec<(u32, u64)> {
    let mut command = Command::new(std::env::current_exe().unwrap());
    if quick_repair {
        command.env(QUICK_REPAIR_ENV, "1");
    }
    let mut child = command
        .args([
            "--exact",
            "log_db_crash_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut reported = Vec::new();
    let deadline = Instant::now() + WAIT_MAX;
    let mut ready = false;
    while !ready || reported.len() < kill_after {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = receiver
            .recv_timeout(left)
            .expect("child stopped reporting");
        // The harness may print its own text in front on the same line.
        ready |= line.ends_with("ready");
        reported.extend(parse_durable(&line));
    }
    child.kill().expect("kill child");
    child.wait().expect("reap child");
    // Lines already written before the kill are just as much a promise.
    reader.join().expect("stdout reader");
    reported.extend(receiver.try_iter().filter_map(|line| parse_durable(&line)));
    reported
}

fn parse_durable(line: &str) -> Option<(u32, u64)> {
    let (_, rest) = line.split_once("durable ")?;
    let mut words = rest.split(' ');
    let group = words.next()?.parse().ok()?;
    let index = words.next()?.parse().ok()?;
    words.next().is_none().then_some((group, index))
}

fn verify(path: &Path, durable_max: &[u64], round: usize, seed: u64) {
    let db = LogDb::open(path).expect("reopen after kill");
    for group in 0..GROUPS {
        let id = GroupId(group);
        let promised = durable_max[group as usize];
        let last = db.last_index(id).unwrap().unwrap_or(0);
        assert!(
            last >= promised,
            "round {round} seed {seed}: {id} ends at {last} but {promised} was reported durable"
        );
        if last == 0 {
            continue;
        }
        assert_eq!(
            db.first_index(id).unwrap(),
            Some(1),
            "round {round} seed {seed}: {id}"
        );
        let entries = db.entries(id, 1..last + 1).unwrap();
        assert_eq!(
            entries.len() as u64,
            last,
            "round {round} seed {seed}: {id} has a hole"
        );
        for (position, (index, bytes)) in entries.iter().enumerate() {
            assert_eq!(
                *index,
                position as u64 + 1,
                "round {round} seed {seed}: {id}"
            );
            assert_eq!(
                *bytes,
                payload(group, *index),
                "round {round} seed {seed}: {id} index {index} has wrong bytes"
            );
        }
    }
}

//! kill -9 of a process in the middle of writing: a child process (this test binary re-run
//! with an env var) saves metadata in a loop and reports each save after it returns; the
//! parent kills it at seeded random moments and checks after each kill that the catalog opens
//! and holds a fully committed state at least as new as the last one reported.

use crate::{Payload, SeededRandom, test_seed};
use nodedb_cluster_catalog::{CATALOG_FILE_NAME, Catalog, CatalogError};
use nodedb_cluster_core::NodeId;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Set in the child's environment to the data dir it writes to.
const WRITER_DIR_ENV: &str = "NODEDB_CATALOG_CRASH_WRITER_DIR";
const NODE: NodeId = NodeId(9);
const KILLS_MAX: u32 = 20;
/// Migration checkpoints the writer rotates through, so that they are rewritten too.
const CHECKPOINT_IDS: u64 = 4;

#[test]
fn kill_during_writes_never_loses_or_tears_a_committed_state() {
    let seed = test_seed(0x0c0f_fee0);
    let mut random = SeededRandom::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut kills_after_progress = 0;
    for kill in 0..KILLS_MAX {
        let context = format!("seed {seed}, kill {kill}");
        let mut child = spawn_writer(dir.path());
        let lines = forward_lines(&mut child);
        let opened_deadline = Instant::now() + Duration::from_secs(30);
        wait_for_line(&lines, "opened", opened_deadline, &context);
        if kill == 0 {
            let error = Catalog::open(dir.path(), NODE).unwrap_err();
            assert!(
                matches!(error, CatalogError::Locked { .. }),
                "{context}: open while the writer runs gave {error:?}"
            );
        }
        // The kill moment is the fault being injected, not a synchronisation.
        std::thread::sleep(Duration::from_millis(random.between(5, 50)));
        child.kill().unwrap();
        child.wait().unwrap();
        let reported = last_reported(&lines);

        let catalog = Catalog::open(dir.path(), NODE)
            .unwrap_or_else(|error| panic!("{context}: reopen after kill failed: {error}"));
        let stored = catalog.load_metadata::<Payload>().unwrap();
        let stored_index = stored.as_ref().map_or(0, |(index, _)| *index);
        if let Some((index, payload)) = &stored {
            assert!(
                *index == payload.index && payload.is_consistent(),
                "{context}: torn metadata at {index}: {payload:?}"
            );
        }
        assert!(
            stored_index >= reported,
            "{context}: saved {reported} was reported, {stored_index} survived"
        );
        for (id, checkpoint) in catalog.list_migration_checkpoints::<Payload>().unwrap() {
            assert!(
                checkpoint.is_consistent() && checkpoint.index % CHECKPOINT_IDS == id,
                "{context}: torn checkpoint {id}: {checkpoint:?}"
            );
            assert!(
                checkpoint.index <= stored_index,
                "{context}: checkpoint from the future"
            );
        }
        if reported > 0 {
            let newest = reported % CHECKPOINT_IDS;
            let checkpoint = catalog
                .load_migration_checkpoint::<Payload>(newest)
                .unwrap();
            assert!(
                checkpoint.is_some_and(|checkpoint| checkpoint.index >= reported),
                "{context}: checkpoint of reported save {reported} lost"
            );
            kills_after_progress += 1;
        }
        catalog.close().unwrap();
    }
    assert!(
        kills_after_progress > 0,
        "seed {seed}: the writer never got to write"
    );
    let catalog = Catalog::open(dir.path(), NODE).unwrap();
    eprintln!(
        "seed {seed}: {KILLS_MAX} kills, {kills_after_progress} after progress, final applied \
         index {:?}",
        catalog.metadata_applied_index().unwrap()
    );
}

#[test]
fn kill_during_creation_never_leaves_a_half_catalog() {
    let seed = test_seed(0x00c4_ea7e);
    let mut random = SeededRandom::new(seed);
    let kills_max = 10;
    for kill in 0..kills_max {
        let context = format!("seed {seed}, kill {kill}");
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_writer(dir.path());
        let lines = forward_lines(&mut child);
        // Early kills land before, during or just after the file is created.
        std::thread::sleep(Duration::from_millis(random.between(0, 30)));
        child.kill().unwrap();
        child.wait().unwrap();
        let reported = last_reported(&lines);

        let catalog = Catalog::open(dir.path(), NODE)
            .unwrap_or_else(|error| panic!("{context}: open after kill failed: {error}"));
        let stored = catalog.metadata_applied_index().unwrap().unwrap_or(0);
        assert!(
            stored >= reported,
            "{context}: {reported} reported, {stored} stored"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![CATALOG_FILE_NAME],
            "{context}: staging file left behind"
        );
    }
}

/// The writer loop, run only inside the child process.
#[test]
fn writer_child() {
    let Ok(dir) = std::env::var(WRITER_DIR_ENV) else {
        return;
    };
    let catalog = Catalog::open(&dir, NODE).unwrap();
    let start = catalog.metadata_applied_index().unwrap().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nopened").unwrap();
    out.flush().unwrap();
    let saves_max = 100_000;
    let deadline = Instant::now() + Duration::from_secs(60);
    for index in start + 1..=start + saves_max {
        if Instant::now() > deadline {
            break;
        }
        let payload = Payload::for_index(index);
        catalog.save_metadata(index, &payload).unwrap();
        catalog
            .save_migration_checkpoint(index % CHECKPOINT_IDS, &payload)
            .unwrap();
        writeln!(out, "committed {index}").unwrap();
        out.flush().unwrap();
    }
}

fn spawn_writer(dir: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "crash::writer_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Forwards the child's stdout lines over a channel, so that the parent can wait with a
/// deadline. The channel ends when the child's stdout closes (it exited or was killed).
fn forward_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

fn wait_for_line(lines: &mpsc::Receiver<String>, wanted: &str, deadline: Instant, context: &str) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            // The test harness may print its own text before ours on the same line.
            Ok(line) if line.ends_with(wanted) => return,
            Ok(_) => {}
            Err(error) => panic!("{context}: writer never printed {wanted:?}: {error}"),
        }
    }
}

/// The highest index the killed child reported as saved (0 if none). Drains the channel to its
/// end, which comes when the killed child's stdout is closed.
fn last_reported(lines: &mpsc::Receiver<String>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reported = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some((_, index)) = line.split_once("committed ") {
                    reported = reported.max(index.parse().unwrap());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return reported,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("killed writer's stdout never closed"),
        }
    }
}

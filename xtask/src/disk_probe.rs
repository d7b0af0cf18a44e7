//! The disk's rate for writes made the way the nodes' Raft logs make them: one writer per node,
//! all at once, each appending 1 MiB writes to a file of its own and syncing every 8 MiB, then
//! dropping the synced pages from the page cache (`log_db/backend.rs` does the same). What a
//! copy whose every byte the nodes write `n` times together could move at most is this rate
//! divided by `n`.

use anyhow::{Context, Result};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

const WRITE_BYTES: usize = 1 << 20;
const SYNC_EVERY_BYTES: u64 = 8 << 20;

/// Bytes per second that `writers` writers of `bytes_each` bytes wrote together into `dir`
/// (their files are removed afterwards).
pub fn synced_write_rate(dir: &Path, writers: usize, bytes_each: u64) -> Result<f64> {
    let began = Instant::now();
    let written: Result<Vec<u64>> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..writers)
            .map(|writer| {
                let path = dir.join(format!("disk-probe-{writer}"));
                scope.spawn(move || write_synced(&path, bytes_each))
            })
            .collect();
        writers
            .into_iter()
            .map(|writer| {
                writer
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let written: u64 = written?.iter().sum();
    Ok(written as f64 / began.elapsed().as_secs_f64())
}

fn write_synced(path: &Path, bytes: u64) -> Result<u64> {
    let what = || format!("disk probe {}", path.display());
    let mut file = File::create(path).with_context(what)?;
    // Random, not a repeated byte, which a storage layer could compress or deduplicate.
    let mut block = vec![0u8; WRITE_BYTES];
    SmallRng::seed_from_u64(bytes).fill(&mut block[..]);
    let (mut written, mut unsynced) = (0, 0);
    while written < bytes {
        file.write_all(&block).with_context(what)?;
        written += WRITE_BYTES as u64;
        unsynced += WRITE_BYTES as u64;
        if unsynced >= SYNC_EVERY_BYTES || written >= bytes {
            file.sync_data().with_context(what)?;
            // Advice only, as in the log: a kernel that ignores it keeps the pages cached.
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
            unsynced = 0;
        }
    }
    drop(file);
    std::fs::remove_file(path).with_context(what)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_writes_what_it_says_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let rate = synced_write_rate(dir.path(), 2, 3 * WRITE_BYTES as u64).unwrap();
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

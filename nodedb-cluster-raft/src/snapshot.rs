//! Snapshot files under a group's directory: a checksummed, chunk-framed copy of the state
//! machine plus the Raft snapshot metadata. The same bytes are streamed to followers.
//!
//! Layout (little endian): `"NDBSNAP\0"`, version `u8`, `u32` meta length, postcard meta, then
//! chunks as `u32` length (1..=chunk max) + bytes, a `u32` zero terminator, and a `u32` CRC32C
//! of everything before it. A file is written to a temporary name, fsynced, then renamed, so a
//! crash leaves either the old snapshot or the new one, never a torn one.

use crate::log_db::drop_cached_pages;
use crate::state_machine::{SNAPSHOT_CHUNK_BYTES_MAX, SnapshotChunks, StateMachineError};
use crate::types::SnapshotMeta;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"NDBSNAP\0";
/// 2: the first chunk is the replica header (vShard claims), see `replica.rs`.
const FILE_VERSION: u8 = 2;
/// Largest encoded snapshot metadata accepted from disk or a peer.
const META_BYTES_MAX: u32 = 1024 * 1024;
/// Largest snapshot file this node writes or accepts.
pub const SNAPSHOT_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024 * 1024;

/// A complete, verified snapshot file: what openraft passes around as the snapshot data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub crc32c: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot io at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt snapshot {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    StateMachine(#[from] StateMachineError),
}

/// Writes a snapshot of `meta` with the data of `chunks` into `dir`, durably.
pub fn write_snapshot(
    dir: &Path,
    meta: &SnapshotMeta,
    chunks: &mut dyn SnapshotChunks,
) -> Result<SnapshotFile, SnapshotError> {
    fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
    let temporary = dir.join("building.tmp");
    let file = File::create(&temporary).map_err(|source| io_error(&temporary, source))?;
    let mut writer = CrcWriter {
        inner: BufWriter::new(file),
        crc: 0,
        bytes: 0,
        unsynced: 0,
    };
    let result = (|| -> io::Result<()> {
        writer.write_all(MAGIC)?;
        writer.write_all(&[FILE_VERSION])?;
        let meta_bytes = postcard::to_stdvec(meta).map_err(io::Error::other)?;
        writer.write_all(&(meta_bytes.len() as u32).to_le_bytes())?;
        writer.write_all(&meta_bytes)?;
        Ok(())
    })();
    result.map_err(|source| io_error(&temporary, source))?;
    while let Some(chunk) = chunks.next_chunk()? {
        if chunk.is_empty() {
            continue;
        }
        if chunk.len() > SNAPSHOT_CHUNK_BYTES_MAX {
            return Err(StateMachineError::Corrupt(format!(
                "snapshot chunk of {} bytes exceeds {SNAPSHOT_CHUNK_BYTES_MAX}",
                chunk.len()
            ))
            .into());
        }
        let frame = (|| -> io::Result<()> {
            writer.write_all(&(chunk.len() as u32).to_le_bytes())?;
            writer.write_all(&chunk)?;
            writer.sync_every_so_often()
        })();
        frame.map_err(|source| io_error(&temporary, source))?;
    }
    let finish = (|| -> io::Result<(u64, u32)> {
        writer.write_all(&0u32.to_le_bytes())?;
        let crc = writer.crc;
        writer.inner.write_all(&crc.to_le_bytes())?;
        let file = writer
            .inner
            .into_inner()
            .map_err(|error| error.into_error())?;
        file.sync_all()?;
        drop_cached_pages(&file);
        Ok((writer.bytes + 4, crc))
    })();
    let (bytes, crc32c) = finish.map_err(|source| io_error(&temporary, source))?;
    let path = dir.join(file_name(meta));
    install_file(&temporary, &path)?;
    Ok(SnapshotFile {
        path,
        bytes,
        crc32c,
    })
}

/// Moves a complete temporary file to `path` durably and removes older snapshots in its dir.
pub fn install_file(temporary: &Path, path: &Path) -> Result<(), SnapshotError> {
    fs::rename(temporary, path).map_err(|source| io_error(path, source))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
    remove_other_snapshots(path)
}

/// Deletes every snapshot file in the directory of `keep` except `keep` itself.
pub fn remove_other_snapshots(keep: &Path) -> Result<(), SnapshotError> {
    let path = keep;
    let dir = path.parent().unwrap_or(Path::new("."));
    let entries = fs::read_dir(dir).map_err(|source| io_error(dir, source))?;
    for entry in entries.flatten() {
        let other = entry.path();
        let is_snapshot = other
            .extension()
            .is_some_and(|extension| extension == "snap");
        if is_snapshot && other != path {
            let _ = fs::remove_file(&other);
        }
    }
    Ok(())
}

/// Reads and verifies the snapshot file at `path`: checksum, framing and metadata.
pub fn open_snapshot(path: &Path) -> Result<(SnapshotMeta, SnapshotFile), SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|source| io_error(path, source))?;
    let length = file
        .metadata()
        .map_err(|source| io_error(path, source))?
        .len();
    if !(8 + 1 + 4 + 4 + 4..=SNAPSHOT_FILE_BYTES_MAX).contains(&length) {
        return Err(corrupt(format!("length {length} out of range")));
    }
    let mut reader = BufReader::new(file);
    let mut crc = 0u32;
    let mut remaining = length - 4;
    let mut buffer = vec![0u8; 64 * 1024];
    while remaining > 0 {
        let want = remaining.min(buffer.len() as u64) as usize;
        reader
            .read_exact(&mut buffer[..want])
            .map_err(|source| io_error(path, source))?;
        crc = crc32c::crc32c_append(crc, &buffer[..want]);
        remaining -= want as u64;
    }
    let mut stored = [0u8; 4];
    reader
        .read_exact(&mut stored)
        .map_err(|source| io_error(path, source))?;
    if u32::from_le_bytes(stored) != crc {
        return Err(corrupt("checksum mismatch".to_string()));
    }
    let mut chunks = FileChunks::open(path)?;
    let meta = chunks
        .meta
        .take()
        .ok_or_else(|| corrupt("missing metadata".to_string()))?;
    let snapshot = SnapshotFile {
        path: path.to_path_buf(),
        bytes: length,
        crc32c: crc,
    };
    Ok((meta, snapshot))
}

/// The newest valid snapshot in `dir`, if any. Invalid files are skipped with a warning.
pub fn latest_snapshot(dir: &Path) -> Result<Option<(SnapshotMeta, SnapshotFile)>, SnapshotError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_error(dir, source)),
    };
    let mut best: Option<(SnapshotMeta, SnapshotFile)> = None;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|extension| extension != "snap") {
            continue;
        }
        match open_snapshot(&path) {
            Ok((meta, file)) => {
                if best
                    .as_ref()
                    .is_none_or(|(current, _)| meta.last_log_id > current.last_log_id)
                {
                    best = Some((meta, file));
                }
            }
            Err(error) => tracing::warn!(%error, "skipping unreadable snapshot"),
        }
    }
    Ok(best)
}

/// Chunks of the state machine data inside a verified snapshot file.
#[derive(Debug)]
pub struct FileChunks {
    path: PathBuf,
    reader: BufReader<File>,
    meta: Option<SnapshotMeta>,
    done: bool,
}

impl FileChunks {
    /// Opens `path` and reads its header. Call after [`open_snapshot`] verified the checksum.
    pub fn open(path: &Path) -> Result<FileChunks, SnapshotError> {
        let corrupt = |reason: &str| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let file = File::open(path).map_err(|source| io_error(path, source))?;
        let mut reader = BufReader::new(file);
        let mut head = [0u8; 13];
        reader
            .read_exact(&mut head)
            .map_err(|source| io_error(path, source))?;
        if &head[..8] != MAGIC {
            return Err(corrupt("bad magic"));
        }
        if head[8] != FILE_VERSION {
            return Err(corrupt("unsupported snapshot file version"));
        }
        let meta_length = u32::from_le_bytes([head[9], head[10], head[11], head[12]]);
        if meta_length > META_BYTES_MAX {
            return Err(corrupt("metadata too large"));
        }
        let mut meta_bytes = vec![0u8; meta_length as usize];
        reader
            .read_exact(&mut meta_bytes)
            .map_err(|source| io_error(path, source))?;
        let meta: SnapshotMeta =
            postcard::from_bytes(&meta_bytes).map_err(|_| corrupt("metadata does not decode"))?;
        Ok(FileChunks {
            path: path.to_path_buf(),
            reader,
            meta: Some(meta),
            done: false,
        })
    }
}

impl SnapshotChunks for FileChunks {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StateMachineError> {
        if self.done {
            return Ok(None);
        }
        let failed = |error: io::Error| {
            StateMachineError::Corrupt(format!("{}: {error}", self.path.display()))
        };
        let mut length = [0u8; 4];
        self.reader.read_exact(&mut length).map_err(failed)?;
        let length = u32::from_le_bytes(length) as usize;
        if length == 0 {
            self.done = true;
            return Ok(None);
        }
        if length > SNAPSHOT_CHUNK_BYTES_MAX {
            return Err(StateMachineError::Corrupt(format!(
                "chunk of {length} bytes"
            )));
        }
        let mut chunk = vec![0u8; length];
        self.reader.read_exact(&mut chunk).map_err(failed)?;
        Ok(Some(chunk))
    }
}

/// The file name a snapshot of `meta` is stored under.
pub fn file_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(log_id) => format!(
            "snap-{:020}-{}-{}.snap",
            log_id.index, log_id.leader_id.term, log_id.leader_id.node_id
        ),
        None => "snap-empty.snap".to_string(),
    }
}

fn io_error(path: &Path, source: io::Error) -> SnapshotError {
    SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct CrcWriter {
    inner: BufWriter<File>,
    crc: u32,
    bytes: u64,
    unsynced: u64,
}

/// A snapshot being written is synced every this many bytes: the log's fsyncs, on the same
/// disk, then never queue behind a large snapshot's dirty pages at once.
const SYNC_EVERY_BYTES: u64 = 8 * 1024 * 1024;

impl CrcWriter {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.bytes += bytes.len() as u64;
        self.unsynced += bytes.len() as u64;
        self.inner.write_all(bytes)
    }

    fn sync_every_so_often(&mut self) -> io::Result<()> {
        if self.unsynced < SYNC_EVERY_BYTES {
            return Ok(());
        }
        self.unsynced = 0;
        self.inner.flush()?;
        self.inner.get_ref().sync_data()?;
        // As the Raft log: a node writing snapshot after snapshot would otherwise keep taking
        // pages it has not used lately, which in a VM cost several times a reused one.
        drop_cached_pages(self.inner.get_ref());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::{VecChunks, read_all_chunks};
    use crate::types::LogId;
    use openraft::impls::leader_id_adv::LeaderId;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(
                LeaderId {
                    term: 2,
                    node_id: 1,
                },
                index,
            )),
            last_membership: Default::default(),
        }
    }

    #[test]
    fn written_snapshot_reads_back_and_replaces_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        write_snapshot(dir.path(), &meta(5), &mut VecChunks::from_bytes(b"old")).unwrap();
        let file = write_snapshot(dir.path(), &meta(9), &mut VecChunks::from_bytes(&data)).unwrap();
        let (read_meta, read_file) = latest_snapshot(dir.path()).unwrap().unwrap();
        assert_eq!(read_meta, meta(9));
        assert_eq!(read_file, file);
        let mut chunks = FileChunks::open(&file.path).unwrap();
        assert_eq!(read_all_chunks(&mut chunks, u64::MAX).unwrap(), data);
        let count = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(count, 1, "older snapshot removed");
    }

    #[test]
    fn flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let file =
            write_snapshot(dir.path(), &meta(3), &mut VecChunks::from_bytes(b"hello")).unwrap();
        let mut bytes = fs::read(&file.path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        fs::write(&file.path, &bytes).unwrap();
        assert!(matches!(
            open_snapshot(&file.path),
            Err(SnapshotError::Corrupt { .. })
        ));
        assert!(latest_snapshot(dir.path()).unwrap().is_none());
    }
}

//! The log file under redb: redb's own file backend, except that every sync also drops the
//! file's now clean pages from the kernel's page cache.
//!
//! A Raft log is written once and hardly read again: appended entries are applied and sent to
//! followers from memory, and redb keeps the pages it reads often (the tree's branches) in
//! its own cache. Left in the page cache, every written byte takes a page that stays until
//! memory runs short, so a log that takes hundreds of MB a second (a vShard copy) has the
//! kernel find a fresh page for each one and evict others' pages later. Dropped after the
//! sync, the same pages are reused by the next writes. A later read of a dropped page (a
//! restart, a follower far behind) comes from the disk.

use redb::backends::FileBackend;
use redb::{BackendError, DatabaseError, StorageBackend};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::path::Path;

/// redb's file backend over one file, dropping the file's cached pages after each sync.
#[derive(Debug)]
pub(crate) struct UncachedFile {
    inner: FileBackend,
    /// The same open file as `inner`'s, for the page cache advice.
    file: File,
}

impl UncachedFile {
    /// Opens (creating if missing) the file at `path`, as `redb::Builder::create` does.
    pub(crate) fn open(path: &Path) -> Result<UncachedFile, DatabaseError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let advice_file = file.try_clone()?;
        Ok(UncachedFile {
            inner: FileBackend::new(file)?,
            file: advice_file,
        })
    }
}

impl StorageBackend for UncachedFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.inner.sync_data()?;
        drop_cached_pages(&self.file);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// Advises the kernel to drop `file`'s clean pages from its page cache, so that the next
/// writes of this node reuse them (see the module's comment); snapshot files are written the
/// same way. Advice only: a kernel that ignores it leaves the pages cached, nothing else
/// changes.
pub(crate) fn drop_cached_pages(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_db::{LogDb, LogDbError};
    use rustix::io::{Errno, ReadWriteFlags};
    use std::io::IoSliceMut;

    const PAGE: usize = 4096;

    /// Whether the file's page at `offset` is in the page cache: a read that may not wait for
    /// the disk succeeds only then.
    fn cached(path: &Path, offset: u64) -> bool {
        let file = File::open(path).unwrap();
        let mut page = [0u8; PAGE];
        match rustix::io::preadv2(
            &file,
            &mut [IoSliceMut::new(&mut page)],
            offset,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(read) => read > 0,
            Err(Errno::AGAIN) => false,
            Err(error) => panic!("preadv2: {error}"),
        }
    }

    #[test]
    fn a_sync_leaves_the_written_pages_on_disk_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        let backend = UncachedFile::open(&path).unwrap();
        let written: Vec<u8> = (0..4 * PAGE).map(|i| (i % 251) as u8).collect();
        backend.set_len(written.len() as u64).unwrap();
        backend.write(0, &written).unwrap();
        assert!(
            cached(&path, 0),
            "a page just written is cached until the sync"
        );

        backend.sync_data().unwrap();

        for page in 0..4 {
            assert!(
                !cached(&path, (page * PAGE) as u64),
                "page {page} still cached"
            );
        }
        let mut read = vec![0u8; written.len()];
        backend.read(0, &mut read).unwrap();
        assert_eq!(read, written, "the bytes come back from the disk");
    }

    #[test]
    fn a_log_open_in_one_place_cannot_be_opened_in_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log.redb");
        let _open = LogDb::open(&path).unwrap();
        assert!(matches!(LogDb::open(&path), Err(LogDbError::Open { .. })));
    }
}

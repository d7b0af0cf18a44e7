//! Creating a catalog file so that the catalog path never holds a half-initialised file: a new
//! catalog is built and made durable aside, then hard-linked into place. Hence an empty or
//! unreadable file at the catalog path is always damage, never "start fresh".

use crate::catalog::{
    FORMAT_VERSION_CURRENT, KEY_FORMAT, KEY_NODE, META, builder, encode_record, storage_error,
};
use crate::error::CatalogError;
use crate::record::RecordKind;
use nodedb_cluster_core::NodeId;
use redb::{Database, Durability};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Creates the catalog at `path` for `node_id`. A hard link never replaces an existing file, so
/// if another process created the catalog first, theirs is kept (and the open that follows
/// meets its lock).
pub(crate) fn create_catalog_file(path: &Path, node_id: NodeId) -> Result<(), CatalogError> {
    let io_error = |source: io::Error| CatalogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let staging = staging_path(path);
    remove_if_present(&staging).map_err(io_error)?;
    if let Err(error) = build(&staging, node_id) {
        // Best effort: a leftover staging file is removed by the next successful open anyway.
        let _ = remove_if_present(&staging);
        return Err(error);
    }
    let linked = fs::hard_link(&staging, path);
    let removed = remove_if_present(&staging);
    match linked {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(io_error(error)),
    }
    removed.map_err(io_error)?;
    sync_parent_directory(path).map_err(io_error)
}

/// Removes staging files left by creations that crashed before linking. Called once the
/// catalog is open (and locked). Best effort: a file that cannot be removed is only wasted
/// space, and failing the open for it would be worse.
pub(crate) fn remove_stale_staging_files(path: &Path) {
    let Some(prefix) = staging_prefix(path) else {
        return;
    };
    let directory = parent_directory(path).unwrap_or(Path::new("."));
    let Ok(entries) = fs::read_dir(directory) else {
        return;
    };
    let entries_max = 10_000;
    for entry in entries.take(entries_max).flatten() {
        let name = entry.file_name();
        if name
            .to_string_lossy()
            .starts_with(prefix.to_string_lossy().as_ref())
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Builds an initialised catalog at `staging`: format and node records in one durable
/// transaction.
fn build(staging: &Path, node_id: NodeId) -> Result<(), CatalogError> {
    let format = encode_record(RecordKind::Format, &FORMAT_VERSION_CURRENT)?;
    let node = encode_record(RecordKind::Node, &node_id)?;
    let error = |error: redb::Error| storage_error(staging, error);
    let database: Database = builder().create(staging).map_err(|e| error(e.into()))?;
    let mut transaction = database.begin_write().map_err(|e| error(e.into()))?;
    transaction
        .set_durability(Durability::Immediate)
        .map_err(|e| error(e.into()))?;
    {
        let mut table = transaction.open_table(META).map_err(|e| error(e.into()))?;
        table
            .insert(KEY_FORMAT, format.as_slice())
            .map_err(|e| error(e.into()))?;
        table
            .insert(KEY_NODE, node.as_slice())
            .map_err(|e| error(e.into()))?;
    }
    transaction.commit().map_err(|e| error(e.into()))?;
    database.close().map_err(|e| error(e.into()))
}

/// `<catalog file name>.new-<pid>`: one per process, so concurrent creators never share one.
fn staging_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".new-{}", std::process::id()));
    PathBuf::from(name)
}

fn staging_prefix(path: &Path) -> Option<OsString> {
    let mut prefix = path.file_name()?.to_owned();
    prefix.push(".new-");
    Some(prefix)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Makes the new directory entry durable, so a crash after open cannot lose the catalog file.
fn sync_parent_directory(path: &Path) -> io::Result<()> {
    fs::File::open(parent_directory(path).unwrap_or(Path::new(".")))?.sync_all()
}

fn parent_directory(path: &Path) -> Option<&Path> {
    path.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
}

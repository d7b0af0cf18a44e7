//! Crash-safe persistence of what a node must know before Raft runs: who it is, which cluster
//! it belongs to, the last cluster metadata it applied (so it can find its peers on restart)
//! and the checkpoints of vShard migrations in flight.
//!
//! One redb file per node (`data_dir/catalog.redb`). Every value is a versioned record with a
//! CRC32C; every write is one transaction, durable when the call returns. The stored metadata
//! and checkpoint types are the caller's (any serde type, encoded with postcard), so this
//! crate depends on no particular metadata layout. The layout is described in `docs/design.md`,
//! section "Catalog file".
//!
//! **Architecture Invariant:** the catalog knows nothing of Raft or the network. It stores
//! bytes its caller hands it, checks them, and gives them back.
//!
//! The API is blocking (file IO and fsync): async callers use `spawn_blocking` or a dedicated
//! thread. A `Catalog` is `Send + Sync`; redb serialises its write transactions.
//!
//! ```
//! use nodedb_cluster_catalog::{Catalog, CatalogError, ClusterId};
//! use nodedb_cluster_core::NodeId;
//!
//! # fn main() -> Result<(), CatalogError> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let data_dir = dir.path();
//! let catalog = Catalog::open(data_dir, NodeId(4))?;
//! catalog.set_cluster_id(ClusterId(0x5eed))?;
//! catalog.save_metadata(17, &vec!["node-4 at 127.0.0.1:9400".to_string()])?;
//! catalog.close()?;
//!
//! // On restart: same node, same cluster, the last applied metadata.
//! let catalog = Catalog::open(data_dir, NodeId(4))?;
//! assert_eq!(catalog.cluster_id()?, Some(ClusterId(0x5eed)));
//! let (applied_index, peers) = catalog.load_metadata::<Vec<String>>()?.unwrap();
//! assert_eq!((applied_index, peers.len()), (17, 1));
//! drop(catalog);
//!
//! // Another node id on the same data_dir is refused with a clear error.
//! let error = Catalog::open(data_dir, NodeId(3)).unwrap_err();
//! assert!(matches!(error, CatalogError::NodeIdMismatch { .. }));
//! # Ok(())
//! # }
//! ```

mod catalog;
mod create;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod metrics;
mod record;

pub use catalog::{CATALOG_FILE_NAME, Catalog, FORMAT_VERSION_CURRENT, MIGRATION_CHECKPOINTS_MAX};
pub use error::{CatalogError, Corruption};
pub use record::{ENVELOPE_HEADER_BYTES, RECORD_BODY_BYTES_MAX, RecordKind};

use serde::{Deserialize, Serialize};
use std::fmt;

/// The cluster a node belongs to. Chosen once when the cluster is bootstrapped (random 128 bits
/// are plenty) and stored by every member; a node never moves to another cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub u128);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

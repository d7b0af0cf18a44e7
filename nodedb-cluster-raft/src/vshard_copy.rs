//! Reading a vShard out of its source group for a migration: the export of its data at a known
//! applied index (whole, or page by page for vShards too large for one message), and the
//! vShard's commands that the source applied after that index, read back from the log. A
//! target that imported the export and replays those commands up to the source's fence holds
//! the same data as the source at the fence, without a second full copy while writes pause.

use crate::claims::VShardStep;
use crate::error::{ProposeError, query_error};
use crate::log_db::LogDb;
use crate::multi_raft::{MultiRaft, VSHARD_PART_BYTES};
use crate::state_machine::{LogIndex, StateMachineError};
use crate::types::{AppRequest, Entry, EntryKind};
use crate::wire::{self, byte_strings, decode_exact};
use nodedb_cluster_core::{GroupId, VShardId};
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Log entries read from the store at a time while collecting a vShard's changes.
const CHANGES_READ_ENTRIES: u64 = 256;
/// An export kept for paging is dropped when untouched this long.
const EXPORT_KEPT_FOR: Duration = Duration::from_secs(120);
/// Exports kept for paging at once on a node; the oldest goes first.
const EXPORTS_KEPT_MAX: usize = 8;

/// A vShard's data as its group held it after applying the entry at `applied`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VShardExport {
    pub applied: LogIndex,
    /// Whether the group served the vShard then. Only then did the group apply the vShard's
    /// commands after `applied` (until a fence), so only then can they be replayed.
    pub serving: bool,
    /// Parts of about [`VSHARD_PART_BYTES`], see `StateMachine::export_vshard_parts`.
    pub parts: Vec<Vec<u8>>,
}

/// Some consecutive parts of one export, identified by the caller's export id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VShardExportPage {
    pub applied: LogIndex,
    pub serving: bool,
    pub parts_total: u32,
    pub first_part: u32,
    #[serde(with = "byte_strings")]
    pub parts: Vec<Vec<u8>>,
}

/// The commands of one vShard applied by its group in `(after, through]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VShardChanges {
    #[serde(with = "byte_strings")]
    pub commands: Vec<Vec<u8>>,
    pub through: LogIndex,
}

/// Exports being paged out of this node, by group, vShard and the caller's export id.
#[derive(Default)]
pub(crate) struct ExportCache(Mutex<HashMap<(GroupId, VShardId, u64), Kept>>);

struct Kept {
    export: Arc<VShardExport>,
    touched: Instant,
}

impl ExportCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<(GroupId, VShardId, u64), Kept>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, key: (GroupId, VShardId, u64)) -> Option<Arc<VShardExport>> {
        let mut kept = self.lock();
        kept.retain(|_, kept| kept.touched.elapsed() < EXPORT_KEPT_FOR);
        let entry = kept.get_mut(&key)?;
        entry.touched = Instant::now();
        Some(entry.export.clone())
    }

    fn put(&self, key: (GroupId, VShardId, u64), export: Arc<VShardExport>) {
        let mut kept = self.lock();
        while kept.len() >= EXPORTS_KEPT_MAX {
            let oldest = kept
                .iter()
                .min_by_key(|(_, kept)| kept.touched)
                .map(|(key, _)| *key);
            match oldest {
                Some(oldest) => kept.remove(&oldest),
                None => break,
            };
        }
        let touched = Instant::now();
        kept.insert(key, Kept { export, touched });
    }

    fn forget(&self, key: (GroupId, VShardId, u64)) {
        self.lock().remove(&key);
    }
}

impl MultiRaft {
    /// Exports the data of `vshard` from the leader's state after a read barrier, in parts of
    /// about [`VSHARD_PART_BYTES`], each small enough for one log entry (see
    /// `StateMachine::export_vshard_parts`).
    pub async fn export_vshard(
        &self,
        group: GroupId,
        vshard: VShardId,
    ) -> Result<VShardExport, ProposeError> {
        self.read_barrier(group).await?;
        let hosted = self.hosted(group)?;
        let (applied, serving, parts) = {
            let replica = hosted.machine.lock();
            let parts = replica
                .engine
                .export_vshard_parts(vshard, VSHARD_PART_BYTES)
                .map_err(|error| query_error(group, error))?;
            (replica.applied(), replica.claim(vshard).serves(), parts)
        };
        // Encoding a large vShard takes a while: not under the replica's lock (applies wait
        // for it) and not on a runtime worker.
        let parts = tokio::task::spawn_blocking(move || parts.collect::<Result<Vec<_>, _>>())
            .await
            .map_err(|error| ProposeError::Query {
                group,
                reason: format!("exporting {vshard} stopped: {error}"),
            })?
            .map_err(|error| query_error(group, error))?;
        Ok(VShardExport {
            applied,
            serving,
            parts,
        })
    }

    /// Parts of export `export` of `vshard`, from `first_part` on, up to about `bytes_max`
    /// (at least one part). The export is made when `first_part` is 0 and kept on this node
    /// until its last part is read (or for a while), so that every page comes from one state.
    /// A page of an export this node does not hold (its leader changed) is refused: the
    /// caller starts a new export.
    pub async fn export_vshard_page(
        &self,
        group: GroupId,
        vshard: VShardId,
        export: u64,
        first_part: u32,
        bytes_max: usize,
    ) -> Result<VShardExportPage, ProposeError> {
        let key = (group, vshard, export);
        let cache = self.exports();
        let kept = match (first_part, cache.get(key)) {
            (_, Some(kept)) => kept,
            (0, None) => {
                let made = Arc::new(self.export_vshard(group, vshard).await?);
                cache.put(key, made.clone());
                made
            }
            (_, None) => {
                return Err(ProposeError::Query {
                    group,
                    reason: format!("export {export} of {vshard} is not held here"),
                });
            }
        };
        let parts_total = kept.parts.len() as u32;
        let mut parts = Vec::new();
        let mut bytes = 0;
        for part in kept.parts.iter().skip(first_part as usize) {
            if !parts.is_empty() && bytes + part.len() > bytes_max {
                break;
            }
            bytes += part.len();
            parts.push(part.clone());
        }
        if first_part as usize + parts.len() >= kept.parts.len() {
            cache.forget(key);
        }
        Ok(VShardExportPage {
            applied: kept.applied,
            serving: kept.serving,
            parts_total,
            first_part,
            parts,
        })
    }

    /// The commands of `vshard` that this group applied after the entry at `after`, up to
    /// the entry before `before` (the source's fence), read from this replica's log: at most
    /// about `bytes_max` of them (at least one), with the index read through. The local entry
    /// at `before` must be the vShard's fence, so by the log matching property every entry
    /// read before it is the committed one (no read barrier needed). Refused when the log
    /// does not hold those entries (compacted into a snapshot, or not yet replicated here) or
    /// when a migration step of the vShard lies among them: the caller then copies the whole
    /// vShard instead.
    pub async fn vshard_changes(
        &self,
        group: GroupId,
        vshard: VShardId,
        after: LogIndex,
        before: LogIndex,
        bytes_max: usize,
    ) -> Result<VShardChanges, ProposeError> {
        let log = self.log_db();
        let fence = read_entries(log, group, before.0..before.0 + 1)?;
        let is_fence = fence.into_iter().next().is_some_and(|entry| {
            matches!(
                entry.payload,
                EntryPayload::Normal(AppRequest {
                    kind: EntryKind::Migration { vshard: of, step: VShardStep::Fence, .. },
                    ..
                }) if of == vshard
            )
        });
        if !is_fence {
            return Err(ProposeError::Query {
                group,
                reason: format!(
                    "the entry at {} here is not the fence of {vshard}",
                    before.0
                ),
            });
        }
        let mut commands = Vec::new();
        let mut bytes = 0;
        let mut through = after.0;
        while through + 1 < before.0 && (commands.is_empty() || bytes < bytes_max) {
            let start = through + 1;
            let end = before.0.min(start + CHANGES_READ_ENTRIES);
            for entry in read_entries(log, group, start..end)? {
                let index = entry.log_id.index;
                if let Some(command) = vshard_command(group, vshard, entry)? {
                    bytes += command.len();
                    commands.push(command);
                }
                through = index;
                if bytes >= bytes_max {
                    break;
                }
            }
        }
        Ok(VShardChanges {
            commands,
            through: LogIndex(through),
        })
    }
}

/// The entries `range` of `group`'s local log, refused unless the log holds every one.
fn read_entries(
    log: &LogDb,
    group: GroupId,
    range: Range<u64>,
) -> Result<Vec<Entry>, ProposeError> {
    let stored = log
        .entries(group, range.clone())
        .map_err(|error| ProposeError::Storage {
            group,
            reason: error.to_string(),
        })?;
    let complete = stored.len() as u64 == range.end - range.start
        && stored.first().map(|(index, _)| *index) == Some(range.start);
    if !complete {
        return Err(ProposeError::Query {
            group,
            reason: format!("the log here does not hold entries {range:?}"),
        });
    }
    stored
        .into_iter()
        .map(|(index, bytes)| {
            wire::decode_entry(&bytes).map_err(|error| ProposeError::Storage {
                group,
                reason: format!("entry {index}: {error}"),
            })
        })
        .collect()
}

/// The command of `vshard` that `entry` carries, if any; an error for a migration step of it.
fn vshard_command(
    group: GroupId,
    vshard: VShardId,
    entry: Entry,
) -> Result<Option<Vec<u8>>, ProposeError> {
    let EntryPayload::Normal(request) = entry.payload else {
        return Ok(None);
    };
    match request.kind {
        EntryKind::VShardCommand { vshard: of } if of == vshard => {
            Ok(Some(Vec::from(request.payload)))
        }
        EntryKind::Migration { vshard: of, .. } if of == vshard => Err(ProposeError::Query {
            group,
            reason: format!(
                "a migration step of {vshard} at {} lies among its changes",
                entry.log_id.index
            ),
        }),
        _ => Ok(None),
    }
}

/// The payload of [`crate::VShardStep::ImportChanges`]: commands in the order the source
/// applied them.
pub fn encode_replayed_commands(commands: &[Vec<u8>]) -> Vec<u8> {
    postcard::to_stdvec(&ReplayedCommandsRef(commands))
        .unwrap_or_else(|error| panic!("commands encode: {error}"))
}

/// The payload of [`crate::VShardStep::ImportChanges`] as written.
#[derive(Serialize)]
struct ReplayedCommandsRef<'a>(#[serde(with = "byte_strings")] &'a [Vec<u8>]);

/// The payload of [`crate::VShardStep::ImportChanges`] as read.
#[derive(Serialize, Deserialize)]
struct ReplayedCommands(#[serde(with = "byte_strings")] Vec<Vec<u8>>);

/// Reads a payload made by [`encode_replayed_commands`].
pub fn decode_replayed_commands(bytes: &[u8]) -> Result<Vec<Vec<u8>>, StateMachineError> {
    decode_exact::<ReplayedCommands>(bytes)
        .map(|commands| commands.0)
        .map_err(|error| StateMachineError::Corrupt(format!("replayed commands: {error}")))
}

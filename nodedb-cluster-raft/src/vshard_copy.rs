//! Reading a vShard out of its source group for a migration: the export of its data at a known
//! applied index (whole, or page by page for vShards too large for one message), and the
//! vShard's commands that the source applied after that index, read back from the log. A
//! target that imported the export and replays those commands up to the source's fence holds
//! the same data as the source at the fence, without a second full copy while writes pause.

use crate::claims::VShardStep;
use crate::error::{ProposeError, query_error};
use crate::log_db::LogDb;
use crate::multi_raft::{MultiRaft, VSHARD_PART_BYTES};
use crate::state_machine::{LogIndex, StateMachineError, VShardParts};
use crate::types::{AppRequest, Entry, EntryKind};
use crate::wire::{self, byte_strings, decode_exact};
use bytes::Bytes;
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
    /// Whether this page holds the export's last part.
    pub last: bool,
    pub first_part: u32,
    /// Shared: a reader on the leader's node hands them on without copying them. Encoded as a
    /// list of byte strings, the same bytes as a list of `Vec<u8>` with `serde_bytes`.
    pub parts: Vec<Bytes>,
}

/// The commands of one vShard applied by its group in `(after, through]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VShardChanges {
    #[serde(with = "byte_strings")]
    pub commands: Vec<Vec<u8>>,
    pub through: LogIndex,
}

type ExportKey = (GroupId, VShardId, u64);

/// Exports being paged out of this node, by group, vShard and the caller's export id.
#[derive(Default)]
pub(crate) struct ExportCache(Mutex<HashMap<ExportKey, Kept>>);

struct Kept {
    export: Arc<Mutex<PagedExport>>,
    touched: Instant,
}

impl ExportCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<ExportKey, Kept>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, key: ExportKey) -> Option<Arc<Mutex<PagedExport>>> {
        let mut kept = self.lock();
        kept.retain(|_, kept| kept.touched.elapsed() < EXPORT_KEPT_FOR);
        let entry = kept.get_mut(&key)?;
        entry.touched = Instant::now();
        Some(entry.export.clone())
    }

    fn put(&self, key: ExportKey, export: Arc<Mutex<PagedExport>>) {
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

    fn forget(&self, key: ExportKey) {
        self.lock().remove(&key);
    }
}

/// An export read page by page: the engine's captured state, encoded a part at a time as the
/// pages are read, so that a node holds about one page of an export however large the vShard.
struct PagedExport {
    applied: LogIndex,
    serving: bool,
    parts: std::iter::Peekable<VShardParts>,
    /// The page read last, read again when asked for again (its answer may have been lost).
    last_page: Option<Arc<VShardExportPage>>,
}

impl PagedExport {
    /// The page from `first_part` on: parts up to about `bytes_max` (at least one).
    fn page(
        &mut self,
        first_part: u32,
        bytes_max: usize,
    ) -> Result<Arc<VShardExportPage>, PageError> {
        if let Some(page) = self
            .last_page
            .as_ref()
            .filter(|page| page.first_part == first_part)
        {
            return Ok(page.clone());
        }
        let next_part = self
            .last_page
            .as_ref()
            .map_or(0, |page| page.first_part + page.parts.len() as u32);
        if first_part != next_part {
            return Err(PageError::NotHeld);
        }
        let mut parts: Vec<Bytes> = Vec::new();
        let mut bytes = 0;
        while let Some(part) = self.parts.next_if(|next| {
            parts.is_empty() || bytes + next.as_ref().map_or(0, Vec::len) <= bytes_max
        }) {
            let part = part?;
            bytes += part.len();
            parts.push(Bytes::from(part));
        }
        let page = Arc::new(VShardExportPage {
            applied: self.applied,
            serving: self.serving,
            last: self.parts.peek().is_none(),
            first_part,
            parts,
        });
        self.last_page = Some(page.clone());
        Ok(page)
    }
}

enum PageError {
    /// The page asked for is neither the next one nor the last one read.
    NotHeld,
    Engine(StateMachineError),
}

impl From<StateMachineError> for PageError {
    fn from(error: StateMachineError) -> Self {
        PageError::Engine(error)
    }
}

impl MultiRaft {
    /// Exports the data of `vshard` from the leader's state after a read barrier, in parts of
    /// about [`VSHARD_PART_BYTES`], each small enough for one log entry (see
    /// `StateMachine::export_vshard_parts`). The whole export is in memory at once: large
    /// vShards are read with [`MultiRaft::export_vshard_page`].
    pub async fn export_vshard(
        &self,
        group: GroupId,
        vshard: VShardId,
    ) -> Result<VShardExport, ProposeError> {
        let export = self.begin_export(group, vshard).await?;
        let (applied, serving) = (export.applied, export.serving);
        let parts = off_the_runtime(group, vshard, move || {
            export.parts.collect::<Result<Vec<_>, _>>()
        })
        .await?
        .map_err(|error| query_error(group, error))?;
        Ok(VShardExport {
            applied,
            serving,
            parts,
        })
    }

    /// Parts of export `export` of `vshard`, from `first_part` on, up to about `bytes_max`
    /// (at least one part). The export is made when `first_part` is 0 and kept on this node
    /// until its last part is read (or for a while), so that every page comes from one state;
    /// each page is encoded when read. The next page or the page read last may be asked for;
    /// any other page, or a page of an export this node does not hold (its leader changed),
    /// is refused: the caller starts a new export.
    pub async fn export_vshard_page(
        &self,
        group: GroupId,
        vshard: VShardId,
        export: u64,
        first_part: u32,
        bytes_max: usize,
    ) -> Result<Arc<VShardExportPage>, ProposeError> {
        let key = (group, vshard, export);
        let cache = self.exports();
        let held = match (first_part, cache.get(key)) {
            (_, Some(held)) => held,
            (0, None) => {
                let made = Arc::new(Mutex::new(self.begin_export(group, vshard).await?));
                cache.put(key, made.clone());
                made
            }
            (_, None) => return Err(not_held(group, vshard, export, first_part)),
        };
        let page = off_the_runtime(group, vshard, move || {
            held.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .page(first_part, bytes_max)
        })
        .await?;
        let page = match page {
            Ok(page) => page,
            Err(PageError::NotHeld) => return Err(not_held(group, vshard, export, first_part)),
            Err(PageError::Engine(error)) => {
                cache.forget(key);
                return Err(query_error(group, error));
            }
        };
        if page.last {
            cache.forget(key);
        }
        Ok(page)
    }

    /// Captures the vShard's data on the leader after a read barrier; its parts are encoded
    /// later, outside the replica's lock.
    async fn begin_export(
        &self,
        group: GroupId,
        vshard: VShardId,
    ) -> Result<PagedExport, ProposeError> {
        self.read_barrier(group).await?;
        let hosted = self.hosted(group)?;
        let replica = hosted.machine.lock();
        let parts = replica
            .engine
            .export_vshard_parts(vshard, VSHARD_PART_BYTES)
            .map_err(|error| query_error(group, error))?;
        Ok(PagedExport {
            applied: replica.applied(),
            serving: replica.claim(vshard).serves(),
            parts: parts.peekable(),
            last_page: None,
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

/// Runs `encode` on a blocking thread: encoding parts of a large vShard takes a while, and a
/// runtime worker would stall the node's other tasks meanwhile.
async fn off_the_runtime<T: Send + 'static>(
    group: GroupId,
    vshard: VShardId,
    encode: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ProposeError> {
    tokio::task::spawn_blocking(encode)
        .await
        .map_err(|error| ProposeError::Query {
            group,
            reason: format!("exporting {vshard} stopped: {error}"),
        })
}

fn not_held(group: GroupId, vshard: VShardId, export: u64, first_part: u32) -> ProposeError {
    ProposeError::Query {
        group,
        reason: format!("part {first_part} of export {export} of {vshard} is not held here"),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A page's parts, now shared, keep the encoding they had as vectors.
    #[test]
    fn a_page_encodes_its_parts_as_byte_strings() {
        #[derive(Serialize)]
        struct AsVectors {
            applied: LogIndex,
            serving: bool,
            last: bool,
            first_part: u32,
            #[serde(with = "byte_strings")]
            parts: Vec<Vec<u8>>,
        }
        let parts = vec![b"first".to_vec(), Vec::new(), vec![7; 300]];
        let page = VShardExportPage {
            applied: LogIndex(42),
            serving: true,
            last: false,
            first_part: 3,
            parts: parts.iter().cloned().map(Bytes::from).collect(),
        };
        let as_vectors = AsVectors {
            applied: LogIndex(42),
            serving: true,
            last: false,
            first_part: 3,
            parts,
        };
        let bytes = wire::encode(&page);
        assert_eq!(bytes, wire::encode(&as_vectors));
        assert_eq!(postcard::from_bytes::<VShardExportPage>(&bytes), Ok(page));
    }
}

//! openraft's `RaftStateMachine` and `RaftSnapshotBuilder` over a [`StateMachine`]: batches
//! committed commands, tracks the applied log id and membership, and keeps the latest snapshot
//! as a durable file under the group's directory so that a restarted replica recovers from it.

use crate::claims::VShardStep;
use crate::handover::{HandoverSource, Siblings};
use crate::log_growth::LogGrowth;
use crate::replica::SharedMachine;
use crate::snapshot::{self, FileChunks, SnapshotFile};
use crate::state_machine::{Committed, LogIndex, SnapshotChunks};
use crate::types::{AppResponse, EntryKind, LogId, SnapshotMeta, StoredMembership, TypeConfig};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use nodedb_cluster_core::GroupId;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, alias::SmSnapshotOf};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Pause after the first failed attempt at a handover's data; later ones wait longer, up to
/// [`HANDOVER_RETRY_STEPS`] times this.
const HANDOVER_RETRY_PAUSE: Duration = Duration::from_millis(100);
const HANDOVER_RETRY_STEPS: u32 = 20;

/// The state machine half of a group replica, owned by openraft.
pub struct MachineAdapter {
    group: GroupId,
    machine: SharedMachine,
    snapshot_dir: PathBuf,
    applied: Option<LogId>,
    membership: StoredMembership,
    current: Arc<Mutex<Option<(SnapshotMeta, SnapshotFile)>>>,
    growth: Arc<LogGrowth>,
    siblings: Siblings,
}

/// Builds one snapshot from a state captured when it was created.
pub struct SnapshotBuilder {
    group: GroupId,
    chunks: Mutex<Option<Box<dyn SnapshotChunks>>>,
    meta: SnapshotMeta,
    snapshot_dir: PathBuf,
    current: Arc<Mutex<Option<(SnapshotMeta, SnapshotFile)>>>,
    growth: Arc<LogGrowth>,
}

impl MachineAdapter {
    /// Opens the adapter, restoring the engine from the newest snapshot in `snapshot_dir`;
    /// `growth` learns of what it applies and of its snapshots, `siblings` hand vShards over.
    pub(crate) async fn open(
        group: GroupId,
        machine: SharedMachine,
        snapshot_dir: PathBuf,
        growth: Arc<LogGrowth>,
        siblings: Siblings,
    ) -> io::Result<MachineAdapter> {
        let dir = snapshot_dir.clone();
        let restore_machine = machine.clone();
        let latest = tokio::task::spawn_blocking(move || {
            let latest = snapshot::latest_snapshot(&dir).map_err(io::Error::other)?;
            if let Some((meta, file)) = &latest {
                let mut chunks = FileChunks::open(&file.path).map_err(io::Error::other)?;
                restore(&restore_machine, &mut chunks, meta)?;
            }
            Ok::<_, io::Error>(latest)
        })
        .await
        .map_err(io::Error::other)??;
        let (applied, membership) = match &latest {
            Some((meta, _)) => (meta.last_log_id, meta.last_membership.clone()),
            None => (None, StoredMembership::default()),
        };
        if let Some(applied) = &applied {
            tracing::info!(%group, index = applied.index, "restored state machine from snapshot");
        }
        if let Some((_, file)) = &latest {
            growth.snapshot_is(file.bytes);
        }
        Ok(MachineAdapter {
            group,
            machine,
            snapshot_dir,
            applied,
            membership,
            current: Arc::new(Mutex::new(latest)),
            growth,
            siblings,
        })
    }

    fn apply_commands(&mut self, pending: &mut Vec<(LogId, Bytes, Responder)>) -> io::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let batch: Vec<Committed<'_>> = pending
            .iter()
            .map(|(log_id, command, _)| Committed {
                index: LogIndex(log_id.index),
                command,
            })
            .collect();
        let responses = {
            let mut replica = self.machine.lock();
            let responses = replica.engine.apply(&batch).map_err(io::Error::other)?;
            if let Some(last) = batch.last() {
                replica.set_applied(last.index);
            }
            responses
        };
        if responses.len() != batch.len() {
            return Err(io::Error::other(format!(
                "{}: state machine returned {} responses for {} commands",
                self.group,
                responses.len(),
                batch.len()
            )));
        }
        for ((log_id, _, responder), response) in pending.drain(..).zip(responses) {
            self.applied = Some(log_id);
            if let Some(responder) = responder {
                responder.send(AppResponse::Applied(response));
            }
        }
        Ok(())
    }

    /// Applies an entry that is not an engine command; its response.
    fn apply_replica_change(
        &mut self,
        index: LogIndex,
        kind: EntryKind,
        payload: &[u8],
    ) -> io::Result<AppResponse> {
        let mut replica = self.machine.lock();
        match kind {
            EntryKind::Migration {
                vshard,
                migration,
                step,
            } => {
                let result = replica
                    .apply_step(index, vshard, migration, step, payload)
                    .map_err(io::Error::other)?;
                if result.is_none() {
                    tracing::info!(group = %self.group, %vshard, %migration, ?step, claim = %replica.claim(vshard), "refused a late migration step");
                }
                Ok(AppResponse::Claim {
                    applied: result.is_some(),
                    claim: replica.claim(vshard),
                })
            }
            EntryKind::VShardCommand { vshard } => Ok(AppResponse::Moved { vshard }),
            EntryKind::Command => Ok(AppResponse::Done),
        }
    }

    /// The source of a handover step that takes the vShard's data (a refused or repeated one
    /// goes the way of every other step).
    fn handover(&self, kind: EntryKind) -> Option<(HandoverSource, VShardStep)> {
        let EntryKind::Migration {
            vshard,
            migration,
            step,
        } = kind
        else {
            return None;
        };
        let source = HandoverSource::of(step, vshard, migration)?;
        let takes = self.machine.lock().takes_handover(vshard, migration, step);
        takes.then_some((source, step))
    }

    /// Applies a [`VShardStep::Handover`] that takes the vShard's data (see `handover.rs`):
    /// first from the source's replica on this node, then from the source's leader, until
    /// the data matches the step's digest. A replica cannot go on without it, so it keeps
    /// trying; the source keeps the vShard until every replica of this group is past the step.
    async fn hand_over(
        &mut self,
        index: LogIndex,
        source: HandoverSource,
        step: VShardStep,
    ) -> io::Result<AppResponse> {
        let (vshard, migration) = (source.vshard, source.migration);
        let (mut local, mut attempt, mut hosted) = (true, 0u32, false);
        loop {
            attempt += 1;
            hosted |= self.siblings.hosts(self.group);
            let data = match local {
                true => self.siblings.local(source).await,
                false => None,
            };
            let found = match data {
                Some(data) => Ok((data, "this node's replica of the source")),
                None => {
                    (self.siblings.remote(source).await).map(|data| (data, "the source's leader"))
                }
            };
            let outcome = found.and_then(|(data, from)| {
                let claim = self
                    .machine
                    .lock()
                    .apply_handover(index, vshard, migration, step, data)?;
                Ok((claim, from))
            });
            match outcome {
                Ok((claim, from)) => {
                    tracing::info!(group = %self.group, %vshard, %migration, source = %source.from, from, "took over a vShard");
                    return Ok(AppResponse::Claim {
                        applied: true,
                        claim,
                    });
                }
                Err(reason) if hosted && !self.siblings.hosts(self.group) => {
                    return Err(io::Error::other(format!(
                        "{}: stopped before the handover of {vshard} found its data: {reason}",
                        self.group
                    )));
                }
                Err(reason) => {
                    tracing::warn!(group = %self.group, %vshard, %migration, source = %source.from, attempt, reason, "no data yet for a vShard handover; trying again");
                    local = !local;
                    let pause = HANDOVER_RETRY_PAUSE * attempt.min(HANDOVER_RETRY_STEPS);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Whether an entry goes to the engine's `apply` batch: commands, and commands of vShards
    /// this group serves.
    fn is_engine_command(&self, kind: EntryKind) -> bool {
        match kind {
            EntryKind::Command => true,
            EntryKind::VShardCommand { vshard } => self.machine.lock().claim(vshard).serves(),
            EntryKind::Migration { .. } => false,
        }
    }
}

type Responder = Option<openraft::storage::ApplyResponder<TypeConfig>>;

impl RaftStateMachine<TypeConfig> for MachineAdapter {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        let mut pending: Vec<(LogId, Bytes, Responder)> = Vec::new();
        let mut payload_bytes = 0u64;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id;
            if let EntryPayload::Normal(request) = &entry.payload {
                payload_bytes += request.payload.len() as u64;
            }
            let response = match entry.payload {
                EntryPayload::Normal(request) if self.is_engine_command(request.kind) => {
                    pending.push((log_id, request.payload, responder));
                    continue;
                }
                EntryPayload::Normal(request) => {
                    self.apply_commands(&mut pending)?;
                    match self.handover(request.kind) {
                        Some((source, step)) => {
                            self.hand_over(LogIndex(log_id.index), source, step).await?
                        }
                        None => self.apply_replica_change(
                            LogIndex(log_id.index),
                            request.kind,
                            &request.payload,
                        )?,
                    }
                }
                EntryPayload::Membership(membership) => {
                    self.apply_commands(&mut pending)?;
                    self.membership = StoredMembership::new(Some(log_id), membership);
                    AppResponse::Done
                }
                EntryPayload::Blank => {
                    self.apply_commands(&mut pending)?;
                    AppResponse::Done
                }
            };
            self.applied = Some(log_id);
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        self.apply_commands(&mut pending)?;
        let through = self.applied.map_or(0, |log_id| log_id.index);
        self.growth.applied(through, payload_bytes);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let chunks = self.machine.lock().snapshot();
        self.growth.captured();
        let chunks = match chunks {
            Ok(chunks) => Some(chunks),
            Err(error) => {
                tracing::error!(group = %self.group, %error, "state machine cannot snapshot");
                None
            }
        };
        SnapshotBuilder {
            group: self.group,
            chunks: Mutex::new(chunks),
            meta: SnapshotMeta {
                last_log_id: self.applied,
                last_membership: self.membership.clone(),
            },
            snapshot_dir: self.snapshot_dir.clone(),
            current: self.current.clone(),
            growth: Arc::clone(&self.growth),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        file: SnapshotFile,
    ) -> io::Result<()> {
        let machine = self.machine.clone();
        let path = file.path.clone();
        let restored = meta.clone();
        tokio::task::spawn_blocking(move || {
            let mut chunks = FileChunks::open(&path).map_err(io::Error::other)?;
            restore(&machine, &mut chunks, &restored)?;
            snapshot::remove_other_snapshots(&path).map_err(io::Error::other)
        })
        .await
        .map_err(io::Error::other)??;
        tracing::info!(group = %self.group, snapshot = %meta, "installed snapshot");
        crate::metrics::snapshot_installed(self.group);
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.growth.captured();
        self.growth.installed();
        self.growth.snapshot_is(file.bytes);
        *lock(&self.current) = Some((meta.clone(), file));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<SmSnapshotOf<TypeConfig, Self>>> {
        Ok(lock(&self.current)
            .clone()
            .map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<SmSnapshotOf<TypeConfig, MachineAdapter>> {
        let mut chunks = lock(&self.chunks).take().ok_or_else(|| {
            io::Error::other(format!("{}: snapshot source unavailable", self.group))
        })?;
        let meta = self.meta.clone();
        let dir = self.snapshot_dir.clone();
        let file = tokio::task::spawn_blocking(move || {
            snapshot::write_snapshot(&dir, &meta, chunks.as_mut()).map_err(io::Error::other)
        })
        .await
        .map_err(io::Error::other)??;
        tracing::debug!(group = %self.group, snapshot = %self.meta, bytes = file.bytes, "built snapshot");
        crate::metrics::snapshot_built(self.group);
        self.growth.snapshot_is(file.bytes);
        if let Some(through) = self.meta.last_log_id {
            self.growth.built(through.index);
        }
        *lock(&self.current) = Some((self.meta.clone(), file.clone()));
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: file,
        })
    }
}

/// Replaces the replica's state with a snapshot taken at `meta`.
fn restore(
    machine: &SharedMachine,
    chunks: &mut FileChunks,
    meta: &SnapshotMeta,
) -> io::Result<()> {
    let mut replica = machine.lock();
    replica.restore(chunks).map_err(io::Error::other)?;
    let index = meta.last_log_id.map_or(0, |log_id| log_id.index);
    replica.set_applied(LogIndex(index));
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

//! Quiescence of idle groups: openraft runs an election timer on every replica and a heartbeat
//! per follower on every leader, so a node hosting many groups spends CPU on groups nobody uses.
//! A group that has been idle for [`RaftTimings::quiesce_after_ms`] with every member caught up
//! stops those timers on all its replicas; any use wakes it again.
//!
//! - The leader asks each member to quiesce ([`RpcBody::Quiesce`] with its vote and last log
//!   id); a member agrees only if it follows that leader and has exactly that log, committed.
//!   Once every member agreed, the leader stops its own timers. A member that agreed while the
//!   leader did not quiesce stays quiet through its heartbeats and learns from its next probe
//!   that the leader is awake.
//! - A use wakes the group: a proposal, a read barrier, a membership change or leader transfer
//!   on the leader's node, and every Raft message or snapshot for the group from a peer (the
//!   leader's entries wake its followers at once). A follower woken by anything but its
//!   leader's messages keeps its election timer off for a grace period (the shortest election
//!   timeout): it has not heard from the leader for long, and a running timer would start an
//!   election before the woken leader heartbeats. A local use of a follower (which answers
//!   "not the leader") leaves it quiet. A replica that starts (a node restart) asks the other
//!   members to wake ([`RpcBody::Wake`], heeded by the leader), so that a quiet leader
//!   heartbeats it before its election timer runs out. A use that races with quiescing wins:
//!   quiescing is abandoned if the group was used since it began.
//! - A quiet follower still watches its leader: once per heartbeat interval it sends one
//!   [`RpcBody::Probe`] per leader node, listing the groups it follows quietly, and wakes those
//!   the leader no longer holds quiet. If the leader node has not answered for the longest
//!   election timeout, every group it leads wakes at once and openraft's election timer takes
//!   over.
//! - A quiet follower asked for a vote by another node than its leader first wakes the leader
//!   and waits briefly for its AppendEntries ([`hear_from_leader`]): its leader lease ran out
//!   only because the leader went quiet, and granting the vote would let a node cut off from a
//!   live leader unseat it.
//!
//! Quiescence changes when timers run, never what Raft decides: a wrongly woken replica at worst
//! starts an election, as after any lost heartbeat.
//!
//! [`RaftTimings::quiesce_after_ms`]: crate::RaftTimings::quiesce_after_ms

use crate::router::{GroupTable, HostedGroup};
use crate::sm_adapter::MachineAdapter;
use crate::types::{Raft, RaftMetrics, node_id, raft_id};
use crate::wire::{
    self, ProbeRequest, QuiesceRequest, RaftReply, RaftRpc, ReplyBody, RpcBody, WIRE_VERSION,
};
use nodedb_cluster_core::{GroupId, NodeId};
use nodedb_cluster_transport::{Bytes, Transport};
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Longest wait of [`hear_from_leader`]: well within the deadline of the vote RPC it delays
/// (`network::RPC_DEADLINE_MIN`), so that the candidate still gets an answer.
const HEAR_FROM_LEADER_MAX: Duration = Duration::from_millis(120);

/// How one replica is quiet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Quiet {
    Leader,
    Follower { leader: NodeId, since: Instant },
}

/// Whether one replica's timers run, and how often it was used.
#[derive(Debug)]
pub(crate) struct Quiescence {
    /// Bumped by every use; quiescing that began before a bump is abandoned.
    uses: AtomicU64,
    /// Mirrors `!state.ticking`, so that a use of a ticking replica takes no lock.
    stopped: AtomicBool,
    state: Mutex<TimerState>,
    /// How long a follower woken by anything but its leader's messages leaves its election
    /// timer off: it has heard nothing from the leader for a while, so a running timer would
    /// start an election at once, before the leader (woken too, or about to be) heartbeats.
    grace: Duration,
    /// Notified after every AppendEntries this replica accepted (see [`hear_from_leader`]).
    heard: tokio::sync::Notify,
}

#[derive(Debug)]
struct TimerState {
    quiet: Option<Quiet>,
    /// Whether openraft's tick runs.
    ticking: bool,
    /// The leader is asking its members to quiesce: probes count it as quiet already (a
    /// member that agreed may probe before the leader is done).
    quiescing: bool,
}

impl Quiescence {
    pub(crate) fn new(grace: Duration) -> Quiescence {
        Quiescence {
            uses: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            state: Mutex::new(TimerState {
                quiet: None,
                ticking: true,
                quiescing: false,
            }),
            grace,
            heard: tokio::sync::Notify::new(),
        }
    }

    /// The use counter, read before deciding to quiesce.
    pub(crate) fn uses(&self) -> u64 {
        self.uses.load(Ordering::SeqCst)
    }

    pub(crate) fn quiet(&self) -> Option<Quiet> {
        self.lock().quiet
    }

    /// The leader this replica follows quietly, if it does.
    pub(crate) fn followed_quietly(&self) -> Option<NodeId> {
        match self.quiet() {
            Some(Quiet::Follower { leader, .. }) => Some(leader),
            _ => None,
        }
    }

    /// An AppendEntries was accepted: openraft renewed the replica's leader lease.
    pub(crate) fn heard_from_a_leader(&self) {
        self.heard.notify_waiters();
    }

    /// Whether a probe may count this replica as a quiet leader: quiet, or asking its members.
    fn leads_quietly(&self) -> bool {
        let state = self.lock();
        state.quiet == Some(Quiet::Leader) || state.quiescing
    }

    /// Marks the start (or end) of a leader's quiesce round.
    fn set_quiescing(&self, quiescing: bool) {
        self.lock().quiescing = quiescing;
    }

    /// Records a use on this node (a proposal, read, membership change, transfer, or a peer's
    /// [`RpcBody::Wake`]): a quiet leader restarts its timers; a follower stays quiet, since
    /// it only answers "not the leader" and nothing would renew its election timer. Says
    /// whether it woke a leader.
    pub(crate) fn touch(&self, raft: &Raft<MachineAdapter>) -> bool {
        let woken = self.record_use() && leads(raft);
        if woken {
            self.resume(raft);
        }
        woken
    }

    /// [`Quiescence::touch`] before a write (a proposal or a membership change). A leader
    /// whose timers were stopped let its quorum lease lapse, and openraft refuses writes (as
    /// "not the leader", with no leader to name) until a heartbeat round is acknowledged
    /// again: so a woken leader heartbeats at once and waits for that round, at most
    /// `patience`. After that the write is tried anyway: cut off from its quorum, the
    /// leader refuses it, a definite failure rather than a timeout of unknown outcome.
    pub(crate) async fn touch_for_write(&self, raft: &Raft<MachineAdapter>, patience: Duration) {
        if !self.touch(raft) {
            return;
        }
        let (acked_before, sole_voter) = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow_watched();
            let voters = metrics.membership_config.membership().voter_ids().count();
            (metrics.last_quorum_acked, voters == 1)
        };
        if sole_voter {
            // A leader that is its own quorum holds its lease without heartbeats.
            return;
        }
        if raft.trigger().heartbeat().await.is_err() {
            return;
        }
        let renewed = |metrics: &RaftMetrics| {
            metrics.state != ServerState::Leader || metrics.last_quorum_acked != acked_before
        };
        // An error is a lapse of patience or a stopped replica; the write that follows
        // reports either.
        let _ = raft
            .wait(Some(patience))
            .metrics(renewed, "a quorum to ack a heartbeat")
            .await;
    }

    /// Records a use by a peer that is not the leader (a vote request) or the leader's answer
    /// that it no longer holds the group quiet: a leader's timers restart at once, a
    /// follower's after the grace period, so that the leader can heartbeat first.
    pub(crate) fn wake(self: &Arc<Self>, raft: &Raft<MachineAdapter>) {
        if !self.record_use() {
            return;
        }
        if leads(raft) {
            self.resume(raft);
        } else if self.lock().quiet.take().is_some() {
            let quiescence = Arc::clone(self);
            let raft = raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(quiescence.grace).await;
                let mut state = quiescence.lock();
                if state.quiet.is_none() && !state.ticking {
                    quiescence.start_ticking(&mut state, &raft);
                }
            });
        }
    }

    /// Records a use and restarts the replica's timers at once: for a message from the leader
    /// (which renews the follower's election timer) and for a leader gone silent.
    pub(crate) fn wake_now(&self, raft: &Raft<MachineAdapter>) {
        if self.record_use() {
            self.resume(raft);
        }
    }

    /// An AppendEntries from `from`: entries wake the replica at once, and so does a heartbeat
    /// from another node; a heartbeat from the leader it follows quietly leaves it quiet (the
    /// leader sent it before it was done quiescing, or keeps heartbeating because a member
    /// did not agree: a quiet follower then learns from its probe that the leader is awake).
    pub(crate) fn append_entries(
        &self,
        raft: &Raft<MachineAdapter>,
        from: NodeId,
        heartbeat: bool,
    ) {
        if heartbeat
            && let Some(Quiet::Follower { leader, .. }) = self.quiet()
            && leader == from
        {
            return;
        }
        self.wake_now(raft);
    }

    /// Stops the replica's timers unless it was used since `uses` was read. True when quiet.
    pub(crate) fn quiesce(&self, raft: &Raft<MachineAdapter>, uses: u64, how: Quiet) -> bool {
        let mut state = self.lock();
        if state.quiet.is_some() {
            return true;
        }
        // Published before the counter is checked: a use that bumps the counter after the
        // check sees the flag and wakes the replica.
        self.stopped.store(true, Ordering::SeqCst);
        if self.uses.load(Ordering::SeqCst) != uses {
            self.stopped.store(!state.ticking, Ordering::SeqCst);
            return false;
        }
        state.quiet = Some(how);
        if state.ticking {
            state.ticking = false;
            raft.runtime_config().tick(false);
        }
        true
    }

    /// Bumps the use counter; true when the timers are stopped (there is something to wake).
    fn record_use(&self) -> bool {
        self.uses.fetch_add(1, Ordering::SeqCst);
        self.stopped.load(Ordering::SeqCst)
    }

    /// No longer quiet, timers running.
    fn resume(&self, raft: &Raft<MachineAdapter>) {
        let mut state = self.lock();
        state.quiet = None;
        if !state.ticking {
            self.start_ticking(&mut state, raft);
        }
    }

    fn start_ticking(&self, state: &mut TimerState, raft: &Raft<MachineAdapter>) {
        state.ticking = true;
        self.stopped.store(false, Ordering::SeqCst);
        raft.runtime_config().tick(true);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TimerState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether the replica leads its group, as openraft reports it now.
fn leads(raft: &Raft<MachineAdapter>) -> bool {
    raft.metrics().borrow_watched().state == ServerState::Leader
}

/// A follower's answer to [`RpcBody::Quiesce`] from `from`: quiet only if it follows that
/// leader's vote and its log ends at `last_log`, committed.
pub(crate) fn follow_quietly(hosted: &HostedGroup, from: NodeId, request: &QuiesceRequest) -> bool {
    let uses = hosted.quiescence.uses();
    let caught_up = {
        let metrics = hosted.raft.metrics();
        let metrics = metrics.borrow_watched();
        matches!(metrics.state, ServerState::Follower | ServerState::Learner)
            && metrics.current_leader == Some(raft_id(from))
            && metrics.vote == request.vote
            && metrics.last_log_index == Some(request.last_log.index)
            && metrics.local_committed.as_ref() == Some(&request.last_log)
    };
    caught_up
        && hosted.quiescence.quiesce(
            &hosted.raft,
            uses,
            Quiet::Follower {
                leader: from,
                since: Instant::now(),
            },
        )
}

/// The answer to a [`RpcBody::Probe`]: the listed groups this node does not hold quiet as
/// their leader.
pub(crate) fn awake_among(table: &GroupTable, groups: &[GroupId]) -> Vec<GroupId> {
    groups
        .iter()
        .copied()
        .filter(|group| {
            let Some(hosted) = table.get(*group) else {
                return true;
            };
            !(leads(&hosted.raft) && hosted.quiescence.leads_quietly())
        })
        .collect()
}

/// What a leader sends its members to quiesce, when the group is settled: it leads, its last
/// entry is committed and applied on it, the membership is not joint and every member has
/// the last entry.
fn settled(metrics: &RaftMetrics) -> Option<(QuiesceRequest, Vec<NodeId>)> {
    if metrics.state != ServerState::Leader {
        return None;
    }
    let committed = metrics.local_committed?;
    if metrics.last_log_index != Some(committed.index)
        || metrics.last_applied.as_ref() != Some(&committed)
    {
        return None;
    }
    let membership = metrics.membership_config.membership();
    if membership.get_joint_config().len() > 1 {
        return None;
    }
    let replication = metrics.replication.as_ref()?;
    let members = other_members(metrics);
    let caught_up = members
        .iter()
        .all(|member| replication.get(&raft_id(*member)) == Some(&Some(committed)));
    caught_up.then(|| {
        let request = QuiesceRequest {
            vote: metrics.vote,
            last_log: committed,
        };
        (request, members)
    })
}

/// When a group led here was last seen used or changing.
struct Activity {
    uses: u64,
    last_log_index: Option<u64>,
    since: Instant,
}

/// Settings of the quiescence task.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QuiesceTimings {
    /// Idle time after which a settled group is quiesced.
    pub idle: Duration,
    /// Period of the task: probes of leaders, idle checks; also the deadline of a quiesce RPC.
    pub round: Duration,
    /// A leader node silent this long wakes the groups it leads; a probe waits half of it.
    pub silence_max: Duration,
}

/// The node's quiescence task: quiesces idle groups it leads and probes the leaders of the
/// groups it follows quietly. Ends when the group table is gone.
pub(crate) async fn run(
    table: Weak<GroupTable>,
    transport: Arc<dyn Transport>,
    timings: QuiesceTimings,
) {
    let mut activity: HashMap<GroupId, Activity> = HashMap::new();
    let mut leaders_heard: HashMap<NodeId, Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(timings.round);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(table) = table.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut idle_groups = Vec::new();
        let mut followed: BTreeMap<NodeId, Vec<(GroupId, Instant)>> = BTreeMap::new();
        let hosted_groups = table.entries();
        let hosted_ids: HashSet<GroupId> = hosted_groups.iter().map(|(group, _)| *group).collect();
        activity.retain(|group, _| hosted_ids.contains(group));
        let (mut quiet_leaders, mut quiet_followers) = (0, 0);
        for (group, hosted) in &hosted_groups {
            match hosted.quiescence.quiet() {
                Some(Quiet::Leader) => {
                    quiet_leaders += 1;
                    activity.remove(group);
                }
                Some(Quiet::Follower { leader, since }) => {
                    quiet_followers += 1;
                    followed.entry(leader).or_default().push((*group, since));
                }
                None => {
                    if let Some(ready) =
                        idle_and_settled(*group, hosted, &mut activity, timings, now)
                    {
                        idle_groups.push(ready);
                    }
                }
            }
        }
        crate::metrics::quiet_replicas(quiet_leaders, quiet_followers);
        leaders_heard.retain(|leader, _| followed.contains_key(leader));
        let quiescing = futures::future::join_all(
            idle_groups
                .into_iter()
                .map(|ready| quiesce_group(&transport, timings.round, ready)),
        );
        let probing = futures::future::join_all(followed.into_iter().map(|(leader, groups)| {
            let heard = leaders_heard.get(&leader).copied();
            probe_leader(&table, &transport, timings, leader, groups, heard)
        }));
        let (_, probed) = tokio::join!(quiescing, probing);
        for (leader, heard) in probed.into_iter().flatten() {
            leaders_heard.insert(leader, heard);
        }
    }
}

/// A group this node leads, idle long enough and settled: ready to quiesce.
struct ReadyToQuiesce {
    group: GroupId,
    hosted: HostedGroup,
    uses: u64,
    request: QuiesceRequest,
    members: Vec<NodeId>,
}

fn idle_and_settled(
    group: GroupId,
    hosted: &HostedGroup,
    activity: &mut HashMap<GroupId, Activity>,
    timings: QuiesceTimings,
    now: Instant,
) -> Option<ReadyToQuiesce> {
    let uses = hosted.quiescence.uses();
    let metrics = hosted.raft.metrics();
    let metrics = metrics.borrow_watched();
    if metrics.state != ServerState::Leader {
        activity.remove(&group);
        return None;
    }
    let seen = activity.entry(group).or_insert(Activity {
        uses,
        last_log_index: metrics.last_log_index,
        since: now,
    });
    if seen.uses != uses || seen.last_log_index != metrics.last_log_index {
        *seen = Activity {
            uses,
            last_log_index: metrics.last_log_index,
            since: now,
        };
        return None;
    }
    if now.duration_since(seen.since) < timings.idle {
        return None;
    }
    let (request, members) = settled(&metrics)?;
    Some(ReadyToQuiesce {
        group,
        hosted: hosted.clone(),
        uses,
        request,
        members,
    })
}

/// Asks every member to quiesce, then quiesces the leader if all agreed.
async fn quiesce_group(transport: &Arc<dyn Transport>, deadline: Duration, ready: ReadyToQuiesce) {
    let ReadyToQuiesce {
        group,
        hosted,
        uses,
        request,
        members,
    } = ready;
    let last_index = request.last_log.index;
    hosted.quiescence.set_quiescing(true);
    let asks = members.iter().map(|member| {
        let body = RpcBody::Quiesce(request);
        call(transport, *member, group, body, deadline)
    });
    let agreed = futures::future::join_all(asks)
        .await
        .into_iter()
        .all(|reply| matches!(reply, Some(ReplyBody::Quiesced(true))));
    let quiet = agreed && hosted.quiescence.quiesce(&hosted.raft, uses, Quiet::Leader);
    hosted.quiescence.set_quiescing(false);
    if quiet {
        tracing::debug!(%group, index = last_index, "group quiesced");
    }
}

/// Probes `leader` about `groups` (each with when it went quiet) and wakes those it no longer
/// holds quiet, or all of them when it stayed silent too long. Returns when it was heard.
async fn probe_leader(
    table: &GroupTable,
    transport: &Arc<dyn Transport>,
    timings: QuiesceTimings,
    leader: NodeId,
    groups: Vec<(GroupId, Instant)>,
    heard: Option<Instant>,
) -> Option<(NodeId, Instant)> {
    let ids: Vec<GroupId> = groups.iter().map(|(group, _)| *group).collect();
    let body = RpcBody::Probe(ProbeRequest { groups: ids });
    let reply = call(transport, leader, GroupId(0), body, timings.silence_max / 2).await;
    let now = Instant::now();
    let heard_now = matches!(reply, Some(ReplyBody::Probed { .. }));
    let (to_wake, silent): (Vec<GroupId>, bool) = match reply {
        // The leader woke (its messages follow), lost the lead or dropped the group.
        Some(ReplyBody::Probed { awake }) => (awake, false),
        _ => {
            let silent = groups
                .iter()
                .filter(|(_, since)| {
                    let last_heard = heard.map_or(*since, |heard| heard.max(*since));
                    now.duration_since(last_heard) >= timings.silence_max
                })
                .map(|(group, _)| *group)
                .collect();
            (silent, true)
        }
    };
    if silent && !to_wake.is_empty() {
        tracing::info!(%leader, groups = to_wake.len(), "leader node silent; waking its quiet groups");
        crate::metrics::silent_leader_wakes(to_wake.len());
    }
    for group in &to_wake {
        let Some(hosted) = table.get(*group) else {
            continue;
        };
        tracing::debug!(%group, %leader, silent, "waking a quiet follower");
        if silent {
            hosted.quiescence.wake_now(&hosted.raft);
        } else {
            hosted.quiescence.wake(&hosted.raft);
        }
    }
    heard_now.then_some((leader, now))
}

/// Before a follower that was quiet answers a vote asked by another node than its `leader`:
/// asks the leader to wake and waits, at most [`HEAR_FROM_LEADER_MAX`] or the shortest
/// election timeout, for its next AppendEntries. A quiet follower's leader lease has long run
/// out, so without this it would grant the vote to a node merely cut off from a live leader
/// and help it unseat that leader, which an awake follower (its lease renewed by heartbeats)
/// refuses. A dead leader costs the candidate only this wait.
pub(crate) async fn hear_from_leader(hosted: &HostedGroup, group: GroupId, leader: NodeId) {
    let wait = hosted.quiescence.grace.min(HEAR_FROM_LEADER_MAX);
    let heard = hosted.quiescence.heard.notified();
    tokio::pin!(heard);
    heard.as_mut().enable();
    let transport = Arc::clone(&hosted.transport);
    tokio::spawn(async move { call(&transport, leader, group, RpcBody::Wake, wait).await });
    let heard = tokio::time::timeout(wait, heard).await.is_ok();
    crate::metrics::quiet_vote_held(heard);
}

/// Asks the other members of `group` to wake their replicas: a replica that just (re)started
/// expects heartbeats within its election timeout, which a quiet leader would not send. Waits
/// up to `deadline` for the replica to load its membership (a new group has none).
pub(crate) async fn wake_members(
    transport: Arc<dyn Transport>,
    group: GroupId,
    raft: Raft<MachineAdapter>,
    deadline: Duration,
) {
    let mut metrics = raft.metrics();
    let loaded = tokio::time::timeout(deadline, async {
        loop {
            let members = other_members(&metrics.borrow_watched());
            if !members.is_empty() {
                return members;
            }
            if metrics.changed().await.is_err() {
                return members;
            }
        }
    });
    let Ok(members) = loaded.await else {
        return;
    };
    let wakes = members
        .iter()
        .map(|member| call(&transport, *member, group, RpcBody::Wake, deadline));
    futures::future::join_all(wakes).await;
}

/// The other members of the group of `metrics`, voters and learners.
pub(crate) fn other_members(metrics: &RaftMetrics) -> Vec<NodeId> {
    let membership = metrics.membership_config.membership();
    membership
        .voter_ids()
        .chain(membership.learner_ids())
        .filter(|id| *id != metrics.id)
        .map(node_id)
        .collect()
}

/// One quiescence RPC; `None` when it failed in any way (the caller treats it as "no").
async fn call(
    transport: &Arc<dyn Transport>,
    target: NodeId,
    group: GroupId,
    body: RpcBody,
    deadline: Duration,
) -> Option<ReplyBody> {
    let request = wire::encode(&RaftRpc {
        version: WIRE_VERSION,
        group,
        body,
    });
    let reply = transport
        .call(target, Bytes::from(request), deadline)
        .await
        .ok()?;
    let reply: RaftReply = wire::decode(&reply).ok()?;
    Some(reply.body)
}

//! The client workload of `test-cluster`: concurrent clients doing puts, gets, deletes and
//! compare-and-swaps over many keys against random nodes, and the recording of every
//! operation (invocation, completion, outcome) for the linearizability checker, plus the
//! successful writes per group from which failover windows are measured.

use crate::api::{Api, CasReply, Reply, WriteReceipt};
use nodedb_cluster_core::linearizability::{History, HistoryRecorder, OpId, OpKind, Outcome};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Operations one client issues at most in one run (the run normally ends by time first).
pub const OPS_PER_CLIENT_MAX: u64 = 10_000_000;
/// Pause of a client after an operation that did not succeed, so that a dead node does not
/// turn the history into a flood of refused connections.
pub const BACKOFF_AFTER_ERROR: Duration = Duration::from_millis(50);
/// How long a client sends nothing to a node that refused its connection (it is down):
/// clients keep going against the others instead of piling up refusals.
pub const AVOID_REFUSED_NODE: Duration = Duration::from_millis(500);
/// Deadline of one client request; past it the outcome of a write is unknown.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What the clients do.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    pub clients: u32,
    /// The clients touch keys number `first_key..first_key + keys` (see [`key_name`]).
    pub first_key: u32,
    pub keys: u32,
    pub seed: u64,
    pub nodes: Vec<SocketAddr>,
}

/// Counts of finished operations by outcome.
#[derive(Debug, Default)]
pub struct Counters {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub unknown: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
}

/// A write the cluster acknowledged, with the group that committed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupWrite {
    pub group: u32,
    pub invoked_at_us: u64,
    pub completed_at_us: u64,
}

/// Everything the clients record, shared between them. Times are microseconds since
/// `started`.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    history: Mutex<HistoryRecorder>,
    writes: Mutex<Vec<GroupWrite>>,
    /// The nodes the clients address once the driver changed them during the run (a node
    /// joined or left); until then, the spec's.
    nodes: Mutex<Option<Vec<SocketAddr>>>,
    pub counters: Counters,
}

/// How an operation ended, for the client's next move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpEnd {
    Succeeded,
    /// The node refused the connection: try the others for a while.
    Refused,
    /// Failed or unknown: back off a little.
    NotSucceeded,
}

/// The operation a client picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpChoice {
    Get,
    Put,
    Cas,
    Delete,
}

impl Counters {
    pub fn snapshot(&self) -> Counts {
        Counts {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            unknown: self.unknown.load(Ordering::Relaxed),
        }
    }

    fn count(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Ok(_) => &self.ok,
            Outcome::Failed => &self.failed,
            Outcome::Unknown => &self.unknown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.ok + self.failed + self.unknown
    }
}

impl Recorder {
    pub fn new(started: Instant) -> Recorder {
        Recorder {
            started,
            history: Mutex::new(HistoryRecorder::new()),
            writes: Mutex::new(Vec::new()),
            nodes: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    /// Microseconds since the run started.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Records that `client` sends `kind` on `key` now.
    pub fn invoke(&self, client: u64, key: &str, kind: OpKind) -> (OpId, u64) {
        let now = self.now_us();
        (lock(&self.history).invoke(client, key, kind, now), now)
    }

    /// Records how `op` ended, now.
    pub fn complete(&self, op: OpId, outcome: Outcome) -> u64 {
        let now = self.now_us();
        self.counters.count(&outcome);
        lock(&self.history)
            .complete(op, now, outcome)
            .expect("every operation is completed once, after its invocation, by its client");
        now
    }

    /// Remembers an acknowledged write on `group`.
    pub fn acknowledged(&self, group: u32, invoked_at_us: u64, completed_at_us: u64) {
        lock(&self.writes).push(GroupWrite {
            group,
            invoked_at_us,
            completed_at_us,
        });
    }

    /// The history so far; operations still in flight are unknown.
    pub fn history(&self) -> History {
        lock(&self.history).history()
    }

    /// From now on the clients address `nodes` instead of the spec's.
    pub fn set_nodes(&self, nodes: Vec<SocketAddr>) {
        *lock(&self.nodes) = Some(nodes);
    }

    /// The nodes the clients address now: the last [`Recorder::set_nodes`], else `spec`'s.
    pub fn nodes(&self, spec: &[SocketAddr]) -> Vec<SocketAddr> {
        lock(&self.nodes).clone().unwrap_or_else(|| spec.to_vec())
    }

    /// Acknowledged writes so far, in completion order.
    pub fn writes(&self) -> Vec<GroupWrite> {
        let mut writes = lock(&self.writes).clone();
        writes.sort_by_key(|write| write.completed_at_us);
        writes
    }
}

/// The name of key number `index`: short, URL-safe, and spread over the vShards by the hash.
pub fn key_name(index: u32) -> String {
    format!("k{index:05}")
}

/// Every key the workload may touch.
pub fn key_names(keys: u32) -> Vec<String> {
    (0..keys).map(key_name).collect()
}

/// The value of the `sequence`-th write of `client`: unique across the run, so the checker
/// can tell every write apart.
pub fn unique_value(client: u64, sequence: u64) -> String {
    format!("c{client}-{sequence}")
}

/// The operation for a roll in `0..100`: 45% get, 30% put, 20% cas, 5% delete.
pub fn choose_op(roll: u32) -> OpChoice {
    match roll {
        0..45 => OpChoice::Get,
        45..75 => OpChoice::Put,
        75..95 => OpChoice::Cas,
        _ => OpChoice::Delete,
    }
}

/// The seed of client `client`'s random choices, derived from the run's seed.
pub fn client_seed(seed: u64, client: u64) -> u64 {
    // SplitMix64 step: nearby client ids get unrelated streams.
    let mut z = seed.wrapping_add(client.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The history outcome of a put or delete reply.
pub fn write_outcome(reply: &Reply<Option<WriteReceipt>>) -> Outcome {
    match reply {
        Reply::Ok(_) => Outcome::done(),
        Reply::Failed(_) | Reply::Refused(_) => Outcome::Failed,
        Reply::Unknown(_) => Outcome::Unknown,
    }
}

/// The history outcome of a get reply. A failed or unanswered read constrains nothing.
pub fn read_outcome(reply: &Reply<Option<Vec<u8>>>) -> Outcome {
    match reply {
        Reply::Ok(value) => Outcome::read(value.clone()),
        Reply::Failed(_) | Reply::Refused(_) => Outcome::Failed,
        Reply::Unknown(_) => Outcome::Unknown,
    }
}

/// The history outcome of a CAS reply.
pub fn cas_outcome(reply: &Reply<CasReply>) -> Outcome {
    match reply {
        Reply::Ok(cas) => Outcome::cas(cas.swapped, cas.current.clone()),
        Reply::Failed(_) | Reply::Refused(_) => Outcome::Failed,
        Reply::Unknown(_) => Outcome::Unknown,
    }
}

/// Runs client `client` until `stop` is set (or [`OPS_PER_CLIENT_MAX`] operations).
pub fn run_client(client: u64, spec: &WorkloadSpec, recorder: &Recorder, stop: &AtomicBool) {
    let api = Api::new(REQUEST_TIMEOUT);
    let mut rng = SmallRng::seed_from_u64(client_seed(spec.seed, client));
    let mut client_state = ClientState {
        client,
        sequence: 0,
        last_seen: HashMap::new(),
    };
    let mut avoided: HashMap<SocketAddr, Instant> = HashMap::new();
    for _ in 0..OPS_PER_CLIENT_MAX {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = key_name(spec.first_key + rng.random_range(0..spec.keys));
        let nodes = recorder.nodes(&spec.nodes);
        let node = pick_node(&mut rng, &nodes, &avoided, Instant::now());
        let choice = choose_op(rng.random_range(0..100));
        let use_last_seen = rng.random_bool(0.8);
        match client_state.run_op(&api, recorder, node, &key, choice, use_last_seen) {
            OpEnd::Succeeded => {}
            OpEnd::Refused => {
                avoided.insert(node, Instant::now() + AVOID_REFUSED_NODE);
            }
            OpEnd::NotSucceeded => std::thread::sleep(BACKOFF_AFTER_ERROR),
        }
    }
}

/// A random node of `nodes`, avoiding those in `avoided` until their time, unless all are.
pub fn pick_node(
    rng: &mut SmallRng,
    nodes: &[SocketAddr],
    avoided: &HashMap<SocketAddr, Instant>,
    now: Instant,
) -> SocketAddr {
    let usable: Vec<SocketAddr> = nodes
        .iter()
        .copied()
        .filter(|node| avoided.get(node).is_none_or(|until| *until <= now))
        .collect();
    let choices = if usable.is_empty() { nodes } else { &usable };
    choices[rng.random_range(0..choices.len())]
}

/// What a reply means for the client's next move.
pub fn op_end<T>(reply: &Reply<T>) -> OpEnd {
    match reply {
        Reply::Ok(_) => OpEnd::Succeeded,
        Reply::Refused(_) => OpEnd::Refused,
        Reply::Failed(_) | Reply::Unknown(_) => OpEnd::NotSucceeded,
    }
}

/// What one client remembers between operations.
struct ClientState {
    client: u64,
    sequence: u64,
    /// The last value this client saw per key: the `expected` of its CASes, so that many of
    /// them swap.
    last_seen: HashMap<String, Option<String>>,
}

impl ClientState {
    /// Runs one operation and records it; true if it succeeded.
    fn run_op(
        &mut self,
        api: &Api,
        recorder: &Recorder,
        node: SocketAddr,
        key: &str,
        choice: OpChoice,
        use_last_seen: bool,
    ) -> OpEnd {
        self.sequence += 1;
        let value = unique_value(self.client, self.sequence);
        match choice {
            OpChoice::Get => {
                let (op, _) = recorder.invoke(self.client, key, OpKind::Get);
                let reply = api.get(node, key);
                if let Reply::Ok(seen) = &reply {
                    let seen = seen
                        .as_ref()
                        .map(|bytes| String::from_utf8_lossy(bytes).into());
                    self.last_seen.insert(key.to_string(), seen);
                }
                recorder.complete(op, read_outcome(&reply));
                op_end(&reply)
            }
            OpChoice::Put | OpChoice::Delete => {
                self.write(api, recorder, node, key, choice, &value)
            }
            OpChoice::Cas => {
                let expected = match use_last_seen {
                    true => self.last_seen.get(key).cloned().flatten(),
                    false => None,
                };
                let kind = OpKind::cas(expected.clone(), value.clone());
                let (op, _) = recorder.invoke(self.client, key, kind);
                let reply = api.cas(node, key, expected.as_deref(), &value);
                if let Reply::Ok(cas) = &reply {
                    self.last_seen.insert(key.to_string(), cas.current.clone());
                }
                recorder.complete(op, cas_outcome(&reply));
                op_end(&reply)
            }
        }
    }

    fn write(
        &mut self,
        api: &Api,
        recorder: &Recorder,
        node: SocketAddr,
        key: &str,
        choice: OpChoice,
        value: &str,
    ) -> OpEnd {
        let kind = match choice {
            OpChoice::Delete => OpKind::Delete,
            _ => OpKind::put(value),
        };
        let (op, invoked_at) = recorder.invoke(self.client, key, kind);
        let reply = match choice {
            OpChoice::Delete => api.delete(node, key),
            _ => api.put(node, key, value.as_bytes()),
        };
        let completed_at = recorder.complete(op, write_outcome(&reply));
        if let Reply::Ok(receipt) = &reply {
            let written = (choice != OpChoice::Delete).then(|| value.to_string());
            self.last_seen.insert(key.to_string(), written);
            if let Some(receipt) = receipt {
                recorder.acknowledged(receipt.group, invoked_at, completed_at);
            }
        }
        op_end(&reply)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A client that panicked mid-record leaves a usable value behind; the panic itself fails
    // the run when its thread is joined.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodedb_cluster_core::linearizability::OpResult;
    use nodedb_cluster_core::vshard_for_key;
    use std::collections::BTreeSet;

    #[test]
    fn keys_spread_over_many_vshards() {
        let names = key_names(200);
        assert_eq!(names.len(), 200);
        assert_eq!(names[7], "k00007");
        let vshards: BTreeSet<_> = names
            .iter()
            .map(|key| vshard_for_key(key.as_bytes()))
            .collect();
        assert!(vshards.len() > 150, "only {} vShards", vshards.len());
    }

    #[test]
    fn values_are_unique_per_client_and_sequence() {
        let values: BTreeSet<_> = (0..20)
            .flat_map(|client| (0..50).map(move |sequence| unique_value(client, sequence)))
            .collect();
        assert_eq!(values.len(), 1000);
        // No value of one client is a value of another (c1-11 vs c11-1).
        assert_ne!(unique_value(1, 11), unique_value(11, 1));
    }

    #[test]
    fn the_op_mix_covers_every_kind() {
        let mut counts = HashMap::new();
        for roll in 0..100 {
            *counts.entry(choose_op(roll)).or_insert(0) += 1;
        }
        assert_eq!(counts[&OpChoice::Get], 45);
        assert_eq!(counts[&OpChoice::Put], 30);
        assert_eq!(counts[&OpChoice::Cas], 20);
        assert_eq!(counts[&OpChoice::Delete], 5);
    }

    #[test]
    fn client_seeds_differ_and_repeat() {
        assert_eq!(client_seed(42, 3), client_seed(42, 3));
        let seeds: BTreeSet<_> = (0..64).map(|client| client_seed(42, client)).collect();
        assert_eq!(seeds.len(), 64);
        assert_ne!(client_seed(1, 0), client_seed(2, 0));
    }

    #[test]
    fn the_driver_can_change_the_nodes_the_clients_address() {
        let spec: Vec<SocketAddr> = vec![SocketAddr::from(([127, 0, 0, 1], 1))];
        let recorder = Recorder::new(Instant::now());
        assert_eq!(recorder.nodes(&spec), spec);
        let changed = vec![SocketAddr::from(([127, 0, 0, 1], 2))];
        recorder.set_nodes(changed.clone());
        assert_eq!(recorder.nodes(&spec), changed);
    }

    #[test]
    fn refusing_nodes_are_avoided_until_their_time() {
        let nodes: Vec<SocketAddr> = (1..=3)
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .collect();
        let mut rng = SmallRng::seed_from_u64(1);
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let avoided = HashMap::from([(nodes[0], later), (nodes[1], later)]);
        for _ in 0..50 {
            assert_eq!(pick_node(&mut rng, &nodes, &avoided, now), nodes[2]);
        }
        let picked: BTreeSet<_> = (0..100)
            .map(|_| pick_node(&mut rng, &nodes, &avoided, later))
            .collect();
        assert_eq!(picked.len(), 3, "avoidance ends");
        let all = nodes.iter().map(|node| (*node, later)).collect();
        let picked: BTreeSet<_> = (0..100)
            .map(|_| pick_node(&mut rng, &nodes, &all, now))
            .collect();
        assert_eq!(picked.len(), 3, "with every node avoided, any will do");
    }

    #[test]
    fn replies_become_history_outcomes() {
        let receipt = Some(WriteReceipt {
            vshard: 1,
            group: 2,
            index: 3,
        });
        assert_eq!(write_outcome(&Reply::Ok(receipt)), Outcome::done());
        assert_eq!(write_outcome(&Reply::Failed("503".into())), Outcome::Failed);
        assert_eq!(
            write_outcome(&Reply::Unknown("504".into())),
            Outcome::Unknown
        );
        assert_eq!(
            read_outcome(&Reply::Ok(None)),
            Outcome::read(None::<Vec<u8>>)
        );
        assert_eq!(
            read_outcome(&Reply::Ok(Some(b"v".to_vec()))),
            Outcome::Ok(OpResult::Read {
                value: Some(b"v".to_vec())
            })
        );
        let cas = CasReply {
            swapped: true,
            current: Some("n".into()),
        };
        assert_eq!(cas_outcome(&Reply::Ok(cas)), Outcome::cas(true, Some("n")));
        assert_eq!(cas_outcome(&Reply::Unknown("t".into())), Outcome::Unknown);
    }

    #[test]
    fn the_recorder_keeps_times_outcomes_and_group_writes() {
        let recorder = Recorder::new(Instant::now());
        let (op, invoked) = recorder.invoke(3, "k00001", OpKind::put("c3-1"));
        let (unfinished, _) = recorder.invoke(4, "k00001", OpKind::put("c4-1"));
        let completed = recorder.complete(op, Outcome::done());
        recorder.acknowledged(5, invoked, completed);
        let history = recorder.history();
        assert_eq!(history.len(), 2);
        let first = &history.operations()[0];
        assert_eq!(
            (first.client, first.key.as_slice()),
            (3, b"k00001".as_slice())
        );
        assert!(first.completed_at.unwrap() >= first.invoked_at);
        assert_eq!(
            history.operations()[unfinished.0 as usize].outcome,
            Outcome::Unknown
        );
        assert_eq!(
            recorder.counters.snapshot(),
            Counts {
                ok: 1,
                failed: 0,
                unknown: 0
            }
        );
        assert_eq!(recorder.writes()[0].group, 5);
    }

    #[test]
    fn a_client_against_a_dead_node_records_definite_failures() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let recorder = Recorder::new(Instant::now());
        let api = Api::new(Duration::from_secs(2));
        let mut state = ClientState {
            client: 0,
            sequence: 0,
            last_seen: HashMap::new(),
        };
        for choice in [
            OpChoice::Put,
            OpChoice::Cas,
            OpChoice::Delete,
            OpChoice::Get,
        ] {
            let end = state.run_op(&api, &recorder, dead, "k00000", choice, true);
            assert_eq!(end, OpEnd::Refused, "{choice:?}");
        }
        let counts = recorder.counters.snapshot();
        assert_eq!(counts.ok, 0);
        assert_eq!(counts.failed, 4, "refused operations are definite failures");
        let history = recorder.history();
        assert_eq!(history.len(), 4);
        assert!(
            history
                .operations()
                .iter()
                .all(|op| op.completed_at.is_some())
        );
    }
}

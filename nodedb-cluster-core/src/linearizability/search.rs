//! The Wing & Gong / Lowe search over one key's operations, with memoization of visited
//! (placed-operations set, value) pairs as in Porcupine.
//!
//! Call and return events sit in one time-ordered, doubly linked list. The search walks it:
//! at a call it tries to place that operation next (apply it to the model, remove its two
//! events from the list, restart from the head); at a return it has found an operation that
//! completed without being placed, so it backtracks. Placing an operation that leads to an
//! already visited (set, value) pair is skipped: the outcome from there is already known.
//! Unanswered operations have no return event, so the search succeeds as soon as the list
//! holds nothing but their calls.

use super::model::{ABSENT, KeyHistory, ValueId};
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// Steps of the deepest valid ordering kept for the report.
const ORDERING_SHOWN_MAX: usize = 8;
/// Operations that could have come next kept for the report.
const CANDIDATES_SHOWN_MAX: usize = 12;

/// How the search over one key ended.
#[derive(Debug)]
pub(super) enum SearchResult {
    Linearizable,
    NotLinearizable(StuckPoint),
    /// The search visited `explored_states_max` states without an answer.
    Exceeded,
}

/// Where the deepest attempt got stuck: evidence for the report. Operations are indexes into
/// `KeyHistory::ops`.
#[derive(Debug)]
pub(super) struct StuckPoint {
    /// Operations placed by the deepest valid ordering found.
    pub(super) placed: usize,
    /// Its last steps, oldest first, each with the value after it.
    pub(super) ordering_tail: Vec<(usize, ValueId)>,
    /// The value after the ordering.
    pub(super) state: ValueId,
    /// The operation that completed without any way to place it.
    pub(super) blocking: usize,
    /// Operations not placed yet and invoked before `blocking` completed, in invocation order.
    pub(super) candidates: Vec<usize>,
    /// How many such operations there were in total.
    pub(super) candidates_total: usize,
}

/// Searches for a linearization of `key`'s operations, visiting at most
/// `explored_states_max` distinct (set, value) states.
pub(super) fn search(key: &KeyHistory<'_>, explored_states_max: u64) -> SearchResult {
    let mut list = EventList::new(key);
    let mut placed = PlacedSet::new(key.ops.len());
    let mut visited: HashSet<Visited, BuildHasherDefault<FingerprintHasher>> = HashSet::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut state = ABSENT;
    let mut stuck: Option<StuckPoint> = None;
    let mut explored_states: u64 = 0;
    let mut entry = list.first();
    loop {
        // Bounded: every forward step visits a new state and the states are capped; between
        // two forward steps the walk moves along a finite list or pops the finite stack.
        let Some(node) = entry else {
            return SearchResult::Linearizable;
        };
        match list.event(node) {
            Event::Call(op) => {
                if let Some(after) = key.ops[op].step.apply(state) {
                    placed.insert(op);
                    if visited.insert(placed.visited(after)) {
                        explored_states += 1;
                        if explored_states > explored_states_max {
                            return SearchResult::Exceeded;
                        }
                        stack.push(Frame {
                            op,
                            state_before: state,
                        });
                        state = after;
                        list.lift(op);
                        entry = list.first();
                        continue;
                    }
                    placed.remove(op);
                }
                entry = list.next(node);
            }
            Event::Return(op) => {
                if stuck
                    .as_ref()
                    .is_none_or(|deepest| stack.len() > deepest.placed)
                {
                    stuck = Some(stuck_point(&list, &stack, state, op));
                }
                let Some(frame) = stack.pop() else {
                    let stuck = stuck.expect("a stuck point is recorded before giving up");
                    return SearchResult::NotLinearizable(stuck);
                };
                state = frame.state_before;
                placed.remove(frame.op);
                list.unlift(frame.op);
                entry = list.next(list.call_node(frame.op));
            }
        }
    }
}

/// One placed operation and the value before it, to undo the placement.
#[derive(Clone, Copy, Debug)]
struct Frame {
    op: usize,
    state_before: ValueId,
}

fn stuck_point(list: &EventList, stack: &[Frame], state: ValueId, blocking: usize) -> StuckPoint {
    let tail_start = stack.len().saturating_sub(ORDERING_SHOWN_MAX);
    let ordering_tail = (tail_start..stack.len())
        .map(|index| {
            let after = stack.get(index + 1).map_or(state, |next| next.state_before);
            (stack[index].op, after)
        })
        .collect();
    let mut candidates = Vec::new();
    let mut candidates_total = 0;
    let mut entry = list.first();
    while let Some(node) = entry {
        match list.event(node) {
            Event::Call(op) => {
                candidates_total += 1;
                if candidates.len() < CANDIDATES_SHOWN_MAX {
                    candidates.push(op);
                }
            }
            Event::Return(op) if op == blocking => break,
            Event::Return(_) => {}
        }
        entry = list.next(node);
    }
    StuckPoint {
        placed: stack.len(),
        ordering_tail,
        state,
        blocking,
        candidates,
        candidates_total,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Call(usize),
    Return(usize),
}

/// Events in time order (calls before returns at equal times, so that touching intervals
/// count as concurrent), linked both ways so that an operation's events can be lifted out and
/// put back in O(1) (dancing links). Node 0 is the head sentinel.
#[derive(Debug)]
struct EventList {
    events: Vec<Option<Event>>,
    next: Vec<u32>,
    prev: Vec<u32>,
    call_node: Vec<u32>,
    return_node: Vec<Option<u32>>,
}

const NIL: u32 = u32::MAX;

impl EventList {
    fn new(key: &KeyHistory<'_>) -> EventList {
        let mut timed: Vec<(u64, bool, usize)> = Vec::with_capacity(key.ops.len() * 2);
        for (op, key_op) in key.ops.iter().enumerate() {
            timed.push((key_op.invoked_at, false, op));
            if let Some(completed_at) = key_op.completed_at {
                timed.push((completed_at, true, op));
            }
        }
        timed.sort_unstable();
        let node_count = u32::try_from(timed.len() + 1).expect("fewer than 2^32 events per key");
        let mut list = EventList {
            events: Vec::with_capacity(node_count as usize),
            next: (1..=node_count)
                .map(|next| if next == node_count { NIL } else { next })
                .collect(),
            prev: (0..node_count)
                .map(|node| if node == 0 { NIL } else { node - 1 })
                .collect(),
            call_node: vec![NIL; key.ops.len()],
            return_node: vec![None; key.ops.len()],
        };
        list.events.push(None);
        for (index, (_, is_return, op)) in timed.into_iter().enumerate() {
            let node = index as u32 + 1;
            if is_return {
                list.return_node[op] = Some(node);
                list.events.push(Some(Event::Return(op)));
            } else {
                list.call_node[op] = node;
                list.events.push(Some(Event::Call(op)));
            }
        }
        list
    }

    fn first(&self) -> Option<u32> {
        self.next(0)
    }

    fn next(&self, node: u32) -> Option<u32> {
        let next = self.next[node as usize];
        (next != NIL).then_some(next)
    }

    fn event(&self, node: u32) -> Event {
        self.events[node as usize].expect("only the head sentinel has no event")
    }

    fn call_node(&self, op: usize) -> u32 {
        self.call_node[op]
    }

    /// Removes `op`'s call and return events.
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if let Some(node) = self.return_node[op] {
            self.unlink(node);
        }
    }

    /// Undoes the matching `lift`; lifts must be undone in reverse order.
    fn unlift(&mut self, op: usize) {
        if let Some(node) = self.return_node[op] {
            self.relink(node);
        }
        self.relink(self.call_node[op]);
    }

    fn unlink(&mut self, node: u32) {
        let (prev, next) = (self.prev[node as usize], self.next[node as usize]);
        self.next[prev as usize] = next;
        if next != NIL {
            self.prev[next as usize] = prev;
        }
    }

    fn relink(&mut self, node: u32) {
        let (prev, next) = (self.prev[node as usize], self.next[node as usize]);
        self.next[prev as usize] = node;
        if next != NIL {
            self.prev[next as usize] = node;
        }
    }
}

/// The set of placed operations, with a fingerprint kept up to date on every change so that
/// hashing a visited state costs O(1).
#[derive(Debug)]
struct PlacedSet {
    words: Vec<u64>,
    fingerprint: u64,
}

/// A visited (placed set, value) pair. Hashes by fingerprint, compares in full.
#[derive(Debug)]
struct Visited {
    fingerprint: u64,
    words: Box<[u64]>,
    state: ValueId,
}

impl PlacedSet {
    fn new(op_count: usize) -> PlacedSet {
        PlacedSet {
            words: vec![0; op_count.div_ceil(64)],
            fingerprint: 0,
        }
    }

    fn insert(&mut self, op: usize) {
        let (word, bit) = (op / 64, 1u64 << (op % 64));
        debug_assert_eq!(self.words[word] & bit, 0, "operation {op} placed twice");
        self.words[word] |= bit;
        self.fingerprint ^= mix(op as u64);
    }

    fn remove(&mut self, op: usize) {
        let (word, bit) = (op / 64, 1u64 << (op % 64));
        debug_assert_ne!(
            self.words[word] & bit,
            0,
            "operation {op} removed but not placed"
        );
        self.words[word] &= !bit;
        self.fingerprint ^= mix(op as u64);
    }

    fn visited(&self, state: ValueId) -> Visited {
        Visited {
            fingerprint: self.fingerprint,
            words: self.words.clone().into_boxed_slice(),
            state,
        }
    }
}

impl Hash for Visited {
    fn hash<H: Hasher>(&self, hasher: &mut H) {
        hasher.write_u64(self.fingerprint ^ mix(u64::from(self.state.0) | 1 << 63));
    }
}

impl PartialEq for Visited {
    fn eq(&self, other: &Visited) -> bool {
        self.fingerprint == other.fingerprint
            && self.state == other.state
            && self.words == other.words
    }
}

impl Eq for Visited {}

/// SplitMix64's finalizer: spreads small integers over all 64 bits.
fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Passes an already mixed `u64` through; deterministic, unlike the std default hasher.
#[derive(Debug, Default)]
struct FingerprintHasher {
    hash: u64,
}

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.hash
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.hash = mix(self.hash ^ u64::from(*byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.hash = value;
    }
}

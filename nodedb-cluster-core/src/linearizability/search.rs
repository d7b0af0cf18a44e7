//! The Wing & Gong / Lowe search over one key's operations, with memoization of visited
//! (placed-operations set, value) pairs as in Porcupine.
//!
//! Call and return events sit in one time-ordered, doubly linked list. The search walks it:
//! at a call it tries to place that operation next (apply it to the model, remove its two
//! events from the list, restart from the head); at a return it has found an operation that
//! completed without being placed, so it backtracks. Unanswered operations have no return
//! event, so the search succeeds as soon as the list holds nothing but their calls.
//!
//! Rules that prune without changing the verdict, because some linearization that obeys them
//! exists whenever any linearization does:
//! - a visited (set, value) pair is not explored again: it failed, or it is being explored;
//!   neither is a pair dominated by a visited one (`VisitedStates`);
//! - answered operations are tried first, unanswered ones only when none fits (`Pass`);
//! - an unanswered write is placed only right before an operation that observes its value
//!   (`Search::must_observe`), never when it changes nothing, never once every observer of its
//!   value must already be placed (`KeyOp::useful_until`), and only the first of several
//!   interchangeable ones is tried (`Search::class`).
//!
//! The tests check the rules together against a brute-force oracle
//! (`tests/linearizability_oracle.rs`).

use super::model::{ABSENT, KeyHistory, ValueId};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// Steps of the deepest valid ordering kept for the report.
const ORDERING_SHOWN_MAX: usize = 8;
/// Operations that could have come next kept for the report.
const CANDIDATES_SHOWN_MAX: usize = 12;

/// How the search over one key ended, and how many states it visited.
#[derive(Debug)]
pub(super) struct SearchOutcome {
    pub(super) result: SearchResult,
    pub(super) explored_states: u64,
}

#[derive(Debug)]
pub(super) enum SearchResult {
    Linearizable,
    NotLinearizable(StuckPoint),
    /// The search visited `explored_states_max` states without an answer.
    /// With the deepest stuck point so far, if any: a hint, not a proof.
    Exceeded(Option<StuckPoint>),
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
pub(super) fn search(key: &KeyHistory<'_>, explored_states_max: u64) -> SearchOutcome {
    let mut search = Search::new(key);
    let result = run(&mut search, explored_states_max);
    SearchOutcome {
        result,
        explored_states: search.explored_states,
    }
}

fn run(search: &mut Search<'_, '_>, explored_states_max: u64) -> SearchResult {
    let mut entry = search.list.first();
    let mut pass = Pass::Answered;
    loop {
        // Bounded: every forward step visits a new state and the states are capped; between
        // two forward steps the walk moves along a finite list or pops the finite stack.
        let Some(node) = entry else {
            assert_eq!(
                pass,
                Pass::Answered,
                "the unanswered pass stops at a return event"
            );
            return SearchResult::Linearizable;
        };
        match (search.list.event(node), pass) {
            (Event::Call(op), _) if search.is_unanswered(op) != (pass == Pass::Unanswered) => {
                entry = search.list.next(node);
            }
            (Event::Call(op), _) => {
                if search.try_place(op, node) {
                    if search.explored_states > explored_states_max {
                        return SearchResult::Exceeded(search.stuck.take());
                    }
                    entry = search.list.first();
                    pass = Pass::Answered;
                } else {
                    entry = search.list.next(node);
                }
            }
            (Event::Return(_), Pass::Answered) => {
                entry = search.list.first();
                pass = Pass::Unanswered;
            }
            (Event::Return(op), Pass::Unanswered) => {
                search.record_stuck(op);
                let Some(undone) = search.undo() else {
                    let stuck = search
                        .stuck
                        .take()
                        .expect("a stuck point is recorded before giving up");
                    return SearchResult::NotLinearizable(stuck);
                };
                entry = search.list.next(search.list.call_node(undone));
                pass = if search.is_unanswered(undone) {
                    Pass::Unanswered
                } else {
                    Pass::Answered
                };
            }
        }
    }
}

/// The two passes over the operations that may be placed next: answered ones first, then
/// unanswered ones, only once no answered one fits. Placing unanswered operations late keeps
/// the states where they are not placed ahead of those where they are, and the former
/// dominate the latter (see `VisitedStates`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    Answered,
    Unanswered,
}

/// The search's mutable state: the current partial ordering and what was visited.
#[derive(Debug)]
struct Search<'k, 'h> {
    key: &'k KeyHistory<'h>,
    list: EventList,
    placed: PlacedSet,
    visited: VisitedStates,
    stack: Vec<Frame>,
    state: ValueId,
    /// The latest invocation among placed operations.
    frontier: Option<u64>,
    /// The last placed operation is an unanswered write, so the next one must observe the
    /// value it wrote. An unanswered write can always be moved to just before the first
    /// operation that observes its value (the operations in between observe nothing, so
    /// they cannot tell), or dropped if nothing observes it before it is overwritten.
    must_observe: bool,
    stuck: Option<StuckPoint>,
    explored_states: u64,
    /// Per operation: unanswered operations with the same step and the same `useful_until`
    /// share a class; they are interchangeable, so only the first pending one of a class is
    /// ever tried at a given state.
    class: Vec<usize>,
}

impl<'k, 'h> Search<'k, 'h> {
    fn new(key: &'k KeyHistory<'h>) -> Search<'k, 'h> {
        Search {
            key,
            list: EventList::new(key),
            placed: PlacedSet::new(key),
            visited: VisitedStates::default(),
            stack: Vec::new(),
            state: ABSENT,
            frontier: None,
            must_observe: false,
            stuck: None,
            explored_states: 0,
            class: interchangeable_classes(key),
        }
    }

    fn is_unanswered(&self, op: usize) -> bool {
        self.key.ops[op].completed_at.is_none()
    }

    /// Places `op` (whose call event is `node`) next if its answer fits, placing it is not
    /// pointless, no interchangeable operation before it could take its place, and the
    /// resulting state is new.
    fn try_place(&mut self, op: usize, node: u32) -> bool {
        let key_op = &self.key.ops[op];
        if self.is_unanswered(op) && self.has_earlier_twin(op, node) {
            return false;
        }
        if self.must_observe && !key_op.step.observes(self.state) {
            return false;
        }
        let pointless = key_op
            .useful_until
            .is_some_and(|until| self.frontier.is_some_and(|frontier| frontier > until));
        let Some(after) = key_op.step.apply(self.state).filter(|_| !pointless) else {
            return false;
        };
        let must_observe = self.is_unanswered(op);
        if must_observe && after == self.state {
            // An unanswered operation that changes nothing can as well be omitted.
            return false;
        }
        self.placed.insert(op);
        if !self.visited.insert(&self.placed, after, must_observe) {
            self.placed.remove(op);
            return false;
        }
        self.explored_states += 1;
        self.stack.push(Frame {
            op,
            state_before: self.state,
            frontier_before: self.frontier,
            must_observe_before: self.must_observe,
        });
        self.state = after;
        self.must_observe = must_observe;
        self.frontier = self.frontier.max(Some(key_op.invoked_at));
        self.list.lift(op);
        true
    }

    /// Whether an unplaced operation of `op`'s class has its call before `node`. Every call
    /// before `node` is a candidate too, since `node` comes before the first return event.
    fn has_earlier_twin(&self, op: usize, node: u32) -> bool {
        let mut entry = self.list.previous(node);
        while let Some(earlier) = entry {
            if let Event::Call(other) = self.list.event(earlier)
                && self.class[other] == self.class[op]
            {
                return true;
            }
            entry = self.list.previous(earlier);
        }
        false
    }

    /// Takes back the last placed operation; `None` when nothing is placed.
    fn undo(&mut self) -> Option<usize> {
        let frame = self.stack.pop()?;
        self.state = frame.state_before;
        self.frontier = frame.frontier_before;
        self.must_observe = frame.must_observe_before;
        self.placed.remove(frame.op);
        self.list.unlift(frame.op);
        Some(frame.op)
    }

    /// Keeps the evidence of the deepest ordering that got stuck at `blocking`'s return.
    fn record_stuck(&mut self, blocking: usize) {
        let deeper = self
            .stuck
            .as_ref()
            .is_none_or(|deepest| self.stack.len() > deepest.placed);
        if deeper {
            self.stuck = Some(stuck_point(&self.list, &self.stack, self.state, blocking));
        }
    }
}

/// Class ids per operation; unanswered operations with equal step and `useful_until` share
/// one, every other operation has its own.
fn interchangeable_classes(key: &KeyHistory<'_>) -> Vec<usize> {
    let mut classes = BTreeMap::new();
    key.ops
        .iter()
        .enumerate()
        .map(|(op, key_op)| {
            if key_op.completed_at.is_some() {
                return op;
            }
            let fresh = op;
            *classes
                .entry((key_op.step, key_op.useful_until))
                .or_insert(fresh)
        })
        .collect()
}

/// One placed operation and the value before it, to undo the placement.
#[derive(Clone, Copy, Debug)]
struct Frame {
    op: usize,
    state_before: ValueId,
    frontier_before: Option<u64>,
    must_observe_before: bool,
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

    /// The event before `node`, `None` at the head.
    fn previous(&self, node: u32) -> Option<u32> {
        let previous = self.prev[node as usize];
        (previous != 0 && previous != NIL).then_some(previous)
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

/// The set of placed operations, answered and unanswered ones in separate bitsets, with a
/// fingerprint of the answered part kept up to date so that hashing a state costs O(1).
#[derive(Debug)]
struct PlacedSet {
    /// Per operation: whether it is unanswered, and its bit in the matching bitset.
    slots: Vec<(bool, usize)>,
    answered: Vec<u64>,
    unanswered: Vec<u64>,
    fingerprint: u64,
}

impl PlacedSet {
    fn new(key: &KeyHistory<'_>) -> PlacedSet {
        // Slots follow invocation order, so that the answered set of a state is mostly a run
        // of ones (everything long done) followed by a few bits: see `VisitedKey`.
        let mut by_invocation: Vec<usize> = (0..key.ops.len()).collect();
        by_invocation.sort_by_key(|op| (key.ops[*op].invoked_at, *op));
        let mut counts = [0usize; 2];
        let mut slots = vec![(false, 0); key.ops.len()];
        for op in by_invocation {
            let unanswered = key.ops[op].completed_at.is_none();
            slots[op] = (unanswered, counts[usize::from(unanswered)]);
            counts[usize::from(unanswered)] += 1;
        }
        PlacedSet {
            slots,
            answered: vec![0; counts[0].div_ceil(64)],
            unanswered: vec![0; counts[1].div_ceil(64)],
            fingerprint: 0,
        }
    }

    fn insert(&mut self, op: usize) {
        let (word, bit) = self.toggle(op);
        debug_assert_ne!(word & bit, 0, "operation {op} placed twice");
    }

    fn remove(&mut self, op: usize) {
        let (word, bit) = self.toggle(op);
        debug_assert_eq!(word & bit, 0, "operation {op} removed but not placed");
    }

    /// Flips `op`'s bit; returns the word after the flip and the bit.
    fn toggle(&mut self, op: usize) -> (u64, u64) {
        let (unanswered, slot) = self.slots[op];
        let bit = 1u64 << (slot % 64);
        let words = if unanswered {
            &mut self.unanswered
        } else {
            self.fingerprint ^= mix(slot as u64);
            &mut self.answered
        };
        words[slot / 64] ^= bit;
        (words[slot / 64], bit)
    }
}

/// Visited states, with dominance: a state is skipped when a visited one has the same value,
/// the same answered operations placed and a subset of its unanswered ones. The visited state
/// can do everything the new one can, since an unplaced unanswered operation blocks nothing
/// (it never completes) and may simply stay unplaced. Without this, every unanswered write
/// whose value is observed somewhere would double the states.
#[derive(Debug, Default)]
struct VisitedStates {
    /// (answered set, value) -> the minimal unanswered sets visited with it.
    states: HashMap<VisitedKey, Vec<Box<[u64]>>, BuildHasherDefault<FingerprintHasher>>,
}

/// The answered part of a visited state. Hashes by fingerprint, compares in full. The set is
/// stored compactly, as a count of leading all-ones words and the words after them up to the
/// last non-zero one: a few words instead of one bit per operation of the key.
#[derive(Debug)]
struct VisitedKey {
    fingerprint: u64,
    full_words: u32,
    answered: Box<[u64]>,
    state: ValueId,
    /// Part of the state: it restricts what may come next.
    must_observe: bool,
}

impl VisitedStates {
    /// Records (`placed`, `state`); false if it, or a state that dominates it, was visited.
    fn insert(&mut self, placed: &PlacedSet, state: ValueId, must_observe: bool) -> bool {
        let words = &placed.answered;
        let full_words = words.iter().take_while(|word| **word == u64::MAX).count();
        let used_words = words
            .iter()
            .rposition(|word| *word != 0)
            .map_or(0, |last| last + 1);
        let mut key = VisitedKey {
            fingerprint: placed.fingerprint,
            full_words: u32::try_from(full_words).expect("fewer than 2^32 words"),
            answered: words[full_words..used_words.max(full_words)].into(),
            state,
            must_observe: false,
        };
        if must_observe {
            // The unrestricted state dominates the restricted one.
            let dominated = self.states.get(&key).is_some_and(|minimal| {
                minimal
                    .iter()
                    .any(|visited| is_subset(visited, &placed.unanswered))
            });
            if dominated {
                return false;
            }
            key.must_observe = true;
        }
        let minimal = self.states.entry(key).or_default();
        if minimal
            .iter()
            .any(|visited| is_subset(visited, &placed.unanswered))
        {
            return false;
        }
        minimal.retain(|visited| !is_subset(&placed.unanswered, visited));
        minimal.push(placed.unanswered.clone().into_boxed_slice());
        true
    }
}

fn is_subset(small: &[u64], large: &[u64]) -> bool {
    small
        .iter()
        .zip(large)
        .all(|(small, large)| small & !large == 0)
}

impl Hash for VisitedKey {
    fn hash<H: Hasher>(&self, hasher: &mut H) {
        let state = u64::from(self.state.0) | u64::from(self.must_observe) << 32 | 1 << 63;
        hasher.write_u64(self.fingerprint ^ mix(state));
    }
}

impl PartialEq for VisitedKey {
    fn eq(&self, other: &VisitedKey) -> bool {
        self.fingerprint == other.fingerprint
            && self.state == other.state
            && self.must_observe == other.must_observe
            && self.full_words == other.full_words
            && self.answered == other.answered
    }
}

impl Eq for VisitedKey {}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearizability::model::split_by_key;
    use crate::linearizability::{History, HistoryRecorder, OpKind, Outcome};

    /// put "a" [0, 5] answered; get [5, 6] reads "a"; put "b" [1, ?] unanswered, observed.
    fn small_history() -> History {
        let mut recorder = HistoryRecorder::new();
        let put = recorder.invoke(1, "k", OpKind::put("a"), 0);
        recorder.invoke(2, "k", OpKind::put("b"), 1);
        let get = recorder.invoke(3, "k", OpKind::Get, 5);
        recorder.complete(put, 5, Outcome::done()).unwrap();
        recorder.complete(get, 6, Outcome::read(Some("a"))).unwrap();
        recorder
            .record(3, "k", OpKind::Get, 7, 8, Outcome::read(Some("b")))
            .unwrap();
        recorder.finish()
    }

    fn events(list: &EventList) -> Vec<Event> {
        let mut events = Vec::new();
        let mut entry = list.first();
        while let Some(node) = entry {
            events.push(list.event(node));
            entry = list.next(node);
        }
        events
    }

    #[test]
    fn events_are_in_time_order_with_calls_first_at_equal_times() {
        let history = small_history();
        let keys = split_by_key(&history);
        let list = EventList::new(&keys[0]);
        use Event::{Call, Return};
        let expected = [
            Call(0),
            Call(1),
            Call(2),
            Return(0),
            Return(2),
            Call(3),
            Return(3),
        ];
        assert_eq!(events(&list), expected);
    }

    #[test]
    fn lifts_are_undone_exactly() {
        let history = small_history();
        let keys = split_by_key(&history);
        let mut list = EventList::new(&keys[0]);
        let before = events(&list);
        list.lift(0);
        list.lift(2);
        list.lift(1);
        assert_eq!(events(&list), [Event::Call(3), Event::Return(3)]);
        assert_eq!(list.previous(list.call_node(3)), None);
        list.unlift(1);
        list.unlift(2);
        list.unlift(0);
        assert_eq!(events(&list), before);
    }

    #[test]
    fn fewer_unanswered_operations_dominate_more() {
        let history = small_history();
        let keys = split_by_key(&history);
        let mut placed = PlacedSet::new(&keys[0]);
        let mut visited = VisitedStates::default();
        let value = ValueId(1);
        placed.insert(0);
        placed.insert(1);
        assert!(visited.insert(&placed, value, false));
        assert!(
            !visited.insert(&placed, value, false),
            "the same state again"
        );
        placed.remove(1);
        assert!(visited.insert(&placed, value, false), "a subset is new");
        placed.insert(1);
        assert!(
            !visited.insert(&placed, value, true),
            "dominated by the subset"
        );
        assert!(
            visited.insert(&placed, ValueId(2), false),
            "another value is new"
        );
    }

    #[test]
    fn search_finds_the_ordering_and_reports_the_stuck_read() {
        let history = small_history();
        let keys = split_by_key(&history);
        let outcome = search(&keys[0], 1_000);
        assert!(matches!(outcome.result, SearchResult::Linearizable));

        let mut operations = history.operations().to_vec();
        operations[3].outcome = Outcome::read(Some("c"));
        let history = History::new(operations).unwrap();
        let keys = split_by_key(&history);
        assert_eq!(keys[0].ignored, 1, "nothing observes \"b\" any more");
        let SearchResult::NotLinearizable(stuck) = search(&keys[0], 1_000).result else {
            panic!("a read of a value never written cannot be placed");
        };
        // Key operations: put "a", get "a", get "c".
        assert_eq!((stuck.blocking, stuck.placed), (2, 2));
        assert_eq!(stuck.candidates, [2]);
    }

    #[test]
    fn the_state_bound_stops_the_search() {
        let history = small_history();
        let keys = split_by_key(&history);
        assert!(matches!(
            search(&keys[0], 1).result,
            SearchResult::Exceeded(_)
        ));
    }
}

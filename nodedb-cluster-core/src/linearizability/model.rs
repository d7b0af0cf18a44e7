//! The sequential model (one register per key) and the preparation of a history for the
//! search: split by key, drop what cannot constrain the result, intern values to small ids so
//! that a search state is two integers and a bitset.

use super::history::{History, OpKind, OpResult, Operation, Outcome};
use std::collections::{BTreeMap, BTreeSet};

/// A key's value, interned per key. `ABSENT` is the initial value of every key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct ValueId(pub(super) u32);

pub(super) const ABSENT: ValueId = ValueId(0);

/// The values one key's operations mention, by id.
#[derive(Debug)]
pub(super) struct Values<'h> {
    ids: BTreeMap<&'h [u8], ValueId>,
    bytes: Vec<Option<&'h [u8]>>,
}

/// What one operation does to the register, with ids instead of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Step {
    /// A `Put` or `Delete` (`value` is `ABSENT`), answered or not.
    Write { value: ValueId },
    /// An answered `Get`.
    Read { value: ValueId },
    /// A `Cas`; `answer` is `None` when its outcome is unknown.
    Cas {
        expected: ValueId,
        new: ValueId,
        answer: Option<CasAnswer>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct CasAnswer {
    pub(super) swapped: bool,
    pub(super) current: ValueId,
}

/// One operation that takes part in the search.
#[derive(Debug)]
pub(super) struct KeyOp<'h> {
    pub(super) operation: &'h Operation,
    pub(super) step: Step,
    pub(super) invoked_at: u64,
    /// `None` for unknown outcomes: they complete at infinity.
    pub(super) completed_at: Option<u64>,
    /// For unknown outcomes: the last completion of an operation that observes the value this
    /// one writes (`None`: no limit, an unanswered CAS depends on it). Once an operation
    /// invoked later than this is placed, every observer is placed too, so placing this one
    /// is pointless: nothing after it would see its value, and it may be omitted instead.
    pub(super) useful_until: Option<u64>,
}

/// The part of a history that concerns one key, ready for the search.
#[derive(Debug)]
pub(super) struct KeyHistory<'h> {
    pub(super) key: &'h [u8],
    pub(super) ops: Vec<KeyOp<'h>>,
    pub(super) values: Values<'h>,
    /// Operations of this key that cannot change the verdict and were left out.
    pub(super) ignored: u64,
}

impl<'h> Values<'h> {
    fn new() -> Values<'h> {
        Values {
            ids: BTreeMap::new(),
            bytes: vec![None],
        }
    }

    fn intern(&mut self, value: Option<&'h [u8]>) -> ValueId {
        let Some(bytes) = value else {
            return ABSENT;
        };
        if let Some(id) = self.ids.get(bytes) {
            return *id;
        }
        let id = ValueId(u32::try_from(self.bytes.len()).expect("fewer than 2^32 values per key"));
        self.ids.insert(bytes, id);
        self.bytes.push(Some(bytes));
        id
    }

    /// The bytes of an id handed out by this table.
    pub(super) fn bytes(&self, id: ValueId) -> Option<&'h [u8]> {
        self.bytes[id.0 as usize]
    }
}

impl Step {
    /// Whether applying this step in `state` (when it applies) depends on that value: reads
    /// and answered CASes do; an unanswered CAS does only when it swaps; blind writes never.
    pub(super) fn observes(self, state: ValueId) -> bool {
        match self {
            Step::Write { .. } => false,
            Step::Read { .. }
            | Step::Cas {
                answer: Some(_), ..
            } => true,
            Step::Cas {
                expected,
                answer: None,
                ..
            } => expected == state,
        }
    }

    /// The value after this step when it is applied to `state`, or `None` if its answer is
    /// impossible from `state`.
    pub(super) fn apply(self, state: ValueId) -> Option<ValueId> {
        match self {
            Step::Write { value } => Some(value),
            Step::Read { value } => (value == state).then_some(state),
            Step::Cas {
                expected,
                new,
                answer: None,
            } => Some(if state == expected { new } else { state }),
            Step::Cas {
                expected,
                new,
                answer: Some(answer),
            } => {
                if state == expected {
                    let current_ok = answer.current == new || answer.current == expected;
                    (answer.swapped && current_ok).then_some(new)
                } else {
                    (!answer.swapped && answer.current == state).then_some(state)
                }
            }
        }
    }
}

/// Splits `history` by key (in key order) and prepares each key for the search.
///
/// Left out, because they cannot change the verdict: failed operations (they did not happen),
/// unanswered reads (they constrain nothing), and unanswered writes whose written value no
/// kept operation of the key observes (see `observed_values`). Such a write, if it took
/// effect, was overwritten before anyone looked. Removing all of them from a linearization
/// changes the value seen only by blind writes and by unanswered CASes that did not swap
/// there; those CASes may be omitted too, so a linearization remains. Conversely a
/// linearization without them is one of the full history, since unanswered operations may
/// never happen.
pub(super) fn split_by_key(history: &History) -> Vec<KeyHistory<'_>> {
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    for operation in history.operations() {
        by_key.entry(&operation.key).or_default().push(operation);
    }
    by_key
        .into_iter()
        .map(|(key, operations)| prepare_key(key, &operations))
        .collect()
}

fn prepare_key<'h>(key: &'h [u8], operations: &[&'h Operation]) -> KeyHistory<'h> {
    let observed = observed_values(operations);
    let mut values = Values::new();
    let mut ops = Vec::with_capacity(operations.len());
    let mut ignored = 0;
    for operation in operations {
        let Some(step) = step_of(operation, &observed, &mut values) else {
            ignored += 1;
            continue;
        };
        let completed_at = match operation.outcome {
            Outcome::Ok(_) => operation.completed_at,
            Outcome::Failed | Outcome::Unknown => None,
        };
        ops.push(KeyOp {
            operation,
            step,
            invoked_at: operation.invoked_at,
            completed_at,
            useful_until: None,
        });
    }
    set_useful_until(&mut ops);
    KeyHistory {
        key,
        ops,
        values,
        ignored,
    }
}

/// Fills `useful_until` of unanswered writes from the observers of the values they write.
fn set_useful_until(ops: &mut [KeyOp<'_>]) {
    // Per value: the last completion of an observer, `None` if an unanswered CAS observes it.
    let mut last_observed: BTreeMap<ValueId, Option<u64>> = BTreeMap::new();
    let mut observe = |value: ValueId, until: Option<u64>| {
        let entry = last_observed.entry(value).or_insert(until);
        *entry = entry.zip(until).map(|(a, b)| a.max(b));
    };
    for op in ops.iter() {
        match (op.step, op.completed_at) {
            (Step::Read { value }, Some(completed_at)) => observe(value, Some(completed_at)),
            (
                Step::Cas {
                    expected,
                    answer: Some(answer),
                    ..
                },
                Some(completed_at),
            ) => {
                observe(answer.current, Some(completed_at));
                if answer.swapped {
                    observe(expected, Some(completed_at));
                }
            }
            (Step::Cas { expected, .. }, None) => observe(expected, None),
            _ => {}
        }
    }
    for op in ops.iter_mut().filter(|op| op.completed_at.is_none()) {
        let written = match op.step {
            Step::Write { value } | Step::Cas { new: value, .. } => value,
            Step::Read { .. } => unreachable!("unanswered reads are left out"),
        };
        // Kept unanswered writes always have an observer; without one, no limit is safe.
        op.useful_until = last_observed.get(&written).copied().flatten();
    }
}

/// The step an operation contributes, or `None` if it is left out (see `split_by_key`).
fn step_of<'h>(
    operation: &'h Operation,
    observed: &BTreeSet<Option<&[u8]>>,
    values: &mut Values<'h>,
) -> Option<Step> {
    let written = match &operation.kind {
        OpKind::Put { value } | OpKind::Cas { new: value, .. } => Some(value.as_slice()),
        OpKind::Delete | OpKind::Get => None,
    };
    match &operation.outcome {
        Outcome::Failed => return None,
        Outcome::Unknown if !operation.kind.is_write() || !observed.contains(&written) => {
            return None;
        }
        Outcome::Unknown | Outcome::Ok(_) => {}
    }
    let step = match (&operation.kind, &operation.outcome) {
        (OpKind::Put { value }, _) => Step::Write {
            value: values.intern(Some(value)),
        },
        (OpKind::Delete, _) => Step::Write { value: ABSENT },
        (OpKind::Get, Outcome::Ok(OpResult::Read { value })) => Step::Read {
            value: values.intern(value.as_deref()),
        },
        (OpKind::Cas { expected, new }, outcome) => Step::Cas {
            expected: values.intern(expected.as_deref()),
            new: values.intern(Some(new)),
            answer: match outcome {
                Outcome::Ok(OpResult::Cas { swapped, current }) => Some(CasAnswer {
                    swapped: *swapped,
                    current: values.intern(current.as_deref()),
                }),
                _ => None,
            },
        },
        (OpKind::Get, _) => unreachable!(
            "history validation lets only answered reads with a read result through, got {:?}",
            operation
        ),
    };
    Some(step)
}

/// Every value (including "absent") that some kept operation of the key may observe: read or
/// reported as current by an answered operation, required by a CAS that swapped, or required
/// by an unanswered CAS that is itself kept (its new value is observed). The last rule feeds
/// on itself, so it runs to a fixpoint: one more pass per newly kept CAS at most.
fn observed_values<'h>(operations: &[&'h Operation]) -> BTreeSet<Option<&'h [u8]>> {
    let mut observed = BTreeSet::new();
    let mut unknown_cas: Vec<(Option<&'h [u8]>, &'h [u8])> = Vec::new();
    for operation in operations {
        match (&operation.kind, &operation.outcome) {
            (OpKind::Get, Outcome::Ok(OpResult::Read { value })) => {
                observed.insert(value.as_deref());
            }
            (OpKind::Cas { expected, .. }, Outcome::Ok(OpResult::Cas { swapped, current })) => {
                observed.insert(current.as_deref());
                if *swapped {
                    observed.insert(expected.as_deref());
                }
            }
            (OpKind::Cas { expected, new }, Outcome::Unknown) => {
                unknown_cas.push((expected.as_deref(), new));
            }
            _ => {}
        }
    }
    // Bounded: each pass either keeps at least one more CAS or stops.
    loop {
        let before = unknown_cas.len();
        unknown_cas.retain(|(expected, new)| {
            let kept = observed.contains(&Some(*new));
            if kept {
                observed.insert(*expected);
            }
            !kept
        });
        if unknown_cas.len() == before {
            return observed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ValueId = ValueId(1);
    const B: ValueId = ValueId(2);

    #[test]
    fn reads_must_see_the_current_value() {
        assert_eq!(Step::Read { value: A }.apply(A), Some(A));
        assert_eq!(Step::Read { value: A }.apply(B), None);
        assert_eq!(Step::Read { value: ABSENT }.apply(ABSENT), Some(ABSENT));
    }

    #[test]
    fn answered_cas_must_agree_with_the_value() {
        let cas = |swapped, current| Step::Cas {
            expected: A,
            new: B,
            answer: Some(CasAnswer { swapped, current }),
        };
        assert_eq!(cas(true, B).apply(A), Some(B));
        assert_eq!(cas(true, A).apply(A), Some(B), "pre-swap convention");
        assert_eq!(cas(true, ABSENT).apply(A), None);
        assert_eq!(cas(false, A).apply(A), None);
        assert_eq!(cas(false, ABSENT).apply(ABSENT), Some(ABSENT));
        assert_eq!(cas(false, B).apply(ABSENT), None);
        assert_eq!(cas(true, B).apply(ABSENT), None);
    }

    #[test]
    fn unanswered_cas_swaps_only_on_match() {
        let cas = Step::Cas {
            expected: A,
            new: B,
            answer: None,
        };
        assert_eq!(cas.apply(A), Some(B));
        assert_eq!(cas.apply(ABSENT), Some(ABSENT));
    }
}

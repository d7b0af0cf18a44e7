//! The checker's answer and the text an engineer reads when a history is not linearizable:
//! the deepest valid ordering found, the operation that could not be placed, and why each
//! operation that might have come next does not fit.

use super::history::{OpKind, OpResult, Operation, Outcome};
use super::model::{KeyHistory, Step, ValueId};
use super::search::StuckPoint;
use super::text::{show, show_value, text_bytes};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

/// Problem keys whose explanation `Report`'s text shows; the rest are only counted.
const PROBLEMS_SHOWN_MAX: usize = 5;

/// The verdict on a whole history, or on one key of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every key has a linearization.
    Linearizable,
    /// `key` has none. `explanation` is the readable account; `window` holds the operations
    /// it mentions, in invocation order, for machine-readable failure reports.
    NotLinearizable {
        #[serde(with = "text_bytes")]
        key: Vec<u8>,
        explanation: String,
        window: Vec<Operation>,
    },
    /// The search for `key` stopped before reaching an answer. Not a pass. `hint` shows
    /// where the search got furthest before it stopped, in the same form as a failure's
    /// explanation: a likely place to look, not a proof. Empty if it never got stuck.
    Unknown {
        #[serde(with = "text_bytes")]
        key: Vec<u8>,
        reason: UnknownReason,
        hint: String,
    },
}

/// Why the checker could not decide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownReason {
    /// The search visited `explored_states_max` states (see `CheckLimits`) over the key's
    /// `ops` operations. Too many concurrent or unanswered operations on one key; record
    /// fewer, use more keys, or raise the limit.
    ExploredStatesExceeded { explored_states_max: u64, ops: u64 },
}

/// The result of checking a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// `NotLinearizable` if any key is (the first such key), else `Unknown` if any key could
    /// not be decided, else `Linearizable`.
    pub verdict: Verdict,
    /// Every key that is not `Linearizable`, failures first, each in key order.
    pub problems: Vec<Verdict>,
    pub keys_checked: u64,
    /// Operations that took part in the search.
    pub ops_checked: u64,
    /// Operations left out because they cannot change the verdict: failed operations,
    /// unanswered reads, unanswered writes whose value nobody observed.
    pub ops_ignored: u64,
    /// Search states visited over all keys: the cost of the check.
    pub states_explored: u64,
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

impl Report {
    /// True only when every key was shown linearizable; `Unknown` is not a pass.
    pub fn is_linearizable(&self) -> bool {
        self.verdict.is_linearizable()
    }

    /// Assembles a report from per-key verdicts.
    pub(super) fn from_keys(
        mut problems: Vec<Verdict>,
        keys_checked: u64,
        ops_checked: u64,
        ops_ignored: u64,
        states_explored: u64,
    ) -> Report {
        problems.sort_by_key(|verdict| !matches!(verdict, Verdict::NotLinearizable { .. }));
        let verdict = problems.first().cloned().unwrap_or(Verdict::Linearizable);
        Report {
            verdict,
            problems,
            keys_checked,
            ops_checked,
            ops_ignored,
            states_explored,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable { explanation, .. } => write!(f, "{explanation}"),
            Verdict::Unknown { key, reason, hint } => {
                let UnknownReason::ExploredStatesExceeded {
                    explored_states_max,
                    ops,
                } = reason;
                write!(
                    f,
                    "key {} undecided: the search over its {ops} operations visited \
                     {explored_states_max} states without an answer (explored_states_max)",
                    show(key)
                )?;
                if !hint.is_empty() {
                    write!(f, ". Where it got furthest (a hint, not a proof):\n{hint}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failures = self
            .problems
            .iter()
            .filter(|verdict| matches!(verdict, Verdict::NotLinearizable { .. }))
            .count();
        let undecided = self.problems.len() - failures;
        let headline = match self.verdict {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable { .. } => "NOT linearizable",
            Verdict::Unknown { .. } => "UNDECIDED",
        };
        writeln!(
            f,
            "{headline}: {}, {} checked, {} ignored, {} explored; {} not linearizable, \
             {undecided} undecided",
            count(self.keys_checked, "key"),
            count(self.ops_checked, "operation"),
            self.ops_ignored,
            count(self.states_explored, "state"),
            count(failures as u64, "key"),
        )?;
        for problem in self.problems.iter().take(PROBLEMS_SHOWN_MAX) {
            writeln!(f, "{problem}")?;
        }
        if self.problems.len() > PROBLEMS_SHOWN_MAX {
            let more = self.problems.len() - PROBLEMS_SHOWN_MAX;
            writeln!(
                f,
                "... and {} not shown (see `problems`)",
                count(more as u64, "key")
            )?;
        }
        Ok(())
    }
}

/// "1 key", "2 keys".
fn count(number: u64, noun: &str) -> String {
    let plural = if number == 1 { "" } else { "s" };
    format!("{number} {noun}{plural}")
}

/// The verdict for a key whose search stopped after `explored_states_max` states, the
/// deepest it got stuck being `stuck`.
pub(super) fn undecided(
    key: &KeyHistory<'_>,
    explored_states_max: u64,
    stuck: Option<&StuckPoint>,
) -> Verdict {
    let mut hint = String::new();
    if let Some(stuck) = stuck {
        explain(key, stuck, &mut hint).expect("writing to a String cannot fail");
    }
    Verdict::Unknown {
        key: key.key.to_vec(),
        reason: UnknownReason::ExploredStatesExceeded {
            explored_states_max,
            ops: key.ops.len() as u64,
        },
        hint,
    }
}

/// The verdict for a key whose search got stuck at `stuck`.
pub(super) fn not_linearizable(key: &KeyHistory<'_>, stuck: &StuckPoint) -> Verdict {
    let mut text = String::new();
    let clients: BTreeSet<u64> = key.ops.iter().map(|op| op.operation.client).collect();
    writeln!(
        text,
        "key {} is not linearizable ({} operations from {} clients checked).",
        show(key.key),
        key.ops.len(),
        clients.len()
    )
    .expect("writing to a String cannot fail");
    explain(key, stuck, &mut text).expect("writing to a String cannot fail");
    let mut window: BTreeSet<usize> = stuck.candidates.iter().copied().collect();
    window.extend(stuck.ordering_tail.iter().map(|(op, _)| *op));
    window.insert(stuck.blocking);
    let mut window: Vec<Operation> = window
        .into_iter()
        .map(|op| key.ops[op].operation.clone())
        .collect();
    window.sort_by_key(|operation| (operation.invoked_at, operation.id));
    Verdict::NotLinearizable {
        key: key.key.to_vec(),
        explanation: text,
        window,
    }
}

/// The deepest valid ordering, the operation it could not place and why nothing fits.
fn explain(key: &KeyHistory<'_>, stuck: &StuckPoint, out: &mut String) -> fmt::Result {
    writeln!(
        out,
        "The deepest valid ordering places {} of them; the value is then {}.",
        stuck.placed,
        show_value(key.values.bytes(stuck.state))
    )?;
    if stuck.ordering_tail.is_empty() {
        writeln!(out, "(It places nothing: the value is the initial one.)")?;
    } else {
        let omitted = stuck.placed - stuck.ordering_tail.len();
        let oldest = if omitted > 0 {
            format!(", {omitted} earlier ones omitted")
        } else {
            String::new()
        };
        writeln!(
            out,
            "Its last steps (oldest first{oldest}), with the value after each:"
        )?;
        for (op, after) in &stuck.ordering_tail {
            let after = show_value(key.values.bytes(*after));
            writeln!(out, "  {}  => {after}", describe(key.ops[*op].operation))?;
        }
    }
    let blocking = key.ops[stuck.blocking].operation;
    writeln!(
        out,
        "Nothing fits next, yet this operation completed and must be placed by now:\n  {}",
        describe(blocking)
    )?;
    writeln!(
        out,
        "Operations that could take effect next ({} shown of {}), and why none works:",
        stuck.candidates.len(),
        stuck.candidates_total
    )?;
    for op in &stuck.candidates {
        let key_op = &key.ops[*op];
        let why = why_not(key, key_op.step, stuck.state);
        writeln!(out, "  {}\n      {why}", describe(key_op.operation))?;
    }
    Ok(())
}

/// Why `step` cannot come next when the value is `state`.
fn why_not(key: &KeyHistory<'_>, step: Step, state: ValueId) -> String {
    let value = |id: ValueId| show_value(key.values.bytes(id));
    match step {
        Step::Read { value: seen } if seen != state => {
            format!("observed {} but the value is {}", value(seen), value(state))
        }
        Step::Cas {
            expected,
            answer: Some(answer),
            ..
        } if step.apply(state).is_none() => {
            if state == expected && !answer.swapped {
                format!(
                    "answered not swapped, but the value equals the expected {}",
                    value(expected)
                )
            } else if state == expected {
                format!("answered swapped with current {}", value(answer.current))
            } else if answer.swapped {
                format!(
                    "answered swapped, but the value is {}, not the expected {}",
                    value(state),
                    value(expected)
                )
            } else {
                format!(
                    "answered current {}, but the value is {}",
                    value(answer.current),
                    value(state)
                )
            }
        }
        _ => "fits here, but no valid ordering continues after it".to_string(),
    }
}

/// One operation on one line: `#id client c [invoked, completed] what -> answer`.
pub(super) fn describe(operation: &Operation) -> String {
    let completed = match (&operation.outcome, operation.completed_at) {
        (Outcome::Unknown, _) | (_, None) => "?".to_string(),
        (_, Some(completed_at)) => completed_at.to_string(),
    };
    let what = match &operation.kind {
        OpKind::Put { value } => format!("put {}", show(value)),
        OpKind::Get => "get".to_string(),
        OpKind::Delete => "delete".to_string(),
        OpKind::Cas { expected, new } => {
            format!("cas {} -> {}", show_value(expected.as_deref()), show(new))
        }
    };
    let answer = match &operation.outcome {
        Outcome::Ok(OpResult::Done) => "ok".to_string(),
        Outcome::Ok(OpResult::Read { value }) => show_value(value.as_deref()),
        Outcome::Ok(OpResult::Cas { swapped, current }) => format!(
            "{}, current {}",
            if *swapped { "swapped" } else { "not swapped" },
            show_value(current.as_deref())
        ),
        Outcome::Failed => "failed".to_string(),
        Outcome::Unknown => "unknown outcome".to_string(),
    };
    format!(
        "#{} client {} [{}, {}] {what} -> {answer}",
        operation.id.0, operation.client, operation.invoked_at, completed
    )
}

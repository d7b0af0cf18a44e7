//! The recorded history: operations on a key-value store as the clients saw them, and a
//! recorder that builds one while a test runs. Validation lives here, so the checker only ever
//! sees well-formed operations, whether they were recorded in-process or read back from JSON.

use super::text::{text_bytes, text_bytes_option};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use thiserror::Error;

/// Identifies one operation within a history. The recorder hands them out in invocation
/// order, starting at 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId(pub u64);

/// What a client asked the store to do with one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Set the key to `value`.
    Put {
        #[serde(with = "text_bytes")]
        value: Vec<u8>,
    },
    /// Read the key.
    Get,
    /// Remove the key (absent afterwards, whether or not it was present).
    Delete,
    /// Set the key to `new` if and only if its value is `expected` (`None`: absent).
    Cas {
        #[serde(with = "text_bytes_option")]
        expected: Option<Vec<u8>>,
        #[serde(with = "text_bytes")]
        new: Vec<u8>,
    },
}

/// What the store answered to an operation that succeeded.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpResult {
    /// A `Put` or `Delete` was applied.
    Done,
    /// A `Get` observed `value` (`None`: absent).
    Read {
        #[serde(with = "text_bytes_option")]
        value: Option<Vec<u8>>,
    },
    /// A `Cas` answered whether it swapped and the key's `current` value: the value after the
    /// operation, so `new` when it swapped and the value it found otherwise. A store that
    /// reports the value before a successful swap (then equal to `expected`) is also accepted.
    Cas {
        swapped: bool,
        #[serde(with = "text_bytes_option")]
        current: Option<Vec<u8>>,
    },
}

/// How an operation ended, as far as its client can tell.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The store answered with this result: the operation took effect exactly once, at some
    /// instant between its invocation and its completion.
    Ok(OpResult),
    /// The store answered that the operation was not applied and never will be (for example
    /// 400, 404 on a write path, 503 before forwarding). It is removed before checking.
    Failed,
    /// No answer, or an answer that does not say (timeout, 504, connection lost): the
    /// operation may take effect at any instant after its invocation, even after the client
    /// gave up, or never. The operation has not completed yet or was never completed.
    Unknown,
}

/// One client operation on one key, with the interval in which it was in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: OpId,
    /// The client (process, task, connection) that issued the operation. Only used in reports:
    /// the checker does not assume one operation in flight per client.
    pub client: u64,
    #[serde(with = "text_bytes")]
    pub key: Vec<u8>,
    pub kind: OpKind,
    /// When the client sent the request, in any monotonic unit shared by all clients.
    pub invoked_at: u64,
    /// When the client received the answer (or gave up); `None` while in flight. Ignored for
    /// `Unknown` outcomes, which are treated as completing at infinity.
    pub completed_at: Option<u64>,
    pub outcome: Outcome,
}

/// A validated history: every operation's result matches its kind, successful operations have
/// a completion time not before their invocation, and ids are unique.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "HistoryRecord", into = "HistoryRecord")]
pub struct History {
    operations: Vec<Operation>,
}

/// Why a history, or one operation given to the recorder, is malformed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HistoryError {
    #[error("operation {op:?} completed at {completed_at}, before it was invoked at {invoked_at}")]
    CompletedBeforeInvoked {
        op: OpId,
        invoked_at: u64,
        completed_at: u64,
    },
    #[error("operation {op:?} succeeded but has no completion time")]
    OkWithoutCompletion { op: OpId },
    #[error("operation {op:?} is a {kind} but its result is {result}")]
    ResultDoesNotMatchKind {
        op: OpId,
        kind: &'static str,
        result: &'static str,
    },
    #[error("operation id {op:?} appears more than once")]
    DuplicateId { op: OpId },
    #[error("operation {op:?} was never invoked on this recorder")]
    NotInvoked { op: OpId },
    #[error("operation {op:?} was already completed")]
    AlreadyCompleted { op: OpId },
}

/// Builds a history while a test runs: `invoke` when a request is sent, `complete` when its
/// answer (or a timeout) arrives. Operations never completed end up `Unknown`. Not
/// synchronised: concurrent clients share it behind a mutex.
#[derive(Clone, Debug, Default)]
pub struct HistoryRecorder {
    operations: Vec<Operation>,
}

impl OpKind {
    pub fn put(value: impl Into<Vec<u8>>) -> OpKind {
        OpKind::Put {
            value: value.into(),
        }
    }

    pub fn cas(expected: Option<impl Into<Vec<u8>>>, new: impl Into<Vec<u8>>) -> OpKind {
        OpKind::Cas {
            expected: expected.map(Into::into),
            new: new.into(),
        }
    }

    /// A short lowercase name, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Put { .. } => "put",
            OpKind::Get => "get",
            OpKind::Delete => "delete",
            OpKind::Cas { .. } => "cas",
        }
    }

    /// Whether the operation can change the key's value.
    pub fn is_write(&self) -> bool {
        !matches!(self, OpKind::Get)
    }
}

impl OpResult {
    /// A short lowercase name, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            OpResult::Done => "done",
            OpResult::Read { .. } => "read",
            OpResult::Cas { .. } => "cas",
        }
    }
}

impl Outcome {
    /// The answer to a successful `Put` or `Delete`.
    pub fn done() -> Outcome {
        Outcome::Ok(OpResult::Done)
    }

    /// The answer to a successful `Get` that observed `value`.
    pub fn read(value: Option<impl Into<Vec<u8>>>) -> Outcome {
        Outcome::Ok(OpResult::Read {
            value: value.map(Into::into),
        })
    }

    /// The answer to a successful `Cas`.
    pub fn cas(swapped: bool, current: Option<impl Into<Vec<u8>>>) -> Outcome {
        Outcome::Ok(OpResult::Cas {
            swapped,
            current: current.map(Into::into),
        })
    }
}

impl Operation {
    /// Checks the operation on its own: result shape and times.
    pub fn validate(&self) -> Result<(), HistoryError> {
        if let Some(completed_at) = self.completed_at
            && completed_at < self.invoked_at
        {
            return Err(HistoryError::CompletedBeforeInvoked {
                op: self.id,
                invoked_at: self.invoked_at,
                completed_at,
            });
        }
        let Outcome::Ok(result) = &self.outcome else {
            return Ok(());
        };
        if self.completed_at.is_none() {
            return Err(HistoryError::OkWithoutCompletion { op: self.id });
        }
        let matches = matches!(
            (&self.kind, result),
            (OpKind::Put { .. } | OpKind::Delete, OpResult::Done)
                | (OpKind::Get, OpResult::Read { .. })
                | (OpKind::Cas { .. }, OpResult::Cas { .. })
        );
        if !matches {
            return Err(HistoryError::ResultDoesNotMatchKind {
                op: self.id,
                kind: self.kind.name(),
                result: result.name(),
            });
        }
        Ok(())
    }
}

impl History {
    /// Validates `operations` (in any order) into a history.
    pub fn new(operations: Vec<Operation>) -> Result<History, HistoryError> {
        let mut ids = BTreeSet::new();
        for operation in &operations {
            operation.validate()?;
            if !ids.insert(operation.id) {
                return Err(HistoryError::DuplicateId { op: operation.id });
            }
        }
        Ok(History { operations })
    }

    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    pub fn len(&self) -> usize {
        self.operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// The latest instant mentioned by any operation (invocation or completion), 0 if empty.
    pub fn last_instant(&self) -> u64 {
        self.operations
            .iter()
            .map(|operation| {
                operation
                    .completed_at
                    .unwrap_or(0)
                    .max(operation.invoked_at)
            })
            .max()
            .unwrap_or(0)
    }

    /// This history plus one successful `Get` per entry of `final_reads`, each invoked after
    /// every recorded operation completed, by client `u64::MAX`. Checking the result proves
    /// that the final state is one the history allows: no acknowledged write was lost and no
    /// failed write appeared.
    pub fn with_final_reads<K, V>(
        &self,
        final_reads: impl IntoIterator<Item = (K, Option<V>)>,
    ) -> History
    where
        K: Into<Vec<u8>>,
        V: Into<Vec<u8>>,
    {
        let mut operations = self.operations.clone();
        let invoked_at = self.last_instant().saturating_add(1);
        let mut next_id = operations
            .iter()
            .map(|operation| operation.id.0.saturating_add(1))
            .max()
            .unwrap_or(0);
        for (key, value) in final_reads {
            operations.push(Operation {
                id: OpId(next_id),
                client: u64::MAX,
                key: key.into(),
                kind: OpKind::Get,
                invoked_at,
                completed_at: Some(invoked_at.saturating_add(1)),
                outcome: Outcome::read(value),
            });
            next_id = next_id.saturating_add(1);
        }
        History { operations }
    }
}

impl HistoryRecorder {
    pub fn new() -> HistoryRecorder {
        HistoryRecorder::default()
    }

    /// Records that `client` sent `kind` on `key` at `now`; the operation is in flight (and
    /// `Unknown`) until completed.
    pub fn invoke(&mut self, client: u64, key: impl Into<Vec<u8>>, kind: OpKind, now: u64) -> OpId {
        let id = OpId(self.operations.len() as u64);
        self.operations.push(Operation {
            id,
            client,
            key: key.into(),
            kind,
            invoked_at: now,
            completed_at: None,
            outcome: Outcome::Unknown,
        });
        id
    }

    /// Records how `op` ended at `now`. On error nothing is recorded.
    pub fn complete(&mut self, op: OpId, now: u64, outcome: Outcome) -> Result<(), HistoryError> {
        let operation = usize::try_from(op.0)
            .ok()
            .and_then(|index| self.operations.get_mut(index))
            .ok_or(HistoryError::NotInvoked { op })?;
        if operation.completed_at.is_some() {
            return Err(HistoryError::AlreadyCompleted { op });
        }
        let candidate = Operation {
            completed_at: Some(now),
            outcome,
            ..operation.clone()
        };
        candidate.validate()?;
        *operation = candidate;
        Ok(())
    }

    /// Records a whole operation at once: invoked at `invoked_at`, ended at `completed_at`.
    pub fn record(
        &mut self,
        client: u64,
        key: impl Into<Vec<u8>>,
        kind: OpKind,
        invoked_at: u64,
        completed_at: u64,
        outcome: Outcome,
    ) -> Result<OpId, HistoryError> {
        let op = self.invoke(client, key, kind, invoked_at);
        if let Err(error) = self.complete(op, completed_at, outcome) {
            self.operations.pop();
            return Err(error);
        }
        Ok(op)
    }

    /// Number of operations recorded so far.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// A copy of the history so far; operations still in flight are `Unknown`.
    pub fn history(&self) -> History {
        History {
            operations: self.operations.clone(),
        }
    }

    /// The history; operations still in flight are `Unknown`.
    pub fn finish(self) -> History {
        History {
            operations: self.operations,
        }
    }
}

/// The serialized form of a history: a JSON object rather than a bare array, so that fields
/// can be added later.
#[derive(Serialize, Deserialize)]
struct HistoryRecord {
    operations: Vec<Operation>,
}

impl TryFrom<HistoryRecord> for History {
    type Error = HistoryError;

    fn try_from(record: HistoryRecord) -> Result<History, HistoryError> {
        History::new(record.operations)
    }
}

impl From<History> for HistoryRecord {
    fn from(history: History) -> HistoryRecord {
        HistoryRecord {
            operations: history.operations,
        }
    }
}

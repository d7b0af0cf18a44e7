//! `kv-command`: the built-in KV engine's decoders (`nodedb-cluster-raft/src/kv.rs`): commands
//! as they come out of the log, responses and answers as they come back from a peer, queries,
//! and snapshots restored from a peer or a file. Commands are also applied, and the engine must
//! answer `BadCommand` exactly when the command does not decode.

use crate::{Target, Verdict, combine, hex, outcome};
use nodedb_cluster_raft::kv::{KvAnswer, KvCommand, KvQuery, KvResponse, KvStateMachine};
use nodedb_cluster_raft::state_machine::VecChunks;
use nodedb_cluster_raft::{Committed, LogIndex, StateMachine};

#[derive(Debug)]
pub struct KvTarget {
    /// A replica holding a few keys; every input is applied to a copy of it.
    replica: KvStateMachine,
}

impl KvTarget {
    pub fn new() -> KvTarget {
        let mut replica = KvStateMachine::new();
        for command in sample_commands() {
            let bytes = command.encode();
            replica
                .apply(&[Committed {
                    index: LogIndex(1),
                    command: &bytes,
                }])
                .unwrap_or_else(|error| panic!("sample command must apply: {error}"));
        }
        KvTarget { replica }
    }
}

impl Default for KvTarget {
    fn default() -> KvTarget {
        KvTarget::new()
    }
}

impl Target for KvTarget {
    fn name(&self) -> &'static str {
        "kv-command"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        let mut seeds: Vec<Vec<u8>> = sample_commands().iter().map(KvCommand::encode).collect();
        seeds.push(KvCommand::Delete { key: b"a".to_vec() }.encode());
        seeds.push(
            KvResponse::Cas {
                swapped: false,
                current: Some(b"v".to_vec()),
            }
            .encode(),
        );
        seeds.push(KvResponse::Deleted { existed: true }.encode());
        seeds.push(KvQuery::Get { key: b"a".to_vec() }.encode());
        seeds.push(KvQuery::Len.encode());
        seeds.push(snapshot_bytes(&self.replica));
        seeds
    }

    fn check(&mut self, input: &[u8]) -> Verdict {
        let command = check_command(&self.replica, input)?;
        let response = canonical(
            "response",
            KvResponse::decode(input),
            KvResponse::encode,
            input,
        )?;
        let answer = match KvAnswer::decode(input) {
            Some(_) => outcome("answer ok"),
            None => outcome("answer refused"),
        };
        let query = match self.replica.query(input) {
            Ok(bytes) => {
                if KvAnswer::decode(&bytes).is_none() {
                    return Err(format!(
                        "query {} answered undecodable {}",
                        hex(input),
                        hex(&bytes)
                    ));
                }
                outcome("query ok")
            }
            Err(_) => outcome("query refused"),
        };
        let snapshot = check_restore(input)?;
        Ok([command, response, answer, query, snapshot]
            .into_iter()
            .fold(0, combine))
    }
}

fn sample_commands() -> Vec<KvCommand> {
    vec![
        KvCommand::Put {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
        },
        KvCommand::Put {
            key: b"user:2".to_vec(),
            value: vec![0xff; 40],
        },
        KvCommand::Cas {
            key: b"a".to_vec(),
            expected: Some(b"1".to_vec()),
            new: b"2".to_vec(),
        },
        KvCommand::Cas {
            key: b"b".to_vec(),
            expected: None,
            new: b"first".to_vec(),
        },
    ]
}

/// Decodes and applies `input` as a log entry; the replica must answer `BadCommand` exactly
/// when it does not decode.
fn check_command(replica: &KvStateMachine, input: &[u8]) -> Verdict {
    let decoded = KvCommand::decode(input);
    let label = canonical("command", decoded.clone(), KvCommand::encode, input)?;
    let mut copy = replica.clone();
    let responses = copy
        .apply(&[Committed {
            index: LogIndex(2),
            command: input,
        }])
        .map_err(|error| format!("apply failed on {}: {error}", hex(input)))?;
    let [response] = responses.as_slice() else {
        return Err(format!("one command gave {} responses", responses.len()));
    };
    let response = KvResponse::decode(response)
        .ok_or_else(|| format!("the engine's response {} does not decode", hex(response)))?;
    if (response == KvResponse::BadCommand) != decoded.is_none() {
        return Err(format!(
            "command {} decodes as {decoded:?} but the engine answered {response:?}",
            hex(input)
        ));
    }
    Ok(label)
}

/// Restores `input` as a snapshot; an accepted snapshot must be taken again as the same bytes.
fn check_restore(input: &[u8]) -> Verdict {
    let mut replica = KvStateMachine::new();
    match replica.restore(&mut VecChunks::from_bytes(input)) {
        Ok(()) => {
            let again = snapshot_bytes(&replica);
            if again != input {
                return Err(format!(
                    "snapshot {} restores, but the replica's snapshot is {}",
                    hex(input),
                    hex(&again)
                ));
            }
            Ok(outcome("snapshot ok"))
        }
        Err(_) => Ok(outcome("snapshot refused")),
    }
}

fn snapshot_bytes(replica: &KvStateMachine) -> Vec<u8> {
    let mut chunks = replica
        .snapshot()
        .unwrap_or_else(|error| panic!("kv snapshot: {error}"));
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks
        .next_chunk()
        .unwrap_or_else(|error| panic!("kv snapshot chunk: {error}"))
    {
        bytes.extend_from_slice(&chunk);
    }
    bytes
}

/// A decoded value must re-encode to exactly `input`.
fn canonical<T: std::fmt::Debug>(
    what: &str,
    decoded: Option<T>,
    encode: fn(&T) -> Vec<u8>,
    input: &[u8],
) -> Verdict {
    let Some(value) = decoded else {
        return Ok(outcome(&format!("{what} refused")));
    };
    let encoded = encode(&value);
    if encoded != input {
        return Err(format!(
            "{what} {} decodes as {value:?}, which re-encodes as {}",
            hex(input),
            hex(&encoded)
        ));
    }
    Ok(outcome(&format!("{what} ok")))
}

//! Hooks for the fuzzer (feature `fuzzing`, off in every normal build): valid records to start
//! from and the check of the record decoder, the envelope and the bodies the catalog owns,
//! exactly as [`crate::Catalog`] reads them back from its file.

use crate::ClusterId;
use crate::catalog::{decode_canonical, decode_exact, split_applied_index};
use crate::record::{self, ENVELOPE_HEADER_BYTES, EnvelopeError, RecordKind};
use nodedb_cluster_core::NodeId;
use serde::Serialize;
use serde::de::DeserializeOwned;

const KINDS: [RecordKind; 5] = [
    RecordKind::Format,
    RecordKind::Node,
    RecordKind::Cluster,
    RecordKind::Metadata,
    RecordKind::MigrationCheckpoint,
];

/// Stand-in for the caller's metadata state: the catalog only sees a serde type.
type CallerState = Vec<String>;
/// Stand-in for the caller's migration checkpoint.
type CallerCheckpoint = (u64, Option<Vec<u8>>);

/// One valid record of every kind, as the catalog writes them.
pub fn record_seeds() -> Vec<Vec<u8>> {
    vec![
        record::encode(RecordKind::Format, &body(&1u32)),
        record::encode(RecordKind::Node, &body(&NodeId(4))),
        record::encode(
            RecordKind::Cluster,
            &body(&ClusterId(0x5eed_0000_0000_0001)),
        ),
        record::encode(
            RecordKind::Metadata,
            &body(&(17u64, vec!["node-4 at 127.0.0.1:9400".to_string()])),
        ),
        record::encode(
            RecordKind::MigrationCheckpoint,
            &body(&(3u64, Some(vec![1u8, 2, 3]))),
        ),
    ]
}

/// Reads `bytes` as a stored record of every kind. What the envelope accepts must re-encode to
/// exactly `bytes`; a body the catalog owns that decodes must re-encode to exactly the body.
/// Returns a label of the outcome.
pub fn check_record(bytes: &[u8]) -> Result<String, String> {
    // The checksum refuses almost every mutation: check the input with its checksum repaired
    // as well, so that mutated headers and bodies reach the rest of the decoder.
    let raw = check_envelope(bytes)?;
    let repaired = check_envelope(&repair_checksum(bytes))?;
    Ok(format!("{raw}/{repaired}"))
}

fn check_envelope(bytes: &[u8]) -> Result<String, String> {
    let mut labels = Vec::with_capacity(KINDS.len());
    for kind in KINDS {
        match record::decode(kind, bytes) {
            Ok(body) => {
                let encoded = record::encode(kind, body);
                if encoded != bytes {
                    return Err(format!(
                        "{kind} envelope {} is accepted but re-encodes as {}",
                        hex(bytes),
                        hex(&encoded)
                    ));
                }
                labels.push(format!("{kind} {}", check_body(kind, body)?));
            }
            Err(EnvelopeError::Corrupt(reason)) => {
                labels.push(format!("{kind} corrupt {}", variant(&reason)));
            }
            Err(EnvelopeError::Newer { .. }) => labels.push(format!("{kind} newer")),
        }
    }
    Ok(labels.join("|"))
}

fn check_body(kind: RecordKind, body: &[u8]) -> Result<String, String> {
    match kind {
        RecordKind::Format => canonical::<u32>(body),
        RecordKind::Node => canonical::<NodeId>(body),
        RecordKind::Cluster => canonical::<ClusterId>(body),
        // The rest of these bodies is the caller's type: its encoding is the caller's
        // business, so only the catalog's own prefix is held to one encoding.
        RecordKind::Metadata => match split_applied_index(body) {
            Ok((index, state)) => {
                let prefix = &body[..body.len() - state.len()];
                if postcard::to_stdvec(&index).ok().as_deref() != Some(prefix) {
                    return Err(format!(
                        "applied index {index} accepted from {}",
                        hex(prefix)
                    ));
                }
                Ok(caller_label(decode_exact::<CallerState>(state)))
            }
            Err(error) => Ok(format!("index refused {}", variant(&error))),
        },
        _ => Ok(caller_label(decode_exact::<CallerCheckpoint>(body))),
    }
}

fn caller_label<T>(decoded: Result<T, postcard::Error>) -> String {
    match decoded {
        Ok(_) => "caller body ok".into(),
        Err(error) => format!("caller body refused {}", variant(&error)),
    }
}

fn canonical<T: DeserializeOwned + Serialize + std::fmt::Debug>(
    body: &[u8],
) -> Result<String, String> {
    match decode_canonical::<T>(body) {
        Ok(value) => {
            let encoded = postcard::to_stdvec(&value)
                .map_err(|error| format!("decoded {value:?} does not encode: {error}"))?;
            if encoded != body {
                return Err(format!(
                    "body {} decodes as {value:?}, which re-encodes as {}",
                    hex(body),
                    hex(&encoded)
                ));
            }
            Ok("body ok".into())
        }
        Err(error) => Ok(format!("body refused {}", variant(&error))),
    }
}

fn body<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).unwrap_or_else(|error| panic!("seed body: {error}"))
}

/// The variant name of a value's debug text, without its fields (which would make every
/// input a class of its own).
fn variant<T: std::fmt::Debug>(value: &T) -> String {
    let text = format!("{value:?}");
    text.split(['(', '{', ' '])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `bytes` with the envelope's CRC32C recomputed over its header and body.
fn repair_checksum(bytes: &[u8]) -> Vec<u8> {
    let mut repaired = bytes.to_vec();
    if repaired.len() >= ENVELOPE_HEADER_BYTES {
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&repaired[..7]),
            &repaired[ENVELOPE_HEADER_BYTES..],
        );
        repaired[7..11].copy_from_slice(&crc.to_le_bytes());
    }
    repaired
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

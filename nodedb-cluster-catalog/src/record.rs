//! The record envelope. Every value the catalog stores is framed as
//! `kind | version | body length | CRC32C | postcard body`, so that a reader can tell exactly
//! which record is damaged or too new, before it trusts a single byte of the body.

use crate::error::Corruption;
use std::fmt;

/// Bytes in the envelope header: kind (1) + version (2) + body length (4) + CRC32C (4).
pub const ENVELOPE_HEADER_BYTES: usize = 11;

/// Largest body a record may have. Checked before writing and before trusting a length read
/// back, so that a damaged length field cannot make the reader allocate or slice wildly.
pub const RECORD_BODY_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// Which record an envelope holds. The tag values are stored on disk: append, never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecordKind {
    /// The catalog format version. Frozen forever, so any reader can find it.
    Format,
    /// This node's id.
    Node,
    /// The cluster this node belongs to.
    Cluster,
    /// The last applied metadata state and its applied log index.
    Metadata,
    /// One migration's checkpoint.
    MigrationCheckpoint,
}

impl RecordKind {
    /// The tag stored in the envelope's first byte.
    pub fn tag(self) -> u8 {
        match self {
            RecordKind::Format => 1,
            RecordKind::Node => 2,
            RecordKind::Cluster => 3,
            RecordKind::Metadata => 4,
            RecordKind::MigrationCheckpoint => 5,
        }
    }

    /// The record version this binary writes, and the newest it reads.
    pub fn version_current(self) -> u16 {
        match self {
            RecordKind::Format
            | RecordKind::Node
            | RecordKind::Cluster
            | RecordKind::Metadata
            | RecordKind::MigrationCheckpoint => 1,
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            RecordKind::Format => "format",
            RecordKind::Node => "node",
            RecordKind::Cluster => "cluster",
            RecordKind::Metadata => "metadata",
            RecordKind::MigrationCheckpoint => "migration checkpoint",
        };
        f.write_str(name)
    }
}

/// Why an envelope was not accepted. The catalog adds the file path and record kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EnvelopeError {
    Corrupt(Corruption),
    Newer { found: u16, supported: u16 },
}

/// Frames `body` as a `kind` record of the current version. The caller has checked the body
/// length against [`RECORD_BODY_BYTES_MAX`].
pub(crate) fn encode(kind: RecordKind, body: &[u8]) -> Vec<u8> {
    let body_bytes = u32::try_from(body.len())
        .ok()
        .filter(|bytes| *bytes <= RECORD_BODY_BYTES_MAX)
        .unwrap_or_else(|| {
            panic!(
                "{kind} record body of {} bytes passed the size check but exceeds {}",
                body.len(),
                RECORD_BODY_BYTES_MAX
            )
        });
    let mut bytes = Vec::with_capacity(ENVELOPE_HEADER_BYTES + body.len());
    bytes.push(kind.tag());
    bytes.extend_from_slice(&kind.version_current().to_le_bytes());
    bytes.extend_from_slice(&body_bytes.to_le_bytes());
    let crc = checksum(&bytes[..7], body);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// Checks an envelope and returns its body. The order matters: the checksum is verified before
/// the kind and version are believed, so a flipped bit never looks like "written by a newer
/// binary".
pub(crate) fn decode(kind: RecordKind, bytes: &[u8]) -> Result<&[u8], EnvelopeError> {
    let corrupt = |corruption| Err(EnvelopeError::Corrupt(corruption));
    if bytes.len() < ENVELOPE_HEADER_BYTES {
        return corrupt(Corruption::Truncated {
            bytes: bytes.len() as u64,
            bytes_expected: ENVELOPE_HEADER_BYTES as u64,
        });
    }
    let (header, body) = bytes.split_at(ENVELOPE_HEADER_BYTES);
    let body_bytes = u32::from_le_bytes([header[3], header[4], header[5], header[6]]);
    if body_bytes > RECORD_BODY_BYTES_MAX {
        return corrupt(Corruption::LengthOutOfRange {
            body_bytes,
            body_bytes_max: RECORD_BODY_BYTES_MAX,
        });
    }
    let bytes_expected = ENVELOPE_HEADER_BYTES as u64 + u64::from(body_bytes);
    let bytes_stored = bytes.len() as u64;
    if bytes_stored < bytes_expected {
        return corrupt(Corruption::Truncated {
            bytes: bytes_stored,
            bytes_expected,
        });
    }
    if bytes_stored > bytes_expected {
        return corrupt(Corruption::TrailingBytes {
            bytes: bytes_stored,
            bytes_expected,
        });
    }
    let stored = u32::from_le_bytes([header[7], header[8], header[9], header[10]]);
    let computed = checksum(&header[..7], body);
    if stored != computed {
        return corrupt(Corruption::ChecksumMismatch { stored, computed });
    }
    if header[0] != kind.tag() {
        return corrupt(Corruption::WrongKind {
            found_tag: header[0],
        });
    }
    let version = u16::from_le_bytes([header[1], header[2]]);
    if version == 0 {
        return corrupt(Corruption::VersionZero);
    }
    if version > kind.version_current() {
        return Err(EnvelopeError::Newer {
            found: version,
            supported: kind.version_current(),
        });
    }
    Ok(body)
}

/// CRC32C over the header's first seven bytes (kind, version, length) and the body.
fn checksum(header_prefix: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_prefix), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_envelope_bytes() {
        let bytes = encode(RecordKind::Node, &[0x07]);
        let crc = crc32c::crc32c(&[2, 1, 0, 1, 0, 0, 0, 0x07]).to_le_bytes();
        let mut expected = vec![2, 1, 0, 1, 0, 0, 0];
        expected.extend_from_slice(&crc);
        expected.push(0x07);
        assert_eq!(bytes, expected);
        assert_eq!(decode(RecordKind::Node, &bytes), Ok(&[0x07][..]));
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let bytes = encode(RecordKind::Metadata, b"some body bytes");
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[index] ^= 1 << bit;
                let result = decode(RecordKind::Metadata, &flipped);
                assert!(
                    matches!(result, Err(EnvelopeError::Corrupt(_))),
                    "flip of bit {bit} in byte {index} gave {result:?}"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encode(RecordKind::Cluster, b"0123456789");
        for length in 0..bytes.len() {
            let result = decode(RecordKind::Cluster, &bytes[..length]);
            assert!(
                matches!(
                    result,
                    Err(EnvelopeError::Corrupt(Corruption::Truncated { .. }))
                ),
                "truncation to {length} bytes gave {result:?}"
            );
        }
    }

    #[test]
    fn wrong_kind_newer_version_and_huge_length_are_refused() {
        let bytes = encode(RecordKind::Cluster, b"x");
        assert_eq!(
            decode(RecordKind::Node, &bytes),
            Err(EnvelopeError::Corrupt(Corruption::WrongKind {
                found_tag: 3
            }))
        );

        let newer = reframe(RecordKind::Node.tag(), 2, b"x");
        assert_eq!(
            decode(RecordKind::Node, &newer),
            Err(EnvelopeError::Newer {
                found: 2,
                supported: 1
            })
        );

        let zero = reframe(RecordKind::Node.tag(), 0, b"x");
        assert_eq!(
            decode(RecordKind::Node, &zero),
            Err(EnvelopeError::Corrupt(Corruption::VersionZero))
        );

        let mut huge = encode(RecordKind::Node, b"x");
        huge[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(RecordKind::Node, &huge),
            Err(EnvelopeError::Corrupt(Corruption::LengthOutOfRange { .. }))
        ));
    }

    /// Builds an envelope with an arbitrary version and a valid checksum.
    fn reframe(tag: u8, version: u16, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        let crc = checksum(&bytes, body);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(body);
        bytes
    }
}

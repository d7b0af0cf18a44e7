//! Byte layout of one stored log entry or meta value: a 5-byte header (record version, CRC32C of
//! the payload) in front of the caller's opaque bytes, so that a damaged record is reported as
//! corrupt instead of being handed to Raft.

/// Version byte written in front of every record by this build.
pub const RECORD_VERSION: u8 = 1;

/// Header bytes in front of the payload: version (1) + CRC32C little-endian (4).
pub const RECORD_HEADER_LEN: usize = 5;

/// Why a stored record was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CorruptReason {
    #[error("record is {len} bytes, shorter than its {RECORD_HEADER_LEN}-byte header")]
    TooShort { len: u64 },
    #[error("record version {found} is not readable by this build (reads version {supported})")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("value is {len} bytes, not the {expected} its key holds")]
    WrongLength { len: u64, expected: u64 },
}

/// Writes header + payload into `out` (cleared first), reusing its allocation.
pub(crate) fn encode_into(payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(RECORD_HEADER_LEN + payload.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Returns the payload of a record after checking its version and checksum.
pub(crate) fn decode(record: &[u8]) -> Result<&[u8], CorruptReason> {
    let Some((header, payload)) = record.split_at_checked(RECORD_HEADER_LEN) else {
        return Err(CorruptReason::TooShort {
            len: record.len() as u64,
        });
    };
    let version = header[0];
    if version != RECORD_VERSION {
        return Err(CorruptReason::UnsupportedVersion {
            found: version,
            supported: RECORD_VERSION,
        });
    }
    let stored = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(CorruptReason::ChecksumMismatch { stored, computed });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes() {
        let mut out = Vec::new();
        encode_into(b"abc", &mut out);
        // crc32c("abc") = 0x364b3fb7
        assert_eq!(out, [1, 0xb7, 0x3f, 0x4b, 0x36, b'a', b'b', b'c']);
        encode_into(b"", &mut out);
        assert_eq!(out, [1, 0, 0, 0, 0]);
    }

    #[test]
    fn round_trip_and_damage() {
        let mut out = Vec::new();
        encode_into(b"payload", &mut out);
        assert_eq!(decode(&out), Ok(&b"payload"[..]));

        let mut flipped = out.clone();
        flipped[7] ^= 0x01;
        assert!(matches!(
            decode(&flipped),
            Err(CorruptReason::ChecksumMismatch { .. })
        ));

        let mut newer = out.clone();
        newer[0] = 2;
        assert_eq!(
            decode(&newer),
            Err(CorruptReason::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );

        assert_eq!(decode(&out[..3]), Err(CorruptReason::TooShort { len: 3 }));
    }
}

//! Byte layout of one stored log entry or meta value: a header (record version, CRC32C of the
//! payload) in front of the caller's opaque bytes, so that a damaged record is reported as
//! corrupt instead of being handed to Raft.
//!
//! A log entry too large for one page of the file is stored in pieces (version 2): redb gives a
//! leaf holding one large value a power of two of pages, so a 64 KiB value (with its key and
//! header, just over 64 KiB) took 128 KiB of the file and of every write. The pieces are sized
//! to fill their pages ([`piece_lens`]); the record keeps the payload's tail, which shares a
//! page with its neighbours.

/// Version byte of a record that holds its whole payload.
pub const RECORD_VERSION: u8 = 1;

/// Version byte of a record whose payload starts in pieces stored beside it.
pub const PIECED_RECORD_VERSION: u8 = 2;

/// Header bytes in front of the payload: version (1) + CRC32C little-endian (4).
pub const RECORD_HEADER_LEN: usize = 5;

/// Header bytes of a pieced record: version (1) + CRC32C of the whole payload (4) + number of
/// pieces, little-endian u32 (4); the payload's tail follows.
pub const PIECED_HEADER_LEN: usize = 9;

/// redb's page size (its default, which the log file keeps). A leaf holding one value larger
/// than this takes the smallest power of two of pages it fits in.
const PAGE_BYTES: usize = 4096;

/// Bytes of a leaf page that are not the piece: the leaf header (4), the value's end offset
/// (4) and the key (16), with room to spare.
const PIECE_SLACK: usize = 64;

/// Pieces are cut in sizes from one page to this many bytes of pages.
const PIECE_PAGES_BYTES_MAX: usize = 1 << 20;

/// Smallest piece: a payload shorter than this is stored whole.
pub(crate) const PIECE_MIN: usize = PAGE_BYTES - PIECE_SLACK;

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
    #[error("record names {expected} pieces, {found} are stored")]
    MissingPieces { expected: u32, found: u32 },
}

/// Lengths of the pieces `payload_len` bytes are cut into, in payload order: each the largest
/// that fills a power of two of pages (up to [`PIECE_PAGES_BYTES_MAX`]) within what is left,
/// until less than [`PIECE_MIN`] is left for the record itself. Empty for a payload stored
/// whole.
pub(crate) fn piece_lens(payload_len: usize) -> impl Iterator<Item = usize> {
    let mut left = payload_len;
    std::iter::from_fn(move || {
        if left < PIECE_MIN {
            return None;
        }
        let mut pages_bytes = PAGE_BYTES;
        while pages_bytes < PIECE_PAGES_BYTES_MAX && 2 * pages_bytes - PIECE_SLACK <= left {
            pages_bytes *= 2;
        }
        let len = pages_bytes - PIECE_SLACK;
        left -= len;
        Some(len)
    })
}

/// Writes header + payload into `out` (cleared first), reusing its allocation.
pub(crate) fn encode_into(payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(RECORD_HEADER_LEN + payload.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Writes the record of a payload whose first `pieces` pieces, `pieced_len` bytes in all, are
/// stored beside it: header + the payload's tail.
pub(crate) fn encode_pieced_into(
    payload: &[u8],
    pieces: u32,
    pieced_len: usize,
    out: &mut Vec<u8>,
) {
    let tail = &payload[pieced_len..];
    out.clear();
    out.reserve(PIECED_HEADER_LEN + tail.len());
    out.push(PIECED_RECORD_VERSION);
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(&pieces.to_le_bytes());
    out.extend_from_slice(tail);
}

/// A record read back, checked as far as it can be alone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// The whole payload, checksum verified.
    Whole(&'a [u8]),
    /// The payload's tail; [`assemble`] puts the pieces in front and verifies the checksum.
    Pieced {
        crc: u32,
        pieces: u32,
        tail: &'a [u8],
    },
}

/// Reads a log entry's record: the payload of a whole record after checking its checksum, or
/// what [`assemble`] needs for a pieced one.
pub(crate) fn decode_entry(record: &[u8]) -> Result<Decoded<'_>, CorruptReason> {
    if record.first() != Some(&PIECED_RECORD_VERSION) {
        return decode_whole(record)
            .map(Decoded::Whole)
            .map_err(|reason| match reason {
                CorruptReason::UnsupportedVersion { found, .. } => {
                    CorruptReason::UnsupportedVersion {
                        found,
                        supported: PIECED_RECORD_VERSION,
                    }
                }
                other => other,
            });
    }
    let (header, tail) =
        record
            .split_at_checked(PIECED_HEADER_LEN)
            .ok_or(CorruptReason::TooShort {
                len: record.len() as u64,
            })?;
    Ok(Decoded::Pieced {
        crc: u32::from_le_bytes([header[1], header[2], header[3], header[4]]),
        pieces: u32::from_le_bytes([header[5], header[6], header[7], header[8]]),
        tail,
    })
}

/// Returns the payload of a whole record (a meta value is never pieced) after checking its
/// version and checksum.
pub(crate) fn decode_whole(record: &[u8]) -> Result<&[u8], CorruptReason> {
    let too_short = || CorruptReason::TooShort {
        len: record.len() as u64,
    };
    let version = *record.first().ok_or_else(too_short)?;
    if version != RECORD_VERSION {
        return Err(CorruptReason::UnsupportedVersion {
            found: version,
            supported: RECORD_VERSION,
        });
    }
    let (header, payload) = record
        .split_at_checked(RECORD_HEADER_LEN)
        .ok_or_else(too_short)?;
    let stored = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    check(stored, crc32c::crc32c(payload))?;
    Ok(payload)
}

/// The payload of a pieced record: its `pieces` pieces in order (as many as it names), then its
/// tail, checked against the record's checksum.
pub(crate) fn assemble(
    crc: u32,
    pieces: u32,
    tail: &[u8],
    stored: &[&[u8]],
) -> Result<Vec<u8>, CorruptReason> {
    if stored.len() != pieces as usize {
        return Err(CorruptReason::MissingPieces {
            expected: pieces,
            found: stored.len() as u32,
        });
    }
    let len = stored.iter().map(|piece| piece.len()).sum::<usize>() + tail.len();
    let mut payload = Vec::with_capacity(len);
    for piece in stored {
        payload.extend_from_slice(piece);
    }
    payload.extend_from_slice(tail);
    check(crc, crc32c::crc32c(&payload))?;
    Ok(payload)
}

fn check(stored: u32, computed: u32) -> Result<(), CorruptReason> {
    if stored == computed {
        Ok(())
    } else {
        Err(CorruptReason::ChecksumMismatch { stored, computed })
    }
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
        assert_eq!(decode_entry(&out), Ok(Decoded::Whole(&b"payload"[..])));

        let mut flipped = out.clone();
        flipped[7] ^= 0x01;
        assert!(matches!(
            decode_entry(&flipped),
            Err(CorruptReason::ChecksumMismatch { .. })
        ));

        let mut newer = out.clone();
        newer[0] = 3;
        assert_eq!(
            decode_entry(&newer),
            Err(CorruptReason::UnsupportedVersion {
                found: 3,
                supported: 2
            })
        );
        newer[0] = PIECED_RECORD_VERSION;
        assert_eq!(
            decode_whole(&newer),
            Err(CorruptReason::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );

        assert_eq!(
            decode_entry(&out[..3]),
            Err(CorruptReason::TooShort { len: 3 })
        );
        assert_eq!(decode_entry(&[]), Err(CorruptReason::TooShort { len: 0 }));
    }

    #[test]
    fn pieced_golden_bytes() {
        let mut out = Vec::new();
        encode_pieced_into(b"abcde", 2, 3, &mut out);
        // crc32c("abcde") = 0xc450d697 (little-endian below), 2 pieces, tail "de".
        assert_eq!(out, [2, 0x97, 0xd6, 0x50, 0xc4, 2, 0, 0, 0, b'd', b'e']);
    }

    #[test]
    fn pieced_round_trip_and_damage() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let lens: Vec<usize> = piece_lens(payload.len()).collect();
        assert_eq!(lens, [PIECE_MIN * 2 + PIECE_SLACK]);
        let pieced_len: usize = lens.iter().sum();
        let mut out = Vec::new();
        encode_pieced_into(&payload, 1, pieced_len, &mut out);
        let Ok(Decoded::Pieced { crc, pieces, tail }) = decode_entry(&out) else {
            panic!("not a pieced record: {:?}", decode_entry(&out));
        };
        assert_eq!((pieces, tail), (1, &payload[pieced_len..]));
        let piece = &payload[..pieced_len];
        assert_eq!(assemble(crc, pieces, tail, &[piece]), Ok(payload.clone()));
        assert_eq!(
            assemble(crc, pieces, tail, &[]),
            Err(CorruptReason::MissingPieces {
                expected: 1,
                found: 0
            })
        );
        let mut damaged = piece.to_vec();
        damaged[100] ^= 1;
        assert!(matches!(
            assemble(crc, pieces, tail, &[&damaged]),
            Err(CorruptReason::ChecksumMismatch { .. })
        ));
        assert_eq!(
            decode_entry(&out[..8]),
            Err(CorruptReason::TooShort { len: 8 })
        );
    }

    #[test]
    fn pieces_fill_whole_pages_and_leave_a_tail_under_a_page() {
        for len in [0, PIECE_MIN - 1] {
            assert_eq!(piece_lens(len).count(), 0, "{len}");
        }
        for len in [
            PIECE_MIN,
            65_536 + 60,
            1 << 20,
            (1 << 20) + 100,
            3 << 20,
            123_457,
        ] {
            let lens: Vec<usize> = piece_lens(len).collect();
            let pieced: usize = lens.iter().sum();
            assert!(len - pieced < PIECE_MIN, "{len}: {lens:?}");
            for piece in &lens {
                let pages_bytes = piece + PIECE_SLACK;
                assert!(pages_bytes.is_power_of_two(), "{len}: {lens:?}");
                assert!((PAGE_BYTES..=PIECE_PAGES_BYTES_MAX).contains(&pages_bytes));
            }
            assert!(lens.windows(2).all(|w| w[0] >= w[1]), "{len}: {lens:?}");
        }
        let lens: Vec<usize> = piece_lens(65_536 + 60).collect();
        assert_eq!(lens, [65_536 - PIECE_SLACK]);
    }
}

//! Wire frames of the QUIC transport: a fixed 12-byte header (magic, version, kind, flags,
//! body length, CRC32C) and a body. The layout and its versioning rules are in
//! `docs/design.md`, "Transport frames". Decoding checks every field before trusting it, and the
//! length against a per-kind maximum before allocating, so no byte from a peer can panic or
//! balloon the reader.

use crate::{HandlerError, RPC_PAYLOAD_BYTES_MAX, STREAM_CHUNK_BYTES_MAX, TransportError};
use bytes::{Bytes, BytesMut};
use nodedb_cluster_core::NodeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// First byte of every frame: catches a peer speaking something else entirely.
pub const FRAME_MAGIC: u8 = 0xDB;
/// Version of the frame layout. ALPN carries the same number (`nodedb-cluster/1`).
pub const FRAME_VERSION: u8 = 1;
/// ALPN protocol id negotiated in the TLS handshake; a peer of another version fails there.
pub const ALPN_PROTOCOL: &[u8] = b"nodedb-cluster/1";
/// Size of the fixed header.
pub const FRAME_HEADER_BYTES: usize = 12;
/// Largest body of any frame (a full RPC payload).
pub const FRAME_BYTES_MAX: u32 = RPC_PAYLOAD_BYTES_MAX as u32;
/// Largest body of an error frame: an error message has no reason to be bigger.
pub const ERROR_BODY_BYTES_MAX: u32 = 64 * 1024;

/// What a frame carries. The number is the wire value; new kinds take new numbers, and a
/// number is never reused for another meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// The sender's claimed node id, `u64` LE. First frame of every QUIC stream.
    Hello = 1,
    /// An RPC request payload, opaque.
    Request = 2,
    /// An RPC response payload, opaque.
    Response = 3,
    /// A handler's error, postcard-encoded [`HandlerError`].
    ErrorResponse = 4,
    /// Opens a bulk stream; the body is the stream header, opaque.
    StreamOpen = 5,
    /// One chunk of a bulk stream.
    StreamChunk = 6,
    /// Ends a bulk stream: total length `u64` LE + CRC32C of all chunk bytes `u32` LE.
    StreamEnd = 7,
}

/// One decoded, checksum-verified frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub body: Bytes,
}

/// The fixed header, decoded and checked except for the body checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub body_len: u32,
    pub crc: u32,
}

/// The summary a sender puts at the end of a bulk stream; the receiver recomputes both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnd {
    pub total_bytes: u64,
    pub crc: u32,
}

/// Why bytes did not decode as a frame. Every variant is the peer's fault except `Io`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame needs {needed} bytes, only {available} present")]
    Truncated { needed: u64, available: u64 },
    #[error("bad magic byte {0:#04x}")]
    BadMagic(u8),
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unknown frame flags {0:#04x}")]
    BadFlags(u8),
    #[error("{kind:?} frame of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        kind: FrameKind,
        bytes: u64,
        limit: u64,
    },
    #[error("frame checksum mismatch: header says {expected:#010x}, body gives {actual:#010x}")]
    BadChecksum { expected: u32, actual: u32 },
    #[error("bad {kind:?} body: {reason}")]
    BadBody { kind: FrameKind, reason: String },
    #[error("expected a {expected:?} frame, got {actual:?}")]
    UnexpectedKind {
        expected: FrameKind,
        actual: FrameKind,
    },
    #[error("stream ended in the middle of a frame")]
    UnexpectedEnd,
    #[error("i/o error: {0}")]
    Io(String),
}

impl FrameKind {
    pub fn from_wire(value: u8) -> Result<FrameKind, FrameError> {
        Ok(match value {
            1 => FrameKind::Hello,
            2 => FrameKind::Request,
            3 => FrameKind::Response,
            4 => FrameKind::ErrorResponse,
            5 => FrameKind::StreamOpen,
            6 => FrameKind::StreamChunk,
            7 => FrameKind::StreamEnd,
            other => return Err(FrameError::UnknownKind(other)),
        })
    }

    /// Largest body this kind may carry; checked before any allocation.
    pub fn body_bytes_max(self) -> u32 {
        match self {
            FrameKind::Hello => 8,
            FrameKind::StreamEnd => 12,
            FrameKind::ErrorResponse => ERROR_BODY_BYTES_MAX,
            FrameKind::StreamChunk => STREAM_CHUNK_BYTES_MAX as u32,
            FrameKind::Request | FrameKind::Response | FrameKind::StreamOpen => FRAME_BYTES_MAX,
        }
    }
}

impl Frame {
    pub fn new(kind: FrameKind, body: Bytes) -> Frame {
        Frame { kind, body }
    }

    pub fn hello(node: NodeId) -> Frame {
        Frame::new(
            FrameKind::Hello,
            Bytes::copy_from_slice(&node.0.to_le_bytes()),
        )
    }

    pub fn error_response(error: &HandlerError) -> Frame {
        let mut body = postcard::to_stdvec(error).unwrap_or_default();
        // An oversized message is cut, never refused: the caller still learns the variant.
        if body.len() > ERROR_BODY_BYTES_MAX as usize {
            let short = match error {
                HandlerError::NotReady => HandlerError::NotReady,
                HandlerError::BadRequest(_) => {
                    HandlerError::BadRequest("(message too long)".into())
                }
                HandlerError::Failed(_) => HandlerError::Failed("(message too long)".into()),
            };
            body = postcard::to_stdvec(&short).unwrap_or_default();
        }
        Frame::new(FrameKind::ErrorResponse, Bytes::from(body))
    }

    pub fn stream_end(end: StreamEnd) -> Frame {
        let mut body = Vec::with_capacity(12);
        body.extend_from_slice(&end.total_bytes.to_le_bytes());
        body.extend_from_slice(&end.crc.to_le_bytes());
        Frame::new(FrameKind::StreamEnd, Bytes::from(body))
    }

    /// The claimed node id of a `Hello` frame.
    pub fn hello_node(&self) -> Result<NodeId, FrameError> {
        self.expect_kind(FrameKind::Hello)?;
        let raw: [u8; 8] = self
            .body
            .as_ref()
            .try_into()
            .map_err(|_| self.bad_length())?;
        let node = u64::from_le_bytes(raw);
        if node == 0 {
            return Err(FrameError::BadBody {
                kind: self.kind,
                reason: "node id 0 is invalid".into(),
            });
        }
        Ok(NodeId(node))
    }

    /// The handler error of an `ErrorResponse` frame, accepted only in its one encoding: no
    /// trailing bytes, no other spelling of the same value (an overlong length varint).
    pub fn handler_error(&self) -> Result<HandlerError, FrameError> {
        self.expect_kind(FrameKind::ErrorResponse)?;
        let bad_body = |reason: String| FrameError::BadBody {
            kind: self.kind,
            reason,
        };
        let error: HandlerError =
            postcard::from_bytes(&self.body).map_err(|error| bad_body(error.to_string()))?;
        if postcard::to_stdvec(&error).ok().as_deref() != Some(self.body.as_ref()) {
            return Err(bad_body(
                "trailing bytes or a non-canonical encoding".to_string(),
            ));
        }
        Ok(error)
    }

    /// The summary of a `StreamEnd` frame.
    pub fn stream_end_summary(&self) -> Result<StreamEnd, FrameError> {
        self.expect_kind(FrameKind::StreamEnd)?;
        let raw: [u8; 12] = self
            .body
            .as_ref()
            .try_into()
            .map_err(|_| self.bad_length())?;
        let mut total = [0u8; 8];
        total.copy_from_slice(&raw[..8]);
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&raw[8..]);
        Ok(StreamEnd {
            total_bytes: u64::from_le_bytes(total),
            crc: u32::from_le_bytes(crc),
        })
    }

    pub fn expect_kind(&self, expected: FrameKind) -> Result<(), FrameError> {
        if self.kind != expected {
            return Err(FrameError::UnexpectedKind {
                expected,
                actual: self.kind,
            });
        }
        Ok(())
    }

    /// Header and body as one buffer (tests, small frames).
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let header = encode_header(self.kind, &self.body)?;
        let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + self.body.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.body);
        Ok(out)
    }

    fn bad_length(&self) -> FrameError {
        FrameError::BadBody {
            kind: self.kind,
            reason: format!("body of {} bytes has the wrong length", self.body.len()),
        }
    }
}

impl FrameError {
    /// The transport error a caller sees: a broken connection is `ConnectionLost` (outcome
    /// unknown), anything else is the peer breaking the protocol.
    pub fn into_transport(self, node: NodeId) -> TransportError {
        match self {
            FrameError::Io(reason) => TransportError::ConnectionLost { node, reason },
            FrameError::UnexpectedEnd => TransportError::ConnectionLost {
                node,
                reason: "stream ended in the middle of a frame".into(),
            },
            other => TransportError::Protocol {
                node,
                reason: other.to_string(),
            },
        }
    }
}

/// The header for `body`: fails only if the body exceeds what `kind` may carry.
pub fn encode_header(kind: FrameKind, body: &[u8]) -> Result<[u8; FRAME_HEADER_BYTES], FrameError> {
    let limit = kind.body_bytes_max();
    let body_len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len <= limit)
        .ok_or(FrameError::TooLarge {
            kind,
            bytes: body.len() as u64,
            limit: u64::from(limit),
        })?;
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0] = FRAME_MAGIC;
    header[1] = FRAME_VERSION;
    header[2] = kind as u8;
    header[3] = 0;
    header[4..8].copy_from_slice(&body_len.to_le_bytes());
    let crc = frame_crc(&header[..8], body);
    header[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(header)
}

/// Decodes and checks a header; the body checksum is checked by [`FrameHeader::verify`].
pub fn decode_header(raw: &[u8; FRAME_HEADER_BYTES]) -> Result<FrameHeader, FrameError> {
    if raw[0] != FRAME_MAGIC {
        return Err(FrameError::BadMagic(raw[0]));
    }
    if raw[1] != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(raw[1]));
    }
    let kind = FrameKind::from_wire(raw[2])?;
    if raw[3] != 0 {
        return Err(FrameError::BadFlags(raw[3]));
    }
    let body_len = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
    let limit = kind.body_bytes_max();
    if body_len > limit {
        return Err(FrameError::TooLarge {
            kind,
            bytes: u64::from(body_len),
            limit: u64::from(limit),
        });
    }
    let crc = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
    Ok(FrameHeader {
        kind,
        body_len,
        crc,
    })
}

impl FrameHeader {
    /// Checks `body` against the header's checksum and returns the frame.
    pub fn verify(&self, body: Bytes) -> Result<Frame, FrameError> {
        let mut prefix = [0u8; 8];
        prefix[0] = FRAME_MAGIC;
        prefix[1] = FRAME_VERSION;
        prefix[2] = self.kind as u8;
        prefix[4..8].copy_from_slice(&self.body_len.to_le_bytes());
        let actual = frame_crc(&prefix, &body);
        if actual != self.crc {
            return Err(FrameError::BadChecksum {
                expected: self.crc,
                actual,
            });
        }
        Ok(Frame {
            kind: self.kind,
            body,
        })
    }
}

/// Decodes one frame from the front of `bytes`; returns it and the bytes it used.
pub fn decode_frame(bytes: &[u8]) -> Result<(Frame, usize), FrameError> {
    let Some(raw) = bytes.first_chunk::<FRAME_HEADER_BYTES>() else {
        return Err(FrameError::Truncated {
            needed: FRAME_HEADER_BYTES as u64,
            available: bytes.len() as u64,
        });
    };
    let header = decode_header(raw)?;
    let total = FRAME_HEADER_BYTES + header.body_len as usize;
    let Some(frame_bytes) = bytes.get(FRAME_HEADER_BYTES..total) else {
        return Err(FrameError::Truncated {
            needed: total as u64,
            available: bytes.len() as u64,
        });
    };
    let frame = header.verify(Bytes::copy_from_slice(frame_bytes))?;
    Ok((frame, total))
}

/// Reads one frame. `Ok(None)` when the stream ends cleanly before the first header byte.
/// Memory grows with the bytes that actually arrive, never with the length a peer claims.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>, FrameError> {
    match read_header(reader).await? {
        None => Ok(None),
        Some(header) => read_body(reader, &header).await.map(Some),
    }
}

/// Reads and checks one frame header, so a receiver can judge the announced body before it
/// reads it. `Ok(None)` when the stream ends cleanly before the first header byte.
pub async fn read_header<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<FrameHeader>, FrameError> {
    let mut raw = [0u8; FRAME_HEADER_BYTES];
    let mut filled = 0;
    while filled < FRAME_HEADER_BYTES {
        let read = reader.read(&mut raw[filled..]).await.map_err(io_error)?;
        if read == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::UnexpectedEnd)
            };
        }
        filled += read;
    }
    decode_header(&raw).map(Some)
}

/// Reads the body `header` announces and checks it against the header's checksum.
pub async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    header: &FrameHeader,
) -> Result<Frame, FrameError> {
    let body_len = header.body_len as usize;
    let mut body = BytesMut::with_capacity(body_len.min(READ_RESERVE_BYTES_MAX));
    while body.len() < body_len {
        let want = (body_len - body.len()).min(READ_RESERVE_BYTES_MAX);
        body.reserve(want);
        let mut limited = (&mut *reader).take(want as u64);
        let read = limited.read_buf(&mut body).await.map_err(io_error)?;
        if read == 0 {
            return Err(FrameError::UnexpectedEnd);
        }
    }
    header.verify(body.freeze())
}

/// Reads one frame and fails if the stream ended instead.
pub async fn read_required_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Frame, FrameError> {
    read_frame(reader).await?.ok_or(FrameError::UnexpectedEnd)
}

/// Writes one frame (header, then body, without copying the body).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
) -> Result<(), FrameError> {
    let header = encode_header(frame.kind, &frame.body)?;
    writer.write_all(&header).await.map_err(io_error)?;
    writer.write_all(&frame.body).await.map_err(io_error)?;
    Ok(())
}

/// Running CRC32C over the chunks of a bulk stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamChecksum {
    total_bytes: u64,
    crc: u32,
}

impl StreamChecksum {
    pub fn update(&mut self, chunk: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, chunk);
        self.total_bytes += chunk.len() as u64;
    }

    pub fn summary(&self) -> StreamEnd {
        StreamEnd {
            total_bytes: self.total_bytes,
            crc: self.crc,
        }
    }
}

/// How much a reader reserves at a time while a body arrives: a Raft message of 1 MiB of
/// entries fits at once (growing by 64 KiB, its bytes were moved again at every doubling), and
/// a peer announcing a larger body gets no more memory before it sends the bytes.
const READ_RESERVE_BYTES_MAX: usize = 2 * 1024 * 1024;

fn frame_crc(header_prefix: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_prefix), body)
}

fn io_error(error: std::io::Error) -> FrameError {
    FrameError::Io(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden bytes: this layout is a compatibility promise.
    #[test]
    fn hello_frame_golden_bytes() {
        let encoded = Frame::hello(NodeId(2)).encode().unwrap();
        let crc = frame_crc(&[0xDB, 1, 1, 0, 8, 0, 0, 0], &[2, 0, 0, 0, 0, 0, 0, 0]);
        let mut expected = vec![0xDB, 1, 1, 0, 8, 0, 0, 0];
        expected.extend_from_slice(&crc.to_le_bytes());
        expected.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encoded, expected);
    }

    #[test]
    fn handler_error_golden_bytes() {
        let frame = Frame::error_response(&HandlerError::NotReady);
        assert_eq!(frame.body.as_ref(), [0]);
        let frame = Frame::error_response(&HandlerError::BadRequest("x".into()));
        assert_eq!(frame.body.as_ref(), [1, 1, b'x']);
        let frame = Frame::error_response(&HandlerError::Failed("ab".into()));
        assert_eq!(frame.body.as_ref(), [2, 2, b'a', b'b']);
        assert_eq!(frame.handler_error(), Ok(HandlerError::Failed("ab".into())));
    }

    #[test]
    fn stream_end_golden_bytes() {
        let frame = Frame::stream_end(StreamEnd {
            total_bytes: 0x0102,
            crc: 0xAABBCCDD,
        });
        assert_eq!(
            frame.body.as_ref(),
            [0x02, 0x01, 0, 0, 0, 0, 0, 0, 0xDD, 0xCC, 0xBB, 0xAA]
        );
        assert_eq!(
            frame.stream_end_summary().unwrap(),
            StreamEnd {
                total_bytes: 0x0102,
                crc: 0xAABBCCDD
            }
        );
    }

    #[test]
    fn hello_with_node_zero_is_refused() {
        let frame = Frame::new(FrameKind::Hello, Bytes::from_static(&[0; 8]));
        assert!(matches!(
            frame.hello_node(),
            Err(FrameError::BadBody { .. })
        ));
    }

    #[test]
    fn oversized_error_message_is_shortened() {
        let long = "x".repeat(ERROR_BODY_BYTES_MAX as usize * 2);
        let frame = Frame::error_response(&HandlerError::Failed(long));
        assert!(frame.encode().is_ok());
        assert!(matches!(frame.handler_error(), Ok(HandlerError::Failed(_))));
    }
}

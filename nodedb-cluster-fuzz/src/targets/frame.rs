//! `frame`: the transport's frame decoder (`nodedb-cluster-transport/src/codec.rs`), both the
//! slice decoder and the async reader a QUIC stream feeds, with the bodies of `Hello`,
//! `ErrorResponse` and `StreamEnd`. Each input is decoded as it is (the checksum refuses
//! almost every mutation) and again with every header checksum repaired, so that mutated
//! bodies reach the body decoders.

use crate::{Target, Verdict, combine, outcome};
use nodedb_cluster_core::NodeId;
use nodedb_cluster_transport::codec::{
    FRAME_HEADER_BYTES, Frame, FrameError, FrameKind, StreamEnd, decode_frame, decode_header,
    encode_header, read_frame,
};
use nodedb_cluster_transport::{Bytes, HandlerError};

/// Most frames decoded from one input (an input holds far fewer).
const FRAMES_PER_INPUT_MAX: usize = 1024;

#[derive(Debug)]
pub struct FrameTarget {
    runtime: tokio::runtime::Runtime,
}

impl FrameTarget {
    pub fn new() -> anyhow::Result<FrameTarget> {
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        Ok(FrameTarget { runtime })
    }
}

impl Target for FrameTarget {
    fn name(&self) -> &'static str {
        "frame"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        let frames = [
            Frame::hello(NodeId(3)),
            Frame::new(FrameKind::Request, Bytes::from_static(b"\x01\x03\x01\x04")),
            Frame::new(FrameKind::Response, Bytes::new()),
            Frame::error_response(&HandlerError::NotReady),
            Frame::error_response(&HandlerError::BadRequest("unknown channel".into())),
            Frame::error_response(&HandlerError::Failed("x".repeat(200))),
            Frame::new(FrameKind::StreamOpen, Bytes::from_static(b"header")),
            Frame::new(FrameKind::StreamChunk, Bytes::from(vec![7u8; 300])),
            Frame::stream_end(StreamEnd {
                total_bytes: 300,
                crc: 0xDEAD_BEEF,
            }),
        ];
        let mut seeds: Vec<Vec<u8>> = frames.iter().map(encode).collect();
        // Whole streams as a peer sends them: hello + request, and a bulk stream.
        seeds.push([encode(&frames[0]), encode(&frames[1])].concat());
        seeds.push(
            [
                encode(&frames[0]),
                encode(&frames[6]),
                encode(&frames[7]),
                encode(&frames[8]),
            ]
            .concat(),
        );
        seeds
    }

    fn check(&mut self, input: &[u8]) -> Verdict {
        let raw = self.check_stream(input)?;
        let repaired = self.check_stream(&repair_checksums(input))?;
        Ok(combine(raw, repaired))
    }
}

impl FrameTarget {
    /// Decodes `bytes` as a sequence of frames, with the slice decoder and with the async
    /// reader, and checks that both agree and that every frame re-encodes to its bytes.
    fn check_stream(&self, bytes: &[u8]) -> Verdict {
        let mut rest = bytes;
        let mut decoded = Vec::new();
        let mut class = outcome("start");
        let end = loop {
            if rest.is_empty() || decoded.len() == FRAMES_PER_INPUT_MAX {
                break None;
            }
            match decode_frame(rest) {
                Ok((frame, used)) => {
                    let encoded = encode(&frame);
                    if encoded != rest[..used] {
                        return Err(format!(
                            "{:?} frame decoded from {} re-encodes as {}",
                            frame.kind,
                            crate::hex(&rest[..used]),
                            crate::hex(&encoded)
                        ));
                    }
                    class = combine(class, check_body(&frame)?);
                    rest = &rest[used..];
                    decoded.push(frame);
                }
                Err(error) => break Some(error),
            }
        };
        let read = self.read_all(bytes);
        for (index, frame) in decoded.iter().enumerate() {
            match read.frames.get(index) {
                Some(same) if same == frame => {}
                other => {
                    return Err(format!(
                        "frame {index}: slice decoder gave {frame:?}, async reader {other:?}"
                    ));
                }
            }
        }
        if read.frames.len() != decoded.len() {
            return Err(format!(
                "slice decoder gave {} frames, async reader {}",
                decoded.len(),
                read.frames.len()
            ));
        }
        if !ends_agree(end.as_ref(), read.end.as_ref()) {
            return Err(format!(
                "slice decoder ended with {end:?}, async reader with {:?}",
                read.end
            ));
        }
        Ok(combine(class, outcome(&end_class(end.as_ref()))))
    }

    fn read_all(&self, bytes: &[u8]) -> ReadAll {
        self.runtime.block_on(async {
            let mut reader = bytes;
            let mut frames = Vec::new();
            loop {
                if frames.len() == FRAMES_PER_INPUT_MAX {
                    return ReadAll { frames, end: None };
                }
                match read_frame(&mut reader).await {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => return ReadAll { frames, end: None },
                    Err(error) => {
                        return ReadAll {
                            frames,
                            end: Some(error),
                        };
                    }
                }
            }
        })
    }
}

struct ReadAll {
    frames: Vec<Frame>,
    end: Option<FrameError>,
}

fn encode(frame: &Frame) -> Vec<u8> {
    frame
        .encode()
        .unwrap_or_else(|error| panic!("a decoded or seed frame must encode: {error}"))
}

/// The typed body of a frame, re-encoded: the same bytes, or the body is refused.
fn check_body(frame: &Frame) -> Verdict {
    let (label, reencoded) = match frame.kind {
        FrameKind::Hello => match frame.hello_node() {
            Ok(node) => ("hello", Frame::hello(node).body),
            Err(error) => return Ok(outcome(&format!("hello refused {}", variant(&error)))),
        },
        FrameKind::ErrorResponse => match frame.handler_error() {
            Ok(error) => ("error", Frame::error_response(&error).body),
            Err(error) => return Ok(outcome(&format!("error refused {}", variant(&error)))),
        },
        FrameKind::StreamEnd => match frame.stream_end_summary() {
            Ok(end) => ("end", Frame::stream_end(end).body),
            Err(error) => return Ok(outcome(&format!("end refused {}", variant(&error)))),
        },
        other => return Ok(outcome(&format!("{other:?}"))),
    };
    if reencoded != frame.body {
        return Err(format!(
            "{:?} body {} decodes, but re-encodes as {}",
            frame.kind,
            crate::hex(&frame.body),
            crate::hex(&reencoded)
        ));
    }
    Ok(outcome(label))
}

/// The slice decoder reports a short input as `Truncated`; the reader, which cannot see the
/// end coming, as `UnexpectedEnd`. Every other ending must be the same.
fn ends_agree(slice: Option<&FrameError>, reader: Option<&FrameError>) -> bool {
    match (slice, reader) {
        (None, None) => true,
        (Some(FrameError::Truncated { .. }), Some(FrameError::UnexpectedEnd)) => true,
        (Some(slice), Some(reader)) => slice == reader,
        _ => false,
    }
}

fn end_class(end: Option<&FrameError>) -> String {
    end.map(variant).unwrap_or_else(|| "clean end".into())
}

fn variant(error: &FrameError) -> String {
    let text = format!("{error:?}");
    text.split([' ', '(', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A copy of `input` in which every frame header that decodes carries the right checksum for
/// the body bytes that follow it.
fn repair_checksums(input: &[u8]) -> Vec<u8> {
    let mut bytes = input.to_vec();
    let mut at = 0;
    while let Some(raw) = bytes
        .get(at..)
        .and_then(|rest| rest.first_chunk::<FRAME_HEADER_BYTES>())
    {
        let Ok(header) = decode_header(raw) else {
            break;
        };
        let body_start = at + FRAME_HEADER_BYTES;
        let body_end = (body_start + header.body_len as usize).min(bytes.len());
        let Ok(fixed) = encode_header(header.kind, &bytes[body_start..body_end]) else {
            break;
        };
        if body_end - body_start == header.body_len as usize {
            bytes[at..body_start].copy_from_slice(&fixed);
        }
        at = body_end;
    }
    bytes
}

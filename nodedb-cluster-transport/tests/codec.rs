//! Property tests of the frame codec: arbitrary bytes never panic the decoder, valid frames
//! round-trip (in a buffer and through an async stream), and each kind of damage gives its
//! own typed error.

use nodedb_cluster_transport::Bytes;
use nodedb_cluster_transport::codec::{
    FRAME_HEADER_BYTES, Frame, FrameError, FrameKind, decode_frame, read_frame, write_frame,
};
use proptest::prelude::*;

fn kind_strategy() -> impl Strategy<Value = FrameKind> {
    prop_oneof![
        Just(FrameKind::Request),
        Just(FrameKind::Response),
        Just(FrameKind::StreamOpen),
        Just(FrameKind::StreamChunk),
    ]
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            kind_strategy(),
            proptest::collection::vec(any::<u8>(), 0..2048)
        )
            .prop_map(|(kind, body)| Frame::new(kind, Bytes::from(body))),
        (1u64..).prop_map(|node| Frame::hello(nodedb_cluster_core::NodeId(node))),
        (any::<u64>(), any::<u32>()).prop_map(|(total_bytes, crc)| Frame::stream_end(
            nodedb_cluster_transport::codec::StreamEnd { total_bytes, crc }
        )),
        ".{0,64}".prop_map(|message| Frame::error_response(
            &nodedb_cluster_transport::HandlerError::Failed(message)
        )),
    ]
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(future)
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_frame(&bytes);
        let mut reader: &[u8] = &bytes;
        let _ = block_on(read_frame(&mut reader));
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_prefix_never_panic(
        kind in 1u8..=7,
        rest in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = vec![0xDB, 1, kind, 0];
        bytes.extend_from_slice(&rest);
        let _ = decode_frame(&bytes);
        let mut reader: &[u8] = &bytes;
        let _ = block_on(read_frame(&mut reader));
    }

    #[test]
    fn valid_frames_round_trip(frames in proptest::collection::vec(frame_strategy(), 1..8)) {
        let mut wire = Vec::new();
        for frame in &frames {
            wire.extend_from_slice(&frame.encode().unwrap());
        }
        let mut offset = 0;
        for frame in &frames {
            let (decoded, used) = decode_frame(&wire[offset..]).unwrap();
            prop_assert_eq!(&decoded, frame);
            offset += used;
        }
        prop_assert_eq!(offset, wire.len());

        let streamed = block_on(async {
            let mut written = Vec::new();
            for frame in &frames {
                write_frame(&mut written, frame).await.unwrap();
            }
            let mut reader: &[u8] = &written;
            let mut read = Vec::new();
            while let Some(frame) = read_frame(&mut reader).await.unwrap() {
                read.push(frame);
            }
            read
        });
        prop_assert_eq!(streamed, frames);
    }

    #[test]
    fn truncated_frames_are_truncated(frame in frame_strategy(), cut in any::<prop::sample::Index>()) {
        let wire = frame.encode().unwrap();
        let keep = cut.index(wire.len());
        prop_assert!(
            matches!(decode_frame(&wire[..keep]), Err(FrameError::Truncated { .. })),
            "cut at {} of {}", keep, wire.len()
        );
        let mut reader: &[u8] = &wire[..keep];
        let read = block_on(read_frame(&mut reader));
        if keep == 0 {
            prop_assert_eq!(read, Ok(None));
        } else {
            prop_assert_eq!(read, Err(FrameError::UnexpectedEnd));
        }
    }

    #[test]
    fn any_flipped_bit_is_detected(frame in frame_strategy(), bit in any::<prop::sample::Index>()) {
        let mut wire = frame.encode().unwrap();
        let bit = bit.index(wire.len() * 8);
        wire[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(decode_frame(&wire).is_err());
    }
}

#[test]
fn bad_checksum_is_typed() {
    let mut wire = Frame::new(FrameKind::Request, Bytes::from_static(b"abc"))
        .encode()
        .unwrap();
    wire[FRAME_HEADER_BYTES] ^= 0xFF;
    assert!(matches!(
        decode_frame(&wire),
        Err(FrameError::BadChecksum { .. })
    ));
}

#[test]
fn unknown_kind_version_magic_and_flags_are_typed() {
    let wire = Frame::new(FrameKind::Request, Bytes::from_static(b"abc"))
        .encode()
        .unwrap();
    let with = |index: usize, value: u8| {
        let mut damaged = wire.clone();
        damaged[index] = value;
        decode_frame(&damaged)
    };
    assert_eq!(with(0, 0x00).unwrap_err(), FrameError::BadMagic(0));
    assert_eq!(with(1, 2).unwrap_err(), FrameError::UnsupportedVersion(2));
    assert_eq!(with(2, 200).unwrap_err(), FrameError::UnknownKind(200));
    assert_eq!(with(2, 0).unwrap_err(), FrameError::UnknownKind(0));
    assert_eq!(with(3, 1).unwrap_err(), FrameError::BadFlags(1));
}

#[test]
fn oversize_length_is_refused_before_reading_the_body() {
    // A header claiming a 4 GiB request, followed by nothing: refused at once.
    let mut wire = vec![0xDB, 1, FrameKind::Request as u8, 0];
    wire.extend_from_slice(&u32::MAX.to_le_bytes());
    wire.extend_from_slice(&[0; 4]);
    assert!(matches!(
        decode_frame(&wire),
        Err(FrameError::TooLarge { .. })
    ));
    let mut reader: &[u8] = &wire;
    assert!(matches!(
        block_on(read_frame(&mut reader)),
        Err(FrameError::TooLarge { .. })
    ));
    // Per-kind limits: a hello is exactly eight bytes.
    let mut wire = vec![0xDB, 1, FrameKind::Hello as u8, 0];
    wire.extend_from_slice(&9u32.to_le_bytes());
    wire.extend_from_slice(&[0; 4]);
    assert!(matches!(
        decode_frame(&wire),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn encoding_refuses_an_oversized_body() {
    let chunk = Frame::new(
        FrameKind::StreamChunk,
        Bytes::from(vec![
            0;
            nodedb_cluster_transport::STREAM_CHUNK_BYTES_MAX + 1
        ]),
    );
    assert!(matches!(chunk.encode(), Err(FrameError::TooLarge { .. })));
}

#[test]
fn protocol_errors_map_to_transport_errors() {
    use nodedb_cluster_core::NodeId;
    use nodedb_cluster_transport::TransportError;
    let node = NodeId(4);
    assert!(matches!(
        FrameError::UnknownKind(9).into_transport(node),
        TransportError::Protocol { .. }
    ));
    assert!(
        FrameError::UnexpectedEnd
            .into_transport(node)
            .outcome_unknown()
    );
}

//! Fuzz the frame decoder and the message decoders on top of it: any input
//! must decode to frames and messages or to a typed error, never a panic.
//! Checked on every input:
//! - a decoded frame fits the cap and re-encodes to exactly the bytes it was
//!   decoded from;
//! - feeding the same bytes in small chunks (as a socket does) yields the same
//!   frames and the same final error as decoding them in one piece.
//!
//! Run: `scripts/fuzz [seconds]` (installs cargo-fuzz, builds, seeds the
//! corpus from `protocol`, fails on a crash). See docs/tunnel.md.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::{ControlMessage, Frame, FrameCodec, Hello, HelloAnswer, Request, Response};

/// Decode everything in `chunks` fed one after another; the frames and the
/// terminal error (as text) if any.
fn decode_all<'a>(
    codec: FrameCodec,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> (Vec<Frame>, Option<String>) {
    let mut frames = Vec::new();
    let mut buf = BytesMut::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(Some(frame)) => panic!("decode_eof found a frame decode missed: {frame:?}"),
        Ok(None) => (frames, None),
        Err(e) => (frames, Some(e.to_string())),
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte picks the cap so small caps are explored too; second byte
    // the chunk size of the incremental pass.
    let cap = 1024 + usize::from(data.first().copied().unwrap_or(0)) * 4096;
    let chunk = 1 + usize::from(data.get(1).copied().unwrap_or(0) % 64);
    let codec = FrameCodec::new(cap);

    let (frames, error) = decode_all(codec, std::iter::once(data));
    let mut consumed = 0;
    for frame in &frames {
        assert!(frame.body_len() < codec.max_frame_bytes());
        let bytes = codec
            .encode_to_bytes(frame)
            .expect("a decoded frame must re-encode");
        assert_eq!(
            &data[consumed..consumed + bytes.len()],
            &bytes[..],
            "re-encoded frame differs from its input bytes"
        );
        consumed += bytes.len();
        if let Frame::Control(_) = frame {
            let _ = frame.parse_control::<Hello>();
            let _ = frame.parse_control::<HelloAnswer>();
            let _ = frame.parse_control::<ControlMessage>();
            if let Ok(request) = Request::from_frame(frame) {
                let _ = request.to_frame();
            }
            if let Ok(response) = Response::from_frame(frame) {
                let _ = response.to_frame();
            }
        }
    }
    if error.is_none() {
        assert_eq!(consumed, data.len(), "input left over without an error");
    }

    let (pieces, piece_error) = decode_all(codec, data.chunks(chunk));
    assert_eq!(frames, pieces, "chunked decoding differs");
    assert_eq!(error, piece_error, "chunked decoding ends differently");
});

//! Fuzz the frame decoder and the message decoders on top of it: any input
//! must decode to frames and messages or to a typed error, never a panic.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run frame_decoder -- -max_total_time=60`
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::{ControlMessage, Frame, FrameCodec, Hello, HelloAnswer, Request, Response};

fuzz_target!(|data: &[u8]| {
    // First byte picks the cap so small caps are explored too.
    let cap = 1024 + usize::from(data.first().copied().unwrap_or(0)) * 4096;
    let codec = FrameCodec::new(cap);
    let mut buf = BytesMut::from(data);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(frame.body_len() < codec.max_frame_bytes());
                if let Frame::Control(_) = &frame {
                    let _ = frame.parse_control::<Hello>();
                    let _ = frame.parse_control::<HelloAnswer>();
                    let _ = frame.parse_control::<ControlMessage>();
                    let _ = Request::from_frame(&frame);
                    let _ = Response::from_frame(&frame);
                }
            }
            Ok(None) => {
                let _ = codec.decode_eof(&mut buf);
                break;
            }
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
});

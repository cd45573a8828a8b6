//! Frame encoding: how one message or one chunk of bytes is delimited on a
//! byte stream (a QUIC stream, an h2 stream, a child process's stdio).
//!
//! ```text
//! +----------------------+--------+---------------------------+
//! | length: u32 big-end. | kind   | body (length - 1 bytes)   |
//! +----------------------+--------+---------------------------+
//! ```
//!
//! `length` counts the kind byte and the body, never the 4 length bytes, so
//! it is at least 1. It is checked against a hard cap ([`DEFAULT_MAX_FRAME_BYTES`],
//! configurable lower) *before* anything is buffered, so a peer cannot make
//! us allocate more than the cap. Kinds:
//!
//! - [`KIND_CONTROL`] (`0x01`): a JSON control message (request, response,
//!   hello, heartbeat...). Parsed with [`Frame::parse_control`].
//! - [`KIND_DATA`] (`0x02`): a raw chunk of bulk bytes (stdout, file bytes,
//!   echo payload), carried as is: bulk never goes through JSON or base64.
//!
//! Any error leaves the byte stream in an unknown state: the caller closes
//! that stream (and only that stream).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

/// Size of the length prefix.
pub const HEADER_BYTES: usize = 4;
/// Default (and maximum sensible) frame cap: 1 MiB of kind byte plus body.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;
/// Smallest cap a codec accepts: a control message must fit a useful error.
pub const MIN_MAX_FRAME_BYTES: usize = 1 << 10;
/// Kind byte of a JSON control message.
pub const KIND_CONTROL: u8 = 0x01;
/// Kind byte of a raw data chunk.
pub const KIND_DATA: u8 = 0x02;

/// A frame failed to decode or encode. Every variant is about the peer's
/// bytes (or the caller's oversized payload); none is a bug in the codec.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than the cap allows.
    #[error("frame of {len} bytes exceeds the cap of {max} bytes")]
    Oversized {
        /// Announced (or attempted) length of kind byte plus body.
        len: usize,
        /// The cap in force.
        max: usize,
    },
    /// The length prefix is zero: there is not even a kind byte.
    #[error("empty frame (length prefix is 0)")]
    Empty,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame: have {have} of {need} bytes")]
    Truncated {
        /// Bytes received of this frame, prefix included.
        have: usize,
        /// Bytes this frame needs, prefix included (4 when the prefix itself is cut).
        need: usize,
    },
    /// The kind byte is neither control nor data.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A control frame's body is not the JSON message expected.
    #[error("invalid {expected} JSON in control frame: {message}")]
    InvalidJson {
        /// Which message type was expected (e.g. `Request`).
        expected: &'static str,
        /// What serde_json said (names the field, line and column).
        message: String,
    },
    /// A data frame arrived where a control message was expected, or the reverse.
    #[error("unexpected {got} frame, expected a {expected} frame")]
    UnexpectedKind {
        /// Kind received (`control` or `data`).
        got: &'static str,
        /// Kind expected.
        expected: &'static str,
    },
    /// A message could not be serialized (a bug in the caller's type).
    #[error("cannot serialize {what}: {message}")]
    Serialize {
        /// The message type.
        what: &'static str,
        /// What serde_json said.
        message: String,
    },
}

/// One decoded frame. Bodies are reference-counted slices of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON control message (the raw JSON bytes).
    Control(Bytes),
    /// A raw data chunk.
    Data(Bytes),
}

impl Frame {
    /// Serialize a control message into a control frame.
    pub fn control<T: Serialize>(message: &T) -> Result<Self, FrameError> {
        serde_json::to_vec(message)
            .map(|v| Frame::Control(Bytes::from(v)))
            .map_err(|e| FrameError::Serialize {
                what: short_type_name::<T>(),
                message: e.to_string(),
            })
    }

    /// A data frame carrying `bytes`.
    pub fn data(bytes: impl Into<Bytes>) -> Self {
        Frame::Data(bytes.into())
    }

    /// Parse this control frame as `T`. A data frame is [`FrameError::UnexpectedKind`].
    pub fn parse_control<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        match self {
            Frame::Control(body) => parse_json(body),
            Frame::Data(_) => Err(FrameError::UnexpectedKind {
                got: "data",
                expected: "control",
            }),
        }
    }

    /// `"control"` or `"data"`, for logs and errors.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Control(_) => "control",
            Frame::Data(_) => "data",
        }
    }

    /// Length of the body (without prefix and kind byte).
    pub fn body_len(&self) -> usize {
        match self {
            Frame::Control(b) | Frame::Data(b) => b.len(),
        }
    }
}

/// Parse JSON bytes as `T`, naming `T` on failure.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::InvalidJson {
        expected: short_type_name::<T>(),
        message: e.to_string(),
    })
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    // Keep the last path segment of the outer type: `protocol::call::Request` -> `Request`.
    let outer = full.split('<').next().unwrap_or(full);
    outer.rsplit("::").next().unwrap_or(outer)
}

/// Incremental decoder and encoder with a hard cap. Cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodec {
    max_frame_bytes: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

impl FrameCodec {
    /// A codec whose cap is `max_frame_bytes`, clamped to
    /// [`MIN_MAX_FRAME_BYTES`]..=[`DEFAULT_MAX_FRAME_BYTES`].
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes: max_frame_bytes.clamp(MIN_MAX_FRAME_BYTES, DEFAULT_MAX_FRAME_BYTES),
        }
    }

    /// The cap in force (kind byte plus body).
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Largest body a data frame may carry; split bulk bytes into chunks of this.
    pub fn max_data_chunk(&self) -> usize {
        self.max_frame_bytes - 1
    }

    /// Take one complete frame off the front of `src`, if there is one.
    ///
    /// `Ok(None)` means "need more bytes" (`src` is left as is; room for the
    /// announced frame is reserved). Never panics, whatever `src` holds.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < HEADER_BYTES {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame_bytes {
            return Err(FrameError::Oversized {
                len,
                max: self.max_frame_bytes,
            });
        }
        let Some(&kind) = src.get(HEADER_BYTES) else {
            src.reserve(len);
            return Ok(None);
        };
        if kind != KIND_CONTROL && kind != KIND_DATA {
            return Err(FrameError::UnknownKind(kind));
        }
        let need = HEADER_BYTES + len;
        if src.len() < need {
            src.reserve(need - src.len());
            return Ok(None);
        }
        src.advance(HEADER_BYTES + 1);
        let body = src.split_to(len - 1).freeze();
        Ok(Some(if kind == KIND_CONTROL {
            Frame::Control(body)
        } else {
            Frame::Data(body)
        }))
    }

    /// Like [`decode`](Self::decode), at end of stream: leftover bytes are
    /// [`FrameError::Truncated`].
    pub fn decode_eof(&self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                let need = if src.len() < HEADER_BYTES {
                    HEADER_BYTES
                } else {
                    HEADER_BYTES + u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize
                };
                Err(FrameError::Truncated {
                    have: src.len(),
                    need,
                })
            }
        }
    }

    /// Append `frame` to `dst`. Fails with [`FrameError::Oversized`] when
    /// the body does not fit the cap (nothing is written then).
    pub fn encode(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let (kind, body) = match frame {
            Frame::Control(b) => (KIND_CONTROL, b),
            Frame::Data(b) => (KIND_DATA, b),
        };
        let len = body.len() + 1;
        if len > self.max_frame_bytes {
            return Err(FrameError::Oversized {
                len,
                max: self.max_frame_bytes,
            });
        }
        dst.reserve(HEADER_BYTES + len);
        // Cannot truncate: len <= max_frame_bytes <= DEFAULT_MAX_FRAME_BYTES < u32::MAX.
        dst.put_u32(len as u32);
        dst.put_u8(kind);
        dst.extend_from_slice(body);
        Ok(())
    }

    /// Encode just the 5-byte header of a frame whose body is `body_len`
    /// bytes, so a large data body can be written without copying it.
    pub fn encode_header(&self, kind: u8, body_len: usize) -> Result<[u8; 5], FrameError> {
        let len = body_len + 1;
        if len > self.max_frame_bytes {
            return Err(FrameError::Oversized {
                len,
                max: self.max_frame_bytes,
            });
        }
        // Cannot truncate: see encode.
        let l = (len as u32).to_be_bytes();
        Ok([l[0], l[1], l[2], l[3], kind])
    }

    /// Encode a frame into a fresh buffer.
    pub fn encode_to_bytes(&self, frame: &Frame) -> Result<Bytes, FrameError> {
        let mut dst = BytesMut::with_capacity(HEADER_BYTES + 1 + frame.body_len());
        self.encode(frame, &mut dst)?;
        Ok(dst.freeze())
    }
}

/// Blocking helpers over `std::io` (for the executor's stdio; no runtime).
pub mod blocking {
    use std::io::{Read, Write};

    use bytes::BytesMut;

    use super::{Frame, FrameCodec, FrameError};

    /// Reading a frame from a blocking reader failed.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum ReadError {
        /// The bytes are not a valid frame.
        #[error(transparent)]
        Frame(#[from] FrameError),
        /// The reader failed.
        #[error("read failed: {0}")]
        Io(#[from] std::io::Error),
    }

    /// Read the next frame; `Ok(None)` at a clean end of stream. `buf` keeps
    /// bytes read past the frame for the next call.
    pub fn read_frame(
        codec: &FrameCodec,
        reader: &mut impl Read,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame>, ReadError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(frame) = codec.decode(buf)? {
                return Ok(Some(frame));
            }
            let n = match reader.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Ok(codec.decode_eof(buf)?);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Write one frame (not flushed).
    pub fn write_frame(
        codec: &FrameCodec,
        writer: &mut impl Write,
        frame: &Frame,
    ) -> Result<(), ReadError> {
        let bytes = codec.encode_to_bytes(frame)?;
        writer.write_all(&bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(frames: &[Frame]) -> BytesMut {
        let codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        for f in frames {
            codec.encode(f, &mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn round_trip_control_and_data() {
        let frames = vec![
            Frame::control(&serde_json::json!({"a": 1})).unwrap(),
            Frame::data(vec![]),
            Frame::data(vec![7u8; 1000]),
        ];
        let mut buf = encode(&frames);
        let codec = FrameCodec::default();
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        assert_eq!(out, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn byte_by_byte_feed() {
        let frames = vec![Frame::data(vec![1, 2, 3]), Frame::control(&42u32).unwrap()];
        let all = encode(&frames);
        let codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in all.iter() {
            buf.extend_from_slice(&[*b]);
            if let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
    }

    #[test]
    fn oversized_is_rejected_before_buffering() {
        let codec = FrameCodec::new(2048);
        let mut buf = BytesMut::from(&[0u8, 0, 0x10, 0x00][..]); // 4096
        match codec.decode(&mut buf) {
            Err(FrameError::Oversized {
                len: 4096,
                max: 2048,
            }) => {}
            other => panic!("{other:?}"),
        }
        let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            FrameCodec::default().decode(&mut buf),
            Err(FrameError::Oversized { .. })
        ));
    }

    #[test]
    fn encoder_refuses_oversized() {
        let codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        assert!(codec.encode(&Frame::data(vec![0; 1023]), &mut buf).is_ok());
        assert!(matches!(
            codec.encode(&Frame::data(vec![0; 1024]), &mut buf),
            Err(FrameError::Oversized {
                len: 1025,
                max: 1024
            })
        ));
    }

    #[test]
    fn empty_unknown_truncated() {
        let codec = FrameCodec::default();
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::Empty)));
        let mut buf = BytesMut::from(&[0u8, 0, 0, 2, 9, 1][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::UnknownKind(9))
        ));
        let mut buf = BytesMut::from(&[0u8, 0, 0, 5, 2, 1][..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated { have: 6, need: 9 })
        ));
        let mut buf = BytesMut::from(&[0u8, 0][..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated { have: 2, need: 4 })
        ));
    }

    #[test]
    fn invalid_json_names_type() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Hello {
            version: u32,
        }
        let f = Frame::Control(Bytes::from_static(b"{\"version\":\"x\"}"));
        let err = f.parse_control::<Hello>().unwrap_err();
        let s = err.to_string();
        assert!(s.contains("Hello") && s.contains("invalid type"), "{s}");
        let err = Frame::data(vec![]).parse_control::<Hello>().unwrap_err();
        assert!(matches!(err, FrameError::UnexpectedKind { .. }));
    }

    #[test]
    fn blocking_round_trip() {
        let codec = FrameCodec::default();
        let mut out = Vec::new();
        blocking::write_frame(&codec, &mut out, &Frame::data(vec![5; 40_000])).unwrap();
        blocking::write_frame(&codec, &mut out, &Frame::control(&"hi").unwrap()).unwrap();
        let mut r = &out[..];
        let mut buf = BytesMut::new();
        let a = blocking::read_frame(&codec, &mut r, &mut buf)
            .unwrap()
            .unwrap();
        let b = blocking::read_frame(&codec, &mut r, &mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(a, Frame::data(vec![5; 40_000]));
        assert_eq!(b.parse_control::<String>().unwrap(), "hi");
        assert!(blocking::read_frame(&codec, &mut r, &mut buf)
            .unwrap()
            .is_none());
    }

    proptest! {
        /// Any byte string decodes to frames followed by a typed error or
        /// "need more"; never a panic, never more than the cap buffered.
        #[test]
        fn any_bytes_decode_or_typed_error(bytes in proptest::collection::vec(any::<u8>(), 0..4096), cap in 1024usize..4096) {
            let codec = FrameCodec::new(cap);
            let mut buf = BytesMut::from(&bytes[..]);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(f)) => prop_assert!(f.body_len() < codec.max_frame_bytes()),
                    Ok(None) => {
                        let _ = codec.decode_eof(&mut buf);
                        break;
                    }
                    Err(e) => { let _ = e.to_string(); break; }
                }
            }
        }

        /// Near-valid input (plausible prefix, any kind, any body, cut anywhere)
        /// also decodes to a frame or a typed error.
        #[test]
        fn near_valid_frames_never_panic(len in 0u32..3000, kind in 0u8..4, body in proptest::collection::vec(any::<u8>(), 0..3000), cut in 0usize..3010) {
            let codec = FrameCodec::new(2048);
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.push(kind);
            bytes.extend_from_slice(&body);
            bytes.truncate(cut.min(bytes.len()));
            let mut buf = BytesMut::from(&bytes[..]);
            match codec.decode_eof(&mut buf) {
                Ok(Some(f)) => prop_assert_eq!(f.body_len() + 1, len as usize),
                Ok(None) => prop_assert!(bytes.is_empty()),
                Err(_) => {}
            }
        }

        /// Whatever is encoded decodes back identically, however it is split.
        #[test]
        fn encode_decode_identity(bodies in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..2000)), 0..8), split in 1usize..64) {
            let frames: Vec<Frame> = bodies.into_iter().map(|(c, b)| if c { Frame::Control(b.into()) } else { Frame::Data(b.into()) }).collect();
            let all = encode(&frames);
            let codec = FrameCodec::default();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in all.chunks(split) {
                buf.extend_from_slice(chunk);
                while let Some(f) = codec.decode(&mut buf).unwrap() { out.push(f); }
            }
            prop_assert_eq!(out, frames);
        }
    }
}

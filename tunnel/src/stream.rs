//! Framed halves of one bidirectional stream, the same above QUIC streams and
//! h2 streams: send frames (bulk data split at the frame cap, never copied
//! through JSON), receive frames, finish, reset.

use std::future::poll_fn;

use bytes::{Bytes, BytesMut};
use protocol::frame::{Frame, FrameCodec, FrameError, KIND_CONTROL, KIND_DATA};

use crate::error::StreamError;

/// Stream reset / stop codes (QUIC application codes; h2 reasons for TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCode {
    /// The peer sent bytes that are not a valid frame or message.
    BadFrame,
    /// The sender gave up on the call (cancelled or shutting down).
    Cancelled,
}

impl StreamCode {
    /// QUIC application error code.
    pub(crate) fn quic(self) -> quinn::VarInt {
        match self {
            StreamCode::BadFrame => quinn::VarInt::from_u32(1),
            StreamCode::Cancelled => quinn::VarInt::from_u32(2),
        }
    }

    /// h2 reset reason.
    pub(crate) fn h2(self) -> h2::Reason {
        match self {
            StreamCode::BadFrame => h2::Reason::PROTOCOL_ERROR,
            StreamCode::Cancelled => h2::Reason::CANCEL,
        }
    }
}

pub(crate) enum SendHalf {
    Quic(quinn::SendStream),
    H2(h2::SendStream<Bytes>),
}

pub(crate) enum RecvHalf {
    Quic(quinn::RecvStream),
    /// An h2 request whose response headers have not arrived yet (control-plane side).
    H2Pending(h2::client::ResponseFuture),
    H2(h2::RecvStream),
}

/// Sending half of a call or control stream.
pub struct FrameSender {
    inner: SendHalf,
    codec: FrameCodec,
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSender").finish_non_exhaustive()
    }
}

impl FrameSender {
    pub(crate) fn new(inner: SendHalf, codec: FrameCodec) -> Self {
        Self { inner, codec }
    }

    /// The codec (its cap) in use.
    pub fn codec(&self) -> FrameCodec {
        self.codec
    }

    /// Send one frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), StreamError> {
        let (kind, body) = match frame {
            Frame::Control(b) => (KIND_CONTROL, b.clone()),
            Frame::Data(b) => (KIND_DATA, b.clone()),
        };
        let header = self.codec.encode_header(kind, body.len())?;
        self.write(Bytes::copy_from_slice(&header), body).await
    }

    /// Send a control message.
    pub async fn send_message<T: serde::Serialize>(
        &mut self,
        message: &T,
    ) -> Result<(), StreamError> {
        self.send(&Frame::control(message)?).await
    }

    /// Send bulk bytes as data frames, split at the frame cap (no copy).
    pub async fn send_data(&mut self, mut bytes: Bytes) -> Result<(), StreamError> {
        let max = self.codec.max_data_chunk();
        while !bytes.is_empty() {
            let chunk = bytes.split_to(bytes.len().min(max));
            let header = self.codec.encode_header(KIND_DATA, chunk.len())?;
            self.write(Bytes::copy_from_slice(&header), chunk).await?;
        }
        Ok(())
    }

    /// Write bytes as they are, without framing (tests of malformed input).
    pub(crate) async fn write_raw(&mut self, raw: Bytes) -> Result<(), StreamError> {
        self.write(Bytes::new(), raw).await
    }

    async fn write(&mut self, header: Bytes, body: Bytes) -> Result<(), StreamError> {
        match &mut self.inner {
            SendHalf::Quic(s) => {
                let mut chunks = [header, body];
                s.write_all_chunks(&mut chunks)
                    .await
                    .map_err(StreamError::from_quic_write)
            }
            SendHalf::H2(s) => {
                h2_send(s, header).await?;
                h2_send(s, body).await
            }
        }
    }

    /// End the stream cleanly (the peer reads end-of-stream after the last frame).
    pub fn finish(&mut self) -> Result<(), StreamError> {
        match &mut self.inner {
            SendHalf::Quic(s) => s.finish().map_err(|_| StreamError::Closed),
            SendHalf::H2(s) => s
                .send_data(Bytes::new(), true)
                .map_err(StreamError::from_h2),
        }
    }

    /// Wait until the peer has acknowledged everything sent on this
    /// finished stream (QUIC). On h2 there is no such signal: never resolves,
    /// so callers race it with the link closing and a timeout.
    pub(crate) async fn acknowledged(&mut self) {
        match &mut self.inner {
            SendHalf::Quic(s) => {
                let _ = s.stopped().await;
            }
            SendHalf::H2(_) => std::future::pending().await,
        }
    }

    /// Abort the stream with `code`.
    pub fn reset(&mut self, code: StreamCode) {
        match &mut self.inner {
            SendHalf::Quic(s) => {
                let _ = s.reset(code.quic());
            }
            SendHalf::H2(s) => s.send_reset(code.h2()),
        }
    }
}

async fn h2_send(s: &mut h2::SendStream<Bytes>, mut data: Bytes) -> Result<(), StreamError> {
    while !data.is_empty() {
        s.reserve_capacity(data.len());
        let cap = match poll_fn(|cx| s.poll_capacity(cx)).await {
            None => return Err(StreamError::Closed),
            Some(Err(e)) => return Err(StreamError::from_h2(e)),
            Some(Ok(n)) => n,
        };
        if cap == 0 {
            continue;
        }
        let chunk = data.split_to(cap.min(data.len()));
        s.send_data(chunk, false).map_err(StreamError::from_h2)?;
    }
    Ok(())
}

/// Receiving half of a call or control stream.
pub struct FrameReceiver {
    inner: RecvHalf,
    codec: FrameCodec,
    buf: BytesMut,
    eof: bool,
    chunks: [Bytes; 32],
}

impl std::fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReceiver")
            .field("buffered", &self.buf.len())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl FrameReceiver {
    pub(crate) fn new(inner: RecvHalf, codec: FrameCodec) -> Self {
        Self {
            inner,
            codec,
            buf: BytesMut::new(),
            eof: false,
            chunks: std::array::from_fn(|_| Bytes::new()),
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream.
    pub async fn recv(&mut self) -> Result<Option<Frame>, StreamError> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.eof {
                return Ok(self.codec.decode_eof(&mut self.buf)?);
            }
            match &mut self.inner {
                // Batch: take every chunk quinn has buffered in one call.
                RecvHalf::Quic(r) => match r.read_chunks(&mut self.chunks).await {
                    Ok(Some(n)) => {
                        for chunk in &mut self.chunks[..n] {
                            self.buf.extend_from_slice(chunk);
                            *chunk = Bytes::new();
                        }
                    }
                    Ok(None) => self.eof = true,
                    Err(e) => return Err(StreamError::from_quic_read(e)),
                },
                RecvHalf::H2Pending(fut) => {
                    let resp = fut.await.map_err(StreamError::from_h2)?;
                    if !resp.status().is_success() {
                        return Err(StreamError::Refused(resp.status().to_string()));
                    }
                    self.inner = RecvHalf::H2(resp.into_body());
                }
                RecvHalf::H2(r) => match r.data().await {
                    Some(Ok(b)) => {
                        let _ = r.flow_control().release_capacity(b.len());
                        self.buf.extend_from_slice(&b);
                    }
                    Some(Err(e)) => return Err(StreamError::from_h2(e)),
                    None => self.eof = true,
                },
            }
        }
    }

    /// The next frame, which must be a control message of type `T`.
    /// End of stream is [`StreamError::UnexpectedEnd`].
    pub async fn recv_message<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, StreamError> {
        match self.recv().await? {
            Some(f) => Ok(f.parse_control::<T>()?),
            None => Err(StreamError::UnexpectedEnd),
        }
    }

    /// Tell the peer to stop sending (we will not read more).
    pub fn stop(&mut self, code: StreamCode) {
        match &mut self.inner {
            RecvHalf::Quic(r) => {
                let _ = r.stop(code.quic());
            }
            RecvHalf::H2Pending(_) | RecvHalf::H2(_) => {}
        }
    }
}

impl From<FrameError> for StreamError {
    fn from(e: FrameError) -> Self {
        StreamError::Frame(e)
    }
}

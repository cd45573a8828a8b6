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
    /// An accepted h2 stream (agent side) whose response headers are not
    /// sent yet: they go out with the first write, so headers and data leave
    /// in one flush instead of two.
    H2Unanswered(Option<h2::server::SendResponse<Bytes>>),
}

impl SendHalf {
    /// Send the deferred response headers (`end` ends the stream with them).
    fn answer(&mut self, end: bool) -> Result<(), StreamError> {
        if let SendHalf::H2Unanswered(respond) = self {
            let mut respond = respond.take().ok_or(StreamError::Closed)?;
            let resp = http::Response::builder()
                .status(200)
                .body(())
                .map_err(|e| StreamError::Protocol(e.to_string()))?;
            let send = respond
                .send_response(resp, end)
                .map_err(StreamError::from_h2)?;
            *self = SendHalf::H2(send);
        }
        Ok(())
    }
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
        let [header, body] = self.frame_chunks(frame)?;
        self.write(header, body).await
    }

    /// A frame as its encoded header and its body.
    fn frame_chunks(&self, frame: &Frame) -> Result<[Bytes; 2], StreamError> {
        let (kind, body) = match frame {
            Frame::Control(b) => (KIND_CONTROL, b.clone()),
            Frame::Data(b) => (KIND_DATA, b.clone()),
        };
        let header = self.codec.encode_header(kind, body.len())?;
        Ok([Bytes::copy_from_slice(&header), body])
    }

    /// `bytes` as data frames split at the cap, `[header, chunk]` each (no copy of the data).
    fn data_chunks(&self, mut bytes: Bytes) -> Result<Vec<[Bytes; 2]>, StreamError> {
        let max = self.codec.max_data_chunk();
        let mut out = Vec::with_capacity(bytes.len().div_ceil(max.max(1)));
        while !bytes.is_empty() {
            let chunk = bytes.split_to(bytes.len().min(max));
            let header = self.codec.encode_header(KIND_DATA, chunk.len())?;
            out.push([Bytes::copy_from_slice(&header), chunk]);
        }
        Ok(out)
    }

    /// Send a control message.
    pub async fn send_message<T: serde::Serialize>(
        &mut self,
        message: &T,
    ) -> Result<(), StreamError> {
        self.send(&Frame::control(message)?).await
    }

    /// Send bulk bytes as data frames, split at the frame cap (no copy).
    pub async fn send_data(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        for [header, chunk] in self.data_chunks(bytes)? {
            self.write(header, chunk).await?;
        }
        Ok(())
    }

    /// Send `frame`, then `data` as data frames, then finish, handing the
    /// transport everything in one write: a short call then leaves in as few
    /// packets as its size allows instead of racing the connection driver
    /// between writes.
    pub async fn send_and_finish(&mut self, frame: &Frame, data: Bytes) -> Result<(), StreamError> {
        let mut chunks = self.frame_chunks(frame)?.to_vec();
        chunks.extend(self.data_chunks(data)?.into_iter().flatten());
        self.inner.answer(false)?;
        match &mut self.inner {
            SendHalf::Quic(s) => {
                s.write_all_chunks(&mut chunks)
                    .await
                    .map_err(StreamError::from_quic_write)?;
            }
            SendHalf::H2(s) => {
                // The last chunk carries END_STREAM in its DATA frame: a peer
                // that stops reading at the last frame then never sees a
                // stream that is still open (h2 counts the resets that would
                // follow against the connection and ends it with
                // ENHANCE_YOUR_CALM after 1024 of them).
                let last = chunks.pop().unwrap_or_default();
                for chunk in chunks {
                    h2_send(s, chunk, false).await?;
                }
                return h2_send(s, last, true).await;
            }
            SendHalf::H2Unanswered(_) => return Err(StreamError::Closed),
        }
        self.finish()
    }

    /// Write bytes as they are, without framing (tests of malformed input).
    pub(crate) async fn write_raw(&mut self, raw: Bytes) -> Result<(), StreamError> {
        self.write(Bytes::new(), raw).await
    }

    async fn write(&mut self, header: Bytes, body: Bytes) -> Result<(), StreamError> {
        self.inner.answer(false)?;
        match &mut self.inner {
            SendHalf::Quic(s) => {
                let mut chunks = [header, body];
                s.write_all_chunks(&mut chunks)
                    .await
                    .map_err(StreamError::from_quic_write)
            }
            SendHalf::H2(s) => {
                h2_send(s, header, false).await?;
                h2_send(s, body, false).await
            }
            SendHalf::H2Unanswered(_) => Err(StreamError::Closed),
        }
    }

    /// End the stream cleanly (the peer reads end-of-stream after the last frame).
    pub fn finish(&mut self) -> Result<(), StreamError> {
        match &mut self.inner {
            SendHalf::Quic(s) => s.finish().map_err(|_| StreamError::Closed),
            SendHalf::H2(s) => match s.send_data(Bytes::new(), true) {
                Ok(()) => Ok(()),
                // The peer answered in full and reset the rest of our input
                // away (RST_STREAM, RFC 9113 §8.1: h2 servers do this when the
                // handler is done before the request is): nothing is left to
                // end, and the response is still there to read.
                Err(_) if h2_peer_reset(s) => Ok(()),
                Err(e) => Err(StreamError::from_h2(e)),
            },
            // nothing written: the headers end the stream
            SendHalf::H2Unanswered(_) => self.inner.answer(true),
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
            SendHalf::H2(_) | SendHalf::H2Unanswered(_) => std::future::pending().await,
        }
    }

    /// Abort the stream with `code`.
    pub fn reset(&mut self, code: StreamCode) {
        match &mut self.inner {
            SendHalf::Quic(s) => {
                let _ = s.reset(code.quic());
            }
            SendHalf::H2(s) => s.send_reset(code.h2()),
            SendHalf::H2Unanswered(r) => {
                if let Some(r) = r {
                    r.send_reset(code.h2());
                }
            }
        }
    }
}

/// Whether the peer has already reset this stream (checked without waiting).
fn h2_peer_reset(s: &mut h2::SendStream<Bytes>) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    matches!(s.poll_reset(&mut cx), std::task::Poll::Ready(Ok(_)))
}

/// Data up to this size is handed to h2 without waiting for send capacity:
/// h2 buffers it (within `max_send_buffer_size`) and sends it as the window
/// allows. Waiting would cost a round through the connection task for every
/// short message, since a new stream gets capacity only once it is open.
const H2_UNRESERVED_MAX: usize = 16 * 1024;

/// Send `data` (empty: nothing) within h2's send capacity; with `end`, the
/// last DATA frame also ends the stream.
async fn h2_send(
    s: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), StreamError> {
    loop {
        if data.is_empty() && !end {
            return Ok(());
        }
        if data.len() <= H2_UNRESERVED_MAX {
            return s.send_data(data, end).map_err(StreamError::from_h2);
        }
        s.reserve_capacity(data.len());
        let cap = match poll_fn(|cx| s.poll_capacity(cx)).await {
            None => return Err(StreamError::Closed),
            Some(Err(e)) => return Err(StreamError::from_h2(e)),
            Some(Ok(n)) => n,
        };
        if cap >= data.len() {
            return s.send_data(data, end).map_err(StreamError::from_h2);
        }
        if cap > 0 {
            let chunk = data.split_to(cap);
            s.send_data(chunk, false).map_err(StreamError::from_h2)?;
        }
    }
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

//! Calls: the control plane's view ([`Call`]: send data, receive data and the
//! final response) and the agent's ([`CallIo`] handed to a [`CallHandler`]).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use protocol::{Frame, Request, Response};

use crate::error::{CallFailure, StreamError};
use crate::link::{or_lost, Link};
use crate::stream::{FrameReceiver, FrameSender, StreamCode};

/// What arrives on a call's stream.
#[derive(Debug)]
pub enum CallEvent {
    /// A chunk of streamed output.
    Data(Bytes),
    /// The final response; nothing follows.
    Response(Response),
}

/// An open call, control-plane side.
#[derive(Debug)]
pub struct Call {
    /// Sends request data (echo bytes, file bytes) after the request.
    pub sender: CallSender,
    /// Receives streamed output and the response.
    pub receiver: CallReceiver,
}

impl Call {
    /// The call over an opened stream; `finished`: the input was already ended.
    fn new(link: Arc<Link>, tx: FrameSender, rx: FrameReceiver, finished: bool) -> Self {
        Call {
            sender: CallSender {
                link: link.clone(),
                tx,
                finished,
            },
            receiver: CallReceiver {
                link,
                rx,
                done: false,
            },
        }
    }

    pub(crate) async fn open(
        link: Arc<Link>,
        path: &str,
        request: &Request,
    ) -> Result<Self, CallFailure> {
        let (mut tx, rx) = or_lost(&link, link.open(path)).await?;
        or_lost(
            &link,
            tx.send(&request.to_frame().map_err(StreamError::Frame)?),
        )
        .await?;
        Ok(Self::new(link, tx, rx, false))
    }

    /// Open a call and send `request`, `data` and the end of input in one
    /// write (see [`FrameSender::send_and_finish`]); the sender is finished.
    pub(crate) async fn open_finished(
        link: Arc<Link>,
        path: &str,
        request: &Request,
        data: Bytes,
    ) -> Result<Self, CallFailure> {
        let (mut tx, rx) = or_lost(&link, link.open(path)).await?;
        let frame = request.to_frame().map_err(StreamError::Frame)?;
        or_lost(&link, tx.send_and_finish(&frame, data)).await?;
        Ok(Self::new(link, tx, rx, true))
    }

    pub(crate) async fn open_raw(
        link: Arc<Link>,
        path: &str,
        raw: Bytes,
    ) -> Result<Self, CallFailure> {
        let (mut tx, rx) = or_lost(&link, link.open(path)).await?;
        or_lost(&link, tx.write_raw(raw)).await?;
        Ok(Self::new(link, tx, rx, false))
    }

    /// Finish sending at once and collect everything the agent streams back
    /// with the response. An error response is `Ok((_, Response::Err(..)))`.
    pub async fn finish_and_collect(mut self) -> Result<(Bytes, Response), CallFailure> {
        self.sender.finish()?;
        self.receiver.collect().await
    }
}

/// Sending half of a [`Call`].
#[derive(Debug)]
pub struct CallSender {
    link: Arc<Link>,
    tx: FrameSender,
    finished: bool,
}

impl CallSender {
    /// Send bulk bytes (split into data frames at the cap).
    pub async fn send_data(&mut self, bytes: Bytes) -> Result<(), CallFailure> {
        Ok(or_lost(&self.link, self.tx.send_data(bytes)).await?)
    }

    /// No more data from this side (again: no-op).
    pub fn finish(&mut self) -> Result<(), CallFailure> {
        if !self.finished {
            self.tx.finish()?;
            self.finished = true;
        }
        Ok(())
    }

    /// Abandon the call.
    pub fn cancel(&mut self) {
        self.tx.reset(StreamCode::Cancelled);
    }
}

/// Receiving half of a [`Call`].
#[derive(Debug)]
pub struct CallReceiver {
    link: Arc<Link>,
    rx: FrameReceiver,
    done: bool,
}

impl CallReceiver {
    /// The next event; `Ok(None)` after the response.
    pub async fn next(&mut self) -> Result<Option<CallEvent>, CallFailure> {
        if self.done {
            return Ok(None);
        }
        match or_lost(&self.link, self.rx.recv()).await? {
            None => Err(CallFailure::Protocol(
                "stream ended without a response".into(),
            )),
            Some(Frame::Data(b)) => Ok(Some(CallEvent::Data(b))),
            Some(f @ Frame::Control(_)) => {
                self.done = true;
                let response = Response::from_frame(&f).map_err(|e| {
                    self.rx.stop(StreamCode::BadFrame);
                    CallFailure::Stream(StreamError::Frame(e))
                })?;
                Ok(Some(CallEvent::Response(response)))
            }
        }
    }

    /// Read to the response, concatenating streamed data.
    pub async fn collect(&mut self) -> Result<(Bytes, Response), CallFailure> {
        let mut data = BytesMut::new();
        loop {
            match self.next().await? {
                Some(CallEvent::Data(b)) => data.extend_from_slice(&b),
                Some(CallEvent::Response(r)) => return Ok((data.freeze(), r)),
                None => return Err(CallFailure::Protocol("response already taken".into())),
            }
        }
    }
}

/// The agent's side of one call, handed to the [`CallHandler`].
#[derive(Debug)]
pub struct CallIo {
    pub(crate) link: Arc<Link>,
    pub(crate) tx: FrameSender,
    pub(crate) rx: FrameReceiver,
    pub(crate) input_done: bool,
}

impl CallIo {
    /// The next chunk of request data; `Ok(None)` when the control plane finished sending.
    pub async fn recv_data(&mut self) -> Result<Option<Bytes>, StreamError> {
        if self.input_done {
            return Ok(None);
        }
        match or_lost(&self.link, self.rx.recv()).await? {
            None => {
                self.input_done = true;
                Ok(None)
            }
            Some(Frame::Data(b)) => Ok(Some(b)),
            Some(Frame::Control(_)) => {
                Err(StreamError::Frame(protocol::FrameError::UnexpectedKind {
                    got: "control",
                    expected: "data",
                }))
            }
        }
    }

    /// Stream a chunk of output to the control plane (before the response).
    pub async fn send_data(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        or_lost(&self.link, self.tx.send_data(bytes)).await
    }
}

/// Serves calls on the agent. `ping`, unknown calls and malformed requests
/// are answered by the tunnel itself; everything else comes here.
#[async_trait::async_trait]
pub trait CallHandler: Send + Sync + 'static {
    /// Handle one call; the returned response is sent after any data the
    /// handler streamed with [`CallIo::send_data`].
    async fn handle(&self, request: Request, io: &mut CallIo) -> Response;
}

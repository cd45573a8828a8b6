//! `SubscribeAudit{after_seq}` on the agent channel: the connection becomes
//! a one-way stream of [`FromBridge::AuditRecord`]s. First every use the
//! [`AuditJournal`] still holds above `after_seq`, then each new one as it
//! happens, until the agent hangs up or the bridge shuts down (the channel
//! aborts its connections). A subscriber too slow for the live feed catches
//! up from the journal, so it sees neither a gap nor a duplicate unless the
//! journal's bound dropped uses (logged, with how many).

use std::sync::Arc;

use bytes::BytesMut;
use protocol::bridge::{CredentialUse, FromBridge};
use protocol::frame::{Frame, FrameCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::broadcast::error::RecvError;

use crate::agent_channel::{ChannelError, MAX_FRAME_BYTES};
use crate::audit_journal::AuditJournal;

struct Writer {
    stream: UnixStream,
    codec: FrameCodec,
    last_sent: u64,
}

impl Writer {
    async fn send(&mut self, u: CredentialUse) -> Result<(), ChannelError> {
        if u.seq <= self.last_sent {
            return Ok(());
        }
        let seq = u.seq;
        let bytes = self
            .codec
            .encode_to_bytes(&Frame::control(&FromBridge::AuditRecord(u))?)?;
        self.stream.write_all(&bytes).await?;
        self.last_sent = seq;
        Ok(())
    }
}

/// Serve one `SubscribeAudit` connection (after its hello) until the agent
/// hangs up. Bytes the agent sends are ignored; end of stream ends it.
pub async fn serve(
    stream: UnixStream,
    after_seq: u64,
    journal: Arc<AuditJournal>,
) -> Result<(), ChannelError> {
    let sub = journal.subscribe(after_seq);
    if sub.dropped > 0 {
        tracing::warn!(
            after_seq,
            dropped = sub.dropped,
            "audit subscriber asked for credential uses the journal's bound already dropped"
        );
    }
    if after_seq > journal.last_seq() {
        tracing::warn!(
            after_seq,
            last_seq = journal.last_seq(),
            "audit subscriber has recorded more uses than this bridge holds (journal reset?)"
        );
    }
    tracing::info!(
        after_seq,
        backlog = sub.backlog.len(),
        "audit subscriber connected"
    );
    let mut w = Writer {
        stream,
        codec: FrameCodec::new(MAX_FRAME_BYTES),
        last_sent: after_seq,
    };
    for u in sub.backlog {
        w.send(u).await?;
    }
    let mut live = sub.live;
    let mut scratch = BytesMut::with_capacity(256);
    loop {
        tokio::select! {
            next = live.recv() => match next {
                Ok(u) => w.send(u).await?,
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(missed, last_sent = w.last_sent, "audit subscriber lagged; catching up from the journal");
                    let held = journal.held_after(w.last_sent);
                    if let Some(first) = held.first() {
                        let gone = first.seq.saturating_sub(w.last_sent + 1);
                        if gone > 0 {
                            tracing::warn!(dropped = gone, "audit subscriber lagged past the journal's bound");
                        }
                    }
                    for u in held {
                        w.send(u).await?;
                    }
                }
                Err(RecvError::Closed) => break,
            },
            read = w.stream.read_buf(&mut scratch) => {
                scratch.clear();
                if read? == 0 {
                    break;
                }
            }
        }
    }
    tracing::info!(last_sent = w.last_sent, "audit subscriber disconnected");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit_journal::journal_path;
    use crate::egress::{AuditEvent, AuditOutcome};

    fn event(path: &str) -> AuditEvent {
        AuditEvent {
            credential_id: Some("vcrd_1".into()),
            vault_id: None,
            host: "h.example".into(),
            method: "POST".into(),
            path: path.into(),
            sandbox_id: "sbx_1".into(),
            session_id: "sesn_1".into(),
            outcome: AuditOutcome::PlaceholderRefused,
        }
    }

    async fn next(s: &mut UnixStream, buf: &mut BytesMut) -> Option<CredentialUse> {
        let codec = FrameCodec::new(MAX_FRAME_BYTES);
        loop {
            if let Some(f) = codec.decode(buf).unwrap() {
                match FromBridge::decode(&f).unwrap() {
                    FromBridge::AuditRecord(u) => return Some(u),
                    other => panic!("unexpected {other:?}"),
                }
            }
            if s.read_buf(buf).await.unwrap() == 0 {
                return None;
            }
        }
    }

    #[tokio::test]
    async fn replays_after_seq_streams_live_and_ends_on_hangup() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(AuditJournal::open(&journal_path(dir.path()), 100).unwrap());
        for p in ["/1", "/2", "/3"] {
            journal.append(event(p));
        }
        let (bridge_end, mut agent_end) = UnixStream::pair().unwrap();
        let task = tokio::spawn(serve(bridge_end, 1, journal.clone()));
        let mut buf = BytesMut::new();
        assert_eq!(next(&mut agent_end, &mut buf).await.unwrap().seq, 2);
        assert_eq!(next(&mut agent_end, &mut buf).await.unwrap().seq, 3);
        journal.append(event("/4"));
        let live = next(&mut agent_end, &mut buf).await.unwrap();
        assert_eq!((live.seq, live.path.as_str()), (4, "/4"));
        assert_eq!(
            live.outcome,
            protocol::bridge::UseOutcome::PlaceholderRefused
        );
        drop(agent_end);
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("serve ends when the agent hangs up")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_lagging_subscriber_catches_up_from_the_journal_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(AuditJournal::open(&journal_path(dir.path()), 5000).unwrap());
        let (bridge_end, mut agent_end) = UnixStream::pair().unwrap();
        let task = tokio::spawn(serve(bridge_end, 0, journal.clone()));
        let mut buf = BytesMut::new();
        journal.append(event("/first"));
        // Read once: the subscriber is on the live feed now.
        assert_eq!(next(&mut agent_end, &mut buf).await.unwrap().seq, 1);
        // More than the broadcast holds, without yielding to the subscriber.
        for i in 0..3000 {
            journal.append(event(&format!("/{i}")));
        }
        for want in 2..=3001u64 {
            let u = next(&mut agent_end, &mut buf).await.unwrap();
            assert_eq!(u.seq, want);
        }
        drop(agent_end);
        task.await.unwrap().unwrap();
    }
}

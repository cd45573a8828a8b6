//! LISTEN for appends made by any replica and wake the local tails.
//!
//! One dedicated connection per store LISTENs on the store's channel; every
//! write that changes a session's events sends `pg_notify(channel,
//! session_id)` right after it commits. Notifications
//! only wake tails, which then read the table, so a lost notification can
//! delay but never corrupt a tail. When the connection drops, the listener
//! reconnects with backoff and then wakes every tail, since notifications sent
//! meanwhile are gone.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{AsyncMessage, Config, NoTls};

use crate::error::{Result, StoreError};
use crate::tail::Hub;

/// Runs until aborted. `ready` is answered after the first LISTEN succeeded
/// (or failed).
pub(crate) async fn run(
    config: Config,
    channel: String,
    hub: Arc<Hub>,
    ready: oneshot::Sender<Result<()>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&config, &channel, &hub, &mut ready).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                tracing::warn!(%e, channel, "session store listener lost its connection; reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    config: &Config,
    channel: &str,
    hub: &Hub,
    ready: &mut Option<oneshot::Sender<Result<()>>>,
) -> Result<()> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| {
        StoreError::unavailable(format!("connecting the listener: {e}"), Some(Box::new(e)))
    })?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%e, "listener connection error");
                    return;
                }
            }
        }
    });
    let listen = client
        .batch_execute(&format!("LISTEN {}", quote_ident(channel)))
        .await
        .map_err(|e| StoreError::unavailable(format!("LISTEN {channel}: {e}"), Some(Box::new(e))));
    if let Err(e) = listen {
        driver.abort();
        return Err(e);
    }
    match ready.take() {
        Some(tx) => {
            let _ = tx.send(Ok(()));
        }
        // A reconnect: whatever was notified while we were away is lost.
        None => hub.notify_all(),
    }
    while let Some(session_id) = rx.recv().await {
        hub.notify(&session_id);
    }
    driver.abort();
    drop(client);
    Err(StoreError::unavailable(
        "the listener connection closed",
        None,
    ))
}

/// Quotes an identifier for SQL (`"` doubled).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

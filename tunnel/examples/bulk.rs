//! Quick bulk/latency probe of the tunnel in one process (both sides, test
//! PKI): `cargo run --release -p tunnel --example bulk -- [quic|tcp] [MiB]`.
//! The real benchmark is `bench-tunnel` (tests crate); this is for tuning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::RejectCode;
use protocol::{ErrorCode, Reply, Request, Response};
use tunnel::call::{CallHandler, CallIo};
use tunnel::client::{self, ClientSettings};
use tunnel::{Listener, ServerSettings, TransportMode};

struct Echo;

#[async_trait::async_trait]
impl CallHandler for Echo {
    async fn handle(&self, request: Request, io: &mut CallIo) -> Response {
        match request {
            Request::Echo => client::serve_echo(io).await,
            Request::Ping => Response::Ok(Reply::Pong(Default::default())),
            _ => Response::error(ErrorCode::UnsupportedCall, "no"),
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = if args.get(1).map(String::as_str) == Some("tcp") {
        TransportMode::TcpOnly
    } else {
        TransportMode::QuicOnly
    };
    let mib: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let pki = common::TestPki::new();
    let settings = ServerSettings::default();
    let mut listener = Listener::bind(settings.clone(), pki.server_config())
        .await
        .unwrap();
    let addr = listener.local_addr();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(p) = listener.accept().await {
            let Some(v) = p.negotiate() else {
                p.reject(RejectCode::UnsupportedVersion, "x").await;
                continue;
            };
            let c = p.accept(v, &settings, None, "a".into()).await.unwrap();
            let _ = tx.send(c);
        }
    });
    let mut s = ClientSettings::new(addr.to_string(), "localhost", "a");
    s.mode = mode;
    let _client = client::spawn(s, pki.client_config("a"), Arc::new(Echo));
    let conn = rx.recv().await.unwrap();
    for _ in 0..3 {
        let payload = Bytes::from(vec![1u8; mib << 20]);
        let t = Instant::now();
        let call = conn.call(&Request::Echo).await.unwrap();
        let tunnel::Call {
            mut sender,
            mut receiver,
        } = call.call;
        let send = tokio::spawn(async move {
            sender.send_data(payload).await.unwrap();
            sender.finish().unwrap();
            sender
        });
        let (back, _) = receiver.collect().await.unwrap();
        let _ = send.await;
        assert_eq!(back.len(), mib << 20);
        let el = t.elapsed();
        println!(
            "{mode:?}: {mib} MiB echoed in {:?}: {:.1} MB/s",
            el,
            mib as f64 / el.as_secs_f64()
        );
    }
    let t = Instant::now();
    for _ in 0..1000 {
        conn.call(&Request::Ping)
            .await
            .unwrap()
            .finish_and_collect()
            .await
            .unwrap();
    }
    println!("ping rtt avg {:?}", t.elapsed() / 1000);
    let _ = Duration::ZERO;
}

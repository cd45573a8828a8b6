//! A sandbox provisioned with the agent's `[bridge]` set, against a real
//! Unix-socket peer speaking the agent channel (`protocol::bridge` frames):
//! the egress dir and the CA are mounted read-only, the network stays
//! `none`, every tool call sees the proxy and CA variables, `open_egress`
//! carries the session and its repositories, `close_egress` follows destroy,
//! and a bridge that is down fails provision naming the socket (fail closed)
//! without leaving a container behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_tests::sandbox::{agent_containers, docker_inspect, TestAgent, Tools};
use bytes::BytesMut;
use protocol::bridge::{EgressRepository, FromBridge, ToBridge};
use protocol::frame::{Frame, FrameCodec};
use protocol::sandbox::{DestroyRequest, ProvisionRequest};
use sandbox_agent::sandbox::config::BridgeSettings;
use sandbox_agent::sandbox::{SandboxError, SandboxService};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

type Seen = Arc<Mutex<Vec<ToBridge>>>;

/// Serve the agent channel: accept hello, answer open/close, record requests.
fn serve(listener: UnixListener, seen: Seen) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(connection(stream, seen));
        }
    })
}

async fn connection(mut s: UnixStream, seen: Seen) {
    let codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut hello = None;
    loop {
        let frame = loop {
            if let Some(f) = codec.decode(&mut buf).unwrap() {
                break f;
            }
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
        };
        let req = ToBridge::decode(&frame).unwrap();
        match &req {
            // The agent's audit subscription: this peer has no uses to
            // stream; hold the connection open and leave it out of `seen`.
            ToBridge::SubscribeAudit { .. } => {
                while s.read_buf(&mut buf).await.unwrap_or(0) != 0 {}
                return;
            }
            ToBridge::Hello { .. } => hello = Some(req.clone()),
            _ => {
                let mut seen = seen.lock().unwrap();
                seen.extend(hello.take());
                seen.push(req.clone());
            }
        }
        let answer = match req {
            ToBridge::Hello { .. } => FromBridge::HelloAccepted {
                version: 1,
                software_version: "test-peer".into(),
            },
            ToBridge::OpenEgress { sandbox_id, .. } => FromBridge::EgressOpened {
                socket_path: format!("/peer/{sandbox_id}/egress.sock"),
                env: Default::default(),
            },
            ToBridge::CloseEgress { .. } => FromBridge::EgressClosed { existed: true },
            _ => FromBridge::error(
                protocol::bridge::BridgeErrorCode::UnsupportedRequest,
                "not in this peer",
            ),
        };
        let bytes = codec
            .encode_to_bytes(&Frame::control(&answer).unwrap())
            .unwrap();
        s.write_all(&bytes).await.unwrap();
    }
}

fn bridge_settings(dir: &Path) -> BridgeSettings {
    let ca = dir.join("ca.crt");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\ntest-ca\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    let egress = dir.join("egress");
    std::fs::create_dir(&egress).unwrap();
    std::fs::set_permissions(&egress, std::fs::Permissions::from_mode(0o711)).unwrap();
    BridgeSettings {
        socket_path: dir.join("agent.sock"),
        egress_dir: egress,
        ca_cert_file: ca,
        call_timeout: Duration::from_secs(5),
    }
}

async fn start(agent: &TestAgent, bridge: &BridgeSettings) -> SandboxService {
    let mut cfg = agent.config();
    cfg.sandbox.bridge = Some(bridge.clone());
    SandboxService::start(cfg).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_sandbox_gets_its_dir_the_ca_and_the_proxy_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let bridge = bridge_settings(tmp.path());
    let seen: Seen = Arc::default();
    let peer = serve(
        UnixListener::bind(&bridge.socket_path).unwrap(),
        seen.clone(),
    );
    let agent = TestAgent::new();
    let svc = start(&agent, &bridge).await;

    let p = svc
        .provision(ProvisionRequest {
            session_id: Some("sesn_bridge".into()),
            resources: vec![
                json!({"type": "github_repository", "url": "https://github.com/acme/app"}),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let sbx = p.sandbox_id;

    // The agent created the sandbox's dir before the container (0711).
    let dir = bridge.egress_dir.join(&sbx);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o711, "{}", dir.display());

    // open_egress after a hello, with the session and its repository.
    {
        let seen = seen.lock().unwrap();
        assert!(matches!(seen[0], ToBridge::Hello { .. }), "{seen:?}");
        assert_eq!(
            seen[1],
            ToBridge::OpenEgress {
                sandbox_id: sbx.clone(),
                session_id: "sesn_bridge".into(),
                allowed_hosts: vec![],
                repositories: vec![EgressRepository {
                    url: "https://github.com/acme/app".into(),
                    resource_id: None,
                }],
                credentials: vec![],
                egress_hosts: None,
            }
        );
    }

    // Mounts (read-only), network none, executor told the socket.
    let inspect = docker_inspect(&sbx);
    let mounts = inspect["Mounts"].as_array().unwrap();
    let mount = |dest: &str| {
        mounts
            .iter()
            .find(|m| m["Destination"] == dest)
            .unwrap_or_else(|| panic!("no mount at {dest}: {mounts:?}"))
            .clone()
    };
    let run = mount("/run/airlock");
    assert_eq!(run["Source"], dir.display().to_string());
    assert_eq!(run["RW"], false);
    let ca = mount("/etc/airlock/egress-ca.pem");
    assert_eq!(ca["Source"], bridge.ca_cert_file.display().to_string());
    assert_eq!(ca["RW"], false);
    assert_eq!(inspect["HostConfig"]["NetworkMode"], "none");
    let args = inspect["Args"].to_string();
    assert!(args.contains("/run/airlock/egress.sock"), "{args}");

    // Every tool call sees the proxy and the CA; the CA is readable, the dir is not writable.
    let tools = Tools::new(&svc, &sbx);
    let out = tools
        .sh("echo $HTTPS_PROXY $https_proxy $SSL_CERT_FILE $GIT_SSL_CAINFO; head -1 $SSL_CERT_FILE; touch /run/airlock/x 2>/dev/null || echo read-only")
        .await;
    assert_eq!(
        out,
        "http://127.0.0.1:3128 http://127.0.0.1:3128 /etc/airlock/egress-ca.pem /etc/airlock/egress-ca.pem\n-----BEGIN CERTIFICATE-----\nread-only"
    );

    // Destroy: close_egress, and the dir is gone.
    svc.destroy(DestroyRequest {
        sandbox_id: sbx.clone(),
    })
    .await
    .unwrap();
    assert!(seen.lock().unwrap().contains(&ToBridge::CloseEgress {
        sandbox_id: sbx.clone()
    }));
    assert!(!dir.exists(), "{} still there", dir.display());
    svc.shutdown(true).await;
    peer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_that_is_down_fails_provision_naming_the_socket_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let bridge = bridge_settings(tmp.path());
    // Nobody listens on bridge.socket_path.
    let agent = TestAgent::new();
    let svc = start(&agent, &bridge).await;
    let started = std::time::Instant::now();
    let e = svc
        .provision(ProvisionRequest {
            session_id: Some("sesn_down".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, SandboxError::Bridge { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains(&bridge.socket_path.display().to_string()),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        agent_containers(&agent.agent_id).is_empty(),
        "a container was left behind"
    );
    assert_eq!(
        std::fs::read_dir(&bridge.egress_dir).unwrap().count(),
        0,
        "an egress dir was left behind"
    );
    svc.shutdown(true).await;
}

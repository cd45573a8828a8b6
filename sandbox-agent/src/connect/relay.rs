//! The control plane's relay calls (`put_credential`, `forget_credential`,
//! `put_session_token`, `forget_session_token`), forwarded to the local
//! vault-bridge and answered with `Reply::Relay { call, ack }`.
//!
//! The secrets travel inside `WireSecret`s whose `Debug` is redacted; this
//! module logs ids and outcomes only and never exposes a value.

use protocol::call::{CallError, ErrorCode, Reply, Request, Response};
use protocol::relay::RelayAck;

use crate::sandbox::bridge::{BridgeClient, BridgeError};

/// Whether `request` is one of the relay calls.
pub fn is_relay(request: &Request) -> bool {
    matches!(
        request,
        Request::PutCredential(_)
            | Request::ForgetCredential(_)
            | Request::PutSessionToken(_)
            | Request::ForgetSessionToken(_)
    )
}

/// Forward a relay call to the bridge (`None`: this agent has no `[bridge]`).
pub async fn handle(bridge: Option<&BridgeClient>, request: Request) -> Response {
    let call = request.name().to_owned();
    let Some(bridge) = bridge else {
        return Response::Err(CallError::new(
            ErrorCode::Unavailable,
            "this agent has no [bridge]",
        ));
    };
    let result = match request {
        Request::PutCredential(p) => {
            tracing::info!(call = %call, vault_id = %p.vault_id, credential_id = %p.credential_id, "relaying to the vault-bridge");
            bridge.put_credential(p).await
        }
        Request::ForgetCredential(f) => {
            tracing::info!(call = %call, vault_id = %f.vault_id, credential_id = %f.credential_id, "relaying to the vault-bridge");
            bridge.forget_credential(f).await
        }
        Request::PutSessionToken(p) => {
            tracing::info!(call = %call, session_id = %p.session_id, resource_id = %p.resource_id, "relaying to the vault-bridge");
            bridge.put_session_token(p).await
        }
        Request::ForgetSessionToken(f) => {
            tracing::info!(call = %call, session_id = %f.session_id, "relaying to the vault-bridge");
            bridge.forget_session_token(f).await
        }
        other => {
            return Response::error(
                ErrorCode::UnsupportedCall,
                format!("call `{}` is not a relay call", other.name()),
            )
        }
    };
    match result {
        Ok(held) => Response::Ok(Reply::Relay {
            call,
            ack: RelayAck { held },
        }),
        Err(error) => {
            tracing::warn!(call = %call, %error, "vault-bridge relay failed");
            Response::Err(CallError::new(to_code(&error), error.to_string()))
        }
    }
}

/// A bridge that cannot be reached is `unavailable` (another agent's bridge
/// may hold it); a refusal is refused as the bridge found the
/// request invalid (`bad_request`), `unavailable` otherwise (its backend is down).
fn to_code(error: &BridgeError) -> ErrorCode {
    match error {
        BridgeError::Refused {
            code: protocol::bridge::BridgeErrorCode::InvalidRelay,
            ..
        } => ErrorCode::BadRequest,
        _ => ErrorCode::Unavailable,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sandbox::config::BridgeSettings;
    use protocol::relay::{PutCredential, WireSecret};
    use std::time::Duration;

    fn put() -> Request {
        Request::PutCredential(PutCredential {
            vault_id: "vlt_1".into(),
            credential_id: "vcrd_1".into(),
            fields: [("token".to_owned(), WireSecret::new("canary-unit-42"))].into(),
        })
    }

    fn err(r: Response) -> CallError {
        match r {
            Response::Err(e) => e,
            other => panic!("want an error: {other:?}"),
        }
    }

    #[tokio::test]
    async fn no_bridge_section_is_unavailable() {
        let e = err(handle(None, put()).await);
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert_eq!(e.message, "this agent has no [bridge]");
    }

    #[tokio::test]
    async fn a_bridge_that_is_down_is_unavailable_naming_the_socket_and_no_value() {
        let dir = tempfile::tempdir().unwrap();
        let client = BridgeClient::new(&BridgeSettings {
            socket_path: dir.path().join("agent.sock"),
            egress_dir: dir.path().join("egress"),
            ca_cert_file: dir.path().join("ca.pem"),
            call_timeout: Duration::from_secs(2),
        });
        let e = err(handle(Some(&client), put()).await);
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.message.contains("agent.sock"), "{}", e.message);
        assert!(!e.message.contains("canary"), "{}", e.message);
        assert!(!format!("{:?}", put()).contains("canary"));
    }
}

//! Secret material on its way from the control plane's API to the
//! vault-bridge(s) of an environment, and the metadata a sandbox's egress
//! policy is built from.
//!
//! The same four messages travel twice: as tunnel calls (control plane →
//! sandbox-agent, [`crate::Request::PutCredential`], ...) and as agent-channel
//! requests (sandbox-agent → its bridge, [`crate::bridge::ToBridge`]). The
//! agent forwards them and keeps nothing. Values are [`WireSecret`]s, whose
//! `Debug` never shows them; nothing that logs a request can leak one.
//!
//! [`EgressCredential`] is metadata only (ids, hosts, where a placeholder is
//! swapped): the control plane resolves a session's `vault_ids` into these,
//! the agent passes them to its bridge when it opens a sandbox's egress.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret value on the wire. Serialized as a plain JSON string; `Debug`
/// is redacted; the bytes are overwritten when it is dropped (best effort:
/// copies made while parsing the frame are not).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WireSecret(String);

impl WireSecret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for whoever stores or injects it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WireSecret(<redacted>)")
    }
}

impl Drop for WireSecret {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&bytes);
    }
}

/// Store the secret fields of a vault credential (`token`, `access_token`,
/// `refresh_token`, `client_secret`, `secret_value`). Replaces what the
/// bridge held for that credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutCredential {
    /// `vlt_...`.
    pub vault_id: String,
    /// `vcrd_...`.
    pub credential_id: String,
    /// Field name → value.
    pub fields: BTreeMap<String, WireSecret>,
}

/// Why a credential is forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgetReason {
    /// The credential was archived: it must not be used again.
    Archived,
    /// The credential was deleted: it must not be used again.
    Deleted,
    /// Storing its metadata failed after the secret was relayed: drop the
    /// relayed secret only.
    RolledBack,
}

/// Stop using a vault credential: drop a relayed secret, and (archived or
/// deleted) refuse the credential from now on even where its secret lives
/// in the customer's own Vault (`airlock.kv_path`, never deleted by Airlock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetCredential {
    /// `vlt_...`.
    pub vault_id: String,
    /// `vcrd_...`.
    pub credential_id: String,
    /// Why.
    pub reason: ForgetReason,
}

/// Hold the Git token of one `github_repository` session resource, for that
/// session and resource only (added on requests to the repository, never
/// stored by the control plane).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutSessionToken {
    /// `sesn_...`.
    pub session_id: String,
    /// `sesrsc_...`.
    pub resource_id: String,
    /// The repository's HTTPS URL (no userinfo).
    pub url: String,
    /// The token.
    pub token: WireSecret,
}

/// Drop a session's repository token(s). Without a resource it says the
/// session ended (archived or deleted): the bridge drops every token of the
/// session and from then on refuses its sandboxes' egress (restarts
/// included), so none of its credentials is used for it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetSessionToken {
    /// `sesn_...`.
    pub session_id: String,
    /// One resource; `None`: the session ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
}

/// Answer to the four relay messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RelayAck {
    /// For a put: the bridge holds it. For a forget: there was something to drop.
    pub held: bool,
}

/// A vault credential a session may use, as its sandbox's egress policy
/// needs it: ids and where it applies. Never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressCredential {
    /// `vlt_...`.
    pub vault_id: String,
    /// `vcrd_...`.
    pub credential_id: String,
    /// Where the customer's Vault holds the secret (`airlock.kv_path`), when
    /// it was written there rather than relayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_path: Option<String>,
    /// How it is used.
    pub binding: CredentialBinding,
    /// How a `static_bearer` secret goes on the wire: `Authorization:
    /// Bearer` (the default, and what a bridge that predates this field
    /// does) or HTTP Basic for Git servers (credential metadata
    /// `airlock.http_auth = "basic"`, `airlock.basic_username`).
    #[serde(default, skip_serializing_if = "HttpAuth::is_bearer")]
    pub http_auth: HttpAuth,
}

/// Username of the HTTP Basic form when the credential's metadata names
/// none (GitHub's convention; Gitea and GitLab accept any name with a token).
pub const DEFAULT_BASIC_USERNAME: &str = "x-access-token";

/// The HTTP authentication scheme a bearer-style secret is sent with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "scheme", rename_all = "snake_case")]
#[non_exhaustive]
pub enum HttpAuth {
    /// `Authorization: Bearer <secret>`.
    #[default]
    Bearer,
    /// `Authorization: Basic base64(<username>:<secret>)`: what Git servers
    /// over HTTPS take (GitHub `x-access-token`, GitLab `oauth2`, Gitea any).
    Basic {
        /// The user-id part (no `:`).
        username: String,
    },
    /// A scheme this build does not know: the credential is not bound
    /// (fails closed).
    #[serde(other)]
    Unknown,
}

impl HttpAuth {
    /// Whether this is the default, `Bearer`.
    pub fn is_bearer(&self) -> bool {
        matches!(self, Self::Bearer)
    }
}

/// How a credential is used on the way out, by its `auth.type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CredentialBinding {
    /// `static_bearer`: `Authorization: Bearer <token>` on requests to the
    /// MCP server URL's host.
    StaticBearer {
        /// The credential's `mcp_server_url`.
        mcp_server_url: String,
    },
    /// `mcp_oauth`: `Authorization: Bearer <access_token>` on requests to
    /// the MCP server URL's host.
    McpOauth {
        /// The credential's `mcp_server_url`.
        mcp_server_url: String,
        /// When the access token given to the API expires (RFC 3339), if
        /// known. The bridge keeps its own expiry after it refreshes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
        /// How to refresh it; `None`: it cannot be refreshed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refresh: Option<OauthRefresh>,
    },
    /// `environment_variable`: the sandbox's `secret_name` holds a
    /// placeholder, swapped for `secret_value` on the way out.
    EnvironmentVariable {
        /// The variable's name in the sandbox.
        secret_name: String,
        /// Hosts the placeholder may be swapped on.
        networking: Networking,
        /// Where in a request it is swapped.
        injection_location: InjectionLocation,
    },
    /// A binding this build does not know (ignored, logged).
    #[serde(other)]
    Unknown,
}

/// The refresh settings of an `mcp_oauth` credential (the SDK's `refresh`
/// without its secrets: `refresh_token` and `client_secret` are relayed
/// fields of the credential, or live at its `kv_path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OauthRefresh {
    /// The OAuth client.
    pub client_id: String,
    /// The authorization server's token endpoint.
    pub token_endpoint: String,
    /// How the client authenticates there.
    pub token_endpoint_auth: TokenEndpointAuth,
    /// `scope` to ask for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `resource` (RFC 8707) to ask for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// The SDK's `token_endpoint_auth`, without `client_secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TokenEndpointAuth {
    /// A public client: `client_id` in the form body.
    None,
    /// HTTP Basic with `client_id:client_secret`.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// The SDK's `networking` of an `environment_variable` credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Networking {
    /// Any host the session may reach.
    Unrestricted,
    /// Only these (`git.example.com`, `10.0.0.7`, `*.example.com`).
    Limited {
        /// The hosts.
        allowed_hosts: Vec<String>,
    },
}

/// The SDK's `injection_location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectionLocation {
    /// In request header values.
    #[serde(default)]
    pub header: bool,
    /// In request bodies.
    #[serde(default)]
    pub body: bool,
}

impl Default for InjectionLocation {
    /// The SDK's default: headers and bodies.
    fn default() -> Self {
        Self {
            header: true,
            body: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_serialize_plainly_and_never_debug() {
        let p = PutSessionToken {
            session_id: "sesn_1".into(),
            resource_id: "sesrsc_1".into(),
            url: "https://git.example.com/a/b.git".into(),
            token: WireSecret::new("canary-xyz"),
        };
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""token":"canary-xyz""#), "{json}");
        assert!(!format!("{p:?}").contains("canary"));
        let back: PutSessionToken = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        let mut fields = BTreeMap::new();
        fields.insert("token".to_owned(), WireSecret::new("canary-abc"));
        let c = PutCredential {
            vault_id: "vlt_1".into(),
            credential_id: "vcrd_1".into(),
            fields,
        };
        assert!(!format!("{c:?}").contains("canary"));
    }

    #[test]
    fn bindings_have_the_sdk_shapes() {
        let e: EgressCredential = serde_json::from_value(serde_json::json!({
            "vault_id": "vlt_1", "credential_id": "vcrd_1",
            "binding": {"type": "environment_variable", "secret_name": "API_KEY",
                        "networking": {"type": "limited", "allowed_hosts": ["api.example.com"]},
                        "injection_location": {"header": true, "body": false}}
        }))
        .unwrap();
        assert_eq!(
            e.binding,
            CredentialBinding::EnvironmentVariable {
                secret_name: "API_KEY".into(),
                networking: Networking::Limited {
                    allowed_hosts: vec!["api.example.com".into()]
                },
                injection_location: InjectionLocation {
                    header: true,
                    body: false
                },
            }
        );
        let o: CredentialBinding = serde_json::from_value(serde_json::json!({
            "type": "mcp_oauth", "mcp_server_url": "https://mcp.example.com/mcp",
            "expires_at": "2026-12-06T18:00:00Z",
            "refresh": {"client_id": "c1", "token_endpoint": "https://as.example.com/token",
                        "token_endpoint_auth": {"type": "client_secret_post"},
                        "scope": "read", "resource": null}
        }))
        .unwrap();
        let CredentialBinding::McpOauth {
            refresh: Some(r), ..
        } = o
        else {
            panic!("{o:?}")
        };
        assert_eq!(r.token_endpoint_auth, TokenEndpointAuth::ClientSecretPost);
        assert_eq!((r.scope.as_deref(), r.resource), (Some("read"), None));
        let u: CredentialBinding = serde_json::from_str(r#"{"type":"ssh_key","x":1}"#).unwrap();
        assert_eq!(u, CredentialBinding::Unknown);
        assert_eq!(e.http_auth, HttpAuth::Bearer, "absent: bearer");
        let b: EgressCredential = serde_json::from_value(serde_json::json!({
            "vault_id": "vlt_1", "credential_id": "vcrd_2",
            "binding": {"type": "static_bearer", "mcp_server_url": "https://git.example.com/a/b.git"},
            "http_auth": {"scheme": "basic", "username": "oauth2"}
        }))
        .unwrap();
        assert_eq!(
            b.http_auth,
            HttpAuth::Basic {
                username: "oauth2".into()
            }
        );
        let json = serde_json::to_value(&b).unwrap();
        assert_eq!(json["http_auth"]["scheme"], "basic");
        assert!(serde_json::to_value(&e).unwrap().get("http_auth").is_none());
        let later: HttpAuth = serde_json::from_str(r#"{"scheme":"digest"}"#).unwrap();
        assert_eq!(later, HttpAuth::Unknown);
        let f: ForgetSessionToken = serde_json::from_str(r#"{"session_id":"sesn_1"}"#).unwrap();
        assert_eq!(f.resource_id, None);
    }
}

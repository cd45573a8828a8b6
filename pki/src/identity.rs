//! Who an agent is: an agent id (`agt_<hex>`) assigned at enrollment, bound to
//! the environment id its join token was created for. Both are carried in the
//! agent's client certificate: the subject CN is the agent id and a SAN URI
//! `spiffe://airlock/env/<environment>/agent/<agent>` carries both.

use std::fmt;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::util::from_unix_seconds;

/// Trust domain used in the SAN URI.
pub const TRUST_DOMAIN: &str = "airlock";

/// An identity string that is not acceptable, or a certificate without one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// An agent id that is not `agt_` followed by 1 to 64 lowercase letters or digits.
    #[error("invalid agent id `{0}`: expected `agt_` followed by lowercase letters or digits")]
    BadAgentId(String),
    /// An environment id that is empty, too long or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid environment id `{0}`: expected 1 to 128 characters of [A-Za-z0-9_.-]")]
    BadEnvironmentId(String),
    /// The certificate is not valid DER X.509.
    #[error("certificate is not valid x509: {0}")]
    BadCertificate(String),
    /// The certificate has no Airlock SAN URI (it was not issued to an agent).
    #[error("certificate carries no airlock agent identity (san uri spiffe://airlock/env/<env>/agent/<id>)")]
    NoAgentIdentity,
}

/// An agent id: `agt_` followed by lowercase hex (as generated) or digits/letters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentId(String);

impl AgentId {
    /// A fresh random id: `agt_` and 20 hex digits (80 bits).
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut b = [0u8; 10];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Self(format!("agt_{}", hex::encode(b)))
    }

    /// Validate a string as an agent id.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let ok = s.strip_prefix("agt_").is_some_and(|rest| {
            !rest.is_empty()
                && rest.len() <= 64
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdentityError::BadAgentId(s.to_owned()))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AgentId {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<AgentId> for String {
    fn from(a: AgentId) -> String {
        a.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// An environment id, chosen by the operator when creating a join token.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnvironmentId(String);

impl EnvironmentId {
    /// Validate a string as an environment id.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdentityError::BadEnvironmentId(s.to_owned()))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EnvironmentId {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<EnvironmentId> for String {
    fn from(e: EnvironmentId) -> String {
        e.0
    }
}

impl fmt::Display for EnvironmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EnvironmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The SAN URI that names an agent.
pub fn spiffe_uri(environment: &EnvironmentId, agent: &AgentId) -> String {
    format!("spiffe://{TRUST_DOMAIN}/env/{environment}/agent/{agent}")
}

fn parse_spiffe_uri(uri: &str) -> Option<(EnvironmentId, AgentId)> {
    let rest = uri.strip_prefix("spiffe://")?.strip_prefix(TRUST_DOMAIN)?;
    let rest = rest.strip_prefix("/env/")?;
    let (env, agent) = rest.split_once("/agent/")?;
    Some((EnvironmentId::parse(env).ok()?, AgentId::parse(agent).ok()?))
}

/// What a certificate says about the agent holding it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerIdentity {
    /// The agent id.
    pub agent_id: AgentId,
    /// The environment the agent was enrolled into.
    pub environment_id: EnvironmentId,
    /// Start of the certificate's validity (backdated by the issuer's
    /// clock-skew allowance, see [`crate::ca::CLOCK_SKEW_ALLOWANCE`]).
    #[serde(with = "crate::identity::unix_time")]
    pub not_before: SystemTime,
    /// When the certificate expires.
    #[serde(with = "crate::identity::unix_time")]
    pub not_after: SystemTime,
    /// Certificate serial number, lowercase hex.
    pub serial: String,
}

/// Read the agent identity from a certificate.
///
/// This only parses: call it on the end-entity certificate of a peer that
/// rustls has already verified (for example `conn.peer_certificates()[0]`
/// after a handshake with [`crate::IdentityService::tunnel_server_config`]),
/// or for diagnostics on an unverified certificate (then it is a *claim*).
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<PeerIdentity, IdentityError> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let mut found = None;
    for ext in x509.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name {
                    if let Some(ids) = parse_spiffe_uri(uri) {
                        found = Some(ids);
                    }
                }
            }
        }
    }
    let (environment_id, agent_id) = found.ok_or(IdentityError::NoAgentIdentity)?;
    Ok(PeerIdentity {
        agent_id,
        environment_id,
        not_before: from_unix_seconds(x509.validity().not_before.timestamp()),
        not_after: from_unix_seconds(x509.validity().not_after.timestamp()),
        serial: hex::encode(x509.raw_serial()),
    })
}

/// Serde for `SystemTime` as integer Unix seconds.
pub(crate) mod unix_time {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(crate::util::unix_seconds(*t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(crate::util::from_unix_seconds(i64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate() {
        assert!(AgentId::parse("agt_0a1b").is_ok());
        assert!(AgentId::parse("agt_").is_err());
        assert!(AgentId::parse("agt_../x").is_err());
        assert!(AgentId::parse("xyz").is_err());
        assert!(AgentId::generate().as_str().starts_with("agt_"));
        assert!(EnvironmentId::parse("prod-eu.1").is_ok());
        assert!(EnvironmentId::parse("").is_err());
        assert!(EnvironmentId::parse("a/b").is_err());
    }

    #[test]
    fn spiffe_round_trip() {
        let e = EnvironmentId::parse("env_1").unwrap();
        let a = AgentId::parse("agt_ff").unwrap();
        assert_eq!(parse_spiffe_uri(&spiffe_uri(&e, &a)), Some((e, a)));
        assert_eq!(parse_spiffe_uri("spiffe://other/env/x/agent/agt_1"), None);
    }
}

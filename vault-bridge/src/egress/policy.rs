//! What a sandbox may reach and which credentials go where: the session's
//! allowed hosts (each with its ports, whether plain HTTP is allowed and the
//! credential injected on its requests) and the session's `environment_variable`
//! placeholders (each with the hosts it may be swapped for its secret on).

use std::fmt;

use http::HeaderName;

/// Every placeholder starts with this; the proxy looks for it in requests.
pub const PLACEHOLDER_PREFIX: &str = "airlock-placeholder-";

/// Longest placeholder the proxy recognises (prefix, credential id, random part).
pub const PLACEHOLDER_MAX_LEN: usize = 160;

/// Which policy refused a request; named in the 403 body and the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyName {
    /// The session's allowed hosts (repository hosts, credentials' hosts,
    /// the environment's `networking.allowed_hosts`).
    AllowedHosts,
    /// The agent operator's narrowing of them (`[policy] egress_hosts` in
    /// the sandbox-agent's config): a host the session allows but this
    /// list does not is refused.
    AgentPolicy,
    /// The session's plain-HTTP rule (off unless a host's rule allows it).
    PlainHttp,
    /// A placeholder's `allowed_hosts`.
    PlaceholderHosts,
    /// The CONNECT host must match the request's `Host` header.
    HostMatch,
}

impl PolicyName {
    /// The name written in refusals.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllowedHosts => "the session's allowed hosts",
            Self::AgentPolicy => "the agent's egress policy (policy.egress_hosts)",
            Self::PlainHttp => "the session's plain-http policy",
            Self::PlaceholderHosts => "the credential's allowed hosts",
            Self::HostMatch => "the tunnel's host binding",
        }
    }

    /// A short stable key for the audit record's `decision.rule`.
    pub fn key(self) -> &'static str {
        match self {
            Self::AllowedHosts => "session.allowed_hosts",
            Self::AgentPolicy => "policy.egress_hosts",
            Self::PlainHttp => "session.plain_http",
            Self::PlaceholderHosts => "credential.allowed_hosts",
            Self::HostMatch => "tunnel.host",
        }
    }
}

/// A refused request: which policy and a message naming the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The policy that refused.
    pub policy: PolicyName,
    /// A sentence for the client (never a secret).
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (refused by {})", self.message, self.policy.as_str())
    }
}

/// A host name pattern: `git.example.com`, `10.0.0.7` or `*.example.com`
/// (any subdomain, not the apex), compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// One host.
    Exact(String),
    /// `*.suffix`: stored as `.suffix`.
    Subdomains(String),
}

/// A host pattern that is not a bare host name, IPv4 address or `*.wildcard`.
#[derive(Debug, thiserror::Error)]
#[error("invalid host pattern {0:?}: expected a bare host name, an ipv4 address or *.domain")]
pub struct BadHostPattern(pub String);

impl HostPattern {
    /// Parse a pattern as the SDK's `allowed_hosts` spells them.
    pub fn parse(s: &str) -> Result<Self, BadHostPattern> {
        let bad = || BadHostPattern(s.to_owned());
        let lower = normalize_host(s).ok_or_else(bad)?;
        if let Some(rest) = lower.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(bad());
            }
            return Ok(Self::Subdomains(format!(".{rest}")));
        }
        if lower.contains('*') {
            return Err(bad());
        }
        Ok(Self::Exact(lower))
    }

    /// Whether `host` (already normalised) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h == host,
            Self::Subdomains(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Subdomains(s) => write!(f, "*{s}"),
        }
    }
}

/// One entry of the agent's egress policy (`policy.egress_hosts`): a host
/// pattern as in [`HostPattern`], on any port the session allows for it, or
/// (`host:port`) on that port only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentHost {
    /// Which hosts.
    pub pattern: HostPattern,
    /// `None`: any port.
    pub port: Option<u16>,
}

impl AgentHost {
    /// Parse `host`, `*.domain`, `host:port` or `*.domain:port`.
    pub fn parse(s: &str) -> Result<Self, BadHostPattern> {
        let (host, port) = match s.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| BadHostPattern(s.to_owned()))?;
                (host, Some(port))
            }
            None => (s, None),
        };
        let pattern = HostPattern::parse(host).map_err(|_| BadHostPattern(s.to_owned()))?;
        Ok(Self { pattern, port })
    }

    /// Whether `host:port` (host normalised) is in this entry.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.pattern.matches(host) && self.port.is_none_or(|p| p == port)
    }
}

impl fmt::Display for AgentHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.pattern),
            None => write!(f, "{}", self.pattern),
        }
    }
}

/// Lowercase, without a trailing dot; `None` for anything but letters,
/// digits, `-`, `.`, `_` and a leading `*.` (no ports, paths, IPv6 or spaces).
pub fn normalize_host(s: &str) -> Option<String> {
    let s = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    let body = s.strip_prefix("*.").unwrap_or(&s);
    let ok = !body.is_empty()
        && body.len() <= 253
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !body.starts_with('.')
        && !body.contains("..");
    ok.then_some(s)
}

/// A credential the bridge holds: the key the secret backend knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRef {
    /// `vlt_...`; `None` for a secret held for the session alone (a repository's `authorization_token`).
    pub vault_id: Option<String>,
    /// `vcrd_...` (or the session-scoped id of a repository token).
    pub credential_id: String,
    /// The secret's field: `token`, `access_token`, `secret_value`, ...
    pub field: String,
}

/// How a host's credential goes on the wire.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthScheme {
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `Authorization: Basic base64(<username>:<secret>)` (Git over HTTPS).
    Basic {
        /// e.g. `x-access-token` for GitHub, `oauth2` for GitLab.
        username: String,
    },
    /// `<name>: <prefix><secret>` (e.g. `PRIVATE-TOKEN`, or `X-Api-Key`).
    Header {
        /// The header.
        name: HeaderName,
        /// Written before the secret (often empty).
        prefix: String,
    },
}

impl fmt::Debug for AuthScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bearer => f.write_str("Bearer"),
            Self::Basic { username } => write!(f, "Basic({username})"),
            Self::Header { name, .. } => write!(f, "Header({name})"),
        }
    }
}

/// A credential the proxy adds to requests to a host: to every request, or
/// (a repository's token) only to requests under one of `paths`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCredential {
    /// Which secret.
    pub credential: CredentialRef,
    /// How it is sent.
    pub scheme: AuthScheme,
    /// Path prefixes (`/org/repo.git`) the credential is limited to: a
    /// request path equal to one or under it (`/org/repo.git/info/refs`).
    /// Empty: every path of the host.
    pub paths: Vec<String>,
}

impl HostCredential {
    /// A credential for every path of its host.
    pub fn new(credential: CredentialRef, scheme: AuthScheme) -> Self {
        Self {
            credential,
            scheme,
            paths: Vec::new(),
        }
    }

    /// The same credential, limited to requests under `paths`.
    pub fn limited_to(mut self, paths: Vec<String>) -> Self {
        self.paths = paths;
        self
    }

    /// Whether a request to `path` (without the query) gets this credential.
    pub fn applies_to(&self, path: &str) -> bool {
        self.paths.is_empty()
            || self.paths.iter().any(|p| {
                let p = p.trim_end_matches('/');
                path == p
                    || path
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
    }
}

/// One allowed host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    /// Which hosts.
    pub pattern: HostPattern,
    /// Allowed ports (443 unless said otherwise).
    pub ports: Vec<u16>,
    /// Whether absolute-form `http://` requests (no TLS) may go to it;
    /// credentials and placeholders are never sent over plain HTTP.
    pub plain_http: bool,
    /// Credentials added to requests to the host: the first that applies to
    /// the request's path; whatever `Authorization` the sandbox sent is
    /// dropped whenever the host has any.
    pub credentials: Vec<HostCredential>,
    /// Why the host is allowed (e.g. `repository https://git.example.com/a/b.git`); for logs.
    pub reason: String,
}

impl HostRule {
    /// A rule allowing `pattern` on port 443, over TLS only, with no credential.
    pub fn new(pattern: HostPattern, reason: impl Into<String>) -> Self {
        Self {
            pattern,
            ports: vec![443],
            plain_http: false,
            credentials: Vec::new(),
            reason: reason.into(),
        }
    }

    /// The same rule on `ports`.
    pub fn with_ports(mut self, ports: &[u16]) -> Self {
        self.ports = ports.to_vec();
        self
    }

    /// The same rule with `credential` injected (after those it has).
    pub fn with_credential(mut self, credential: HostCredential) -> Self {
        self.credentials.push(credential);
        self
    }

    /// The credential a request to `path` gets, if any.
    pub fn credential_for(&self, path: &str) -> Option<&HostCredential> {
        self.credentials.iter().find(|c| c.applies_to(path))
    }

    /// The same rule, also allowing plain HTTP.
    pub fn with_plain_http(mut self) -> Self {
        self.plain_http = true;
        self
    }
}

/// Where an `environment_variable` placeholder is swapped (the SDK's `injection_location`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectionLocation {
    /// In request header values.
    pub header: bool,
    /// In request bodies (buffered, up to the proxy's body limit).
    pub body: bool,
}

/// Which hosts a placeholder may be swapped on (the SDK's `networking`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceholderHosts {
    /// Any host the session may reach.
    Unrestricted,
    /// Only these.
    Limited(Vec<HostPattern>),
}

/// An `environment_variable` credential as the sandbox sees it: an opaque
/// placeholder in its environment, swapped for the secret on the way out.
#[derive(Clone, PartialEq, Eq)]
pub struct Placeholder {
    value: String,
    /// Which secret it stands for.
    pub credential: CredentialRef,
    /// Where it may be swapped.
    pub hosts: PlaceholderHosts,
    /// Where in the request.
    pub location: InjectionLocation,
}

impl fmt::Debug for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Placeholder")
            .field("credential", &self.credential)
            .field("hosts", &self.hosts)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Placeholder {
    /// A new placeholder for `credential`: `airlock-placeholder-<credential id>-<32 random hex>`.
    pub fn generate(
        credential: CredentialRef,
        hosts: PlaceholderHosts,
        location: InjectionLocation,
    ) -> Self {
        let mut random = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
        let id: String = credential
            .credential_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        Self {
            value: format!(
                "{PLACEHOLDER_PREFIX}{id}-{}",
                random
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ),
            credential,
            hosts,
            location,
        }
    }

    /// The string the sandbox's environment holds (not a secret).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether the placeholder may be swapped on requests to `host`.
    pub fn allowed_on(&self, host: &str) -> bool {
        match &self.hosts {
            PlaceholderHosts::Unrestricted => true,
            PlaceholderHosts::Limited(pats) => pats.iter().any(|p| p.matches(host)),
        }
    }
}

/// One session's egress policy. Built by whoever provisions the sandbox
/// (repository resources, vault credentials, agent policy); shared by all
/// of the sandbox's connections.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    rules: Vec<HostRule>,
    placeholders: Vec<Placeholder>,
    /// The agent's egress policy; `None`: no limit beyond the rules.
    agent_hosts: Option<Vec<AgentHost>>,
}

impl EgressPolicy {
    /// A policy that allows nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allow a host (the first matching rule wins).
    pub fn allow(mut self, rule: HostRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Add an `environment_variable` placeholder. Its limited hosts are not
    /// allowed by this alone: the session's allowed hosts still decide what
    /// the sandbox may reach.
    pub fn with_placeholder(mut self, placeholder: Placeholder) -> Self {
        self.placeholders.push(placeholder);
        self
    }

    /// Narrow the policy to the agent's `policy.egress_hosts`: a host the
    /// rules allow is refused (by [`PolicyName::AgentPolicy`]) unless one of
    /// `hosts` matches it and the port. An empty list refuses everything.
    pub fn with_agent_policy(mut self, hosts: Vec<AgentHost>) -> Self {
        self.agent_hosts = Some(hosts);
        self
    }

    /// The agent's egress policy, if any.
    pub fn agent_hosts(&self) -> Option<&[AgentHost]> {
        self.agent_hosts.as_deref()
    }

    /// The rules.
    pub fn rules(&self) -> &[HostRule] {
        &self.rules
    }

    /// The placeholders.
    pub fn placeholders(&self) -> &[Placeholder] {
        &self.placeholders
    }

    fn rule_for(&self, host: &str) -> Option<&HostRule> {
        self.rules.iter().find(|r| r.pattern.matches(host))
    }

    /// May the sandbox open a TLS tunnel to `host:port`? `host` must be
    /// normalised. The session's rules are checked first (a host they do
    /// not allow is refused by them, whatever the agent's policy says), then
    /// the agent's policy.
    pub fn check_connect(&self, host: &str, port: u16) -> Result<&HostRule, Refusal> {
        let rule = self.rule_for(host).ok_or_else(|| Refusal {
            policy: PolicyName::AllowedHosts,
            message: format!("host {host} is not in the session's allowed hosts"),
        })?;
        if !rule.ports.contains(&port) {
            return Err(Refusal {
                policy: PolicyName::AllowedHosts,
                message: format!(
                    "port {port} is not allowed for host {host} (allowed ports: {})",
                    rule.ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if let Some(agent) = &self.agent_hosts {
            if !agent.iter().any(|a| a.matches(host, port)) {
                return Err(Refusal {
                    policy: PolicyName::AgentPolicy,
                    message: format!(
                        "host {host} port {port} is in the session's allowed hosts but not in this agent's policy.egress_hosts"
                    ),
                });
            }
        }
        Ok(rule)
    }

    /// May the sandbox send a plain-HTTP request to `host:port`?
    pub fn check_plain_http(&self, host: &str, port: u16) -> Result<&HostRule, Refusal> {
        let rule = self.check_connect(host, port)?;
        if !rule.plain_http {
            return Err(Refusal {
                policy: PolicyName::PlainHttp,
                message: format!(
                    "plain http to {host} is refused: only https (CONNECT) is allowed for this host"
                ),
            });
        }
        Ok(rule)
    }

    /// The placeholder whose value is `value`.
    pub fn placeholder(&self, value: &str) -> Option<&Placeholder> {
        self.placeholders.iter().find(|p| p.value == value)
    }

    /// The placeholder-looking tokens in `haystack`, each with the session's
    /// placeholder whose value starts there (its range is then exactly that
    /// value, whatever follows it), or `None` with the token's full range.
    pub fn placeholders_in(
        &self,
        haystack: &[u8],
    ) -> Vec<(std::ops::Range<usize>, Option<&Placeholder>)> {
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(start) = find(haystack, PLACEHOLDER_PREFIX.as_bytes(), from) {
            let known = self
                .placeholders
                .iter()
                .find(|p| haystack[start..].starts_with(p.value.as_bytes()));
            let range = match known {
                Some(p) => start..start + p.value.len(),
                None => start..token_end(haystack, start),
            };
            from = range.end;
            out.push((range, known));
        }
        out
    }

    /// Whether any placeholder may be swapped into request bodies to `host`.
    pub fn body_injection_on(&self, host: &str) -> bool {
        self.placeholders
            .iter()
            .any(|p| p.location.body && p.allowed_on(host))
    }
}

/// Find the placeholder-looking tokens in `haystack`: the prefix followed by
/// `[A-Za-z0-9_-]`, returned as byte ranges.
pub fn find_placeholders(haystack: &[u8]) -> Vec<std::ops::Range<usize>> {
    let prefix = PLACEHOLDER_PREFIX.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(start) = find(haystack, prefix, from) {
        let end = token_end(haystack, start);
        out.push(start..end);
        from = end;
    }
    out
}

/// Where a placeholder-looking token starting at `start` ends: after the
/// prefix, `[A-Za-z0-9_-]` up to [`PLACEHOLDER_MAX_LEN`] bytes in all.
fn token_end(haystack: &[u8], start: usize) -> usize {
    let mut end = start + PLACEHOLDER_PREFIX.len();
    while end < haystack.len()
        && end - start < PLACEHOLDER_MAX_LEN
        && (haystack[end].is_ascii_alphanumeric() || haystack[end] == b'_' || haystack[end] == b'-')
    {
        end += 1;
    }
    end
}

/// First index `>= from` where `needle` starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= haystack.len() {
        let at = haystack[i..=haystack.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        i += at;
        if &haystack[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn patterns() {
        let p = HostPattern::parse("*.Example.com").unwrap();
        assert!(p.matches("a.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("aexample.com"));
        assert!(HostPattern::parse("exa mple.com").is_err());
        assert!(HostPattern::parse("example.com:443").is_err());
        assert!(HostPattern::parse("a.*.com").is_err());
        assert_eq!(
            HostPattern::parse("Git.Example.com.").unwrap(),
            HostPattern::Exact("git.example.com".into())
        );
    }

    #[test]
    fn connect_checks_host_then_port() {
        let pol = EgressPolicy::new().allow(
            HostRule::new(HostPattern::parse("git.test").unwrap(), "repo").with_ports(&[8443]),
        );
        assert!(pol.check_connect("git.test", 8443).is_ok());
        let r = pol.check_connect("evil.test", 8443).unwrap_err();
        assert_eq!(r.policy, PolicyName::AllowedHosts);
        assert!(r
            .to_string()
            .contains("evil.test is not in the session's allowed hosts"));
        assert!(pol
            .check_connect("git.test", 443)
            .unwrap_err()
            .message
            .contains("port 443"));
        assert_eq!(
            pol.check_plain_http("git.test", 8443).unwrap_err().policy,
            PolicyName::PlainHttp
        );
    }

    #[test]
    fn agent_hosts_parse_with_optional_port() {
        let a = AgentHost::parse("Git.Example.com:8443").unwrap();
        assert_eq!(a.pattern, HostPattern::Exact("git.example.com".into()));
        assert_eq!(a.port, Some(8443));
        assert_eq!(a.to_string(), "git.example.com:8443");
        let w = AgentHost::parse("*.corp").unwrap();
        assert_eq!(w.port, None);
        assert!(w.matches("a.corp", 1) && w.matches("a.corp", 443));
        assert!(!w.matches("corp", 443));
        assert!(a.matches("git.example.com", 8443));
        assert!(!a.matches("git.example.com", 443));
        for bad in [
            "h:0",
            "h:x",
            "h:70000",
            "https://h",
            "a b",
            "[::1]",
            "::1",
            "a.*.corp",
            "",
            ":443",
        ] {
            let e = AgentHost::parse(bad).unwrap_err();
            assert_eq!(e.0, bad);
        }
    }

    #[test]
    fn agent_policy_narrows_the_session_and_says_so() {
        let session = EgressPolicy::new()
            .allow(HostRule::new(HostPattern::parse("a.test").unwrap(), "a"))
            .allow(HostRule::new(HostPattern::parse("b.test").unwrap(), "b").with_ports(&[8443]))
            .allow(
                HostRule::new(HostPattern::parse("*.corp").unwrap(), "corp")
                    .with_ports(&[443, 8443])
                    .with_plain_http(),
            );
        // Without an agent policy the session's rules decide alone.
        assert!(session.check_connect("b.test", 8443).is_ok());
        assert!(session.agent_hosts().is_none());
        let p = session.clone().with_agent_policy(vec![
            AgentHost::parse("a.test").unwrap(),
            AgentHost::parse("*.corp:443").unwrap(),
        ]);
        assert!(p.check_connect("a.test", 443).is_ok());
        assert!(p.check_connect("x.corp", 443).is_ok());
        // In the session's hosts, outside the agent's: refused by the agent's policy.
        let r = p.check_connect("b.test", 8443).unwrap_err();
        assert_eq!(r.policy, PolicyName::AgentPolicy);
        let text = r.to_string();
        assert!(
            text.contains("host b.test port 8443") && text.contains("policy.egress_hosts"),
            "{text}"
        );
        let r = p.check_connect("x.corp", 8443).unwrap_err();
        assert_eq!(r.policy, PolicyName::AgentPolicy);
        // Plain http is checked against both too, the agent's policy first.
        assert_eq!(
            p.check_plain_http("x.corp", 8443).unwrap_err().policy,
            PolicyName::AgentPolicy
        );
        assert!(p.check_plain_http("x.corp", 443).is_ok());
        // In neither: the session's refusal, as before.
        let r = p.check_connect("evil.test", 443).unwrap_err();
        assert_eq!(r.policy, PolicyName::AllowedHosts);
        assert!(!r.to_string().contains("egress_hosts"), "{r}");
        // A port the session does not allow stays the session's refusal.
        assert_eq!(
            p.check_connect("a.test", 8443).unwrap_err().policy,
            PolicyName::AllowedHosts
        );
        // An empty agent policy refuses every host the session allows.
        let none = session.with_agent_policy(Vec::new());
        for (h, port) in [("a.test", 443), ("b.test", 8443), ("x.corp", 443)] {
            assert_eq!(
                none.check_connect(h, port).unwrap_err().policy,
                PolicyName::AgentPolicy,
                "{h}"
            );
        }
        assert_eq!(PolicyName::AgentPolicy.key(), "policy.egress_hosts");
    }

    #[test]
    fn placeholders_are_found_and_scoped() {
        let ph = Placeholder::generate(
            CredentialRef {
                vault_id: Some("vlt_1".into()),
                credential_id: "vcrd_abc".into(),
                field: "secret_value".into(),
            },
            PlaceholderHosts::Limited(vec![HostPattern::parse("api.test").unwrap()]),
            InjectionLocation {
                header: true,
                body: false,
            },
        );
        assert!(ph.value().starts_with("airlock-placeholder-vcrd_abc-"));
        assert!(!format!("{ph:?}").contains(ph.value()));
        let text = format!("x={} y", ph.value());
        let found = find_placeholders(text.as_bytes());
        assert_eq!(found.len(), 1);
        assert_eq!(&text[found[0].clone()], ph.value());
        assert!(ph.allowed_on("api.test"));
        let pol = EgressPolicy::new().with_placeholder(ph.clone());
        let glued = format!("{}aaaa{}", ph.value(), "airlock-placeholder-zzz");
        let found = pol.placeholders_in(glued.as_bytes());
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, 0..ph.value().len());
        assert!(found[0].1.is_some());
        assert!(found[1].1.is_none());
        assert!(!ph.allowed_on("other.test"));
    }
}

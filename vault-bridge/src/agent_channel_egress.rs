//! Per-sandbox egress listeners: for each sandbox the agent opens, a Unix
//! socket at `<socket_dir>/<sandbox_id>/egress.sock` whose every connection
//! is served by the [`Egress`] proxy as that sandbox, under that session's
//! policy. The sandbox-agent bind-mounts `<socket_dir>/<sandbox_id>` (and
//! nothing else of the socket dir) into the sandbox's container, so a
//! sandbox can only ever reach its own socket: the identity comes from which
//! socket accepted the connection, never from the client.
//!
//! Modes: the socket dir and each sandbox dir are `0711` (others may pass
//! through, not list), each socket `0666` (the container's uid, whatever it
//! is, must be able to connect; the path is only reachable through the
//! sandbox's own bind mount or by a host user who already knows the id).
//! Closing a sandbox aborts its accept loop and every open connection and
//! removes the socket; the directory is the agent's (it created it before
//! the container) and stays.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::lock;
use std::time::Duration;

use protocol::bridge::{check_sandbox_id, EgressRepository, InvalidSandboxId};
use protocol::relay::{CredentialBinding, EgressCredential, HttpAuth, Networking};
use tokio::net::UnixListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::egress::{
    AgentHost, AuthScheme, CredentialRef, Egress, EgressPolicy, HostCredential, HostPattern,
    HostRule, InjectionLocation, Placeholder, PlaceholderHosts, SandboxIdentity,
};

/// File name of a sandbox's socket inside its directory.
pub const SOCKET_NAME: &str = "egress.sock";
/// Mode of the socket dir and of each sandbox's dir.
pub const DIR_MODE: u32 = 0o711;
/// Mode of each sandbox's socket.
pub const SOCKET_MODE: u32 = 0o666;

/// Why a sandbox's egress listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The sandbox id is not a safe path component.
    #[error(transparent)]
    SandboxId(#[from] InvalidSandboxId),
    /// An allowed host or repository URL is not valid.
    #[error("sandbox {sandbox_id}: invalid allowed host {host:?}: {reason}")]
    Host {
        /// The sandbox.
        sandbox_id: String,
        /// The host (or URL) as sent.
        host: String,
        /// Why.
        reason: String,
    },
    /// The directory or socket could not be created.
    #[error("cannot create egress socket {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The running per-sandbox listeners of one bridge.
#[derive(Debug)]
pub struct EgressListeners {
    dir: PathBuf,
    egress: Arc<Egress>,
    open: Mutex<HashMap<String, Listening>>,
}

#[derive(Debug)]
struct Listening {
    task: JoinHandle<()>,
    socket: PathBuf,
    session_id: String,
}

impl EgressListeners {
    /// Listeners under `dir` (created `0711` if missing), served by `egress`.
    pub fn new(dir: &Path, egress: Arc<Egress>) -> Result<Self, OpenError> {
        make_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            egress,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Where `sandbox_id`'s socket lives (the id is checked first).
    pub fn socket_path(&self, sandbox_id: &str) -> Result<PathBuf, InvalidSandboxId> {
        check_sandbox_id(sandbox_id)?;
        Ok(self.dir.join(sandbox_id).join(SOCKET_NAME))
    }

    /// Start (or replace) the listener of `who.sandbox_id` under `policy`;
    /// returns the socket's path. Must run inside a tokio runtime.
    pub fn open(&self, who: SandboxIdentity, policy: EgressPolicy) -> Result<PathBuf, OpenError> {
        let socket = self.socket_path(&who.sandbox_id)?;
        self.close(&who.sandbox_id)?;
        let sandbox_dir = self.dir.join(&who.sandbox_id);
        make_dir(&sandbox_dir)?;
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(OpenError::Io {
                    path: socket,
                    source,
                })
            }
        }
        let io_err = |source| OpenError::Io {
            path: socket.clone(),
            source,
        };
        let listener = UnixListener::bind(&socket).map_err(io_err)?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(io_err)?;
        tracing::info!(
            sandbox_id = %who.sandbox_id,
            session_id = %who.session_id,
            socket = %socket.display(),
            "egress socket open"
        );
        let task = tokio::spawn(accept_loop(
            listener,
            self.egress.clone(),
            who.clone(),
            Arc::new(policy),
        ));
        let mut open = lock(&self.open);
        if let Some(old) = open.insert(
            who.sandbox_id,
            Listening {
                task,
                socket: socket.clone(),
                session_id: who.session_id,
            },
        ) {
            // A concurrent open of the same sandbox: the last one wins.
            old.task.abort();
        }
        Ok(socket)
    }

    /// Stop `sandbox_id`'s listener and its connections and remove its
    /// socket. `Ok(false)` when nothing was open.
    pub fn close(&self, sandbox_id: &str) -> Result<bool, InvalidSandboxId> {
        check_sandbox_id(sandbox_id)?;
        self.egress.forget_sandbox(sandbox_id);
        let Some(l) = lock(&self.open).remove(sandbox_id) else {
            return Ok(false);
        };
        stop(sandbox_id, l);
        Ok(true)
    }

    /// Stop every listener (bridge shutdown).
    pub fn close_all(&self) {
        let all: Vec<_> = lock(&self.open).drain().collect();
        for (id, l) in all {
            stop(&id, l);
        }
    }

    /// Sandboxes of `session_id` with an open listener.
    pub fn sandboxes_of(&self, session_id: &str) -> Vec<String> {
        let mut v: Vec<_> = lock(&self.open)
            .iter()
            .filter(|(_, l)| l.session_id == session_id)
            .map(|(id, _)| id.clone())
            .collect();
        v.sort();
        v
    }

    /// Sandboxes with an open listener.
    pub fn open_sandboxes(&self) -> Vec<String> {
        let mut v: Vec<_> = lock(&self.open).keys().cloned().collect();
        v.sort();
        v
    }
}

impl Drop for EgressListeners {
    fn drop(&mut self) {
        self.close_all();
    }
}

fn stop(sandbox_id: &str, l: Listening) {
    // Aborting the accept loop drops its JoinSet, which aborts every connection.
    l.task.abort();
    match std::fs::remove_file(&l.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(
            sandbox_id,
            socket = %l.socket.display(),
            %error,
            "cannot remove egress socket"
        ),
    }
    tracing::info!(sandbox_id, "egress socket closed");
}

/// Create `dir` with mode `0711` if missing; set the mode when we own it.
fn make_dir(dir: &Path) -> Result<(), OpenError> {
    let io_err = |source| OpenError::Io {
        path: dir.to_owned(),
        source,
    };
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
    {
        Ok(()) => {}
        Err(source) => return Err(io_err(source)),
    }
    // The dir may belong to the agent (it creates a sandbox's dir before the
    // container); then its mode is the agent's business.
    match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
        Err(source) => Err(io_err(source)),
    }
}

async fn accept_loop(
    listener: UnixListener,
    egress: Arc<Egress>,
    who: SandboxIdentity,
    policy: Arc<EgressPolicy>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (egress, who, policy) = (egress.clone(), who.clone(), policy.clone());
                    conns.spawn(async move {
                        let sandbox_id = who.sandbox_id.clone();
                        if let Err(error) = egress.serve_connection(stream, who, policy).await {
                            tracing::debug!(%sandbox_id, %error, "egress connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(sandbox_id = %who.sandbox_id, %error, "egress accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// The policy of a session without credentials: each allowed host
/// (`host`, `*.domain`, either with `:port`; port 443 by default) and each
/// repository URL's host (`https` only, its port or 443). Ports of the same
/// host are merged.
pub fn policy_for(
    sandbox_id: &str,
    allowed_hosts: &[String],
    repositories: &[EgressRepository],
) -> Result<EgressPolicy, OpenError> {
    Ok(session_policy(sandbox_id, allowed_hosts, repositories, &[], |_| false)?.0)
}

/// Username of the HTTP basic credential a repository token is sent with
/// (GitHub's convention; Gitea and GitLab accept any name with a token).
pub const GIT_TOKEN_USERNAME: &str = protocol::relay::DEFAULT_BASIC_USERNAME;

/// One host's rule while a policy is built.
struct Draft {
    pattern: HostPattern,
    ports: Vec<u16>,
    reason: String,
    credentials: Vec<HostCredential>,
}

/// The policy of a session and the variables its sandbox gets:
/// - allowed hosts and repository hosts as in [`policy_for`];
/// - a repository whose `resource_id` has a token (`has_token`) gets it,
///   as basic auth (`x-access-token:<token>`), on requests under the
///   repository's path only (`/org/repo.git/...` or `/org/repo/...`): a
///   clone of another repository on the same host goes without it;
/// - `static_bearer` / `mcp_oauth` credentials: `Authorization: Bearer` on
///   requests to the MCP server URL's host (under its path when it has one);
///   with `http_auth` basic (metadata `airlock.http_auth = "basic"`), the
///   Git form instead: `Authorization: Basic <username>:<secret>` under the
///   URL's repository paths (with and without `.git`, as for a repository
///   token);
/// - `environment_variable` credentials: a fresh placeholder per sandbox,
///   returned as `secret_name` → placeholder, swapped on the credential's
///   `allowed_hosts` (which are allowed hosts of the session) or, when
///   `unrestricted`, on any host the session may reach.
pub fn session_policy(
    sandbox_id: &str,
    allowed_hosts: &[String],
    repositories: &[EgressRepository],
    credentials: &[EgressCredential],
    has_token: impl Fn(&str) -> bool,
) -> Result<(EgressPolicy, BTreeMap<String, String>), OpenError> {
    let bad = |host: &str, reason: String| OpenError::Host {
        sandbox_id: sandbox_id.to_owned(),
        host: host.to_owned(),
        reason,
    };
    let mut rules: Vec<Draft> = Vec::new();
    let mut add =
        |pattern: HostPattern, port: u16, reason: String, cred: Option<HostCredential>| {
            let i = match rules.iter().position(|d| d.pattern == pattern) {
                Some(i) => i,
                None => {
                    rules.push(Draft {
                        pattern,
                        ports: Vec::new(),
                        reason,
                        credentials: Vec::new(),
                    });
                    rules.len() - 1
                }
            };
            let d = &mut rules[i];
            if !d.ports.contains(&port) {
                d.ports.push(port);
            }
            if let Some(c) = cred {
                d.credentials.push(c);
            }
        };
    for h in allowed_hosts {
        let (host, port) = match h.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(h, format!("invalid port {port:?}")))?;
                (host, port)
            }
            None => (h.as_str(), 443),
        };
        let pattern = HostPattern::parse(host).map_err(|e| bad(h, e.to_string()))?;
        add(pattern, port, format!("allowed host {h}"), None);
    }
    let https = |raw: &str, what: &str| -> Result<(url::Url, HostPattern, u16), OpenError> {
        let url = url::Url::parse(raw).map_err(|e| bad(raw, e.to_string()))?;
        if url.scheme() != "https" {
            return Err(bad(raw, format!("{what} urls must be https")));
        }
        let host = url.host_str().ok_or_else(|| bad(raw, "no host".into()))?;
        let pattern = HostPattern::parse(host).map_err(|e| bad(raw, e.to_string()))?;
        let port = url.port_or_known_default().unwrap_or(443);
        Ok((url, pattern, port))
    };
    for r in repositories {
        let (url, pattern, port) = https(&r.url, "repository")?;
        let cred = r
            .resource_id
            .as_deref()
            .filter(|id| has_token(id))
            .map(|id| {
                HostCredential::new(
                    CredentialRef {
                        vault_id: None,
                        credential_id: id.to_owned(),
                        field: "token".into(),
                    },
                    AuthScheme::Basic {
                        username: GIT_TOKEN_USERNAME.into(),
                    },
                )
                .limited_to(repository_paths(url.path()))
            });
        add(pattern, port, format!("repository {}", url.as_str()), cred);
    }
    let mut placeholders = Vec::new();
    let mut env = BTreeMap::new();
    for c in credentials {
        match &c.binding {
            CredentialBinding::StaticBearer { mcp_server_url }
            | CredentialBinding::McpOauth { mcp_server_url, .. } => {
                let field = match c.binding {
                    CredentialBinding::McpOauth { .. } => "access_token",
                    _ => "token",
                };
                let (url, pattern, port) = https(mcp_server_url, "mcp server")?;
                let path = url.path().trim_end_matches('/');
                // Basic is the Git form: the URL names a repository, and
                // git's smart HTTP adds `/info/refs` etc. with or without `.git`.
                let (scheme, paths) = match &c.http_auth {
                    HttpAuth::Bearer => (AuthScheme::Bearer, vec![path.to_owned()]),
                    HttpAuth::Basic { username } => (
                        AuthScheme::Basic {
                            username: username.clone(),
                        },
                        repository_paths(path),
                    ),
                    _ => {
                        tracing::warn!(sandbox_id, credential_id = %c.credential_id, "credential sent with an http auth scheme this bridge does not know; skipped");
                        continue;
                    }
                };
                let cred = HostCredential::new(
                    CredentialRef {
                        vault_id: Some(c.vault_id.clone()),
                        credential_id: c.credential_id.clone(),
                        field: field.into(),
                    },
                    scheme,
                );
                let cred = if path.is_empty() {
                    cred
                } else {
                    cred.limited_to(paths)
                };
                add(
                    pattern,
                    port,
                    format!("credential {} ({})", c.credential_id, url.as_str()),
                    Some(cred),
                );
            }
            CredentialBinding::EnvironmentVariable {
                secret_name,
                networking,
                injection_location,
            } => {
                let hosts = match networking {
                    Networking::Unrestricted => PlaceholderHosts::Unrestricted,
                    Networking::Limited { allowed_hosts } => {
                        let mut pats = Vec::new();
                        for h in allowed_hosts {
                            let pattern =
                                HostPattern::parse(h).map_err(|e| bad(h, e.to_string()))?;
                            add(
                                pattern.clone(),
                                443,
                                format!("credential {} allowed host {h}", c.credential_id),
                                None,
                            );
                            pats.push(pattern);
                        }
                        PlaceholderHosts::Limited(pats)
                    }
                };
                let ph = Placeholder::generate(
                    CredentialRef {
                        vault_id: Some(c.vault_id.clone()),
                        credential_id: c.credential_id.clone(),
                        field: "secret_value".into(),
                    },
                    hosts,
                    InjectionLocation {
                        header: injection_location.header,
                        body: injection_location.body,
                    },
                );
                env.insert(secret_name.clone(), ph.value().to_owned());
                placeholders.push(ph);
            }
            _ => {
                tracing::warn!(sandbox_id, credential_id = %c.credential_id, "credential binding of a type this bridge does not know; skipped");
            }
        }
    }
    let mut policy = rules.into_iter().fold(EgressPolicy::new(), |policy, d| {
        let rule = d.credentials.into_iter().fold(
            HostRule::new(d.pattern, d.reason).with_ports(&d.ports),
            |r, c| r.with_credential(c),
        );
        policy.allow(rule)
    });
    for ph in placeholders {
        policy = policy.with_placeholder(ph);
    }
    Ok((policy, env))
}

/// `policy` narrowed by the agent's `policy.egress_hosts` when the agent
/// sent it (`None`: unchanged). An entry that is not `host`, `*.domain`,
/// either with `:port`, refuses the whole `open_egress` naming it.
pub fn with_agent_policy(
    sandbox_id: &str,
    policy: EgressPolicy,
    egress_hosts: Option<&[String]>,
) -> Result<EgressPolicy, OpenError> {
    let Some(entries) = egress_hosts else {
        return Ok(policy);
    };
    let hosts = entries
        .iter()
        .map(|h| {
            AgentHost::parse(h).map_err(|e| OpenError::Host {
                sandbox_id: sandbox_id.to_owned(),
                host: h.clone(),
                reason: format!("policy.egress_hosts: {e}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(policy.with_agent_policy(hosts))
}

/// The path prefixes a repository's token applies to: its URL path with and
/// without `.git` (git's smart HTTP adds `/info/refs`, `/git-upload-pack`).
pub fn repository_paths(path: &str) -> Vec<String> {
    let p = path.trim_end_matches('/');
    let bare = p.strip_suffix(".git").unwrap_or(p);
    let mut v = vec![bare.to_owned(), format!("{bare}.git")];
    v.retain(|s| !s.is_empty());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(url: &str) -> EgressRepository {
        EgressRepository {
            url: url.into(),
            resource_id: None,
        }
    }

    #[test]
    fn policy_merges_hosts_ports_and_repositories() {
        let p = policy_for(
            "sbx_1",
            &[
                "git.example.com".into(),
                "git.example.com:8443".into(),
                "*.example.org".into(),
            ],
            &[
                repo("https://code.internal:9443/a/b.git"),
                repo("https://git.example.com/x.git"),
            ],
        )
        .unwrap();
        assert!(p.check_connect("git.example.com", 443).is_ok());
        assert!(p.check_connect("git.example.com", 8443).is_ok());
        assert!(p.check_connect("a.example.org", 443).is_ok());
        assert!(p.check_connect("example.org", 443).is_err());
        assert!(p.check_connect("code.internal", 9443).is_ok());
        assert!(p.check_connect("code.internal", 443).is_err());
        assert!(p.check_connect("other.example.net", 443).is_err());
        assert_eq!(p.rules().len(), 3);
    }

    #[test]
    fn policy_refuses_bad_hosts_naming_them() {
        for (hosts, repos) in [
            (vec!["a b".to_owned()], vec![]),
            (vec!["h:0".to_owned()], vec![]),
            (vec!["h:x".to_owned()], vec![]),
            (vec!["h/p".to_owned()], vec![]),
            (vec![], vec![repo("http://git.example.com/a.git")]),
            (vec![], vec![repo("not a url")]),
        ] {
            let e = policy_for("sbx_9", &hosts, &repos).unwrap_err();
            let s = e.to_string();
            assert!(
                s.contains("sbx_9") && s.contains("invalid allowed host"),
                "{s}"
            );
        }
    }

    #[test]
    fn repository_tokens_are_limited_to_the_repository_path() {
        let repos = vec![EgressRepository {
            url: "https://git.example.com/org/app.git".into(),
            resource_id: Some("sesrsc_1".into()),
        }];
        let (p, env) = session_policy("sbx_1", &[], &repos, &[], |r| r == "sesrsc_1").unwrap();
        assert!(env.is_empty());
        let rule = p.check_connect("git.example.com", 443).unwrap();
        for path in [
            "/org/app.git/info/refs",
            "/org/app/info/refs",
            "/org/app.git",
        ] {
            let c = rule.credential_for(path).expect(path);
            assert_eq!(c.credential.credential_id, "sesrsc_1");
            assert_eq!(c.credential.vault_id, None);
        }
        for path in [
            "/org/other.git/info/refs",
            "/org/app-evil/info/refs",
            "/",
            "/org",
        ] {
            assert!(rule.credential_for(path).is_none(), "{path}");
        }
        // Without a held token the host is allowed but nothing is added.
        let (p, _) = session_policy("sbx_1", &[], &repos, &[], |_| false).unwrap();
        assert!(p
            .check_connect("git.example.com", 443)
            .unwrap()
            .credentials
            .is_empty());
    }

    #[test]
    fn the_agents_egress_hosts_narrow_the_session_policy() {
        use crate::egress::PolicyName;
        let p = policy_for(
            "sbx_1",
            &["a.example.com".into(), "b.example.com:8443".into()],
            &[repo("https://git.example.com/org/app.git")],
        )
        .unwrap();
        let same = with_agent_policy("sbx_1", p.clone(), None).unwrap();
        assert!(same.check_connect("b.example.com", 8443).is_ok());
        let narrowed = with_agent_policy(
            "sbx_1",
            p.clone(),
            Some(&["a.example.com".into(), "*.example.com:443".into()]),
        )
        .unwrap();
        assert!(narrowed.check_connect("a.example.com", 443).is_ok());
        assert!(narrowed.check_connect("git.example.com", 443).is_ok());
        assert_eq!(
            narrowed
                .check_connect("b.example.com", 8443)
                .unwrap_err()
                .policy,
            PolicyName::AgentPolicy
        );
        let none = with_agent_policy("sbx_1", p.clone(), Some(&[])).unwrap();
        assert_eq!(
            none.check_connect("git.example.com", 443)
                .unwrap_err()
                .policy,
            PolicyName::AgentPolicy
        );
        let e = with_agent_policy("sbx_7", p, Some(&["ok.example".into(), "bad host".into()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sbx_7") && e.contains("bad host") && e.contains("policy.egress_hosts"),
            "{e}"
        );
    }

    #[test]
    fn credentials_become_bearer_rules_and_placeholders() {
        use protocol::relay::InjectionLocation as Loc;
        let creds = vec![
            EgressCredential {
                http_auth: Default::default(),
                vault_id: "vlt_1".into(),
                credential_id: "vcrd_b".into(),
                kv_path: None,
                binding: CredentialBinding::StaticBearer {
                    mcp_server_url: "https://mcp.example.com/mcp".into(),
                },
            },
            EgressCredential {
                http_auth: Default::default(),
                vault_id: "vlt_1".into(),
                credential_id: "vcrd_e".into(),
                kv_path: None,
                binding: CredentialBinding::EnvironmentVariable {
                    secret_name: "API_KEY".into(),
                    networking: Networking::Limited {
                        allowed_hosts: vec!["api.example.com".into()],
                    },
                    injection_location: Loc {
                        header: true,
                        body: false,
                    },
                },
            },
            EgressCredential {
                http_auth: Default::default(),
                vault_id: "vlt_1".into(),
                credential_id: "vcrd_u".into(),
                kv_path: None,
                binding: CredentialBinding::Unknown,
            },
        ];
        let (p, env) = session_policy("sbx_1", &[], &[], &creds, |_| false).unwrap();
        let rule = p.check_connect("mcp.example.com", 443).unwrap();
        let c = rule.credential_for("/mcp").unwrap();
        assert_eq!(c.credential.credential_id, "vcrd_b");
        assert_eq!(c.credential.field, "token");
        assert!(rule.credential_for("/other").is_none());
        assert!(p.check_connect("api.example.com", 443).is_ok());
        let ph = env.get("API_KEY").unwrap();
        assert!(ph.starts_with("airlock-placeholder-vcrd_e-"), "{ph}");
        let known = p.placeholder(ph).unwrap();
        assert!(known.allowed_on("api.example.com"));
        assert!(!known.allowed_on("mcp.example.com"));
        assert_eq!(env.len(), 1);
        // A fresh placeholder per sandbox.
        let (_, env2) = session_policy("sbx_2", &[], &[], &creds, |_| false).unwrap();
        assert_ne!(env2.get("API_KEY"), env.get("API_KEY"));
        // Plain-http credential urls are refused.
        let bad = vec![EgressCredential {
            http_auth: Default::default(),
            vault_id: "vlt_1".into(),
            credential_id: "vcrd_h".into(),
            kv_path: None,
            binding: CredentialBinding::StaticBearer {
                mcp_server_url: "http://mcp.example.com/".into(),
            },
        }];
        assert!(matches!(
            session_policy("sbx_1", &[], &[], &bad, |_| false),
            Err(OpenError::Host { .. })
        ));
    }

    #[test]
    fn a_basic_vault_credential_is_the_git_form_under_its_repository() {
        let cred = |http_auth| EgressCredential {
            http_auth,
            vault_id: "vlt_1".into(),
            credential_id: "vcrd_g".into(),
            kv_path: None,
            binding: CredentialBinding::StaticBearer {
                mcp_server_url: "https://git.example.com:8443/org/app.git".into(),
            },
        };
        let basic = cred(HttpAuth::Basic {
            username: "oauth2".into(),
        });
        let (p, env) = session_policy("sbx_1", &[], &[], &[basic], |_| false).unwrap();
        assert!(env.is_empty());
        let rule = p.check_connect("git.example.com", 8443).unwrap();
        for path in [
            "/org/app.git/info/refs",
            "/org/app/git-upload-pack",
            "/org/app.git",
        ] {
            let c = rule
                .credential_for(path)
                .unwrap_or_else(|| panic!("{path}"));
            assert_eq!(c.credential.credential_id, "vcrd_g");
            assert_eq!(c.credential.field, "token");
            assert_eq!(
                c.scheme,
                AuthScheme::Basic {
                    username: "oauth2".into()
                }
            );
        }
        for path in ["/org/other.git/info/refs", "/org/app-evil/info/refs", "/"] {
            assert!(rule.credential_for(path).is_none(), "{path}");
        }
        // The default stays bearer; an unknown scheme binds nothing.
        let (p, _) =
            session_policy("sbx_1", &[], &[], &[cred(HttpAuth::Bearer)], |_| false).unwrap();
        let rule = p.check_connect("git.example.com", 8443).unwrap();
        assert_eq!(
            rule.credential_for("/org/app.git/info/refs")
                .unwrap()
                .scheme,
            AuthScheme::Bearer
        );
        let (p, _) =
            session_policy("sbx_1", &[], &[], &[cred(HttpAuth::Unknown)], |_| false).unwrap();
        assert!(p.check_connect("git.example.com", 8443).is_err());
    }
}

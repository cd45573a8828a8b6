//! HTTP CONNECT proxies for the TCP transport: configuration (a URL such as
//! `http://user:pass@proxy:3128`, or `HTTPS_PROXY`/`https_proxy` with
//! `NO_PROXY`/`no_proxy`), and the CONNECT exchange itself (a single HTTP/1.1
//! request and response; after a `200` the socket is a raw tunnel).
//!
//! The password never appears in `Debug`, `Display` or a log line.

use std::fmt;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest CONNECT response head we read.
const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;

/// A proxy problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The proxy URL is not `http://[user[:pass]@]host[:port]`.
    #[error("invalid proxy url in {origin}: {message}")]
    InvalidUrl {
        /// Where the URL came from (`HTTPS_PROXY`, `tunnel.proxy_url`...).
        origin: String,
        /// What is wrong (never contains the password).
        message: String,
    },
    /// The proxy could not be reached.
    #[error("cannot connect to proxy {proxy}: {source}")]
    Connect {
        /// `host:port` of the proxy.
        proxy: String,
        /// Why.
        source: std::io::Error,
    },
    /// The proxy refused the CONNECT (e.g. `407` for bad credentials).
    #[error("proxy {proxy} refused CONNECT to {target}: {status_line}")]
    Refused {
        /// `host:port` of the proxy.
        proxy: String,
        /// Requested target.
        target: String,
        /// The proxy's status line.
        status_line: String,
    },
    /// The proxy answered something that is not HTTP.
    #[error("proxy {proxy} sent a malformed CONNECT response: {message}")]
    Malformed {
        /// `host:port` of the proxy.
        proxy: String,
        /// What was wrong.
        message: String,
    },
}

/// Proxy credentials; the password is redacted from `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyAuth {
    /// User name.
    pub user: String,
    password: String,
}

impl fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// An HTTP CONNECT proxy.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Proxy host.
    pub host: String,
    /// Proxy port (80 when the URL names none).
    pub port: u16,
    /// Basic credentials, if any.
    pub auth: Option<ProxyAuth>,
    /// `NO_PROXY` entries: hosts (and their subdomains), IPs, or `*`.
    pub no_proxy: Vec<String>,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("proxy", &self.to_string())
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl fmt::Display for ProxyConfig {
    /// `http://user@host:port`, without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.auth {
            Some(a) => write!(f, "http://{}@{}:{}", a.user, self.host, self.port),
            None => write!(f, "http://{}:{}", self.host, self.port),
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl ProxyConfig {
    /// Parse `http://[user[:pass]@]host[:port][/]`; `origin` names the source in errors.
    pub fn parse(url: &str, origin: &str) -> Result<Self, ProxyError> {
        let invalid = |message: &str| ProxyError::InvalidUrl {
            origin: origin.to_owned(),
            message: message.to_owned(),
        };
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if url.contains("://") {
            return Err(invalid("only http:// proxies are supported"));
        } else {
            url
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(invalid("a proxy url has no path"));
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let auth = match userinfo {
            None => None,
            Some(u) => {
                let (user, password) = u.split_once(':').unwrap_or((u, ""));
                Some(ProxyAuth {
                    user: percent_decode(user)
                        .ok_or_else(|| invalid("bad percent-encoding in user"))?,
                    password: percent_decode(password)
                        .ok_or_else(|| invalid("bad percent-encoding in password"))?,
                })
            }
        };
        if hostport.is_empty() || hostport.starts_with(':') || hostport.starts_with("[]") {
            return Err(invalid("missing host"));
        }
        let (host, port) = settings::split_host_port_or(hostport, 80)
            .map(|(host, port)| (host.to_owned(), port))
            .ok_or_else(|| invalid("bad host or port"))?;
        Ok(Self {
            host,
            port,
            auth,
            no_proxy: Vec::new(),
        })
    }

    /// Set the `NO_PROXY` list from its comma-separated form.
    pub fn with_no_proxy(mut self, list: &str) -> Self {
        self.no_proxy = list
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        self
    }

    /// The proxy from the environment (`HTTPS_PROXY`, then `https_proxy`), with
    /// `NO_PROXY`/`no_proxy`; `Ok(None)` when none is set.
    pub fn from_env() -> Result<Option<Self>, ProxyError> {
        fn var(names: &[&'static str]) -> Option<(&'static str, String)> {
            names.iter().find_map(|n| {
                std::env::var(n)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(|v| (*n, v))
            })
        }
        let Some((name, url)) = var(&["HTTPS_PROXY", "https_proxy"]) else {
            return Ok(None);
        };
        let proxy = Self::parse(&url, name)?;
        let no_proxy = var(&["NO_PROXY", "no_proxy"])
            .map(|(_, v)| v)
            .unwrap_or_default();
        Ok(Some(proxy.with_no_proxy(&no_proxy)))
    }

    /// Whether a connection to `host` goes through this proxy (not excluded by `NO_PROXY`).
    pub fn applies_to(&self, host: &str) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        !self.no_proxy.iter().any(|entry| {
            let entry = entry.split(':').next().unwrap_or(entry);
            if entry == "*" {
                return true;
            }
            let entry = entry.trim_start_matches('.');
            host == entry || host.ends_with(&format!(".{entry}"))
        })
    }

    /// `host:port` of the proxy.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Open a TCP connection to the proxy and CONNECT to `target` (`host:port`).
    pub async fn connect(&self, target: &str) -> Result<TcpStream, ProxyError> {
        let proxy = self.address();
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ProxyError::Connect {
                proxy: proxy.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = &self.auth {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", auth.user, auth.password));
            req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|source| ProxyError::Connect {
                proxy: proxy.clone(),
                source,
            })?;
        // Read byte-wise up to the end of the head so no tunnel byte is consumed.
        let mut head = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_RESPONSE_HEAD_BYTES {
                return Err(ProxyError::Malformed {
                    proxy,
                    message: format!("response head longer than {MAX_RESPONSE_HEAD_BYTES} bytes"),
                });
            }
            let n = stream
                .read(&mut byte)
                .await
                .map_err(|source| ProxyError::Connect {
                    proxy: proxy.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(ProxyError::Malformed {
                    proxy,
                    message: "connection closed before the response head ended".into(),
                });
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head);
        let status_line = text.lines().next().unwrap_or_default().trim().to_owned();
        let mut parts = status_line.split_whitespace();
        let version = parts.next().unwrap_or_default();
        let code = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(ProxyError::Malformed {
                proxy,
                message: format!("not an HTTP/1 status line: {status_line:?}"),
            });
        }
        if !code.starts_with('2') {
            return Err(ProxyError::Refused {
                proxy,
                target: target.to_owned(),
                status_line,
            });
        }
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_with_auth_never_shows_password() {
        let p =
            ProxyConfig::parse("http://alice:s%40cret@proxy.local:3128/", "HTTPS_PROXY").unwrap();
        assert_eq!(p.host, "proxy.local");
        assert_eq!(p.port, 3128);
        let auth = p.auth.as_ref().unwrap();
        assert_eq!(auth.user, "alice");
        assert_eq!(auth.password, "s@cret");
        for s in [format!("{p}"), format!("{p:?}")] {
            assert!(!s.contains("cret"), "{s}");
        }
    }

    #[test]
    fn parse_errors_name_origin() {
        let e = ProxyConfig::parse("socks5://x:1", "tunnel.proxy_url").unwrap_err();
        assert!(e.to_string().contains("tunnel.proxy_url"));
        let e = ProxyConfig::parse("http://h:notaport", "HTTPS_PROXY").unwrap_err();
        assert!(e.to_string().contains("HTTPS_PROXY"));
        assert!(ProxyConfig::parse("http://[::1]:8080", "x").is_ok());
    }

    #[test]
    fn no_proxy_matching() {
        let p = ProxyConfig::parse("http://p:1", "x")
            .unwrap()
            .with_no_proxy("localhost, .corp.example,10.0.0.1:443");
        assert!(!p.applies_to("localhost"));
        assert!(!p.applies_to("cp.corp.example"));
        assert!(!p.applies_to("corp.example"));
        assert!(!p.applies_to("10.0.0.1"));
        assert!(p.applies_to("example.com"));
        assert!(p.applies_to("notcorp.example"));
        let all = ProxyConfig::parse("http://p:1", "x")
            .unwrap()
            .with_no_proxy("*");
        assert!(!all.applies_to("anything"));
    }
}

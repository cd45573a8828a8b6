//! Which URLs the bridge's MCP client may send a credential to: `https`
//! always (verified against the bridge's upstream trust roots); plain
//! `http` only to a loopback host (`127.0.0.0/8`, `::1`, `localhost`) by
//! default, to any host when `[mcp] allow_plain_http = "any"`, never when
//! `"never"`. No userinfo in the URL.

use std::net::IpAddr;

/// When plain `http://` MCP servers and token endpoints are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlainHttp {
    /// Never: `https` only.
    Never,
    /// Only to loopback hosts (a server beside the bridge).
    #[default]
    Loopback,
    /// To any host (a trusted private network; tokens travel in clear).
    Any,
}

/// Parse `raw` and check it against `plain`; the error says why not.
pub fn check_url(raw: &str, plain: PlainHttp) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("invalid url {raw:?}: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("url {raw:?} carries user info"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| format!("url {raw:?} has no host"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" => {
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            match plain {
                PlainHttp::Any => Ok(url),
                PlainHttp::Loopback if loopback => Ok(url),
                PlainHttp::Loopback => Err(format!(
                    "url {raw:?}: plain http is allowed only to loopback hosts; use https"
                )),
                PlainHttp::Never => {
                    Err(format!("url {raw:?}: plain http is not allowed; use https"))
                }
            }
        }
        other => Err(format!("url {raw:?}: scheme {other:?} is not http(s)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_where_allowed() {
        let ok = |u, p| check_url(u, p).is_ok();
        assert!(ok("https://mcp.example.com/mcp", PlainHttp::Never));
        assert!(ok("http://127.0.0.1:8080/mcp", PlainHttp::Loopback));
        assert!(ok("http://[::1]:8080/mcp", PlainHttp::Loopback));
        assert!(ok("http://localhost/mcp", PlainHttp::Loopback));
        assert!(!ok("http://10.0.0.7/mcp", PlainHttp::Loopback));
        assert!(ok("http://10.0.0.7/mcp", PlainHttp::Any));
        assert!(!ok("http://127.0.0.1/mcp", PlainHttp::Never));
        assert!(!ok("https://u:p@mcp.example.com/mcp", PlainHttp::Any));
        assert!(!ok("ftp://mcp.example.com/mcp", PlainHttp::Any));
        let e = check_url("http://10.0.0.7/mcp", PlainHttp::Loopback).unwrap_err();
        assert!(e.contains("loopback"), "{e}");
    }
}

//! `host:port` as written in config files and join strings: IPv6 literals
//! in brackets (`[::1]:7443`). One parser for every address key, so they all
//! accept the same spellings.

/// Split `host:port`; the port is required. `None` when there is no port,
/// the port is not a number below 65536, the host is empty, or an IPv6
/// literal is not in brackets.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    match parse(s)? {
        (host, Some(port)) => Some((host, port)),
        (_, None) => None,
    }
}

/// Split `host[:port]`, with `default_port` when the port is left out (a
/// bare IPv6 literal without brackets is all host).
pub fn split_host_port_or(s: &str, default_port: u16) -> Option<(&str, u16)> {
    let (host, port) = parse(s)?;
    Some((host, port.unwrap_or(default_port)))
}

/// Join a host and a port, bracketing IPv6 literals.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Host and, if written, port.
fn parse(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return None,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            // a bare IPv6 literal: all host
            _ => (s, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_join() {
        assert_eq!(split_host_port("a:1"), Some(("a", 1)));
        assert_eq!(split_host_port("[::1]:7444"), Some(("::1", 7444)));
        assert_eq!(split_host_port("[::1]:7443"), Some(("::1", 7443)));
        assert_eq!(split_host_port("nope"), None);
        assert_eq!(split_host_port(":1"), None);
        assert_eq!(split_host_port("a:99999"), None);
        assert_eq!(split_host_port("a:"), None);
        assert_eq!(split_host_port("[::1]"), None);
        assert_eq!(split_host_port("::1"), None);
        assert_eq!(join_host_port("::1", 5), "[::1]:5");
        assert_eq!(join_host_port("cp.internal", 7443), "cp.internal:7443");
        for (host, port) in [("cp.internal", 1), ("10.0.0.1", 443), ("fe80::1", 7443)] {
            assert_eq!(
                split_host_port(&join_host_port(host, port)),
                Some((host, port))
            );
        }
    }

    #[test]
    fn the_port_may_default() {
        assert_eq!(split_host_port_or("proxy", 80), Some(("proxy", 80)));
        assert_eq!(split_host_port_or("proxy:3128", 80), Some(("proxy", 3128)));
        assert_eq!(split_host_port_or("[::1]", 443), Some(("::1", 443)));
        assert_eq!(split_host_port_or("[::1]:8443", 443), Some(("::1", 8443)));
        assert_eq!(split_host_port_or("::1", 443), Some(("::1", 443)));
        assert_eq!(split_host_port_or("[::1]x", 443), None);
        assert_eq!(split_host_port_or("h:x", 443), None);
        assert_eq!(split_host_port_or("", 443), None);
    }
}

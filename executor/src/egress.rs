//! The egress forwarder: when the settings name an egress socket (the
//! vault-bridge's per-sandbox Unix socket, mounted into the container), the
//! executor listens on [`LISTEN_ADDR`] and copies each accepted TCP
//! connection to a fresh connection on that socket, both ways, with two
//! plain threads per connection. The sandbox's `HTTPS_PROXY` points here;
//! the bridge knows which sandbox it is from the socket, not from anything
//! sent over it.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Where the forwarder listens inside the sandbox.
pub const LISTEN_ADDR: &str = "127.0.0.1:3128";

/// Bind `addr` and forward every connection to `socket`, on a background
/// thread. Returns the bound address.
pub fn start(addr: &str, socket: &Path) -> io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let socket = socket.to_owned();
    std::thread::Builder::new()
        .name("egress-forwarder".into())
        .spawn(move || accept_loop(listener, socket))?;
    Ok(local)
}

fn accept_loop(listener: TcpListener, socket: PathBuf) {
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        let socket = socket.clone();
        let _ = std::thread::Builder::new()
            .name("egress-conn".into())
            .spawn(move || {
                if let Err(e) = forward(tcp, &socket) {
                    eprintln!("airlock-executor: egress {}: {e}", socket.display());
                }
            });
    }
}

fn forward(tcp: TcpStream, socket: &Path) -> io::Result<()> {
    let unix = UnixStream::connect(socket)?;
    let _ = tcp.set_nodelay(true);
    let (mut tcp_r, mut unix_w) = (tcp.try_clone()?, unix.try_clone()?);
    let up = std::thread::Builder::new()
        .name("egress-up".into())
        .spawn(move || {
            let _ = io::copy(&mut tcp_r, &mut unix_w);
            let _ = unix_w.shutdown(Shutdown::Write);
        })?;
    let (mut unix_r, mut tcp_w) = (unix, tcp);
    let _ = io::copy(&mut unix_r, &mut tcp_w);
    let _ = tcp_w.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn forwards_both_ways_over_a_real_socket_pair() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("egress.sock");
        let server = UnixListener::bind(&sock).unwrap();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(b"reply:").unwrap();
            s.write_all(&got).unwrap();
        });
        let addr = start("127.0.0.1:0", &sock).unwrap();
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"CONNECT x:443 HTTP/1.1\r\n\r\n").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out, "reply:CONNECT x:443 HTTP/1.1\r\n\r\n");
        echo.join().unwrap();
    }

    #[test]
    fn a_missing_socket_closes_the_client_connection() {
        let dir = tempfile::tempdir().unwrap();
        let addr = start("127.0.0.1:0", &dir.path().join("absent.sock")).unwrap();
        let mut c = TcpStream::connect(addr).unwrap();
        let mut out = Vec::new();
        assert_eq!(c.read_to_end(&mut out).unwrap_or(0), 0);
    }
}

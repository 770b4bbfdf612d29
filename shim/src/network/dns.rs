//! The host end of the guest's DNS forwarder.
//!
//! Docker's embedded resolver listens on `127.0.0.11` *inside the container's network
//! namespace*; from the guest, 127.0.0.11 is the guest's own loopback. So the guest runs
//! a forwarder on the loopback nameservers of its `resolv.conf`, which relays each query
//! over vsock ([`runvm_protocol::DNS_PORT`]) to the monitor, and the monitor — which
//! lives in the namespace — asks the resolver there. Only loopback servers on port 53 are
//! relayed: everything else the guest reaches through its own interfaces.
//!
//! One connection per UDP query or per TCP client; messages in DNS-over-TCP framing.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use runvm_protocol::{read_frame, DnsRelayHeader};

/// Most relayed queries or TCP clients at once; more are refused (closed).
const MAX_CLIENTS: usize = 64;
/// How long the resolver has to answer a UDP query.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a relay connection may sit idle.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The loopback nameservers in a `resolv.conf` text.
pub fn loopback_nameservers(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .filter(|a| a.is_loopback())
        .map(|a| a.to_string())
        .collect()
}

/// The loopback nameservers of the container's `resolv.conf` (none if it cannot be read:
/// read inside its directory, a regular file of at most 64 KiB, as the guest may have
/// written it through the share).
pub fn loopback_nameservers_in(file: &crate::in_root::InRoot) -> Vec<String> {
    file.read(64 << 10)
        .map(|t| loopback_nameservers(&String::from_utf8_lossy(&t)))
        .unwrap_or_default()
}

/// Serves relay connections from the guest on `listener` (the vsock Unix socket of
/// [`runvm_protocol::DNS_PORT`]) on a thread of its own, for as long as the monitor lives.
pub fn serve(listener: UnixListener) -> std::io::Result<()> {
    let kind = vmm::seccomp::ThreadKind::DnsRelay;
    crate::vsock_service::serve(listener, "dns", kind, MAX_CLIENTS, relay)
}

fn relay(mut conn: UnixStream) -> Result<(), String> {
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let header: DnsRelayHeader = read_frame(&mut conn).map_err(|e| e.to_string())?;
    let ip: IpAddr = header
        .server
        .parse()
        .map_err(|_| format!("bad server address {:?}", header.server))?;
    if !ip.is_loopback() {
        return Err(format!("refusing to relay to {ip}: not a loopback address"));
    }
    let server = SocketAddr::new(ip, 53);
    conn.set_read_timeout(Some(IDLE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    if header.tcp {
        relay_tcp(conn, server)
    } else {
        relay_udp(conn, server)
    }
}

/// Reads one length-prefixed DNS message; None at a clean end of the connection.
fn read_message(r: &mut impl Read) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut msg).map_err(|e| e.to_string())?;
    Ok(Some(msg))
}

fn relay_udp(mut conn: UnixStream, server: SocketAddr) -> Result<(), String> {
    let bind: SocketAddr = if server.is_ipv6() {
        "[::1]:0".parse().unwrap_or(server)
    } else {
        "127.0.0.1:0".parse().unwrap_or(server)
    };
    while let Some(query) = read_message(&mut conn)? {
        let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        sock.connect(server).map_err(|e| format!("{server}: {e}"))?;
        sock.set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(|e| e.to_string())?;
        sock.send(&query).map_err(|e| format!("{server}: {e}"))?;
        let mut answer = vec![0u8; 65535];
        let n = sock
            .recv(&mut answer)
            .map_err(|e| format!("{server}: {e}"))?;
        let mut out = Vec::with_capacity(n + 2);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&answer[..n]);
        conn.write_all(&out).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn relay_tcp(conn: UnixStream, server: SocketAddr) -> Result<(), String> {
    let tcp = TcpStream::connect_timeout(&server, ANSWER_TIMEOUT)
        .map_err(|e| format!("{server}: {e}"))?;
    tcp.set_read_timeout(Some(IDLE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    crate::vsock_service::splice(conn, tcp).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_nameservers_are_forwarded() {
        let text = "search example.org\nnameserver 127.0.0.11\nnameserver 8.8.8.8\n# nameserver 127.0.0.2\nnameserver ::1\nnameserver bogus\noptions ndots:0\n";
        assert_eq!(loopback_nameservers(text), ["127.0.0.11", "::1"]);
    }

    #[test]
    fn a_udp_query_is_relayed_and_a_non_loopback_server_refused() {
        // A resolver on 127.0.0.1:53 cannot be assumed here; relay to a stand-in by
        // driving relay_udp with the stand-in's address.
        let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = resolver.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 512];
            let (n, from) = resolver.recv_from(&mut b).unwrap();
            let mut answer = b[..n].to_vec();
            answer.extend_from_slice(b"-answer");
            resolver.send_to(&answer, from).unwrap();
        });
        let (mut guest, host) = UnixStream::pair().unwrap();
        let relayed = std::thread::spawn(move || relay_udp(host, addr));
        guest.write_all(&[0, 5]).unwrap();
        guest.write_all(b"query").unwrap();
        let got = read_message(&mut guest).unwrap().unwrap();
        assert_eq!(got, b"query-answer");
        drop(guest);
        relayed.join().unwrap().unwrap();
        t.join().unwrap();

        let (mut guest, host) = UnixStream::pair().unwrap();
        runvm_protocol::write_frame(
            &mut guest,
            &DnsRelayHeader {
                server: "10.0.0.1".into(),
                tcp: false,
            },
        )
        .unwrap();
        let e = relay(host).unwrap_err();
        assert!(e.contains("not a loopback address"), "{e}");
    }
}

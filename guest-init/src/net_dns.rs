//! The guest's DNS forwarder: a helper process of init (`helper_process`) that answers
//! on the loopback nameservers of the container's `resolv.conf` (Docker's `127.0.0.11`,
//! UDP and TCP port 53) by relaying each query over vsock to the monitor, which asks the
//! resolver inside the container's network namespace (`runvm_protocol::DNS_PORT`).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runvm_protocol::{DnsRelayHeader, DNS_PORT};

use crate::error::{Context, Error, Result};
use crate::vsock::Transport;

/// Most queries in flight; more are dropped (the client retries, as with any resolver).
const MAX_IN_FLIGHT: usize = 32;
const ANSWER_TIMEOUT: Duration = Duration::from_secs(8);

/// Binds the forwarder's sockets on every server of `servers` and forks the forwarder.
/// Returns its pid (or None when there is nothing to forward).
pub fn start(servers: &[String], transport: &Transport) -> Result<Option<nix::unistd::Pid>> {
    if servers.is_empty() {
        return Ok(None);
    }
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for s in servers {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| Error::new(format!("dns: bad nameserver {s:?}")))?;
        let addr = SocketAddr::new(ip, 53);
        udp.push((
            s.clone(),
            UdpSocket::bind(addr).with_context(|| format!("dns: bind udp {addr}"))?,
        ));
        tcp.push((
            s.clone(),
            TcpListener::bind(addr).with_context(|| format!("dns: bind tcp {addr}"))?,
        ));
    }
    let keep: Vec<RawFd> = udp
        .iter()
        .map(|(_, s)| s.as_raw_fd())
        .chain(tcp.iter().map(|(_, s)| s.as_raw_fd()))
        .collect();
    let transport = transport.clone();
    let pid = crate::helper_process::fork(c"runvm-dns", &keep, move || run(udp, tcp, transport))?;
    Ok(Some(pid))
}

fn run(udp: Vec<(String, UdpSocket)>, tcp: Vec<(String, TcpListener)>, transport: Transport) -> ! {
    let in_flight = Arc::new(AtomicUsize::new(0));
    for (server, listener) in tcp {
        let t = transport.clone();
        let _ = std::thread::Builder::new().spawn(move || {
            for conn in listener.incoming().flatten() {
                let (t, server) = (t.clone(), server.clone());
                let _ = std::thread::Builder::new().spawn(move || relay_tcp(conn, &server, &t));
            }
        });
    }
    let mut threads = Vec::new();
    for (server, sock) in udp {
        let (t, n) = (transport.clone(), in_flight.clone());
        threads.push(std::thread::spawn(move || serve_udp(sock, &server, &t, &n)));
    }
    for t in threads {
        let _ = t.join();
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn serve_udp(sock: UdpSocket, server: &str, transport: &Transport, in_flight: &Arc<AtomicUsize>) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, client)) = sock.recv_from(&mut buf) else {
            continue;
        };
        if in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let query = buf[..n].to_vec();
        let (sock, server, t, count) = (
            sock.clone(),
            server.to_string(),
            transport.clone(),
            in_flight.clone(),
        );
        let spawned = std::thread::Builder::new().spawn(move || {
            match ask(&t, &server, &query) {
                Ok(answer) => {
                    let _ = sock.send_to(&answer, client);
                }
                Err(e) => crate::log::info(&format!("dns: query for {client} not answered: {e}")),
            }
            count.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn open_relay(transport: &Transport, server: &str, tcp: bool) -> Result<std::fs::File> {
    let fd: OwnedFd = transport.connect(DNS_PORT)?;
    let mut f = std::fs::File::from(fd);
    runvm_protocol::write_frame(
        &mut f,
        &DnsRelayHeader {
            server: server.to_string(),
            tcp,
        },
    )
    .context("dns: relay header")?;
    Ok(f)
}

/// One UDP query through the host.
fn ask(transport: &Transport, server: &str, query: &[u8]) -> Result<Vec<u8>> {
    let mut f = open_relay(transport, server, false)?;
    let timeout = libc::timeval {
        tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: setsockopt reads a timeval from a valid pointer.
    unsafe {
        libc::setsockopt(
            f.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let len = u16::try_from(query.len()).map_err(|_| Error::new("dns: query too long"))?;
    let mut msg = len.to_be_bytes().to_vec();
    msg.extend_from_slice(query);
    f.write_all(&msg).context("dns: send the query")?;
    let mut l = [0u8; 2];
    f.read_exact(&mut l).context("dns: read the answer")?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(l))];
    f.read_exact(&mut answer).context("dns: read the answer")?;
    Ok(answer)
}

/// A TCP client: its byte stream (already DNS-over-TCP framed) goes through the host.
fn relay_tcp(conn: TcpStream, server: &str, transport: &Transport) {
    let Ok(relay) = open_relay(transport, server, true) else {
        return;
    };
    let (Ok(mut up_r), Ok(mut up_w)) = (conn.try_clone(), relay.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_r, &mut up_w);
        // SAFETY: shutdown(2) of a socket we hold.
        unsafe { libc::shutdown(up_w.as_raw_fd(), libc::SHUT_WR) };
    });
    let (mut down_r, mut down_w) = (relay, conn);
    let _ = std::io::copy(&mut down_r, &mut down_w);
    let _ = down_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

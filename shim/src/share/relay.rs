//! The host end of the socket relays: a bind mount of a host UNIX socket
//! (`-v /var/run/docker.sock:/var/run/docker.sock`) cannot cross virtio-fs, so the guest
//! init listens at the destination and carries each connection over vsock
//! ([`runvm_protocol::SOCKET_PORT`]) to the monitor, which connects to the host socket.
//!
//! The guest only says which relay a connection is for (a number, in a
//! [`SocketRelayHeader`]); the host socket is the one recorded at create for that number,
//! so a guest can reach nothing else. The monitor connects from its own namespaces, with
//! its own credentials: as under runc, the container reaches the socket as root would.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runvm_protocol::{read_frame_limited, SocketRelayHeader};

/// Most relayed connections at once.
const MAX_CONNECTIONS: usize = 256;
/// Largest header frame (a number).
const MAX_HEADER_LEN: u32 = 64;
/// How long the guest has to send its header.
const HEADER_WAIT: Duration = Duration::from_secs(5);

/// Serves the socket relays of `sockets` (by relay number) on `listener`, the vsock Unix
/// socket of [`runvm_protocol::SOCKET_PORT`], for as long as the monitor lives.
pub fn serve(listener: UnixListener, sockets: Vec<PathBuf>) -> std::io::Result<()> {
    let sockets = Arc::new(sockets);
    let kind = vmm::seccomp::ThreadKind::SocketRelay;
    crate::vsock_service::serve(
        listener,
        "socket-relay",
        kind,
        MAX_CONNECTIONS,
        move |conn| relay(conn, &sockets),
    )
}

fn relay(mut conn: UnixStream, sockets: &[PathBuf]) -> Result<(), String> {
    conn.set_read_timeout(Some(HEADER_WAIT))
        .map_err(|e| e.to_string())?;
    let header: SocketRelayHeader =
        read_frame_limited(&mut conn, MAX_HEADER_LEN).map_err(|e| e.to_string())?;
    let Some(path) = usize::try_from(header.relay)
        .ok()
        .and_then(|i| sockets.get(i))
    else {
        return Err(format!(
            "the guest asked for socket relay {}, and there are {}",
            header.relay,
            sockets.len()
        ));
    };
    conn.set_read_timeout(None).map_err(|e| e.to_string())?;
    let host = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::vsock_service::splice(conn, host).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_connection_reaches_the_recorded_socket_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let host_path = dir.path().join("host.sock");
        let host = UnixListener::bind(&host_path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = host.accept().unwrap();
            let mut q = Vec::new();
            c.read_to_end(&mut q).unwrap();
            c.write_all(&[b"re:", q.as_slice()].concat()).unwrap();
        });
        let relay_path = dir.path().join("vsock.sock_1028");
        serve(UnixListener::bind(&relay_path).unwrap(), vec![host_path]).unwrap();

        let mut guest = UnixStream::connect(&relay_path).unwrap();
        runvm_protocol::write_frame(&mut guest, &SocketRelayHeader { relay: 0 }).unwrap();
        guest.write_all(b"GET /_ping").unwrap();
        guest.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        guest.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"re:GET /_ping");
        server.join().unwrap();

        // A relay number that was never given: closed without a byte.
        let mut bad = UnixStream::connect(&relay_path).unwrap();
        runvm_protocol::write_frame(&mut bad, &SocketRelayHeader { relay: 7 }).unwrap();
        let mut nothing = Vec::new();
        bad.read_to_end(&mut nothing).unwrap();
        assert!(nothing.is_empty());
    }
}

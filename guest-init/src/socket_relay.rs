//! Bind-mounted host UNIX sockets (`-v /var/run/docker.sock:/var/run/docker.sock`). A
//! socket file on the share could not be connected to across the guest/host boundary,
//! so for each of the container's socket relays ([`MountSpec::relay`]) init listens on a
//! socket of its own in its tmpfs ([`Paths::relay_socket`]), which the workload's child
//! bind-mounts on the destination (`binds`). A helper process (`helper_process`) accepts
//! the container's connections and carries each to the host on a vsock connection of its
//! own to [`SOCKET_PORT`], announced by a [`SocketRelayHeader`]; the host connects to
//! the socket it recorded for that relay. Bytes are then copied both ways, one thread per
//! direction: EOF (or an error) one way shuts that direction down on the other side, and
//! the connection is closed once both directions are done.
//!
//! At most [`MAX_CONNECTIONS`] connections are relayed at once; more are closed as they
//! come. A stuck connection only holds its own threads: init never waits for the helper,
//! and kills it when the container ends ([`Relays`]).

use crate::error::{Context, Error, Result};
use crate::mounts::Paths;
use crate::vsock::Transport;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid};
use runvm_protocol::{MountSpec, SocketRelayHeader, SOCKET_PORT};
use std::collections::BTreeMap;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Most connections relayed at once, over all relays.
pub const MAX_CONNECTIONS: usize = 256;
/// Permissions of a relay's socket, owned by the container's user (the protocol does not
/// carry the host socket's owner and mode).
const SOCKET_MODE: u32 = 0o660;
/// Stack of each relay thread (a copy buffer and little else).
const THREAD_STACK: usize = 128 << 10;

/// The running relays: the helper process that serves them, killed on [`Relays::stop`]
/// or drop.
#[derive(Debug, Default)]
pub struct Relays {
    helper: Option<Pid>,
}

impl Relays {
    /// Listens on a socket for every relay that `mounts` name, owned by `owner` (the
    /// container's user), and starts the helper that serves them over `transport`. No
    /// relay, no helper.
    pub fn start(
        mounts: &[MountSpec],
        paths: &Paths,
        owner: (Uid, Gid),
        transport: &Transport,
    ) -> Result<Self> {
        let mut listeners = BTreeMap::new();
        for relay in mounts.iter().filter_map(|m| m.relay) {
            if listeners.contains_key(&relay) {
                continue;
            }
            listeners.insert(relay, listen(&paths.relay_socket(relay), owner)?);
        }
        if listeners.is_empty() {
            return Ok(Self::default());
        }
        let keep: Vec<RawFd> = listeners.values().map(AsRawFd::as_raw_fd).collect();
        let transport = transport.clone();
        let count = listeners.len();
        let pid = crate::helper_process::fork(c"runvm-relay", &keep, move || {
            serve(listeners, transport)
        })?;
        crate::log::info(&format!("{count} socket relays served by pid {pid}"));
        Ok(Self { helper: Some(pid) })
    }

    /// Ends every relay and its connections (the helper is killed and reaped).
    pub fn stop(&mut self) {
        if let Some(pid) = self.helper.take() {
            let _ = kill(pid, Signal::SIGKILL);
            // It may already be reaped by the supervisor's wait for any child.
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A listening socket at `path` that `owner` may connect to.
fn listen(path: &std::path::Path, (uid, gid): (Uid, Gid)) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("socket relay: listen on {}", path.display()))?;
    nix::unistd::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("socket relay: chown {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .with_context(|| format!("socket relay: chmod {}", path.display()))?;
    Ok(l)
}

/// The helper: one accepting thread per relay, two threads per connection.
fn serve(listeners: BTreeMap<u32, UnixListener>, transport: Transport) -> ! {
    let active = Arc::new(AtomicUsize::new(0));
    for (relay, listener) in listeners {
        let (t, a) = (transport.clone(), active.clone());
        if let Err(e) = std::thread::Builder::new()
            .stack_size(THREAD_STACK)
            .spawn(move || accept_loop(relay, &listener, &t, &a))
        {
            crate::log::error(&format!("socket relay {relay}: no thread: {e}"));
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Counts one relayed connection while it lives.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Option<Self> {
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Self(active.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    relay: u32,
    listener: &UnixListener,
    transport: &Transport,
    active: &Arc<AtomicUsize>,
) {
    loop {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of descriptors or memory: wait a little instead of spinning.
                crate::log::error(&format!("socket relay {relay}: accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(slot) = Slot::take(active) else {
            crate::log::error(&format!(
                "socket relay {relay}: {MAX_CONNECTIONS} connections already; closing a new one"
            ));
            continue;
        };
        let t = transport.clone();
        // A failed spawn drops the closure: the client is closed and the slot freed.
        let spawned = std::thread::Builder::new()
            .stack_size(THREAD_STACK)
            .spawn(move || {
                if let Err(e) = relay_connection(relay, client, &t) {
                    crate::log::error(&format!("socket relay {relay}: {e}"));
                }
                drop(slot);
            });
        if let Err(e) = spawned {
            crate::log::error(&format!("socket relay {relay}: no thread: {e}"));
        }
    }
}

/// One connection of the container, carried to the host until both directions end.
fn relay_connection(relay: u32, client: UnixStream, transport: &Transport) -> Result<()> {
    // A vsock stream used through the std socket API (read, write, shutdown).
    let mut host = UnixStream::from(transport.connect(SOCKET_PORT)?);
    runvm_protocol::write_frame(&mut host, &SocketRelayHeader { relay })
        .context("send the relay header")?;
    let (client_in, host_in) = (
        client.try_clone().context("clone the client socket")?,
        host.try_clone().context("clone the host connection")?,
    );
    let up = std::thread::Builder::new()
        .stack_size(THREAD_STACK)
        .spawn(move || pump(client_in, host))
        .map_err(|e| Error::new(format!("no thread: {e}")))?;
    pump(host_in, client);
    let _ = up.join();
    Ok(())
}

/// Copies `from` to `to` until EOF or an error, then shuts `to` down for writing (the
/// reader on the other side sees EOF) and, if `to` is gone, `from` for reading (the
/// writer on the other side learns nobody reads).
fn pump(mut from: UnixStream, mut to: UnixStream) {
    let copied = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    if copied.is_err() {
        let _ = from.shutdown(Shutdown::Read);
    }
}

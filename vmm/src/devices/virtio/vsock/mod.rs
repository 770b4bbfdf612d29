//! virtio-vsock, hybrid flavour (as Firecracker): guest vsock streams are bridged to host
//! Unix sockets.
//!
//! - Guest → host: a guest `connect(CID 2, port P)` is bridged to a connection to the
//!   Unix socket `<uds_path>_P`.
//! - Host → guest: a host client connects to the Unix socket `<uds_path>`, writes
//!   `CONNECT <port>\n`, and once the guest accepts, reads `OK <local_port>\n`; from then
//!   on the Unix connection carries the stream.
//!
//! Layout:
//! - [`device`]: the [`Vsock`] device ([`VirtioDevice`](super::VirtioDevice) and
//!   `event_manager::MutEventSubscriber`): queues, interrupts, event dispatch.
//! - [`packet`]: parsing and validating guest TX packets, writing RX packets.
//! - [`muxer`]: the host side: listener, connection table, pending RX work.
//! - [`connection`]: one connection's state machine, buffering and credit accounting.
//!
//! Everything that comes from the guest is untrusted: malformed packets are dropped or
//! answered with `OP_RST`, and the device keeps running.

pub mod connection;
pub mod device;
pub mod muxer;
pub mod packet;

#[cfg(test)]
mod tests;

pub use device::Vsock;

use std::io;

use super::GuestLog;

/// The host's CID (the guest talks to the host at this address).
pub const HOST_CID: u64 = 2;
/// Number of virtqueues: rx, tx, event.
pub const NUM_QUEUES: usize = 3;
/// Maximum size of each virtqueue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the RX queue (device → driver).
pub const RXQ_INDEX: usize = 0;
/// Index of the TX queue (driver → device).
pub const TXQ_INDEX: usize = 1;
/// Index of the event queue (unused).
pub const EVQ_INDEX: usize = 2;

/// Largest packet payload we accept from the guest or produce for it.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// Receive buffer we advertise to the guest for each connection (`buf_alloc`): at most this
/// many bytes from the guest may be waiting to be written to the Unix socket.
pub const CONN_TX_BUF_SIZE: u32 = 256 * 1024;
/// How long a host-initiated connection may wait for the guest's answer, and a host client
/// for its `CONNECT` line.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Most connections open at once; further requests are refused with `OP_RST`.
pub const MAX_CONNECTIONS: usize = 256;
/// Most host clients that have connected but not yet sent their `CONNECT` line.
pub const MAX_PENDING_CLIENTS: usize = 64;

/// The vsock device's log name and its budget of warnings about guest misbehaviour.
pub(crate) static GUEST_LOG: GuestLog = GuestLog::new("vsock");

/// Owner and mode of each directory above `path`, for an error (`/run 0:0 755, …`).
pub(crate) fn ancestors_described(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    path.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .map(|a| match std::fs::metadata(a) {
            Ok(m) => format!(
                "{} {}:{} {:o}",
                a.display(),
                m.uid(),
                m.gid(),
                m.mode() & 0o7777
            ),
            Err(e) => format!("{} ({e})", a.display()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why the vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock Unix socket path {0:?} already exists")]
    PathExists(std::path::PathBuf),
    #[error("cannot bind vsock Unix socket {0:?}: {1} (the directories above it: {2})")]
    Bind(std::path::PathBuf, #[source] io::Error, String),
    #[error("invalid guest CID {0} (must be at least 3)")]
    InvalidCid(u64),
    #[error("cannot create eventfd or timerfd: {0}")]
    EventFd(#[source] io::Error),
}

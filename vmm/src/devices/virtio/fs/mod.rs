//! virtio-fs: a host directory shared live with the guest (`mount -t virtiofs TAG DIR`),
//! served by a vhost-user backend, virtiofsd, that runs as a process of its own.
//!
//! The VMM keeps what the guest sees of the device (the virtio-mmio registers, feature
//! negotiation, the config space with the tag) and hands the queues to the backend when the
//! driver activates the device. From then on the FUSE requests and their replies go
//! between the guest and virtiofsd directly: the queues' notification eventfds, which KVM
//! signals when the guest writes `QueueNotify`, are the backend's kick fds; the device's
//! interrupt eventfd, a KVM irqfd, is the backend's call fd; virtiofsd maps guest memory
//! from the memfd behind it ([`crate::memory`]).
//!
//! Layout:
//! - [`device`]: the [`Fs`] device ([`VirtioDevice`](super::VirtioDevice) and
//!   `event_manager::MutEventSubscriber`): config space, features, activation and reset,
//!   watching the backend's connection;
//! - [`vhost_user`]: the vhost-user frontend ([`VhostUserBackend`]): the control messages,
//!   under a deadline.
//!
//! The backend is untrusted like the guest (the guest drives it): a backend that closes
//! its connection, stalls or answers nonsense makes the share unusable, which the device
//! reports once through the callback it was given ([`BackendFailed`]); for a boot-time
//! share the VMM then stops the VM ([`crate::VmExitReason::BackendFailed`]), as a
//! container whose file system went away cannot go on; for a share in a spare slot
//! ([`crate::fs_slots`]) the slot's owner is told and the VM goes on.

pub mod device;
pub mod vhost_user;

#[cfg(test)]
pub(crate) mod tests;

use std::path::PathBuf;

pub use device::Fs;
pub use vhost_user::{VhostUserBackend, VhostUserError};

use super::GuestLog;

/// Number of queues: the high-priority queue, then one request queue (virtiofsd serves
/// exactly one).
pub const NUM_QUEUES: usize = 2;
/// Index of the high-priority queue (FUSE_FORGET, FUSE_INTERRUPT).
pub const HIPRIO_QUEUE: usize = 0;
/// Index of the request queue.
pub const REQUEST_QUEUE: usize = 1;
/// Maximum size of each queue (what Kata uses with virtiofsd).
pub const QUEUE_SIZE: u16 = 1024;
/// Length of the tag field of the config space: longer tags do not fit.
pub const TAG_LEN: usize = 36;

/// The virtio-fs device's log name and its budget of warnings about guest misbehaviour.
pub(crate) static GUEST_LOG: GuestLog = GuestLog::new("virtio-fs");

/// Called, once, when a share's backend becomes unusable, with a message that says which
/// share, which backend and what happened. Runs on a vCPU thread (a failure while the
/// driver activates or resets the device) or on the device thread (the connection closed).
pub type BackendFailed = Box<dyn Fn(String) + Send>;

/// One file-system share: the tag the guest mounts it by, and the Unix socket its
/// virtiofsd listens on (the VMM connects when it builds the VM, before the guest boots).
#[derive(Clone, Debug)]
pub struct FsConfig {
    pub tag: String,
    pub socket: PathBuf,
}

/// Why a virtio-fs device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("tag {0:?} is not usable: it must be 1 to {TAG_LEN} bytes without NUL bytes")]
    InvalidTag(String),
    #[error("cannot create the queue eventfds: {0}")]
    EventFd(#[source] std::io::Error),
    #[error(transparent)]
    Backend(#[from] VhostUserError),
}

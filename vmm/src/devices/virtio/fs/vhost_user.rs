//! The vhost-user frontend: the control connection to a device's backend process
//! (virtiofsd) over a Unix socket, spoken with the rust-vmm `vhost` crate.
//!
//! - At creation ([`VhostUserBackend::connect`]): `SET_OWNER`, the backend's virtio
//!   features (it must offer `VIRTIO_F_VERSION_1` and the vhost-user protocol features),
//!   the protocol features (`MQ` and `REPLY_ACK` where offered: with `REPLY_ACK` every
//!   request is acknowledged, so a backend that refuses one is noticed), and with `MQ` a
//!   check that the backend has enough queues.
//! - At activation ([`VhostUserBackend::activate`]): `SET_FEATURES` (what the driver acked,
//!   which is a subset of what the backend offered), `SET_MEM_TABLE` from the memfd
//!   regions of guest memory, per queue `SET_VRING_NUM`/`ADDR`/`BASE`/`CALL`/`KICK`, then
//!   `SET_VRING_ENABLE` for each (with protocol features, rings start disabled).
//! - At reset ([`VhostUserBackend::deactivate`]): `SET_VRING_ENABLE(false)` and
//!   `GET_VRING_BASE` (which stops the ring) per queue.
//!
//! The backend is a separate process and is trusted no more than the guest. Every request
//! runs under a deadline ([`REPLY_TIMEOUT`]): a watchdog thread shuts the socket down when
//! the answer does not come in time. (A socket receive timeout would not do: the `vhost`
//! crate retries reads that time out.) After any failure the connection is shut down and
//! every later request fails at once: a backend that answered nonsense cannot be talked
//! to any more, and a closed connection makes virtiofsd exit.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::error;
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::super::{GuestMemory, VIRTIO_F_VERSION_1};

/// How long the backend may take to answer one request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`VhostUserBackend::connect`] waits for the socket to appear and accept.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Virtio features the VMM offers the driver when the backend offers them too: those that
/// need nothing from the VMM beyond what its transport does for every device. Left out:
/// `RING_PACKED` (the transport sets up split rings), `NOTIFICATION_DATA` (it changes what
/// the driver writes to `QueueNotify`, which the ioeventfds match), `RING_RESET` (per-queue
/// reset, which the transport does not implement), `IN_ORDER`, `ACCESS_PLATFORM`, and every
/// device-specific bit (virtio-fs's `NOTIFICATION` needs a queue virtiofsd lacks).
pub const SUPPORTED_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_RING_F_EVENT_IDX);

/// The vhost-user protocol features we use, when the backend offers them.
const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::MQ.union(VhostUserProtocolFeatures::REPLY_ACK);

/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user bit in the virtio feature word.
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Why talking to the backend failed.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("cannot connect to the vhost-user socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the vhost-user connection (socket clone or watchdog thread): {0}")]
    Setup(#[source] std::io::Error),
    #[error("vhost-user request {request} failed: {source}")]
    Request {
        request: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("no answer to vhost-user request {request} within {timeout:?}: the backend stalled")]
    TimedOut {
        request: &'static str,
        timeout: Duration,
    },
    #[error("the backend does not offer {0}")]
    MissingFeature(&'static str),
    #[error("the backend has {have} queues, the device needs {need}")]
    QueueCount { have: u64, need: usize },
    #[error("guest memory region at {0:#x} has no file the backend could map")]
    MemoryWithoutFile(u64),
    #[error("queue {queue}'s {ring} ({len} bytes at {addr:#x}) is not in one guest memory region")]
    Ring {
        queue: usize,
        ring: &'static str,
        addr: u64,
        len: usize,
    },
    #[error("{queues} queues were set up, the device has {kicks} notification eventfds")]
    QueueEvents { queues: usize, kicks: usize },
    #[error("the connection to the backend was shut down after an earlier failure")]
    Broken,
}

/// The frontend's side of one vhost-user connection.
pub struct VhostUserBackend {
    frontend: Frontend,
    /// The same socket: the device thread watches it for the backend hanging up.
    socket: UnixStream,
    watchdog: Watchdog,
    timeout: Duration,
    /// The virtio features the backend offers (with [`PROTOCOL_FEATURES`]).
    features: u64,
    broken: bool,
}

impl VhostUserBackend {
    /// Connects to the backend listening on `path` (waiting up to [`CONNECT_TIMEOUT`] for
    /// the socket to appear and accept) and negotiates with it for a device of
    /// `num_queues` queues.
    pub fn connect(path: &Path, num_queues: usize) -> Result<Self, VhostUserError> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(VhostUserError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        };
        Self::from_stream(stream, num_queues, REPLY_TIMEOUT)
    }

    /// Negotiates over a connected `stream`, each request under `timeout`.
    pub fn from_stream(
        stream: UnixStream,
        num_queues: usize,
        timeout: Duration,
    ) -> Result<Self, VhostUserError> {
        let socket = stream.try_clone().map_err(VhostUserError::Setup)?;
        let watchdog = Watchdog::spawn(stream.try_clone().map_err(VhostUserError::Setup)?)
            .map_err(VhostUserError::Setup)?;
        let mut backend = Self {
            frontend: Frontend::from_stream(stream, num_queues as u64),
            socket,
            watchdog,
            timeout,
            features: 0,
            broken: false,
        };
        backend.negotiate(num_queues)?;
        Ok(backend)
    }

    fn negotiate(&mut self, num_queues: usize) -> Result<(), VhostUserError> {
        self.request("SET_OWNER", |f| f.set_owner())?;
        let features = self.request("GET_FEATURES", |f| f.get_features())?;
        if features & PROTOCOL_FEATURES == 0 {
            self.fail();
            return Err(VhostUserError::MissingFeature(
                "VHOST_USER_F_PROTOCOL_FEATURES",
            ));
        }
        if features & VIRTIO_F_VERSION_1 == 0 {
            self.fail();
            return Err(VhostUserError::MissingFeature("VIRTIO_F_VERSION_1"));
        }
        let offered = self.request("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
        let acked = offered & WANTED_PROTOCOL_FEATURES;
        self.request("SET_PROTOCOL_FEATURES", |f| f.set_protocol_features(acked))?;
        if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if acked.contains(VhostUserProtocolFeatures::MQ) {
            let have = self.request("GET_QUEUE_NUM", |f| f.get_queue_num())?;
            if have < num_queues as u64 {
                self.fail();
                return Err(VhostUserError::QueueCount {
                    have,
                    need: num_queues,
                });
            }
        }
        self.features = features;
        Ok(())
    }

    /// The virtio features the backend offers (including the vhost-user bit
    /// `VHOST_USER_F_PROTOCOL_FEATURES`, which is not for the driver).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The connection's socket, to watch for the backend hanging up (never read it).
    pub fn socket(&self) -> &UnixStream {
        &self.socket
    }

    /// Whether a request failed, so that the connection is shut down.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Hands the device to the backend: the features the driver `acked`, guest memory,
    /// and for each of `queues` its ring addresses, its notification eventfd (`kicks`,
    /// the same index) and `call`, the eventfd that interrupts the guest.
    pub fn activate(
        &mut self,
        acked: u64,
        mem: &GuestMemory,
        queues: &[Queue],
        kicks: &[EventFd],
        call: &EventFd,
    ) -> Result<(), VhostUserError> {
        if queues.len() != kicks.len() {
            return Err(VhostUserError::QueueEvents {
                queues: queues.len(),
                kicks: kicks.len(),
            });
        }
        let features = (acked & self.features) | PROTOCOL_FEATURES;
        self.request("SET_FEATURES", |f| f.set_features(features))?;
        let regions = memory_table(mem)?;
        self.request("SET_MEM_TABLE", |f| f.set_mem_table(&regions).map(drop))?;
        for (index, (queue, kick)) in queues.iter().zip(kicks).enumerate() {
            let rings = ring_addresses(index, queue, mem)?;
            self.request("SET_VRING_NUM", |f| f.set_vring_num(index, queue.size()))?;
            self.request("SET_VRING_ADDR", |f| f.set_vring_addr(index, &rings))?;
            self.request("SET_VRING_BASE", |f| {
                f.set_vring_base(index, queue.next_avail())
            })?;
            self.request("SET_VRING_CALL", |f| f.set_vring_call(index, call))?;
            self.request("SET_VRING_KICK", |f| f.set_vring_kick(index, kick))?;
        }
        for index in 0..queues.len() {
            self.request("SET_VRING_ENABLE", |f| f.set_vring_enable(index, true))?;
        }
        Ok(())
    }

    /// Stops the backend's work on the first `num_queues` queues (the driver reset the
    /// device): it must not touch the rings, or guest memory through them, any more.
    pub fn deactivate(&mut self, num_queues: usize) -> Result<(), VhostUserError> {
        for index in 0..num_queues {
            self.request("SET_VRING_ENABLE", |f| f.set_vring_enable(index, false))?;
            self.request("GET_VRING_BASE", |f| f.get_vring_base(index))?;
        }
        Ok(())
    }

    /// Runs one request under the deadline. A failure shuts the connection down.
    fn request<T>(
        &mut self,
        request: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, VhostUserError> {
        if self.broken {
            return Err(VhostUserError::Broken);
        }
        self.watchdog.arm(self.timeout);
        let result = f(&mut self.frontend);
        let timed_out = self.watchdog.disarm();
        match result {
            _ if timed_out => {
                self.broken = true;
                Err(VhostUserError::TimedOut {
                    request,
                    timeout: self.timeout,
                })
            }
            Ok(value) => Ok(value),
            Err(source) => {
                self.fail();
                Err(VhostUserError::Request { request, source })
            }
        }
    }

    /// Ends the connection on purpose (the share is removed): the backend sees it closed,
    /// and every later request fails at once.
    pub fn disconnect(&mut self) {
        self.fail();
    }

    /// Shuts the connection down after a failure.
    fn fail(&mut self) {
        self.broken = true;
        self.watchdog.shut_down_now();
    }
}

/// The vhost-user memory table of `mem`: every region with its memfd and offset.
fn memory_table(mem: &GuestMemory) -> Result<Vec<VhostUserMemoryRegionInfo>, VhostUserError> {
    mem.iter()
        .map(|region| {
            let base = region.start_addr().0;
            if region.file_offset().is_none() {
                return Err(VhostUserError::MemoryWithoutFile(base));
            }
            VhostUserMemoryRegionInfo::from_guest_region(region)
                .map_err(|_| VhostUserError::MemoryWithoutFile(base))
        })
        .collect()
}

/// The host (VMM) addresses of queue `index`'s rings, which is how vhost-user passes them;
/// each ring must lie in one memory region, so that the backend finds it contiguous.
fn ring_addresses(
    index: usize,
    queue: &Queue,
    mem: &GuestMemory,
) -> Result<VringConfigData, VhostUserError> {
    let size = usize::from(queue.size());
    let host = |ring: &'static str, addr: u64, len: usize| {
        mem.get_slice(GuestAddress(addr), len)
            .map(|slice| slice.ptr_guard().as_ptr() as u64)
            .map_err(|_| VhostUserError::Ring {
                queue: index,
                ring,
                addr,
                len,
            })
    };
    Ok(VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        // 16-byte descriptors; avail: flags, idx, ring, used_event; used: flags, idx,
        // ring of (id, len), avail_event.
        desc_table_addr: host("descriptor table", queue.desc_table(), 16 * size)?,
        used_ring_addr: host("used ring", queue.used_ring(), 6 + 8 * size)?,
        avail_ring_addr: host("available ring", queue.avail_ring(), 6 + 2 * size)?,
        log_addr: None,
    })
}

/// Enforces the deadline of the request in flight: when it passes, shuts the socket down
/// (both directions), which ends the frontend's wait with an error.
struct Watchdog {
    shared: Arc<WatchShared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct WatchShared {
    state: Mutex<WatchState>,
    wake: Condvar,
}

#[derive(Default)]
struct WatchState {
    deadline: Option<Instant>,
    /// The socket was shut down (a deadline passed, or a failure asked for it).
    fired: bool,
    quit: bool,
}

impl WatchShared {
    fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Watchdog {
    /// Starts the thread, confined to sleeping and shutting the socket down.
    fn spawn(socket: UnixStream) -> std::io::Result<Self> {
        let shared = Arc::new(WatchShared::default());
        let watched = shared.clone();
        let thread = std::thread::Builder::new()
            .name("runvm-vhost-watchdog".into())
            .stack_size(64 << 10)
            .spawn(move || {
                crate::seccomp::enter(crate::seccomp::ThreadKind::VhostWatchdog);
                watch(&watched, &socket)
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    fn arm(&self, timeout: Duration) {
        self.shared.lock().deadline = Some(Instant::now() + timeout);
        self.shared.wake.notify_one();
    }

    /// Ends the deadline; returns whether it had passed (the socket is shut down).
    fn disarm(&self) -> bool {
        let mut state = self.shared.lock();
        state.deadline = None;
        state.fired
    }

    fn shut_down_now(&self) {
        self.shared.lock().deadline = Some(Instant::now());
        self.shared.wake.notify_one();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().quit = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(shared: &WatchShared, socket: &UnixStream) {
    let mut state = shared.lock();
    loop {
        // A shutdown asked for just before the frontend is dropped still happens: the
        // descriptor may live on elsewhere (a clone), and the backend must see the end.
        if state.deadline.is_some_and(|d| Instant::now() >= d) {
            if let Err(e) = socket.shutdown(std::net::Shutdown::Both) {
                error!("vhost-user: cannot shut the backend's connection down: {e}");
            }
            state.fired = true;
            state.deadline = None;
        }
        if state.quit {
            return;
        }
        state = match state.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                shared
                    .wake
                    .wait_timeout(state, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => shared.wake.wait(state).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

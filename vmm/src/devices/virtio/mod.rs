//! Virtio devices, their virtio-mmio transport, and what the devices share.
//!
//! A device implements [`VirtioDevice`] (what the transport needs: features, config
//! space, queues, activation) and `event_manager::MutEventSubscriber` (what the event
//! loop needs: it registers the device's queue eventfds and its backend fds in `init`,
//! and handles them in `process`). The same `Arc<Mutex<Device>>` is given to the
//! [`mmio::MmioTransport`] (vCPU threads) and to the event manager (the VMM thread).
//!
//! Queue notifications arrive on the device's queue [`EventFd`]s, which the VMM registers
//! with KVM as ioeventfds on the transport's `QueueNotify` register. The device signals
//! the guest through [`IrqTrigger`].
//!
//! What every device does the same way lives here, once:
//! - [`state::VirtioState`]: offered and acked features, queue sizes and notification
//!   eventfds, activation (the queue checks) and reset, and the queues, memory and
//!   interrupt of an active device;
//! - [`queue`]: checking a descriptor chain's shape, returning chains on the used ring and
//!   interrupting the guest when the driver wants it;
//! - [`read_config_space`] for config-space reads, [`GuestLog`] for logging what a guest
//!   did without letting it flood the host's logs;
//! - [`fd`]: non-blocking mode and `EINTR` retries for the backends' host descriptors.
//!
//! A vhost-user device ([`fs`]) is the exception to the event loop's part: its backend, a
//! process of its own, reads the queue eventfds and interrupts the guest itself, and the
//! device only watches the connection to it
//! ([`VirtioDevice::interrupts_guest_directly`]).

pub mod block;
pub mod fd;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod slot;
pub mod state;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use log::debug;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use state::VirtioState;

/// Guest memory as every device sees it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// `VIRTIO_F_VERSION_1`: we implement only modern (non-legacy) virtio.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Virtio device IDs.
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Bits of the virtio-mmio `InterruptStatus` register.
pub const INTERRUPT_STATUS_USED_RING: u32 = 0x1;
pub const INTERRUPT_STATUS_CONFIG_CHANGED: u32 = 0x2;

/// Why a device refused to activate.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("driver set up {got} queues, device needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("queue {0} is not valid (addresses outside guest memory or bad size)")]
    InvalidQueue(usize),
    #[error("device backend failed to activate: {0}")]
    Backend(#[source] std::io::Error),
    #[error("vhost-user backend failed to activate: {0}")]
    VhostUser(#[source] fs::VhostUserError),
}

/// The interrupt line of one device: an eventfd registered with KVM as an irqfd on the
/// device's GSI, plus the `InterruptStatus` bits the driver reads and acknowledges.
pub struct IrqTrigger {
    status: AtomicU32,
    evt: EventFd,
}

impl IrqTrigger {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Sets `bits` in `InterruptStatus` and raises the interrupt.
    pub fn trigger(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Sets `InterruptStatus` as a snapshot saved it, without raising the interrupt (the
    /// restored interrupt controller has whatever was pending).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// `InterruptACK`: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd to register as an irqfd (or to read in tests).
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// What the virtio-mmio transport needs from a device.
///
/// A device keeps its features, queues and activation in a [`VirtioState`]
/// ([`VirtioDevice::state`]); the provided methods answer from it. A device overrides
/// `activate` and `reset` when its backend has something to do then, and `write_config`
/// when its config space has writable fields.
pub trait VirtioDevice: Send {
    /// Virtio device ID (`TYPE_*`).
    fn device_type(&self) -> u32;
    /// The device's features, queues and activation.
    fn state(&self) -> &VirtioState;
    fn state_mut(&mut self) -> &mut VirtioState;
    /// Reads device config space; bytes outside the config space read as zero (see
    /// [`read_config_space`]).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; writes outside it or to read-only fields are ignored.
    /// By default the whole config space is read-only.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "{}: {}-byte write to read-only config space at {offset:#x}; ignored",
            self.state().log().device(),
            data.len()
        );
    }
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        self.state().queue_max_sizes()
    }
    /// One eventfd per queue, signalled when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd] {
        self.state().queue_events()
    }
    /// Feature bits the device offers (including [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64 {
        self.state().avail_features()
    }
    /// Feature bits the driver accepted (masked with `avail_features`).
    fn set_acked_features(&mut self, features: u64) {
        self.state_mut().set_acked_features(features);
    }
    /// Called when the driver sets `DRIVER_OK`, with the queues the driver configured.
    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        self.state_mut().activate(mem, queues, irq)
    }
    /// Whether a backend outside the VMM (vhost-user) returns the chains and interrupts
    /// the guest itself, through the interrupt eventfd: the transport then never learns
    /// that the used ring changed, and `InterruptStatus` always shows the used-ring bit
    /// (a virtio-mmio driver ignores an interrupt whose status reads 0).
    fn interrupts_guest_directly(&self) -> bool {
        false
    }
    /// Whether `activate` has succeeded (and no reset happened since).
    fn is_activated(&self) -> bool {
        self.state().is_activated()
    }
    /// Driver wrote 0 to `Status`. Returns false if the device cannot be reset (the
    /// transport then sets `DEVICE_NEEDS_RESET`).
    fn reset(&mut self) -> bool {
        self.state_mut().reset();
        true
    }
}

/// Reads `data.len()` bytes at `offset` of a config space held as bytes: bytes outside
/// `config` (including offsets that overflow) read as zero, whatever the access width.
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// How a device logs what its guest did: the device's name for the log lines, and a budget
/// of warnings, so that a hostile guest cannot flood the host's logs. One per device kind
/// (a `static`), shared by the devices of that kind.
pub struct GuestLog {
    device: &'static str,
    warnings: AtomicU32,
}

impl GuestLog {
    /// Warnings logged at `warn` before the rest go to `debug`.
    const WARNINGS: u32 = 32;

    pub const fn new(device: &'static str) -> Self {
        Self {
            device,
            warnings: AtomicU32::new(0),
        }
    }

    /// The device's name in log lines (`virtio-net`, …).
    pub fn device(&self) -> &'static str {
        self.device
    }

    /// Level for logging something the guest caused: `warn` the first few times, then
    /// `debug`.
    pub fn level(&self) -> log::Level {
        if self.warnings.load(Ordering::Relaxed) < Self::WARNINGS {
            self.warnings.fetch_add(1, Ordering::Relaxed);
            log::Level::Warn
        } else {
            log::Level::Debug
        }
    }
}

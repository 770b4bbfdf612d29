//! Virtio devices and their virtio-mmio transport.
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

pub mod block;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as every device sees it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// `VIRTIO_F_VERSION_1`: we implement only modern (non-legacy) virtio.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Virtio device IDs.
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_VSOCK: u32 = 19;

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
    Backend(String),
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
pub trait VirtioDevice: Send {
    /// Virtio device ID (`TYPE_*`).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// One eventfd per queue, signalled when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd];
    /// Feature bits the device offers (including [`VIRTIO_F_VERSION_1`]).
    fn avail_features(&self) -> u64;
    /// Feature bits the driver accepted (a subset of `avail_features`).
    fn set_acked_features(&mut self, features: u64);
    /// Reads device config space; bytes outside the config space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; writes outside it or to read-only fields are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Called when the driver sets `DRIVER_OK`, with the queues the driver configured.
    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError>;
    /// Whether `activate` has succeeded (and no reset happened since).
    fn is_activated(&self) -> bool;
    /// Driver wrote 0 to `Status`. Returns false if the device cannot be reset (the
    /// transport then sets `DEVICE_NEEDS_RESET`).
    fn reset(&mut self) -> bool {
        false
    }
}

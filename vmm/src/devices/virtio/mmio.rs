//! virtio-mmio transport, version 2 ("modern").
//!
//! Owns the register window of one virtio device: identification registers, feature
//! negotiation, the device status state machine, the per-queue configuration the driver
//! writes, the interrupt status/acknowledge registers and the pass-through of device config
//! space (offset `0x100` and up) to [`VirtioDevice::read_config`] /
//! [`VirtioDevice::write_config`]. When the driver sets `DRIVER_OK` it builds
//! `virtio_queue::Queue`s from that configuration and calls [`VirtioDevice::activate`].
//!
//! Every access comes from the guest and is untrusted: registers accept only aligned 4-byte
//! accesses (anything else is ignored, reads return zeros), writes that are not allowed in the
//! current device status are ignored, and nothing here panics on guest input.

use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, error, warn};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddress;

use super::{
    ActivateError, GuestMemory, IrqTrigger, VirtioDevice, INTERRUPT_STATUS_CONFIG_CHANGED,
    INTERRUPT_STATUS_USED_RING, VIRTIO_F_VERSION_1,
};
use crate::bus::BusDevice;

/// `MagicValue`: little-endian "virt".
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// `Version`: we implement only the modern (version 2) register layout.
pub const MMIO_VERSION: u32 = 2;
/// `VendorID` we report.
pub const VENDOR_ID: u32 = 0;

/// Register offsets, relative to the device's base address.
pub const MAGIC_VALUE_REG: u64 = 0x000;
pub const VERSION_REG: u64 = 0x004;
pub const DEVICE_ID_REG: u64 = 0x008;
pub const VENDOR_ID_REG: u64 = 0x00c;
pub const DEVICE_FEATURES_REG: u64 = 0x010;
pub const DEVICE_FEATURES_SEL_REG: u64 = 0x014;
pub const DRIVER_FEATURES_REG: u64 = 0x020;
pub const DRIVER_FEATURES_SEL_REG: u64 = 0x024;
pub const QUEUE_SEL_REG: u64 = 0x030;
pub const QUEUE_NUM_MAX_REG: u64 = 0x034;
pub const QUEUE_NUM_REG: u64 = 0x038;
pub const QUEUE_READY_REG: u64 = 0x044;
/// `QueueNotify`. The VMM registers each queue's eventfd as a KVM ioeventfd at
/// `base + NOTIFY_REG_OFFSET` with `datamatch` = the queue index.
pub const NOTIFY_REG_OFFSET: u64 = 0x050;
pub const INTERRUPT_STATUS_REG: u64 = 0x060;
pub const INTERRUPT_ACK_REG: u64 = 0x064;
pub const STATUS_REG: u64 = 0x070;
pub const QUEUE_DESC_LOW_REG: u64 = 0x080;
pub const QUEUE_DESC_HIGH_REG: u64 = 0x084;
pub const QUEUE_DRIVER_LOW_REG: u64 = 0x090;
pub const QUEUE_DRIVER_HIGH_REG: u64 = 0x094;
pub const QUEUE_DEVICE_LOW_REG: u64 = 0x0a0;
pub const QUEUE_DEVICE_HIGH_REG: u64 = 0x0a4;
pub const CONFIG_GENERATION_REG: u64 = 0x0fc;
/// Start of the device-specific configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 0x01;
    pub const DRIVER: u32 = 0x02;
    pub const DRIVER_OK: u32 = 0x04;
    pub const FEATURES_OK: u32 = 0x08;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

use status::*;

/// `VIRTIO_RING_F_EVENT_IDX`: when acked, the queues handed to the device use event indices.
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// One queue as a snapshot saves it (virtio-queue's `QueueState`, which is not
/// serializable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<QueueState> for SavedQueue {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl SavedQueue {
    fn queue(&self) -> Result<Queue, virtio_queue::Error> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
    }
}

/// A transport and its device's queues, as a snapshot saves them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    /// The driver's view, as configured through the registers.
    pub queues: Vec<SavedQueue>,
    /// The activated device's queues (where it has got to); empty when not activated.
    pub device_queues: Vec<SavedQueue>,
    pub interrupt_status: u32,
}

/// Why a transport cannot take a snapshot's state.
#[derive(Debug, thiserror::Error)]
pub enum TransportRestoreError {
    #[error("the snapshot's device {saved} is not this device {ours}")]
    DeviceType { saved: u32, ours: u32 },
    #[error("the snapshot's queue {0} is invalid for this device")]
    Queue(usize),
    #[error("the device refused the snapshot's queues: {0}")]
    Activate(#[from] ActivateError),
}

/// The virtio-mmio register window of one device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    irq: Arc<IrqTrigger>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    /// What the driver wrote to `DriverFeatures`, already masked with the offered features.
    driver_features: u64,
    queue_sel: u32,
    /// The driver's view of each queue, as configured through the queue registers.
    queues: Vec<Queue>,
    /// Bits `InterruptStatus` always shows: the used-ring bit for a device whose backend
    /// interrupts the guest itself ([`VirtioDevice::interrupts_guest_directly`]).
    interrupt_status_always: u32,
}

/// Locks the device; a poisoned lock (a panic elsewhere) is not a reason to panic here too.
fn lock(device: &Mutex<dyn VirtioDevice>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

impl MmioTransport {
    /// Creates the transport for `device` and its interrupt line. Fails if the eventfd cannot
    /// be created or the device reports an invalid maximum queue size (not a power of two,
    /// zero, or above 32768).
    pub fn new(mem: GuestMemory, device: Arc<Mutex<dyn VirtioDevice>>) -> std::io::Result<Self> {
        let interrupt_status_always = if lock(&device).interrupts_guest_directly() {
            INTERRUPT_STATUS_USED_RING
        } else {
            0
        };
        let queues = lock(&device)
            .queue_max_sizes()
            .iter()
            .map(|&max| {
                Queue::new(max).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("invalid maximum queue size {max}: {e}"),
                    )
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            device,
            mem,
            irq: Arc::new(IrqTrigger::new()?),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            interrupt_status_always,
        })
    }

    /// The device's interrupt line (register its eventfd as a KVM irqfd).
    pub fn interrupt(&self) -> Arc<IrqTrigger> {
        self.irq.clone()
    }

    /// The device behind this transport.
    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        self.device.clone()
    }

    /// The current value of the `Status` register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The transport's and its device's virtio state, for a snapshot (the VM stopped).
    pub fn save_state(&self) -> TransportState {
        let device = lock(&self.device);
        let device_queues = device
            .state()
            .active()
            .map(|a| a.queues.iter().map(|q| q.state().into()).collect())
            .unwrap_or_default();
        TransportState {
            device_type: device.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
            device_queues,
            interrupt_status: self.irq.status(),
        }
    }

    /// Puts a new transport and its fresh device where a snapshot's were: the registers,
    /// the negotiated features, and, for a device the driver had activated, the device
    /// activated again with its queues where they had got to.
    pub fn restore_state(&mut self, state: &TransportState) -> Result<(), TransportRestoreError> {
        let ours = lock(&self.device).device_type();
        if state.device_type != ours {
            return Err(TransportRestoreError::DeviceType {
                saved: state.device_type,
                ours,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(TransportRestoreError::Queue(self.queues.len()));
        }
        let build = |saved: &[SavedQueue]| -> Result<Vec<Queue>, TransportRestoreError> {
            saved
                .iter()
                .enumerate()
                .map(|(i, q)| q.queue().map_err(|_| TransportRestoreError::Queue(i)))
                .collect()
        };
        self.queues = build(&state.queues)?;
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features & lock(&self.device).avail_features();
        self.queue_sel = state.queue_sel;
        if self.has(FEATURES_OK) {
            lock(&self.device).set_acked_features(self.driver_features);
        }
        if self.has(DRIVER_OK) && !state.device_queues.is_empty() {
            let queues = build(&state.device_queues)?;
            if let Some(i) = queues.iter().position(|q| !q.is_valid(&self.mem)) {
                return Err(TransportRestoreError::Queue(i));
            }
            lock(&self.device).activate(self.mem.clone(), queues, self.irq.clone())?;
        }
        self.irq.set_status(state.interrupt_status);
        Ok(())
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    /// Queue configuration is allowed between `FEATURES_OK` and `DRIVER_OK`.
    fn queue_config_allowed(&self) -> bool {
        self.has(FEATURES_OK) && self.status & (DRIVER_OK | FAILED | DEVICE_NEEDS_RESET) == 0
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// Applies `f` to the selected queue if queue configuration is allowed now.
    fn update_queue(&mut self, reg: u64, f: impl FnOnce(&mut Queue)) {
        if !self.queue_config_allowed() {
            debug!(
                "virtio-mmio: queue register {reg:#x} written in status {:#x}; ignored",
                self.status
            );
            return;
        }
        match self.queues.get_mut(self.queue_sel as usize) {
            Some(q) => f(q),
            None => debug!(
                "virtio-mmio: queue {} does not exist; ignored",
                self.queue_sel
            ),
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            MAGIC_VALUE_REG => MMIO_MAGIC_VALUE,
            VERSION_REG => MMIO_VERSION,
            DEVICE_ID_REG => lock(&self.device).device_type(),
            VENDOR_ID_REG => VENDOR_ID,
            DEVICE_FEATURES_REG => {
                let features = lock(&self.device).avail_features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            QUEUE_NUM_MAX_REG => self.selected_queue().map_or(0, |q| q.max_size().into()),
            QUEUE_READY_REG => self.selected_queue().map_or(0, |q| q.ready().into()),
            INTERRUPT_STATUS_REG => self.irq.status() | self.interrupt_status_always,
            STATUS_REG => self.status,
            // The config space of our devices never changes behind the driver's back.
            CONFIG_GENERATION_REG => 0,
            _ => {
                debug!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            DEVICE_FEATURES_SEL_REG => self.device_features_sel = v,
            DRIVER_FEATURES_SEL_REG => self.driver_features_sel = v,
            DRIVER_FEATURES_REG => self.write_driver_features(v),
            QUEUE_SEL_REG => self.queue_sel = v,
            QUEUE_NUM_REG => self.update_queue(offset, |q| match u16::try_from(v) {
                Ok(size) if q.try_set_size(size).is_ok() => {}
                _ => debug!("virtio-mmio: invalid queue size {v}; ignored"),
            }),
            QUEUE_READY_REG => self.update_queue(offset, |q| q.set_ready(v == 1)),
            QUEUE_DESC_LOW_REG | QUEUE_DESC_HIGH_REG => self.update_queue(offset, |q| {
                let addr = GuestAddress(set_half(q.desc_table(), offset, v));
                if q.try_set_desc_table_address(addr).is_err() {
                    debug!("virtio-mmio: misaligned descriptor table {addr:?}; ignored");
                }
            }),
            QUEUE_DRIVER_LOW_REG | QUEUE_DRIVER_HIGH_REG => self.update_queue(offset, |q| {
                let addr = GuestAddress(set_half(q.avail_ring(), offset, v));
                if q.try_set_avail_ring_address(addr).is_err() {
                    debug!("virtio-mmio: misaligned available ring {addr:?}; ignored");
                }
            }),
            QUEUE_DEVICE_LOW_REG | QUEUE_DEVICE_HIGH_REG => self.update_queue(offset, |q| {
                let addr = GuestAddress(set_half(q.used_ring(), offset, v));
                if q.try_set_used_ring_address(addr).is_err() {
                    debug!("virtio-mmio: misaligned used ring {addr:?}; ignored");
                }
            }),
            NOTIFY_REG_OFFSET => self.notify(v),
            INTERRUPT_ACK_REG => self.irq.ack(v),
            STATUS_REG => self.write_status(v),
            _ => debug!("virtio-mmio: write to read-only or unknown register {offset:#x}"),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if !self.has(DRIVER) || self.status & (FEATURES_OK | FAILED) != 0 {
            debug!(
                "virtio-mmio: DriverFeatures written in status {:#x}; ignored",
                self.status
            );
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            sel => {
                debug!("virtio-mmio: DriverFeaturesSel {sel} has no features; ignored");
                return;
            }
        };
        let offered = lock(&self.device).avail_features();
        let word = u64::from(v) << shift;
        let mask = 0xffff_ffffu64 << shift;
        if word & !offered != 0 {
            warn!(
                "virtio-mmio: driver acked features {:#x} the device did not offer; dropped",
                word & !offered
            );
        }
        self.driver_features = (self.driver_features & !mask) | (word & offered);
    }

    fn notify(&self, queue: u32) {
        let device = lock(&self.device);
        match device.queue_events().get(queue as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    error!("virtio-mmio: failed to signal queue {queue}: {e}");
                }
            }
            None => debug!("virtio-mmio: notify for nonexistent queue {queue}; ignored"),
        }
    }

    /// The device status state machine (virtio 1.x, 3.1.1): the driver adds one bit after
    /// the other; 0 resets; `FAILED` may be set at any time.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET belongs to the device; a driver writing back what it read is fine.
        let value = value & !DEVICE_NEEDS_RESET;
        let current = self.status & !DEVICE_NEEDS_RESET;
        if value & current != current {
            debug!("virtio-mmio: status {current:#x} -> {value:#x} clears bits; ignored");
            return;
        }
        if value & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        if self.status & (FAILED | DEVICE_NEEDS_RESET) != 0 {
            debug!("virtio-mmio: status write {value:#x} while failed; ignored");
            return;
        }
        let added = value & !current;
        for bit in [ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK] {
            if added & bit == 0 {
                continue;
            }
            let allowed = match bit {
                ACKNOWLEDGE => true,
                DRIVER => self.has(ACKNOWLEDGE),
                FEATURES_OK => self.has(DRIVER) && self.accept_features(),
                _ => self.has(FEATURES_OK),
            };
            if !allowed {
                debug!("virtio-mmio: status bit {bit:#x} refused in status {current:#x}");
                return;
            }
            self.status |= bit;
            if bit == DRIVER_OK {
                self.activate();
            }
        }
        if added & !(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK) != 0 {
            debug!("virtio-mmio: unknown status bits in {value:#x}; ignored");
        }
    }

    /// `FEATURES_OK`: hands the negotiated features to the device, or refuses them (the
    /// driver then sees `FEATURES_OK` cleared). We support only modern drivers.
    fn accept_features(&mut self) -> bool {
        if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
            warn!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1; features refused");
            return false;
        }
        lock(&self.device).set_acked_features(self.driver_features);
        true
    }

    /// Builds the queues for `activate`: the ready queues, which must be the first ones (the
    /// device sees queue `i` at index `i`), each with valid addresses and size.
    fn build_queues(&self) -> Result<Vec<Queue>, ActivateError> {
        let ready = self.queues.iter().take_while(|q| q.ready()).count();
        if let Some(gap) = self.queues.iter().skip(ready).position(|q| q.ready()) {
            return Err(ActivateError::InvalidQueue(ready + gap));
        }
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        self.queues[..ready]
            .iter()
            .enumerate()
            .map(|(i, q)| {
                if !q.is_valid(&self.mem) {
                    return Err(ActivateError::InvalidQueue(i));
                }
                let mut q =
                    Queue::try_from(q.state()).map_err(|_| ActivateError::InvalidQueue(i))?;
                q.set_event_idx(event_idx);
                Ok(q)
            })
            .collect()
    }

    /// `DRIVER_OK`: activates the device. On failure the device needs a reset: we say so in
    /// the status and raise a config-change interrupt (virtio 1.x, 2.1.2).
    fn activate(&mut self) {
        let result = self.build_queues().and_then(|queues| {
            let mut device = lock(&self.device);
            if device.is_activated() {
                return Ok(());
            }
            device.activate(self.mem.clone(), queues, self.irq.clone())
        });
        if let Err(e) = result {
            error!("virtio-mmio: device activation failed: {e}");
            self.needs_reset();
        }
    }

    fn needs_reset(&mut self) {
        self.status |= DEVICE_NEEDS_RESET;
        if let Err(e) = self.irq.trigger(INTERRUPT_STATUS_CONFIG_CHANGED) {
            error!("virtio-mmio: failed to raise config interrupt: {e}");
        }
    }

    /// Driver wrote 0 to `Status`: back to the initial state, if the device agrees.
    fn reset(&mut self) {
        {
            let mut device = lock(&self.device);
            if device.is_activated() && !device.reset() {
                drop(device);
                error!("virtio-mmio: device cannot be reset");
                self.needs_reset();
                return;
            }
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.queues.iter_mut().for_each(QueueT::reset);
        self.irq.ack(u32::MAX);
    }
}

/// Replaces the low or high half of a 64-bit queue address, depending on the register.
fn set_half(old: u64, reg: u64, v: u32) -> u64 {
    if reg & 0x4 == 0 {
        (old & !0xffff_ffff) | u64::from(v)
    } else {
        (old & 0xffff_ffff) | (u64::from(v) << 32)
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            debug!(
                "virtio-mmio: {}-byte register read at {offset:#x} ignored",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset.is_multiple_of(4) => {
                self.write_reg(offset, u32::from_le_bytes(bytes))
            }
            _ => debug!(
                "virtio-mmio: {}-byte register write at {offset:#x} ignored",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::state::VirtioState;
    use crate::devices::virtio::{read_config_space, GuestLog};
    use vmm_sys_util::eventfd::EventFd;

    const MOCK_FEATURE: u64 = 1 << 3;

    static MOCK_LOG: GuestLog = GuestLog::new("mock");

    /// A device with `nqueues` queues of 16 and a writable 8-byte config space, whose
    /// activation can be made to fail and whose reset can be refused.
    struct MockDevice {
        virtio: VirtioState,
        config: [u8; 8],
        fail_activate: bool,
        can_reset: bool,
        resets: usize,
        direct_interrupts: bool,
    }

    impl MockDevice {
        fn new(nqueues: usize) -> Self {
            let features = VIRTIO_F_VERSION_1 | MOCK_FEATURE;
            Self {
                virtio: VirtioState::new(&MOCK_LOG, features, &vec![16; nqueues]).unwrap(),
                config: [1, 2, 3, 4, 5, 6, 7, 8],
                fail_activate: false,
                can_reset: true,
                resets: 0,
                direct_interrupts: false,
            }
        }

        fn acked(&self) -> u64 {
            self.virtio.acked_features()
        }

        fn activated(&self) -> bool {
            self.virtio.is_activated()
        }

        /// The queues the device was activated with.
        fn queues(&self) -> &[Queue] {
            self.virtio.active().map_or(&[], |a| &a.queues)
        }

        fn events(&self) -> &[EventFd] {
            self.virtio.queue_events()
        }
    }

    impl VirtioDevice for MockDevice {
        fn device_type(&self) -> u32 {
            super::super::TYPE_BLOCK
        }
        fn state(&self) -> &VirtioState {
            &self.virtio
        }
        fn state_mut(&mut self) -> &mut VirtioState {
            &mut self.virtio
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_space(&self.config, offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                if let Some(c) = self.config.get_mut(offset as usize + i) {
                    *c = *b;
                }
            }
        }
        fn activate(
            &mut self,
            mem: GuestMemory,
            queues: Vec<Queue>,
            irq: Arc<IrqTrigger>,
        ) -> Result<(), ActivateError> {
            if self.fail_activate {
                return Err(ActivateError::Backend(std::io::Error::other("mock")));
            }
            self.virtio.activate(mem, queues, irq)
        }
        fn interrupts_guest_directly(&self) -> bool {
            self.direct_interrupts
        }
        fn reset(&mut self) -> bool {
            self.resets += 1;
            if self.can_reset {
                self.virtio.reset();
            }
            self.can_reset
        }
    }

    struct Fixture {
        transport: MmioTransport,
        device: Arc<Mutex<MockDevice>>,
    }

    fn fixture(nqueues: usize) -> Fixture {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let device = Arc::new(Mutex::new(MockDevice::new(nqueues)));
        let transport = MmioTransport::new(mem, device.clone()).unwrap();
        Fixture { transport, device }
    }

    impl Fixture {
        fn r(&mut self, offset: u64) -> u32 {
            let mut b = [0xffu8; 4];
            self.transport.read(offset, &mut b);
            u32::from_le_bytes(b)
        }
        fn w(&mut self, offset: u64, v: u32) {
            self.transport.write(offset, &v.to_le_bytes());
        }
        fn status(&mut self) -> u32 {
            self.r(STATUS_REG)
        }
        fn dev(&self) -> MutexGuard<'_, MockDevice> {
            self.device.lock().unwrap()
        }

        /// Reset, ACKNOWLEDGE, DRIVER, negotiate VERSION_1 | MOCK_FEATURE, FEATURES_OK.
        fn negotiate(&mut self) {
            self.w(STATUS_REG, 0);
            self.w(STATUS_REG, ACKNOWLEDGE);
            self.w(STATUS_REG, ACKNOWLEDGE | DRIVER);
            self.w(DRIVER_FEATURES_SEL_REG, 0);
            self.w(DRIVER_FEATURES_REG, MOCK_FEATURE as u32);
            self.w(DRIVER_FEATURES_SEL_REG, 1);
            self.w(DRIVER_FEATURES_REG, (VIRTIO_F_VERSION_1 >> 32) as u32);
            self.w(STATUS_REG, ACKNOWLEDGE | DRIVER | FEATURES_OK);
            assert_eq!(self.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
        }

        /// Configures queue `i` with size 16 at `base` (descriptors, then rings).
        fn setup_queue(&mut self, i: u32, base: u64) {
            self.w(QUEUE_SEL_REG, i);
            assert_eq!(self.r(QUEUE_READY_REG), 0);
            assert_eq!(self.r(QUEUE_NUM_MAX_REG), 16);
            self.w(QUEUE_NUM_REG, 16);
            self.w(QUEUE_DESC_LOW_REG, base as u32);
            self.w(QUEUE_DESC_HIGH_REG, (base >> 32) as u32);
            self.w(QUEUE_DRIVER_LOW_REG, (base + 0x100) as u32);
            self.w(QUEUE_DRIVER_HIGH_REG, 0);
            self.w(QUEUE_DEVICE_LOW_REG, (base + 0x200) as u32);
            self.w(QUEUE_DEVICE_HIGH_REG, 0);
            self.w(QUEUE_READY_REG, 1);
            assert_eq!(self.r(QUEUE_READY_REG), 1);
        }

        fn driver_ok(&mut self) {
            self.w(STATUS_REG, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        }
    }

    #[test]
    fn identification_registers() {
        let mut f = fixture(1);
        assert_eq!(f.r(MAGIC_VALUE_REG), 0x7472_6976);
        assert_eq!(f.r(VERSION_REG), 2);
        assert_eq!(f.r(DEVICE_ID_REG), super::super::TYPE_BLOCK);
        assert_eq!(f.r(VENDOR_ID_REG), VENDOR_ID);
        assert_eq!(f.r(CONFIG_GENERATION_REG), 0);
        assert_eq!(f.status(), 0);
    }

    #[test]
    fn full_handshake_activates_device_with_configured_queues() {
        let mut f = fixture(2);
        f.w(STATUS_REG, 0);
        f.w(STATUS_REG, ACKNOWLEDGE);
        f.w(STATUS_REG, ACKNOWLEDGE | DRIVER);
        f.w(DEVICE_FEATURES_SEL_REG, 0);
        assert_eq!(f.r(DEVICE_FEATURES_REG), MOCK_FEATURE as u32);
        f.w(DEVICE_FEATURES_SEL_REG, 1);
        assert_eq!(f.r(DEVICE_FEATURES_REG), 1);
        f.w(DEVICE_FEATURES_SEL_REG, 2);
        assert_eq!(f.r(DEVICE_FEATURES_REG), 0);
        f.w(DRIVER_FEATURES_SEL_REG, 1);
        f.w(DRIVER_FEATURES_REG, 1);
        f.w(STATUS_REG, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(f.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(f.dev().acked(), VIRTIO_F_VERSION_1);

        f.setup_queue(0, 0x1000);
        f.setup_queue(1, 0x8000);
        f.driver_ok();
        assert_eq!(f.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        let dev = f.dev();
        assert!(dev.activated());
        assert_eq!(dev.queues().len(), 2);
        let q = &dev.queues()[0];
        assert!(q.ready());
        assert_eq!(q.size(), 16);
        assert_eq!(q.desc_table(), 0x1000);
        assert_eq!(q.avail_ring(), 0x1100);
        assert_eq!(q.used_ring(), 0x1200);
        assert!(!q.event_idx_enabled());
    }

    #[test]
    fn features_not_offered_are_dropped() {
        let mut f = fixture(1);
        f.w(STATUS_REG, ACKNOWLEDGE);
        // Too early: DRIVER is not set yet.
        f.w(DRIVER_FEATURES_REG, MOCK_FEATURE as u32);
        f.w(STATUS_REG, ACKNOWLEDGE | DRIVER);
        f.w(DRIVER_FEATURES_SEL_REG, 0);
        f.w(DRIVER_FEATURES_REG, u32::MAX);
        f.w(DRIVER_FEATURES_SEL_REG, 1);
        f.w(DRIVER_FEATURES_REG, u32::MAX);
        // A selector without features is ignored.
        f.w(DRIVER_FEATURES_SEL_REG, 7);
        f.w(DRIVER_FEATURES_REG, u32::MAX);
        f.w(STATUS_REG, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(f.status() & FEATURES_OK, FEATURES_OK);
        assert_eq!(f.dev().acked(), VIRTIO_F_VERSION_1 | MOCK_FEATURE);
        // Too late: FEATURES_OK is set.
        f.w(DRIVER_FEATURES_SEL_REG, 0);
        f.w(DRIVER_FEATURES_REG, 0);
        assert_eq!(
            f.transport.driver_features,
            VIRTIO_F_VERSION_1 | MOCK_FEATURE
        );
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let mut f = fixture(1);
        f.w(STATUS_REG, ACKNOWLEDGE);
        f.w(STATUS_REG, ACKNOWLEDGE | DRIVER);
        f.w(DRIVER_FEATURES_REG, MOCK_FEATURE as u32);
        f.w(STATUS_REG, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(f.status(), ACKNOWLEDGE | DRIVER);
        assert_eq!(f.dev().acked(), 0);
        // And DRIVER_OK cannot follow.
        f.driver_ok();
        assert_eq!(f.status(), ACKNOWLEDGE | DRIVER);
        assert!(!f.dev().activated());
    }

    #[test]
    fn status_bits_must_be_set_in_order() {
        let mut f = fixture(1);
        f.w(STATUS_REG, DRIVER);
        assert_eq!(f.status(), 0);
        f.w(STATUS_REG, ACKNOWLEDGE | DRIVER_OK);
        assert_eq!(f.status(), ACKNOWLEDGE);
        f.w(STATUS_REG, ACKNOWLEDGE | DRIVER);
        // Clearing a bit (other than by reset) is ignored.
        f.w(STATUS_REG, DRIVER);
        assert_eq!(f.status(), ACKNOWLEDGE | DRIVER);
        // The driver may not set DEVICE_NEEDS_RESET; unknown bits are ignored.
        f.w(STATUS_REG, ACKNOWLEDGE | DRIVER | DEVICE_NEEDS_RESET | 0x10);
        assert_eq!(f.status(), ACKNOWLEDGE | DRIVER);
        f.w(STATUS_REG, ACKNOWLEDGE | DRIVER | FAILED);
        assert_eq!(f.status(), ACKNOWLEDGE | DRIVER | FAILED);
        // Once failed, only a reset helps.
        f.w(DRIVER_FEATURES_SEL_REG, 1);
        f.w(DRIVER_FEATURES_REG, 1);
        f.w(STATUS_REG, ACKNOWLEDGE | DRIVER | FAILED | FEATURES_OK);
        assert_eq!(f.status(), ACKNOWLEDGE | DRIVER | FAILED);
        f.w(STATUS_REG, 0);
        assert_eq!(f.status(), 0);
    }

    #[test]
    fn queue_registers_writable_only_between_features_ok_and_driver_ok() {
        let mut f = fixture(1);
        f.w(STATUS_REG, ACKNOWLEDGE);
        f.w(STATUS_REG, ACKNOWLEDGE | DRIVER);
        f.w(QUEUE_SEL_REG, 0);
        f.w(QUEUE_NUM_REG, 8);
        f.w(QUEUE_DESC_LOW_REG, 0x1000);
        f.w(QUEUE_READY_REG, 1);
        assert_eq!(f.r(QUEUE_READY_REG), 0);
        assert_eq!(f.transport.queues[0].size(), 16);
        assert_eq!(f.transport.queues[0].desc_table(), 0);

        f.w(DRIVER_FEATURES_SEL_REG, 1);
        f.w(DRIVER_FEATURES_REG, 1);
        f.w(STATUS_REG, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        // Invalid sizes (not a power of two, above the maximum, zero, > u16) are ignored.
        for bad in [3, 32, 0, 0x1_0010] {
            f.w(QUEUE_NUM_REG, bad);
            assert_eq!(f.transport.queues[0].size(), 16);
        }
        f.w(QUEUE_NUM_REG, 8);
        assert_eq!(f.transport.queues[0].size(), 8);
        // Misaligned ring addresses are ignored.
        f.w(QUEUE_DESC_LOW_REG, 0x1008);
        assert_eq!(f.transport.queues[0].desc_table(), 0);
        f.w(QUEUE_DESC_LOW_REG, 0x1000);
        f.w(QUEUE_DESC_HIGH_REG, 0x1);
        assert_eq!(f.transport.queues[0].desc_table(), 0x1_0000_1000);
        f.w(QUEUE_DESC_HIGH_REG, 0);
        f.w(QUEUE_DRIVER_LOW_REG, 0x2000);
        f.w(QUEUE_DEVICE_LOW_REG, 0x3000);
        f.w(QUEUE_READY_REG, 1);
        // A nonexistent queue: QueueNumMax reads 0, writes are ignored.
        f.w(QUEUE_SEL_REG, 1);
        assert_eq!(f.r(QUEUE_NUM_MAX_REG), 0);
        assert_eq!(f.r(QUEUE_READY_REG), 0);
        f.w(QUEUE_NUM_REG, 8);
        f.w(QUEUE_READY_REG, 1);
        f.w(QUEUE_SEL_REG, u32::MAX);
        f.w(QUEUE_READY_REG, 1);

        f.driver_ok();
        assert!(f.dev().activated());
        assert_eq!(f.dev().queues()[0].size(), 8);
        // After DRIVER_OK the queue configuration is frozen.
        f.w(QUEUE_SEL_REG, 0);
        f.w(QUEUE_NUM_REG, 4);
        f.w(QUEUE_READY_REG, 0);
        assert_eq!(f.transport.queues[0].size(), 8);
        assert_eq!(f.r(QUEUE_READY_REG), 1);
    }

    #[test]
    fn activation_failure_sets_needs_reset_and_raises_config_interrupt() {
        let mut f = fixture(1);
        f.dev().fail_activate = true;
        f.negotiate();
        f.setup_queue(0, 0x1000);
        f.driver_ok();
        let s = f.status();
        assert_eq!(s & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
        assert_eq!(
            f.r(INTERRUPT_STATUS_REG) & INTERRUPT_STATUS_CONFIG_CHANGED,
            INTERRUPT_STATUS_CONFIG_CHANGED
        );
        assert_eq!(f.transport.interrupt().eventfd().read().unwrap(), 1);
        assert!(!f.dev().activated());
        // Writing back the status with NEEDS_RESET does nothing; a reset recovers.
        f.w(STATUS_REG, s);
        assert_eq!(f.status(), s);
        f.w(STATUS_REG, 0);
        assert_eq!(f.status(), 0);
        assert_eq!(f.r(INTERRUPT_STATUS_REG), 0);
        f.dev().fail_activate = false;
        f.negotiate();
        f.setup_queue(0, 0x1000);
        f.driver_ok();
        assert!(f.dev().activated());
        assert_eq!(f.status() & DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn invalid_queues_fail_activation() {
        // Rings outside guest memory.
        let mut f = fixture(1);
        f.negotiate();
        f.setup_queue(0, 0x10_0000);
        f.driver_ok();
        assert_eq!(f.status() & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
        assert!(!f.dev().activated());

        // A gap: queue 1 ready but queue 0 not.
        let mut f = fixture(2);
        f.negotiate();
        f.setup_queue(1, 0x1000);
        f.driver_ok();
        assert_eq!(f.status() & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
        assert!(!f.dev().activated());

        // Only a prefix ready: the device decides (the mock wants all of them).
        let mut f = fixture(2);
        f.negotiate();
        f.setup_queue(0, 0x1000);
        f.driver_ok();
        assert_eq!(f.status() & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    }

    #[test]
    fn reset_returns_to_initial_state() {
        let mut f = fixture(1);
        f.negotiate();
        f.setup_queue(0, 0x1000);
        f.driver_ok();
        assert!(f.dev().activated());
        f.transport.interrupt().trigger(1).unwrap();
        f.w(STATUS_REG, 0);
        assert_eq!(f.status(), 0);
        assert_eq!(f.dev().resets, 1);
        assert!(!f.dev().activated());
        assert_eq!(f.r(INTERRUPT_STATUS_REG), 0);
        f.w(QUEUE_SEL_REG, 0);
        assert_eq!(f.r(QUEUE_READY_REG), 0);
        assert_eq!(f.transport.queues[0].desc_table(), 0);
        assert_eq!(f.transport.driver_features, 0);
        // A reset before activation does not bother the device.
        f.w(STATUS_REG, 0);
        assert_eq!(f.dev().resets, 1);
        // The device can be brought up again.
        f.negotiate();
        f.setup_queue(0, 0x1000);
        f.driver_ok();
        assert!(f.dev().activated());
    }

    #[test]
    fn device_that_cannot_reset_needs_reset() {
        let mut f = fixture(1);
        f.dev().can_reset = false;
        f.negotiate();
        f.setup_queue(0, 0x1000);
        f.driver_ok();
        f.w(STATUS_REG, 0);
        assert_eq!(f.status() & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
        assert!(f.dev().activated());
    }

    #[test]
    fn notify_signals_queue_eventfd() {
        let mut f = fixture(2);
        f.w(NOTIFY_REG_OFFSET, 1);
        assert_eq!(f.dev().events()[1].read().unwrap(), 1);
        assert!(f.dev().events()[0].read().is_err());
        f.w(NOTIFY_REG_OFFSET, 2);
        f.w(NOTIFY_REG_OFFSET, u32::MAX);
        assert!(f.dev().events()[0].read().is_err());
        assert!(f.dev().events()[1].read().is_err());
    }

    #[test]
    fn interrupt_status_and_ack() {
        let mut f = fixture(1);
        let irq = f.transport.interrupt();
        irq.trigger(INTERRUPT_STATUS_CONFIG_CHANGED | 1).unwrap();
        assert_eq!(f.r(INTERRUPT_STATUS_REG), 3);
        f.w(INTERRUPT_ACK_REG, 1);
        assert_eq!(f.r(INTERRUPT_STATUS_REG), 2);
        // InterruptStatus is read-only.
        f.w(INTERRUPT_STATUS_REG, 0);
        assert_eq!(f.r(INTERRUPT_STATUS_REG), 2);
    }

    #[test]
    fn interrupt_status_of_a_device_whose_backend_interrupts_the_guest() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut mock = MockDevice::new(1);
        mock.direct_interrupts = true;
        let device = Arc::new(Mutex::new(mock));
        let transport = MmioTransport::new(mem, device.clone()).unwrap();
        let mut f = Fixture { transport, device };
        // The transport never sees the backend's interrupts: the used-ring bit is always
        // there for the driver to find.
        assert_eq!(f.r(INTERRUPT_STATUS_REG), INTERRUPT_STATUS_USED_RING);
        f.w(INTERRUPT_ACK_REG, INTERRUPT_STATUS_USED_RING);
        assert_eq!(f.r(INTERRUPT_STATUS_REG), INTERRUPT_STATUS_USED_RING);
        let irq = f.transport.interrupt();
        irq.trigger(INTERRUPT_STATUS_CONFIG_CHANGED).unwrap();
        assert_eq!(f.r(INTERRUPT_STATUS_REG), 3);
        f.w(INTERRUPT_ACK_REG, 3);
        assert_eq!(f.r(INTERRUPT_STATUS_REG), INTERRUPT_STATUS_USED_RING);
        // Other devices show only what is pending.
        assert_eq!(fixture(1).r(INTERRUPT_STATUS_REG), 0);
    }

    #[test]
    fn bad_offsets_and_sizes() {
        let mut f = fixture(1);
        // Non-4-byte or misaligned register reads return zeros.
        for (offset, len) in [(0u64, 1usize), (0, 2), (0, 8), (1, 4), (2, 4), (0xfe, 2)] {
            let mut b = vec![0xffu8; len];
            f.transport.read(offset, &mut b);
            assert!(b.iter().all(|&x| x == 0), "{offset:#x}/{len}");
        }
        let mut empty = [];
        f.transport.read(0, &mut empty);
        // Unknown and write-only registers read as zero.
        for offset in [
            0x18,
            0x40,
            QUEUE_NUM_REG,
            QUEUE_DESC_LOW_REG,
            NOTIFY_REG_OFFSET,
            0xf8,
        ] {
            assert_eq!(f.r(offset), 0, "{offset:#x}");
        }
        // Odd-sized or misaligned writes are ignored.
        f.transport.write(STATUS_REG, &[1]);
        f.transport.write(STATUS_REG, &[1, 0, 0, 0, 0, 0, 0, 0]);
        f.transport.write(STATUS_REG + 1, &[1, 0, 0, 0]);
        f.transport.write(STATUS_REG, &[]);
        assert_eq!(f.status(), 0);
        // Writes to read-only and unknown registers are ignored.
        f.w(MAGIC_VALUE_REG, 0);
        f.w(0x0a8, 1);
        f.w(0xffc, 1);
        assert_eq!(f.r(MAGIC_VALUE_REG), MMIO_MAGIC_VALUE);
    }

    #[test]
    fn config_space_any_width() {
        let mut f = fixture(1);
        let mut b = [0u8; 1];
        f.transport.read(CONFIG_SPACE_OFFSET + 2, &mut b);
        assert_eq!(b, [3]);
        let mut b = [0u8; 2];
        f.transport.read(CONFIG_SPACE_OFFSET + 7, &mut b);
        assert_eq!(b, [8, 0]);
        let mut b = [0u8; 8];
        f.transport.read(CONFIG_SPACE_OFFSET, &mut b);
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);
        f.transport.write(CONFIG_SPACE_OFFSET + 1, &[0xaa, 0xbb]);
        f.transport.read(CONFIG_SPACE_OFFSET, &mut b);
        assert_eq!(b, [1, 0xaa, 0xbb, 4, 5, 6, 7, 8]);
        let mut b = [0xffu8; 4];
        f.transport.read(u64::MAX - 1, &mut b);
        assert_eq!(b, [0; 4]);
    }
}

//! A spare virtio-mmio slot: a register window declared to the guest at boot that holds
//! a device only some of the time.
//!
//! Empty, it answers like a virtio-mmio placeholder: `MagicValue` and `Version` are
//! valid, `DeviceID` reads 0 and everything else reads 0; writes are ignored. Linux's
//! `virtio_mmio` driver stops probing such a device (its probe returns `-ENODEV`) and
//! leaves the platform device unbound. Filled, every access goes to the device's
//! [`MmioTransport`], and the guest can probe the platform device again (a write of its
//! name to `/sys/bus/platform/drivers/virtio-mmio/bind`). The VMM fills and empties the
//! slot while the guest runs ([`crate::fs_slots`]); the guest's accesses come from vCPU
//! threads, under the slot's lock.

use log::debug;

use super::mmio::{MmioTransport, MAGIC_VALUE_REG, MMIO_MAGIC_VALUE, MMIO_VERSION, VERSION_REG};
use crate::bus::BusDevice;

/// One spare slot on the MMIO bus, empty or holding a device's transport.
#[derive(Default)]
pub struct MmioSlot {
    transport: Option<MmioTransport>,
}

impl MmioSlot {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a device is in the slot.
    pub fn is_filled(&self) -> bool {
        self.transport.is_some()
    }

    /// Puts `transport` in the slot; gives it back if the slot is taken.
    pub fn fill(&mut self, transport: MmioTransport) -> Result<(), MmioTransport> {
        if self.transport.is_some() {
            return Err(transport);
        }
        self.transport = Some(transport);
        Ok(())
    }

    /// Takes the device's transport out: the slot reads as empty from the next access on.
    pub fn empty(&mut self) -> Option<MmioTransport> {
        self.transport.take()
    }

    /// The transport of the device in the slot.
    pub fn transport(&self) -> Option<&MmioTransport> {
        self.transport.as_ref()
    }
}

impl BusDevice for MmioSlot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(t) = &mut self.transport {
            return t.read(offset, data);
        }
        data.fill(0);
        if data.len() != 4 {
            return;
        }
        let value = match offset {
            MAGIC_VALUE_REG => MMIO_MAGIC_VALUE,
            VERSION_REG => MMIO_VERSION,
            // DeviceID 0 (a placeholder) and every other register.
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match &mut self.transport {
            Some(t) => t.write(offset, data),
            None => debug!("virtio-mmio: write at {offset:#x} to an empty slot ignored"),
        }
    }
}

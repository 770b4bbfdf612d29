//! Devices the guest sees: legacy port-I/O devices and virtio-mmio devices.

pub mod legacy;
pub mod virtio;

//! `vmm`: the runvm virtual machine monitor library.
//!
//! Owns everything between `/dev/kvm` and the guest: the VM and its vCPUs (run, paused,
//! stopped), guest memory, loading the kernel and initramfs, the devices (serial, i8042
//! reset, boot timer, virtio-mmio block, net, vsock, and file-system shares served by
//! virtiofsd over vhost-user; shares and network interfaces also added to and removed from
//! a running VM through spare slots), the event loop that drives them,
//! and the seccomp filters of each VMM thread. It knows nothing about containers or OCI:
//! that is the shim's job.

pub mod boot;
pub mod builder;
pub mod bus;
pub mod devices;
pub mod fs_slots;
pub mod layout;
pub mod memory;
pub mod seccomp;
pub mod snapshot;
pub mod vstate;

pub use boot::mptable::MAX_VCPUS;
pub use builder::{DiskConfig, VmConfig, VmExit, Vmm, VmmError, VmmHandle, VsockConfig};
pub use devices::legacy::BootTimes;
pub use devices::virtio::fs::FsConfig;
pub use devices::virtio::net::NetConfig;
pub use fs_slots::{
    EmptiedFsSlot, FilledFsSlot, FilledNetSlot, FsBackend, FsSlotError, FsSlotShare, SlotContent,
};
pub use snapshot::{Snapshot, SnapshotError};
pub use vstate::pause::PauseError;
pub use vstate::VmExitReason;

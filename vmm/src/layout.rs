//! The guest physical address map and interrupt numbers (x86_64).
//!
//! ```text
//! 0x0000_0000  real-mode area: PVH start_info at 0x6000, memory map after it,
//!              command line at 0x2_0000, MP table at 0x9_fc00
//! 0x0010_0000  kernel (loaded where vmlinux's program headers say, usually 16 MiB),
//!              then the initramfs at the top of low memory
//! 0xd000_0000  virtio-mmio devices, 4 KiB apart, IRQ 5 upwards
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 local APIC
//! 0x1_0000_0000 guest RAM above the 32-bit MMIO gap, when there is more than 3 GiB
//! ```

/// Start of the guest kernel's load area (the kernel picks the exact address).
pub const HIMEM_START: u64 = 0x0010_0000;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs), right after `hvm_start_info`.
pub const MODLIST_START: u64 = 0x6040;
/// PVH memory map (E820-like entries).
pub const MEMMAP_START: u64 = 0x7000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Largest command line we pass.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Intel MP table (lets the kernel find the vCPUs and the IOAPIC without ACPI).
pub const MPTABLE_START: u64 = 0x9_fc00;
/// End of the EBDA / start of the legacy hole.
pub const EBDA_START: u64 = 0x9_fc00;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Start of the 32-bit MMIO gap; guest RAM stops here and resumes at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IRQ (GSI) of the first virtio-mmio device; the next ones follow.
pub const VIRTIO_IRQ_START: u32 = 5;
/// Highest IRQ we hand out to devices (the IOAPIC has 24 pins).
pub const IRQ_MAX: u32 = 23;

/// IOAPIC base address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const APIC_START: u64 = 0xfee0_0000;

/// COM1 I/O ports and IRQ.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
/// i8042 keyboard controller (only its reset command is emulated).
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;

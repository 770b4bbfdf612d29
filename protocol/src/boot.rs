//! The boot timer: one-byte milestones the guest init writes to an I/O port
//! ([`BOOT_TIMER_PORT`]) so the VMM can time the boot without any connection.

/// I/O port that the guest init writes [`BootMark`] values to (one byte, `outb`).
pub const BOOT_TIMER_PORT: u16 = 0x0440;

/// Milestones the guest reports through [`BOOT_TIMER_PORT`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMark {
    /// The guest init has started (first instruction of user space).
    InitStarted = 1,
    /// The workload's `execve` succeeded.
    WorkloadStarted = 2,
    /// The workload has exited.
    WorkloadExited = 3,
    /// Template mode (`runvm.template=1` on the kernel command line): the guest init has
    /// done everything that is the same for every container and listens on
    /// [`WAKE_PORT`](crate::WAKE_PORT); the VMM may snapshot the VM from now on.
    TemplateReady = 4,
}

impl BootMark {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::InitStarted),
            2 => Some(Self::WorkloadStarted),
            3 => Some(Self::WorkloadExited),
            4 => Some(Self::TemplateReady),
            _ => None,
        }
    }
}

//! Boot milestones for the VMM's boot timer.
//!
//! Init writes one byte (a [`BootMark`]) to the I/O port [`BOOT_TIMER_PORT`]; the VMM
//! timestamps the resulting VM exit. Nothing is written in host test mode (no such port
//! there, and `ioperm` would be refused anyway).

use runvm_protocol::{BootMark, BOOT_TIMER_PORT};
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Asks for access to the boot-timer port. Returns whether marks will be written.
pub fn enable() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: ioperm only changes this process's I/O permission bitmap for one port;
        // it has no memory-safety effect. nix has no wrapper for it.
        let rc = unsafe { libc::ioperm(libc::c_ulong::from(BOOT_TIMER_PORT), 1, 1) };
        ENABLED.store(rc == 0, Ordering::Relaxed);
        rc == 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Reports a milestone (no-op unless [`enable`] succeeded).
pub fn mark(m: BootMark) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `enable` obtained permission for exactly this port with ioperm, so `out`
    // cannot fault; the instruction touches no memory, no stack and no flags.
    unsafe {
        std::arch::asm!(
            "out dx, al",
            in("dx") BOOT_TIMER_PORT,
            in("al") m as u8,
            options(nomem, nostack, preserves_flags)
        );
    }
}

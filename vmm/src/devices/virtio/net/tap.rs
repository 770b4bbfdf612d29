//! The TAP side of virtio-net: one open TAP descriptor, read and written one frame
//! (vnet header included) per system call, non-blocking.
//!
//! The descriptor is opened by the caller (the monitor creates the TAP inside the
//! container's network namespace); the VMM only moves frames and tells the TAP which
//! offloads the guest accepts (`TUNSETOFFLOAD`), so that the host kernel hands it
//! checksum-partial and TSO frames only when the guest's driver can take them.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::NetError;
use crate::devices::virtio::fd::{retry_on_eintr, set_nonblocking};

/// `TUNSETOFFLOAD` (`_IOW('T', 208, unsigned int)`) and its flags (linux/if_tun.h).
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

/// An open TAP (or, in tests, any descriptor that keeps datagram boundaries).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
}

impl Tap {
    /// Takes `fd` and makes it non-blocking.
    pub fn new(fd: OwnedFd) -> Result<Self, NetError> {
        set_nonblocking(fd.as_fd()).map_err(NetError::TapFlags)?;
        Ok(Self { fd })
    }

    /// Reads one frame into `buf`. `WouldBlock` when none is waiting.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        retry_on_eintr(|| {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the fd is ours.
            unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
        })
    }

    /// Writes one frame.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        retry_on_eintr(|| {
            // SAFETY: `frame` is valid for reads of `frame.len()` bytes; the fd is ours.
            unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) }
        })
    }

    /// Tells the TAP which offloads (`TUN_F_*`) the guest accepts on received frames.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes an unsigned long by value; the fd is ours.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD as _,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

//! Creating a TAP device in the calling thread's network namespace.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `TUNSETIFF` and `TUNSETVNETHDRSZ` (linux/if_tun.h).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// The vnet header virtio 1.x uses (`virtio_net_hdr_v1`).
const VNET_HDR_SIZE: libc::c_int = 12;

/// Creates the TAP `name` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, 12-byte vnet header) in
/// the current network namespace and returns its descriptor. The device exists as long
/// as the descriptor is open (it is not persistent), so a dead monitor leaves no TAP.
pub fn create(name: &str) -> std::io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other(format!("bad TAP name {name:?}")));
    }
    // SAFETY: open(2) with a constant path; checked below.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("/dev/net/tun: {e}")));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct ifreq: the name, then the flags (short) at offset 16; 40 bytes in all.
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as u16;
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a 40-byte ifreq we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, req.as_mut_ptr()) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("TUNSETIFF {name}: {e}"),
        ));
    }
    let size = VNET_HDR_SIZE;
    // SAFETY: TUNSETVNETHDRSZ reads an int from a valid pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ as _, &size) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("TUNSETVNETHDRSZ {name}: {e}"),
        ));
    }
    Ok(fd)
}

//! The kernel's newer mount calls, which the `libc` and `nix` crates do not wrap:
//! `open_tree` (a detached copy of a mount tree, held by a descriptor), `move_mount`
//! (attach such a tree, here onto a descriptor of the mount point) and `mount_setattr`
//! (change the flags or the propagation of a mount, or of a whole tree, in place).
//!
//! Descriptors let the container's bind mounts be taken from init's view before the root
//! switch and attached after it, onto mount points resolved inside the container's root.

use nix::errno::Errno;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

// From <linux/mount.h> and <linux/fcntl.h> (not in the libc crate).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// `MOUNT_ATTR_*` of `mount_setattr`.
pub const MOUNT_ATTR_RDONLY: u64 = 0x01;
pub const MOUNT_ATTR_NOSUID: u64 = 0x02;
pub const MOUNT_ATTR_NODEV: u64 = 0x04;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x08;
/// The access-time mode: one of the three below (relatime is 0), cleared as a whole.
pub const MOUNT_ATTR_ATIME: u64 = 0x70;
pub const MOUNT_ATTR_RELATIME: u64 = 0x00;
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    /// `MS_PRIVATE`, `MS_SHARED`, `MS_SLAVE` or `MS_UNBINDABLE` (without `MS_REC`), or 0.
    pub propagation: u64,
    pub userns_fd: u64,
}

fn cstring(p: &Path) -> Result<CString, Errno> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// A detached copy of the mount at `path` (with every mount below it when `recursive`),
/// as `mount --bind`/`--rbind` would attach it. `path` itself is not followed when it is
/// a symlink.
pub fn clone_tree(path: &Path, recursive: bool) -> Result<OwnedFd, Errno> {
    let c = cstring(path)?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: open_tree reads the NUL-terminated path and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches the detached tree `tree` on the file or directory that `target` (an `O_PATH`
/// descriptor, typically) refers to. `tree` then stands for the attached mount.
pub fn attach_tree(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: move_mount reads two empty NUL-terminated paths and uses two descriptors we
    // hold; it changes no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `mount_setattr` on the mount that `mount` (a tree from [`clone_tree`], attached or not)
/// stands for, and on every mount below it when `recursive`.
pub fn set_attr_fd(mount: BorrowedFd<'_>, recursive: bool, attr: &MountAttr) -> Result<(), Errno> {
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    mount_setattr(mount.as_raw_fd(), c"", flags, attr)
}

/// `mount_setattr` on the mount at `path` (which must be the root of a mount).
pub fn set_attr_path(path: &Path, recursive: bool, attr: &MountAttr) -> Result<(), Errno> {
    let c = cstring(path)?;
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    mount_setattr(libc::AT_FDCWD, &c, flags, attr)
}

fn mount_setattr(
    dirfd: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_uint,
    attr: &MountAttr,
) -> Result<(), Errno> {
    // SAFETY: mount_setattr reads the NUL-terminated path and `size_of::<MountAttr>()`
    // bytes of the attribute struct, both valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            std::ptr::from_ref(attr),
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// The file type bits (`S_IFMT`) of what `fd` refers to (`O_PATH` descriptors included).
pub fn file_type(fd: impl AsFd) -> Result<libc::mode_t, Errno> {
    let st = nix::sys::stat::fstat(fd.as_fd().as_raw_fd())?;
    Ok(st.st_mode & libc::S_IFMT)
}

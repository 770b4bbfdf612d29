//! File operations relative to a directory descriptor, for applying the guest's changes:
//! none follows a symlink (in the host tree, or one the stream planted) or enters another
//! file system, and every descriptor opened comes back owned.
//!
//! Lookups below the root use `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`, or, on kernels without it, a walk one
//! component at a time with `O_NOFOLLOW`, checking the device of each. The rest work on
//! one name in a directory already opened that way.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use runvm_protocol::FileMeta;

/// Takes ownership of a descriptor a nix call has just returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call, so it is open, and
    // nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The device a descriptor's file is on.
pub fn device(fd: BorrowedFd) -> nix::Result<u64> {
    Ok(nix::sys::stat::fstat(fd.as_raw_fd())?.st_dev)
}

/// Opens directory `rel` (relative to `root`, `""` for the root itself), never following
/// a symlink or leaving the root's file system (`root_dev`).
pub fn open_beneath(
    root: BorrowedFd,
    root_dev: u64,
    rel: &[u8],
    flags: OFlag,
) -> nix::Result<OwnedFd> {
    let path: &[u8] = if rel.is_empty() { b"." } else { rel };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    match nix::fcntl::openat2(root.as_raw_fd(), path, how) {
        Ok(fd) => Ok(owned(fd)),
        Err(Errno::ENOSYS) => walk_beneath(root, root_dev, rel, flags),
        Err(e) => Err(e),
    }
}

/// [`open_beneath`] for kernels without openat2: one component at a time, never
/// following a symlink, staying on the root's file system.
fn walk_beneath(root: BorrowedFd, root_dev: u64, rel: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
    let open = |dir: BorrowedFd, name: &[u8], f: OFlag| -> nix::Result<OwnedFd> {
        let fd = open_dir_at(dir, name, f)?;
        if device(fd.as_fd())? != root_dev {
            return Err(Errno::EXDEV);
        }
        Ok(fd)
    };
    let mut cur = open(root, b".", OFlag::O_PATH)?;
    for c in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        cur = open(cur.as_fd(), c, OFlag::O_PATH)?;
    }
    if flags.contains(OFlag::O_PATH) {
        return Ok(cur);
    }
    open(cur.as_fd(), b".", flags)
}

/// Opens directory `name` in `dir`, not following it if it is a symlink.
pub fn open_dir_at(dir: BorrowedFd, name: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
    let flags = flags | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, Mode::empty()).map(owned)
}

/// Creates the new file `name` in `dir` (mode 0600, never an existing name or a
/// symlink's target), open for writing.
pub fn create_file_at(dir: BorrowedFd, name: &[u8]) -> nix::Result<File> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        flags,
        Mode::from_bits_truncate(0o600),
    )
    .map(|fd| File::from(owned(fd)))
}

/// What `name` in `dir` is (a symlink itself, not its target), if it exists.
pub fn lstat_at(dir: BorrowedFd, name: &[u8]) -> Option<FileStat> {
    nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()
}

pub fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Whether `name` in `dir` is a directory (not a symlink to one).
pub fn is_dir_at(dir: BorrowedFd, name: &[u8]) -> bool {
    lstat_at(dir, name).is_some_and(|st| is_dir(&st))
}

/// Removes the non-directory `name` in `dir`.
pub fn remove_file_at(dir: BorrowedFd, name: &[u8]) -> nix::Result<()> {
    nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
}

/// Removes `name` in `dir`, a whole tree if it is a directory, never following a symlink
/// and never entering another file system than `root_dev`. A missing name is fine.
pub fn remove_tree_at(
    dir: BorrowedFd,
    name: &[u8],
    root_dev: u64,
    depth: usize,
) -> nix::Result<()> {
    let Some(st) = lstat_at(dir, name) else {
        return Ok(());
    };
    let flags = if is_dir(&st) {
        if st.st_dev != root_dev || depth > super::path::MAX_PATH {
            return Err(Errno::EXDEV);
        }
        let fd = open_dir_at(dir, name, OFlag::O_RDONLY)?;
        clear_dir(fd.as_fd(), root_dev, depth + 1)?;
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    match nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, flags) {
        Err(Errno::ENOENT) => Ok(()),
        r => r,
    }
}

/// Removes everything in directory `dir` (opened for reading), as [`remove_tree_at`].
pub fn clear_dir(dir: BorrowedFd, root_dev: u64, depth: usize) -> nix::Result<()> {
    let mut d = nix::dir::Dir::from(dir.try_clone_to_owned().map_err(io_errno)?)?;
    let names: Vec<Vec<u8>> = d
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect();
    for n in names {
        remove_tree_at(dir, &n, root_dev, depth)?;
    }
    Ok(())
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Makes directory `name` in `dir` (mode 0700 until its metadata is set).
pub fn mkdir_at(dir: BorrowedFd, name: &[u8]) -> nix::Result<()> {
    nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o700))
}

/// Makes symlink `name` in `dir`, pointing at `target`.
pub fn symlink_at(target: &[u8], dir: BorrowedFd, name: &[u8]) -> nix::Result<()> {
    nix::unistd::symlinkat(target, Some(dir.as_raw_fd()), name)
}

/// Links `name` in `dir` to `target_name` in `target_dir`. A symlink is linked itself,
/// never followed (no `AT_SYMLINK_FOLLOW`).
pub fn link_at(
    target_dir: BorrowedFd,
    target_name: &[u8],
    dir: BorrowedFd,
    name: &[u8],
) -> nix::Result<()> {
    nix::unistd::linkat(
        Some(target_dir.as_raw_fd()),
        target_name,
        Some(dir.as_raw_fd()),
        name,
        AtFlags::empty(),
    )
}

/// Makes the node `name` in `dir` (a FIFO, socket or device; mode 0600 until its
/// metadata is set).
pub fn mknod_at(dir: BorrowedFd, name: &[u8], kind: SFlag, dev: u64) -> nix::Result<()> {
    nix::sys::stat::mknodat(
        Some(dir.as_raw_fd()),
        name,
        kind,
        Mode::from_bits_truncate(0o600),
        dev,
    )
}

/// Renames `from` to `to`, both in `dir`.
pub fn rename_at(dir: BorrowedFd, from: &[u8], to: &[u8]) -> nix::Result<()> {
    nix::fcntl::renameat(Some(dir.as_raw_fd()), from, Some(dir.as_raw_fd()), to)
}

fn mode(meta: &FileMeta) -> Mode {
    Mode::from_bits_truncate(meta.mode & 0o7777)
}

pub fn mtime(meta: &FileMeta) -> TimeSpec {
    TimeSpec::new(meta.mtime, i64::from(meta.mtime_nsec.min(999_999_999)))
}

/// Sets owner, then permissions (chown clears setuid bits) of an open file.
pub fn set_owner_and_mode(fd: BorrowedFd, meta: &FileMeta) -> nix::Result<()> {
    nix::unistd::fchown(
        fd.as_raw_fd(),
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )?;
    nix::sys::stat::fchmod(fd.as_raw_fd(), mode(meta))
}

/// Sets the modification time of an open file (its access time stays).
pub fn set_mtime(fd: BorrowedFd, meta: &FileMeta) -> nix::Result<()> {
    nix::sys::stat::futimens(fd.as_raw_fd(), &TimeSpec::UTIME_OMIT, &mtime(meta))
}

/// Sets owner, then permissions, then times, of an open file.
pub fn set_meta(fd: BorrowedFd, meta: &FileMeta) -> nix::Result<()> {
    set_owner_and_mode(fd, meta)?;
    set_mtime(fd, meta)
}

/// Owner and times of `name` in `dir`, a name that cannot be opened (symlink, device,
/// socket), and its permissions where they mean something (`chmod`: not a symlink).
pub fn set_meta_at(dir: BorrowedFd, name: &[u8], meta: &FileMeta, chmod: bool) -> nix::Result<()> {
    let dirfd = Some(dir.as_raw_fd());
    nix::unistd::fchownat(
        dirfd,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    if chmod {
        // Not a symlink (the caller knows): fchmodat cannot follow one here.
        nix::sys::stat::fchmodat(dirfd, name, mode(meta), FchmodatFlags::NoFollowSymlink).or_else(
            |e| {
                // Linux's fchmodat has no NOFOLLOW before 6.6: the name was just made
                // by us and is not a symlink, so the plain call is the same.
                if e == Errno::EOPNOTSUPP || e == Errno::ENOTSUP || e == Errno::EINVAL {
                    nix::sys::stat::fchmodat(dirfd, name, mode(meta), FchmodatFlags::FollowSymlink)
                } else {
                    Err(e)
                }
            },
        )?;
    }
    nix::sys::stat::utimensat(
        dirfd,
        name,
        &TimeSpec::UTIME_OMIT,
        &mtime(meta),
        UtimensatFlags::NoFollowSymlink,
    )
}

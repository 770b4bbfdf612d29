//! Mount points inside the container's root, found and made as runc does with its
//! `securejoin`: the destination is walked one component at a time below a descriptor of
//! the root, symlinks are followed but resolved against that root (an absolute target
//! starts again at the root, `..` never climbs above it, and a `/proc` magic link is read
//! as the plain path it prints), and what is missing is created: directories on the
//! way, then a directory or an empty file for the mount point itself.
//!
//! The result is an `O_PATH` descriptor of the mount point, so nothing can swap a
//! symlink in between the walk and the mount.

use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Symlinks followed in one walk before giving up (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;
/// Mode of the directories and files made as mount points (runc's 0755; the caller's
/// umask is 0).
const MOUNT_POINT_MODE: u32 = 0o755;

/// What the mount point must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory (for a directory source).
    Dir,
    /// Anything but a directory (for a file or socket source); made as an empty file.
    NonDir,
}

/// The mount point `dest` (absolute, in the container) below `root`, created as `kind`
/// if missing, as an `O_PATH` descriptor.
pub fn mount_point(root: BorrowedFd<'_>, dest: &str, kind: Kind) -> Result<OwnedFd> {
    if !dest.starts_with('/') {
        return Err(Error::new(format!(
            "mount destination {dest:?} must be an absolute path"
        )));
    }
    let fail = |what: &str, walked: &[OsString], e: Errno| {
        Error::new(format!("mount on {dest}: {what} {}: {e}", shown(walked)))
    };
    let mut queue = components(dest.as_bytes());
    // The directories walked below the root, and their names (for messages).
    let mut dirs: Vec<OwnedFd> = Vec::new();
    let mut walked: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = queue.pop_front() {
        if name == ".." {
            dirs.pop();
            walked.pop();
            continue;
        }
        let last = queue.is_empty();
        let dir = dirs.last().map_or(root, AsFd::as_fd);
        walked.push(name.clone());
        let fd = match open_path(dir, &name) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let made = if last && kind == Kind::NonDir {
                    create_file(dir, &name)
                } else {
                    nix::sys::stat::mkdirat(
                        Some(dir.as_raw_fd()),
                        name.as_os_str(),
                        Mode::from_bits_truncate(MOUNT_POINT_MODE),
                    )
                };
                match made {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(fail("create", &walked, e)),
                }
                open_path(dir, &name).map_err(|e| fail("open", &walked, e))?
            }
            Err(e) => return Err(fail("open", &walked, e)),
        };
        let file_type = crate::mount_api::file_type(&fd).map_err(|e| fail("stat", &walked, e))?;
        if file_type == libc::S_IFLNK {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(fail("resolve", &walked, Errno::ELOOP));
            }
            let target = nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name.as_os_str())
                .map_err(|e| fail("read the symlink", &walked, e))?;
            walked.pop();
            if target.as_bytes().starts_with(b"/") {
                dirs.clear();
                walked.clear();
            }
            for c in components(target.as_bytes()).into_iter().rev() {
                queue.push_front(c);
            }
            continue;
        }
        if last {
            return check_kind(fd, file_type, kind, dest);
        }
        if file_type != libc::S_IFDIR {
            return Err(fail("walk", &walked, Errno::ENOTDIR));
        }
        dirs.push(fd);
    }
    // The walk ended on a directory (`/`, or a path ending in `..`).
    let dir = dirs.last().map_or(root, AsFd::as_fd);
    let fd = open_path(dir, OsStr::new(".")).map_err(|e| fail("open", &walked, e))?;
    check_kind(fd, libc::S_IFDIR, kind, dest)
}

/// The mount point `fd` if it is of the `kind` the source needs.
fn check_kind(fd: OwnedFd, file_type: libc::mode_t, kind: Kind, dest: &str) -> Result<OwnedFd> {
    match (kind, file_type == libc::S_IFDIR) {
        (Kind::Dir, true) | (Kind::NonDir, false) => Ok(fd),
        (Kind::Dir, false) => Err(Error::new(format!(
            "mount on {dest}: cannot bind a directory on something that is not a directory"
        ))),
        (Kind::NonDir, true) => Err(Error::new(format!(
            "mount on {dest}: cannot bind a file on a directory"
        ))),
    }
}

/// The names of `path`, without empty and `.` components (`..` is kept).
fn components(path: &[u8]) -> VecDeque<OsString> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsString::from_vec(c.to_vec()))
        .collect()
}

fn shown(walked: &[OsString]) -> String {
    let mut s = String::new();
    for c in walked {
        s.push('/');
        s.push_str(&c.to_string_lossy());
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// `name` in `dir`, not followed if it is a symlink.
fn open_path(dir: BorrowedFd<'_>, name: &OsStr) -> std::result::Result<OwnedFd, Errno> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An empty file `name` in `dir` (never through a symlink).
fn create_file(dir: BorrowedFd<'_>, name: &OsStr) -> std::result::Result<(), Errno> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(MOUNT_POINT_MODE),
    )?;
    // SAFETY: openat just returned this descriptor; it is closed here and nowhere else.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root_fd(dir: &std::path::Path) -> OwnedFd {
        OwnedFd::from(std::fs::File::open(dir).unwrap())
    }

    #[test]
    fn components_drop_empty_and_dot_names() {
        let c: Vec<OsString> = components(b"//a/./b/../c/").into_iter().collect();
        assert_eq!(c, ["a", "b", "..", "c"]);
    }

    #[test]
    fn missing_mount_points_are_made_with_their_parents() {
        let t = tempfile::tempdir().unwrap();
        let root = root_fd(t.path());
        mount_point(root.as_fd(), "/a/b/dir", Kind::Dir).unwrap();
        mount_point(root.as_fd(), "/a/c/file", Kind::NonDir).unwrap();
        assert!(t.path().join("a/b/dir").is_dir());
        let f = t.path().join("a/c/file");
        assert!(f.is_file());
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 0);
        // Existing ones are taken as they are; a kind mismatch is refused, naming it.
        std::fs::write(&f, "keep").unwrap();
        mount_point(root.as_fd(), "/a/c/file", Kind::NonDir).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"keep");
        let e = mount_point(root.as_fd(), "/a/c/file", Kind::Dir).unwrap_err();
        assert!(e.message.contains("/a/c/file"), "{e}");
        let e = mount_point(root.as_fd(), "/a/b/dir", Kind::NonDir).unwrap_err();
        assert!(e.message.contains("on a directory"), "{e}");
        let e = mount_point(root.as_fd(), "/a/c/file/below", Kind::Dir).unwrap_err();
        assert!(e.message.contains("ENOTDIR"), "{e}");
        assert!(mount_point(root.as_fd(), "relative", Kind::Dir).is_err());
    }

    #[test]
    fn symlinks_resolve_inside_the_root_never_outside() {
        let t = tempfile::tempdir().unwrap();
        let (root_dir, outside) = (t.path().join("root"), t.path().join("outside"));
        std::fs::create_dir_all(root_dir.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // Absolute, relative-climbing and /proc magic links, all pointing out of the root.
        symlink(&outside, root_dir.join("abs")).unwrap();
        symlink("../../../../outside", root_dir.join("etc/climb")).unwrap();
        symlink("/proc/self/cwd", root_dir.join("magic")).unwrap();
        symlink("/etc", root_dir.join("to-etc")).unwrap();
        symlink("loop", root_dir.join("loop")).unwrap();
        let root = root_fd(&root_dir);
        mount_point(root.as_fd(), "/abs/x", Kind::NonDir).unwrap();
        mount_point(root.as_fd(), "/etc/climb/y", Kind::Dir).unwrap();
        mount_point(root.as_fd(), "/magic/z", Kind::Dir).unwrap();
        mount_point(root.as_fd(), "/to-etc/w", Kind::NonDir).unwrap();
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // The targets were made inside the root, where the links point when it is "/".
        let inside = root_dir.join(outside.strip_prefix("/").unwrap());
        assert!(inside.join("x").is_file());
        assert!(root_dir.join("outside/y").is_dir());
        assert!(root_dir.join("proc/self/cwd/z").is_dir());
        assert!(root_dir.join("etc/w").is_file());
        // `..` stops at the root.
        mount_point(root.as_fd(), "/../../v", Kind::Dir).unwrap();
        assert!(root_dir.join("v").is_dir());
        let e = mount_point(root.as_fd(), "/loop/x", Kind::Dir).unwrap_err();
        assert!(e.message.contains("ELOOP"), "{e}");
    }
}

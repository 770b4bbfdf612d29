//! Host-side reads of files in a container's root filesystem (`/etc/passwd` for `ps`,
//! `/etc/resolv.conf` for the DNS forwarder). The root is shared live with the guest, so
//! its contents are the guest's doing: a read resolves every component inside the root
//! (`openat2` with `RESOLVE_IN_ROOT`: `..` and absolute symlinks stop at the root, magic
//! links are refused), opens only a regular file (never a FIFO or a device that would
//! block or never end), and refuses one over a size cap.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// A file of a root filesystem (or of another directory the guest writes through the
/// share): `path` as seen from `root`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InRoot {
    pub root: std::path::PathBuf,
    pub path: String,
}

impl InRoot {
    /// Its contents, read as [`read`] does.
    pub fn read(&self, max: u64) -> std::io::Result<Vec<u8>> {
        read(&self.root, &self.path, max)
    }
}

/// Reads the regular file `rel` (a path as the container sees it, relative to its root)
/// of the root filesystem at `root`: at most `max` bytes, or an error.
pub fn read(root: &Path, rel: &str, max: u64) -> std::io::Result<Vec<u8>> {
    let dir = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = nix::fcntl::openat2(dir.as_raw_fd(), rel.trim_start_matches('/'), how)?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let md = file.metadata()?;
    if !md.is_file() {
        return Err(std::io::Error::other(format!(
            "{rel} in the container's root filesystem is not a regular file"
        )));
    }
    let mut data = Vec::new();
    file.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(std::io::Error::other(format!(
            "{rel} in the container's root filesystem is over {max} bytes"
        )));
    }
    Ok(data)
}

/// Makes sure the mount point `rel` exists in the root filesystem at `root`: a directory
/// (`dir`) or an empty file, with every missing parent directory, each created inside the
/// root (a symlink on the way resolves inside it, as runc's securejoin does). What is
/// already there is left alone, whatever it is. runc makes the mount points of a
/// container's mounts in its root filesystem on the host, read-only root or not; a
/// read-only root shared with a guest cannot be written by the guest, so the host makes
/// them first.
pub fn make_mount_point(root: &Path, rel: &str, dir: bool) -> std::io::Result<()> {
    use nix::errno::Errno;
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let root_fd = unsafe { OwnedFd::from_raw_fd(root_fd) };
    let open_in_root = |path: &str, flags: OFlag| -> Result<OwnedFd, Errno> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = nix::fcntl::openat2(root_fd.as_raw_fd(), path, how)?;
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let components: Vec<&str> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let mut done = String::new();
    for (i, c) in components.iter().enumerate() {
        let parent = if done.is_empty() {
            ".".to_string()
        } else {
            done.clone()
        };
        let path = format!("{parent}/{c}");
        let last = i + 1 == components.len();
        match open_in_root(&path, OFlag::O_PATH) {
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                let parent_fd = open_in_root(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
                if last && !dir {
                    let fd = nix::fcntl::openat(
                        Some(parent_fd.as_raw_fd()),
                        *c,
                        OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_WRONLY
                            | OFlag::O_CLOEXEC
                            | OFlag::O_NOFOLLOW,
                        Mode::from_bits_truncate(0o755),
                    );
                    match fd {
                        // SAFETY: openat returned a new descriptor that nothing else owns.
                        Ok(fd) => drop(unsafe { OwnedFd::from_raw_fd(fd) }),
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    match nix::sys::stat::mkdirat(
                        Some(parent_fd.as_raw_fd()),
                        *c,
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
        done = path;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stay_in_the_root_and_take_only_small_regular_files() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(t.path().join("secret"), "host secret").unwrap();
        std::fs::write(root.join("secret"), "root's own").unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        assert_eq!(
            read(&root, "/etc/passwd", 100).unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
        // A symlink out of the root (absolute or by ..) resolves inside it.
        std::os::unix::fs::symlink(t.path().join("secret"), root.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("etc/rel")).unwrap();
        assert_eq!(read(&root, "etc/rel", 100).unwrap(), b"root's own");
        assert!(
            read(&root, "etc/abs", 100).is_err(),
            "the root has no such path"
        );
        assert_eq!(read(&root, "../secret", 100).unwrap(), b"root's own");
        // No devices, FIFOs or directories; nothing over the cap.
        std::os::unix::fs::symlink("/proc/self/fd/0", root.join("etc/magic")).unwrap();
        assert!(read(&root, "etc/magic", 100).is_err());
        nix::unistd::mkfifo(&root.join("etc/fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        assert!(read(&root, "etc/fifo", 100).is_err());
        assert!(read(&root, "etc", 100).is_err());
        assert!(read(&root, "etc/passwd", 5).is_err());
    }

    #[test]
    fn mount_points_are_made_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        make_mount_point(&root, "/scratch/deep", true).unwrap();
        assert!(root.join("scratch/deep").is_dir());
        make_mount_point(&root, "/etc/hosts", false).unwrap();
        assert!(root.join("etc/hosts").is_file());
        // Again: nothing changes, nothing fails.
        make_mount_point(&root, "/etc/hosts", false).unwrap();
        // A symlink out of the root is followed inside it: to a directory there, or to
        // nothing (an error), never out of the root.
        std::os::unix::fs::symlink("/scratch", root.join("in")).unwrap();
        make_mount_point(&root, "/in/via-link", true).unwrap();
        assert!(root.join("scratch/via-link").is_dir());
        std::os::unix::fs::symlink(t.path(), root.join("out")).unwrap();
        assert!(make_mount_point(&root, "/out/escaped", true).is_err());
        assert!(!t.path().join("escaped").exists());
    }
}

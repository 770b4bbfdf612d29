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
}

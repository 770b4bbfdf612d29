//! Unix socket paths that fit in `sun_path` (108 bytes) under any state root. Docker's
//! runtime root plus a 64-hex container id (`/run/docker/runtime-runvm/moby/<id>/run/`)
//! already takes ~100 bytes, so a socket there cannot be bound by its full path. A
//! [`SocketDir`] holds the directory open and names its sockets through
//! `/proc/self/fd/<fd>/<name>` when the direct path would be too long.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Longest socket path bind(2)/connect(2) take (sun_path minus the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Room kept for suffixes the vsock device appends to a socket name (`_<port>`).
const SUFFIX_ROOM: usize = 11;

/// A directory whose sockets are named by paths short enough to bind and connect.
/// Keep it alive for as long as those paths are used.
pub struct SocketDir {
    dir: PathBuf,
    fd: OwnedFd,
}

impl SocketDir {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let fd = nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(std::io::Error::from)?;
        // SAFETY: open returned a new descriptor that nothing else owns.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Self {
            dir: dir.to_path_buf(),
            fd,
        })
    }

    /// The path to bind or connect to for socket `name` in this directory (plus up to
    /// [`SUFFIX_ROOM`] bytes of suffix).
    pub fn path(&self, name: &str) -> PathBuf {
        let direct = self.dir.join(name);
        if direct.as_os_str().len() + SUFFIX_ROOM <= MAX_SOCKET_PATH {
            direct
        } else {
            PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn long_directories_get_working_short_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let long = base.join("x".repeat(60)).join("y".repeat(60));
        std::fs::create_dir_all(&long).unwrap();
        let d = SocketDir::open(&long).unwrap();
        let p = d.path("monitor.sock");
        assert!(p.starts_with("/proc/self/fd/"), "{}", p.display());
        let listener = UnixListener::bind(&p).unwrap();
        assert!(
            long.join("monitor.sock").exists(),
            "the socket is in the long directory"
        );
        let _client =
            UnixStream::connect(SocketDir::open(&long).unwrap().path("monitor.sock")).unwrap();
        let _conn = listener.accept().unwrap();
        let short = SocketDir::open(base).unwrap();
        assert_eq!(short.path("a.sock"), base.join("a.sock"));
    }
}

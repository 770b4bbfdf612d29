//! Host terminals: the pty made for `--console-socket` (its master goes to the socket,
//! runc's protocol; its slave is relayed to the guest's pty), raw mode on a caller's
//! terminal, window sizes, and the controlling terminal that brings SIGWINCH.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::termios::{self, SetArg, Termios};
use runvm_protocol::WindowSize;

/// Errors setting up a terminal.
#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    #[error("cannot allocate a pty: {0}")]
    Open(nix::Error),
    #[error("cannot connect to the console socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot send the pty master over the console socket {path}: {source}")]
    Send {
        path: String,
        source: runvm_protocol::scm::ScmError,
    },
    #[error("cannot set the terminal's mode: {0}")]
    Mode(nix::Error),
}

/// A host pty pair.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    /// The slave's path (`/dev/pts/N`).
    pub name: String,
}

impl Pty {
    pub fn open() -> Result<Self, TtyError> {
        let pair = nix::pty::openpty(None, None).map_err(TtyError::Open)?;
        for fd in [&pair.master, &pair.slave] {
            set_cloexec(fd.as_raw_fd());
        }
        let name = std::fs::read_link(format!("/proc/self/fd/{}", pair.slave.as_raw_fd()))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            master: pair.master,
            slave: pair.slave,
            name,
        })
    }

    /// Opens a pty and sends its master over the console socket at `path`, as runc does
    /// (one descriptor, the pty name as the data); keeps the slave, in raw mode (the
    /// guest's pty does the line discipline).
    pub fn for_console_socket(path: &Path) -> Result<OwnedFd, TtyError> {
        let pty = Self::open()?;
        set_raw(pty.slave.as_fd())?;
        let shown = path.display().to_string();
        let connect = || -> std::io::Result<UnixStream> {
            // A long path (a deep temporary directory) is reached through its directory.
            let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
                (Some(d), Some(n)) if !d.as_os_str().is_empty() => (d, n),
                _ => return UnixStream::connect(path),
            };
            let sockets = crate::sockpath::SocketDir::open(dir)?;
            UnixStream::connect(sockets.path(name))
        };
        let sock = connect().map_err(|source| TtyError::Connect {
            path: shown.clone(),
            source,
        })?;
        runvm_protocol::scm::send_fds(sock.as_fd(), pty.name.as_bytes(), &[pty.master.as_raw_fd()])
            .map_err(|source| TtyError::Send {
                path: shown,
                source,
            })?;
        // The receiver has the only copy of the master now.
        Ok(pty.slave)
    }
}

fn set_cloexec(fd: RawFd) {
    let _ = nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
}

/// Puts a terminal into raw mode (no echo, no line editing, no signals from keys).
pub fn set_raw(fd: BorrowedFd<'_>) -> Result<Termios, TtyError> {
    let saved = termios::tcgetattr(fd).map_err(TtyError::Mode)?;
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    termios::tcsetattr(fd, SetArg::TCSANOW, &raw).map_err(TtyError::Mode)?;
    Ok(saved)
}

/// The caller's terminal in raw mode for as long as this lives (`runvm run`/`exec` in the
/// foreground with a terminal), restored on drop.
pub struct RawMode {
    fd: RawFd,
    saved: Termios,
}

impl RawMode {
    /// Raw mode on `fd` if it is a terminal; `None` if it is not.
    pub fn enter(fd: RawFd) -> Option<Self> {
        // SAFETY: the caller's descriptor is open for the life of this guard.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        if !nix::unistd::isatty(fd).unwrap_or(false) {
            return None;
        }
        set_raw(b).ok().map(|saved| Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: see `enter`.
        let b = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = termios::tcsetattr(b, SetArg::TCSANOW, &self.saved);
    }
}

/// The window size of a terminal; `None` if it is not one or has no size yet (0×0).
pub fn window_size(fd: RawFd) -> Option<WindowSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize struct to a valid pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && (ws.ws_row, ws.ws_col) != (0, 0)).then_some(WindowSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Makes the terminal `fd` the controlling terminal of this process, which must lead a
/// session (after `setsid`): the kernel then sends SIGWINCH here when its size changes.
pub fn make_controlling(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal) and no memory.
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_reports_the_size_set_on_its_master() {
        let pty = Pty::open().unwrap();
        assert!(pty.name.starts_with("/dev/pts/"), "{}", pty.name);
        assert_eq!(window_size(pty.slave.as_raw_fd()), None);
        let ws = libc::winsize {
            ws_row: 33,
            ws_col: 99,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize struct from a valid pointer, on a pty master
        // this test owns.
        let rc = unsafe { libc::ioctl(pty.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0);
        assert_eq!(
            window_size(pty.slave.as_raw_fd()),
            Some(WindowSize { rows: 33, cols: 99 })
        );
        let dev_null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(window_size(dev_null.as_raw_fd()), None);
    }

    #[test]
    fn the_console_socket_gets_the_master_and_the_name() {
        let dir = std::env::temp_dir().join(format!("runvm-tty-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let slave = Pty::for_console_socket(&path).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let (fds, name) = runvm_protocol::scm::recv_fds(conn.as_fd(), 1).unwrap();
        let name = String::from_utf8(name).unwrap();
        assert!(name.starts_with("/dev/pts/"), "{name}");
        // Bytes written on the slave come out of the master.
        nix::unistd::write(&slave, b"ping").unwrap();
        let mut buf = [0u8; 4];
        let n = nix::unistd::read(fds[0].as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

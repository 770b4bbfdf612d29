//! Connections to the host: the control channel and the stdio streams, which init opens,
//! and the one connection the host opens, to wake a template guest ([`Listener`]).
//!
//! In the VM these are AF_VSOCK stream sockets with CID 2 (the host). In host test mode
//! (`RUNVM_INIT_TEST=<dir>`) they are Unix stream sockets `<dir>/<port>`, so the whole
//! sequence can be driven by a test program without a VM. Either way the result is a plain
//! socket fd, and everything above this module is transport-agnostic.

use crate::error::{Context, Error, Result};
use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};
use runvm_protocol::{FrameDecoder, GuestMessage, HostMessage, MAX_HOST_FRAME_LEN};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The host's vsock context id.
const HOST_CID: u32 = 2;
/// How long to keep retrying a refused connection (the host may still be getting ready).
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

/// Where connections go.
#[derive(Clone, Debug)]
pub enum Transport {
    Vsock,
    /// Host test mode: Unix sockets named by port number in this directory.
    Unix(PathBuf),
}

impl Transport {
    /// Opens a stream connection to `port` on the host, retrying refusals for a while.
    pub fn connect(&self, port: u32) -> Result<OwnedFd> {
        let deadline = Instant::now() + CONNECT_PATIENCE;
        loop {
            let r = match self {
                Transport::Vsock => connect_vsock(port),
                Transport::Unix(dir) => UnixStream::connect(dir.join(port.to_string()))
                    .map(OwnedFd::from)
                    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
            };
            match r {
                Ok(fd) => return Ok(fd),
                Err(
                    e @ (Errno::ECONNREFUSED
                    | Errno::ECONNRESET
                    | Errno::ETIMEDOUT
                    | Errno::ENOENT
                    | Errno::EINTR),
                ) if Instant::now() < deadline => {
                    crate::log::info(&format!("connect to port {port}: {e}; retrying"));
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(Error::new(format!("connect to host port {port}: {e}"))),
            }
        }
    }

    /// Listens on `port` for connections from the host: vsock port `port` of any CID in
    /// the VM, the Unix socket `<dir>/<port>` in host test mode.
    pub fn listen(&self, port: u32) -> Result<Listener> {
        let fd = match self {
            Transport::Vsock => listen_vsock(port),
            Transport::Unix(dir) => UnixListener::bind(dir.join(port.to_string()))
                .map(OwnedFd::from)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
        };
        fd.map(|fd| Listener { fd, port })
            .map_err(|e| Error::new(format!("listen on port {port}: {e}")))
    }
}

/// A new vsock stream socket (close-on-exec).
fn vsock_socket() -> nix::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

fn listen_vsock(port: u32) -> nix::Result<OwnedFd> {
    let fd = vsock_socket()?;
    socket::bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
    socket::listen(&fd, socket::Backlog::new(1)?)?;
    Ok(fd)
}

/// A listening socket of [`Transport::listen`].
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    port: u32,
}

impl Listener {
    /// Waits, as long as it takes, for the next connection and accepts it.
    pub fn accept(&self) -> Result<OwnedFd> {
        loop {
            match socket::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 just returned this descriptor; nothing else owns it.
                Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
                // A signal, or a connection that went away before it was accepted.
                Err(Errno::EINTR | Errno::ECONNABORTED) => {}
                Err(e) => {
                    return Err(Error::new(format!(
                        "accept a connection on port {}: {e}",
                        self.port
                    )))
                }
            }
        }
    }
}

/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (level `AF_VSOCK`): the kernel's default of 2 s is
/// too short on a loaded or emulated host, and a connect that times out after the host
/// accepted it costs the host a half-made connection.
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;
const VSOCK_CONNECT_TIMEOUT_SECS: libc::time_t = 30;

fn connect_vsock(port: u32) -> nix::Result<OwnedFd> {
    let fd = vsock_socket()?;
    let tv = libc::timeval {
        tv_sec: VSOCK_CONNECT_TIMEOUT_SECS,
        tv_usec: 0,
    };
    // SAFETY: setsockopt reads `size_of::<timeval>()` bytes from a valid timeval.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::AF_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        crate::log::info(&format!("vsock connect timeout not set: {}", Errno::last()));
    }
    socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(HOST_CID, port),
    )?;
    Ok(fd)
}

/// The control connection: frames of [`GuestMessage`] up and [`HostMessage`] down.
///
/// The socket stays blocking: sends are small, and receives happen either in a blocking
/// `recv` (before the workload runs) or after `poll` said the socket is readable, through
/// [`Control::read_available`] and protocol's incremental [`FrameDecoder`].
pub struct Control {
    file: File,
    buf: FrameDecoder,
}

impl Control {
    pub fn new(fd: OwnedFd) -> Self {
        Self {
            file: File::from(fd),
            buf: FrameDecoder::new(MAX_HOST_FRAME_LEN),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub fn send(&mut self, msg: &GuestMessage) -> Result<()> {
        runvm_protocol::write_frame(&mut self.file, msg).context("send to host")
    }

    /// Blocks for the next message. `Ok(None)` is a clean EOF from the host.
    pub fn recv(&mut self) -> Result<Option<HostMessage>> {
        loop {
            if let Some(m) = self.next_buffered()? {
                return Ok(Some(m));
            }
            if !self.read_available()? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Error::new("host closed the control connection mid-frame"))
                };
            }
        }
    }

    /// One `read` into the frame buffer. Returns false on EOF.
    pub fn read_available(&mut self) -> Result<bool> {
        // Large enough that a large Run (environment, seccomp filter) arrives in few reads.
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&self.file), &mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.push(chunk.get(..n).unwrap_or_default());
                    return Ok(true);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(true),
                Err(e) => return Err(Error::new(format!("read from host: {e}"))),
            }
        }
    }

    /// The next complete buffered message, if any.
    pub fn next_buffered(&mut self) -> Result<Option<HostMessage>> {
        self.buf
            .next_frame()
            .map_err(|e| Error::new(format!("protocol error: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control connection over one end of a socket pair, the host at the other.
    fn pair() -> (Control, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        (Control::new(OwnedFd::from(a)), b)
    }

    #[test]
    fn messages_arrive_whole_from_any_split() {
        use std::io::Write;
        let mut wire = Vec::new();
        let sent = [
            HostMessage::Signal {
                process: 0,
                signal: 15,
            },
            HostMessage::Shutdown,
        ];
        for m in &sent {
            runvm_protocol::write_frame(&mut wire, m).unwrap();
        }
        for split in 0..wire.len() {
            let (mut control, mut host) = pair();
            host.write_all(&wire[..split]).unwrap();
            host.write_all(&wire[split..]).unwrap();
            drop(host);
            let mut got = Vec::new();
            while let Some(m) = control.recv().unwrap() {
                got.push(m);
            }
            assert_eq!(got, sent);
        }
    }

    #[test]
    fn garbage_and_oversized_frames_are_errors() {
        use std::io::Write;
        let (mut control, mut host) = pair();
        host.write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert!(control.recv().is_err());
        let (mut control, mut host) = pair();
        host.write_all(&3u32.to_le_bytes()).unwrap();
        host.write_all(b"{{{").unwrap();
        assert!(control.recv().is_err());
        // A host that closes mid-frame.
        let (mut control, mut host) = pair();
        host.write_all(&10u32.to_le_bytes()).unwrap();
        drop(host);
        assert!(control.recv().is_err());
    }
}

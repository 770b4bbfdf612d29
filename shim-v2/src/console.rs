//! Terminals (`ctr run -t`, `ctr task exec -t`): runvm hands the pty master of a
//! process to a console socket the shim listens on (runc's protocol, as containerd's runc
//! shim receives it); the shim copies containerd's stdin FIFO into the master and the
//! master into the stdout FIFO, and resizes the master on `ResizePty` (runvm passes the
//! new size on to the guest's pty).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::stdio::{self, StdinFeed};

/// How long runvm may take to send the master once `create`/`exec` returned (it sends
/// before it returns, so it is queued already).
const RECEIVE_WAIT: Duration = Duration::from_secs(5);

/// Why a terminal could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot make the console socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("runvm sent no pty master on the console socket {0}")]
    NothingSent(PathBuf),
    #[error("cannot receive the pty master on the console socket {path}: {source}")]
    Receive {
        path: PathBuf,
        source: runvm_protocol::scm::ScmError,
    },
    #[error("cannot open the stdio of the terminal: {0}")]
    Stdio(std::io::Error),
}

/// A listening console socket in a private temporary directory (removed on drop).
pub struct ConsoleSocket {
    dir: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<Self, ConsoleError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "runvm-shim-pty-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let made = || -> std::io::Result<UnixListener> {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
            UnixListener::bind(dir.join("pty.sock"))
        };
        match made() {
            Ok(listener) => Ok(Self { dir, listener }),
            Err(source) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(ConsoleError::Socket { path: dir, source })
            }
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("pty.sock")
    }

    /// The master runvm sent (exactly one descriptor).
    pub fn receive(&self) -> Result<OwnedFd, ConsoleError> {
        let path = self.path();
        let socket_error = |source| ConsoleError::Socket {
            path: path.clone(),
            source,
        };
        self.listener.set_nonblocking(true).map_err(socket_error)?;
        let deadline = Instant::now() + RECEIVE_WAIT;
        let conn = loop {
            match self.listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(ConsoleError::NothingSent(path));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(socket_error(e)),
            }
        };
        conn.set_nonblocking(false).map_err(socket_error)?;
        conn.set_read_timeout(Some(RECEIVE_WAIT))
            .map_err(socket_error)?;
        let (fds, _name) = runvm_protocol::scm::recv_fds(conn.as_fd(), 1)
            .map_err(|source| ConsoleError::Receive { path, source })?;
        Ok(fds.into_iter().next().expect("recv_fds checked the count"))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process's terminal as the shim holds it.
pub struct Console {
    master: File,
    /// Ready once all the process's output has been copied to containerd (the master
    /// reads EIO when the last holder of the slave, runvm, is gone).
    copied: Option<Receiver<()>>,
}

impl Console {
    /// Starts copying between the master and containerd's FIFOs (`stdin` "" is none);
    /// returns the console and the feed that `CloseIO` closes.
    pub fn attach(
        master: OwnedFd,
        stdin: &str,
        stdout: &str,
    ) -> Result<(Self, StdinFeed), ConsoleError> {
        let master = File::from(master);
        let mut out = stdio::open_output(stdout).map_err(ConsoleError::Stdio)?;
        let feed = if stdin.is_empty() {
            StdinFeed::default()
        } else {
            let writer = master.try_clone().map_err(ConsoleError::Stdio)?;
            stdio::feed_from_fifo(stdin, writer)
        };
        let mut reader = master.try_clone().map_err(ConsoleError::Stdio)?;
        let (done, copied) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // EIO: no slave is open any more.
                    Err(_) => break,
                }
            }
            let _ = done.send(());
        });
        Ok((
            Self {
                master,
                copied: Some(copied),
            },
            feed,
        ))
    }

    /// Sets the terminal's size (`ResizePty`).
    pub fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX.into()) as u16,
            ws_col: width.min(u16::MAX.into()) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize struct from a valid pointer, on a pty
        // master this console owns.
        if unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// What to wait on before the process's exit is told: the end of its output.
    pub fn take_copied(&mut self) -> Option<Receiver<()>> {
        self.copied.take()
    }
}

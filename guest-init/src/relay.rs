//! The stdio relay: the bytes between a process's stdio (pipes or pty master) and its
//! stream connections to the host ([`Streams`]).
//!
//! Every direction is a [`Pump`] with its own buffer; a source is read only when its
//! buffer is empty, and the buffer is written out with partial writes and EAGAIN handled,
//! so bytes are never dropped and a slow reader applies back-pressure to the writer. The
//! pumps only move bytes when told: the supervisor's `poll` loop says which is ready
//! ([`ProcessRelay::poll_slots`], [`ProcessRelay::ready`]).

use crate::error::{Context, Error, Result};
use crate::spawn::Stdio;
use crate::vsock::Transport;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::PollFlags;
use nix::sys::socket::{shutdown, Shutdown};
use runvm_protocol::{ProcessId, StreamHeader, STREAM_PORT};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

const BUF_SIZE: usize = 64 * 1024;

/// The host stream connections of one process: three for pipes (fd order), or one
/// bidirectional stream for a terminal.
pub enum Streams {
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Terminal(OwnedFd),
}

impl Streams {
    /// Opens the streams of `process` (one with a terminal, else three), each announced by
    /// its [`StreamHeader`].
    pub fn open(transport: &Transport, process: ProcessId, terminal: bool) -> Result<Self> {
        if terminal {
            return Ok(Self::Terminal(open_stream(transport, process, 0)?));
        }
        Ok(Self::Pipes {
            stdin: open_stream(transport, process, 0)?,
            stdout: open_stream(transport, process, 1)?,
            stderr: open_stream(transport, process, 2)?,
        })
    }

    /// Ends the output side of every stream (for a process that never started).
    pub fn shut_down(&self) {
        let fds = match self {
            Self::Pipes { stdout, stderr, .. } => vec![stdout, stderr],
            Self::Terminal(s) => vec![s],
        };
        for s in fds {
            let _ = shutdown(s.as_raw_fd(), Shutdown::Write);
        }
    }
}

/// Opens one stdio stream connection and sends its header.
fn open_stream(transport: &Transport, process: ProcessId, fd: u8) -> Result<OwnedFd> {
    let sock = transport.connect(STREAM_PORT)?;
    let mut f = std::fs::File::from(sock);
    runvm_protocol::write_frame(&mut f, &StreamHeader { process, fd })
        .with_context(|| format!("send the header of stream {fd} of process {process}"))?;
    Ok(OwnedFd::from(f))
}

/// What a pump waits for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Wait {
    /// Its source has bytes (or EOF).
    Readable,
    /// Its destination takes bytes.
    Writable,
}

impl Wait {
    /// The `poll` events that stand for it.
    pub fn poll_flags(self) -> PollFlags {
        match self {
            Self::Readable => PollFlags::POLLIN,
            Self::Writable => PollFlags::POLLOUT,
        }
    }
}

/// One descriptor a process's relay waits on.
pub struct PollSlot<'a> {
    /// The pump, by index in its [`ProcessRelay`].
    pub pump: usize,
    pub fd: BorrowedFd<'a>,
    pub wait: Wait,
}

/// The pumps of one process, and its pty master for resizes.
pub struct ProcessRelay {
    /// Input pumps first, then output pumps.
    pumps: Vec<Pump>,
    master: Option<OwnedFd>,
}

impl ProcessRelay {
    /// Pairs the host `streams` of a process with its `stdio`: stdin in, stdout and stderr
    /// out; or the terminal stream both ways through the pty master.
    pub fn new(streams: Streams, stdio: Stdio) -> Result<Self> {
        match (streams, stdio) {
            (
                Streams::Pipes {
                    stdin,
                    stdout,
                    stderr,
                },
                Stdio::Pipes {
                    stdin: stdin_pipe,
                    stdout: stdout_pipe,
                    stderr: stderr_pipe,
                },
            ) => Ok(Self {
                pumps: vec![
                    Pump::new(Dir::In, stdin, stdin_pipe)?,
                    Pump::new(Dir::Out, stdout_pipe, stdout)?,
                    Pump::new(Dir::Out, stderr_pipe, stderr)?,
                ],
                master: None,
            }),
            (Streams::Terminal(sock), Stdio::Terminal { master }) => Ok(Self {
                pumps: vec![
                    Pump::new(Dir::In, dup(&sock)?, dup(&master)?)?,
                    Pump::new(Dir::Out, dup(&master)?, sock)?,
                ],
                master: Some(master),
            }),
            _ => Err(Error::new("streams and stdio of a process do not match")),
        }
    }

    /// The pty master, for a terminal process.
    pub fn terminal(&self) -> Option<BorrowedFd<'_>> {
        self.master.as_ref().map(AsFd::as_fd)
    }

    /// Every output is at EOF and written out (or discarded).
    pub fn outputs_done(&self) -> bool {
        self.pumps
            .iter()
            .filter(|p| p.dir == Dir::Out)
            .all(Pump::done)
    }

    /// The process exited: nobody reads stdin any more, and a pty master is drained
    /// (read until it has nothing) instead of waiting for an EOF that a background
    /// process holding the slave may never give.
    pub fn process_exited(&mut self) {
        let terminal = self.master.is_some();
        for p in &mut self.pumps {
            match p.dir {
                Dir::In => p.stop(),
                Dir::Out if terminal => p.drain = true,
                Dir::Out => {}
            }
        }
    }

    /// Reads the draining pty masters once, without `poll`; whether there was any.
    pub fn drain_once(&mut self) -> bool {
        let mut drained = false;
        for pump in self.pumps.iter_mut().filter(|p| p.drain && p.want_read()) {
            pump.read();
            drained = true;
        }
        drained
    }

    /// What the pumps wait for in the next `poll`.
    pub fn poll_slots(&self) -> impl Iterator<Item = PollSlot<'_>> {
        self.pumps
            .iter()
            .enumerate()
            .filter_map(|(pump, p)| p.poll_slot(pump))
    }

    /// Moves bytes of pump `pump`, which `poll` found ready for `wait`.
    pub fn ready(&mut self, pump: usize, wait: Wait) {
        let Some(p) = self.pumps.get_mut(pump) else {
            return;
        };
        match wait {
            Wait::Readable => p.read(),
            Wait::Writable => p.write(),
        }
    }
}

/// Which way a [`Pump`] moves bytes, which decides what its end of stream means.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    /// host stream → process (stdin pipe or pty master): at EOF the destination is closed.
    In,
    /// process (pipe or pty master) → host stream: at EOF the stream's write side is shut
    /// down, which is EOF for the host.
    Out,
}

/// Moves bytes from `src` to `dst`.
struct Pump {
    dir: Dir,
    src: Option<OwnedFd>,
    dst: Option<OwnedFd>,
    buf: Vec<u8>,
    start: usize,
    /// The destination failed for good (reader went away): keep draining, drop the bytes.
    discard: bool,
    /// The process has exited and this is a pty master: a read that finds nothing is the
    /// end (a background process may still hold the slave open).
    drain: bool,
}

impl Pump {
    fn new(dir: Dir, src: OwnedFd, dst: OwnedFd) -> Result<Self> {
        set_nonblocking(src.as_fd())?;
        set_nonblocking(dst.as_fd())?;
        Ok(Self {
            dir,
            src: Some(src),
            dst: Some(dst),
            buf: Vec::with_capacity(BUF_SIZE),
            start: 0,
            discard: false,
            drain: false,
        })
    }

    fn pending(&self) -> bool {
        self.start < self.buf.len()
    }

    /// Finished: source at EOF and everything written (or discarded).
    fn done(&self) -> bool {
        self.src.is_none() && self.dst.is_none()
    }

    fn want_read(&self) -> bool {
        self.src.is_some() && !self.pending()
    }

    fn want_write(&self) -> bool {
        self.dst.is_some() && self.pending()
    }

    /// What this pump, number `pump` of its relay, waits on; `None` when it is finished.
    fn poll_slot(&self, pump: usize) -> Option<PollSlot<'_>> {
        let (fd, wait) = if self.want_read() {
            (self.src.as_ref()?, Wait::Readable)
        } else if self.want_write() {
            (self.dst.as_ref()?, Wait::Writable)
        } else {
            return None;
        };
        Some(PollSlot {
            pump,
            fd: fd.as_fd(),
            wait,
        })
    }

    fn clear_buffer(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    fn end_of_source(&mut self) {
        self.clear_buffer();
        self.src = None;
    }

    fn read(&mut self) {
        let Some(src) = &self.src else { return };
        self.buf.resize(BUF_SIZE, 0);
        loop {
            match nix::unistd::read(src.as_raw_fd(), &mut self.buf) {
                Ok(0) => {
                    self.end_of_source();
                    break;
                }
                Ok(n) => {
                    self.buf.truncate(n);
                    self.start = 0;
                    if self.discard || self.dst.is_none() {
                        self.buf.clear();
                    }
                    break;
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) if self.drain => {
                    self.end_of_source();
                    break;
                }
                Err(Errno::EAGAIN) => {
                    self.clear_buffer();
                    break;
                }
                // A pty master reads EIO once every slave descriptor is closed.
                Err(Errno::EIO) => {
                    self.end_of_source();
                    break;
                }
                Err(e) => {
                    crate::log::error(&format!("relay ({:?}) read: {e}", self.dir));
                    self.end_of_source();
                    break;
                }
            }
        }
        self.finish_if_drained();
    }

    fn write(&mut self) {
        let Some(dst) = &self.dst else { return };
        while self.pending() {
            match nix::unistd::write(dst, &self.buf[self.start..]) {
                Ok(n) => self.start += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    // EPIPE: the process closed stdin; ECONNRESET: the host went away.
                    if e != Errno::EPIPE && e != Errno::EIO {
                        crate::log::error(&format!("relay ({:?}) write: {e}", self.dir));
                    }
                    self.discard = true;
                    self.clear_buffer();
                    self.dst = None;
                    break;
                }
            }
        }
        self.finish_if_drained();
    }

    /// At source EOF with nothing pending, end the destination: close the stdin pipe (or
    /// this pump's copy of the pty master), or shut down the write side of an output
    /// socket (EOF for the host).
    fn finish_if_drained(&mut self) {
        if self.src.is_some() || self.pending() {
            return;
        }
        if let Some(dst) = self.dst.take() {
            if self.dir == Dir::Out {
                if let Err(e) = shutdown(dst.as_raw_fd(), Shutdown::Write) {
                    crate::log::error(&format!("shutdown of an output stream: {e}"));
                }
            }
        }
    }

    /// Stops reading: nobody consumes this direction any more.
    fn stop(&mut self) {
        self.src = None;
        self.dst = None;
        self.clear_buffer();
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<()> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).context("fcntl F_GETFL")?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).context("fcntl F_SETFL")?;
    Ok(())
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    fd.try_clone().context("dup")
}

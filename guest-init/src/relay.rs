//! The stdio relay: the bytes between a process's stdio (pipes or pty master) and its
//! stream connections to the host ([`Streams`]).
//!
//! Every direction is a [`Pump`] with its own buffer; its sources (one, or stdout and
//! stderr, whose reads become output chunks in the order they were read) are read only
//! when its buffer is empty, and the buffer is written out with partial writes and EAGAIN handled,
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
use runvm_protocol::{
    chunk_header, ProcessId, StreamHeader, CHUNK_HEADER_LEN, OUTPUT_STREAM_FD, STREAM_PORT,
};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// What one read takes from a source: one output chunk at most.
const BUF_SIZE: usize = runvm_protocol::MAX_CHUNK_LEN;

/// The host stream connections of one process: stdin and the output stream (stdout and
/// stderr as chunks, see [`runvm_protocol::output`]) for pipes, or one bidirectional
/// stream for a terminal.
pub enum Streams {
    Pipes { stdin: OwnedFd, output: OwnedFd },
    Terminal(OwnedFd),
}

impl Streams {
    /// Opens the streams of `process`, each announced by its [`StreamHeader`].
    pub fn open(transport: &Transport, process: ProcessId, terminal: bool) -> Result<Self> {
        if terminal {
            return Ok(Self::Terminal(open_stream(transport, process, 0)?));
        }
        Ok(Self::Pipes {
            stdin: open_stream(transport, process, 0)?,
            output: open_stream(transport, process, OUTPUT_STREAM_FD)?,
        })
    }

    /// Ends the output side of every stream (for a process that never started).
    pub fn shut_down(&self) {
        let s = match self {
            Self::Pipes { output, .. } => output,
            Self::Terminal(s) => s,
        };
        let _ = shutdown(s.as_raw_fd(), Shutdown::Write);
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

/// Which descriptor of a [`ProcessRelay`] a [`PollSlot`] stands for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SlotKey {
    pump: usize,
    /// The source, for a read; unused for a write.
    source: usize,
}

/// One descriptor a process's relay waits on.
pub struct PollSlot<'a> {
    pub key: SlotKey,
    pub fd: BorrowedFd<'a>,
    pub wait: Wait,
}

/// The pumps of one process, and its pty master for resizes.
pub struct ProcessRelay {
    /// The input pump first, then the output pump.
    pumps: Vec<Pump>,
    master: Option<OwnedFd>,
}

impl ProcessRelay {
    /// Pairs the host `streams` of a process with its `stdio`: stdin in, stdout and stderr
    /// out as chunks on one stream; or the terminal stream both ways through the pty
    /// master.
    pub fn new(streams: Streams, stdio: Stdio) -> Result<Self> {
        match (streams, stdio) {
            (
                Streams::Pipes { stdin, output },
                Stdio::Pipes {
                    stdin: stdin_pipe,
                    stdout: stdout_pipe,
                    stderr: stderr_pipe,
                },
            ) => Ok(Self {
                pumps: vec![
                    Pump::new(Dir::In, vec![Source::raw(stdin)], stdin_pipe)?,
                    Pump::new(
                        Dir::Out,
                        std::iter::once(Source::chunked(stdout_pipe, 1))
                            .chain(stderr_pipe.map(|e| Source::chunked(e, 2)))
                            .collect(),
                        output,
                    )?,
                ],
                master: None,
            }),
            (Streams::Terminal(sock), Stdio::Terminal { master }) => Ok(Self {
                pumps: vec![
                    Pump::new(Dir::In, vec![Source::raw(dup(&sock)?)], dup(&master)?)?,
                    Pump::new(Dir::Out, vec![Source::raw(dup(&master)?)], sock)?,
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
        for pump in self.pumps.iter_mut().filter(|p| p.drain) {
            for source in 0..pump.sources.len() {
                if pump.want_read(source) {
                    pump.read(source);
                    drained = true;
                }
            }
        }
        drained
    }

    /// What the pumps wait for in the next `poll`.
    pub fn poll_slots(&self) -> impl Iterator<Item = PollSlot<'_>> {
        self.pumps
            .iter()
            .enumerate()
            .flat_map(|(pump, p)| p.poll_slots(pump))
    }

    /// Moves bytes at `key`, which `poll` found ready for `wait`.
    pub fn ready(&mut self, key: SlotKey, wait: Wait) {
        let Some(p) = self.pumps.get_mut(key.pump) else {
            return;
        };
        match wait {
            Wait::Readable => p.read(key.source),
            Wait::Writable => p.write(),
        }
    }
}

/// Which way a [`Pump`] moves bytes, which decides what its end of stream means.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    /// host stream → process (stdin pipe or pty master): at EOF the destination is closed.
    In,
    /// process (pipes or pty master) → host stream: at EOF the stream's write side is shut
    /// down, which is EOF for the host.
    Out,
}

/// A descriptor a [`Pump`] reads.
struct Source {
    fd: Option<OwnedFd>,
    /// The fd its bytes are tagged with, as output chunks; `None`: sent as they are.
    chunk_fd: Option<u8>,
}

impl Source {
    fn raw(fd: OwnedFd) -> Self {
        Self {
            fd: Some(fd),
            chunk_fd: None,
        }
    }

    fn chunked(fd: OwnedFd, chunk_fd: u8) -> Self {
        Self {
            fd: Some(fd),
            chunk_fd: Some(chunk_fd),
        }
    }

    /// Where the data starts in the buffer of a read.
    fn data_offset(&self) -> usize {
        if self.chunk_fd.is_some() {
            CHUNK_HEADER_LEN
        } else {
            0
        }
    }
}

/// Moves bytes from its sources to `dst`, one read at a time, in the order read: the
/// buffer holds what one read brought (as a chunk, for chunked sources) until it is
/// written out, and no source is read before it is.
struct Pump {
    dir: Dir,
    sources: Vec<Source>,
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
    fn new(dir: Dir, sources: Vec<Source>, dst: OwnedFd) -> Result<Self> {
        for s in &sources {
            if let Some(fd) = &s.fd {
                set_nonblocking(fd.as_fd())?;
            }
        }
        set_nonblocking(dst.as_fd())?;
        Ok(Self {
            dir,
            sources,
            dst: Some(dst),
            buf: Vec::with_capacity(CHUNK_HEADER_LEN + BUF_SIZE),
            start: 0,
            discard: false,
            drain: false,
        })
    }

    fn pending(&self) -> bool {
        self.start < self.buf.len()
    }

    fn sources_open(&self) -> bool {
        self.sources.iter().any(|s| s.fd.is_some())
    }

    /// Finished: every source at EOF and everything written (or discarded).
    fn done(&self) -> bool {
        !self.sources_open() && self.dst.is_none()
    }

    fn want_read(&self, source: usize) -> bool {
        self.sources.get(source).is_some_and(|s| s.fd.is_some()) && !self.pending()
    }

    fn want_write(&self) -> bool {
        self.dst.is_some() && self.pending()
    }

    /// What this pump, number `pump` of its relay, waits on: its destination while bytes
    /// are pending, else every open source.
    fn poll_slots(&self, pump: usize) -> Vec<PollSlot<'_>> {
        if self.want_write() {
            let dst = self.dst.as_ref().map(AsFd::as_fd);
            return dst
                .map(|fd| PollSlot {
                    key: SlotKey { pump, source: 0 },
                    fd,
                    wait: Wait::Writable,
                })
                .into_iter()
                .collect();
        }
        if self.pending() {
            return Vec::new();
        }
        self.sources
            .iter()
            .enumerate()
            .filter_map(|(source, s)| {
                Some(PollSlot {
                    key: SlotKey { pump, source },
                    fd: s.fd.as_ref()?.as_fd(),
                    wait: Wait::Readable,
                })
            })
            .collect()
    }

    fn clear_buffer(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Source `source` is at its end; a chunked one says so to the host.
    fn end_of_source(&mut self, source: usize) {
        self.clear_buffer();
        let s = &mut self.sources[source];
        s.fd = None;
        if let Some(fd) = s.chunk_fd {
            if !self.discard && self.dst.is_some() {
                self.buf.extend_from_slice(&chunk_header(fd, 0));
            }
        }
    }

    /// Reads source `source` once, if the buffer is free (a source found ready in the same
    /// `poll` as another waits for the next one).
    fn read(&mut self, source: usize) {
        if !self.want_read(source) {
            return;
        }
        let s = &self.sources[source];
        let (offset, chunk_fd) = (s.data_offset(), s.chunk_fd);
        let Some(src) = s.fd.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        self.buf.resize(offset + BUF_SIZE, 0);
        loop {
            match nix::unistd::read(src, &mut self.buf[offset..]) {
                Ok(0) => {
                    self.end_of_source(source);
                    break;
                }
                Ok(n) => {
                    self.buf.truncate(offset + n);
                    if let Some(fd) = chunk_fd {
                        self.buf[..offset].copy_from_slice(&chunk_header(fd, n));
                    }
                    self.start = 0;
                    if self.discard || self.dst.is_none() {
                        self.buf.clear();
                    }
                    break;
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) if self.drain => {
                    self.end_of_source(source);
                    break;
                }
                Err(Errno::EAGAIN) => {
                    self.clear_buffer();
                    break;
                }
                // A pty master reads EIO once every slave descriptor is closed.
                Err(Errno::EIO) => {
                    self.end_of_source(source);
                    break;
                }
                Err(e) => {
                    crate::log::error(&format!("relay ({:?}) read: {e}", self.dir));
                    self.end_of_source(source);
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

    /// With every source at EOF and nothing pending, end the destination: close the
    /// stdin pipe (or this pump's copy of the pty master), or shut down the write side of
    /// an output socket (EOF for the host).
    fn finish_if_drained(&mut self) {
        if self.sources_open() || self.pending() {
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
        for s in &mut self.sources {
            s.fd = None;
        }
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

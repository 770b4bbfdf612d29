//! The stdio relay: the bytes between a process's stdio (pipes or pty master) and its
//! stream connections to the host ([`Streams`]).
//!
//! Every direction is a [`Pump`] with its own buffer; its sources (one, or stdout and
//! stderr, whose reads become output chunks in the order they were read) are read only
//! while the buffer has room (empty, for raw bytes), and the buffer is written out with
//! partial writes and EAGAIN handled, so bytes are never dropped and a slow reader
//! applies back-pressure to the writer. The
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
use std::time::{Duration, Instant};

/// What one read takes from a source: one output chunk at most.
const BUF_SIZE: usize = runvm_protocol::MAX_CHUNK_LEN;
/// Output chunks are gathered until this many bytes are pending…
const GATHER_BYTES: usize = 32 * 1024;
/// …or the oldest has waited this long: init reads every write of the workload as it is
/// made (which keeps stdout and stderr in order), but sends them in fewer, larger pieces.
const GATHER_TIME: Duration = Duration::from_millis(2);

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

    /// Whether the process writes both stdout and stderr (on separate pipes): their
    /// order is kept only if init reads each write as it is made.
    pub fn mixed_output(&self) -> bool {
        self.pumps.iter().any(Pump::mixed)
    }

    /// When gathered output is due to be sent even if nothing else happens.
    /// `now` is the one the `poll_slots` of the same round were given.
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        self.pumps.iter().filter_map(|p| p.deadline(now)).min()
    }

    /// What the pumps wait for in the next `poll`.
    pub fn poll_slots(&self, now: Instant) -> impl Iterator<Item = PollSlot<'_>> {
        self.pumps
            .iter()
            .enumerate()
            .flat_map(move |(pump, p)| p.poll_slots(pump, now))
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
    /// It has delivered bytes.
    delivered: bool,
}

impl Source {
    fn raw(fd: OwnedFd) -> Self {
        Self {
            fd: Some(fd),
            chunk_fd: None,
            delivered: false,
        }
    }

    fn chunked(fd: OwnedFd, chunk_fd: u8) -> Self {
        Self {
            fd: Some(fd),
            chunk_fd: Some(chunk_fd),
            delivered: false,
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

/// Moves bytes from its sources to `dst` in the order read. Raw bytes: the buffer holds
/// what one read brought until it is written out, and no source is read before it is.
/// Chunks: reads are appended as chunks while fewer than [`GATHER_BYTES`] are pending,
/// and written out once that many are, or after [`GATHER_TIME`], or at the end.
struct Pump {
    dir: Dir,
    sources: Vec<Source>,
    dst: Option<OwnedFd>,
    buf: Vec<u8>,
    start: usize,
    /// Since when the oldest pending chunk waits (chunks only).
    gathering_since: Option<Instant>,
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
            buf: Vec::with_capacity(GATHER_BYTES + CHUNK_HEADER_LEN + BUF_SIZE),
            start: 0,
            gathering_since: None,
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

    /// Whether several sources share this pump and each has delivered bytes.
    fn mixed(&self) -> bool {
        self.sources.len() > 1 && self.sources.iter().all(|s| s.delivered)
    }

    /// Whether this pump sends chunks (and so gathers them).
    fn chunked(&self) -> bool {
        self.sources.iter().any(|s| s.chunk_fd.is_some())
    }

    fn want_read(&self, source: usize) -> bool {
        let room = if self.chunked() {
            self.buf.len() - self.start < GATHER_BYTES
        } else {
            !self.pending()
        };
        self.sources.get(source).is_some_and(|s| s.fd.is_some()) && room
    }

    fn want_write(&self, now: Instant) -> bool {
        self.dst.is_some() && self.pending() && self.deadline(now).is_none()
    }

    /// When pending chunks are due to be written; `None` once they are due (the time has
    /// come, no source is left, the buffer is full, a pty drains) and for raw bytes,
    /// which never wait.
    /// (One `now` for a whole round of `poll_slots` and `deadline`: a deadline that
    /// passed between the two would otherwise be neither a write slot nor a timeout.)
    fn deadline(&self, now: Instant) -> Option<Instant> {
        let since = self.gathering_since?;
        let full = self.buf.len() - self.start >= GATHER_BYTES;
        (self.pending() && self.sources_open() && !full && !self.drain)
            .then_some(since + GATHER_TIME)
            .filter(|d| *d > now)
    }

    /// What this pump, number `pump` of its relay, waits on: its destination when bytes
    /// are due, and every source it may read.
    fn poll_slots(&self, pump: usize, now: Instant) -> Vec<PollSlot<'_>> {
        let mut slots = Vec::new();
        if self.want_write(now) {
            if let Some(fd) = self.dst.as_ref() {
                slots.push(PollSlot {
                    key: SlotKey { pump, source: 0 },
                    fd: fd.as_fd(),
                    wait: Wait::Writable,
                });
            }
        }
        for (source, s) in self.sources.iter().enumerate() {
            if let (Some(fd), true) = (s.fd.as_ref(), self.want_read(source)) {
                slots.push(PollSlot {
                    key: SlotKey { pump, source },
                    fd: fd.as_fd(),
                    wait: Wait::Readable,
                });
            }
        }
        slots
    }

    fn clear_buffer(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.gathering_since = None;
    }

    /// Source `source` is at its end; a chunked one says so to the host.
    fn end_of_source(&mut self, source: usize) {
        let s = &mut self.sources[source];
        s.fd = None;
        if let Some(fd) = s.chunk_fd {
            if !self.discard && self.dst.is_some() {
                self.buf.extend_from_slice(&chunk_header(fd, 0));
            }
        }
    }

    /// Reads source `source` once, if the buffer has room (a source found ready in the
    /// same `poll` as another may have to wait for the next one).
    fn read(&mut self, source: usize) {
        if !self.want_read(source) {
            return;
        }
        // What was written leaves the buffer before more is appended.
        self.buf.drain(..self.start);
        self.start = 0;
        let s = &self.sources[source];
        let (offset, chunk_fd) = (s.data_offset(), s.chunk_fd);
        let Some(src) = s.fd.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        let before = self.buf.len();
        self.buf.resize(before + offset + BUF_SIZE, 0);
        let result = loop {
            match nix::unistd::read(src, &mut self.buf[before + offset..]) {
                Err(Errno::EINTR) => {}
                r => break r,
            }
        };
        match result {
            Ok(n) if n > 0 => {
                self.sources[source].delivered = true;
                self.buf.truncate(before + offset + n);
                if let Some(fd) = chunk_fd {
                    self.buf[before..before + offset].copy_from_slice(&chunk_header(fd, n));
                    self.gathering_since.get_or_insert_with(Instant::now);
                }
                if self.discard || self.dst.is_none() {
                    self.clear_buffer();
                }
            }
            other => {
                self.buf.truncate(before);
                let at_end = match other {
                    // EOF, or a pty master with every slave descriptor closed.
                    Ok(_) | Err(Errno::EIO) => true,
                    Err(Errno::EAGAIN) => self.drain,
                    Err(e) => {
                        crate::log::error(&format!("relay ({:?}) read: {e}", self.dir));
                        true
                    }
                };
                if at_end {
                    self.end_of_source(source);
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
        if !self.pending() {
            self.clear_buffer();
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

#[cfg(test)]
mod tests {
    use super::*;
    use runvm_protocol::{Chunk, OutputReader};
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    /// A relay for pipes: the process's ends of stdout and stderr, and the host's end of
    /// the output stream.
    fn pipes_relay() -> (ProcessRelay, [std::fs::File; 2], UnixStream) {
        let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let ((in_r, _in_w), (out_r, out_w), (err_r, err_w)) = (pipe(), pipe(), pipe());
        let (host_in, guest_in) = UnixStream::pair().unwrap();
        let (host_out, guest_out) = UnixStream::pair().unwrap();
        std::mem::forget(host_in);
        let relay = ProcessRelay::new(
            Streams::Pipes {
                stdin: guest_in.into(),
                output: guest_out.into(),
            },
            Stdio::Pipes {
                stdin: in_r,
                stdout: out_r,
                stderr: Some(err_r),
            },
        )
        .unwrap();
        (relay, [out_w.into(), err_w.into()], host_out)
    }

    /// Reads every slot that `poll` would find ready now (by trying them all).
    fn step(relay: &mut ProcessRelay) -> Vec<Wait> {
        let slots: Vec<_> = relay
            .poll_slots(Instant::now())
            .map(|s| (s.key, s.wait))
            .collect();
        for (key, wait) in &slots {
            relay.ready(*key, *wait);
        }
        slots.into_iter().map(|(_, w)| w).collect()
    }

    #[test]
    fn writes_are_gathered_in_read_order_and_sent_by_the_deadline() {
        let (mut relay, mut outs, host) = pipes_relay();
        for (fd, line) in [(0, "out1\n"), (1, "err1\n"), (0, "out2\n")] {
            outs[fd].write_all(line.as_bytes()).unwrap();
            // Init reads each write as it comes (it preempts the writer).
            step(&mut relay);
        }
        // Gathered, not yet sent: nothing waits for the socket while the deadline, at
        // most the gathering time away, has not passed. (A loaded machine may take longer
        // than that over the three steps: then they are due at once, checked below.)
        let start = Instant::now();
        let deadline = relay.deadline(start);
        if let Some(d) = deadline {
            assert!(d <= start + GATHER_TIME);
        }
        // For any one instant, pending bytes are either due (a write slot) or have a
        // deadline (a poll timeout): never neither, which would wait for ever.
        for late in [0, 1, 2, 3, 50] {
            let now = start + Duration::from_millis(late);
            let writable = relay.poll_slots(now).any(|s| s.wait == Wait::Writable);
            assert!(writable != relay.deadline(now).is_some(), "at +{late} ms");
        }
        let waits = step(&mut relay);
        if deadline.is_some_and(|d| Instant::now() < d) {
            assert!(!waits.contains(&Wait::Writable), "sent before its deadline");
        }
        std::thread::sleep(GATHER_TIME + Duration::from_millis(1));
        assert_eq!(relay.deadline(Instant::now()), None);
        assert!(step(&mut relay).contains(&Wait::Writable));
        drop(outs);
        for _ in 0..4 {
            step(&mut relay);
        }
        assert!(relay.outputs_done());
        let mut reader = OutputReader::new(host);
        let mut buf = vec![0u8; runvm_protocol::MAX_CHUNK_LEN];
        let mut got = Vec::new();
        while let Some(c) = reader.next_chunk(&mut buf).unwrap() {
            got.push(match c {
                Chunk::Data { fd, len } => format!("{fd}:{}", String::from_utf8_lossy(&buf[..len])),
                Chunk::End { fd } => format!("{fd}:end"),
            });
        }
        assert_eq!(got, ["1:out1\n", "2:err1\n", "1:out2\n", "1:end", "2:end"]);
    }

    #[test]
    fn a_full_buffer_is_sent_at_once() {
        let (mut relay, [mut out, _err], _host) = pipes_relay();
        let big = vec![b'x'; GATHER_BYTES];
        let writer = std::thread::spawn(move || out.write_all(&big).map(|()| out));
        let mut sent = false;
        for _ in 0..100 {
            if step(&mut relay).contains(&Wait::Writable) {
                sent = true;
                break;
            }
        }
        assert!(
            sent,
            "a buffer of {GATHER_BYTES} bytes waited for its deadline"
        );
        drop(writer.join().unwrap());
    }
}

//! The stdio relay and event loop while the workload runs.
//!
//! One `poll` loop, no threads: stdin socket → stdin pipe, stdout/stderr pipes → their
//! sockets, control messages from the host (signals), and SIGCHLD through a signalfd.
//! Every relay direction has its own buffer; a source is read only when its buffer is
//! empty and the buffer is written out with partial writes and EAGAIN handled, so bytes
//! are never dropped and a slow reader applies back-pressure to the writer.

use crate::error::{Context, Error, Result};
use crate::vsock::Control;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{shutdown, Shutdown};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use runvm_protocol::{ExitStatus, HostMessage, MAIN_PROCESS};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

const BUF_SIZE: usize = 64 * 1024;

/// Which end of a [`Pump`] is a socket (to shut down at EOF) and which a pipe (to close).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    /// socket → pipe (stdin)
    In,
    /// pipe → socket (stdout, stderr)
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
}

impl Pump {
    fn new(dir: Dir, src: OwnedFd, dst: OwnedFd) -> Result<Self> {
        set_nonblocking(&src)?;
        set_nonblocking(&dst)?;
        Ok(Self {
            dir,
            src: Some(src),
            dst: Some(dst),
            buf: Vec::with_capacity(BUF_SIZE),
            start: 0,
            discard: false,
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

    fn read(&mut self) {
        let Some(src) = &self.src else { return };
        self.buf.resize(BUF_SIZE, 0);
        loop {
            match nix::unistd::read(src.as_raw_fd(), &mut self.buf) {
                Ok(0) => {
                    self.buf.clear();
                    self.start = 0;
                    self.src = None;
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
                Err(Errno::EAGAIN) => {
                    self.buf.clear();
                    self.start = 0;
                    break;
                }
                Err(e) => {
                    crate::log::error(&format!("relay ({:?}) read: {e}", self.dir));
                    self.buf.clear();
                    self.start = 0;
                    self.src = None;
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
                    // EPIPE: the workload closed stdin; ECONNRESET: the host went away.
                    if e != Errno::EPIPE {
                        crate::log::error(&format!("relay ({:?}) write: {e}", self.dir));
                    }
                    self.discard = true;
                    self.buf.clear();
                    self.start = 0;
                    self.dst = None;
                    break;
                }
            }
        }
        self.finish_if_drained();
    }

    /// At source EOF with nothing pending, end the destination: close the stdin pipe, or
    /// shut down the write side of an output socket (EOF for the host).
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
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).context("fcntl F_GETFL")?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).context("fcntl F_SETFL")?;
    Ok(())
}

/// The sockets of the three stdio streams, in fd order.
pub struct Streams {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What the loop needs and produces.
pub struct Relay<'a> {
    pub control: &'a mut Control,
    pub sigchld: &'a SignalFd,
    pub pid: Pid,
}

/// The outcome of [`Relay::run`].
pub struct Outcome {
    pub status: ExitStatus,
    /// The host closed the control connection while the workload ran.
    pub host_gone: bool,
}

impl Relay<'_> {
    /// Runs until the workload has exited and both output pipes are drained to EOF and
    /// their sockets shut down. `on_exit` is called the moment the workload is reaped.
    pub fn run(
        self,
        streams: Streams,
        stdin_pipe: OwnedFd,
        stdout_pipe: OwnedFd,
        stderr_pipe: OwnedFd,
        mut on_exit: impl FnMut(ExitStatus),
    ) -> Result<Outcome> {
        let mut pumps = [
            Pump::new(Dir::In, streams.stdin, stdin_pipe)?,
            Pump::new(Dir::Out, stdout_pipe, streams.stdout)?,
            Pump::new(Dir::Out, stderr_pipe, streams.stderr)?,
        ];
        let mut status: Option<ExitStatus> = None;
        let mut control_open = true;
        let mut host_gone = false;

        loop {
            if let Some(st) = status {
                if pumps[1].done() && pumps[2].done() {
                    return Ok(Outcome {
                        status: st,
                        host_gone,
                    });
                }
            }
            // Tags: 0..3 pump read, 3..6 pump write, 6 control, 7 sigchld.
            let mut tags = Vec::with_capacity(8);
            let mut fds = Vec::with_capacity(8);
            for (i, p) in pumps.iter().enumerate() {
                if p.want_read() {
                    if let Some(src) = &p.src {
                        tags.push(i);
                        fds.push(PollFd::new(src.as_fd(), PollFlags::POLLIN));
                    }
                } else if p.want_write() {
                    if let Some(dst) = &p.dst {
                        tags.push(3 + i);
                        fds.push(PollFd::new(dst.as_fd(), PollFlags::POLLOUT));
                    }
                }
            }
            if control_open {
                tags.push(6);
                fds.push(PollFd::new(self.control.fd(), PollFlags::POLLIN));
            }
            if status.is_none() {
                tags.push(7);
                fds.push(PollFd::new(self.sigchld.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::new(format!("poll: {e}"))),
            }
            let ready: Vec<usize> = tags
                .iter()
                .zip(fds.iter())
                .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(t, _)| *t)
                .collect();
            drop(fds);

            for tag in ready {
                match tag {
                    0..=2 => pumps[tag].read(),
                    3..=5 => pumps[tag - 3].write(),
                    6 => {
                        if !self.control.read_available()? {
                            control_open = false;
                            if status.is_none() {
                                crate::log::error(
                                    "host closed the control connection; killing the workload",
                                );
                                host_gone = true;
                                send_signal(self.pid, libc::SIGKILL);
                            }
                        }
                        while let Some(msg) = self.control.next_buffered()? {
                            self.handle(msg, status.is_some());
                        }
                    }
                    _ => {
                        // Drain the signalfd, then reap everything that exited.
                        while let Ok(Some(_)) = self.sigchld.read_signal() {}
                        if let Some(st) = reap(self.pid) {
                            status = Some(st);
                            on_exit(st);
                            // Nobody reads stdin any more.
                            pumps[0].src = None;
                            pumps[0].dst = None;
                        }
                    }
                }
            }
        }
    }

    fn handle(&self, msg: HostMessage, exited: bool) {
        match msg {
            HostMessage::Signal { process, signal } if process == MAIN_PROCESS => {
                if !exited {
                    crate::log::info(&format!("signal {signal} to the workload"));
                    send_signal(self.pid, signal);
                }
            }
            other => crate::log::error(&format!("ignoring unexpected message {other:?}")),
        }
    }
}

/// `kill(pid, sig)` for any signal number, real-time signals included.
pub fn send_signal(pid: Pid, sig: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory. nix's `kill` only accepts
    // its `Signal` enum, which has no real-time signals.
    let rc = unsafe { libc::kill(pid.as_raw(), sig) };
    if rc != 0 {
        crate::log::error(&format!("kill({pid}, {sig}): {}", Errno::last()));
    }
}

/// Reaps every exited child; returns the workload's status if it was among them.
pub fn reap(workload: Pid) -> Option<ExitStatus> {
    let mut found = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return found,
            Ok(ws) => {
                if ws.pid() == Some(workload) {
                    if let Some(st) = crate::workload::exit_status(ws) {
                        found = Some(st);
                    }
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                crate::log::error(&format!("waitpid: {e}"));
                return found;
            }
        }
    }
}

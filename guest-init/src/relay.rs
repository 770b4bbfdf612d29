//! The event loop while the container runs: the stdio relays of every process (the main
//! one and exec'd ones), control messages from the host (signals, exec, resize), and
//! SIGCHLD through a signalfd.
//!
//! One `poll` loop, no threads. Every relay direction is a [`Pump`] with its own buffer;
//! a source is read only when its buffer is empty, and the buffer is written out with
//! partial writes and EAGAIN handled, so bytes are never dropped and a slow reader applies
//! back-pressure to the writer. A process is reported `Exited` once it is reaped and its
//! output streams are drained and shut down. When the main process exits, the kernel
//! kills the rest of its PID namespace; the loop ends when every process is reported.

use crate::error::{Context, Error, Result};
use crate::vsock::{Control, Transport};
use crate::workload::{self, Stdio};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{shutdown, Shutdown};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use runvm_protocol::{
    ExitStatus, GuestMessage, HostMessage, ProcessId, ProcessSpec, StreamHeader, WindowSize,
    MAIN_PROCESS, STREAM_PORT,
};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

const BUF_SIZE: usize = 64 * 1024;

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
        set_nonblocking(&src)?;
        set_nonblocking(&dst)?;
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

    fn end_of_source(&mut self) {
        self.buf.clear();
        self.start = 0;
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
                    self.buf.clear();
                    self.start = 0;
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
                    self.buf.clear();
                    self.start = 0;
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
        self.buf.clear();
        self.start = 0;
    }
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).context("fcntl F_GETFL")?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).context("fcntl F_SETFL")?;
    Ok(())
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    fd.try_clone().context("dup")
}

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

/// One running (or exited, still draining) process.
struct Proc {
    pid: Pid,
    /// Input pumps first, then output pumps.
    pumps: Vec<Pump>,
    /// The pty master, for resizes.
    master: Option<OwnedFd>,
    status: Option<ExitStatus>,
}

impl Proc {
    fn new(pid: Pid, streams: Streams, stdio: Stdio) -> Result<Self> {
        let (pumps, master) = match (streams, stdio) {
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
            ) => (
                vec![
                    Pump::new(Dir::In, stdin, stdin_pipe)?,
                    Pump::new(Dir::Out, stdout_pipe, stdout)?,
                    Pump::new(Dir::Out, stderr_pipe, stderr)?,
                ],
                None,
            ),
            (Streams::Terminal(sock), Stdio::Terminal { master }) => (
                vec![
                    Pump::new(Dir::In, dup(&sock)?, dup(&master)?)?,
                    Pump::new(Dir::Out, dup(&master)?, sock)?,
                ],
                Some(master),
            ),
            _ => return Err(Error::new("streams and stdio of a process do not match")),
        };
        Ok(Self {
            pid,
            pumps,
            master,
            status: None,
        })
    }

    fn outputs_done(&self) -> bool {
        self.pumps
            .iter()
            .filter(|p| p.dir == Dir::Out)
            .all(Pump::done)
    }

    fn exited(&mut self, status: ExitStatus) {
        self.status = Some(status);
        let terminal = self.master.is_some();
        for p in &mut self.pumps {
            match p.dir {
                // Nobody reads stdin any more.
                Dir::In => p.stop(),
                Dir::Out if terminal => p.drain = true,
                Dir::Out => {}
            }
        }
    }
}

/// The outcome of [`Supervisor::run`].
pub struct Outcome {
    /// How the main process ended.
    pub status: ExitStatus,
    /// The host closed the control connection while the container ran.
    pub host_gone: bool,
}

/// What a poll slot stands for.
#[derive(Clone, Copy)]
enum Tag {
    Read(ProcessId, usize),
    Write(ProcessId, usize),
    Control,
    Sigchld,
}

/// Runs the container's processes until the main one and every exec'd one are reported.
pub struct Supervisor<'a> {
    pub control: &'a mut Control,
    pub sigchld: &'a SignalFd,
    pub transport: &'a Transport,
    processes: BTreeMap<ProcessId, Proc>,
    main_pid: Pid,
    main_status: Option<ExitStatus>,
    control_open: bool,
    host_gone: bool,
}

impl<'a> Supervisor<'a> {
    /// Takes over the main process, already started, with its streams.
    pub fn new(
        control: &'a mut Control,
        sigchld: &'a SignalFd,
        transport: &'a Transport,
        main: workload::Spawned,
        streams: Streams,
    ) -> Result<Self> {
        let mut processes = BTreeMap::new();
        let main_pid = main.pid;
        processes.insert(MAIN_PROCESS, Proc::new(main.pid, streams, main.stdio)?);
        Ok(Self {
            control,
            sigchld,
            transport,
            processes,
            main_pid,
            main_status: None,
            control_open: true,
            host_gone: false,
        })
    }

    /// Runs until every process has exited and its output is drained; `Exited` is sent
    /// here for exec'd processes, and left to the caller for the main one (it goes last).
    /// `on_main_exit` is called the moment the main process is reaped.
    pub fn run(mut self, mut on_main_exit: impl FnMut(ExitStatus)) -> Result<Outcome> {
        loop {
            self.report_finished()?;
            if let Some(status) = self.main_status {
                if self.processes.is_empty() {
                    return Ok(Outcome {
                        status,
                        host_gone: self.host_gone,
                    });
                }
            }
            // Exited processes' pty masters are read until they have nothing (no poll:
            // a background process may keep the slave open, so no EOF may ever come).
            let mut drained = false;
            for p in self.processes.values_mut() {
                for pump in p.pumps.iter_mut().filter(|p| p.drain && p.want_read()) {
                    pump.read();
                    drained = true;
                }
            }
            if drained {
                continue;
            }
            let mut tags = Vec::new();
            let mut fds = Vec::new();
            for (id, p) in &self.processes {
                for (i, pump) in p.pumps.iter().enumerate() {
                    if pump.want_read() {
                        if let Some(src) = &pump.src {
                            tags.push(Tag::Read(*id, i));
                            fds.push(PollFd::new(src.as_fd(), PollFlags::POLLIN));
                        }
                    } else if pump.want_write() {
                        if let Some(dst) = &pump.dst {
                            tags.push(Tag::Write(*id, i));
                            fds.push(PollFd::new(dst.as_fd(), PollFlags::POLLOUT));
                        }
                    }
                }
            }
            if self.control_open {
                tags.push(Tag::Control);
                fds.push(PollFd::new(self.control.fd(), PollFlags::POLLIN));
            }
            tags.push(Tag::Sigchld);
            fds.push(PollFd::new(self.sigchld.as_fd(), PollFlags::POLLIN));
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::new(format!("poll: {e}"))),
            }
            let ready: Vec<Tag> = tags
                .iter()
                .zip(fds.iter())
                .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(t, _)| *t)
                .collect();
            drop(fds);

            for tag in ready {
                match tag {
                    Tag::Read(id, i) => {
                        if let Some(p) = self.processes.get_mut(&id) {
                            p.pumps[i].read();
                        }
                    }
                    Tag::Write(id, i) => {
                        if let Some(p) = self.processes.get_mut(&id) {
                            p.pumps[i].write();
                        }
                    }
                    Tag::Control => {
                        if !self.control.read_available()? {
                            self.control_open = false;
                            if self.main_status.is_none() {
                                crate::log::error(
                                    "host closed the control connection; killing the workload",
                                );
                                self.host_gone = true;
                                send_signal(self.main_pid, libc::SIGKILL);
                            }
                        }
                        while let Some(msg) = self.control.next_buffered()? {
                            self.handle(msg)?;
                        }
                    }
                    Tag::Sigchld => {
                        // Drain the signalfd, then reap everything that exited.
                        while let Ok(Some(_)) = self.sigchld.read_signal() {}
                        for (pid, st) in reap() {
                            let Some((id, p)) =
                                self.processes.iter_mut().find(|(_, p)| p.pid == pid)
                            else {
                                continue;
                            };
                            if *id == MAIN_PROCESS {
                                on_main_exit(st);
                            }
                            p.exited(st);
                        }
                    }
                }
            }
        }
    }

    /// Sends `Exited` for every exec'd process that is reaped and drained, and forgets
    /// it; the main process's status is kept for the caller.
    fn report_finished(&mut self) -> Result<()> {
        let done: Vec<ProcessId> = self
            .processes
            .iter()
            .filter(|(_, p)| p.status.is_some() && p.outputs_done())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let Some(p) = self.processes.remove(&id) else {
                continue;
            };
            let Some(status) = p.status else { continue };
            if id == MAIN_PROCESS {
                self.main_status = Some(status);
                continue;
            }
            crate::log::info(&format!("process {id} exited: {status:?}"));
            if self.control_open {
                self.control.send(&GuestMessage::Exited {
                    process: id,
                    status,
                })?;
            }
        }
        Ok(())
    }

    fn handle(&mut self, msg: HostMessage) -> Result<()> {
        match msg {
            HostMessage::Signal { process, signal } => match self.processes.get(&process) {
                Some(p) if p.status.is_none() => {
                    crate::log::info(&format!("signal {signal} to process {process}"));
                    send_signal(p.pid, signal);
                }
                _ => crate::log::info(&format!(
                    "signal {signal} to process {process}, which is not running"
                )),
            },
            HostMessage::Resize {
                process,
                rows,
                cols,
            } => {
                if let Some(m) = self.processes.get(&process).and_then(|p| p.master.as_ref()) {
                    if let Err(e) =
                        workload::set_window_size(m.as_raw_fd(), WindowSize { rows, cols })
                    {
                        crate::log::error(&format!("resize of process {process}: {e}"));
                    }
                }
            }
            HostMessage::Exec { process, spec } => {
                let reply = match self.exec(process, &spec) {
                    Ok(pid) => GuestMessage::Started {
                        process,
                        pid: pid.as_raw(),
                    },
                    Err(e) => {
                        crate::log::error(&format!("exec of process {process}: {e}"));
                        GuestMessage::StartFailed {
                            process,
                            code: e.code,
                            message: e.message,
                        }
                    }
                };
                self.control.send(&reply)?;
            }
            HostMessage::ListProcesses { request } => {
                let processes = crate::cgroup::processes(self.main_pid);
                self.control
                    .send(&GuestMessage::Processes { request, processes })?;
            }
            HostMessage::Stats { request } => {
                let stats = crate::cgroup::stats();
                self.control.send(&GuestMessage::Stats { request, stats })?;
            }
            HostMessage::Update { request, resources } => {
                let error = crate::cgroup::apply(&resources).err();
                self.control
                    .send(&GuestMessage::Updated { request, error })?;
            }
            other => crate::log::error(&format!("ignoring unexpected message {other:?}")),
        }
        Ok(())
    }

    /// Starts an exec'd process and its streams.
    fn exec(&mut self, process: ProcessId, spec: &ProcessSpec) -> Result<Pid> {
        if self.main_status.is_some()
            || self
                .processes
                .get(&MAIN_PROCESS)
                .is_none_or(|p| p.status.is_some())
        {
            return Err(Error::new(
                "cannot exec: the container's main process has exited (container not running)",
            ));
        }
        if process == MAIN_PROCESS || self.processes.contains_key(&process) {
            return Err(Error::new(format!(
                "protocol error: process id {process} is in use"
            )));
        }
        crate::log::info(&format!("exec {process}: {:?}", spec.args));
        let spawned = match workload::spawn_exec(self.main_pid, spec)? {
            Ok(s) => s,
            // The failed child is reaped with the others on SIGCHLD.
            Err(failed) => return Err(failed.error),
        };
        let pid = spawned.pid;
        let streams = match Streams::open(self.transport, process, spec.terminal) {
            Ok(s) => s,
            Err(e) => {
                send_signal(pid, libc::SIGKILL);
                return Err(e);
            }
        };
        self.processes
            .insert(process, Proc::new(pid, streams, spawned.stdio)?);
        Ok(pid)
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

/// Reaps every exited child; returns the pids and statuses of those that ended.
pub fn reap() -> Vec<(Pid, ExitStatus)> {
    let mut found = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return found,
            Ok(ws) => {
                if let (Some(pid), Some(st)) = (ws.pid(), workload::exit_status(ws)) {
                    found.push((pid, st));
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

//! The control-message loop while the container runs: one `poll` loop, no threads, over
//! the stdio relays of every process (the main one and exec'd ones, see [`crate::relay`]),
//! the control connection (signals, exec, resize, process list, stats, updates), and
//! SIGCHLD through a signalfd.
//!
//! A process is reported `Exited` once it is reaped and its output streams are drained
//! and shut down. When the main process exits, the kernel kills the rest of its PID
//! namespace; the loop ends when every process is reported.

use crate::error::{Error, Result};
use crate::reap::{self, Reaped};
use crate::relay::{ProcessRelay, SlotKey, Streams, Wait};
use crate::spawn::{Spawned, Started};
use crate::vsock::{Control, Transport};
use crate::{cgroup, signals, terminal, workload};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;
use runvm_protocol::{
    ExitStatus, GuestMessage, HostMessage, ProcessId, ProcessSpec, WindowSize, MAIN_PROCESS,
};
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::time::Instant;

/// One running (or exited, still draining) process.
struct Proc {
    pid: Pid,
    relay: ProcessRelay,
    status: Option<ExitStatus>,
}

impl Proc {
    fn new(spawned: Spawned, streams: Streams) -> Result<Self> {
        Ok(Self {
            pid: spawned.pid,
            relay: ProcessRelay::new(streams, spawned.stdio)?,
            status: None,
        })
    }

    fn running(&self) -> bool {
        self.status.is_none()
    }

    fn exited(&mut self, status: ExitStatus) {
        self.status = Some(status);
        self.relay.process_exited();
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
    Pump {
        process: ProcessId,
        key: SlotKey,
        wait: Wait,
    },
    Control,
    Sigchld,
}

/// Runs the container's processes until the main one and every exec'd one are reported.
pub struct Supervisor<'a> {
    control: &'a mut Control,
    sigchld: &'a SignalFd,
    transport: &'a Transport,
    processes: BTreeMap<ProcessId, Proc>,
    main_pid: Pid,
    main_status: Option<ExitStatus>,
    control_open: bool,
    host_gone: bool,
    /// Init runs at nice -20 (see [`Supervisor::set_priority`]).
    prompt: bool,
    /// Init's own nice value otherwise (0 in the VM).
    base_nice: i32,
}

impl<'a> Supervisor<'a> {
    /// Takes over the main process, already started, with its streams.
    pub fn new(
        control: &'a mut Control,
        sigchld: &'a SignalFd,
        transport: &'a Transport,
        main: Spawned,
        streams: Streams,
    ) -> Result<Self> {
        let main_pid = main.pid;
        let processes = BTreeMap::from([(MAIN_PROCESS, Proc::new(main, streams)?)]);
        // Whatever init forks from now on starts at nice 0 even while init runs at -20
        // (see `set_priority`).
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler of this process, with a parameter that lives across
        // the call.
        let policy = unsafe {
            libc::sched_setscheduler(0, libc::SCHED_OTHER | libc::SCHED_RESET_ON_FORK, &param)
        };
        if policy != 0 {
            crate::log::error(&format!(
                "cannot set SCHED_RESET_ON_FORK on init: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self {
            control,
            sigchld,
            transport,
            processes,
            main_pid,
            main_status: None,
            control_open: true,
            host_gone: false,
            prompt: false,
            // SAFETY: getpriority of this process; no memory is passed.
            base_nice: unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) },
        })
    }

    /// Runs until every process has exited and its output is drained; `Exited` is sent
    /// here for exec'd processes, and left to the caller for the main one (it goes last).
    /// `on_main_exit` is called the moment the main process is reaped.
    pub fn run(mut self, mut on_main_exit: impl FnMut(ExitStatus)) -> Result<Outcome> {
        loop {
            self.report_finished()?;
            if let Some(outcome) = self.outcome() {
                return Ok(outcome);
            }
            // Exited processes' pty masters are read until they have nothing (no poll:
            // a background process may keep the slave open, so no EOF may ever come).
            if self.drain_exited_terminals() {
                continue;
            }
            for tag in self.poll_ready()? {
                self.dispatch(tag, &mut on_main_exit)?;
            }
            self.set_priority();
        }
    }

    /// Init runs at nice -20 while a process writes both stdout and stderr (on separate
    /// pipes): then it preempts the writer at each write and reads it at once, so the two
    /// reach the host in the order they were written (read later, both pipes would hold
    /// data and their order would be lost). Otherwise at its own (0), where reads gather
    /// many writes and cost the workload fewer context switches. `SCHED_RESET_ON_FORK`
    /// (set in [`Supervisor::new`]) starts every process init forks at nice 0.
    fn set_priority(&mut self) {
        let prompt = self.processes.values().any(|p| p.relay.mixed_output());
        if prompt == self.prompt {
            return;
        }
        self.prompt = prompt;
        let value = if prompt { -20 } else { self.base_nice };
        // SAFETY: setpriority of this process; no memory is passed.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, value) } != 0 {
            crate::log::error(&format!(
                "cannot set init's priority: {}",
                std::io::Error::last_os_error()
            ));
        }
    }

    /// The end, once the main process is reported and no other is left.
    fn outcome(&self) -> Option<Outcome> {
        let status = self.main_status?;
        self.processes.is_empty().then_some(Outcome {
            status,
            host_gone: self.host_gone,
        })
    }

    fn drain_exited_terminals(&mut self) -> bool {
        let mut drained = false;
        for p in self.processes.values_mut() {
            drained |= p.relay.drain_once();
        }
        drained
    }

    /// Waits for any relay, the control connection or SIGCHLD; what is ready.
    fn poll_ready(&self) -> Result<Vec<Tag>> {
        let mut tags = Vec::new();
        let mut fds = Vec::new();
        // One instant for the slots and the deadlines of this round (see `Pump::deadline`).
        let now = Instant::now();
        for (id, p) in &self.processes {
            for slot in p.relay.poll_slots(now) {
                tags.push(Tag::Pump {
                    process: *id,
                    key: slot.key,
                    wait: slot.wait,
                });
                fds.push(PollFd::new(slot.fd, slot.wait.poll_flags()));
            }
        }
        if self.control_open {
            tags.push(Tag::Control);
            fds.push(PollFd::new(self.control.fd(), PollFlags::POLLIN));
        }
        tags.push(Tag::Sigchld);
        fds.push(PollFd::new(self.sigchld.as_fd(), PollFlags::POLLIN));
        // Gathered output is sent by its deadline even if nothing else happens.
        let deadline = self
            .processes
            .values()
            .filter_map(|p| p.relay.deadline(now))
            .min();
        let timeout = match deadline {
            Some(d) => {
                let ms = d
                    .saturating_duration_since(Instant::now())
                    .as_micros()
                    .div_ceil(1000);
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::new(format!("poll: {e}"))),
        }
        Ok(tags
            .into_iter()
            .zip(fds.iter())
            .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(t, _)| t)
            .collect())
    }

    fn dispatch(&mut self, tag: Tag, on_main_exit: &mut impl FnMut(ExitStatus)) -> Result<()> {
        match tag {
            Tag::Pump { process, key, wait } => {
                if let Some(p) = self.processes.get_mut(&process) {
                    p.relay.ready(key, wait);
                }
                Ok(())
            }
            Tag::Control => self.control_readable(),
            Tag::Sigchld => {
                self.sigchld_arrived(on_main_exit);
                Ok(())
            }
        }
    }

    /// Reads the control connection and handles every complete message. At EOF while the
    /// main process runs, the host is gone: the container's PID namespace is killed.
    fn control_readable(&mut self) -> Result<()> {
        if !self.control.read_available()? {
            self.control_open = false;
            if self.main_status.is_none() {
                crate::log::error("host closed the control connection; killing the workload");
                self.host_gone = true;
                signals::kill_pid_namespace(self.main_pid);
            }
        }
        while let Some(msg) = self.control.next_buffered()? {
            self.handle(msg)?;
        }
        Ok(())
    }

    /// Drains the signalfd, then reaps everything that exited.
    fn sigchld_arrived(&mut self, on_main_exit: &mut impl FnMut(ExitStatus)) {
        signals::drain(self.sigchld);
        for Reaped { pid, status } in reap::reap_exited() {
            let Some((id, p)) = self.processes.iter_mut().find(|(_, p)| p.pid == pid) else {
                continue;
            };
            if *id == MAIN_PROCESS {
                on_main_exit(status);
            }
            p.exited(status);
        }
    }

    /// Sends `Exited` for every exec'd process that is reaped and drained, and forgets
    /// it; the main process's status is kept for the caller.
    fn report_finished(&mut self) -> Result<()> {
        let done: Vec<ProcessId> = self
            .processes
            .iter()
            .filter(|(_, p)| !p.running() && p.relay.outputs_done())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let Some(status) = self.processes.remove(&id).and_then(|p| p.status) else {
                continue;
            };
            if id == MAIN_PROCESS {
                self.main_status = Some(status);
                continue;
            }
            crate::log::info(&format!("process {id} exited: {status:?}"));
            if self.control_open {
                self.control.send(&GuestMessage::Exited {
                    process: id,
                    status,
                    oom_kills: cgroup::oom_kills(),
                })?;
            }
        }
        Ok(())
    }

    fn handle(&mut self, msg: HostMessage) -> Result<()> {
        match msg {
            HostMessage::Signal { process, signal } => self.forward_signal(process, signal),
            HostMessage::Resize {
                process,
                rows,
                cols,
            } => self.resize(process, WindowSize { rows, cols }),
            HostMessage::Exec { process, spec } => {
                let reply = self.exec_reply(process, &spec);
                self.control.send(&reply)?;
            }
            HostMessage::ListProcesses { request } => {
                let processes = cgroup::processes(self.main_pid);
                self.control
                    .send(&GuestMessage::Processes { request, processes })?;
            }
            HostMessage::Stats { request } => {
                let stats = cgroup::stats();
                self.control.send(&GuestMessage::Stats { request, stats })?;
            }
            HostMessage::Update { request, resources } => {
                let error = cgroup::apply(&resources).err().map(|e| e.to_string());
                self.control
                    .send(&GuestMessage::Updated { request, error })?;
            }
            other => crate::log::error(&format!("ignoring unexpected message {other:?}")),
        }
        Ok(())
    }

    fn forward_signal(&self, process: ProcessId, signal: i32) {
        match self.processes.get(&process) {
            Some(p) if p.running() => {
                crate::log::info(&format!("signal {signal} to process {process}"));
                signals::send(p.pid, signal);
            }
            _ => crate::log::info(&format!(
                "signal {signal} to process {process}, which is not running"
            )),
        }
    }

    fn resize(&self, process: ProcessId, size: WindowSize) {
        let Some(master) = self
            .processes
            .get(&process)
            .and_then(|p| p.relay.terminal())
        else {
            return;
        };
        if let Err(e) = terminal::set_window_size(master, size) {
            crate::log::error(&format!("resize of process {process}: {e}"));
        }
    }

    /// `Started` or `StartFailed` for an `Exec` of `process`.
    fn exec_reply(&mut self, process: ProcessId, spec: &ProcessSpec) -> GuestMessage {
        match self.exec(process, spec) {
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
        }
    }

    /// Starts an exec'd process and its streams.
    fn exec(&mut self, process: ProcessId, spec: &ProcessSpec) -> Result<Pid> {
        let main_running = self.main_status.is_none()
            && self.processes.get(&MAIN_PROCESS).is_some_and(Proc::running);
        if !main_running {
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
            Started::Running(s) => s,
            // The failed child is reaped with the others on SIGCHLD.
            Started::Failed(failed) => return Err(failed.error),
        };
        let pid = spawned.pid;
        let streams = match Streams::open(self.transport, process, spec.terminal) {
            Ok(s) => s,
            Err(e) => {
                signals::kill(pid);
                return Err(e);
            }
        };
        self.processes.insert(process, Proc::new(spawned, streams)?);
        Ok(pid)
    }
}

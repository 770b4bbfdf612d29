//! The control-message loop while the container runs: one `poll` loop, no threads, over
//! the stdio relays of every process (the main one, exec'd ones and member containers'
//! ones, see [`crate::relay`]), the control connection (signals, exec, resize, process
//! list, stats, updates, member containers added and removed), and SIGCHLD through a
//! signalfd.
//!
//! A process is reported `Exited` once it is reaped and its output streams are drained
//! and shut down. When the main process exits, the kernel kills the rest of its PID
//! namespace, and init kills the member containers; the loop ends when every process is
//! reported.
//!
//! Member containers ([`HostMessage::AddContainer`]) are built like the main one
//! (`mounts::share`, `mounts::rootfs`, socket relays, `cgroup::setup`,
//! `workload::spawn_container`) at their own [`Paths`]; one that fails to start is undone
//! at once. A member whose share is in a spare slot the host filled names its platform
//! device, which is bound first (`mounts::bind_share_device`). When a member's main
//! process ends, the rest of the member ends too (its PID namespace, or, where it shares
//! the main one, its cgroup and exec'd processes); [`HostMessage::RemoveContainer`] then
//! undoes its mounts and cgroup, and unbinds its share's device.

use crate::error::{Error, Result};
use crate::mounts::{self, Paths, ShareSource};
use crate::reap::{self, Reaped};
use crate::relay::{ProcessRelay, SlotKey, Streams, Wait};
use crate::socket_relay::Relays;
use crate::spawn::{Spawned, Started};
use crate::vsock::{Control, Transport};
use crate::{cgroup, signals, terminal, workload};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;
use runvm_protocol::{
    ContainerId, ExitStatus, GuestMessage, HostMessage, NewContainer, ProcessId, ProcessSpec,
    WindowSize, MAIN_CONTAINER, MAIN_PROCESS,
};
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::time::Instant;

/// Most member containers at once (the host's ids are not trusted to be few).
const MAX_MEMBERS: usize = 256;

/// One running (or exited, still draining) process.
struct Proc {
    /// The container it runs in.
    container: ContainerId,
    pid: Pid,
    relay: ProcessRelay,
    status: Option<ExitStatus>,
}

impl Proc {
    fn new(container: ContainerId, spawned: Spawned, streams: Streams) -> Result<Self> {
        Ok(Self {
            container,
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

/// A member container, from its start to its removal.
struct Member {
    /// Its main process's id and pid.
    process: ProcessId,
    pid: Pid,
    /// Whether its main process is PID 1 of a PID namespace of its own.
    own_pid_ns: bool,
    /// Whether its main process still runs.
    running: bool,
    paths: Paths,
    relays: Relays,
    /// The platform device of its share, bound at the add, unbound at the removal.
    device: Option<String>,
}

/// Where init builds containers: the main container's paths (a member's are derived from
/// them, [`Paths::for_container`]) and where the shares come from.
pub struct Place<'a> {
    pub paths: &'a Paths,
    pub share_source: &'a ShareSource,
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
    place: Place<'a>,
    processes: BTreeMap<ProcessId, Proc>,
    /// The member containers, by id, until removed.
    members: BTreeMap<ContainerId, Member>,
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
        place: Place<'a>,
        main: Spawned,
        streams: Streams,
    ) -> Result<Self> {
        let main_pid = main.pid;
        let processes = BTreeMap::from([(MAIN_PROCESS, Proc::new(MAIN_CONTAINER, main, streams)?)]);
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
            place,
            processes,
            members: BTreeMap::new(),
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
                self.kill_members();
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
            let (id, container) = (*id, p.container);
            p.exited(status);
            if id == MAIN_PROCESS {
                on_main_exit(status);
                // The VM lives for the main container: its members end with it (and are
                // reported before it).
                self.kill_members();
            } else if let Some(m) = self.members.get_mut(&container) {
                if m.process == id {
                    m.running = false;
                    self.member_ended(container);
                }
            }
        }
    }

    /// SIGKILLs every member container that still runs.
    fn kill_members(&mut self) {
        for (id, m) in &self.members {
            if m.running {
                crate::log::info(&format!("killing container {id}"));
                signals::kill(m.pid);
                if !m.own_pid_ns {
                    cgroup::kill_all(*id);
                }
            }
        }
    }

    /// The rest of a member whose main process has ended: its socket relays, and, where
    /// no PID namespace of its own took them with it, its other processes.
    fn member_ended(&mut self, container: ContainerId) {
        let Some(m) = self.members.get_mut(&container) else {
            return;
        };
        m.relays.stop();
        if m.own_pid_ns {
            return;
        }
        cgroup::kill_all(container);
        for p in self.processes.values() {
            if p.container == container && p.running() {
                signals::kill(p.pid);
            }
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
            let Some((container, status)) = self
                .processes
                .remove(&id)
                .and_then(|p| Some((p.container, p.status?)))
            else {
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
                    oom_kills: cgroup::oom_kills(container),
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
            HostMessage::Exec {
                process,
                spec,
                container,
            } => {
                let reply = start_reply(process, self.exec(container, process, &spec));
                self.control.send(&reply)?;
            }
            HostMessage::AddContainer(req) => {
                let reply = start_reply(req.process, self.add_container(&req));
                self.control.send(&reply)?;
            }
            HostMessage::RemoveContainer { container } => {
                let error = self.remove_container(container).err().map(|e| {
                    crate::log::error(&format!("remove container {container}: {e}"));
                    e.message
                });
                self.control
                    .send(&GuestMessage::ContainerRemoved { container, error })?;
            }
            HostMessage::ListProcesses { request, container } => {
                let processes = match self.main_pid_of(container) {
                    Some(pid) => cgroup::processes(pid),
                    None => Vec::new(),
                };
                self.control
                    .send(&GuestMessage::Processes { request, processes })?;
            }
            HostMessage::Stats { request, container } => {
                let stats = match self.main_pid_of(container) {
                    Some(_) => cgroup::stats(container),
                    None => Default::default(),
                };
                self.control.send(&GuestMessage::Stats { request, stats })?;
            }
            HostMessage::Freeze {
                request,
                container,
                frozen,
            } => {
                let error = match self.main_pid_of(container) {
                    Some(_) if container != MAIN_CONTAINER => cgroup::freeze(container, frozen)
                        .err()
                        .map(|e| e.to_string()),
                    _ => Some(format!("the guest has no member container {container}")),
                };
                self.control
                    .send(&GuestMessage::Updated { request, error })?;
            }
            HostMessage::Update {
                request,
                resources,
                container,
            } => {
                let error = match self.main_pid_of(container) {
                    Some(_) => cgroup::apply(container, &resources)
                        .err()
                        .map(|e| e.to_string()),
                    None => Some(format!("the guest has no container {container}")),
                };
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

    fn main_running(&self) -> bool {
        self.main_status.is_none() && self.processes.get(&MAIN_PROCESS).is_some_and(Proc::running)
    }

    /// A new process id from the host: never the main process's, never one in use.
    fn check_new_process(&self, process: ProcessId) -> Result<()> {
        if process == MAIN_PROCESS || self.processes.contains_key(&process) {
            return Err(Error::new(format!(
                "protocol error: process id {process} is in use"
            )));
        }
        Ok(())
    }

    /// Starts an exec'd process in `container` and its streams.
    fn exec(
        &mut self,
        container: ContainerId,
        process: ProcessId,
        spec: &ProcessSpec,
    ) -> Result<Pid> {
        if !self.main_running() {
            return Err(Error::new(
                "cannot exec: the container's main process has exited (container not running)",
            ));
        }
        self.check_new_process(process)?;
        let target = if container == MAIN_CONTAINER {
            self.main_pid
        } else {
            match self.members.get(&container) {
                Some(m) if m.running => m.pid,
                Some(_) => {
                    return Err(Error::new(format!(
                        "cannot exec: the main process of container {container} has exited \
                         (container not running)"
                    )))
                }
                None => {
                    return Err(Error::new(format!(
                        "cannot exec: the guest has no container {container}"
                    )))
                }
            }
        };
        crate::log::info(&format!(
            "exec {process} in container {container}: {:?}",
            spec.args
        ));
        let spawned = match workload::spawn_exec(container, target, spec)? {
            Started::Running(s) => s,
            // The failed child is reaped with the others on SIGCHLD.
            Started::Failed(failed) => return Err(failed.error),
        };
        self.adopt(container, process, spawned, spec.terminal)
    }

    /// Opens the streams of a process that runs and takes it into the table (a process
    /// whose streams cannot be opened is killed).
    fn adopt(
        &mut self,
        container: ContainerId,
        process: ProcessId,
        spawned: Spawned,
        terminal: bool,
    ) -> Result<Pid> {
        let pid = spawned.pid;
        let streams = match Streams::open(self.transport, process, terminal) {
            Ok(s) => s,
            Err(e) => {
                signals::kill(pid);
                return Err(e);
            }
        };
        self.processes
            .insert(process, Proc::new(container, spawned, streams)?);
        Ok(pid)
    }

    /// The pid of `container`'s main process (the VM's own container's, or a member's
    /// that has not been removed); `None` for a container the guest does not have.
    fn main_pid_of(&self, container: ContainerId) -> Option<Pid> {
        if container == MAIN_CONTAINER {
            return Some(self.main_pid);
        }
        self.members.get(&container).map(|m| m.pid)
    }

    /// Starts a member container; one that cannot start leaves nothing behind (mounts,
    /// relays, cgroup, process).
    fn add_container(&mut self, req: &NewContainer) -> Result<Pid> {
        if !self.main_running() {
            return Err(Error::new(
                "cannot add a container: the main container's process has exited",
            ));
        }
        let container = req.container;
        if container == MAIN_CONTAINER || self.members.contains_key(&container) {
            return Err(Error::new(format!(
                "protocol error: container id {container} is in use"
            )));
        }
        if self.members.len() >= MAX_MEMBERS {
            return Err(Error::new(format!(
                "cannot add container {container}: the guest runs {MAX_MEMBERS} containers already"
            )));
        }
        self.check_new_process(req.process)?;
        if req.share.uts && req.hostname.is_some() {
            // As runc refuses it: the hostname would be the main container's too.
            return Err(Error::new(format!(
                "container {container}: unable to set hostname without a private UTS namespace"
            )));
        }
        crate::log::info(&format!(
            "add container {container} (process {}): {:?}",
            req.process, req.spec.args
        ));
        let paths = self.place.paths.for_container(container);
        let mut relays = Relays::default();
        let started = self.build_and_spawn(req, &paths, &mut relays);
        let failed = match started {
            Ok(spawned) => {
                let pid = spawned.pid;
                match self.adopt(container, req.process, spawned, req.spec.terminal) {
                    Ok(_) => {
                        self.members.insert(
                            container,
                            Member {
                                process: req.process,
                                pid,
                                own_pid_ns: !req.share.pid,
                                running: true,
                                paths,
                                relays,
                                device: req.device.clone(),
                            },
                        );
                        return Ok(pid);
                    }
                    Err(e) => {
                        // Killed by `adopt`; reaped here so that its cgroup can go.
                        let _ = nix::sys::wait::waitpid(pid, None);
                        e
                    }
                }
            }
            Err(e) => e,
        };
        relays.stop();
        if let Err(e) = cgroup::remove(container) {
            crate::log::error(&format!("undo container {container}: {e}"));
        }
        if let Err(e) = mounts::undo_container(&paths) {
            crate::log::error(&format!("undo container {container}: {e}"));
        }
        if let Some(device) = &req.device {
            if let Err(e) = mounts::unbind_share_device(device, self.place.share_source) {
                crate::log::error(&format!("undo container {container}: {e}"));
            }
        }
        Err(failed)
    }

    /// The share, root, relays and cgroup of a member, then its main process, until it
    /// runs (a child that failed is reaped).
    fn build_and_spawn(
        &self,
        req: &NewContainer,
        paths: &Paths,
        relays: &mut Relays,
    ) -> Result<Spawned> {
        match &req.device {
            Some(device) => {
                mounts::bind_share_device(device, self.place.share_source)?;
                mounts::share_within(
                    paths,
                    &req.rootfs,
                    self.place.share_source,
                    mounts::SHARE_DEVICE_WAIT,
                )?;
            }
            None => mounts::share(paths, &req.rootfs, self.place.share_source)?,
        }
        mounts::rootfs(paths, &req.rootfs)?;
        let owner = (
            nix::unistd::Uid::from_raw(req.spec.uid),
            nix::unistd::Gid::from_raw(req.spec.gid),
        );
        *relays = Relays::start(&req.mounts, paths, owner, self.transport)?;
        if cgroup::enabled() {
            cgroup::setup(req.container, &req.linux.resources)?;
        }
        let wreq = workload::Request {
            container: req.container,
            paths,
            process: &req.spec,
            linux: &req.linux,
            mounts: &req.mounts,
            hostname: req.hostname.as_deref(),
            sandbox: Some(workload::Sandbox {
                main: self.main_pid,
                share: req.share,
            }),
        };
        match workload::spawn_container(&wreq)? {
            Started::Running(spawned) => Ok(spawned),
            Started::Failed(failed) => {
                let _ = nix::sys::wait::waitpid(failed.pid, None);
                Err(failed.error)
            }
        }
    }

    /// Undoes a member container whose processes have all ended and forgets it.
    fn remove_container(&mut self, container: ContainerId) -> Result<()> {
        let Some(m) = self.members.get(&container) else {
            return Err(Error::new(format!(
                "the guest has no container {container}"
            )));
        };
        if m.running || self.processes.values().any(|p| p.container == container) {
            return Err(Error::new(format!(
                "container {container} still runs: remove it once its main process has exited"
            )));
        }
        let Some(mut m) = self.members.remove(&container) else {
            return Ok(());
        };
        m.relays.stop();
        let cgroup = cgroup::remove(container);
        let mounts = mounts::undo_container(&m.paths);
        // Only once the share is unmounted: the driver's removal of a device in use
        // leaves the mount without its queues.
        let device = match (&m.device, &mounts) {
            (Some(device), Ok(())) => mounts::unbind_share_device(device, self.place.share_source),
            (Some(device), Err(_)) => Err(Error::new(format!(
                "the share's device {device} stays bound: its share could not be unmounted"
            ))),
            (None, _) => Ok(()),
        };
        crate::log::info(&format!("container {container} removed"));
        cgroup.and(mounts).and(device)
    }
}

/// `Started` or `StartFailed` of `process`, from how its start went.
fn start_reply(process: ProcessId, started: Result<Pid>) -> GuestMessage {
    match started {
        Ok(pid) => GuestMessage::Started {
            process,
            pid: pid.as_raw(),
        },
        Err(e) => {
            crate::log::error(&format!("start of process {process}: {e}"));
            GuestMessage::StartFailed {
                process,
                code: e.code,
                message: e.message,
            }
        }
    }
}

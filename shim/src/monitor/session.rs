//! The running container: once the guest init said hello and got `Run`, one poll loop
//! serves the control connection, the guest's stream connections, signals to the
//! monitor, the host API (`kill`, `exec`), the connections of waiting `runvm exec`
//! processes, and the end of the VM. It ends when the main process and every exec'd one
//! are complete (see [`super::process`]), and tells the guest to shut down.
//!
//! Call-outs other parts of the monitor may add: more API requests go to
//! [`Session::api_request`]; more guest messages to `Session::handle_guest_message`,
//! which checks each against what the guest may say at that point (the guest is
//! untrusted: a message out of order is a protocol error that stops the VM). The guest's
//! OOM kills are watched in [`oom`].

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use runvm_protocol::{
    write_frame, ExitStatus, GuestMessage, HostMessage, ProcessId, StreamHeader, MAIN_PROCESS,
};
use vmm_sys_util::eventfd::EventFd;

use super::api::{self, Request, Response};
use super::hello::Control;
use super::poll::{eventfd, pending_signals, PollSet};
use super::prestart::{refuse_exec, refuse_start};
use super::process::{HostStdio, Process};
use super::untrusted::{self, FrameReader, GuestText, Header, PendingStream, FRAME_STALL};
use super::vm::VmGone;
use super::{Ending, Io, MonitorError};

mod oom;

/// How long the monitor waits, once the main process ended, for the rest to be complete.
const DRAIN_WAIT: Duration = Duration::from_secs(10);
/// How long the guest has to report the end of a SIGKILLed main process before the host
/// stops the VM itself: `kill -9` and `docker stop` never wait on the guest's cooperation
/// (a hostile or wedged guest kernel cannot keep a container alive), and Docker, which
/// waits 10 s for the exit after its SIGKILL, always gets it in time. The exit code of a
/// SIGKILLed process is 137 whoever reports it; the grace only lets output already
/// written reach the host (a guest on hardware KVM reports within milliseconds). Short, as
/// every guest still running takes CPU time from the others: twenty stopped at once under
/// emulation missed Docker's deadline with 3 s.
pub(super) const KILL_GRACE: Duration = Duration::from_millis(250);
/// How long a new stream connection may take to send its header before it is dropped.
const HEADER_WAIT: Duration = Duration::from_secs(5);
/// Most stream connections waiting for their headers at once (the vsock device allows
/// 256 connections in all); past it the oldest is dropped.
const MAX_PENDING_STREAMS: usize = 256;

pub(super) struct Session<'a> {
    pub(super) control: UnixStream,
    /// The control connection's bytes not yet cut into messages.
    reader: FrameReader,
    /// New stream connections whose headers have not arrived, by token.
    pending_streams: Vec<(u64, PendingStream)>,
    next_stream_token: u64,
    pub(super) io: &'a Io<'a>,
    /// Readable once the VM's thread has ended.
    pub(super) vm_done: BorrowedFd<'a>,
    pub(super) processes: BTreeMap<ProcessId, Process>,
    /// Fired by output relays when they end.
    pub(super) relay_done: EventFd,
    pub(super) next_exec_id: ProcessId,
    /// Signals for the main process that wait until it runs.
    queued: Vec<i32>,
    /// `runvm start`, waiting until the main process has started (or failed to).
    pending_start: Option<UnixStream>,
    main_ending: Option<Ending>,
    /// When the host stops the VM if the guest has not reported the SIGKILLed main
    /// process's end ([`KILL_GRACE`]).
    kill_deadline: Option<Instant>,
    /// The host stopped the VM at the kill deadline: the session ends at once.
    killed_by_host: bool,
    /// Host API requests waiting for the guest's answer (`ps`, `events`, `update`).
    pub(super) queries: super::control::Queries,
    /// The guest's OOM kills, shown in the host cgroup.
    oom: oom::OomWatch,
    /// Member containers by their main process ([`super::member`]).
    pub(super) members: BTreeMap<ProcessId, super::member::Membership>,
    /// Ended members the guest is removing.
    pub(super) removing: BTreeMap<runvm_protocol::ContainerId, super::member::Removal>,
    /// Members the host ended itself: what the guest still says of them is ignored.
    pub(super) abandoned: super::member::Abandoned,
    pub(super) next_container_id: runvm_protocol::ContainerId,
}

/// How a session ended.
pub(super) struct SessionEnd {
    /// How the main process ended, or the error that ended the session.
    pub(super) ending: Result<Ending, MonitorError>,
    /// `runvm start`, if it still waits for its answer (the process never started).
    pub(super) unanswered_start: Option<UnixStream>,
}

/// What a poll slot stands for.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Control,
    Streams,
    VmDone,
    Signals,
    RelayDone,
    Api,
    Client(ProcessId),
    PendingStream(u64),
}

impl<'a> Session<'a> {
    /// The session of the guest that said hello on `control`, whose main process has
    /// `main` as its host stdio; `relay_done` is a non-blocking eventfd for the output
    /// relays, `queued` the signals that came while it booted.
    pub(super) fn new(
        control: Control,
        io: &'a Io<'a>,
        vm_done: &'a EventFd,
        main: HostStdio,
        relay_done: EventFd,
        queued: Vec<i32>,
        pending_start: Option<UnixStream>,
    ) -> Self {
        let mut processes = BTreeMap::new();
        processes.insert(MAIN_PROCESS, Process::new(main, None));
        Self {
            control: control.stream,
            reader: control.reader,
            pending_streams: Vec::new(),
            next_stream_token: 0,
            io,
            vm_done: eventfd(vm_done),
            processes,
            relay_done,
            next_exec_id: 1,
            queued,
            pending_start,
            main_ending: None,
            kill_deadline: None,
            killed_by_host: false,
            queries: Default::default(),
            oom: oom::OomWatch::new(io.state_dir),
            members: BTreeMap::new(),
            removing: BTreeMap::new(),
            abandoned: Default::default(),
            next_container_id: 1,
        }
    }

    pub(super) fn send(&mut self, msg: &HostMessage) -> Result<(), MonitorError> {
        write_frame(&mut self.control, msg).map_err(MonitorError::Send)
    }

    /// The guest reported the end of the main process (or its failed start).
    pub(super) fn main_ended(&self) -> bool {
        self.main_ending.is_some()
    }

    pub(super) fn main_running(&self) -> bool {
        self.main_ending.is_none()
            && self
                .processes
                .get(&MAIN_PROCESS)
                .is_some_and(|p| p.started && p.status.is_none())
    }

    /// Runs until the container is done; says how its main process ended.
    pub(super) fn run(mut self) -> SessionEnd {
        let ending = self.serve();
        SessionEnd {
            ending,
            unanswered_start: self.pending_start.take(),
        }
    }

    fn serve(&mut self) -> Result<Ending, MonitorError> {
        let mut drain_deadline = None;
        loop {
            self.finish_complete_execs()?;
            if self.killed_by_host {
                break;
            }
            if let Some(ending) = &self.main_ending {
                let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_WAIT);
                // A process that failed to start may never have opened its streams.
                let failed = matches!(ending, Ending::StartFailed(..));
                let main_done = self
                    .processes
                    .get(&MAIN_PROCESS)
                    .is_none_or(|p| p.outputs_done() || (failed && p.accepted_outputs_done()));
                if main_done && self.processes.len() <= 1 {
                    break;
                }
                if Instant::now() >= deadline {
                    log::warn!("the container's processes did not all finish relaying their output in {DRAIN_WAIT:?}; some output may be missing");
                    break;
                }
            }
            let wake = [
                drain_deadline,
                self.kill_deadline.filter(|_| self.main_ending.is_none()),
                self.reader.deadline(),
                self.pending_streams.iter().map(|(_, p)| p.deadline).min(),
                self.oom.poll_deadline(),
                self.member_deadline(),
            ]
            .into_iter()
            .flatten()
            .min();
            let ready = {
                let mut waiting = PollSet::new();
                waiting.add(Slot::Control, self.control.as_fd());
                waiting.add(Slot::Streams, self.io.stream_listener.as_fd());
                waiting.add(Slot::VmDone, self.vm_done);
                waiting.add(Slot::Signals, self.io.sigfd.as_fd());
                waiting.add(Slot::RelayDone, eventfd(&self.relay_done));
                if let Some(a) = self.io.api {
                    waiting.add(Slot::Api, a.as_fd());
                }
                for (id, p) in &self.processes {
                    if let Some(c) = &p.client {
                        waiting.add(Slot::Client(*id), c.as_fd());
                    }
                }
                for (token, p) in &self.pending_streams {
                    waiting.add(Slot::PendingStream(*token), p.stream.as_fd());
                }
                waiting.wait(wake)?
            };
            for slot in ready.iter() {
                match slot {
                    Slot::Control => self.guest_message()?,
                    Slot::Streams => self.accept_stream()?,
                    Slot::VmDone => return Err(MonitorError::GuestDied(VmGone::Ended)),
                    Slot::Signals => self.signals()?,
                    Slot::RelayDone => {
                        let _ = self.relay_done.read();
                    }
                    Slot::Api => self.api_request()?,
                    Slot::Client(id) => self.client_message(id)?,
                    Slot::PendingStream(token) => self.pending_stream(token)?,
                }
            }
            self.expire(Instant::now())?;
            self.poll_oom()?;
        }
        log::debug!("stop path: the session is over (output drained)");
        for (id, p) in std::mem::take(&mut self.processes) {
            if id != MAIN_PROCESS {
                // Its guest process died with the VM without a report.
                self.finish_exec(p, ExitStatus::Signaled(libc::SIGKILL));
            } else {
                p.end();
            }
        }
        self.release_members();
        if !self.killed_by_host {
            // (A stopped VM reads nothing more: the write could only wait.)
            let _ = self.send(&HostMessage::Shutdown);
        }
        Ok(self
            .main_ending
            .take()
            .unwrap_or(Ending::Exited(ExitStatus::Signaled(9))))
    }

    /// A frame the guest began must be complete in time; a stream connection that sent
    /// no header in time is dropped (the guest's connect may have given up on it).
    fn expire(&mut self, now: Instant) -> Result<(), MonitorError> {
        if self.io.vm.is_paused() {
            // A frozen guest completes nothing: its deadlines wait for the resume.
            return Ok(());
        }
        self.expire_members(now);
        if self.main_ending.is_none() && self.kill_deadline.is_some_and(|d| now >= d) {
            log::warn!(
                "the guest did not report the end of the SIGKILLed process within \
                 {KILL_GRACE:?}; the host stops the VM"
            );
            self.io.vm.stop();
            self.main_ending = Some(Ending::Exited(ExitStatus::Signaled(libc::SIGKILL)));
            self.killed_by_host = true;
        }
        if self.reader.deadline().is_some_and(|d| now >= d) {
            return Err(MonitorError::Protocol(format!(
                "the guest began a frame on the control connection and did not complete it within {FRAME_STALL:?} ({} bytes came)",
                self.reader.partial()
            )));
        }
        self.pending_streams.retain(|(_, p)| {
            let keep = now < p.deadline;
            if !keep {
                log::debug!("a stream connection sent no header within {HEADER_WAIT:?}; closed");
            }
            keep
        });
        Ok(())
    }

    fn accept_stream(&mut self) -> Result<(), MonitorError> {
        let Ok((s, _)) = self.io.stream_listener.accept() else {
            return Ok(());
        };
        if self.pending_streams.len() >= MAX_PENDING_STREAMS {
            log::warn!("the guest has {MAX_PENDING_STREAMS} stream connections without a header; closing the oldest");
            self.pending_streams.remove(0);
        }
        self.next_stream_token += 1;
        let token = self.next_stream_token;
        self.pending_streams
            .push((token, PendingStream::new(s, HEADER_WAIT)));
        // The header has usually arrived with the connection.
        self.pending_stream(token)
    }

    /// Reads what has come of a new stream's header; a complete one attaches the stream.
    fn pending_stream(&mut self, token: u64) -> Result<(), MonitorError> {
        let Some(i) = self.pending_streams.iter().position(|(t, _)| *t == token) else {
            return Ok(());
        };
        let header: StreamHeader = match self.pending_streams[i].1.read_header() {
            Ok(Header::Waiting) => return Ok(()),
            Ok(Header::Closed) => {
                log::debug!("a stream connection ended before its header; the guest retries");
                self.pending_streams.remove(i);
                return Ok(());
            }
            Ok(Header::Complete(h)) => h,
            Err(e) => return Err(MonitorError::StreamHeader(GuestText::new(e))),
        };
        let (_, pending) = self.pending_streams.remove(i);
        let Some(p) = self.processes.get_mut(&header.process) else {
            if header.process >= self.next_exec_id {
                return Err(MonitorError::Protocol(format!(
                    "the guest opened stream {} of process {}, which does not exist",
                    header.fd, header.process
                )));
            }
            // An exec'd process whose start failed after it opened some streams.
            log::debug!(
                "stream {} of process {}, which has ended; closed",
                header.fd,
                header.process
            );
            return Ok(());
        };
        p.attach(header.fd, pending.stream, &self.relay_done)
            .map_err(|source| MonitorError::Attach {
                process: header.process,
                source,
            })
    }

    fn signals(&mut self) -> Result<(), MonitorError> {
        for signal in pending_signals(self.io.sigfd) {
            if signal == libc::SIGWINCH {
                self.resize_main()?;
            } else {
                self.queued.push(signal);
            }
        }
        self.flush_queued()
    }

    /// The main process's host terminal changed size: pass it on.
    fn resize_main(&mut self) -> Result<(), MonitorError> {
        let Some(p) = self.processes.get(&MAIN_PROCESS) else {
            return Ok(());
        };
        if !p.terminal() || !p.started {
            return Ok(());
        }
        if let Some(ws) = p.window_size() {
            self.send(&HostMessage::Resize {
                process: MAIN_PROCESS,
                rows: ws.rows,
                cols: ws.cols,
            })?;
        }
        Ok(())
    }

    /// Signals that arrive while the guest boots wait until the process runs.
    fn flush_queued(&mut self) -> Result<(), MonitorError> {
        if !self.main_running() {
            return Ok(());
        }
        for signal in std::mem::take(&mut self.queued) {
            if signal == libc::SIGKILL && self.kill_deadline.is_none() {
                self.kill_deadline = Some(Instant::now() + KILL_GRACE);
            }
            self.send(&HostMessage::Signal {
                process: MAIN_PROCESS,
                signal,
            })?;
        }
        Ok(())
    }

    /// One request on the host API.
    pub(super) fn api_request(&mut self) -> Result<(), MonitorError> {
        let Some((mut conn, req)) = self.io.api.and_then(api::accept_request) else {
            return Ok(());
        };
        match req {
            Request::Start => refuse_start(&mut conn),
            Request::Signal { signal } if signal == libc::SIGKILL && self.io.vm.is_paused() => {
                // As runc thaws a frozen cgroup to kill it.
                self.resume_for_kill();
                self.queued.push(signal);
                api::answer(&mut conn, &Response::Ok);
                self.flush_queued()?;
            }
            Request::Signal { signal } => {
                log::debug!("stop path: signal {signal} asked for on the host API");
                self.queued.push(signal);
                api::answer(&mut conn, &Response::Ok);
                self.flush_queued()?;
            }
            Request::Exec { .. } | Request::AddContainer { .. } if self.io.vm.is_paused() => {
                refuse_exec(
                    &mut conn,
                    "cannot exec in a paused container (resume it first)",
                )
            }
            Request::Exec { spec, container } => self.exec_request(conn, spec, container)?,
            Request::AddContainer { member } => self.member_request(conn, member)?,
            Request::Member { container, query } => {
                if self.member_running(container) {
                    self.control_request(conn, *query, container)?
                } else {
                    api::answer(
                        &mut conn,
                        &api::ControlResponse::Error(format!(
                            "container not running (no member {container} in the VM)"
                        )),
                    )
                }
            }
            other => self.control_request(conn, other, runvm_protocol::MAIN_CONTAINER)?,
        }
        Ok(())
    }

    /// What has come on the control connection: every complete message in it.
    pub(super) fn guest_message(&mut self) -> Result<(), MonitorError> {
        let open = self
            .reader
            .fill(self.control.as_fd())
            .map_err(|e| MonitorError::GuestDied(VmGone::ControlFailed(e)))?;
        while let Some(msg) = self
            .reader
            .next::<GuestMessage>()
            .map_err(|e| MonitorError::Frame(GuestText::new(e)))?
        {
            self.handle_guest_message(msg)?;
        }
        if !open {
            if self.reader.partial() > 0 {
                return Err(MonitorError::Protocol(
                    "the guest closed the control connection in the middle of a frame".into(),
                ));
            }
            return Err(MonitorError::GuestDied(VmGone::Ended));
        }
        Ok(())
    }

    /// One message from the guest init, checked against what the guest may say now.
    /// The container's process has ended: `runvm state` says stopped from now on.
    fn mark_exited(&self) {
        if let Some(dir) = self.io.state_dir {
            let _ = std::fs::write(dir.join(crate::state::EXITED_FILE), b"");
        }
    }

    fn handle_guest_message(&mut self, msg: GuestMessage) -> Result<(), MonitorError> {
        if self.of_abandoned(&msg) || self.oom_count_in(&msg) {
            return Ok(());
        }
        match &msg {
            GuestMessage::StartFailed { process, code, .. } if !(1..=255).contains(code) => {
                return Err(MonitorError::Protocol(format!(
                    "the guest reported a failed start with exit code {code} for process {process}"
                )))
            }
            GuestMessage::Exited {
                process, status, ..
            } => check_status(*process, *status)?,
            _ => {}
        }
        match msg {
            GuestMessage::Started { process, pid } if process == MAIN_PROCESS => {
                let started = self.processes.get(&MAIN_PROCESS).is_some_and(|p| p.started);
                if started || self.main_ending.is_some() {
                    return Err(MonitorError::Protocol(
                        "the guest reported the start of process 0 twice".into(),
                    ));
                }
                if let Some(p) = self.processes.get_mut(&MAIN_PROCESS) {
                    p.started = true;
                }
                if let Some(dir) = self.io.state_dir {
                    crate::cgroup::apply_at_start(dir);
                    let _ = std::fs::write(dir.join(crate::state::STARTED_FILE), b"");
                }
                if let Some(started) = self.io.on_started {
                    started();
                }
                if let Some(mut c) = self.pending_start.take() {
                    api::answer(&mut c, &Response::Ok);
                }
                log::debug!("the container's process runs (guest pid {pid})");
                // The host terminal may have been resized while the guest booted.
                self.resize_main()?;
                self.flush_queued()?;
            }
            GuestMessage::StartFailed {
                process,
                code,
                message,
            } if process == MAIN_PROCESS => {
                // (After a Started too: the guest init reports its own later failures so.)
                if self.main_ending.is_some() {
                    return Err(MonitorError::Protocol(
                        "the guest reported the end of process 0 twice".into(),
                    ));
                }
                let message = untrusted::text(&message);
                if let Some(p) = self.processes.get_mut(&MAIN_PROCESS) {
                    p.status = Some(ExitStatus::Exited(code));
                }
                // Stopped before `start` hears of it: its caller acts at once (containerd
                // deletes a task whose start failed, which must not still be "created").
                self.mark_exited();
                if let Some(mut c) = self.pending_start.take() {
                    api::answer(&mut c, &Response::Error(message.clone()));
                }
                self.main_ending = Some(Ending::StartFailed(code, message));
            }
            GuestMessage::Exited {
                process, status, ..
            } if process == MAIN_PROCESS => {
                if self.main_ending.is_some() {
                    return Err(MonitorError::Protocol(
                        "the guest reported the end of process 0 twice".into(),
                    ));
                }
                if !self.processes.get(&MAIN_PROCESS).is_some_and(|p| p.started) {
                    return Err(MonitorError::Protocol(
                        "the guest reported the exit of process 0 before its start".into(),
                    ));
                }
                if let Some(p) = self.processes.get_mut(&MAIN_PROCESS) {
                    p.status = Some(status);
                }
                log::debug!("stop path: the guest reported the main process's end ({status:?})");
                self.main_ending = Some(Ending::Exited(status));
                self.mark_exited();
            }
            GuestMessage::Started { process, pid } => self.exec_started(process, pid)?,
            GuestMessage::StartFailed {
                process,
                code,
                message,
            } => self.exec_failed(process, code, untrusted::text(&message))?,
            GuestMessage::Exited {
                process,
                status,
                oom_kills,
            } => self.exec_exited(process, status, oom_kills)?,
            GuestMessage::Hello { .. } => {
                return Err(MonitorError::Protocol(
                    "the guest sent a second Hello".into(),
                ))
            }
            answer @ (GuestMessage::Processes { .. }
            | GuestMessage::Stats { .. }
            | GuestMessage::Updated { .. }) => self.guest_answer(answer)?,
            GuestMessage::ContainerRemoved { container, error } => {
                self.member_removed(container, error)?
            }
        }
        Ok(())
    }
}

/// An exit status the guest may report: a code of a byte, or a real signal number.
fn check_status(process: ProcessId, status: ExitStatus) -> Result<(), MonitorError> {
    match status {
        ExitStatus::Exited(c) if !(0..=255).contains(&c) => Err(MonitorError::Protocol(format!(
            "the guest reported an exit of process {process} with code {c}"
        ))),
        ExitStatus::Signaled(s) if !(1..=64).contains(&s) => Err(MonitorError::Protocol(format!(
            "the guest reported a death of process {process} by signal {s}"
        ))),
        _ => Ok(()),
    }
}

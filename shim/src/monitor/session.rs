//! The running container: once the guest init said hello and got `Run`, one poll loop
//! serves the control connection, the guest's stream connections, signals to the
//! monitor, the host API (`kill`, `exec`), the connections of waiting `runvm exec`
//! processes, and the end of the VM. It ends when the main process and every exec'd one
//! are complete (see [`super::process`]), and tells the guest to shut down.
//!
//! Call-outs other parts of the monitor may add: more API requests go to
//! [`Session::api_request`]; more guest messages to [`Session::guest_message`].

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use runvm_protocol::{
    read_frame, write_frame, ExitStatus, FrameError, GuestMessage, HostMessage, ProcessId,
    StreamHeader, MAIN_PROCESS,
};
use vmm_sys_util::eventfd::EventFd;

use super::process::{HostStdio, Process};
use super::{api, pending_signals, protocol, reply, wait_ready, Ending, Io, MonitorError};

/// How long the monitor waits, once the main process ended, for the rest to be complete.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

pub(super) struct Session<'a> {
    pub(super) control: UnixStream,
    pub(super) io: &'a Io<'a>,
    pub(super) vm_done: i32,
    pub(super) processes: BTreeMap<ProcessId, Process>,
    /// Fired by output relays when they end.
    pub(super) relay_done: EventFd,
    pub(super) next_exec_id: ProcessId,
    /// Signals for the main process that wait until it runs.
    queued: Vec<i32>,
    pending_start: &'a mut Option<UnixStream>,
    main_ending: Option<Ending>,
}

/// What a poll slot stands for.
#[derive(Clone, Copy)]
enum Slot {
    Control,
    Streams,
    VmDone,
    Signals,
    RelayDone,
    Api,
    Client(ProcessId),
}

impl<'a> Session<'a> {
    pub(super) fn new(
        control: UnixStream,
        io: &'a Io<'a>,
        vm_done: i32,
        main: HostStdio,
        queued: Vec<i32>,
        pending_start: &'a mut Option<UnixStream>,
    ) -> Result<Self, MonitorError> {
        let relay_done = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| MonitorError::Protocol(format!("eventfd: {e}")))?;
        let mut processes = BTreeMap::new();
        processes.insert(MAIN_PROCESS, Process::new(main, None));
        Ok(Self {
            control,
            io,
            vm_done,
            processes,
            relay_done,
            next_exec_id: 1,
            queued,
            pending_start,
            main_ending: None,
        })
    }

    pub(super) fn send(&mut self, msg: &HostMessage) -> Result<(), MonitorError> {
        write_frame(&mut self.control, msg).map_err(protocol)
    }

    pub(super) fn main_running(&self) -> bool {
        self.main_ending.is_none()
            && self
                .processes
                .get(&MAIN_PROCESS)
                .is_some_and(|p| p.started && p.status.is_none())
    }

    /// Runs until the container is done; returns how its main process ended.
    pub(super) fn run(mut self) -> Result<Ending, MonitorError> {
        let mut drain_deadline = None;
        loop {
            self.finish_complete_execs();
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
            let mut slots = vec![
                (Slot::Control, self.control.as_raw_fd()),
                (Slot::Streams, self.io.stream_listener.as_raw_fd()),
                (Slot::VmDone, self.vm_done),
                (Slot::Signals, self.io.sigfd.as_raw_fd()),
                (Slot::RelayDone, self.relay_done.as_raw_fd()),
            ];
            if let Some(a) = self.io.api {
                slots.push((Slot::Api, a.as_raw_fd()));
            }
            for (id, p) in &self.processes {
                if let Some(c) = &p.client {
                    slots.push((Slot::Client(*id), c.as_raw_fd()));
                }
            }
            let fds: Vec<i32> = slots.iter().map(|(_, fd)| *fd).collect();
            let ready = wait_ready(&fds, drain_deadline)?;
            for ((slot, _), r) in slots.into_iter().zip(ready) {
                if !r {
                    continue;
                }
                match slot {
                    Slot::Control => self.guest_message()?,
                    Slot::Streams => self.accept_stream()?,
                    Slot::VmDone => return Err(MonitorError::GuestDied(String::new())),
                    Slot::Signals => self.signals()?,
                    Slot::RelayDone => {
                        let _ = self.relay_done.read();
                    }
                    Slot::Api => self.api_request()?,
                    Slot::Client(id) => self.client_message(id)?,
                }
            }
        }
        for (id, p) in std::mem::take(&mut self.processes) {
            if id != MAIN_PROCESS {
                // Its guest process died with the VM without a report.
                self.finish_exec(p, ExitStatus::Signaled(libc::SIGKILL));
            } else {
                p.end();
            }
        }
        // The guest sends its writable layer's changes after the main process exited:
        // apply them before the monitor exits (Docker reads the upperdir once it is gone).
        if let (Some(Ending::Exited(_)), Some((listener, target))) =
            (&self.main_ending, self.io.writeback)
        {
            target.receive(listener, self.vm_done);
        }
        let _ = self.send(&HostMessage::Shutdown);
        Ok(self
            .main_ending
            .take()
            .unwrap_or(Ending::Exited(ExitStatus::Signaled(9))))
    }

    fn accept_stream(&mut self) -> Result<(), MonitorError> {
        let Ok((mut s, _)) = self.io.stream_listener.accept() else {
            return Ok(());
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let header: StreamHeader = match read_frame(&mut s) {
            Ok(h) => h,
            Err(FrameError::Closed) | Err(FrameError::Io(_)) => {
                log::debug!("a stream connection ended before its header; the guest retries");
                return Ok(());
            }
            Err(e) => return Err(protocol(e)),
        };
        let _ = s.set_read_timeout(None);
        let Some(p) = self.processes.get_mut(&header.process) else {
            log::warn!(
                "the guest opened stream {} of process {}, which the monitor does not know; closed",
                header.fd,
                header.process
            );
            return Ok(());
        };
        p.attach(header.fd, s, &self.relay_done)
            .map_err(|e| MonitorError::Protocol(format!("process {}: {e}", header.process)))
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
            self.send(&HostMessage::Signal {
                process: MAIN_PROCESS,
                signal,
            })?;
        }
        Ok(())
    }

    /// One request on the host API.
    pub(super) fn api_request(&mut self) -> Result<(), MonitorError> {
        let Some(Ok((mut conn, _))) = self.io.api.map(|a| a.accept()) else {
            return Ok(());
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        match read_frame::<_, api::Request>(&mut conn) {
            Ok(api::Request::Start) => reply(
                &mut conn,
                api::Response::Error("cannot start an already started container".into()),
            ),
            Ok(api::Request::Signal { signal }) => {
                self.queued.push(signal);
                reply(&mut conn, api::Response::Ok);
                self.flush_queued()?;
            }
            Ok(api::Request::Exec { spec }) => self.exec_request(conn, spec)?,
            Err(e) => log::warn!("ignoring a malformed request on the monitor socket: {e}"),
        }
        Ok(())
    }

    /// One message from the guest init.
    pub(super) fn guest_message(&mut self) -> Result<(), MonitorError> {
        let msg = match read_frame::<_, GuestMessage>(&mut self.control) {
            Ok(m) => m,
            Err(FrameError::Closed) => return Err(MonitorError::GuestDied(String::new())),
            Err(e) => return Err(protocol(e)),
        };
        match msg {
            GuestMessage::Started { process, pid } if process == MAIN_PROCESS => {
                if let Some(p) = self.processes.get_mut(&MAIN_PROCESS) {
                    p.started = true;
                }
                if let Some(dir) = self.io.state_dir {
                    let _ = std::fs::write(dir.join(crate::state::STARTED_FILE), b"");
                }
                if let Some(mut c) = self.pending_start.take() {
                    reply(&mut c, api::Response::Ok);
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
                if let Some(mut c) = self.pending_start.take() {
                    reply(&mut c, api::Response::Error(message.clone()));
                }
                if let Some(p) = self.processes.get_mut(&MAIN_PROCESS) {
                    p.status = Some(ExitStatus::Exited(code));
                }
                self.main_ending = Some(Ending::StartFailed(code, message));
            }
            GuestMessage::Exited { process, status } if process == MAIN_PROCESS => {
                if let Some(p) = self.processes.get_mut(&MAIN_PROCESS) {
                    p.status = Some(status);
                }
                self.main_ending = Some(Ending::Exited(status));
            }
            GuestMessage::Started { process, pid } => self.exec_started(process, pid)?,
            GuestMessage::StartFailed {
                process,
                code,
                message,
            } => self.exec_failed(process, code, message),
            GuestMessage::Exited { process, status } => self.exec_exited(process, status),
            GuestMessage::Hello { .. } => {
                return Err(MonitorError::Protocol("a second Hello".into()))
            }
        }
        Ok(())
    }
}

//! Exec'd processes on the monitor's side: a `runvm exec` request (its spec, then its
//! stdio descriptors over SCM_RIGHTS), the `Exec` to the guest, and the connection that
//! stays open while the process runs: [`ExecEvent`]s out (started, failed, exited once
//! its output is relayed), [`ExecControl`]s in (signals, resizes). When that connection
//! ends before the process does (the `runvm exec` process was SIGKILLed, as containerd
//! kills an exec), the process is killed in the guest.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use runvm_protocol::{
    read_frame, ContainerId, ExitStatus, FrameError, HostMessage, ProcessId, ProcessSpec,
    MAIN_CONTAINER,
};

use super::api::{answer, exec_fd_count, ExecControl, ExecEvent};
use super::process::{HostStdio, Process};
use super::session::Session;
use super::MonitorError;

/// The guest spoke of a process the monitor has no entry for: one it never started, or
/// one that has already ended and been reported.
fn unknown(id: ProcessId, what: &str) -> MonitorError {
    MonitorError::Protocol(format!(
        "the guest reported the {what} of process {id}, which does not exist"
    ))
}

/// Tells the `runvm exec` waiting on `conn`, if it is still there, how its process goes.
pub(super) fn tell(conn: &mut Option<UnixStream>, ev: &ExecEvent) {
    if let Some(c) = conn.as_mut() {
        answer(c, ev);
    }
}

impl Session<'_> {
    /// `Request::Exec` arrived on `conn`: take its descriptors and ask the guest to run
    /// the process in `container` (the VM's own, or a running member).
    pub(super) fn exec_request(
        &mut self,
        conn: UnixStream,
        mut spec: ProcessSpec,
        container: ContainerId,
    ) -> Result<(), MonitorError> {
        let Some((mut conn, stdio, _)) = self.take_stdio(conn, spec.terminal, 0) else {
            return Ok(());
        };
        if container != MAIN_CONTAINER && !self.member_running(container) {
            tell(
                &mut conn,
                &ExecEvent::Failed {
                    code: 1,
                    message: format!("container not running (no member {container} in the VM)"),
                },
            );
            return Ok(());
        }
        let id = self.new_process(&mut conn, stdio, &mut spec);
        if let Some(p) = self.processes.get_mut(&id) {
            p.container = container;
        }
        log::debug!("exec {id}: {:?}", spec.args);
        self.send(&HostMessage::Exec {
            process: id,
            spec,
            container,
        })
    }

    /// The descriptors that follow an exec or member request on `conn`: the stdio of a
    /// process with (or without) a `terminal` ([`exec_fd_count`]), then `extra` more.
    /// `None` when the caller was told why not, or the container's main process does not
    /// run.
    pub(super) fn take_stdio(
        &mut self,
        conn: UnixStream,
        terminal: bool,
        extra: usize,
    ) -> Option<(Option<UnixStream>, HostStdio, Vec<OwnedFd>)> {
        let want = exec_fd_count(terminal);
        let received = runvm_protocol::scm::recv_fds(conn.as_fd(), want + extra);
        let mut conn = Some(conn);
        let fds = match received {
            Ok((fds, _)) => fds,
            Err(e) => {
                log::warn!("an exec request came without its descriptors: {e}");
                tell(
                    &mut conn,
                    &ExecEvent::Failed {
                        code: 1,
                        message: format!("the exec request's stdio descriptors: {e}"),
                    },
                );
                return None;
            }
        };
        if !self.main_running() {
            tell(
                &mut conn,
                &ExecEvent::Failed {
                    code: 1,
                    message: "container not running".into(),
                },
            );
            return None;
        }
        let mut fds = fds.into_iter();
        let mut files = fds.by_ref().take(want).map(std::fs::File::from);
        let stdio = match (terminal, files.next(), files.next(), files.next()) {
            (true, Some(input), Some(output), None) => HostStdio::Terminal { input, output },
            (false, Some(stdin), Some(stdout), Some(stderr)) => HostStdio::Pipes {
                stdin,
                stdout,
                stderr,
            },
            _ => unreachable!("recv_fds returned exactly {} descriptors", want + extra),
        };
        Some((conn, stdio, fds.collect()))
    }

    /// A new process entry for `stdio`, waited for on `conn`: its id, with `spec` told
    /// whether its outputs are one.
    pub(super) fn new_process(
        &mut self,
        conn: &mut Option<UnixStream>,
        stdio: HostStdio,
        spec: &mut ProcessSpec,
    ) -> ProcessId {
        let id = self.next_exec_id;
        self.next_exec_id += 1;
        if let Some(c) = conn.as_ref() {
            // Control messages are small and sent whole; never hang the monitor on one.
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        }
        let holder = conn.as_ref().and_then(|c| {
            nix::sys::socket::getsockopt(c, nix::sys::socket::sockopt::PeerCredentials)
                .ok()
                .map(|cred| cred.pid())
        });
        spec.shared_output = stdio.output_shared();
        spec.stdin_null = stdio.stdin_is_null();
        let mut process = Process::new(stdio, conn.take());
        process.holder = holder;
        self.processes.insert(id, process);
        id
    }

    pub(super) fn exec_started(&mut self, id: ProcessId, pid: i32) -> Result<(), MonitorError> {
        let Some(p) = self.processes.get_mut(&id) else {
            return Err(unknown(id, "start"));
        };
        if p.started || p.status.is_some() {
            return Err(MonitorError::Protocol(format!(
                "the guest reported the start of process {id} twice"
            )));
        }
        p.started = true;
        if p.client.is_none() {
            // Its `runvm exec` died while it was starting: nobody waits for it.
            log::debug!("exec {id}: its runvm exec went away before it started; killing it");
            return self.send(&HostMessage::Signal {
                process: id,
                signal: libc::SIGKILL,
            });
        }
        tell(&mut p.client, &ExecEvent::Started { pid });
        Ok(())
    }

    pub(super) fn exec_failed(
        &mut self,
        id: ProcessId,
        code: i32,
        message: String,
    ) -> Result<(), MonitorError> {
        match self.processes.get(&id) {
            None => return Err(unknown(id, "failed start")),
            Some(p) if p.started => {
                return Err(MonitorError::Protocol(format!(
                    "the guest reported a failed start of process {id} after its start"
                )))
            }
            Some(_) => {}
        }
        if let Some(mut p) = self.processes.remove(&id) {
            tell(&mut p.client, &ExecEvent::Failed { code, message });
            p.end();
        }
        self.member_failed(id);
        Ok(())
    }

    pub(super) fn exec_exited(
        &mut self,
        id: ProcessId,
        status: ExitStatus,
        oom_kills: u64,
    ) -> Result<(), MonitorError> {
        let Some(p) = self.processes.get_mut(&id) else {
            return Err(unknown(id, "exit"));
        };
        if !p.started {
            return Err(MonitorError::Protocol(format!(
                "the guest reported the exit of process {id} before its start"
            )));
        }
        if p.status.is_some() {
            return Err(MonitorError::Protocol(format!(
                "the guest reported the exit of process {id} twice"
            )));
        }
        p.status = Some(status);
        p.oom_kills = oom_kills;
        Ok(())
    }

    /// The container process `id` runs in (the main one for a process it does not know).
    pub(super) fn container_of(&self, id: ProcessId) -> ContainerId {
        self.processes
            .get(&id)
            .map_or(MAIN_CONTAINER, |p| p.container)
    }

    /// A message (or the end) on the connection of the `runvm exec` waiting for `id`.
    pub(super) fn client_message(&mut self, id: ProcessId) -> Result<(), MonitorError> {
        let Some(p) = self.processes.get_mut(&id) else {
            return Ok(());
        };
        let Some(conn) = p.client.as_mut() else {
            return Ok(());
        };
        let msg = match read_frame::<_, ExecControl>(conn) {
            Ok(m) => m,
            Err(e) => {
                if !matches!(e, FrameError::Closed) {
                    log::warn!("exec {id}: a bad message from its runvm exec ({e}); dropping it");
                }
                p.client = None;
                if p.started && p.status.is_none() {
                    // Its waiter is gone (containerd SIGKILLs the exec pid): so is it.
                    log::debug!("exec {id}: its runvm exec went away; killing it");
                    self.member_signalled(id, libc::SIGKILL);
                    return self.send(&HostMessage::Signal {
                        process: id,
                        signal: libc::SIGKILL,
                    });
                }
                return Ok(());
            }
        };
        if p.status.is_some() {
            return Ok(());
        }
        match msg {
            ExecControl::Signal { signal } => {
                self.member_signalled(id, signal);
                self.send(&HostMessage::Signal {
                    process: id,
                    signal,
                })
            }
            ExecControl::Resize { rows, cols } => self.send(&HostMessage::Resize {
                process: id,
                rows,
                cols,
            }),
            ExecControl::Holder { pid } => {
                p.holder = Some(pid);
                Ok(())
            }
        }
    }

    /// Tells the waiters of complete exec'd processes their codes, and forgets them.
    pub(super) fn finish_complete_execs(&mut self) -> Result<(), MonitorError> {
        let done: Vec<ProcessId> = self
            .processes
            .iter()
            .filter(|(id, p)| **id != runvm_protocol::MAIN_PROCESS && p.complete())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(p) = self.processes.remove(&id) {
                let status = p.status.unwrap_or(ExitStatus::Signaled(libc::SIGKILL));
                if self.main_ended() {
                    // The guest removes nothing more: the VM ends (its slot is emptied
                    // with the others at the session's end).
                    self.finish_exec(p, status);
                } else if let Some(p) = self.member_ended(id, p, status)? {
                    self.finish_exec(p, status);
                }
            }
        }
        Ok(())
    }

    /// Closes the process's host descriptors, then tells its waiter how it ended.
    pub(super) fn finish_exec(&mut self, mut p: Process, status: ExitStatus) {
        let mut client = p.client.take();
        p.end();
        tell(
            &mut client,
            &ExecEvent::Exited {
                code: status.code(),
                oom_kills: 0,
            },
        );
    }
}

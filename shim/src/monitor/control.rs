//! The monitor's side of `runvm pause`, `resume`, `ps`, `events` and `update`: pausing
//! the vCPUs, and the requests that the guest answers (its process list, its cgroup's
//! usage, new limits), each matched to its answer by a request number.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;

use runvm_protocol::{
    ContainerId, GuestMessage, GuestProcess, HostMessage, MAIN_CONTAINER, MAIN_PROCESS,
};

use super::api::{self, answer};
use super::prestart::before_running;
use super::session::Session;
use super::{untrusted, MonitorError};

/// Most requests waiting for the guest at once; past it a request is refused.
const MAX_WAITING: usize = 64;
/// Most processes of one answer kept (the frame limit bounds it anyway).
const MAX_PROCESSES: usize = 4096;

/// What a request waits for.
enum Waiting {
    Processes {
        host_pids: Vec<i32>,
    },
    /// The stats of `container` (only the main container's count for its OOM kills).
    Stats {
        container: ContainerId,
    },
    Update,
}

/// Requests waiting for the guest's answer, by request number.
#[derive(Default)]
pub(super) struct Queries {
    next: u32,
    waiting: BTreeMap<u32, (Waiting, UnixStream)>,
}

impl Session<'_> {
    /// Whether the guest's `Stats` answer to `request` is about the main container (the
    /// session's own poll, or a host API query of it).
    pub(super) fn stats_of_main(&self, request: u32) -> bool {
        match self.queries.waiting.get(&request) {
            Some((Waiting::Stats { container }, _)) => *container == MAIN_CONTAINER,
            _ => true,
        }
    }

    fn paused_file(&self) -> Option<std::path::PathBuf> {
        self.io.state_dir.map(|d| d.join(crate::state::PAUSED_FILE))
    }

    /// Resumes a paused VM so that a SIGKILL can reach its guest.
    pub(super) fn resume_for_kill(&mut self) {
        self.io.vm.resume();
        if let Some(f) = self.paused_file() {
            let _ = std::fs::remove_file(f);
        }
    }

    /// The host pids of the container: the monitor and every waiting `runvm exec`.
    fn host_pids(&self) -> Vec<i32> {
        let mut pids = vec![std::process::id() as i32];
        pids.extend(
            self.processes
                .iter()
                .filter(|(id, _)| **id != MAIN_PROCESS)
                .filter_map(|(_, p)| p.holder),
        );
        pids
    }

    /// Pause, resume, and the requests the guest answers.
    pub(super) fn control_request(
        &mut self,
        mut conn: UnixStream,
        req: api::Request,
        container: ContainerId,
    ) -> Result<(), MonitorError> {
        let paused = self.io.vm.is_paused();
        if container != MAIN_CONTAINER
            && !matches!(
                req,
                api::Request::Processes { .. }
                    | api::Request::Stats
                    | api::Request::Update { .. }
                    | api::Request::Pause
                    | api::Request::Resume
            )
        {
            answer(
                &mut conn,
                &api::ControlResponse::Error(
                    "not supported for a container that runs in another container's VM".into(),
                ),
            );
            return Ok(());
        }
        if !self.main_running() {
            answer(&mut conn, &before_running(&req, "stopping"));
            return Ok(());
        }
        let (waiting, msg) = match req {
            api::Request::Pause if container == MAIN_CONTAINER => {
                let response = match self.io.vm.pause() {
                    Ok(()) => {
                        if let Some(f) = self.paused_file() {
                            let _ = std::fs::write(f, b"");
                        }
                        api::ControlResponse::Ok
                    }
                    Err(e) => api::ControlResponse::Error(format!("cannot pause the VM: {e}")),
                };
                answer(&mut conn, &response);
                return Ok(());
            }
            api::Request::Resume if container == MAIN_CONTAINER => {
                let response = if paused {
                    self.resume_for_kill();
                    api::ControlResponse::Ok
                } else {
                    api::ControlResponse::Error("container not paused".into())
                };
                answer(&mut conn, &response);
                return Ok(());
            }
            api::Request::Processes { guest: false } => {
                let host_pids = self.host_pids();
                answer(
                    &mut conn,
                    &api::ControlResponse::Processes {
                        host_pids,
                        guest: Vec::new(),
                    },
                );
                return Ok(());
            }
            _ if paused => {
                answer(
                    &mut conn,
                    &api::ControlResponse::Error(
                        "the container is paused: its guest cannot answer (resume it first)".into(),
                    ),
                );
                return Ok(());
            }
            _ if self.queries.waiting.len() >= MAX_WAITING => {
                answer(
                    &mut conn,
                    &api::ControlResponse::Error(format!(
                        "{MAX_WAITING} requests already wait for the guest; try again"
                    )),
                );
                return Ok(());
            }
            api::Request::Processes { guest: true } => {
                let request = self.next_query();
                (
                    Waiting::Processes {
                        host_pids: self.host_pids(),
                    },
                    HostMessage::ListProcesses { request, container },
                )
            }
            api::Request::Stats => (
                Waiting::Stats { container },
                HostMessage::Stats {
                    request: self.next_query(),
                    container,
                },
            ),
            // A member's: its guest cgroup is frozen or thawed; the VM goes on.
            api::Request::Pause | api::Request::Resume => (
                Waiting::Update,
                HostMessage::Freeze {
                    request: self.next_query(),
                    container,
                    frozen: matches!(req, api::Request::Pause),
                },
            ),
            api::Request::Update { resources } => (
                Waiting::Update,
                HostMessage::Update {
                    request: self.next_query(),
                    resources,
                    container,
                },
            ),
            api::Request::Start
            | api::Request::Signal { .. }
            | api::Request::Exec { .. }
            | api::Request::AddContainer { .. }
            | api::Request::Member { .. } => {
                unreachable!("handled by api_request")
            }
        };
        let request = match &msg {
            HostMessage::ListProcesses { request, .. }
            | HostMessage::Stats { request, .. }
            | HostMessage::Update { request, .. }
            | HostMessage::Freeze { request, .. } => *request,
            _ => unreachable!("a query"),
        };
        self.queries.waiting.insert(request, (waiting, conn));
        self.send(&msg)
    }

    pub(super) fn next_query(&mut self) -> u32 {
        self.queries.next = self.queries.next.wrapping_add(1);
        self.queries.next
    }

    /// An answer from the guest: it must match a waiting request of its kind.
    pub(super) fn guest_answer(&mut self, msg: GuestMessage) -> Result<(), MonitorError> {
        let request = match &msg {
            GuestMessage::Processes { request, .. }
            | GuestMessage::Stats { request, .. }
            | GuestMessage::Updated { request, .. } => *request,
            _ => return Ok(()),
        };
        let Some((waiting, mut conn)) = self.queries.waiting.remove(&request) else {
            return Err(MonitorError::Protocol(format!(
                "the guest answered request {request}, which was not asked"
            )));
        };
        let response = match (waiting, msg) {
            (Waiting::Processes { host_pids }, GuestMessage::Processes { processes, .. }) => {
                let guest = processes
                    .into_iter()
                    .take(MAX_PROCESSES)
                    .map(|p| GuestProcess {
                        cmd: untrusted::text(&p.cmd),
                        ..p
                    })
                    .collect();
                api::ControlResponse::Processes { host_pids, guest }
            }
            (Waiting::Stats { .. }, GuestMessage::Stats { stats, .. }) => {
                api::ControlResponse::Stats(stats)
            }
            (Waiting::Update, GuestMessage::Updated { error: None, .. }) => {
                api::ControlResponse::Ok
            }
            (Waiting::Update, GuestMessage::Updated { error: Some(e), .. }) => {
                api::ControlResponse::Error(format!("in the guest: {}", untrusted::text(&e)))
            }
            _ => {
                return Err(MonitorError::Protocol(format!(
                    "the guest answered request {request} with an answer of another kind"
                )))
            }
        };
        answer(&mut conn, &response);
        Ok(())
    }
}

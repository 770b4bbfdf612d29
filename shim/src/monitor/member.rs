//! Member containers on the monitor's side: containers that run in this container's VM
//! beside its own (`docker run --network container:…`, the containers of a pod), asked
//! for by their own `runvm create` process over the host API (`Request::AddContainer`).
//!
//! The member's `runvm` process serves its share with a virtiofsd of its own (the member's
//! capabilities and users bound what it may do to host files) and hands the monitor a
//! connection to it, which the monitor puts in a spare file-system slot of the VM
//! (`vmm::VmmHandle::fill_fs_slot`; the confined monitor could not start a virtiofsd or
//! connect to one). The guest then binds the slot's device, mounts the share and starts
//! the member ([`runvm_protocol::NewContainer`]). The member's main process is a process
//! of the session like an exec'd one: its stdio relayed, its waiter's connection open
//! for signals and resizes, its end told there. Once it has ended the guest is asked to
//! remove the member, and only when it has (or the VM ends) is the slot emptied and the
//! waiter told the exit code, so a member's `runvm delete` finds its share released.
//!
//! The host never needs the guest to end a member: a member whose main process was
//! SIGKILLed and whose end the guest has not reported within [`MEMBER_GRACE`], or whose
//! removal the guest has not confirmed within it, is ended by the host: its slot is
//! emptied (the guest loses its files), its waiter told 137 (or its code), and what the
//! guest says of it later is ignored.

use std::collections::BTreeSet;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use runvm_protocol::{
    ContainerId, ExitStatus, GuestMessage, HostMessage, NewContainer, ProcessId, RootfsSpec,
    SHARE_ROOT,
};
use vmm::{FsBackend, FsSlotShare};

use super::api::{ExecEvent, MemberSpec};
use super::exec::tell;
use super::process::Process;
use super::session::Session;
use super::MonitorError;

/// A running member (its container id is its main process's `container`): the spare
/// slot of its share, and once it was SIGKILLed, when the host ends it itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Membership {
    pub(super) slot: usize,
    kill_deadline: Option<Instant>,
}

/// How long the guest has to report the end of a SIGKILLed member, or to confirm a
/// member's removal, before the host ends the member itself.
pub(super) const MEMBER_GRACE: Duration = Duration::from_secs(2);

/// A member whose main process has ended, waiting for the guest's `ContainerRemoved`.
pub(super) struct Removal {
    slot: usize,
    client: Option<UnixStream>,
    status: ExitStatus,
    oom_kills: u64,
    deadline: Instant,
}

impl Removal {
    /// The removal of member `m`, whose main process `p` ended with `status`: the
    /// process's host descriptors closed, its waiter (and its cgroup's OOM kills) kept.
    fn of(m: Membership, mut p: Process, status: ExitStatus, deadline: Instant) -> Self {
        let client = p.client.take();
        let oom_kills = p.oom_kills;
        p.end();
        Self {
            slot: m.slot,
            client,
            status,
            oom_kills,
            deadline,
        }
    }
}

/// Members the host ended without the guest: their main processes and containers.
#[derive(Default)]
pub(super) struct Abandoned {
    processes: BTreeSet<ProcessId>,
    containers: BTreeSet<ContainerId>,
}

/// The guest's tag of member `container`'s share.
fn share_tag(container: ContainerId) -> String {
    format!("runvm-c{container}")
}

impl Session<'_> {
    /// `Request::AddContainer` arrived on `conn`: take the member's stdio and its share's
    /// connection, put the share in a spare slot and ask the guest for the container.
    pub(super) fn member_request(
        &mut self,
        conn: UnixStream,
        member: MemberSpec,
    ) -> Result<(), MonitorError> {
        let MemberSpec {
            mut process,
            readonly,
            hostname,
            linux,
            mounts,
            share,
        } = member;
        let Some((mut conn, stdio, mut extra)) = self.take_stdio(conn, process.terminal, 1) else {
            return Ok(());
        };
        let Some(backend) = extra.pop().map(UnixStream::from) else {
            return Ok(());
        };
        let container = self.next_container_id;
        self.next_container_id += 1;
        let tag = share_tag(container);
        let log_tag = tag.clone();
        let filled = self.io.vm.fill_fs_slot(
            None,
            FsSlotShare {
                tag: tag.clone(),
                backend: FsBackend::Connected(backend),
                // Its virtiofsd belongs to the member's runvm process; it ends with it,
                // whose connection's end then ends the member.
                on_failure: Box::new(move |why| {
                    log::warn!("the share {log_tag:?} of a member container failed: {why}")
                }),
            },
        );
        let filled = match filled {
            Ok(f) => f,
            Err(e) => {
                tell(
                    &mut conn,
                    &ExecEvent::Failed {
                        code: 1,
                        message: format!(
                            "cannot give the container's files to the VM it joins: {e}"
                        ),
                    },
                );
                return Ok(());
            }
        };
        tell(&mut conn, &ExecEvent::Added { container });
        let id = self.new_process(&mut conn, stdio, &mut process);
        if let Some(p) = self.processes.get_mut(&id) {
            p.container = container;
        }
        self.members.insert(
            id,
            Membership {
                slot: filled.slot,
                kill_deadline: None,
            },
        );
        log::debug!(
            "member container {container} (process {id}, share {tag} in {}): {:?}",
            filled.device,
            process.args
        );
        self.send(&HostMessage::AddContainer(NewContainer {
            container,
            process: id,
            rootfs: RootfsSpec {
                share_tag: tag,
                root: SHARE_ROOT.into(),
                readonly,
            },
            hostname,
            spec: process,
            linux,
            mounts,
            share,
            device: Some(filled.device),
        }))
    }

    /// Whether member `container` runs (its main process has started and not ended).
    pub(super) fn member_running(&self, container: ContainerId) -> bool {
        self.members.keys().any(|id| {
            self.processes
                .get(id)
                .is_some_and(|p| p.container == container && p.started && p.status.is_none())
        })
    }

    /// The main process `id` of a member has ended and all its output is relayed: ask
    /// the guest to remove the member (its waiter hears the code once it has).
    /// Returns the process back when it is no member's.
    pub(super) fn member_ended(
        &mut self,
        id: ProcessId,
        p: Process,
        status: ExitStatus,
    ) -> Result<Option<Process>, MonitorError> {
        let Some(m) = self.members.remove(&id) else {
            return Ok(Some(p));
        };
        let container = p.container;
        let removal = Removal::of(m, p, status, Instant::now() + MEMBER_GRACE);
        self.removing.insert(container, removal);
        self.send(&HostMessage::RemoveContainer { container })?;
        Ok(None)
    }

    /// The guest's `ContainerRemoved`: the slot is emptied and the waiter told.
    pub(super) fn member_removed(
        &mut self,
        container: ContainerId,
        error: Option<String>,
    ) -> Result<(), MonitorError> {
        let Some(removal) = self.removing.remove(&container) else {
            return Err(MonitorError::Protocol(format!(
                "the guest reported the removal of container {container}, which was not asked"
            )));
        };
        if let Some(e) = error {
            log::warn!(
                "member container {container}: the guest could not undo all of it: {}",
                super::untrusted::text(&e)
            );
        }
        self.release(removal);
        Ok(())
    }

    /// A member whose start failed: the guest left nothing of it (its device unbound);
    /// the slot is emptied.
    pub(super) fn member_failed(&mut self, id: ProcessId) {
        if let Some(m) = self.members.remove(&id) {
            self.empty_slot(m.slot);
        }
    }

    /// At the session's end: members still in the VM die with it, those being removed
    /// are released.
    pub(super) fn release_members(&mut self) {
        for (_, removal) in std::mem::take(&mut self.removing) {
            self.release(removal);
        }
        for (_, m) in std::mem::take(&mut self.members) {
            self.empty_slot(m.slot);
        }
    }

    /// A signal went to process `id`: a SIGKILL of a member's main process starts the
    /// grace after which the host ends the member itself.
    pub(super) fn member_signalled(&mut self, id: ProcessId, signal: i32) {
        if signal != libc::SIGKILL {
            return;
        }
        if let Some(m) = self.members.get_mut(&id) {
            m.kill_deadline
                .get_or_insert_with(|| Instant::now() + MEMBER_GRACE);
        }
    }

    /// The next member deadline: a SIGKILLed one's, or a removal's.
    pub(super) fn member_deadline(&self) -> Option<Instant> {
        let kills = self.members.values().filter_map(|m| m.kill_deadline);
        kills
            .chain(self.removing.values().map(|r| r.deadline))
            .min()
    }

    /// Ends the members whose guest did not do its part in time.
    pub(super) fn expire_members(&mut self, now: Instant) {
        let overdue: Vec<ProcessId> = self
            .members
            .iter()
            .filter(|(_, m)| m.kill_deadline.is_some_and(|d| now >= d))
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            let (Some(m), Some(p)) = (self.members.remove(&id), self.processes.remove(&id)) else {
                continue;
            };
            log::warn!(
                "the guest did not report the end of SIGKILLed member container {} within {MEMBER_GRACE:?}; the host ends it",
                p.container
            );
            self.abandoned.processes.insert(id);
            self.abandoned.containers.insert(p.container);
            let removal = Removal::of(m, p, ExitStatus::Signaled(libc::SIGKILL), now);
            self.release(removal);
        }
        let overdue: Vec<ContainerId> = self
            .removing
            .iter()
            .filter(|(_, r)| now >= r.deadline)
            .map(|(c, _)| *c)
            .collect();
        for container in overdue {
            if let Some(removal) = self.removing.remove(&container) {
                log::warn!(
                    "the guest did not confirm the removal of member container {container} within {MEMBER_GRACE:?}; the host empties its slot"
                );
                self.abandoned.containers.insert(container);
                self.release(removal);
            }
        }
    }

    /// Whether `msg` is about a member the host ended itself (and is to be ignored).
    pub(super) fn of_abandoned(&self, msg: &GuestMessage) -> bool {
        match msg {
            GuestMessage::Started { process, .. }
            | GuestMessage::StartFailed { process, .. }
            | GuestMessage::Exited { process, .. } => self.abandoned.processes.contains(process),
            GuestMessage::ContainerRemoved { container, .. } => {
                self.abandoned.containers.contains(container)
            }
            _ => false,
        }
    }

    fn release(&mut self, mut removal: Removal) {
        self.empty_slot(removal.slot);
        tell(
            &mut removal.client,
            &ExecEvent::Exited {
                code: removal.status.code(),
                oom_kills: removal.oom_kills,
            },
        );
    }

    fn empty_slot(&self, slot: usize) {
        if let Err(e) = self.io.vm.empty_fs_slot(slot) {
            log::warn!("cannot empty spare file-system slot {slot}: {e}");
        }
    }
}

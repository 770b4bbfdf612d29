//! KVM state: the VM (memory slots, interrupt controller, eventfds), its vCPUs and their
//! pausing ([`pause`]), plus [`VmState`], the one place that records why the VM stopped.

pub mod pause;
pub mod vcpu;
pub mod vm;

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExitReason {
    /// The guest reset the machine (i8042 reset: the normal end of a runvm guest).
    Reset,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN). With `reboot=k` this means it crashed.
    TripleFault,
    /// KVM could not run the guest; the message says why and what to do.
    KvmError(String),
    /// The host asked the VM to stop (for example the container was killed).
    Stopped,
    /// A device's backend process failed or went away (the virtiofsd of a file-system
    /// share exited, stalled or misbehaved); the message says which and what happened.
    BackendFailed(String),
}

/// Shared between the vCPU threads, devices and the VMM thread: the first exit reason
/// wins, and setting it signals the VMM thread through an eventfd.
pub struct VmState {
    reason: Mutex<Option<VmExitReason>>,
    exit_evt: EventFd,
}

impl VmState {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records why the VM stops (only the first call counts) and wakes the VMM thread.
    pub fn request_exit(&self, reason: VmExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        // An eventfd write fails only if the counter would overflow: it is already set.
        let _ = self.exit_evt.write(1);
    }

    pub fn exit_reason(&self) -> Option<VmExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn exit_evt(&self) -> &EventFd {
        &self.exit_evt
    }
}

//! One vCPU and its thread: the `KVM_RUN` loop, the dispatch of its exits, and the kick
//! signal that takes a thread out of `KVM_RUN`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::pause::PauseControl;
use super::vm::{Vm, VmError};
use super::{VmExitReason, VmState};
use crate::bus::Bus;
use crate::devices::legacy::BootTimer;

/// Signal used to kick a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler of [`kick_signal`]: its only purpose is to make
/// `KVM_RUN` return `EINTR`. Idempotent.
pub fn register_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
        .map_err(std::io::Error::from)
}

/// Explains a KVM failure to run the guest, with what the user can do.
pub fn kvm_failure_message(what: &str) -> String {
    if Path::new("/sys/module/kvm_pvm").exists() {
        format!(
            "{what}. This host's /dev/kvm is PVM (the kvm_pvm module), which boots only \
             PVM-enlightened guest kernels; runvm's guest kernel needs hardware virtualization \
             (Intel VT-x or AMD-V through kvm_intel or kvm_amd). On such a machine, run guests \
             inside the nested test host: cargo xtask testhost -- <command>"
        )
    } else {
        format!("{what}. The guest kernel could not run on this host's KVM; check that it was built by `cargo xtask kernel`")
    }
}

/// A vCPU ready to run.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    state: Arc<VmState>,
    timer: BootTimer,
}

impl Vcpu {
    pub fn new(
        vm: &Vm,
        id: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        state: Arc<VmState>,
        timer: BootTimer,
    ) -> Result<Self, VmError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|source| VmError::Kvm {
                what: "create a vCPU",
                source,
            })?;
        Ok(Self {
            id,
            fd,
            pio,
            mmio,
            state,
            timer,
        })
    }

    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The thread body: runs the guest until the VM stops or `stop` is set.
    /// While `pause` says so, the thread parks between two runs.
    pub fn run(mut self, stop: Arc<AtomicBool>, pause: Arc<PauseControl>) {
        pause.register_current_thread();
        if self.id == 0 {
            self.timer.mark_kernel_entry();
        }
        while !stop.load(Ordering::Acquire) {
            pause.park_if_paused(&stop);
            if stop.load(Ordering::Acquire) {
                break;
            }
            if let Some(reason) = self.run_once() {
                self.state.request_exit(reason);
                break;
            }
        }
        pause.unregister_current_thread();
    }

    /// Runs until the next exit; returns why the VM must stop, if it must.
    fn run_once(&mut self) -> Option<VmExitReason> {
        let id = self.id;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    data.fill(0);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::Hlt) => Some(VmExitReason::Reset),
            Ok(VcpuExit::Shutdown) => Some(VmExitReason::TripleFault),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN | kvm_bindings::KVM_SYSTEM_EVENT_RESET => Some(VmExitReason::Reset),
                other => Some(VmExitReason::KvmError(format!("vCPU {id}: guest system event {other} (crash)"))),
            },
            Ok(VcpuExit::InternalError) => {
                Some(VmExitReason::KvmError(kvm_failure_message(&format!("KVM internal error on vCPU {id}"))))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VmExitReason::KvmError(kvm_failure_message(&format!(
                "KVM failed to enter the guest on vCPU {id} (hardware entry failure {reason:#x} on CPU {cpu})"
            )))),
            Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => None,
            Ok(other) => Some(VmExitReason::KvmError(format!("vCPU {id}: unexpected KVM exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(VmExitReason::KvmError(kvm_failure_message(&format!("KVM_RUN failed on vCPU {id}: {e}")))),
        }
    }
}

//! One vCPU and its thread: the `KVM_RUN` loop, the dispatch of its exits, and the kick
//! signal that takes a thread out of `KVM_RUN`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};

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

/// `IA32_TSC_DEADLINE`: restored after `IA32_TSC`, which it is relative to.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Everything KVM keeps of one vCPU, as a snapshot saves it (the order of the fields is
/// the order [`Vcpu::restore_state`] sets them in, Firecracker's).
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// (index, value) of every MSR KVM let us read.
    pub msrs: Vec<(u32, u64)>,
    pub vcpu_events: kvm_vcpu_events,
}

/// TSS descriptor types: available and busy 64-bit TSS.
const TSS_AVAILABLE: u8 = 9;
const TSS_BUSY: u8 = 11;

/// The special registers to restore from `saved`. On AMD, KVM reports the task register
/// busy (type 11) although the VMCB holds it as the CPU loaded it (type 9: SVM does not
/// keep the busy bit); put back as 11, a CPU that checks the type on I/O permission
/// lookups (QEMU's emulated SVM, the nested test host) refuses every port the guest's
/// I/O bitmap allows. VMX requires 11, and keeps it.
fn restored_sregs(saved: &kvm_sregs, amd: bool) -> kvm_sregs {
    let mut sregs = *saved;
    if amd && sregs.tr.type_ == TSS_BUSY {
        sregs.tr.type_ = TSS_AVAILABLE;
    }
    sregs
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

    /// Reads this vCPU's state. The vCPU must be out of `KVM_RUN` with nothing pending
    /// (see [`Vcpu::run`], which completes a pending I/O exit before it returns).
    /// `msr_indices` are the MSRs to try (KVM's list); those KVM cannot read are left out.
    pub fn save_state(&self, msr_indices: &[u32]) -> Result<VcpuState, VmError> {
        let kvm = |what| move |source| VmError::Kvm { what, source };
        let mut msrs = Vec::with_capacity(msr_indices.len());
        for &index in msr_indices {
            let mut one = Msrs::from_entries(&[kvm_msr_entry {
                index,
                ..Default::default()
            }])
            .map_err(|_| VmError::Kvm {
                what: "read an MSR",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            })?;
            if self.fd.get_msrs(&mut one).map_err(kvm("read an MSR"))? == 1 {
                msrs.push((index, one.as_slice()[0].data));
            }
        }
        Ok(VcpuState {
            mp_state: self.fd.get_mp_state().map_err(kvm("read the MP state"))?,
            regs: self.fd.get_regs().map_err(kvm("read the registers"))?,
            sregs: self
                .fd
                .get_sregs()
                .map_err(kvm("read the special registers"))?,
            xsave: self.fd.get_xsave().map_err(kvm("read the XSAVE area"))?,
            xcrs: self.fd.get_xcrs().map_err(kvm("read the XCRs"))?,
            debug_regs: self
                .fd
                .get_debug_regs()
                .map_err(kvm("read the debug registers"))?,
            lapic: self.fd.get_lapic().map_err(kvm("read the local APIC"))?,
            msrs,
            vcpu_events: self
                .fd
                .get_vcpu_events()
                .map_err(kvm("read the vCPU events"))?,
        })
    }

    /// Sets this vCPU's state from a snapshot (after its CPUID, which it depends on).
    /// `amd`: the host is AMD's (see [`restored_sregs`]).
    pub fn restore_state(&self, state: &VcpuState, amd: bool) -> Result<(), VmError> {
        let kvm = |what| move |source| VmError::Kvm { what, source };
        let fd = &self.fd;
        fd.set_mp_state(state.mp_state)
            .map_err(kvm("set the MP state"))?;
        fd.set_regs(&state.regs).map_err(kvm("set the registers"))?;
        fd.set_sregs(&restored_sregs(&state.sregs, amd))
            .map_err(kvm("set the special registers"))?;
        // SAFETY: `kvm_xsave` is the 4 KiB buffer KVM_SET_XSAVE reads (this VMM never enables
        // KVM_CAP_XSAVE2, so KVM reads no more than KVM_GET_XSAVE wrote into it).
        unsafe { fd.set_xsave(&state.xsave) }.map_err(kvm("set the XSAVE area"))?;
        fd.set_xcrs(&state.xcrs).map_err(kvm("set the XCRs"))?;
        fd.set_debug_regs(&state.debug_regs)
            .map_err(kvm("set the debug registers"))?;
        fd.set_lapic(&state.lapic)
            .map_err(kvm("set the local APIC"))?;
        // The TSC deadline is relative to the TSC: it goes last.
        let mut entries = crate::boot::cpu::msr_entries(&state.msrs);
        entries.sort_by_key(|e| e.index == MSR_IA32_TSC_DEADLINE);
        for chunk in entries.chunks(kvm_bindings::KVM_MAX_MSR_ENTRIES) {
            let msrs = Msrs::from_entries(chunk).map_err(|_| VmError::Kvm {
                what: "set the MSRs",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            })?;
            let set = fd.set_msrs(&msrs).map_err(kvm("set the MSRs"))?;
            if set != chunk.len() {
                return Err(VmError::Kvm {
                    what: "set the MSRs (it refused one the snapshot holds)",
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                });
            }
        }
        fd.set_vcpu_events(&state.vcpu_events)
            .map_err(kvm("set the vCPU events"))?;
        Ok(())
    }

    /// The thread body: runs the guest until the VM stops or `stop` is set, then hands
    /// the vCPU back (for a snapshot). While `pause` says so, the thread parks between
    /// two runs.
    pub fn run(mut self, stop: Arc<AtomicBool>, pause: Arc<PauseControl>) -> Self {
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
        // An I/O exit's emulation completes at the next KVM_RUN: enter once more with
        // `immediate_exit` set, which completes it and returns without running the guest,
        // so that a snapshot finds no half-done instruction.
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
        self
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_register_is_restored_available_on_amd_and_busy_elsewhere() {
        let mut saved = kvm_sregs::default();
        saved.tr.type_ = TSS_BUSY;
        assert_eq!(restored_sregs(&saved, true).tr.type_, TSS_AVAILABLE);
        assert_eq!(restored_sregs(&saved, false).tr.type_, TSS_BUSY);
        saved.tr.type_ = TSS_AVAILABLE;
        assert_eq!(restored_sregs(&saved, true).tr.type_, TSS_AVAILABLE);
    }
}

//! The KVM VM: memory slots, in-kernel interrupt controllers, and the ioeventfd/irqfd
//! plumbing for devices.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    CpuId, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Errors setting up the KVM VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0}. Is KVM available (kvm_intel or kvm_amd loaded) and are you allowed to use it?")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    #[error("{0}")]
    Pvm(String),
    #[error("cannot create an eventfd for a device's notifications: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// What KVM keeps of the VM itself (its interrupt controllers, timer and clock), as a
/// snapshot saves it.
#[derive(Serialize, Deserialize)]
pub struct VmKvmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// A KVM VM with its memory registered.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    pub fn new() -> Result<Self, VmError> {
        // A PVM /dev/kvm spends ~20 s in the first KVM_RUN before it reports the internal
        // error a standard kernel gets there; say so at once instead.
        if std::path::Path::new("/sys/module/kvm_pvm").exists()
            && std::env::var_os("RUNVM_ALLOW_PVM").is_none()
        {
            return Err(VmError::Pvm(super::vcpu::kvm_failure_message(
                "cannot boot the guest on this host's KVM (set RUNVM_ALLOW_PVM=1 if your guest kernel is PVM-enlightened)",
            )));
        }
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let v = kvm.get_api_version();
        if v != 12 {
            return Err(VmError::ApiVersion(v));
        }
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let fd = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        fd.set_tss_address(0xfffb_d000)
            .map_err(kvm_err("set the TSS address"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("create the in-kernel PIC and IOAPIC"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(kvm_err("create the in-kernel PIT"))?;
        Ok(Self { kvm, fd })
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap<()>) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the VMM keeps
            // alive for as long as the VM exists, and slots do not overlap.
            unsafe { self.fd.set_user_memory_region(r) }
                .map_err(kvm_err("register guest memory"))?;
        }
        Ok(())
    }

    /// CPUID entries KVM supports on this host, the base for every vCPU.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("report supported CPUID"))
    }

    /// Whether the in-kernel local APIC offers the TSC-deadline timer.
    pub fn has_tsc_deadline(&self) -> bool {
        self.kvm.check_extension(Cap::TscDeadlineTimer)
    }

    /// Raises `gsi` whenever `evt` is written.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(kvm_err("register an irqfd"))
    }

    /// Signals `evt` when the guest writes `datamatch` (32-bit) to MMIO `addr`, without a VM exit.
    pub fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(kvm_err("register an ioeventfd"))
    }

    /// Stops raising `gsi` when `evt` is written (undoes [`Vm::register_irqfd`]).
    pub fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .unregister_irqfd(evt, gsi)
            .map_err(kvm_err("unregister an irqfd"))
    }

    /// Undoes [`Vm::register_mmio_ioevent`] (the same `evt`, `addr` and `datamatch`).
    pub fn unregister_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .unregister_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(kvm_err("unregister an ioeventfd"))
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Every MSR KVM can save and restore for a vCPU (what a snapshot tries).
    pub fn msr_indices(&self) -> Result<Vec<u32>, VmError> {
        Ok(self
            .kvm
            .get_msr_index_list()
            .map_err(kvm_err("list the MSRs"))?
            .as_slice()
            .to_vec())
    }

    /// Reads the interrupt controllers, the PIT and the clock (the vCPUs stopped).
    pub fn save_state(&self) -> Result<VmKvmState, VmError> {
        let chip = |id| -> Result<kvm_irqchip, VmError> {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut c)
                .map_err(kvm_err("read an interrupt controller"))?;
            Ok(c)
        };
        Ok(VmKvmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(kvm_err("read the PIT"))?,
            clock: self.fd.get_clock().map_err(kvm_err("read the clock"))?,
        })
    }

    /// Sets the interrupt controllers, the PIT and the clock from a snapshot (before any
    /// vCPU runs).
    pub fn restore_state(&self, state: &VmKvmState) -> Result<(), VmError> {
        self.fd
            .set_pit2(&state.pit)
            .map_err(kvm_err("set the PIT"))?;
        // The guest's clock goes on from where the template's stopped: no flags (with
        // KVM_CLOCK_REALTIME KVM would add the time since the snapshot, which the guest
        // init sets its wall clock for instead, and TSC_STABLE is KVM's own to say).
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd
            .set_clock(&clock)
            .map_err(kvm_err("set the clock"))?;
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            self.fd
                .set_irqchip(chip)
                .map_err(kvm_err("set an interrupt controller"))?;
        }
        Ok(())
    }
}

//! Per-vCPU boot state for the PVH entry: CPUID, MSRs, FPU, local APIC and the
//! 32-bit protected-mode registers the PVH protocol starts the kernel in, with the boot GDT
//! they refer to in guest memory.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{BOOT_STACK_POINTER, PVH_INFO_START};

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("KVM rejected the vCPU {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot write the boot GDT: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Kvm { what, source }
}

const BOOT_GDT_START: u64 = 0x500;
const BOOT_IDT_START: u64 = 0x520;
/// GDT: null, 32-bit code, 32-bit data, TSS.
const GDT: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0000_8b00_0000_0067,
];

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// Adjusts the host-supported CPUID for vCPU `id` of `count`. `tsc_deadline` says whether
/// KVM's in-kernel local APIC offers the TSC-deadline timer (KVM reports it as a
/// capability, not in the supported CPUID); without it the guest falls back to a slower,
/// calibrated APIC timer.
pub fn vcpu_cpuid(base: &CpuId, id: u8, count: u8, tsc_deadline: bool) -> CpuId {
    let mut cpuid = base.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // Initial APIC id, logical processor count; we are a hypervisor guest.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= 1 << 31;
                if tsc_deadline {
                    e.ecx |= 1 << 24;
                }
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the count above is valid
                }
            }
            0xb | 0x1f => e.edx = u32::from(id), // x2APIC id
            4 => {
                // Cores per package for the cache topology leaf.
                e.eax = (e.eax & 0x03ff_ffff) | (u32::from(count.saturating_sub(1)) << 26);
            }
            _ => {}
        }
    }
    cpuid
}

/// Writes the boot GDT the segment registers below refer to.
pub fn write_gdt(mem: &GuestMemoryMmap<()>) -> Result<(), CpuError> {
    for (i, d) in GDT.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(BOOT_GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;
    Ok(())
}

fn segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts the vCPU in the PVH boot state: 32-bit protected mode, paging off,
/// `ebx` pointing at `hvm_start_info`, `eip` at the kernel's PVH entry.
/// Whether the CPUID says AMD (or Hygon): vendor "AuthenticAMD" / "HygonGenuine".
pub fn is_amd(cpuid: &CpuId) -> bool {
    cpuid.as_slice().iter().any(|e| {
        e.function == 0
            && matches!(
                (e.ebx, e.edx, e.ecx),
                (0x6874_7541, 0x6974_6e65, 0x444d_4163) | (0x6f67_7948, 0x6e65_476e, 0x656e_6975)
            )
    })
}

/// KVM's MSR entries for (index, value) pairs.
pub fn msr_entries(msrs: &[(u32, u64)]) -> Vec<kvm_msr_entry> {
    msrs.iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect()
}

/// Sets the vCPU's CPUID (all a restored vCPU needs before its saved state).
pub fn set_cpuid(vcpu: &VcpuFd, cpuid: &CpuId) -> Result<(), CpuError> {
    vcpu.set_cpuid2(cpuid).map_err(kvm("CPUID"))
}

pub fn setup_vcpu(
    vcpu: &VcpuFd,
    cpuid: &CpuId,
    entry: GuestAddress,
    boot_cpu: bool,
) -> Result<(), CpuError> {
    vcpu.set_cpuid2(cpuid).map_err(kvm("CPUID"))?;

    let msrs = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, 1),          // fast string operations
        (MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs on, write-back by default
    ];
    let entries = msr_entries(&msrs);
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::Kvm {
        what: "MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    let n = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    if n != entries.len() {
        log::debug!("KVM accepted {n} of {} boot MSRs", entries.len());
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU state"))?;

    // LINT0 delivers ExtINT (the PIC), LINT1 delivers NMI.
    let mut lapic = vcpu.get_lapic().map_err(kvm("local APIC read"))?;
    set_lint(&mut lapic.regs, 0x350, 0x7); // APIC_LVT0: ExtINT
    set_lint(&mut lapic.regs, 0x360, 0x4); // APIC_LVT1: NMI
    vcpu.set_lapic(&lapic).map_err(kvm("local APIC"))?;

    if boot_cpu {
        let mut sregs = vcpu.get_sregs().map_err(kvm("special registers read"))?;
        sregs.cs = segment(0x08, 0xb);
        let data = segment(0x10, 0x3);
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = kvm_segment {
            limit: 0x67,
            selector: 0x18,
            type_: 0xb,
            s: 0,
            db: 0,
            g: 0,
            ..segment(0x18, 0xb)
        };
        sregs.gdt.base = BOOT_GDT_START;
        sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
        sregs.idt.base = BOOT_IDT_START;
        sregs.idt.limit = 7;
        sregs.cr0 = 0x1 | 0x10; // PE, ET
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.efer = 0;
        vcpu.set_sregs(&sregs).map_err(kvm("special registers"))?;

        let regs = kvm_regs {
            rflags: 0x2,
            rip: entry.0,
            rbx: PVH_INFO_START,
            rsp: BOOT_STACK_POINTER,
            ..Default::default()
        };
        vcpu.set_regs(&regs).map_err(kvm("registers"))?;
    }
    Ok(())
}

fn set_lint(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, v) in b.iter_mut().enumerate() {
        *v = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, v) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *v as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn cpuid_carries_the_apic_id_and_count() {
        let base = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xaabb_1234,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                ..Default::default()
            },
        ])
        .unwrap();
        let c = vcpu_cpuid(&base, 3, 4, true);
        let l1 = c.as_slice()[0];
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x1234);
        assert_ne!(l1.ecx & (1 << 31), 0);
        assert_ne!(l1.ecx & (1 << 24), 0, "TSC deadline");
        assert_eq!(
            vcpu_cpuid(&base, 0, 1, false).as_slice()[0].ecx & (1 << 24),
            0
        );
        assert_eq!(c.as_slice()[1].edx, 3);
    }

    #[test]
    fn lint_mode_bits_are_replaced() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[0x351] = 0x7f;
        set_lint(&mut regs, 0x350, 0x4);
        assert_eq!(regs[0x351] as u8, 0x7f & !0x7 | 0x4);
    }
}

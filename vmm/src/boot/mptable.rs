//! The Intel MultiProcessor Specification 1.4 table, which tells a kernel without ACPI
//! how many vCPUs there are, where the IOAPIC is, and how ISA IRQs are wired to it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{APIC_START, IOAPIC_START, IRQ_MAX, MPTABLE_START};

/// Most vCPUs the table (and the 1 KiB it lives in) can describe.
pub const MAX_VCPUS: u8 = 32;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} vCPUs requested; between 1 and {MAX_VCPUS} are supported")]
    VcpuCount(u8),
    #[error("cannot write the MP table to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const IOAPIC_VERSION: u8 = 0x11;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer structure followed by the configuration table.
pub fn build(num_vcpus: u8) -> Result<Vec<u8>, MpTableError> {
    if num_vcpus == 0 || num_vcpus > MAX_VCPUS {
        return Err(MpTableError::VcpuCount(num_vcpus));
    }
    let table_addr = MPTABLE_START as u32 + 16;
    let ioapic_id = num_vcpus + 1;

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // CPU signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // feature flags: FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]); // bus 0
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[3, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: LINT0 of every CPU is ExtINT, LINT1 is NMI.
    entries.extend_from_slice(&[4, MP_IRQ_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"RUNVM   ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&table_addr.to_le_bytes());
    out.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length 1 (16 bytes), rev 1.4, checksum, features
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table at [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap<()>, num_vcpus: u8) -> Result<(), MpTableError> {
    let bytes = build(num_vcpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_sizes_are_valid() {
        for n in [1u8, 2, MAX_VCPUS] {
            let b = build(n).unwrap();
            assert_eq!(&b[0..4], b"_MP_");
            assert_eq!(b[..16].iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
            let len = u16::from_le_bytes([b[20], b[21]]) as usize;
            assert_eq!(len, b.len() - 16);
            assert_eq!(b[16..].iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
            assert_eq!(
                u16::from_le_bytes([b[50], b[51]]) as usize,
                n as usize + 2 + 24 + 2
            );
            // It must fit in the last KiB of base memory, where the kernel looks.
            assert!(b.len() <= 1024, "{} bytes", b.len());
        }
        assert!(build(0).is_err());
        assert!(build(MAX_VCPUS + 1).is_err());
    }
}

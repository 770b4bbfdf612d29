//! Guest RAM: anonymous memory mapped into the VMM and registered with KVM.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size {0} MiB is out of range (16 MiB to 64 GiB)")]
    BadSize(u64),
    #[error("cannot map {size_mib} MiB of guest memory: {source}")]
    Map {
        size_mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The guest RAM ranges for `size` bytes: below the 32-bit MMIO gap, then above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

/// Maps `size_mib` MiB of guest RAM (anonymous, private, not touched until the guest does).
pub fn create_guest_memory(size_mib: u64) -> Result<GuestMemoryMmap<()>, MemoryError> {
    if !(16..=64 * 1024).contains(&size_mib) {
        return Err(MemoryError::BadSize(size_mib));
    }
    GuestMemoryMmap::from_ranges(&ram_ranges(size_mib << 20))
        .map_err(|source| MemoryError::Map { size_mib, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn splits_around_the_mmio_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1], (GuestAddress(MMIO_GAP_END), (1 << 30) as usize));
        let m = create_guest_memory(64).unwrap();
        assert_eq!(m.num_regions(), 1);
        assert!(create_guest_memory(1).is_err());
    }
}

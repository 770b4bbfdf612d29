//! Guest RAM: anonymous memory mapped into the VMM and registered with KVM.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

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

/// Maps `size_mib` MiB of guest RAM (anonymous, private, not touched until the guest does)
/// and asks for transparent huge pages on it (see [`advise_huge_pages`]).
pub fn create_guest_memory(size_mib: u64) -> Result<GuestMemoryMmap<()>, MemoryError> {
    if !(16..=64 * 1024).contains(&size_mib) {
        return Err(MemoryError::BadSize(size_mib));
    }
    let mem = GuestMemoryMmap::from_ranges(&ram_ranges(size_mib << 20))
        .map_err(|source| MemoryError::Map { size_mib, source })?;
    advise_huge_pages(&mem);
    Ok(mem)
}

/// `MADV_HUGEPAGE` on every RAM region, as QEMU does for guest RAM: where transparent huge
/// pages are enabled (`always` or `madvise`, Debian's default), the guest's first touches
/// fault in 2 MiB at a time and KVM maps them with 2 MiB stage-2 entries, so booting the
/// guest kernel costs far fewer host page faults and TLB misses. Where THP is off the call
/// fails and nothing changes, so a failure is logged, not returned.
pub fn advise_huge_pages(mem: &GuestMemoryMmap<()>) {
    for region in mem.iter() {
        let (ptr, len) = (region.as_ptr(), region.len() as usize);
        // SAFETY: `ptr..ptr+len` is exactly one anonymous mapping that `mem` owns and
        // keeps alive for this call; MADV_HUGEPAGE changes only how the kernel backs it,
        // never its contents or its validity.
        let rc = unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            log::debug!(
                "madvise(MADV_HUGEPAGE) on {len} bytes of guest RAM: {} (transparent huge pages off?)",
                std::io::Error::last_os_error()
            );
        }
    }
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

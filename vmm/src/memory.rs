//! Guest RAM: its guest-physical ranges (below the 32-bit MMIO gap, then above 4 GiB) and
//! the anonymous, huge-page-aligned host mappings behind them. Registering the regions
//! with KVM is [`crate::vstate::vm`]'s job.

use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Guest RAM is mapped at host addresses aligned to this (the x86 huge page size).
pub const RAM_ALIGN: usize = 2 << 20;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size {0} MiB is out of range (16 MiB to 64 GiB)")]
    BadSize(u64),
    #[error("cannot map {size_mib} MiB of guest memory: {source}")]
    Map {
        size_mib: u64,
        source: std::io::Error,
    },
    #[error("cannot set up the guest memory region at {base:#x}: {source}")]
    Region {
        base: u64,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest memory region at {0:#x} ends past the end of the address space")]
    RegionOverflow(u64),
    #[error("cannot set up the guest memory regions: {0}")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
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

/// Maps `size_mib` MiB of guest RAM: anonymous, private, not touched until the guest
/// does, each region at a [`RAM_ALIGN`]-aligned host address, with transparent huge pages
/// asked for (see `map_ram`).
///
/// The mappings are never unmapped: a runvm monitor holds one VM for its whole life, and
/// device threads may still hold clones of the memory while the VM winds down, so the
/// mapping lives until the process exits.
pub fn create_guest_memory(size_mib: u64) -> Result<GuestMemoryMmap<()>, MemoryError> {
    if !(16..=64 * 1024).contains(&size_mib) {
        return Err(MemoryError::BadSize(size_mib));
    }
    let mut regions = Vec::new();
    for (base, len) in ram_ranges(size_mib << 20) {
        let ptr = map_ram(len).map_err(|source| MemoryError::Map { size_mib, source })?;
        // SAFETY: `ptr..ptr+len` is an anonymous private read-write mapping that we just
        // made, that nothing else refers to, and that is never unmapped (see above).
        let mapping = unsafe {
            MmapRegion::build_raw(
                ptr,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_PRIVATE,
            )
        }
        .map_err(|source| MemoryError::Region {
            base: base.0,
            source,
        })?;
        regions
            .push(GuestRegionMmap::new(mapping, base).ok_or(MemoryError::RegionOverflow(base.0))?);
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)
}

/// Maps `len` bytes at a [`RAM_ALIGN`]-aligned address and advises huge pages on them.
///
/// Why both: KVM maps guest memory with 2 MiB stage-2 (EPT/NPT) entries only where the
/// host address and the guest address are congruent modulo 2 MiB (otherwise it disables
/// large pages for the whole memory slot), and the kernel backs an anonymous range with
/// transparent huge pages only where asked to (`madvise`, Debian's default) or always.
/// QEMU does the same with its RAM. A guest kernel then faults its memory in 2 MiB at a
/// time instead of 4 KiB, which shortens its early boot (memmap and allocator set-up).
/// Where THP is off, `madvise` fails and the mapping still works with small pages.
fn map_ram(len: usize) -> std::io::Result<*mut u8> {
    let total = len
        .checked_add(RAM_ALIGN)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choice; no existing
    // memory is affected.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_PRIVATE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let raw = raw as usize;
    let start = (raw + RAM_ALIGN - 1) & !(RAM_ALIGN - 1);
    let (head, tail) = (start - raw, raw + total - (start + len));
    // The slack before and after stays reserved but inaccessible (never backed, so no
    // RSS). Unmapping it instead would leave a 2 MiB-aligned hole right below the RAM,
    // where the next thread stack lands and, with THP `always`, costs a whole huge page.
    // SAFETY: both ranges lie inside the mapping made above and outside `start..start+len`,
    // the part we keep; nothing refers to them.
    unsafe {
        if head > 0 {
            libc::mprotect(raw as *mut libc::c_void, head, libc::PROT_NONE);
        }
        if tail > 0 {
            libc::mprotect((start + len) as *mut libc::c_void, tail, libc::PROT_NONE);
        }
    }
    // SAFETY: `start..start+len` is the mapping kept above; MADV_HUGEPAGE changes only how
    // the kernel backs it, never its contents or validity.
    if unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) } != 0 {
        log::debug!(
            "madvise(MADV_HUGEPAGE) on {len} bytes of guest RAM: {} (transparent huge pages off?)",
            std::io::Error::last_os_error()
        );
    }
    Ok(start as *mut u8)
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

    #[test]
    fn regions_sit_at_huge_page_aligned_host_addresses() {
        use vm_memory::GuestMemoryRegion;
        for mib in [16, 130, 4096 + 2] {
            let m = create_guest_memory(mib).unwrap();
            let mut total = 0;
            for r in m.iter() {
                assert_eq!(r.as_ptr() as usize % RAM_ALIGN, 0, "{mib} MiB");
                total += r.len();
            }
            assert_eq!(total, mib << 20);
        }
    }
}

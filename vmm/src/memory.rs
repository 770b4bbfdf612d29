//! Guest RAM: its guest-physical ranges (below the 32-bit MMIO gap, then above 4 GiB) and
//! the host memory behind them: one file, mapped shared at huge-page-aligned host
//! addresses, so that a vhost-user backend (virtiofsd) can map the same pages from the fd.
//! The file lives on a detached tmpfs of its own with huge pages (see `huge_tmpfs_file`),
//! or, where that cannot be made, is a sealed memfd.
//! Registering the regions with KVM is [`crate::vstate::vm`]'s job.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};
use crate::snapshot::{Snapshot, SnapshotError};

/// Guest RAM is mapped at host addresses aligned to this (the x86 huge page size).
pub const RAM_ALIGN: usize = 2 << 20;

/// The name of the guest RAM memfd (`/proc/<pid>/fd` and `smaps` show `/memfd:<name>`).
pub const RAM_MEMFD_NAME: &str = "runvm-guest-ram";

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size {0} MiB is out of range (16 MiB to 64 GiB)")]
    BadSize(u64),
    #[error("cannot create the guest memory file (memfd_create): {0}")]
    Memfd(#[source] std::io::Error),
    #[error(
        "cannot size the guest memory file to {size_mib} MiB (is the file-size limit, \
         ulimit -f, below the guest memory size?): {source}"
    )]
    Truncate {
        size_mib: u64,
        source: std::io::Error,
    },
    #[error("cannot seal the guest memory file against resizing: {0}")]
    Seal(#[source] std::io::Error),
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

/// Maps `size_mib` MiB of guest RAM: one file of that size (on a huge-page tmpfs of its
/// own; else a memfd, [`RAM_MEMFD_NAME`], sealed against shrinking and growing; always
/// close-on-exec), each guest range mapped shared
/// from its offset in the file at a [`RAM_ALIGN`]-aligned host address (see `map_ram`).
/// Every region carries its [`FileOffset`], which is what a vhost-user memory table is
/// built from.
///
/// Nothing is allocated until the guest touches it: a fresh memfd has no pages, and each
/// page comes into being at the first access to it (read or write: unlike a private
/// mapping, a shared one has no zero page to map for reads).
///
/// The mappings are never unmapped: a runvm monitor holds one VM for its whole life, and
/// device threads may still hold clones of the memory while the VM winds down, so the
/// mapping lives until the process exits.
pub fn create_guest_memory(size_mib: u64) -> Result<GuestMemoryMmap<()>, MemoryError> {
    guest_memory_in(GuestRamFile::create(size_mib)?)
}

/// The file that holds a guest's RAM, made before the VM (see [`create_guest_memory`]).
/// A process that gives up its capabilities before it builds its VM (runvm's jailed
/// monitor) makes it first: the huge-page tmpfs needs `CAP_SYS_ADMIN`.
#[derive(Debug)]
pub struct GuestRamFile {
    file: File,
    size_mib: u64,
    /// It holds a snapshot's memory ([`GuestRamFile::restore_from`]).
    restored: bool,
}

impl GuestRamFile {
    /// `size_mib` MiB on a huge-page tmpfs of its own, else in a sealed memfd.
    pub fn create(size_mib: u64) -> Result<Self, MemoryError> {
        if !(16..=64 * 1024).contains(&size_mib) {
            return Err(MemoryError::BadSize(size_mib));
        }
        let file = match huge_tmpfs_file(size_mib) {
            Ok(file) => file,
            Err(e) => {
                log::debug!(
                    "no huge-page tmpfs for guest RAM ({e}); using a memfd (4 KiB pages \
                     unless shmem_enabled allows huge ones)"
                );
                create_memfd(size_mib)?
            }
        };
        Ok(Self {
            file,
            size_mib,
            restored: false,
        })
    }

    /// Its size in MiB.
    pub fn size_mib(&self) -> u64 {
        self.size_mib
    }

    /// Fills the (fresh) file with `snapshot`'s memory, checking it on the way, for a VM
    /// that restores `snapshot`. On error the file holds part of it: make another.
    pub fn restore_from(&mut self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        if snapshot.shape().mem_mib != self.size_mib {
            return Err(snapshot.corrupt(format!(
                "it holds {} MiB of memory, the RAM file {} MiB",
                snapshot.shape().mem_mib,
                self.size_mib
            )));
        }
        snapshot.copy_memory_to_file(&self.file)?;
        self.restored = true;
        Ok(())
    }

    /// Whether it holds a snapshot's memory.
    pub fn is_restored(&self) -> bool {
        self.restored
    }
}

/// Maps the guest's RAM from `ram` (see [`create_guest_memory`]).
pub fn guest_memory_in(ram: GuestRamFile) -> Result<GuestMemoryMmap<()>, MemoryError> {
    let size_mib = ram.size_mib;
    let memfd = Arc::new(ram.file);
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (base, len) in ram_ranges(size_mib << 20) {
        let ptr =
            map_ram(&memfd, offset, len).map_err(|source| MemoryError::Map { size_mib, source })?;
        // SAFETY: `ptr..ptr+len` is a shared read-write mapping of the memfd at `offset`
        // that we just made, that nothing else refers to, and that is never unmapped (see
        // above).
        let builder = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(ptr) };
        let mapping = builder
            .with_file_offset(FileOffset::from_arc(memfd.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED)
            .build()
            .map_err(|source| MemoryError::Region {
                base: base.0,
                source,
            })?;
        regions
            .push(GuestRegionMmap::new(mapping, base).ok_or(MemoryError::RegionOverflow(base.0))?);
        offset += len as u64;
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)
}

/// `fsconfig` commands and flags (linux/mount.h), which libc does not name.
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

/// The guest RAM file on a tmpfs of its own with `huge=within_size`: `size_mib` MiB,
/// unlinked from the start (`O_TMPFILE`), on a mount that is never attached anywhere
/// (the new mount API: `fsopen`, `fsconfig`, `fsmount` give a detached mount that only
/// this descriptor reaches, and that goes with it). Such a tmpfs gets transparent huge
/// pages whatever `/sys/kernel/mm/transparent_hugepage/shmem_enabled` says (Debian's
/// `never` applies only to memfds and other internal shmem), so the guest's memory is
/// faulted in 2 MiB at a time, as anonymous memory with `MADV_HUGEPAGE` was: under nested
/// emulation a 4 KiB memfd made boot 1.7 times slower. Needs `CAP_SYS_ADMIN` (runvm runs
/// as root); without it, or on a kernel without the new mount API, the caller falls back
/// to a memfd. Unlike a memfd the file cannot be sealed against resizing (tmpfs files do
/// not take seals): a vhost-user backend sent the descriptor could truncate it, which
/// would fault this VMM (a denial of service of this container only).
fn huge_tmpfs_file(size_mib: u64) -> std::io::Result<File> {
    use std::os::fd::OwnedFd;
    let last = std::io::Error::last_os_error;
    // SAFETY: fsopen with a NUL-terminated name; a new descriptor is returned.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), FSOPEN_CLOEXEC) };
    if fs < 0 {
        return Err(last());
    }
    // SAFETY: `fs` is a new descriptor that we own from here on.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as i32) };
    let size = format!("{}M\0", size_mib);
    for (key, value) in [
        (c"huge", c"within_size".to_bytes_with_nul()),
        (c"size", size.as_bytes()),
        (c"mode", c"0700".to_bytes_with_nul()),
    ] {
        // SAFETY: fsconfig on our fs context with NUL-terminated key and value.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        };
        if r < 0 {
            return Err(last());
        }
    }
    // SAFETY: fsconfig's create command on our fs context; no pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r < 0 {
        return Err(last());
    }
    // SAFETY: fsmount of our created fs context; a new mount descriptor is returned.
    let mnt = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
    if mnt < 0 {
        return Err(last());
    }
    // SAFETY: `mnt` is a new descriptor that we own from here on.
    let mnt = unsafe { OwnedFd::from_raw_fd(mnt as i32) };
    // SAFETY: openat relative to our mount with a NUL-terminated path; a new descriptor.
    let fd = unsafe {
        libc::openat(
            mnt.as_raw_fd(),
            c".".as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: `fd` is a new descriptor that we own; `File` closes it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size_mib << 20)?;
    Ok(file)
}

/// The guest RAM file: `size_mib` MiB, close-on-exec (no child process inherits guest
/// memory), sealed so that its size never changes again: a backend that is sent the fd
/// cannot shrink it under our mappings (accesses past the end of a file raise SIGBUS).
fn create_memfd(size_mib: u64) -> Result<File, MemoryError> {
    let name = c"runvm-guest-ram";
    debug_assert_eq!(name.to_bytes(), RAM_MEMFD_NAME.as_bytes());
    // SAFETY: `name` is a NUL-terminated string; the call creates a new descriptor.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a descriptor we just created and own; `File` closes it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size_mib << 20)
        .map_err(|source| MemoryError::Truncate { size_mib, source })?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a descriptor we own; it only restricts later size changes.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(MemoryError::Seal(std::io::Error::last_os_error()));
    }
    Ok(file)
}

/// Maps `len` bytes of `memfd` from `offset`, shared, at a [`RAM_ALIGN`]-aligned address,
/// advises huge pages on them and keeps them out of forked children.
///
/// Why aligned and huge pages: KVM maps guest memory with 2 MiB stage-2 (EPT/NPT) entries
/// only where the host address and the guest address are congruent modulo 2 MiB
/// (otherwise it disables large pages for the whole memory slot), and the kernel backs
/// shared memory (shmem, which a memfd is) with transparent huge pages only where asked to
/// and allowed by `/sys/kernel/mm/transparent_hugepage/shmem_enabled` (`advise`, `always`
/// or `within_size`; Debian's default is `never`, and then the pages are 4 KiB). A guest
/// kernel then faults its memory in 2 MiB at a time instead of 4 KiB, which shortens its
/// early boot. Where huge pages are off, `madvise` fails or has no effect and the mapping
/// still works with small pages.
///
/// Why not in children (`MADV_DONTFORK`): a shared mapping is not copied on fork, so a
/// child the monitor forks would otherwise hold, and could write, the guest's memory.
fn map_ram(memfd: &File, offset: u64, len: usize) -> std::io::Result<*mut u8> {
    let total = len
        .checked_add(RAM_ALIGN)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
    let file_offset = libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // Reserve address space for the aligned mapping: inaccessible, never backed, no RSS.
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choice; no existing
    // memory is affected.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_NONE,
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
    // The slack before and after stays reserved but inaccessible. Unmapping it instead
    // would leave a 2 MiB-aligned hole right below the RAM, where the next thread stack
    // lands and, with THP `always`, costs a whole huge page.
    // SAFETY: `start..start+len` lies inside the reservation made above, which nothing
    // refers to; MAP_FIXED replaces that part of it with the memfd.
    let mapped = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
            memfd.as_raw_fd(),
            file_offset,
        )
    };
    if mapped == libc::MAP_FAILED {
        let err = std::io::Error::last_os_error();
        // SAFETY: the reservation made above, which nothing refers to.
        unsafe { libc::munmap(raw as *mut libc::c_void, total) };
        return Err(err);
    }
    // SAFETY: `start..start+len` is the mapping made above; MADV_HUGEPAGE changes only how
    // the kernel backs it, never its contents or validity.
    if unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) } != 0 {
        log::debug!(
            "madvise(MADV_HUGEPAGE) on {len} bytes of guest RAM: {} (transparent huge pages off?)",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: as above; MADV_DONTFORK only keeps the range out of future children.
    if unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTFORK) } != 0 {
        return Err(std::io::Error::last_os_error());
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

    /// The memfd behind every region of `m`.
    fn memfd(m: &GuestMemoryMmap<()>) -> &File {
        use vm_memory::GuestMemoryRegion;
        m.iter()
            .next()
            .and_then(|r| r.file_offset())
            .expect("guest memory has a file")
            .file()
    }

    /// Allocated bytes of `file` (st_blocks is in 512-byte units).
    fn allocated(file: &File) -> u64 {
        use std::os::unix::fs::MetadataExt;
        file.metadata().unwrap().blocks() * 512
    }

    #[test]
    fn regions_are_one_shared_memfd_at_consecutive_offsets() {
        use vm_memory::GuestMemoryRegion;
        let m = create_guest_memory(4096 + 2).unwrap();
        let regions: Vec<_> = m.iter().collect();
        assert_eq!(regions.len(), 2);
        let (low, high) = (
            regions[0].file_offset().unwrap(),
            regions[1].file_offset().unwrap(),
        );
        assert!(
            Arc::ptr_eq(low.arc(), high.arc()),
            "one file for all of RAM"
        );
        assert_eq!(low.start(), 0);
        assert_eq!(high.start(), MMIO_GAP_START);
        assert_eq!(low.file().metadata().unwrap().len(), (4096 + 2) << 20);
        for r in &regions {
            assert_eq!(r.flags() & libc::MAP_SHARED, libc::MAP_SHARED);
        }
    }

    #[test]
    fn another_mapping_of_the_file_sees_the_guest_memory() {
        use std::os::unix::fs::FileExt;
        use vm_memory::Bytes;
        let m = create_guest_memory(4096 + 2).unwrap();
        let high = GuestAddress(MMIO_GAP_END + 0x1234);
        m.write_slice(b"from the guest", high).unwrap();
        // What a vhost-user backend does: read at the region's offset in the file…
        let mut got = [0u8; 14];
        memfd(&m)
            .read_exact_at(&mut got, MMIO_GAP_START + 0x1234)
            .unwrap();
        assert_eq!(&got, b"from the guest");
        // …and write there (a FUSE reply), which the guest then reads.
        memfd(&m)
            .write_all_at(b"from the backend", 0x10_0000)
            .unwrap();
        let mut got = [0u8; 16];
        m.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(&got, b"from the backend");
    }

    #[test]
    fn untouched_memory_costs_nothing() {
        use vm_memory::Bytes;
        let m = create_guest_memory(1024).unwrap();
        assert_eq!(allocated(memfd(&m)), 0);
        m.write_obj(1u8, GuestAddress(512 << 20)).unwrap();
        let after = allocated(memfd(&m));
        // One page, or one huge page where the host backs shared memory with them.
        assert!(
            (1..=RAM_ALIGN as u64).contains(&after),
            "{after} bytes allocated"
        );
    }

    #[test]
    fn as_root_guest_memory_gets_huge_pages_from_a_tmpfs_of_its_own() {
        use vm_memory::Bytes;
        // CI runs as root, which the detached tmpfs needs; it is not a fallback here.
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
        let m = create_guest_memory(64).unwrap();
        let file = memfd(&m);
        // Not a memfd: a tmpfs file, which takes no seals (it reports only F_SEAL_SEAL).
        // SAFETY: an fcntl query on a descriptor the memory owns.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals, libc::F_SEAL_SEAL);
        // SAFETY: as above.
        let fd_flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(fd_flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        // One byte touched: a whole huge page, whatever shmem_enabled says.
        m.write_obj(1u8, GuestAddress(8 << 20)).unwrap();
        assert_eq!(allocated(file), RAM_ALIGN as u64);
        // Unlinked, on a mount attached nowhere: nothing to clean up on the host.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(file.metadata().unwrap().nlink(), 0);
    }

    #[test]
    fn the_memfd_fallback_cannot_be_resized_and_is_not_inherited_by_programs() {
        let file = create_memfd(16).unwrap();
        // SAFETY: fcntl queries on a descriptor the memory owns.
        let (fd_flags, seals) = unsafe {
            (
                libc::fcntl(file.as_raw_fd(), libc::F_GETFD),
                libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS),
            )
        };
        assert_eq!(fd_flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let want = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        assert_eq!(seals & want, want);
        assert!(file.set_len(1 << 20).is_err(), "shrinking is sealed");
        assert!(file.set_len(32 << 20).is_err(), "growing is sealed");
        assert_eq!(file.metadata().unwrap().len(), 16 << 20);
    }

    #[test]
    fn forked_children_do_not_get_guest_memory() {
        let m = create_guest_memory(16).unwrap();
        let ptr = m.iter().next().unwrap().as_ptr();
        // SAFETY: the child only reads one byte and exits; the parent waits for it.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: in the parent this is guest memory; in the child (MADV_DONTFORK)
            // nothing is mapped there and the read faults, which is what is tested.
            unsafe {
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                std::ptr::read_volatile(ptr);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV,
            "status {status:#x}"
        );
    }
}

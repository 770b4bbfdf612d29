//! Loads `vmlinux` (ELF with a PVH entry note) and the initramfs into guest memory and
//! writes the kernel command line and the PVH `hvm_start_info` with its memory map.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    ReadVolatile,
};

use crate::layout::*;

const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;

/// Errors loading the guest kernel.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("cannot open {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load kernel {path}: {source}")]
    Kernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error(
        "kernel {0} has no PVH entry point: build it with CONFIG_PVH=y (cargo xtask kernel does)"
    )]
    NoPvhEntry(PathBuf),
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory below {limit:#x}; give the VM more memory")]
    InitramfsTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cannot read initramfs {path}: {source}")]
    Initramfs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot copy initramfs {path} into guest memory: {source}")]
    InitramfsCopy {
        path: PathBuf,
        source: vm_memory::VolatileMemoryError,
    },
    #[error("kernel command line is invalid or too long: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line into guest memory: {0}")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    #[error("cannot write boot structures into guest memory: {0}")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

/// Where the kernel was loaded and where it starts.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// 32-bit PVH entry point.
    pub entry: GuestAddress,
    /// End of the kernel image in guest memory.
    pub kernel_end: u64,
}

/// Loads the ELF kernel at the addresses its program headers give.
pub fn load_kernel(mem: &GuestMemoryMmap<()>, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let mut f = File::open(path).map_err(|source| LoaderError::Open {
        what: "kernel",
        path: path.into(),
        source,
    })?;
    let res = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(|source| {
        LoaderError::Kernel {
            path: path.into(),
            source,
        }
    })?;
    match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel {
            entry,
            kernel_end: res.kernel_end,
        }),
        _ => Err(LoaderError::NoPvhEntry(path.into())),
    }
}

/// Loads the initramfs at the top of low memory, page aligned. Returns (address, size).
pub fn load_initramfs(
    mem: &GuestMemoryMmap<()>,
    path: &Path,
    kernel_end: u64,
) -> Result<(GuestAddress, u64), LoaderError> {
    let err = |source| LoaderError::Initramfs {
        path: path.into(),
        source,
    };
    let mut f = File::open(path).map_err(|source| LoaderError::Open {
        what: "initramfs",
        path: path.into(),
        source,
    })?;
    let size = f.seek(SeekFrom::End(0)).map_err(err)?;
    f.seek(SeekFrom::Start(0)).map_err(err)?;
    let low_end = mem
        .find_region(GuestAddress(0))
        .map(|r| r.len())
        .unwrap_or(0)
        .min(MMIO_GAP_START);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end);
    let Some(addr) = addr else {
        return Err(LoaderError::InitramfsTooLarge {
            path: path.into(),
            size,
            limit: low_end,
        });
    };
    let mut left = size as usize;
    let mut at = GuestAddress(addr);
    while left > 0 {
        let slice = mem
            .get_slice(at, left.min(1 << 20))
            .map_err(LoaderError::Memory)?;
        let n =
            f.read_volatile(&mut slice.clone())
                .map_err(|source| LoaderError::InitramfsCopy {
                    path: path.into(),
                    source,
                })?;
        if n == 0 {
            return Err(err(std::io::ErrorKind::UnexpectedEof.into()));
        }
        left -= n;
        at = at.unchecked_add(n as u64);
    }
    Ok((GuestAddress(addr), size))
}

/// Writes the command line and the PVH start info (memory map, initramfs module).
pub fn write_boot_info(
    mem: &GuestMemoryMmap<()>,
    cmdline: &str,
    initramfs: Option<(GuestAddress, u64)>,
) -> Result<(), LoaderError> {
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(LoaderError::Cmdline)?;
    cl.insert_str(cmdline).map_err(LoaderError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(LoaderError::CmdlineWrite)?;

    let mut memmap = vec![hvm_memmap_table_entry {
        addr: 0,
        size: EBDA_START,
        type_: E820_RAM,
        reserved: 0,
    }];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            memmap.push(hvm_memmap_table_entry {
                addr: start,
                size: end - start,
                type_: E820_RAM,
                reserved: 0,
            });
        }
    }
    for (i, e) in memmap.iter().enumerate() {
        mem.write_obj(
            *e,
            GuestAddress(MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64),
        )
        .map_err(LoaderError::Memory)?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = initramfs {
        let module = hvm_modlist_entry {
            paddr: addr.raw_value(),
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(MODLIST_START))
            .map_err(LoaderError::Memory)?;
        info.nr_modules = 1;
        info.modlist_paddr = MODLIST_START;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(LoaderError::Memory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn boot_info_describes_memory_and_initramfs() {
        let mem = create_guest_memory(64).unwrap();
        write_boot_info(
            &mem,
            "console=ttyS0 reboot=k",
            Some((GuestAddress(0x300_0000), 4096)),
        )
        .unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.nr_modules, 1);
        let ram: hvm_memmap_table_entry = mem.read_obj(GuestAddress(MEMMAP_START + 24)).unwrap();
        assert_eq!(
            (ram.addr, ram.size),
            (HIMEM_START, (64 << 20) - HIMEM_START)
        );
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(MODLIST_START)).unwrap();
        assert_eq!((m.paddr, m.size), (0x300_0000, 4096));
        let mut cl = [0u8; 22];
        mem.read_slice(&mut cl, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&cl, b"console=ttyS0 reboot=k");
        // The start info, module list and memory map must not overlap.
        assert!(PVH_INFO_START + std::mem::size_of::<hvm_start_info>() as u64 <= MODLIST_START);
        assert!(MODLIST_START + std::mem::size_of::<hvm_modlist_entry>() as u64 <= MEMMAP_START);
    }

    #[test]
    fn initramfs_that_does_not_fit_is_an_error() {
        let mem = create_guest_memory(16).unwrap();
        let dir = std::env::temp_dir().join(format!("runvm-loader-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("big");
        std::fs::write(&p, vec![0u8; 17 << 20]).unwrap();
        assert!(matches!(
            load_initramfs(&mem, &p, 0x100_0000),
            Err(LoaderError::InitramfsTooLarge { .. })
        ));
        std::fs::write(&p, b"0707010000").unwrap();
        let (addr, size) = load_initramfs(&mem, &p, 0x80_0000).unwrap();
        assert_eq!(size, 10);
        assert_eq!(addr.raw_value() & 0xfff, 0);
        let mut b = [0u8; 10];
        mem.read_slice(&mut b, addr).unwrap();
        assert_eq!(&b, b"0707010000");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

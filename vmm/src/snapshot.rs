//! Snapshots of a template VM, and the state a restore starts from.
//!
//! A snapshot is a directory with two files: `state.json` ([`SnapshotState`]: the VM's and
//! each vCPU's KVM state, the virtio transports' and the serial port's registers, the
//! shape of the VM it was taken of, where the guest memory's data is, and the memory
//! file's identity) and `memory`, the guest RAM file as the guest left it, sparse: only the pages that are
//! not all zero are written, at their offsets in the RAM file, so the file's length is the
//! RAM's size and its holes read as zero.
//!
//! A restored guest gets a copy of that memory in a RAM file of its own: guest RAM is a
//! shared file mapping, which vhost-user backends (virtiofsd) map too, so it cannot be a
//! private copy-on-write mapping of the snapshot (the backend would not see the guest's
//! writes). Only the data extents are copied, in the kernel. A snapshot whose memory file
//! was written, truncated or replaced since it was taken (its size, inode or change time
//! are not what the state recorded) is refused ([`SnapshotError::Corrupt`]) before any
//! vCPU runs, and the caller boots cold instead; bytes that rot on the disk without the
//! file being written are the file system's to detect.
//!
//! Only a VM of the template shape can be snapshotted (a vsock device without
//! connections, the spare slots empty, no disk, NIC or boot-time share): nothing of it
//! belongs to a container, so every clone may receive it.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::devices::legacy::SavedSerial;
use crate::devices::virtio::mmio::TransportState;
use crate::vstate::vcpu::VcpuState;
use crate::vstate::vm::VmKvmState;

/// Version of the snapshot format; a snapshot of another version is refused.
pub const SNAPSHOT_FORMAT: u32 = 1;
/// The state file of a snapshot directory.
pub const STATE_FILE: &str = "state.json";
/// The memory file of a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Largest state file read (a VM of 255 vCPUs stays well below it).
const MAX_STATE_LEN: u64 = 64 << 20;
/// Size of the pieces memory is copied in.
const COPY_CHUNK: usize = 1 << 20;
/// The page size zero pages are skipped by.
const PAGE: usize = 4096;

/// Errors taking, reading or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the snapshot state {path} is not valid: {source}")]
    State {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the snapshot in {dir} has format {found}, this runvm reads format {SNAPSHOT_FORMAT}; it must be made again")]
    Format { dir: PathBuf, found: u32 },
    #[error("the snapshot in {dir} is corrupt ({what}); it must be made again")]
    Corrupt { dir: PathBuf, what: String },
    #[error("the snapshot in {dir} is of another VM ({what})")]
    Shape { dir: PathBuf, what: String },
    #[error("this VM cannot be snapshotted: {0}")]
    NotTemplate(String),
    #[error("the guest did not become ready for its snapshot within {0:?} ({1})")]
    NotReady(std::time::Duration, String),
}

/// What a VM is made of, which a restore must rebuild identically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmShape {
    pub vcpus: u8,
    pub mem_mib: u64,
    pub serial: bool,
    pub vsock_cid: u64,
    pub fs_slots: usize,
}

/// The RAM's data in the memory file: its length, the byte ranges (offsets in the RAM
/// file) that were written, and the file's identity once written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryImage {
    pub len: u64,
    pub extents: Vec<(u64, u64)>,
    pub file: FileIdentity,
}

/// What changes when a file is written, truncated or replaced: its inode and its change
/// time (`st_ctime`, which no one can set back).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub ctime_sec: i64,
    pub ctime_nsec: i64,
}

impl FileIdentity {
    fn of(file: &File) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            ctime_sec: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        })
    }
}

impl MemoryImage {
    /// Bytes of data (what a restore copies).
    pub fn data_len(&self) -> u64 {
        self.extents.iter().map(|e| e.1).sum()
    }
}

/// Everything but the memory's bytes.
#[derive(Serialize, Deserialize)]
pub struct SnapshotState {
    pub format: u32,
    pub shape: VmShape,
    pub vm: VmKvmState,
    pub vcpus: Vec<VcpuState>,
    pub vsock: TransportState,
    pub serial: Option<SavedSerial>,
    pub memory: MemoryImage,
}

/// A snapshot read from its directory, ready for a restore
/// ([`crate::VmConfig::restore`]).
pub struct Snapshot {
    pub(crate) dir: PathBuf,
    pub(crate) state: SnapshotState,
    pub(crate) memory: File,
}

impl Snapshot {
    /// Reads the snapshot in `dir`: its state, and its memory file opened (its length
    /// checked against the state; its bytes are checked while a restore copies them).
    pub fn load(dir: &Path) -> Result<Self, SnapshotError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Io { what, path, source }
        };
        let state_path = dir.join(STATE_FILE);
        let file = File::open(&state_path).map_err(io("open", &state_path))?;
        let len = file.metadata().map_err(io("read", &state_path))?.len();
        if len > MAX_STATE_LEN {
            return Err(SnapshotError::Corrupt {
                dir: dir.into(),
                what: format!("its state is {len} bytes"),
            });
        }
        let state: SnapshotState =
            serde_json::from_reader(std::io::BufReader::new(file)).map_err(|source| {
                SnapshotError::State {
                    path: state_path.clone(),
                    source,
                }
            })?;
        if state.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format {
                dir: dir.into(),
                found: state.format,
            });
        }
        let memory_path = dir.join(MEMORY_FILE);
        let memory = File::open(&memory_path).map_err(io("open", &memory_path))?;
        let found = memory.metadata().map_err(io("read", &memory_path))?.len();
        let image = &state.memory;
        let corrupt = |what: String| SnapshotError::Corrupt {
            dir: dir.into(),
            what,
        };
        if found != image.len || image.len != state.shape.mem_mib << 20 {
            return Err(corrupt(format!(
                "its memory file holds {found} bytes, the state says {} for {} MiB of RAM",
                image.len, state.shape.mem_mib
            )));
        }
        if FileIdentity::of(&memory).map_err(io("read", &memory_path))? != image.file {
            return Err(corrupt(
                "its memory file was changed or replaced since the snapshot was taken".into(),
            ));
        }
        if image
            .extents
            .iter()
            .any(|&(o, l)| o.checked_add(l).is_none_or(|end| end > image.len))
        {
            return Err(corrupt("a memory extent lies outside the RAM".into()));
        }
        if state.vcpus.len() != usize::from(state.shape.vcpus) {
            return Err(corrupt(format!(
                "{} vCPU states for {} vCPUs",
                state.vcpus.len(),
                state.shape.vcpus
            )));
        }
        Ok(Self {
            dir: dir.into(),
            state,
            memory,
        })
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shape of the VM it was taken of.
    pub fn shape(&self) -> &VmShape {
        &self.state.shape
    }

    /// The memory's layout.
    pub fn memory_image(&self) -> &MemoryImage {
        &self.state.memory
    }

    pub(crate) fn corrupt(&self, what: String) -> SnapshotError {
        SnapshotError::Corrupt {
            dir: self.dir.clone(),
            what,
        }
    }

    /// Copies the snapshot's memory into the guest RAM file `ram` (fresh, all zero, not
    /// mapped yet), extent by extent, in the kernel (`sendfile`: one copy, from the page
    /// cache). On error `ram` holds part of it: drop it.
    pub(crate) fn copy_memory_to_file(&self, ram: &File) -> Result<(), SnapshotError> {
        for &(start, len) in &self.state.memory.extents {
            send_range(&self.memory, ram, start, len).map_err(|e| SnapshotError::Io {
                what: "copy the snapshot's memory from",
                path: self.dir.join(MEMORY_FILE),
                source: std::io::Error::new(e.kind(), format!("at {start:#x}: {e}")),
            })?;
        }
        Ok(())
    }
}

/// Copies bytes `start..start + len` of `from` to the same offsets of `to` (`sendfile`).
fn send_range(from: &File, to: &File, start: u64, len: u64) -> std::io::Result<()> {
    let mut offset = start as libc::off_t;
    let mut left = len as usize;
    // SAFETY: lseek on a descriptor we hold; no memory is involved.
    if unsafe { libc::lseek(to.as_raw_fd(), offset, libc::SEEK_SET) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    while left > 0 {
        // SAFETY: sendfile between two descriptors we hold, with `offset` a valid offset
        // variable it updates; no buffer of ours is involved.
        let r = unsafe { libc::sendfile(to.as_raw_fd(), from.as_raw_fd(), &mut offset, left) };
        match r {
            r if r > 0 => left -= r as usize,
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Writes `ram`'s pages that are not all zero to `out` (at their offsets; `out` gets the
/// RAM's length) and says where they are. Only the RAM file's data extents are read
/// (`SEEK_DATA`): pages the guest never touched cost nothing.
pub(crate) fn save_memory(mem: &GuestMemoryMmap<()>, out: &File) -> Result<MemoryImage, String> {
    let mut extents: Vec<(u64, u64)> = Vec::new();
    let mut len = 0u64;
    let mut ram: Option<&File> = None;
    for region in mem.iter() {
        len += region.len();
        if ram.is_none() {
            ram = region.file_offset().map(|f| f.file());
        }
    }
    let ram = ram.ok_or("guest memory is not backed by a file")?;
    out.set_len(len)
        .map_err(|e| format!("size the memory file: {e}"))?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let Some((start, end)) = next_data(ram, pos, len)? else {
            break;
        };
        let mut offset = start;
        while offset < end {
            let n = COPY_CHUNK.min((end - offset) as usize);
            let piece = &mut buf[..n];
            ram.read_exact_at(piece, offset)
                .map_err(|e| format!("read guest memory at {offset:#x}: {e}"))?;
            for (i, page) in piece.chunks(PAGE).enumerate() {
                if page.iter().all(|&b| b == 0) {
                    continue;
                }
                let at = offset + (i * PAGE) as u64;
                out.write_all_at(page, at)
                    .map_err(|e| format!("write the memory file at {at:#x}: {e}"))?;
                match extents.last_mut() {
                    Some((s, l)) if *s + *l == at => *l += page.len() as u64,
                    _ => extents.push((at, page.len() as u64)),
                }
            }
            offset += n as u64;
        }
        pos = end;
    }
    Ok(MemoryImage {
        len,
        extents,
        // Set once the file is whole (see `write_snapshot`).
        file: FileIdentity::default(),
    })
}

/// The next range of `file` from `pos` (below `len`) that holds data, by `SEEK_DATA` and
/// `SEEK_HOLE`; `None` when there is no more.
fn next_data(file: &File, pos: u64, len: u64) -> Result<Option<(u64, u64)>, String> {
    let seek = |whence, from: u64| {
        // SAFETY: lseek on a descriptor we hold; no memory is involved.
        let r = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(format!("find guest memory's data: {e}"))
            }
        } else {
            Ok(Some(r as u64))
        }
    };
    let Some(start) = seek(libc::SEEK_DATA, pos)? else {
        return Ok(None);
    };
    if start >= len {
        return Ok(None);
    }
    let end = seek(libc::SEEK_HOLE, start)?.unwrap_or(len).min(len);
    Ok(Some((start, end)))
}

/// A path next to `dir` for this process's `what`: `<dir's name>.<what>-<pid>` (not
/// `with_extension`, which would cut a name with dots in it, such as a version).
pub fn beside(dir: &Path, what: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{what}-{}", std::process::id()));
    dir.with_file_name(name)
}

/// Writes `state` and `memory` as the snapshot directory `dir`: made beside it under a
/// temporary name, then renamed into place, so a reader finds a whole snapshot or none.
/// `write_memory` fills the memory file and returns its image for the state.
pub(crate) fn write_snapshot(
    dir: &Path,
    write_memory: impl FnOnce(&File) -> Result<MemoryImage, String>,
    state: impl FnOnce(MemoryImage) -> SnapshotState,
) -> Result<u64, SnapshotError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { what, path, source }
    };
    let tmp = beside(dir, "tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
    let result = (|| {
        let memory_path = tmp.join(MEMORY_FILE);
        let memory = File::create(&memory_path).map_err(io("create", &memory_path))?;
        let mut image = write_memory(&memory).map_err(|what| SnapshotError::Io {
            what: "write",
            path: memory_path.clone(),
            source: std::io::Error::other(what),
        })?;
        memory.sync_all().map_err(io("write", &memory_path))?;
        image.file = FileIdentity::of(&memory).map_err(io("read", &memory_path))?;
        let data = image.data_len();
        let state_path = tmp.join(STATE_FILE);
        let mut f = File::create(&state_path).map_err(io("create", &state_path))?;
        let json = serde_json::to_vec(&state(image)).map_err(|source| SnapshotError::State {
            path: state_path.clone(),
            source,
        })?;
        f.write_all(&json).map_err(io("write", &state_path))?;
        f.sync_all().map_err(io("write", &state_path))?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&tmp, dir).map_err(io("move the snapshot into", dir))?;
        Ok(data)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use vm_memory::{Bytes, GuestAddress};

    fn image_of(mem: &GuestMemoryMmap<()>, dir: &Path) -> MemoryImage {
        let f = File::create(dir.join(MEMORY_FILE)).unwrap();
        save_memory(mem, &f).unwrap()
    }

    #[test]
    fn memory_keeps_only_written_pages_and_copies_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mem = create_guest_memory(32).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x1234)).unwrap();
        mem.write_slice(&[7u8; 5000], GuestAddress(0x10_0000 - 10))
            .unwrap();
        // A page written with zeros only is not kept.
        mem.write_slice(&[0u8; 4096], GuestAddress(0x20_0000))
            .unwrap();
        let image = image_of(&mem, dir.path());
        assert_eq!(image.len, 32 << 20);
        assert_eq!(
            image.extents,
            vec![(0x1000, 0x1000), (0xff000, 0x3000)],
            "the written pages, coalesced"
        );
        let file = File::open(dir.path().join(MEMORY_FILE)).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 32 << 20);

        let snapshot = Snapshot {
            dir: dir.path().into(),
            state: fake_state(image.clone()),
            memory: file,
        };
        let copy = ram_copy(&snapshot);
        let mut out = [0u8; 5];
        copy.read_slice(&mut out, GuestAddress(0x1234)).unwrap();
        assert_eq!(&out, b"hello");
        let mut out = [0u8; 5000];
        copy.read_slice(&mut out, GuestAddress(0x10_0000 - 10))
            .unwrap();
        assert!(out.iter().all(|&b| b == 7));
    }

    #[test]
    fn a_memory_file_written_since_the_snapshot_is_refused_and_a_whole_one_is_copied_to_a_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("template");
        let mem = create_guest_memory(16).unwrap();
        mem.write_slice(b"template", GuestAddress(0x5000)).unwrap();
        mem.write_slice(&[9u8; 8192], GuestAddress(0x80_0000))
            .unwrap();
        write_snapshot(&dir, |out| save_memory(&mem, out), fake_state).unwrap();

        // Whole: copied into a RAM file in the kernel, byte for byte.
        let snapshot = Snapshot::load(&dir).unwrap();
        let ram = tempfile::tempfile().unwrap();
        ram.set_len(16 << 20).unwrap();
        snapshot.copy_memory_to_file(&ram).unwrap();
        let mut out = [0u8; 8];
        ram.read_exact_at(&mut out, 0x5000).unwrap();
        assert_eq!(&out, b"template");
        let mut out = vec![0u8; 8192];
        ram.read_exact_at(&mut out, 0x80_0000).unwrap();
        assert!(out.iter().all(|&b| b == 9));

        // One byte written later (its change time moves on): refused at load.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(MEMORY_FILE))
            .unwrap();
        file.write_all_at(b"T", 0x5000).unwrap();
        let err = Snapshot::load(&dir)
            .err()
            .expect("a changed snapshot loads");
        assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("changed or replaced"), "{err}");
    }

    #[test]
    fn a_whole_snapshot_loads_and_a_truncated_or_foreign_one_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("template");
        let mem = create_guest_memory(16).unwrap();
        mem.write_slice(b"kernel", GuestAddress(0x100_0000 - 6))
            .unwrap();
        let data = write_snapshot(&dir, |out| save_memory(&mem, out), fake_state).unwrap();
        assert_eq!(data, 4096);
        // Nothing but the snapshot is left beside it.
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("template")]);
        let snapshot = Snapshot::load(&dir).unwrap();
        assert_eq!(snapshot.shape().mem_mib, 16);
        ram_copy(&snapshot);

        // Truncated: refused at load, before anything is copied.
        let memory = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(MEMORY_FILE))
            .unwrap();
        memory.set_len(8 << 20).unwrap();
        let err = Snapshot::load(&dir)
            .err()
            .expect("a truncated snapshot loads");
        assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().contains("memory file holds 8388608 bytes"),
            "{err}"
        );

        // Another format: refused.
        let text = std::fs::read_to_string(dir.join(STATE_FILE)).unwrap();
        std::fs::write(
            dir.join(STATE_FILE),
            text.replacen(
                &format!("\"format\":{SNAPSHOT_FORMAT}"),
                "\"format\":999",
                1,
            ),
        )
        .unwrap();
        let err = Snapshot::load(&dir)
            .err()
            .expect("a foreign snapshot loads");
        assert!(
            matches!(err, SnapshotError::Format { found: 999, .. }),
            "{err}"
        );

        // Garbage state: refused, with the file named.
        std::fs::write(dir.join(STATE_FILE), b"{not json").unwrap();
        let err = Snapshot::load(&dir).err().expect("garbage loads");
        assert!(err.to_string().contains(STATE_FILE), "{err}");
    }

    /// A fresh guest RAM file filled from `snapshot`, mapped.
    fn ram_copy(snapshot: &Snapshot) -> GuestMemoryMmap<()> {
        let mut ram = crate::memory::GuestRamFile::create(snapshot.shape().mem_mib).unwrap();
        ram.restore_from(snapshot).unwrap();
        assert!(ram.is_restored());
        crate::memory::guest_memory_in(ram).unwrap()
    }

    #[test]
    fn a_path_beside_a_directory_keeps_its_whole_name() {
        let p = beside(Path::new("/t/0.1.0-1cpu-256m-abc"), "tmp");
        assert_eq!(
            p,
            Path::new("/t").join(format!("0.1.0-1cpu-256m-abc.tmp-{}", std::process::id()))
        );
    }

    fn fake_state(memory: MemoryImage) -> SnapshotState {
        SnapshotState {
            format: SNAPSHOT_FORMAT,
            shape: VmShape {
                vcpus: 0,
                mem_mib: memory.len >> 20,
                serial: false,
                vsock_cid: 3,
                fs_slots: 0,
            },
            vm: VmKvmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            vcpus: Vec::new(),
            vsock: TransportState {
                device_type: 19,
                status: 0,
                device_features_sel: 0,
                driver_features_sel: 0,
                driver_features: 0,
                queue_sel: 0,
                queues: Vec::new(),
                device_queues: Vec::new(),
                interrupt_status: 0,
            },
            serial: None,
            memory,
        }
    }
}

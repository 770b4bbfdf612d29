//! The disk backend of virtio-blk.
//!
//! Owns the backing file and executes already validated [`Request`]s against it: positional
//! reads and writes (`pread`/`pwrite`) straight between the file and guest memory, flushes
//! with `fdatasync`, and the device serial for `GET_ID`. It reports a virtio-blk status and
//! the number of bytes it wrote into guest memory (for the used length).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use log::{error, warn};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::request::{Request, RequestType, Segment};
use super::{BlockError, BLOCK_ID_BYTES, SECTOR_SHIFT, SECTOR_SIZE};
use crate::devices::virtio::fd::retry_on_eintr;
use crate::devices::virtio::GuestMemory;

/// Why a request failed on the host side (the guest sees `VIRTIO_BLK_S_IOERR`).
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("disk I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("guest memory access failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// The outcome of a request: the status byte, and how many data bytes went to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub status: u8,
    pub written: u32,
}

/// A disk image.
pub struct Disk {
    file: File,
    read_only: bool,
    /// Size in sectors; a partial sector at the end of the file is not accessible.
    capacity: u64,
    id: [u8; BLOCK_ID_BYTES],
}

impl Disk {
    /// Opens `path` read-only or read-write. `id` is the serial returned by `GET_ID`,
    /// truncated to 20 bytes.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_owned(),
                source,
            })?;
        // Seeking works for regular files and block devices alike (metadata does not).
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.to_owned(),
                source,
            })?;
        if size % SECTOR_SIZE != 0 {
            warn!(
                "virtio-blk: {} is not a multiple of {SECTOR_SIZE} bytes; the tail is not visible",
                path.display()
            );
        }
        let mut serial = [0u8; BLOCK_ID_BYTES];
        let n = id.len().min(BLOCK_ID_BYTES);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            read_only,
            capacity: size >> SECTOR_SHIFT,
            id: serial,
        })
    }

    /// Size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Executes a validated request. Never fails: errors become `VIRTIO_BLK_S_IOERR`.
    pub fn execute(&self, mem: &GuestMemory, req: &Request) -> Completion {
        let mut written = 0u32;
        let result = match req.request_type {
            RequestType::In => self.read(mem, req, &mut written),
            RequestType::Out => self.write(mem, req),
            RequestType::Flush => self.flush(),
            RequestType::GetId => self.get_id(mem, &req.data, &mut written),
            RequestType::Unsupported(_) => {
                return Completion {
                    status: VIRTIO_BLK_S_UNSUPP as u8,
                    written: 0,
                }
            }
        };
        let status = match result {
            Ok(()) => VIRTIO_BLK_S_OK,
            Err(DiskError::ReadOnly) => VIRTIO_BLK_S_IOERR,
            Err(e) => {
                error!(
                    "virtio-blk: {:?} at sector {} failed: {e}",
                    req.request_type, req.sector
                );
                VIRTIO_BLK_S_IOERR
            }
        };
        Completion {
            status: status as u8,
            written,
        }
    }

    fn read(&self, mem: &GuestMemory, req: &Request, written: &mut u32) -> Result<(), DiskError> {
        let mut offset = req.sector << SECTOR_SHIFT;
        for seg in &req.data {
            for slice in GuestMemoryBackend::get_slices(mem, seg.addr, seg.len as usize) {
                let slice = slice?;
                let (n, result) = pread_exact(&self.file, offset, &slice);
                // n <= seg.len, a u32.
                *written = written.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
                result?;
                offset += slice.len() as u64;
            }
        }
        Ok(())
    }

    fn write(&self, mem: &GuestMemory, req: &Request) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let mut offset = req.sector << SECTOR_SHIFT;
        for seg in &req.data {
            for slice in GuestMemoryBackend::get_slices(mem, seg.addr, seg.len as usize) {
                let slice = slice?;
                pwrite_all(&self.file, offset, &slice)?;
                offset += slice.len() as u64;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), DiskError> {
        if !self.read_only {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn get_id(
        &self,
        mem: &GuestMemory,
        data: &[Segment],
        written: &mut u32,
    ) -> Result<(), DiskError> {
        let mut id: &[u8] = &self.id;
        for seg in data {
            if id.is_empty() {
                break;
            }
            let (chunk, rest) = id.split_at(id.len().min(seg.len as usize));
            mem.write_slice(chunk, seg.addr)?;
            *written += chunk.len() as u32;
            id = rest;
        }
        Ok(())
    }
}

fn file_offset(offset: u64) -> std::io::Result<libc::off_t> {
    libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// Fills `slice` from `file` at `offset`. Returns how many bytes were read, and whether the
/// whole slice was filled.
fn pread_exact<B: BitmapSlice>(
    file: &File,
    mut offset: u64,
    slice: &VolatileSlice<B>,
) -> (usize, std::io::Result<()>) {
    let mut done = 0;
    while done < slice.len() {
        let rest = match slice.offset(done) {
            Ok(rest) => rest,
            Err(e) => return (done, Err(std::io::Error::other(e))),
        };
        let off = match file_offset(offset) {
            Ok(off) => off,
            Err(e) => return (done, Err(e)),
        };
        let guard = rest.ptr_guard_mut();
        let read = retry_on_eintr(|| {
            // SAFETY: the fd is valid for the lifetime of `file`; `guard` points to
            // `rest.len()` bytes of mapped guest memory, valid for writes while it lives.
            unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    guard.as_ptr().cast::<libc::c_void>(),
                    rest.len(),
                    off,
                )
            }
        });
        match read {
            Err(e) => return (done, Err(e)),
            Ok(0) => return (done, Err(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => {
                rest.bitmap().mark_dirty(0, n);
                done += n;
                offset += n as u64;
            }
        }
    }
    (done, Ok(()))
}

/// Writes all of `slice` to `file` at `offset`.
fn pwrite_all<B: BitmapSlice>(
    file: &File,
    mut offset: u64,
    slice: &VolatileSlice<B>,
) -> std::io::Result<()> {
    let mut done = 0;
    while done < slice.len() {
        let rest = slice.offset(done).map_err(std::io::Error::other)?;
        let off = file_offset(offset)?;
        let guard = rest.ptr_guard();
        let written = retry_on_eintr(|| {
            // SAFETY: the fd is valid for the lifetime of `file`; `guard` points to
            // `rest.len()` bytes of mapped guest memory, valid for reads while it lives.
            unsafe {
                libc::pwrite(
                    file.as_raw_fd(),
                    guard.as_ptr().cast::<libc::c_void>(),
                    rest.len(),
                    off,
                )
            }
        })?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        done += written;
        offset += written as u64;
    }
    Ok(())
}

/// Writes a request's status byte; false (and logged) if guest memory refused it.
pub fn write_status(mem: &GuestMemory, addr: GuestAddress, status: u8) -> bool {
    match mem.write_obj(status, addr) {
        Ok(()) => true,
        Err(e) => {
            error!("virtio-blk: cannot write status byte at {addr:?}: {e}");
            false
        }
    }
}

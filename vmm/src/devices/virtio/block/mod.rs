//! virtio-blk: a block device backed by a host file (or block device).
//!
//! - [`request`] parses a request's descriptor chain (guest-controlled bytes) into a
//!   validated [`request::Request`], without touching the disk;
//! - [`io`] owns the backing file and executes validated requests against it, transferring
//!   data straight between the file and guest memory;
//! - [`device`] is the virtio glue: features, config space, activation, draining the queue
//!   and signalling the guest.

pub mod device;
pub mod io;
pub mod request;

pub use device::Block;

/// Size of a virtio-blk sector, whatever the backing file's block size.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Maximum size of the (single) request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the serial returned by `VIRTIO_BLK_T_GET_ID`.
pub const BLOCK_ID_BYTES: usize = 20;

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot determine the size of disk image {path}: {source}")]
    Size {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the queue eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

//! The virtio-blk device: what the transport and the event loop see.
//!
//! Owns the virtio side of the block device: offered and acked features, the config space
//! (capacity, `seg_max`), the request queue and its eventfd, activation and reset, and the
//! loop that drains the queue: parse each chain ([`super::request`]), execute it on the disk
//! ([`super::io`]), write the status byte, return the chain on the used ring and interrupt
//! the guest when the queue asks for it.

use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error, warn};
use virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::io::{write_status, Disk};
use super::request::{ParseError, Request};
use super::{BlockError, QUEUE_SIZE};
use crate::devices::virtio::{
    ActivateError, GuestMemory, IrqTrigger, VirtioDevice, INTERRUPT_STATUS_USED_RING, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};

/// Config space: `le64 capacity; le32 size_max; le32 seg_max` (virtio 1.x, 5.2.4).
const CONFIG_LEN: usize = 16;
/// Data segments per request: the queue minus the header and status descriptors.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// What exists only between activation and reset.
struct Active {
    mem: GuestMemory,
    queue: Queue,
    irq: Arc<IrqTrigger>,
}

/// A virtio-blk device with one request queue.
pub struct Block {
    disk: Disk,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    queue_sizes: [u16; 1],
    queue_events: [EventFd; 1],
    active: Option<Active>,
}

impl Block {
    /// A block device backed by the file (or block device) at `path`, read-only or
    /// read-write. `id` is the serial the guest reads with `GET_ID` (truncated to 20 bytes).
    pub fn new(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let disk = Disk::open(path, read_only, id)?;
        let mut avail_features =
            VIRTIO_F_VERSION_1 | (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX);
        if read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut config = [0u8; CONFIG_LEN];
        config[..8].copy_from_slice(&disk.capacity().to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        let queue_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)?;
        Ok(Self {
            disk,
            avail_features,
            acked_features: 0,
            config,
            queue_sizes: [QUEUE_SIZE],
            queue_events: [queue_evt],
            active: None,
        })
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    /// The features the driver acked.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Drains the request queue. Does nothing before activation. A broken queue is logged
    /// and left alone: the device and the VMM keep running.
    pub fn process_queue(&mut self) {
        let Some(Active { mem, queue, irq }) = self.active.as_mut() else {
            return;
        };
        let max_descriptors = queue.size();
        // One snapshot of the available ring: at most `queue size` chains (virtio-queue
        // refuses an avail index further ahead than that), so this cannot loop forever.
        let chains: Vec<DescriptorChain<&GuestMemory>> = match queue.iter(&*mem) {
            Ok(iter) => iter.collect(),
            Err(e) => {
                error!("virtio-blk: broken request queue, not processed: {e}");
                return;
            }
        };
        if chains.is_empty() {
            return;
        }
        for chain in chains {
            let head = chain.head_index();
            let used_len = complete(&self.disk, mem, chain, max_descriptors);
            if let Err(e) = queue.add_used(&*mem, head, used_len) {
                error!("virtio-blk: cannot return descriptor {head} to the guest: {e}");
            }
        }
        match queue.needs_notification(&*mem) {
            Ok(true) => {
                if let Err(e) = irq.trigger(INTERRUPT_STATUS_USED_RING) {
                    error!("virtio-blk: cannot interrupt the guest: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => error!("virtio-blk: cannot read the used event index: {e}"),
        }
    }
}

/// Handles one chain; returns the used length (bytes written to device-writable buffers).
fn complete(
    disk: &Disk,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    max_descriptors: u16,
) -> u32 {
    match Request::parse(mem, chain, max_descriptors, disk.capacity()) {
        Ok(req) => {
            let done = disk.execute(mem, &req);
            if write_status(mem, req.status, done.status) {
                done.written.saturating_add(1)
            } else {
                done.written
            }
        }
        Err(ParseError {
            error,
            status: Some(status),
        }) => {
            debug!("virtio-blk: malformed request: {error}");
            u32::from(write_status(mem, status, VIRTIO_BLK_S_IOERR as u8))
        }
        Err(ParseError {
            error,
            status: None,
        }) => {
            debug!("virtio-blk: malformed request without a status byte: {error}");
            0
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "virtio-blk: {}-byte write to read-only config space at {offset:#x}; ignored",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        mut queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want: 1,
            });
        }
        let queue = queues.remove(0);
        if !queue.ready() || !queue.is_valid(&mem) {
            return Err(ActivateError::InvalidQueue(0));
        }
        self.active = Some(Active { mem, queue, irq });
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        // Drop any notification that arrived for the old queue.
        let _ = self.queue_events[0].read();
        true
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_events[0], EventSet::IN)) {
            error!("virtio-blk: cannot register the queue eventfd: {e}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != self.queue_events[0].as_raw_fd() {
            warn!("virtio-blk: event on unknown fd {}", events.fd());
            return;
        }
        if let Err(e) = self.queue_events[0].read() {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                error!("virtio-blk: cannot read the queue eventfd: {e}");
            }
        }
        if self.is_activated() {
            self.process_queue();
        }
    }
}

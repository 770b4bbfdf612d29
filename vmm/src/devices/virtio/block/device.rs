//! The virtio-blk device: what the transport and the event loop see.
//!
//! Owns the virtio side of the block device: the features it offers (flush, `seg_max`,
//! read-only), the config space (capacity, `seg_max`), and the loop that drains the request
//! queue: parse each chain ([`super::request`]), execute it on the disk ([`super::io`]),
//! write the status byte, return the chain on the used ring and interrupt the guest when
//! the queue asks for it. Feature negotiation, the queue and its eventfd, activation and
//! reset are the shared [`VirtioState`].

use std::os::unix::io::AsRawFd;
use std::path::Path;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error, warn};
use virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};

use super::io::{write_status, Disk};
use super::request::{ParseError, Request};
use super::{BlockError, QUEUE_SIZE};
use crate::devices::virtio::queue::{add_used, signal_used};
use crate::devices::virtio::state::{Active, VirtioState};
use crate::devices::virtio::{
    read_config_space, GuestLog, GuestMemory, VirtioDevice, TYPE_BLOCK, VIRTIO_F_VERSION_1,
};

/// Config space: `le64 capacity; le32 size_max; le32 seg_max` (virtio 1.x, 5.2.4).
const CONFIG_LEN: usize = 16;
/// Data segments per request: the queue minus the header and status descriptors.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

static GUEST_LOG: GuestLog = GuestLog::new("virtio-blk");

/// A virtio-blk device with one request queue.
pub struct Block {
    disk: Disk,
    config: [u8; CONFIG_LEN],
    virtio: VirtioState,
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
        let virtio = VirtioState::new(&GUEST_LOG, avail_features, &[QUEUE_SIZE])
            .map_err(BlockError::EventFd)?;
        Ok(Self {
            disk,
            config,
            virtio,
        })
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    /// The features the driver acked.
    pub fn acked_features(&self) -> u64 {
        self.virtio.acked_features()
    }

    /// Drains the request queue. Does nothing before activation. A broken queue is logged
    /// and left alone: the device and the VMM keep running.
    pub fn process_queue(&mut self) {
        let Some(Active { mem, queues, irq }) = self.virtio.active_mut() else {
            return;
        };
        let queue = &mut queues[0];
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
            add_used(&GUEST_LOG, queue, mem, head, used_len);
        }
        signal_used(&GUEST_LOG, queue, mem, irq);
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

    fn state(&self) -> &VirtioState {
        &self.virtio
    }

    fn state_mut(&mut self) -> &mut VirtioState {
        &mut self.virtio
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config, offset, data);
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.virtio.queue_events()[0], EventSet::IN)) {
            error!("virtio-blk: cannot register the queue eventfd: {e}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != self.virtio.queue_events()[0].as_raw_fd() {
            warn!("virtio-blk: event on unknown fd {}", events.fd());
            return;
        }
        self.virtio.take_kick(0);
        self.process_queue();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
        VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    };
    use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::tempfile::TempFile;

    use crate::devices::virtio::test_utils::{DriverQueue, NEXT, R, W};
    use crate::devices::virtio::{ActivateError, IrqTrigger, INTERRUPT_STATUS_USED_RING};
    use virtio_queue::Queue;

    const MEM_SIZE: u64 = 0x100_0000;
    const QSIZE: u16 = 16;
    const DISK_SECTORS: u64 = 32;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;
    const INDIRECT: u64 = 0x40_0000;
    const ID: &str = "runvm-disk-0";

    fn pattern(i: u64) -> u8 {
        (i * 7 % 251) as u8
    }

    fn disk_image() -> TempFile {
        let f = TempFile::new().unwrap();
        let bytes: Vec<u8> = (0..DISK_SECTORS * 512).map(pattern).collect();
        f.as_file().write_all_at(&bytes, 0).unwrap();
        f
    }

    fn file_bytes(f: &TempFile, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        f.as_file().read_exact_at(&mut b, offset).unwrap();
        b
    }

    fn guest_bytes(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
    }

    fn header(mem: &GuestMemory, request_type: u32, sector: u64) {
        mem.write_obj(request_type.to_le(), GuestAddress(HDR))
            .unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(HDR + 8))
            .unwrap();
    }

    /// The driver side: one request queue, and the requests it submits.
    struct Driver<'a> {
        mem: &'a GuestMemory,
        vq: DriverQueue,
    }

    impl<'a> Driver<'a> {
        fn new(mem: &'a GuestMemory) -> Self {
            Self {
                mem,
                vq: DriverQueue::new(mem, 0, QSIZE),
            }
        }

        fn activate(&self, block: &mut Block) -> Arc<IrqTrigger> {
            let irq = Arc::new(IrqTrigger::new().unwrap());
            block
                .activate(self.mem.clone(), vec![self.vq.create_queue()], irq.clone())
                .unwrap();
            irq
        }

        /// Submits one chain, lets the device process it, returns (used length, status).
        fn submit(&mut self, block: &mut Block, descs: &[(u64, u32, u16)]) -> (u32, u8) {
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            self.vq.add(descs);
            block.process_queue();
            self.result()
        }

        fn result(&mut self) -> (u32, u8) {
            let used = self.vq.take_used();
            assert_eq!(used.len(), 1, "one chain returned");
            let status = self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap();
            (used[0].1, status)
        }

        /// Reads sectors 4..6 and checks them against the disk image.
        fn assert_read_works(&mut self, block: &mut Block, image: &TempFile) {
            header(self.mem, VIRTIO_BLK_T_IN, 4);
            self.mem
                .write_slice(&[0u8; 1024], GuestAddress(DATA))
                .unwrap();
            let r = self.submit(block, &[(HDR, 16, R), (DATA, 1024, W), (STATUS, 1, W)]);
            assert_eq!(r, (1025, VIRTIO_BLK_S_OK as u8));
            assert_eq!(
                guest_bytes(self.mem, DATA, 1024),
                file_bytes(image, 4 * 512, 1024)
            );
        }
    }

    fn block(image: &TempFile, read_only: bool) -> Block {
        Block::new(image.as_path(), read_only, ID).unwrap()
    }

    #[test]
    fn features_and_config_space() {
        let image = disk_image();
        let b = block(&image, false);
        assert_eq!(b.device_type(), TYPE_BLOCK);
        assert_eq!(b.queue_max_sizes(), &[256]);
        assert_eq!(b.queue_events().len(), 1);
        assert_eq!(
            b.avail_features(),
            VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX
        );
        assert_eq!(b.capacity(), DISK_SECTORS);
        let mut cap = [0u8; 8];
        b.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
        let mut seg = [0u8; 4];
        b.read_config(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), 254);
        let mut b1 = [0xffu8; 1];
        b.read_config(1, &mut b1);
        assert_eq!(b1, [0]);
        let mut tail = [0xffu8; 8];
        b.read_config(12, &mut tail);
        assert_eq!(tail, [254, 0, 0, 0, 0, 0, 0, 0]);
        b.read_config(u64::MAX, &mut tail);
        assert_eq!(tail, [0; 8]);

        let ro = block(&image, true);
        assert_ne!(ro.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
        let mut ro = ro;
        ro.set_acked_features(u64::MAX);
        assert_eq!(ro.acked_features(), ro.avail_features());
        // Config space is read-only.
        ro.write_config(0, &[1, 2, 3]);
        ro.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    }

    #[test]
    fn new_fails_cleanly() {
        let err = Block::new(Path::new("/nonexistent/disk.img"), true, "x");
        assert!(matches!(err, Err(BlockError::Open { .. })));
    }

    #[test]
    fn read_write_flush_get_id_round_trips() {
        let image = disk_image();
        let m = mem();
        let mut b = block(&image, false);
        let mut d = Driver::new(&m);
        let irq = d.activate(&mut b);

        // IN over two data descriptors.
        header(&m, VIRTIO_BLK_T_IN, 2);
        let r = d.submit(
            &mut b,
            &[
                (HDR, 16, R),
                (DATA, 512, W),
                (DATA + 0x1000, 1024, W),
                (STATUS, 1, W),
            ],
        );
        assert_eq!(r, (1537, VIRTIO_BLK_S_OK as u8));
        assert_eq!(guest_bytes(&m, DATA, 512), file_bytes(&image, 1024, 512));
        assert_eq!(
            guest_bytes(&m, DATA + 0x1000, 1024),
            file_bytes(&image, 1536, 1024)
        );
        assert_eq!(
            irq.status() & INTERRUPT_STATUS_USED_RING,
            INTERRUPT_STATUS_USED_RING
        );
        assert!(irq.eventfd().read().unwrap() >= 1);

        // OUT, then the file has it, and IN reads it back.
        header(&m, VIRTIO_BLK_T_OUT, 5);
        m.write_slice(&[0xab; 1024], GuestAddress(DATA)).unwrap();
        let r = d.submit(&mut b, &[(HDR, 16, R), (DATA, 1024, R), (STATUS, 1, W)]);
        assert_eq!(r, (1, VIRTIO_BLK_S_OK as u8));
        assert_eq!(file_bytes(&image, 5 * 512, 1024), vec![0xab; 1024]);
        assert_eq!(
            file_bytes(&image, 4 * 512, 512),
            (2048..2560).map(pattern).collect::<Vec<_>>()
        );
        header(&m, VIRTIO_BLK_T_IN, 5);
        m.write_slice(&[0; 1024], GuestAddress(DATA + 0x4000))
            .unwrap();
        let r = d.submit(
            &mut b,
            &[(HDR, 16, R), (DATA + 0x4000, 1024, W), (STATUS, 1, W)],
        );
        assert_eq!(r, (1025, VIRTIO_BLK_S_OK as u8));
        assert_eq!(guest_bytes(&m, DATA + 0x4000, 1024), vec![0xab; 1024]);

        // The last sector.
        header(&m, VIRTIO_BLK_T_IN, DISK_SECTORS - 1);
        let r = d.submit(&mut b, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
        assert_eq!(r, (513, VIRTIO_BLK_S_OK as u8));

        // FLUSH.
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let r = d.submit(&mut b, &[(HDR, 16, R), (STATUS, 1, W)]);
        assert_eq!(r, (1, VIRTIO_BLK_S_OK as u8));

        // GET_ID: the id, zero-padded to 20 bytes.
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        m.write_slice(&[0xff; 32], GuestAddress(DATA)).unwrap();
        let r = d.submit(&mut b, &[(HDR, 16, R), (DATA, 20, W), (STATUS, 1, W)]);
        assert_eq!(r, (21, VIRTIO_BLK_S_OK as u8));
        let mut want = ID.as_bytes().to_vec();
        want.resize(20, 0);
        assert_eq!(guest_bytes(&m, DATA, 20), want);
        assert_eq!(guest_bytes(&m, DATA + 20, 1), [0xff]);
        // ... or as much of it as fits.
        m.write_slice(&[0xff; 32], GuestAddress(DATA)).unwrap();
        let r = d.submit(&mut b, &[(HDR, 16, R), (DATA, 5, W), (STATUS, 1, W)]);
        assert_eq!(r, (6, VIRTIO_BLK_S_OK as u8));
        assert_eq!(guest_bytes(&m, DATA, 6), b"runvm\xff");
    }

    #[test]
    fn long_ids_are_truncated() {
        let image = disk_image();
        let m = mem();
        let mut b = Block::new(image.as_path(), true, "0123456789abcdefghijKLMNOP").unwrap();
        let mut d = Driver::new(&m);
        d.activate(&mut b);
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let r = d.submit(&mut b, &[(HDR, 16, R), (DATA, 64, W), (STATUS, 1, W)]);
        assert_eq!(r, (21, VIRTIO_BLK_S_OK as u8));
        assert_eq!(guest_bytes(&m, DATA, 20), b"0123456789abcdefghij");
    }

    #[test]
    fn malformed_requests_fail_and_device_keeps_running() {
        let image = disk_image();
        let m = mem();
        let mut b = block(&image, false);
        let mut d = Driver::new(&m);
        d.activate(&mut b);
        let ioerr = Some(VIRTIO_BLK_S_IOERR as u8);
        let untouched = Some(0xff);

        type Case = (
            &'static str,
            u32,
            u64,
            Vec<(u64, u32, u16)>,
            u32,
            Option<u8>,
        );
        let cases: Vec<Case> = vec![
            (
                "sector past the end",
                VIRTIO_BLK_T_IN,
                DISK_SECTORS,
                vec![(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)],
                1,
                ioerr,
            ),
            (
                "range past the end",
                VIRTIO_BLK_T_OUT,
                DISK_SECTORS - 1,
                vec![(HDR, 16, R), (DATA, 1024, R), (STATUS, 1, W)],
                1,
                ioerr,
            ),
            (
                "sector + len overflows",
                VIRTIO_BLK_T_IN,
                u64::MAX,
                vec![(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)],
                1,
                ioerr,
            ),
            (
                "header too short",
                VIRTIO_BLK_T_IN,
                0,
                vec![(HDR, 8, R), (DATA, 512, W), (STATUS, 1, W)],
                1,
                ioerr,
            ),
            (
                "header device-writable",
                VIRTIO_BLK_T_IN,
                0,
                vec![(HDR, 16, W), (DATA, 512, W), (STATUS, 1, W)],
                1,
                ioerr,
            ),
            (
                "header outside memory",
                VIRTIO_BLK_T_IN,
                0,
                vec![(MEM_SIZE, 16, R), (DATA, 512, W), (STATUS, 1, W)],
                1,
                ioerr,
            ),
            (
                "status read-only",
                VIRTIO_BLK_T_IN,
                0,
                vec![(HDR, 16, R), (DATA, 512, W), (STATUS, 1, R)],
                0,
                untouched,
            ),
            (
                "status zero length",
                VIRTIO_BLK_T_IN,
                0,
                vec![(HDR, 16, R), (DATA, 512, W), (STATUS, 0, W)],
                0,
                untouched,
            ),
            (
                "status outside memory",
                VIRTIO_BLK_T_FLUSH,
                0,
                vec![(HDR, 16, R), (MEM_SIZE, 1, W)],
                0,
                untouched,
            ),
            (
                "data outside memory",
                VIRTIO_BLK_T_IN,
                0,
                vec![(HDR, 16, R), (MEM_SIZE + 0x1000, 512, W), (STATUS, 1, W)],
                1,
                ioerr,
            ),
            (
                "data straddles end of memory",
                VIRTIO_BLK_T_OUT,
                0,
                vec![(HDR, 16, R), (MEM_SIZE - 512, 1024, R), (STATUS, 1, W)],
                1,
                ioerr,
            ),
            (
                "length not a multiple of 512",
                VIRTIO_BLK_T_IN,
                0,
                vec![(HDR, 16, R), (DATA, 100, W), (STATUS, 1, W)],
                1,
                ioerr,
            ),
            (
                "read into device-readable data",
                VIRTIO_BLK_T_IN,
                0,
                vec![(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)],
                1,
                ioerr,
            ),
            (
                "write from device-writable data",
                VIRTIO_BLK_T_OUT,
                0,
                vec![(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)],
                1,
                ioerr,
            ),
            (
                "no header",
                VIRTIO_BLK_T_IN,
                0,
                vec![(STATUS, 1, W)],
                1,
                ioerr,
            ),
            (
                "unknown request type",
                0x42,
                0,
                vec![(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)],
                1,
                Some(VIRTIO_BLK_S_UNSUPP as u8),
            ),
        ];
        for (name, request_type, sector, descs, used_len, status) in cases {
            header(&m, request_type, sector);
            let before = file_bytes(&image, 0, (DISK_SECTORS * 512) as usize);
            let (len, st) = d.submit(&mut b, &descs);
            assert_eq!(len, used_len, "{name}: used length");
            assert_eq!(Some(st), status, "{name}: status");
            assert_eq!(
                file_bytes(&image, 0, (DISK_SECTORS * 512) as usize),
                before,
                "{name}: disk unchanged"
            );
            d.assert_read_works(&mut b, &image);
        }
    }

    #[test]
    fn looping_chain_is_returned_unused() {
        let image = disk_image();
        let m = mem();
        let mut b = block(&image, false);
        let mut d = Driver::new(&m);
        d.activate(&mut b);
        header(&m, VIRTIO_BLK_T_IN, 0);
        m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        // header -> data -> status -> back to the header.
        d.vq.add_raw(&[
            (HDR, 16, R, None),
            (DATA, 512, W, None),
            (STATUS, 1, W, Some(0)),
        ]);
        b.process_queue();
        assert_eq!(d.result(), (0, 0xff));
        // A status descriptor that points back to itself.
        d.vq.add_raw(&[(HDR, 16, R, None), (STATUS, 1, W, Some(1))]);
        b.process_queue();
        assert_eq!(d.result(), (0, 0xff));
        d.assert_read_works(&mut b, &image);
    }

    #[test]
    fn broken_next_index_is_returned_unused() {
        let image = disk_image();
        let m = mem();
        let mut b = block(&image, false);
        let mut d = Driver::new(&m);
        d.activate(&mut b);
        header(&m, VIRTIO_BLK_T_IN, 0);
        m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        d.vq.add_raw(&[(HDR, 16, R, None), (STATUS, 1, W, Some(200))]);
        b.process_queue();
        assert_eq!(d.result(), (0, 0xff));
        d.assert_read_works(&mut b, &image);
    }

    #[test]
    fn chain_longer_than_queue_is_returned_unused() {
        let image = disk_image();
        let m = mem();
        let mut b = block(&image, false);
        let mut d = Driver::new(&m);
        d.activate(&mut b);
        header(&m, VIRTIO_BLK_T_IN, 0);
        m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        // An indirect table of QSIZE + 2 descriptors: header, QSIZE data, status.
        let n = QSIZE + 2;
        for i in 0..n {
            let (addr, len, mut flags) = match i {
                0 => (HDR, 16, R),
                i if i == n - 1 => (STATUS, 1, W),
                i => (DATA + u64::from(i) * 512, 512, W),
            };
            if i < n - 1 {
                flags |= NEXT;
            }
            let desc = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, i + 1));
            m.write_obj(desc, GuestAddress(INDIRECT + u64::from(i) * 16))
                .unwrap();
        }
        d.vq.add(&[(INDIRECT, u32::from(n) * 16, VRING_DESC_F_INDIRECT as u16)]);
        b.process_queue();
        assert_eq!(d.result(), (0, 0xff));
        // The same through an indirect table that fits is served (virtio-queue follows it).
        let fits = RawDescriptor::from(SplitDescriptor::new(STATUS, 1, W, 0));
        m.write_obj(fits, GuestAddress(INDIRECT + 2 * 16)).unwrap();
        d.vq.add(&[(INDIRECT, 3 * 16, VRING_DESC_F_INDIRECT as u16)]);
        b.process_queue();
        assert_eq!(d.result(), (513, VIRTIO_BLK_S_OK as u8));
        d.assert_read_works(&mut b, &image);
    }

    #[test]
    fn write_to_read_only_device_fails() {
        let image = disk_image();
        let m = mem();
        let mut b = block(&image, true);
        let mut d = Driver::new(&m);
        d.activate(&mut b);
        let before = file_bytes(&image, 0, (DISK_SECTORS * 512) as usize);
        header(&m, VIRTIO_BLK_T_OUT, 0);
        m.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        let r = d.submit(&mut b, &[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]);
        assert_eq!(r, (1, VIRTIO_BLK_S_IOERR as u8));
        assert_eq!(file_bytes(&image, 0, (DISK_SECTORS * 512) as usize), before);
        // Flush is harmless, reads work.
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let r = d.submit(&mut b, &[(HDR, 16, R), (STATUS, 1, W)]);
        assert_eq!(r, (1, VIRTIO_BLK_S_OK as u8));
        d.assert_read_works(&mut b, &image);
    }

    #[test]
    fn broken_queue_is_logged_and_device_keeps_running() {
        let image = disk_image();
        let m = mem();
        let mut b = block(&image, false);
        let mut d = Driver::new(&m);
        d.activate(&mut b);
        // The driver claims more available entries than the queue holds.
        d.vq.skew_avail(QSIZE + 1);
        b.process_queue();
        assert!(d.vq.take_used().is_empty());
        d.vq.skew_avail((QSIZE + 1).wrapping_neg());
        // A head index outside the descriptor table: nothing can be returned for it.
        d.vq.push_avail(100);
        b.process_queue();
        assert!(d.vq.take_used().is_empty());
        d.assert_read_works(&mut b, &image);
    }

    #[test]
    fn activation_checks_queues_and_reset_deactivates() {
        let image = disk_image();
        let m = mem();
        let mut b = block(&image, false);
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let err = b.activate(m.clone(), vec![], irq.clone());
        assert!(matches!(
            err,
            Err(ActivateError::QueueCount { got: 0, want: 1 })
        ));
        let not_ready = Queue::new(16).unwrap();
        let err = b.activate(m.clone(), vec![not_ready], irq.clone());
        assert!(matches!(err, Err(ActivateError::InvalidQueue(0))));
        assert!(!b.is_activated());
        let mut d = Driver::new(&m);
        d.activate(&mut b);
        assert!(b.is_activated());
        assert!(b.reset());
        assert!(!b.is_activated());
        // After a reset, requests are not processed until the next activation.
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        d.vq.add(&[(HDR, 16, R), (STATUS, 1, W)]);
        b.process_queue();
        assert!(d.vq.take_used().is_empty());
    }

    #[test]
    fn event_loop_drains_queue_on_notification() {
        let image = disk_image();
        let m = mem();
        let b = Arc::new(Mutex::new(block(&image, false)));
        let mut em = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
        em.add_subscriber(b.clone());
        let notify = |b: &Arc<Mutex<Block>>| b.lock().unwrap().queue_events()[0].write(1).unwrap();

        // Before activation a notification is consumed and nothing happens.
        notify(&b);
        assert_eq!(em.run_with_timeout(100).unwrap(), 1);

        let mut d = Driver::new(&m);
        let irq = d.activate(&mut b.lock().unwrap());
        header(&m, VIRTIO_BLK_T_IN, 1);
        d.vq.add(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
        m.write_obj(VIRTIO_BLK_T_FLUSH, GuestAddress(HDR + 0x100))
            .unwrap();
        d.vq.add(&[(HDR + 0x100, 16, R), (STATUS + 1, 1, W)]);
        assert!(d.vq.take_used().is_empty());
        notify(&b);
        assert_eq!(em.run_with_timeout(100).unwrap(), 1);
        let used = d.vq.take_used();
        assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), [513, 1]);
        assert_eq!(guest_bytes(&m, DATA, 512), file_bytes(&image, 512, 512));
        assert_eq!(irq.eventfd().read().unwrap(), 1);
        // Nothing pending: no event.
        assert_eq!(em.run_with_timeout(10).unwrap(), 0);
    }

    #[test]
    fn full_stack_through_mmio_transport() {
        use crate::bus::BusDevice;
        use crate::devices::virtio::mmio::{self, status::*, MmioTransport};

        let image = disk_image();
        let m = mem();
        let b = Arc::new(Mutex::new(block(&image, false)));
        let mut t = MmioTransport::new(m.clone(), b.clone()).unwrap();
        let mut em = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
        em.add_subscriber(b.clone());
        let w = |t: &mut MmioTransport, offset: u64, v: u32| t.write(offset, &v.to_le_bytes());
        let r = |t: &mut MmioTransport, offset: u64| {
            let mut data = [0u8; 4];
            t.read(offset, &mut data);
            u32::from_le_bytes(data)
        };

        assert_eq!(r(&mut t, mmio::DEVICE_ID_REG), TYPE_BLOCK);
        w(&mut t, mmio::STATUS_REG, 0);
        w(&mut t, mmio::STATUS_REG, ACKNOWLEDGE);
        w(&mut t, mmio::STATUS_REG, ACKNOWLEDGE | DRIVER);
        for sel in 0..2 {
            w(&mut t, mmio::DEVICE_FEATURES_SEL_REG, sel);
            let features = r(&mut t, mmio::DEVICE_FEATURES_REG);
            w(&mut t, mmio::DRIVER_FEATURES_SEL_REG, sel);
            w(&mut t, mmio::DRIVER_FEATURES_REG, features);
        }
        w(&mut t, mmio::STATUS_REG, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(
            r(&mut t, mmio::STATUS_REG),
            ACKNOWLEDGE | DRIVER | FEATURES_OK
        );
        let mut capacity = [0u8; 8];
        t.read(mmio::CONFIG_SPACE_OFFSET, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), DISK_SECTORS);

        let mut d = Driver::new(&m);
        w(&mut t, mmio::QUEUE_SEL_REG, 0);
        assert_eq!(r(&mut t, mmio::QUEUE_NUM_MAX_REG), 256);
        w(&mut t, mmio::QUEUE_NUM_REG, u32::from(QSIZE));
        w(
            &mut t,
            mmio::QUEUE_DESC_LOW_REG,
            d.vq.desc_table_addr().0 as u32,
        );
        w(
            &mut t,
            mmio::QUEUE_DRIVER_LOW_REG,
            d.vq.avail_ring_addr().0 as u32,
        );
        w(
            &mut t,
            mmio::QUEUE_DEVICE_LOW_REG,
            d.vq.used_ring_addr().0 as u32,
        );
        w(&mut t, mmio::QUEUE_READY_REG, 1);
        w(
            &mut t,
            mmio::STATUS_REG,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert_eq!(r(&mut t, mmio::STATUS_REG), 0xf);
        assert!(b.lock().unwrap().is_activated());
        {
            let dev = b.lock().unwrap();
            assert_eq!(dev.acked_features(), dev.avail_features());
        }

        header(&m, VIRTIO_BLK_T_IN, 3);
        d.vq.add(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
        w(&mut t, mmio::NOTIFY_REG_OFFSET, 0);
        assert_eq!(em.run_with_timeout(100).unwrap(), 1);
        assert_eq!(d.result(), (513, VIRTIO_BLK_S_OK as u8));
        assert_eq!(guest_bytes(&m, DATA, 512), file_bytes(&image, 3 * 512, 512));
        assert_eq!(
            r(&mut t, mmio::INTERRUPT_STATUS_REG),
            INTERRUPT_STATUS_USED_RING
        );
        w(&mut t, mmio::INTERRUPT_ACK_REG, INTERRUPT_STATUS_USED_RING);
        assert_eq!(r(&mut t, mmio::INTERRUPT_STATUS_REG), 0);

        w(&mut t, mmio::STATUS_REG, 0);
        assert_eq!(r(&mut t, mmio::STATUS_REG), 0);
        assert!(!b.lock().unwrap().is_activated());
    }
}

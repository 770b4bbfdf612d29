//! Property-based fuzzing of virtio-blk request parsing: any descriptor table a hostile
//! driver writes, any header, gives a [`Request`] whose every address is inside guest
//! memory and whose sectors are inside the disk, or an error; a well-formed request
//! parses to exactly what the driver wrote.

use proptest::prelude::*;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::*;
use crate::devices::virtio::queue::check_chain;
use crate::devices::virtio::test_utils::fuzz::{
    config, desc_next, guest_addr, raw_desc, write_table, RawDesc,
};
use crate::devices::virtio::test_utils::{DriverQueue, R, W};

const MEM_SIZE: u64 = 0x10_0000;
const HEADER_AT: u64 = 0x1_0000;
const DATA_AT: u64 = 0x2_0000;
const STATUS_AT: u64 = 0xF_FFFF;
const INDIRECT_AT: u64 = 0x8_0000;

fn mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn write_header(mem: &GuestMemory, request_type: u32, sector: u64) {
    mem.write_obj(request_type.to_le(), GuestAddress(HEADER_AT))
        .unwrap();
    mem.write_obj(sector.to_le(), GuestAddress(HEADER_AT + 8))
        .unwrap();
}

fn request_type() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(VIRTIO_BLK_T_IN),
        Just(VIRTIO_BLK_T_OUT),
        Just(VIRTIO_BLK_T_FLUSH),
        Just(VIRTIO_BLK_T_GET_ID),
        any::<u32>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the driver wrote, parsing never panics, and what it accepts is safe to
    /// execute: inside guest memory, inside the disk, no longer than the queue.
    #[test]
    fn fuzz_block_request_from_any_chain(
        (size, table, indirect, head) in prop::sample::select(vec![1u16, 2, 4, 8, 16])
            .prop_flat_map(|size| {
                let addr = || guest_addr(
                    0x1_0000, MEM_SIZE, MEM_SIZE, vec![HEADER_AT, DATA_AT, STATUS_AT, INDIRECT_AT],
                );
                (
                    Just(size),
                    prop::collection::vec(raw_desc(addr(), size), usize::from(size)),
                    prop::collection::vec(raw_desc(addr(), 20), 0..20),
                    desc_next(size),
                )
            }),
        request_type in request_type(),
        sector in prop_oneof![0u64..40, any::<u64>()],
        capacity in prop_oneof![0u64..40, any::<u64>()],
    ) {
        let mem = mem();
        let mut dq = DriverQueue::new(&mem, 0, size);
        let mut q = dq.create_queue();
        write_table(&mem, dq.desc_table_addr().0, &table);
        write_table(&mem, INDIRECT_AT, &indirect);
        write_header(&mem, request_type, sector);
        dq.push_avail(head);
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let shape = check_chain(&chain, None);
        match Request::parse(&mem, chain, size, capacity) {
            Ok(r) => {
                prop_assert!(shape.is_ok(), "accepted a broken chain: {:?}", r);
                prop_assert!(mem.check_range(r.status, 1));
                prop_assert!(r.data.len() < usize::from(size));
                let mut sum = 0u64;
                for s in &r.data {
                    prop_assert!(s.len > 0);
                    prop_assert!(mem.check_range(s.addr, s.len as usize), "{:?}", s);
                    sum += u64::from(s.len);
                }
                prop_assert_eq!(sum, r.data_len);
                match r.request_type {
                    RequestType::In | RequestType::Out => {
                        prop_assert_eq!(r.data_len % SECTOR_SIZE, 0);
                        let end = r.sector.checked_add(r.data_len / SECTOR_SIZE);
                        prop_assert!(end.is_some_and(|e| e <= capacity));
                    }
                    RequestType::Flush | RequestType::Unsupported(_) => {
                        prop_assert!(r.data.is_empty())
                    }
                    RequestType::GetId => {}
                }
            }
            Err(ParseError { error, status }) => {
                if shape.is_err() {
                    prop_assert_eq!(status, None);
                    let chain_error = matches!(
                        error,
                        RequestError::EmptyChain
                            | RequestError::ChainBroken
                            | RequestError::ChainTooLong(_)
                    );
                    prop_assert!(chain_error, "{:?}", error);
                }
                if let Some(status) = status {
                    prop_assert!(mem.check_range(status, 1));
                }
            }
        }
    }

    /// A well-formed read or write parses to exactly the sectors and buffers the driver
    /// wrote; one sector fewer on the disk and it is refused as out of range.
    #[test]
    fn fuzz_block_valid_request_round_trips(
        write in any::<bool>(),
        sectors in prop::collection::vec(0u32..9, 0..6),
        sector in 0u64..(1 << 40),
        spare in 0u64..4,
        status_len in 1u32..8,
    ) {
        let mem = mem();
        let mut dq = DriverQueue::new(&mem, 0, 8);
        let mut q = dq.create_queue();
        let request_type = if write { VIRTIO_BLK_T_OUT } else { VIRTIO_BLK_T_IN };
        write_header(&mem, request_type, sector);
        let data_flags = if write { R } else { W };
        let mut descs = vec![(HEADER_AT, HEADER_LEN, R)];
        let mut want = Vec::new();
        for (i, &n) in sectors.iter().enumerate() {
            let addr = DATA_AT + i as u64 * 0x2000;
            descs.push((addr, n * 512, data_flags));
            if n > 0 {
                want.push(Segment { addr: GuestAddress(addr), len: n * 512 });
            }
        }
        descs.push((0x9_0000, status_len, W));
        dq.add(&descs);
        let count: u64 = sectors.iter().map(|&n| u64::from(n)).sum();
        let capacity = sector + count + spare;
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let r = Request::parse(&mem, chain.clone(), 8, capacity).unwrap();
        prop_assert_eq!(r.request_type, RequestType::from(request_type));
        prop_assert_eq!(r.sector, sector);
        prop_assert_eq!(&r.data, &want);
        prop_assert_eq!(r.data_len, count * SECTOR_SIZE);
        prop_assert_eq!(r.status, GuestAddress(0x9_0000 + u64::from(status_len) - 1));
        if count > 0 {
            let short = Request::parse(&mem, chain, 8, sector + count - 1);
            prop_assert_eq!(
                short.map_err(|e| e.error),
                Err(RequestError::OutOfRange { sector, count, capacity: sector + count - 1 })
            );
        }
    }

    /// A list of descriptors longer than the queue is refused before anything in it is
    /// looked at, however long the list (bounded work).
    #[test]
    fn fuzz_block_chain_longer_than_the_queue_is_refused(
        max in 1u16..64,
        extra in 1usize..10_000,
    ) {
        let mem = mem();
        let taken = std::cell::Cell::new(0usize);
        let chain = (0..usize::from(max) + extra).map(|_| {
            taken.set(taken.get() + 1);
            let d: RawDesc = (HEADER_AT, 16, 1, 0);
            virtio_queue::desc::split::Descriptor::new(d.0, d.1, d.2, d.3)
        });
        let r = Request::parse(&mem, chain, max, u64::MAX);
        prop_assert_eq!(r.map_err(|e| e.error), Err(RequestError::ChainTooLong(max)));
        prop_assert!(taken.get() <= usize::from(max) + 1);
    }
}

//! Property-based fuzzing of vsock packets: header bytes, TX packets read from any chain
//! a hostile driver writes (the payload never longer than the header's length, the
//! chain's bytes or [`MAX_PKT_PAYLOAD`]), and packets split over descriptors at any
//! point, which read and write the same as in one descriptor.

use proptest::prelude::*;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_utils::fuzz::{
    config, desc_next, guest_addr, raw_desc, write_table,
};
use crate::devices::virtio::test_utils::{DriverQueue, R, W};

const MEM_SIZE: u64 = 0x40_0000;
const HEADER_AT: u64 = 0x1_0000;
const INDIRECT_AT: u64 = 0x8_0000;
const BUF_AT: u64 = 0x10_0000;

fn mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn header(len: impl Strategy<Value = u32>) -> impl Strategy<Value = Header> {
    (
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>(), len),
        (
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                (src_cid, dst_cid, src_port, dst_port, len),
                (type_, op, flags, buf_alloc, fwd_cnt),
            )| {
                Header {
                    src_cid,
                    dst_cid,
                    src_port,
                    dst_port,
                    len,
                    type_,
                    op,
                    flags,
                    buf_alloc,
                    fwd_cnt,
                }
            },
        )
}

/// Cuts `total` bytes into pieces at sorted cut points (empty pieces included).
fn pieces(total: usize, cuts: &[usize]) -> Vec<(usize, usize)> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (total + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts.into_iter().chain([total]) {
        out.push((start, c - start));
        start = c;
    }
    out
}

/// Lays `pieces` out as descriptors with gaps between their buffers, with `flags`.
fn spread(pieces: &[(usize, usize)], flags: u16) -> Vec<(u64, u32, u16)> {
    pieces
        .iter()
        .enumerate()
        .map(|(i, &(_, len))| (BUF_AT + i as u64 * 0x2_0000, len as u32, flags))
        .collect()
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes: a header parses iff there are 44 of them, and it is those bytes.
    #[test]
    fn fuzz_vsock_header_bytes(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        match Header::from_bytes(&bytes) {
            None => prop_assert!(bytes.len() < HEADER_SIZE),
            Some(h) => prop_assert_eq!(&h.to_bytes()[..], &bytes[..HEADER_SIZE]),
        }
    }

    /// Any chain, any header: reading a TX packet never panics, and a packet it accepts
    /// has a well-formed chain and a payload of exactly the header's length, at most
    /// `MAX_PKT_PAYLOAD`, however large a length the guest claims.
    #[test]
    fn fuzz_vsock_tx_packet_from_any_chain(
        (size, table, indirect, head) in prop::sample::select(vec![1u16, 2, 4, 8, 16])
            .prop_flat_map(|size| {
                let addr = || guest_addr(0x1_0000, MEM_SIZE, MEM_SIZE, vec![HEADER_AT, INDIRECT_AT, BUF_AT]);
                (
                    Just(size),
                    prop::collection::vec(raw_desc(addr(), size), usize::from(size)),
                    prop::collection::vec(raw_desc(addr(), 20), 0..20),
                    desc_next(size),
                )
            }),
        hdr in header(prop_oneof![0u32..600, (MAX_PKT_PAYLOAD as u32 - 8)..(MAX_PKT_PAYLOAD as u32 + 8), any::<u32>()]),
    ) {
        let mem = mem();
        let mut dq = DriverQueue::new(&mem, 0, size);
        let mut q = dq.create_queue();
        write_table(&mem, dq.desc_table_addr().0, &table);
        write_table(&mem, INDIRECT_AT, &indirect);
        mem.write_slice(&hdr.to_bytes(), GuestAddress(HEADER_AT)).unwrap();
        dq.push_avail(head);
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let shape = check_chain(&chain, None);
        let mut payload = Vec::new();
        if let Ok(got) = read_tx_packet(&mem, chain, &mut payload) {
            prop_assert!(shape.is_ok());
            prop_assert_eq!(payload.len(), got.len as usize);
            prop_assert!(payload.len() <= MAX_PKT_PAYLOAD);
        }
        prop_assert!(payload.capacity() <= 2 * MAX_PKT_PAYLOAD);
    }

    /// A packet split over readable descriptors at any points (writable ones mixed in,
    /// which a TX packet ignores) reads back as written; a length past the bytes there
    /// is refused.
    #[test]
    fn fuzz_vsock_tx_packet_any_split(
        hdr in header(Just(0)),
        payload in prop::collection::vec(any::<u8>(), 0..3000),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        writable_between in any::<bool>(),
        claim_more in 0u32..3,
    ) {
        let mem = mem();
        let mut dq = DriverQueue::new(&mem, 0, 16);
        let mut q = dq.create_queue();
        let hdr = Header { len: payload.len() as u32 + claim_more, ..hdr };
        let mut wire = hdr.to_bytes().to_vec();
        wire.extend_from_slice(&payload);
        let parts = pieces(wire.len(), &cuts);
        let mut descs = spread(&parts, R);
        for (&(start, len), d) in parts.iter().zip(&descs) {
            mem.write_slice(&wire[start..start + len], GuestAddress(d.0)).unwrap();
        }
        if writable_between {
            descs.insert(descs.len() / 2, (0x30_0000, 100, W));
        }
        dq.add(&descs);
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let mut got = Vec::new();
        match read_tx_packet(&mem, chain, &mut got) {
            Ok(h) => {
                prop_assert_eq!(claim_more, 0);
                prop_assert_eq!(h, hdr);
                prop_assert_eq!(&got, &payload);
            }
            Err(PacketError::BadLen { len, avail, .. }) => {
                prop_assert!(claim_more > 0);
                prop_assert_eq!((len, avail), (hdr.len, payload.len()));
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }

    /// An RX chain split at any points takes a header and as much payload as fits, and
    /// the guest reads back exactly that; a chain too small for a header is refused.
    #[test]
    fn fuzz_vsock_rx_buffer_any_split(
        hdr in header(any::<u32>()),
        payload in prop::collection::vec(any::<u8>(), 0..3000),
        total in 0usize..3200,
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let mem = mem();
        let mut dq = DriverQueue::new(&mem, 0, 16);
        let mut q = dq.create_queue();
        let parts = pieces(total, &cuts);
        let descs = spread(&parts, W);
        dq.add(&descs);
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let mut buf = match RxBuffer::from_chain(&mem, chain) {
            Ok(b) => b,
            Err(PacketError::ShortHeader(n)) => {
                prop_assert!(total < HEADER_SIZE);
                prop_assert_eq!(n, total);
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        prop_assert!(total >= HEADER_SIZE);
        prop_assert_eq!(buf.capacity(), (total - HEADER_SIZE).min(MAX_PKT_PAYLOAD));
        let used = buf.write(&hdr, &payload).unwrap() as usize;
        let n = payload.len().min(total - HEADER_SIZE);
        prop_assert_eq!(used, HEADER_SIZE + n);
        let mut back = Vec::new();
        for (&(_, len), d) in parts.iter().zip(&descs) {
            let mut piece = vec![0u8; len];
            mem.read_slice(&mut piece, GuestAddress(d.0)).unwrap();
            back.extend(piece);
        }
        let want_hdr = Header { len: n as u32, ..hdr };
        prop_assert_eq!(Header::from_bytes(&back), Some(want_hdr));
        prop_assert_eq!(&back[HEADER_SIZE..used], &payload[..n]);
    }
}

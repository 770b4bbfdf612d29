//! Property-based fuzzing of the descriptor chains a hostile driver can write: arbitrary
//! descriptor tables (loops, `next` indices outside the table, lengths whose sum passes
//! the `u32` bound, indirect tables that are nested, misaligned, empty or outside guest
//! memory), checked by [`check_chain`] against a model of the virtio rules, written
//! here from the specification (2.7.5, 2.7.5.3) rather than from virtio-queue.

use proptest::prelude::*;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_utils::fuzz::{
    config, desc_next, guest_addr, raw_desc, write_table, RawDesc, INDIRECT,
};
use crate::devices::virtio::test_utils::{DriverQueue, NEXT, W};

const MEM_SIZE: u64 = 0x10_0000;
/// Where the test puts an indirect table (which descriptors may or may not point at).
const INDIRECT_AT: u64 = 0x8_0000;

static LOG: GuestLog = GuestLog::new("fuzz");

/// Reads descriptor `index` of the table at `table` the way the specification lays it out
/// (`le64 addr; le32 len; le16 flags; le16 next`); `None` outside guest memory.
fn read_desc(mem: &GuestMemory, table: u64, index: u16) -> Option<RawDesc> {
    let at = table.checked_add(16 * u64::from(index))?;
    let mut b = [0u8; 16];
    mem.read_slice(&mut b, GuestAddress(at)).ok()?;
    let le =
        |r: std::ops::Range<usize>| b[r].iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x));
    Some((
        le(0..8),
        le(8..12) as u32,
        le(12..14) as u16,
        le(14..16) as u16,
    ))
}

/// What a device may take from the chain at `head`: the descriptors in order, and whether
/// the chain ended properly (its last descriptor without `NEXT`). A walk stops at an index
/// outside its table, an unreadable descriptor, a nested or malformed indirect table,
/// after as many descriptors as the table has (a loop), or where the lengths would pass
/// `u32::MAX` (the length of a whole chain is a `u32` on the used ring).
fn model_walk(mem: &GuestMemory, table: u64, size: u16, head: u16) -> (Vec<RawDesc>, bool) {
    let (mut table, mut size, mut ttl, mut index) = (table, size, size, head);
    let mut indirect = false;
    let mut total = 0u64;
    let mut out = Vec::new();
    loop {
        if ttl == 0 || index >= size {
            return (out, false);
        }
        let Some(d) = read_desc(mem, table, index) else {
            return (out, false);
        };
        let (addr, len, flags, next) = d;
        if flags & INDIRECT != 0 {
            if indirect || len % 16 != 0 || len / 16 > u32::from(u16::MAX) {
                return (out, false);
            }
            (table, size, ttl, index, indirect) =
                (addr, (len / 16) as u16, (len / 16) as u16, 0, true);
            continue;
        }
        total += u64::from(len);
        if total > u64::from(u32::MAX) {
            return (out, false);
        }
        out.push(d);
        if flags & NEXT == 0 {
            return (out, true);
        }
        index = next;
        ttl -= 1;
    }
}

/// What [`check_chain`] must answer for the model's walk.
fn model_check(walk: &(Vec<RawDesc>, bool), writable: Option<bool>) -> Result<(), ChainShapeError> {
    let (descs, complete) = walk;
    for (i, d) in descs.iter().enumerate() {
        if writable.is_some_and(|w| (d.2 & W != 0) != w) {
            return Err(ChainShapeError::Direction(i));
        }
    }
    if descs.is_empty() || !complete {
        return Err(ChainShapeError::Broken);
    }
    Ok(())
}

/// A queue size, its table, an indirect table, the heads the driver publishes and the
/// direction a device wants.
#[allow(clippy::type_complexity)]
fn queue_case() -> impl Strategy<Value = (u16, Vec<RawDesc>, Vec<RawDesc>, Vec<u16>, Option<bool>)>
{
    prop::sample::select(vec![1u16, 2, 4, 8, 16, 32]).prop_flat_map(|size| {
        let addr = || guest_addr(0x1_0000, MEM_SIZE, MEM_SIZE, vec![INDIRECT_AT, 0]);
        (
            Just(size),
            prop::collection::vec(raw_desc(addr(), size), usize::from(size)),
            prop::collection::vec(raw_desc(addr(), 20), 0..20),
            prop::collection::vec(desc_next(size), 1..4),
            any::<Option<bool>>(),
        )
    })
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the tables hold, `check_chain` answers what the specification says, and
    /// the chain a device walks is bounded.
    #[test]
    fn fuzz_chain_shape_matches_the_spec(
        (size, table, indirect, heads, writable) in queue_case()
    ) {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let mut dq = DriverQueue::new(&mem, 0, size);
        let mut q = dq.create_queue();
        write_table(&mem, dq.desc_table_addr().0, &table);
        write_table(&mem, INDIRECT_AT, &indirect);
        // The available ring holds at most `size` entries.
        let heads = &heads[..heads.len().min(usize::from(size))];
        for &head in heads {
            dq.push_avail(head);
        }
        for &head in heads {
            let chain = q.pop_descriptor_chain(&mem).expect("a published head");
            prop_assert_eq!(chain.head_index(), head);
            let walk = model_walk(&mem, dq.desc_table_addr().0, size, head);
            let yielded: Vec<RawDesc> = chain
                .clone()
                .take(usize::from(size) + usize::from(u16::MAX) + 1)
                .map(|d| (d.addr().0, d.len(), d.flags(), d.next()))
                .collect();
            prop_assert_eq!(&yielded, &walk.0);
            prop_assert_eq!(check_chain(&chain, writable), model_check(&walk, writable));
            // Returning any head, even one outside the queue, never panics.
            add_used(&LOG, &mut q, &mem, head, u32::MAX);
        }
        let irq = IrqTrigger::new().unwrap();
        signal_used(&LOG, &mut q, &mem, &irq);
    }

    /// A chain whose lengths add up past `u32::MAX` is refused, however it is split.
    #[test]
    fn fuzz_chain_longer_than_u32_is_refused(
        // Any two of these add up past `u32::MAX`.
        lens in prop::collection::vec((u32::MAX / 2 + 1)..=u32::MAX, 2..8),
        flags in prop::collection::vec(prop::bool::ANY, 8),
    ) {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let mut dq = DriverQueue::new(&mem, 0, 8);
        let mut q = dq.create_queue();
        let descs: Vec<(u64, u32, u16)> = lens
            .iter()
            .zip(&flags)
            .map(|(&len, &w)| (0x1_0000, len, if w { W } else { 0 }))
            .collect();
        dq.add(&descs);
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        prop_assert_eq!(check_chain(&chain, None), Err(ChainShapeError::Broken));
    }
}

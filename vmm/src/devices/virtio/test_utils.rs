//! Test support shared by the tests of the virtio devices: the unit tests, and the
//! integration tests through the `test-utils` feature.
//!
//! [`DriverQueue`] plays the guest driver's half of one split virtqueue: it lays out the
//! descriptor table and the available and used rings in guest memory, writes descriptor
//! chains and publishes them on the available ring, and reads back what the device put on
//! the used ring. It keeps track of which descriptors each published chain holds: they
//! become free again only when the device returns the chain, and a device that returns a
//! head it was never given fails the test.

use std::collections::HashMap;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::GuestMemory;

/// Descriptor flags for a device-readable buffer.
pub const R: u16 = 0;
/// Descriptor flags for a device-writable buffer.
pub const W: u16 = VRING_DESC_F_WRITE as u16;
/// `VRING_DESC_F_NEXT`, for tests that write descriptor tables by hand (indirect chains).
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;

/// Size of one split-ring descriptor.
const DESC_SIZE: u64 = 16;

/// Rounds `n` up to a whole number of 4 KiB pages.
fn page_align(n: u64) -> u64 {
    n.next_multiple_of(0x1000)
}

/// The driver side of one split virtqueue in guest memory.
pub struct DriverQueue {
    mem: GuestMemory,
    size: u16,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    /// Where [`DriverQueue::add_buffers`] puts descriptor `i`'s buffer: `base + i * size`.
    slots: Option<(u64, u64)>,
    /// Descriptor indices not in any published chain (taken from the end).
    free: Vec<u16>,
    /// Published chains not returned yet: head → the chain's descriptor indices.
    chains: HashMap<u16, Vec<u16>>,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverQueue {
    /// A queue of `size` entries at `base`: the descriptor table, then the available ring,
    /// then the used ring, each starting on a page of its own. That memory is zeroed.
    pub fn new(mem: &GuestMemory, base: u64, size: u16) -> Self {
        let size64 = u64::from(size);
        let avail_ring = base + page_align(DESC_SIZE * size64);
        // flags, idx, ring[size], used_event
        let used_ring = avail_ring + page_align(6 + 2 * size64);
        // flags, idx, ring[size] of (id, len), avail_event
        let end = used_ring + page_align(6 + 8 * size64);
        mem.write_slice(&vec![0u8; (end - base) as usize], GuestAddress(base))
            .unwrap();
        Self {
            mem: mem.clone(),
            size,
            desc_table: base,
            avail_ring,
            used_ring,
            slots: None,
            free: (0..size).rev().collect(),
            chains: HashMap::new(),
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Gives every descriptor index `i` its own buffer of `slot_size` bytes at
    /// `base + i * slot_size`, where [`DriverQueue::add_buffers`] places the buffers.
    pub fn with_buffer_slots(mut self, base: u64, slot_size: u64) -> Self {
        self.slots = Some((base, slot_size));
        self
    }

    pub fn desc_table_addr(&self) -> GuestAddress {
        GuestAddress(self.desc_table)
    }

    pub fn avail_ring_addr(&self) -> GuestAddress {
        GuestAddress(self.avail_ring)
    }

    pub fn used_ring_addr(&self) -> GuestAddress {
        GuestAddress(self.used_ring)
    }

    /// The device's `Queue` for this layout, as the transport builds it from the driver's
    /// register writes: full size, ready, valid in guest memory.
    pub fn create_queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_desc_table_address(self.desc_table_addr())
            .unwrap();
        q.try_set_avail_ring_address(self.avail_ring_addr())
            .unwrap();
        q.try_set_used_ring_address(self.used_ring_addr()).unwrap();
        q.set_ready(true);
        assert!(q.is_valid(&self.mem));
        q
    }

    /// Guest address of descriptor `index`'s buffer slot (see
    /// [`DriverQueue::with_buffer_slots`]).
    pub fn slot(&self, index: u16) -> u64 {
        let (base, slot_size) = self.slots.expect("queue has no buffer slots");
        base + u64::from(index) * slot_size
    }

    /// Writes descriptor `index` of the table as given (no checks: tests use it to break
    /// chains).
    pub fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let desc = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        let at = self.desc_table + DESC_SIZE * u64::from(index);
        self.mem.write_obj(desc, GuestAddress(at)).unwrap();
    }

    /// Takes `n` free descriptor indices.
    fn alloc(&mut self, n: usize) -> Vec<u16> {
        assert!(n > 0, "a chain has at least one descriptor");
        assert!(self.free.len() >= n, "test driver out of descriptors");
        (0..n).map(|_| self.free.pop().unwrap()).collect()
    }

    /// Writes `descs` into the descriptors `idxs` and publishes the chain.
    fn publish(&mut self, idxs: Vec<u16>, descs: &[(u64, u32, u16, Option<u16>)]) {
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let (flags, next) = match next {
                Some(p) => (flags | NEXT, idxs.get(usize::from(p)).copied().unwrap_or(p)),
                None if i + 1 < descs.len() => (flags | NEXT, idxs[i + 1]),
                None => (flags, 0),
            };
            self.set_desc(idxs[i], addr, len, flags, next);
        }
        let head = idxs[0];
        self.chains.insert(head, idxs);
        self.push_avail(head);
    }

    /// Adds a chain and makes it available; returns its descriptor indices (the head
    /// first). Each descriptor is `(addr, len, flags, next)`: `next` is `None` for the
    /// following descriptor of the chain (or the end of the chain, for the last one), or
    /// `Some(p)` for the chain's descriptor at position `p` (loops), or, when the chain has
    /// no position `p`, table index `p` (a `next` that leaves the table).
    /// `VRING_DESC_F_NEXT` is set wherever a `next` follows.
    pub fn add_raw(&mut self, descs: &[(u64, u32, u16, Option<u16>)]) -> Vec<u16> {
        let idxs = self.alloc(descs.len());
        self.publish(idxs.clone(), descs);
        idxs
    }

    /// Adds a chain of `(addr, len, flags)` descriptors linked in order.
    pub fn add(&mut self, descs: &[(u64, u32, u16)]) -> Vec<u16> {
        let descs: Vec<_> = descs.iter().map(|&(a, l, f)| (a, l, f, None)).collect();
        self.add_raw(&descs)
    }

    /// Adds a chain of buffers, each `(len, writable)`, placed in the slots of their
    /// descriptors; `fill[i]` (if given) is written into buffer `i` first. Returns the
    /// descriptor indices.
    pub fn add_buffers(&mut self, bufs: &[(u32, bool)], fill: &[&[u8]]) -> Vec<u16> {
        let idxs = self.alloc(bufs.len());
        let descs: Vec<_> = bufs
            .iter()
            .zip(&idxs)
            .map(|(&(len, writable), &i)| (self.slot(i), len, if writable { W } else { R }, None))
            .collect();
        for (content, desc) in fill.iter().zip(&descs) {
            self.mem.write_slice(content, GuestAddress(desc.0)).unwrap();
        }
        self.publish(idxs.clone(), &descs);
        idxs
    }

    /// Publishes `head` on the available ring, whatever it is.
    pub fn push_avail(&mut self, head: u16) {
        let slot = self.avail_ring + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail_ring + 2))
            .unwrap();
    }

    /// Moves the available index by `n` without publishing anything (a broken driver;
    /// `n.wrapping_neg()` moves it back).
    pub fn skew_avail(&mut self, n: u16) {
        self.avail_idx = self.avail_idx.wrapping_add(n);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail_ring + 2))
            .unwrap();
    }

    /// The next entry the device added to the used ring, `(head, len)`; its descriptors
    /// are free again.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        let used_idx: u16 = self.mem.read_obj(GuestAddress(self.used_ring + 2)).unwrap();
        if used_idx == self.used_seen {
            return None;
        }
        let elem = self.used_ring + 4 + 8 * u64::from(self.used_seen % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        let chain = u16::try_from(id)
            .ok()
            .and_then(|head| Some((head, self.chains.remove(&head)?)));
        let Some((head, idxs)) = chain else {
            panic!("device returned descriptor {id}, not the head of a chain it was given");
        };
        self.free.extend(idxs);
        Some((head, len))
    }

    /// The entries the device added to the used ring since the last call: `(head, len)`.
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        std::iter::from_fn(|| self.pop_used()).collect()
    }

    /// Chains published and not returned yet.
    pub fn in_flight(&self) -> usize {
        self.chains.len()
    }
}

/// Support for the property-based fuzzing of the guest-facing parsers (the `fuzz_tests`
/// modules beside them; `cargo xtask fuzz` runs them at length): the proptest
/// configuration, and descriptors as a hostile driver writes them.
#[cfg(test)]
pub mod fuzz {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};
    use vm_memory::{Bytes, GuestAddress};

    use super::{DESC_SIZE, NEXT, W};
    use crate::devices::virtio::GuestMemory;

    /// `VRING_DESC_F_INDIRECT`.
    pub const INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;

    /// The configuration of every property: `RUNVM_FUZZ_CASES` cases (default 256, what
    /// `cargo test` runs), from the seed `RUNVM_FUZZ_SEED` (default fixed, so that
    /// `cargo test` is reproducible; `cargo xtask fuzz` gives a new one each round), and no
    /// regression files written into the source tree.
    pub fn config() -> Config {
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        Config {
            cases: env("RUNVM_FUZZ_CASES").map_or(256, |n: u64| n.min(u64::from(u32::MAX)) as u32),
            rng_seed: RngSeed::Fixed(env("RUNVM_FUZZ_SEED").unwrap_or(0x5eed_f022)),
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..Config::default()
        }
    }

    /// One descriptor as it sits in a table: `(addr, len, flags, next)`, nothing checked.
    pub type RawDesc = (u64, u32, u16, u16);

    /// Writes `descs` as a descriptor table at `at` (an indirect table, or a queue's).
    pub fn write_table(mem: &GuestMemory, at: u64, descs: &[RawDesc]) {
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let desc = virtio_queue::desc::RawDescriptor::from(
                virtio_queue::desc::split::Descriptor::new(addr, len, flags, next),
            );
            mem.write_obj(desc, GuestAddress(at + DESC_SIZE * i as u64))
                .unwrap();
        }
    }

    /// A guest address a hostile driver might write: inside `[lo, hi)`, one of `special`
    /// (the address of a table or buffer the test placed), straddling the end of guest
    /// memory (`mem_end`), or anything.
    pub fn guest_addr(lo: u64, hi: u64, mem_end: u64, special: Vec<u64>) -> BoxedStrategy<u64> {
        let special = if special.is_empty() {
            vec![lo]
        } else {
            special
        };
        prop_oneof![
            4 => lo..hi,
            2 => proptest::sample::select(special),
            1 => (mem_end - 64)..(mem_end + 64),
            1 => (u64::MAX - 64)..=u64::MAX,
            1 => any::<u64>(),
        ]
        .boxed()
    }

    /// A descriptor length: small, a multiple of a descriptor's size (indirect tables),
    /// near the `u32` bound (total-length overflows), or anything.
    pub fn desc_len() -> BoxedStrategy<u32> {
        prop_oneof![
            4 => 0u32..600,
            2 => (0u32..40).prop_map(|n| n * DESC_SIZE as u32),
            1 => (u32::MAX - 600)..=u32::MAX,
            1 => any::<u32>(),
        ]
        .boxed()
    }

    /// Descriptor flags: the meaningful bits (`NEXT`, `WRITE`, `INDIRECT`) in any mix, or
    /// anything.
    pub fn desc_flags() -> BoxedStrategy<u16> {
        prop_oneof![
            6 => (any::<bool>(), any::<bool>(), prop::bool::weighted(0.1)).prop_map(
                |(next, write, indirect)| {
                    (if next { NEXT } else { 0 })
                        | (if write { W } else { 0 })
                        | (if indirect { INDIRECT } else { 0 })
                }
            ),
            1 => any::<u16>(),
        ]
        .boxed()
    }

    /// A `next` index for a table of `size` entries: mostly inside it, sometimes just past
    /// it, sometimes anything.
    pub fn desc_next(size: u16) -> BoxedStrategy<u16> {
        prop_oneof![
            8 => 0..size.max(1),
            1 => size..size.saturating_add(4),
            1 => any::<u16>(),
        ]
        .boxed()
    }

    /// A descriptor of a table of `size` entries, its buffer address drawn from `addr`.
    pub fn raw_desc(addr: BoxedStrategy<u64>, size: u16) -> BoxedStrategy<RawDesc> {
        (addr, desc_len(), desc_flags(), desc_next(size)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::QueueOwnedT;

    use super::*;

    #[test]
    fn chains_cross_to_the_device_and_back() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut dq = DriverQueue::new(&mem, 0x1000, 4).with_buffer_slots(0x8000, 0x100);
        let mut q = dq.create_queue();
        let first = dq.add(&[(0x4000, 16, R), (0x5000, 32, W)]);
        let second = dq.add_buffers(&[(8, false)], &[b"contents"]);
        let third = dq.add_raw(&[(0x6000, 1, R, Some(9))]);
        assert_eq!(dq.in_flight(), 3);

        let chains: Vec<_> = q.iter(&mem).unwrap().collect();
        assert_eq!(chains.len(), 3);
        let descs: Vec<_> = chains[0].clone().collect();
        assert_eq!(chains[0].head_index(), first[0]);
        assert_eq!((descs[0].addr().0, descs[0].len()), (0x4000, 16));
        assert!(!descs[0].is_write_only() && descs[0].has_next());
        assert_eq!((descs[1].addr().0, descs[1].len()), (0x5000, 32));
        assert!(descs[1].is_write_only() && !descs[1].has_next());
        let desc = chains[1].clone().next().unwrap();
        assert_eq!(desc.addr().0, dq.slot(second[0]));
        let mut contents = [0u8; 8];
        mem.read_slice(&mut contents, desc.addr()).unwrap();
        assert_eq!(&contents, b"contents");
        // A `next` past the chain is a table index: 9 is outside this 4-entry table.
        let desc = chains[2].clone().next().unwrap();
        assert!(desc.has_next() && desc.next() == 9);

        q.add_used(&mem, second[0], 3).unwrap();
        q.add_used(&mem, first[0], 7).unwrap();
        assert_eq!(dq.take_used(), [(second[0], 3), (first[0], 7)]);
        assert_eq!(dq.in_flight(), 1);
        // The returned descriptors can be used again; the one in flight is not.
        let again = dq.add(&[(0, 0, R), (0, 0, R), (0, 0, R)]);
        assert!(!again.contains(&third[0]));
    }

    #[test]
    #[should_panic(expected = "not the head of a chain")]
    fn a_head_the_device_was_not_given_fails_the_test() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut dq = DriverQueue::new(&mem, 0, 4);
        let mut q = dq.create_queue();
        let chain = dq.add(&[(0x4000, 16, R), (0x5000, 32, W)]);
        q.add_used(&mem, chain[1], 0).unwrap();
        dq.take_used();
    }
}

//! What every device does with its queues the same way: checking the shape of a descriptor
//! chain the guest wrote, returning chains on the used ring, and interrupting the guest
//! when the driver wants to hear about them.
//!
//! All of it is guest-controlled: a broken chain or used ring is logged (within the
//! device's [`GuestLog`] budget) and the device goes on.

use log::error;
use virtio_queue::{DescriptorChain, Queue, QueueT};

use super::{GuestLog, GuestMemory, IrqTrigger, INTERRUPT_STATUS_USED_RING};

/// Why a descriptor chain's shape is unusable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainShapeError {
    #[error("descriptor chain is empty, loops, or leaves the descriptor table")]
    Broken,
    #[error("descriptor {0} has the wrong direction")]
    Direction(usize),
}

/// Walks a chain without touching its buffers. The chain must end properly: virtio-queue's
/// iterator stops silently at a loop (after queue-size descriptors), at an index outside
/// the table or at an unreadable indirect table, leaving the last descriptor it yields
/// with NEXT set. With `writable` = `Some(w)`, every descriptor must also be
/// device-writable (`w`) or device-readable (`!w`).
pub fn check_chain(
    chain: &DescriptorChain<&GuestMemory>,
    writable: Option<bool>,
) -> Result<(), ChainShapeError> {
    let mut count = 0usize;
    let mut last_has_next = false;
    for (i, desc) in chain.clone().enumerate() {
        if writable.is_some_and(|w| desc.is_write_only() != w) {
            return Err(ChainShapeError::Direction(i));
        }
        count += 1;
        last_has_next = desc.has_next();
    }
    if count == 0 || last_has_next {
        return Err(ChainShapeError::Broken);
    }
    Ok(())
}

/// Returns chain `head` to the driver on `queue`'s used ring, with `len` bytes written
/// into its buffers. A head outside the queue (the guest published it) cannot be returned;
/// that is logged.
pub fn add_used(log: &GuestLog, queue: &mut Queue, mem: &GuestMemory, head: u16, len: u32) {
    if let Err(e) = queue.add_used(mem, head, len) {
        log::log!(
            log.level(),
            "{}: cannot return descriptor {head} to the guest: {e}",
            log.device()
        );
    }
}

/// After chains went on `queue`'s used ring: interrupts the guest unless the driver said it
/// does not need to hear yet (`VIRTIO_RING_F_EVENT_IDX`; without it, always). When the
/// used event index cannot be read, it interrupts: a spurious interrupt costs little, a
/// missing one stalls the driver.
pub fn signal_used(log: &GuestLog, queue: &mut Queue, mem: &GuestMemory, irq: &IrqTrigger) {
    let needed = queue.needs_notification(mem).unwrap_or_else(|e| {
        log::log!(
            log.level(),
            "{}: cannot read the used event index: {e}",
            log.device()
        );
        true
    });
    if needed {
        if let Err(e) = irq.trigger(INTERRUPT_STATUS_USED_RING) {
            error!("{}: cannot interrupt the guest: {e}", log.device());
        }
    }
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::virtio::test_utils::{DriverQueue, R, W};

    static LOG: GuestLog = GuestLog::new("test");

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// Publishes `descs` as one chain and checks the chain the device sees.
    fn check(
        descs: &[(u64, u32, u16, Option<u16>)],
        writable: Option<bool>,
    ) -> Result<(), ChainShapeError> {
        let mem = mem();
        let mut dq = DriverQueue::new(&mem, 0, 16);
        let mut q = dq.create_queue();
        dq.add_raw(descs);
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        check_chain(&chain, writable)
    }

    #[test]
    fn chain_shapes() {
        let two = [(0x8000, 8, R, None), (0x9000, 8, W, None)];
        assert_eq!(check(&two, None), Ok(()));
        assert_eq!(check(&two, Some(false)), Err(ChainShapeError::Direction(1)));
        assert_eq!(check(&two, Some(true)), Err(ChainShapeError::Direction(0)));
        let readable = [(0x8000, 8, R, None), (0x9000, 8, R, None)];
        assert_eq!(check(&readable, Some(false)), Ok(()));
        let looping = [(0x8000, 8, R, None), (0x9000, 8, R, Some(0))];
        assert_eq!(check(&looping, None), Err(ChainShapeError::Broken));
        let leaves_table = [(0x8000, 8, R, Some(200))];
        assert_eq!(
            check(&leaves_table, Some(false)),
            Err(ChainShapeError::Broken)
        );
    }

    #[test]
    fn used_chains_interrupt_the_guest() {
        let mem = mem();
        let mut dq = DriverQueue::new(&mem, 0, 16);
        let mut q = dq.create_queue();
        let irq = IrqTrigger::new().unwrap();
        let head = dq.add(&[(0x8000, 8, W)])[0];
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        add_used(&LOG, &mut q, &mem, chain.head_index(), 5);
        // A head outside the queue is refused and logged; nothing reaches the used ring.
        add_used(&LOG, &mut q, &mem, 100, 5);
        signal_used(&LOG, &mut q, &mem, &irq);
        assert_eq!(dq.take_used(), [(head, 5)]);
        assert_eq!(irq.status(), INTERRUPT_STATUS_USED_RING);
        assert_eq!(irq.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn with_event_idx_the_driver_decides() {
        let mem = mem();
        let mut dq = DriverQueue::new(&mem, 0, 16);
        let mut q = dq.create_queue();
        q.set_event_idx(true);
        let irq = IrqTrigger::new().unwrap();
        // used_event (after the available ring's 16 entries) = 1: interrupt when the
        // second used entry goes in, not the first.
        let used_event = dq.avail_ring_addr().0 + 4 + 2 * 16;
        vm_memory::Bytes::write_obj(&mem, 1u16, GuestAddress(used_event)).unwrap();
        for _ in 0..2 {
            dq.add(&[(0x8000, 8, W)]);
        }
        let head = q.pop_descriptor_chain(&mem).unwrap().head_index();
        add_used(&LOG, &mut q, &mem, head, 0);
        signal_used(&LOG, &mut q, &mem, &irq);
        assert!(irq.eventfd().read().is_err(), "no interrupt yet");
        let head = q.pop_descriptor_chain(&mem).unwrap().head_index();
        add_used(&LOG, &mut q, &mem, head, 0);
        signal_used(&LOG, &mut q, &mem, &irq);
        assert_eq!(irq.eventfd().read().unwrap(), 1);
        assert_eq!(dq.take_used().len(), 2);
    }
}

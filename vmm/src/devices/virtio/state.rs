//! The virtio side that every device keeps the same way: what it offers and what the
//! driver acked, its queues' sizes and notification eventfds, and, between activation and
//! reset, the queues, guest memory and interrupt line it works with ([`Active`]).
//!
//! A device holds one [`VirtioState`], and the provided methods of
//! [`VirtioDevice`](super::VirtioDevice) answer the transport from it
//! ([`VirtioState::activate`] checks the queues the driver set up); what is particular to
//! the device (config space, backends, what activation and reset do to them) stays in the
//! device.

use std::sync::Arc;

use log::error;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, GuestLog, GuestMemory, IrqTrigger};

/// What a device works with between activation and reset.
pub struct Active {
    pub mem: GuestMemory,
    /// The queues the driver set up, one per queue size of the device, in order.
    pub queues: Vec<Queue>,
    pub irq: Arc<IrqTrigger>,
}

/// Features, queues and activation of one device.
pub struct VirtioState {
    log: &'static GuestLog,
    avail_features: u64,
    acked_features: u64,
    queue_sizes: Vec<u16>,
    queue_events: Vec<EventFd>,
    active: Option<Active>,
}

impl VirtioState {
    /// A device that offers `avail_features` and has one queue of each maximum size in
    /// `queue_sizes`; creates the queues' notification eventfds (non-blocking).
    pub fn new(
        log: &'static GuestLog,
        avail_features: u64,
        queue_sizes: &[u16],
    ) -> std::io::Result<Self> {
        let queue_events = queue_sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            log,
            avail_features,
            acked_features: 0,
            queue_sizes: queue_sizes.to_vec(),
            queue_events,
            active: None,
        })
    }

    /// How the device logs what its guest did.
    pub fn log(&self) -> &'static GuestLog {
        self.log
    }

    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// The features the driver acked (a subset of the offered ones).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Records the driver's features; what the device did not offer is dropped.
    pub fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    pub fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    /// One eventfd per queue, signalled when the driver notifies that queue.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// Takes the queues the driver set up: as many as the device has, each ready and
    /// inside guest memory. On success the device is active.
    pub fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        if queues.len() != self.queue_sizes.len() {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want: self.queue_sizes.len(),
            });
        }
        // `is_valid` also requires the queue to be ready.
        if let Some(i) = queues.iter().position(|q| !q.is_valid(&mem)) {
            return Err(ActivateError::InvalidQueue(i));
        }
        self.active = Some(Active { mem, queues, irq });
        Ok(())
    }

    /// Whether `activate` succeeded and no reset happened since.
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// The queues, memory and interrupt, if the device is active.
    pub fn active(&self) -> Option<&Active> {
        self.active.as_ref()
    }

    /// The queues, memory and interrupt, if the device is active.
    pub fn active_mut(&mut self) -> Option<&mut Active> {
        self.active.as_mut()
    }

    /// Back to the state before the driver came: inactive, no features acked. A kick
    /// still pending is left to the event loop, which drains it and finds no active queue
    /// to look at (or, after a new activation, a queue with nothing new): the reset runs on
    /// the vCPU thread that wrote `Status`, whose seccomp filter has no `read`.
    pub fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }

    /// Signals `queue`'s eventfd, as a driver notification would: the event loop has the
    /// device look at the queue again (to go on after a budget, or to pick up what the
    /// driver queued before activation).
    pub fn kick(&self, queue: usize) {
        if let Some(evt) = self.queue_events.get(queue) {
            // Fails only if the counter would overflow: a kick is pending anyway.
            let _ = evt.write(1);
        }
    }

    /// [`VirtioState::kick`] for every queue.
    pub fn kick_all(&self) {
        for queue in 0..self.queue_events.len() {
            self.kick(queue);
        }
    }

    /// Consumes the notifications pending on `queue`'s eventfd.
    pub fn take_kick(&self, queue: usize) {
        let Some(evt) = self.queue_events.get(queue) else {
            return;
        };
        if let Err(e) = evt.read() {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                error!(
                    "{}: cannot read queue {queue}'s eventfd: {e}",
                    self.log.device()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::virtio::test_utils::DriverQueue;

    static LOG: GuestLog = GuestLog::new("test");

    #[test]
    fn activation_checks_the_queues_and_reset_forgets_everything() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut state = VirtioState::new(&LOG, 0b1011, &[8, 8]).unwrap();
        assert_eq!(state.queue_max_sizes(), [8, 8]);
        assert_eq!(state.queue_events().len(), 2);
        state.set_acked_features(0b0110);
        assert_eq!(state.acked_features(), 0b0010);
        let irq = Arc::new(IrqTrigger::new().unwrap());

        let good = |base| DriverQueue::new(&mem, base, 8).create_queue();
        let err = state.activate(mem.clone(), vec![good(0)], irq.clone());
        assert!(matches!(
            err,
            Err(ActivateError::QueueCount { got: 1, want: 2 })
        ));
        let not_ready = Queue::new(8).unwrap();
        let err = state.activate(mem.clone(), vec![good(0), not_ready], irq.clone());
        assert!(matches!(err, Err(ActivateError::InvalidQueue(1))));
        let mut outside = good(0x1_0000);
        outside
            .try_set_used_ring_address(GuestAddress(0x10_0000))
            .unwrap();
        let err = state.activate(mem.clone(), vec![outside, good(0)], irq.clone());
        assert!(matches!(err, Err(ActivateError::InvalidQueue(0))));
        assert!(!state.is_activated());
        assert!(state.active_mut().is_none());

        state
            .activate(mem.clone(), vec![good(0), good(0x1_0000)], irq)
            .unwrap();
        assert!(state.is_activated());
        assert_eq!(state.active_mut().unwrap().queues.len(), 2);

        state.kick(1);
        state.kick(7);
        assert_eq!(state.queue_events()[1].read().unwrap(), 1);
        state.kick_all();
        state.reset();
        assert!(!state.is_activated());
        assert_eq!(state.acked_features(), 0);
        assert!(state.active_mut().is_none(), "a stale kick finds no queue");
        // The kicks are the event loop's to drain.
        state.take_kick(0);
        state.take_kick(1);
        assert!(state.queue_events().iter().all(|e| e.read().is_err()));
    }
}

//! The virtio-vsock device: [`VirtioDevice`] for the transport, `MutEventSubscriber` for
//! the event loop.
//!
//! Wiring (VMM core):
//! ```ignore
//! let vsock = Arc::new(Mutex::new(Vsock::new(guest_cid, uds_path)?));
//! // `init` registers the queue eventfds, the listening socket and a timeout timer.
//! event_manager.add_subscriber(vsock.clone());
//! // The same Arc goes to the virtio-mmio transport (as `Arc<Mutex<dyn VirtioDevice>>`),
//! // whose QueueNotify ioeventfds are `vsock.lock().unwrap().queue_events()`.
//! ```
//! Connection sockets are then added to and removed from the event manager by the device
//! itself as they come and go. Queue kicks before activation are ignored; `activate`
//! re-signals the queue eventfds so that anything the driver queued early is picked up.
//! `reset` drops every connection (at the next event) and returns true.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::super::{
    ActivateError, GuestMemory, IrqTrigger, VirtioDevice, INTERRUPT_STATUS_USED_RING, TYPE_VSOCK,
    VIRTIO_F_VERSION_1,
};
use super::muxer::*;
use super::packet::{read_tx_packet, PacketError, RxBuffer};
use super::{VsockError, EVQ_INDEX, MAX_PKT_PAYLOAD, NUM_QUEUES, QUEUE_SIZE, RXQ_INDEX, TXQ_INDEX};

/// Queues, memory and interrupt, once the driver has set the device up.
struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    irq: Arc<IrqTrigger>,
}

/// The virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    queue_sizes: [u16; NUM_QUEUES],
    queue_evts: Vec<EventFd>,
    acked_features: u64,
    active: Option<Active>,
    muxer: Muxer,
    /// Connections must be dropped, but fds can only leave epoll in `process`.
    reset_pending: bool,
    /// Payload scratch space (TX copies, RX reads).
    scratch: Vec<u8>,
}

impl Vsock {
    /// Creates the device with guest CID `guest_cid`, listening for host-initiated
    /// connections on the Unix socket `uds_path` (which must not exist; it is removed when
    /// the device is dropped). Guest-initiated connections to port P go to `<uds_path>_P`.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Vsock, VsockError> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let mut queue_evts = Vec::with_capacity(NUM_QUEUES);
        for _ in 0..NUM_QUEUES {
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd)?);
        }
        let muxer = Muxer::new(guest_cid, uds_path)?;
        Ok(Vsock {
            guest_cid,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            queue_evts,
            acked_features: 0,
            active: None,
            muxer,
            reset_pending: false,
            scratch: vec![0; MAX_PKT_PAYLOAD],
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The listening Unix socket's path.
    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// Number of live connections (for tests and diagnostics).
    pub fn num_connections(&self) -> usize {
        self.muxer.num_connections()
    }

    fn signal_used(irq: &IrqTrigger) {
        if let Err(e) = irq.trigger(INTERRUPT_STATUS_USED_RING) {
            error!("vsock: cannot raise interrupt: {e}");
        }
    }

    /// Processes the TX queue: every packet the driver made available, up to one queue's
    /// worth per call (the rest on a self-kick, so a flooding guest cannot hold the loop).
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[TXQ_INDEX];
        let budget = queue.size().max(1);
        let mut used = false;
        let mut exhausted = true;
        for _ in 0..budget {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                exhausted = false;
                break;
            };
            let head = chain.head_index();
            match read_tx_packet(mem, chain, &mut self.scratch) {
                Ok(hdr) => self.muxer.handle_guest_pkt(&hdr, &self.scratch),
                Err(PacketError::BadLen { hdr, len, avail }) => {
                    log::log!(
                        super::guest_log_level(),
                        "vsock: TX packet with bad length {len} ({avail} bytes available)"
                    );
                    self.muxer.reject_guest_pkt(&hdr);
                }
                Err(e) => log::log!(
                    super::guest_log_level(),
                    "vsock: dropping malformed TX packet: {e}"
                ),
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                error!("vsock: cannot return TX descriptor {head}: {e:?}");
            }
            used = true;
        }
        if exhausted {
            let _ = self.queue_evts[TXQ_INDEX].write(1);
        }
        if used {
            Self::signal_used(&active.irq);
        }
        // Make sure the scratch buffer keeps its full size for RX reads.
        self.scratch.resize(MAX_PKT_PAYLOAD, 0);
    }

    /// Fills RX buffers with whatever the muxer has for the guest.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[RXQ_INDEX];
        let budget = queue.size().max(1);
        let mut used = false;
        let mut exhausted = true;
        for _ in 0..budget {
            if !self.muxer.has_rx_work() {
                exhausted = false;
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                exhausted = false;
                break;
            };
            let head = chain.head_index();
            let used_len = match RxBuffer::from_chain(mem, chain) {
                Ok(mut buf) => {
                    let cap = buf.capacity().min(self.scratch.len());
                    match self.muxer.next_rx(&mut self.scratch[..cap]) {
                        Some(hdr) => {
                            let n = (hdr.len as usize).min(cap);
                            match buf.write(&hdr, &self.scratch[..n]) {
                                Ok(len) => len,
                                Err(e) => {
                                    log::log!(
                                        super::guest_log_level(),
                                        "vsock: cannot write RX packet: {e}"
                                    );
                                    // Its bytes are gone: the stream cannot continue.
                                    self.muxer.rx_write_failed(&hdr);
                                    0
                                }
                            }
                        }
                        None if cap == 0 => {
                            // Data is waiting but this buffer cannot carry any: give it
                            // back empty rather than stall on it.
                            debug!("vsock: RX buffer without data space");
                            0
                        }
                        None => {
                            // Nothing to send after all; keep the buffer for later.
                            queue.go_to_previous_position();
                            exhausted = false;
                            break;
                        }
                    }
                }
                Err(e) => {
                    log::log!(super::guest_log_level(), "vsock: malformed RX buffer: {e}");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, used_len) {
                error!("vsock: cannot return RX descriptor {head}: {e:?}");
            }
            used = true;
        }
        if exhausted && self.muxer.has_rx_work() {
            let _ = self.queue_evts[RXQ_INDEX].write(1);
        }
        if used {
            Self::signal_used(&active.irq);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "vsock: ignoring config write of {} bytes at {offset}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        if queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want: NUM_QUEUES,
            });
        }
        if let Some(i) = queues.iter().position(|q| !q.is_valid(&mem)) {
            return Err(ActivateError::InvalidQueue(i));
        }
        self.active = Some(Active { mem, queues, irq });
        // Pick up anything the driver queued before DRIVER_OK.
        for evt in &self.queue_evts {
            let _ = evt.write(1);
        }
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.acked_features = 0;
        self.reset_pending = true;
        // Wake the event loop so that the connections are dropped promptly.
        let _ = self.queue_evts[EVQ_INDEX].write(1);
        true
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let data = match i {
                RXQ_INDEX => DATA_RXQ,
                TXQ_INDEX => DATA_TXQ,
                _ => DATA_EVQ,
            };
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                error!("vsock: cannot register queue {i} eventfd: {e:?}");
            }
        }
        self.muxer.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.reset_pending {
            self.reset_pending = false;
            self.muxer.reset();
        }
        let evset = events.event_set();
        match events.data() {
            DATA_RXQ => {
                let _ = self.queue_evts[RXQ_INDEX].read();
            }
            DATA_TXQ => {
                let _ = self.queue_evts[TXQ_INDEX].read();
                self.process_tx();
            }
            DATA_EVQ => {
                let _ = self.queue_evts[EVQ_INDEX].read();
            }
            DATA_LISTENER => self.muxer.handle_listener(),
            DATA_TIMER => self.muxer.handle_timer(),
            DATA_CLIENT => self.muxer.handle_client(events.fd()),
            DATA_CONN => self.muxer.handle_conn(events.fd(), evset),
            other => warn!("vsock: unexpected event data {other}"),
        }
        self.process_rx();
        self.muxer.sync(ops);
    }
}

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
//! `reset` drops every connection (at the next event) and returns true. Feature
//! negotiation, the queues and their eventfds, activation and reset themselves are the
//! shared [`VirtioState`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::super::queue::{add_used, signal_used};
use super::super::state::{Active, VirtioState};
use super::super::{
    read_config_space, ActivateError, GuestMemory, IrqTrigger, VirtioDevice, TYPE_VSOCK,
    VIRTIO_F_VERSION_1,
};
use super::muxer::*;
use super::packet::{read_tx_packet, PacketError, RxBuffer};
use super::{
    VsockError, EVQ_INDEX, GUEST_LOG, MAX_PKT_PAYLOAD, NUM_QUEUES, QUEUE_SIZE, RXQ_INDEX, TXQ_INDEX,
};

/// The virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    virtio: VirtioState,
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
        let virtio = VirtioState::new(&GUEST_LOG, VIRTIO_F_VERSION_1, &[QUEUE_SIZE; NUM_QUEUES])
            .map_err(VsockError::EventFd)?;
        let muxer = Muxer::new(guest_cid, uds_path)?;
        Ok(Vsock {
            guest_cid,
            virtio,
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

    /// Processes the TX queue: every packet the driver made available, up to one queue's
    /// worth per call (the rest on a self-kick, so a flooding guest cannot hold the loop).
    fn process_tx(&mut self) {
        let Some(Active { mem, queues, irq }) = self.virtio.active_mut() else {
            return;
        };
        let queue = &mut queues[TXQ_INDEX];
        let budget = queue.size().max(1);
        let mut used = false;
        let mut exhausted = true;
        for _ in 0..budget {
            let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
                exhausted = false;
                break;
            };
            let head = chain.head_index();
            match read_tx_packet(mem, chain, &mut self.scratch) {
                Ok(hdr) => self.muxer.handle_guest_pkt(&hdr, &self.scratch),
                Err(PacketError::BadLen { hdr, len, avail }) => {
                    log::log!(
                        GUEST_LOG.level(),
                        "vsock: TX packet with bad length {len} ({avail} bytes available)"
                    );
                    self.muxer.reject_guest_pkt(&hdr);
                }
                Err(e) => log::log!(
                    GUEST_LOG.level(),
                    "vsock: dropping malformed TX packet: {e}"
                ),
            }
            add_used(&GUEST_LOG, queue, mem, head, 0);
            used = true;
        }
        if used {
            signal_used(&GUEST_LOG, queue, mem, irq);
        }
        if exhausted {
            // More may be waiting: go on at the next turn of the event loop.
            self.virtio.kick(TXQ_INDEX);
        }
        // Make sure the scratch buffer keeps its full size for RX reads.
        self.scratch.resize(MAX_PKT_PAYLOAD, 0);
    }

    /// Fills RX buffers with whatever the muxer has for the guest.
    fn process_rx(&mut self) {
        let Some(Active { mem, queues, irq }) = self.virtio.active_mut() else {
            return;
        };
        let queue = &mut queues[RXQ_INDEX];
        let budget = queue.size().max(1);
        let mut used = false;
        let mut exhausted = true;
        for _ in 0..budget {
            if !self.muxer.has_rx_work() {
                exhausted = false;
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
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
                                        GUEST_LOG.level(),
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
                    log::log!(GUEST_LOG.level(), "vsock: malformed RX buffer: {e}");
                    0
                }
            };
            add_used(&GUEST_LOG, queue, mem, head, used_len);
            used = true;
        }
        if used {
            signal_used(&GUEST_LOG, queue, mem, irq);
        }
        if exhausted && self.muxer.has_rx_work() {
            // More may be waiting: go on at the next turn of the event loop.
            self.virtio.kick(RXQ_INDEX);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn state(&self) -> &VirtioState {
        &self.virtio
    }

    fn state_mut(&mut self) -> &mut VirtioState {
        &mut self.virtio
    }

    /// Config space: `le64 guest_cid` (virtio 1.x, 5.10.4).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        self.virtio.activate(mem, queues, irq)?;
        // Pick up anything the driver queued before DRIVER_OK.
        self.virtio.kick_all();
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.virtio.reset();
        self.reset_pending = true;
        // Wake the event loop so that the connections are dropped promptly.
        self.virtio.kick(EVQ_INDEX);
        true
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.virtio.queue_events().iter().enumerate() {
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
            DATA_RXQ => self.virtio.take_kick(RXQ_INDEX),
            DATA_TXQ => {
                self.virtio.take_kick(TXQ_INDEX);
                self.process_tx();
            }
            DATA_EVQ => self.virtio.take_kick(EVQ_INDEX),
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

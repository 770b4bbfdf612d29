//! The virtio-net device: what the transport and the event loop see.
//!
//! Owns the virtio side of one network interface: the features it offers (checksum and TSO
//! offloads, MAC, MTU, indirect descriptors, event index), the config space (MAC, MTU),
//! what activation does to the TAP (tell it the offloads the guest takes) and reset to the
//! frame in flight, and the handlers that move frames (feature negotiation, the RX and TX
//! queues and their eventfds, activation and reset themselves are the shared
//! [`VirtioState`]):
//! - TX: each chain the guest makes available is checked (readable descriptors only, inside
//!   guest memory, not looping, at most [`MAX_BUFFER_LEN`] bytes), copied out once, its
//!   vnet header checked ([`super::header`]), and written to the TAP as one frame. A bad
//!   chain or header drops that frame; the chain is returned and the device goes on.
//! - RX: frames are read from the TAP (edge-triggered: until it would block) into the next
//!   available chain, which must be writable and large enough; a frame waits in the device
//!   while the guest has no buffer, and the TAP is read again once the guest adds some.
//!
//! Both directions move at most [`FRAMES_PER_EVENT`] frames per event and then re-signal
//! themselves, so one busy interface cannot starve the other devices of the event loop.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error, warn};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};

use super::header::VnetHeader;
use super::tap::{Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
use super::{
    NetConfig, NetError, FRAMES_PER_EVENT, GUEST_LOG, MAX_BUFFER_LEN, NUM_QUEUES, QUEUE_SIZE,
    RXQ_INDEX, TXQ_INDEX, VNET_HDR_LEN,
};
use crate::devices::virtio::queue::{add_used, check_chain, signal_used, ChainShapeError};
use crate::devices::virtio::state::{Active, VirtioState};
use crate::devices::virtio::{
    read_config_space, ActivateError, GuestMemory, IrqTrigger, VirtioDevice, TYPE_NET,
    VIRTIO_F_VERSION_1,
};

/// Config space: `u8 mac[6]; le16 status; le16 max_virtqueue_pairs; le16 mtu`.
const CONFIG_LEN: usize = 12;

/// Event data of the device's descriptors.
const DATA_RXQ: u32 = 0;
const DATA_TXQ: u32 = 1;
const DATA_TAP: u32 = 2;

/// Frame counters (for tests and diagnostics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub tx_frames: u64,
    pub tx_dropped: u64,
    pub rx_frames: u64,
    pub rx_dropped: u64,
}

/// Why a chain could not carry a frame.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error(transparent)]
    Shape(#[from] ChainShapeError),
    #[error("descriptor outside guest memory: {0}")]
    Memory(#[source] virtio_queue::Error),
    #[error("chain holds {0} bytes, more than a frame can be")]
    TooLong(usize),
    #[error("guest memory access failed: {0}")]
    Access(#[source] io::Error),
    #[error("frame of {frame} bytes does not fit the {capacity}-byte buffer")]
    TooSmall { frame: usize, capacity: usize },
}

/// Copies a TX chain (vnet header and frame; device-readable descriptors only) into `buf`;
/// returns its length.
fn read_tx_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    check_chain(&chain, Some(false))?;
    let mut reader: Reader<'_, ()> = Reader::new(mem, chain).map_err(ChainError::Memory)?;
    let len = reader.available_bytes();
    if len > buf.len() {
        return Err(ChainError::TooLong(len));
    }
    io::Read::read_exact(&mut reader, &mut buf[..len]).map_err(ChainError::Access)?;
    Ok(len)
}

/// Writes `frame` (vnet header included) into an RX chain (device-writable descriptors
/// only); returns the used length.
fn write_rx_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    frame: &[u8],
) -> Result<u32, ChainError> {
    check_chain(&chain, Some(true))?;
    let mut writer: Writer<'_, ()> = Writer::new(mem, chain).map_err(ChainError::Memory)?;
    let capacity = writer.available_bytes();
    if frame.len() > capacity {
        return Err(ChainError::TooSmall {
            frame: frame.len(),
            capacity,
        });
    }
    io::Write::write_all(&mut writer, frame).map_err(ChainError::Access)?;
    // frame.len() <= MAX_BUFFER_LEN, far below u32::MAX.
    Ok(frame.len() as u32)
}

/// A virtio-net device with one RX and one TX queue.
pub struct Net {
    tap: Tap,
    config: [u8; CONFIG_LEN],
    virtio: VirtioState,
    /// The frame being received: read from the TAP, not yet in a guest buffer.
    rx_buf: Vec<u8>,
    rx_pending: Option<usize>,
    /// The TAP may have frames (edge-triggered: set on an event, cleared at `WouldBlock`).
    tap_readable: bool,
    tx_buf: Vec<u8>,
    stats: NetStats,
}

impl Net {
    /// A device for the TAP and addresses in `config`.
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        if config.mtu < 68 {
            return Err(NetError::Mtu(config.mtu));
        }
        let tap = Tap::new(config.tap)?;
        let bit = |b: u32| 1u64 << b;
        let avail_features = VIRTIO_F_VERSION_1
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_MTU)
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_TSO6)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6)
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | bit(VIRTIO_RING_F_EVENT_IDX);
        let mut cfg = [0u8; CONFIG_LEN];
        cfg[..6].copy_from_slice(&config.mac);
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        cfg[10..12].copy_from_slice(&config.mtu.to_le_bytes());
        let virtio = VirtioState::new(&GUEST_LOG, avail_features, &[QUEUE_SIZE; NUM_QUEUES])
            .map_err(NetError::EventFd)?;
        Ok(Self {
            tap,
            config: cfg,
            virtio,
            rx_buf: vec![0; MAX_BUFFER_LEN],
            rx_pending: None,
            tap_readable: true,
            tx_buf: vec![0; MAX_BUFFER_LEN],
            stats: NetStats::default(),
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.config[..6]);
        m
    }

    /// The features the driver acked.
    pub fn acked_features(&self) -> u64 {
        self.virtio.acked_features()
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Sends the frames the guest made available (up to [`FRAMES_PER_EVENT`]).
    pub fn process_tx(&mut self) {
        let acked_features = self.virtio.acked_features();
        let Some(Active { mem, queues, irq }) = self.virtio.active_mut() else {
            return;
        };
        let queue = &mut queues[TXQ_INDEX];
        let mut used = false;
        let mut budget = FRAMES_PER_EVENT;
        // A broken ring can say "more available" forever: look again only once.
        let mut rechecked = false;
        loop {
            while budget > 0 {
                let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
                    break;
                };
                budget -= 1;
                let head = chain.head_index();
                match read_tx_chain(mem, chain, &mut self.tx_buf) {
                    Ok(len) => {
                        if send_frame(&self.tap, &self.tx_buf[..len], acked_features) {
                            self.stats.tx_frames += 1;
                        } else {
                            self.stats.tx_dropped += 1;
                        }
                    }
                    Err(e) => {
                        log::log!(GUEST_LOG.level(), "virtio-net: dropping a TX chain: {e}");
                        self.stats.tx_dropped += 1;
                    }
                }
                add_used(&GUEST_LOG, queue, mem, head, 0);
                used = true;
            }
            if budget == 0 {
                break;
            }
            // With EVENT_IDX this publishes where we are; true if more arrived meanwhile.
            match queue.enable_notification(&*mem) {
                Ok(true) if !rechecked => rechecked = true,
                Ok(_) => break,
                Err(e) => {
                    log::log!(GUEST_LOG.level(), "virtio-net: broken TX queue: {e}");
                    break;
                }
            }
        }
        if used {
            signal_used(&GUEST_LOG, queue, mem, irq);
        }
        if budget == 0 {
            // More may be waiting: go on at the next turn of the event loop.
            self.virtio.kick(TXQ_INDEX);
        }
    }

    /// The TAP became readable (its edge-triggered event): receive what it has.
    pub fn process_tap(&mut self) {
        self.tap_readable = true;
        self.process_rx();
    }

    /// Moves frames from the TAP into the guest's RX buffers (up to [`FRAMES_PER_EVENT`]).
    pub fn process_rx(&mut self) {
        let Some(Active { mem, queues, irq }) = self.virtio.active_mut() else {
            return;
        };
        let queue = &mut queues[RXQ_INDEX];
        let mut used = false;
        let mut budget = FRAMES_PER_EVENT;
        let mut rechecked = false;
        while budget > 0 {
            let len = match self.rx_pending {
                Some(len) => len,
                None if !self.tap_readable => break,
                None => match self.tap.read(&mut self.rx_buf) {
                    Ok(len) if len < VNET_HDR_LEN => {
                        debug!("virtio-net: {len}-byte read from the TAP; dropped");
                        self.stats.rx_dropped += 1;
                        budget -= 1;
                        continue;
                    }
                    Ok(len) => {
                        // virtio 1.x: num_buffers is 1 without VIRTIO_NET_F_MRG_RXBUF.
                        self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
                        self.rx_pending = Some(len);
                        len
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.tap_readable = false;
                        break;
                    }
                    Err(e) => {
                        error!("virtio-net: reading the TAP failed: {e}");
                        self.tap_readable = false;
                        break;
                    }
                },
            };
            let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
                // No buffer: ask to be kicked when the guest adds one (and look once more,
                // in case it did in between).
                match queue.enable_notification(&*mem) {
                    Ok(true) if !rechecked => {
                        rechecked = true;
                        continue;
                    }
                    Ok(_) => break,
                    Err(e) => {
                        log::log!(GUEST_LOG.level(), "virtio-net: broken RX queue: {e}");
                        break;
                    }
                }
            };
            budget -= 1;
            let head = chain.head_index();
            match write_rx_chain(mem, chain, &self.rx_buf[..len]) {
                Ok(used_len) => {
                    self.rx_pending = None;
                    self.stats.rx_frames += 1;
                    add_used(&GUEST_LOG, queue, mem, head, used_len);
                    used = true;
                }
                Err(e @ ChainError::TooSmall { .. }) => {
                    // The buffer is fine, the frame is not for it: drop the frame, keep
                    // the buffer for the next one.
                    log::log!(
                        GUEST_LOG.level(),
                        "virtio-net: dropping a received frame: {e}"
                    );
                    self.rx_pending = None;
                    self.stats.rx_dropped += 1;
                    queue.go_to_previous_position();
                }
                Err(e) => {
                    // A broken buffer: give it back unused, the frame waits for the next.
                    log::log!(GUEST_LOG.level(), "virtio-net: unusable RX chain: {e}");
                    add_used(&GUEST_LOG, queue, mem, head, 0);
                    used = true;
                }
            }
        }
        if used {
            signal_used(&GUEST_LOG, queue, mem, irq);
        }
        if budget == 0 && (self.rx_pending.is_some() || self.tap_readable) {
            // More may be waiting: go on at the next turn of the event loop.
            self.virtio.kick(RXQ_INDEX);
        }
    }
}

/// Checks a transmitted buffer's vnet header and writes the buffer to the TAP. Returns
/// whether the frame went out.
fn send_frame(tap: &Tap, buf: &[u8], acked: u64) -> bool {
    let checked =
        VnetHeader::from_bytes(buf).and_then(|h| h.check_tx(buf.len() - VNET_HDR_LEN, acked));
    if let Err(e) = checked {
        log::log!(GUEST_LOG.level(), "virtio-net: dropping a TX frame: {e}");
        return false;
    }
    match tap.write(buf) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            debug!("virtio-net: the TAP is full; TX frame dropped");
            false
        }
        Err(e) => {
            log::log!(
                GUEST_LOG.level(),
                "virtio-net: the TAP refused a TX frame: {e}"
            );
            false
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
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

    fn activate(
        &mut self,
        mem: GuestMemory,
        queues: Vec<Queue>,
        irq: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        self.virtio.activate(mem, queues, irq)?;
        let acked = self.virtio.acked_features();
        let has = |b: u32| acked & (1u64 << b) != 0;
        let mut offload = 0;
        if has(VIRTIO_NET_F_GUEST_CSUM) {
            offload |= TUN_F_CSUM;
            if has(VIRTIO_NET_F_GUEST_TSO4) {
                offload |= TUN_F_TSO4;
            }
            if has(VIRTIO_NET_F_GUEST_TSO6) {
                offload |= TUN_F_TSO6;
            }
        }
        if let Err(e) = self.tap.set_offload(offload) {
            // Not a TAP (tests), or an old kernel: frames come without offloads, which
            // the guest takes whatever it negotiated.
            warn!("virtio-net: cannot set the TAP's offloads {offload:#x}: {e}");
        }
        self.tap_readable = true;
        self.virtio.kick_all();
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.virtio.reset();
        self.rx_pending = None;
        true
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, data) in [(RXQ_INDEX, DATA_RXQ), (TXQ_INDEX, DATA_TXQ)] {
            let evt = &self.virtio.queue_events()[i];
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                error!("virtio-net: cannot register queue {i}'s eventfd: {e:?}");
            }
        }
        let tap_events = EventSet::IN | EventSet::EDGE_TRIGGERED;
        if let Err(e) = ops.add(Events::with_data(&self.tap.as_fd(), DATA_TAP, tap_events)) {
            error!("virtio-net: cannot register the TAP: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            DATA_RXQ => {
                self.virtio.take_kick(RXQ_INDEX);
                self.process_rx();
            }
            DATA_TXQ => {
                self.virtio.take_kick(TXQ_INDEX);
                self.process_tx();
            }
            DATA_TAP => self.process_tap(),
            other => warn!(
                "virtio-net: event with unknown data {other} on fd {}",
                events.fd()
            ),
        }
    }
}

impl AsFd for Net {
    /// The TAP.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tap.as_fd()
    }
}

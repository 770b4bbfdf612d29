//! The virtio-net device: what the transport and the event loop see.
//!
//! Owns the virtio side of one network interface: offered and acked features, the config
//! space (MAC, MTU), the RX and TX queues and their eventfds, activation (which tells the
//! TAP what offloads the guest takes) and reset, and the handlers that move frames:
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
use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error, warn};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};
use vmm_sys_util::eventfd::EventFd;

use super::header::VnetHeader;
use super::tap::{Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
use super::{
    guest_log_level, NetConfig, NetError, FRAMES_PER_EVENT, MAX_BUFFER_LEN, NUM_QUEUES, QUEUE_SIZE,
    RXQ_INDEX, TXQ_INDEX, VNET_HDR_LEN,
};
use crate::devices::virtio::{
    ActivateError, GuestMemory, IrqTrigger, VirtioDevice, INTERRUPT_STATUS_USED_RING, TYPE_NET,
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
    #[error("descriptor chain is empty, loops, or leaves the descriptor table")]
    Broken,
    #[error("descriptor {0} has the wrong direction")]
    Direction(usize),
    #[error("descriptor outside guest memory: {0}")]
    Memory(virtio_queue::Error),
    #[error("chain holds {0} bytes, more than a frame can be")]
    TooLong(usize),
    #[error("guest memory access failed: {0}")]
    Access(io::Error),
    #[error("frame of {frame} bytes does not fit the {capacity}-byte buffer")]
    TooSmall { frame: usize, capacity: usize },
}

/// Walks a chain without touching its buffers: all descriptors must go in one direction,
/// and the chain must end properly (virtio-queue's iterator stops silently at a loop, an
/// index outside the table or an unreadable indirect table, leaving NEXT set).
fn check_chain(chain: &DescriptorChain<&GuestMemory>, writable: bool) -> Result<(), ChainError> {
    let mut count = 0usize;
    let mut last_has_next = false;
    for (i, desc) in chain.clone().enumerate() {
        if desc.is_write_only() != writable {
            return Err(ChainError::Direction(i));
        }
        count += 1;
        last_has_next = desc.has_next();
    }
    if count == 0 || last_has_next {
        return Err(ChainError::Broken);
    }
    Ok(())
}

/// Copies a TX chain (vnet header and frame) into `buf`; returns its length.
fn read_tx_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    check_chain(&chain, false)?;
    let mut reader: Reader<'_, ()> = Reader::new(mem, chain).map_err(ChainError::Memory)?;
    let len = reader.available_bytes();
    if len > buf.len() {
        return Err(ChainError::TooLong(len));
    }
    io::Read::read_exact(&mut reader, &mut buf[..len]).map_err(ChainError::Access)?;
    Ok(len)
}

/// Writes `frame` (vnet header included) into an RX chain; returns the used length.
fn write_rx_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    frame: &[u8],
) -> Result<u32, ChainError> {
    check_chain(&chain, true)?;
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

/// Queues, memory and interrupt, once the driver has set the device up.
struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    irq: Arc<IrqTrigger>,
}

/// A virtio-net device with one RX and one TX queue.
pub struct Net {
    tap: Tap,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    queue_sizes: [u16; NUM_QUEUES],
    queue_evts: Vec<EventFd>,
    active: Option<Active>,
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
        let mut queue_evts = Vec::with_capacity(NUM_QUEUES);
        for _ in 0..NUM_QUEUES {
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventFd)?);
        }
        Ok(Self {
            tap,
            avail_features,
            acked_features: 0,
            config: cfg,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            queue_evts,
            active: None,
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
        self.acked_features
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn signal_used(irq: &IrqTrigger) {
        if let Err(e) = irq.trigger(INTERRUPT_STATUS_USED_RING) {
            error!("virtio-net: cannot interrupt the guest: {e}");
        }
    }

    /// Returns whether the guest must be interrupted for `queue` now.
    fn needs_irq(queue: &mut Queue, mem: &GuestMemory) -> bool {
        match queue.needs_notification(mem) {
            Ok(n) => n,
            Err(e) => {
                log::log!(
                    guest_log_level(),
                    "virtio-net: cannot read the used event: {e}"
                );
                true
            }
        }
    }

    /// Sends the frames the guest made available (up to [`FRAMES_PER_EVENT`]).
    pub fn process_tx(&mut self) {
        let Some(Active { mem, queues, irq }) = self.active.as_mut() else {
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
                        if send_frame(&self.tap, &self.tx_buf[..len], self.acked_features) {
                            self.stats.tx_frames += 1;
                        } else {
                            self.stats.tx_dropped += 1;
                        }
                    }
                    Err(e) => {
                        log::log!(guest_log_level(), "virtio-net: dropping a TX chain: {e}");
                        self.stats.tx_dropped += 1;
                    }
                }
                if let Err(e) = queue.add_used(&*mem, head, 0) {
                    error!("virtio-net: cannot return TX descriptor {head}: {e}");
                }
                used = true;
            }
            if budget == 0 {
                // More may be waiting: go on at the next turn of the event loop.
                let _ = self.queue_evts[TXQ_INDEX].write(1);
                break;
            }
            // With EVENT_IDX this publishes where we are; true if more arrived meanwhile.
            match queue.enable_notification(&*mem) {
                Ok(true) if !rechecked => rechecked = true,
                Ok(_) => break,
                Err(e) => {
                    log::log!(guest_log_level(), "virtio-net: broken TX queue: {e}");
                    break;
                }
            }
        }
        if used && Self::needs_irq(queue, mem) {
            Self::signal_used(irq);
        }
    }

    /// The TAP became readable (its edge-triggered event): receive what it has.
    pub fn process_tap(&mut self) {
        self.tap_readable = true;
        self.process_rx();
    }

    /// Moves frames from the TAP into the guest's RX buffers (up to [`FRAMES_PER_EVENT`]).
    pub fn process_rx(&mut self) {
        let Some(Active { mem, queues, irq }) = self.active.as_mut() else {
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
                        log::log!(guest_log_level(), "virtio-net: broken RX queue: {e}");
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
                    if let Err(e) = queue.add_used(&*mem, head, used_len) {
                        error!("virtio-net: cannot return RX descriptor {head}: {e}");
                    }
                    used = true;
                }
                Err(e @ ChainError::TooSmall { .. }) => {
                    // The buffer is fine, the frame is not for it: drop the frame, keep
                    // the buffer for the next one.
                    log::log!(
                        guest_log_level(),
                        "virtio-net: dropping a received frame: {e}"
                    );
                    self.rx_pending = None;
                    self.stats.rx_dropped += 1;
                    queue.go_to_previous_position();
                }
                Err(e) => {
                    // A broken buffer: give it back unused, the frame waits for the next.
                    log::log!(guest_log_level(), "virtio-net: unusable RX chain: {e}");
                    if let Err(e) = queue.add_used(&*mem, head, 0) {
                        error!("virtio-net: cannot return RX descriptor {head}: {e}");
                    }
                    used = true;
                }
            }
        }
        if budget == 0 && (self.rx_pending.is_some() || self.tap_readable) {
            let _ = self.queue_evts[RXQ_INDEX].write(1);
        }
        if used && Self::needs_irq(queue, mem) {
            Self::signal_used(irq);
        }
    }
}

/// Checks a transmitted buffer's vnet header and writes the buffer to the TAP. Returns
/// whether the frame went out.
fn send_frame(tap: &Tap, buf: &[u8], acked: u64) -> bool {
    let checked =
        VnetHeader::from_bytes(buf).and_then(|h| h.check_tx(buf.len() - VNET_HDR_LEN, acked));
    if let Err(e) = checked {
        log::log!(guest_log_level(), "virtio-net: dropping a TX frame: {e}");
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
                guest_log_level(),
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

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "virtio-net: {}-byte write to read-only config space at {offset:#x}; ignored",
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
        let has = |b: u32| self.acked_features & (1u64 << b) != 0;
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
        self.active = Some(Active { mem, queues, irq });
        self.tap_readable = true;
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
        self.rx_pending = None;
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        true
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, data) in [(RXQ_INDEX, DATA_RXQ), (TXQ_INDEX, DATA_TXQ)] {
            if let Err(e) = ops.add(Events::with_data(&self.queue_evts[i], data, EventSet::IN)) {
                error!("virtio-net: cannot register queue {i}'s eventfd: {e:?}");
            }
        }
        let tap_events = EventSet::IN | EventSet::EDGE_TRIGGERED;
        if let Err(e) = ops.add(Events::with_data(&self.tap, DATA_TAP, tap_events)) {
            error!("virtio-net: cannot register the TAP: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            DATA_RXQ => {
                let _ = self.queue_evts[RXQ_INDEX].read();
                self.process_rx();
            }
            DATA_TXQ => {
                let _ = self.queue_evts[TXQ_INDEX].read();
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

impl AsRawFd for Net {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.tap.as_raw_fd()
    }
}

//! Tests of the virtio-net device against a mock driver and a fake TAP (a datagram socket
//! pair keeps frame boundaries as a TAP does): frames both ways, and guest-made garbage
//! (chains outside memory, in the wrong direction, looping, too long or too short, bad
//! headers) that must drop a frame and leave the device working.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MAC};
use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::header::VnetHeader;
use super::*;
use crate::devices::virtio::test_utils::{DriverQueue, NEXT, R, W};
use crate::devices::virtio::{ActivateError, GuestMemory, IrqTrigger, VirtioDevice, TYPE_NET};

const MEM_SIZE: u64 = 0x100_0000;
const QSIZE: u16 = 16;
const RXQ_BASE: u64 = 0;
const TXQ_BASE: u64 = 0x1_0000;
const BUF: u64 = 0x10_0000;
const INDIRECT: u64 = 0x80_0000;
const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];

fn mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// One of the device's queues, driver side, of `QSIZE` entries at `base`.
fn driver_queue(mem: &GuestMemory, base: u64) -> DriverQueue {
    DriverQueue::new(mem, base, QSIZE)
}

struct Bed<'a> {
    mem: &'a GuestMemory,
    net: Net,
    rx: DriverQueue,
    tx: DriverQueue,
    /// The other end of the fake TAP: what the device writes, the host network sends.
    peer: UnixDatagram,
    irq: Arc<IrqTrigger>,
}

fn fake_tap() -> (OwnedFd, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    (OwnedFd::from(a), b)
}

fn net(tap: OwnedFd) -> Net {
    Net::new(NetConfig {
        tap,
        mac: MAC,
        mtu: 1500,
    })
    .unwrap()
}

impl<'a> Bed<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let (tap, peer) = fake_tap();
        let mut net = net(tap);
        net.set_acked_features(net.avail_features());
        let rx = driver_queue(mem, RXQ_BASE);
        let tx = driver_queue(mem, TXQ_BASE);
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let queues: Vec<Queue> = vec![rx.create_queue(), tx.create_queue()];
        net.activate(mem.clone(), queues, irq.clone()).unwrap();
        Self {
            mem,
            net,
            rx,
            tx,
            peer,
            irq,
        }
    }

    /// Puts `frame` (vnet header included) at `addr` in guest memory.
    fn put(&self, addr: u64, frame: &[u8]) {
        self.mem.write_slice(frame, GuestAddress(addr)).unwrap();
    }

    fn peer_frames(&self) -> Vec<Vec<u8>> {
        let mut out = vec![];
        let mut b = vec![0u8; MAX_BUFFER_LEN + 16];
        while let Ok(n) = self.peer.recv(&mut b) {
            out.push(b[..n].to_vec());
        }
        out
    }

    fn guest_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    /// A good frame goes out, and a good buffer takes a frame: the device still works.
    fn assert_works(&mut self) {
        let f = frame(VnetHeader::default(), 60, 0x77);
        self.put(BUF + 0x8000, &f);
        self.tx.add(&[(BUF + 0x8000, f.len() as u32, R)]);
        self.net.process_tx();
        assert_eq!(self.peer_frames(), vec![f.clone()], "TX still works");
        assert_eq!(self.tx.take_used().len(), 1);
        self.peer.send(&f).unwrap();
        self.rx.add(&[(BUF + 0xa000, 2048, W)]);
        self.net.process_tap();
        let used = self.rx.take_used();
        assert_eq!(used.len(), 1, "RX still works");
        assert_eq!(used[0].1 as usize, f.len());
    }
}

/// The header of a TCP/IPv4 TSO frame with a partial checksum (NEEDS_CSUM, GSO_TCPV4).
fn tso_header() -> VnetHeader {
    VnetHeader {
        flags: 1,
        gso_type: 1,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    }
}

/// A frame: the vnet header then `len` bytes of `fill` (the first 14 an Ethernet header).
fn frame(h: VnetHeader, len: usize, fill: u8) -> Vec<u8> {
    let mut f = h.to_bytes().to_vec();
    f.extend(std::iter::repeat_n(fill, len));
    f
}

#[test]
fn features_and_config_space() {
    let (tap, _peer) = fake_tap();
    let n = net(tap);
    assert_eq!(n.device_type(), TYPE_NET);
    assert_eq!(n.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_ne!(n.avail_features() & (1 << VIRTIO_NET_F_MAC), 0);
    let mut mac = [0u8; 6];
    n.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    let mut mtu = [0u8; 2];
    n.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 1500);
    let mut past = [0xffu8; 4];
    n.read_config(11, &mut past);
    assert_eq!(past, [5, 0, 0, 0]);
    n.read_config(u64::MAX, &mut past);
    assert_eq!(past, [0; 4]);
    let (tap, _peer) = fake_tap();
    assert!(matches!(
        Net::new(NetConfig {
            tap,
            mac: MAC,
            mtu: 10
        }),
        Err(NetError::Mtu(10))
    ));
}

#[test]
fn transmits_frames_with_any_descriptor_layout() {
    let m = mem();
    let mut b = Bed::new(&m);
    // Header and frame in one descriptor.
    let f1 = frame(VnetHeader::default(), 100, 1);
    b.put(BUF, &f1);
    b.tx.add(&[(BUF, f1.len() as u32, R)]);
    // Header, then the frame split over two descriptors.
    let f2 = frame(VnetHeader::default(), 3000, 2);
    b.put(BUF + 0x1000, &f2[..12]);
    b.put(BUF + 0x2000, &f2[12..1000]);
    b.put(BUF + 0x3000, &f2[1000..]);
    b.tx.add(&[
        (BUF + 0x1000, 12, R),
        (BUF + 0x2000, 988, R),
        (BUF + 0x3000, (f2.len() - 1000) as u32, R),
    ]);
    // A TSO frame with a partial checksum (both negotiated).
    let tso = tso_header();
    let f3 = frame(tso, 60_000, 3);
    b.put(BUF + 0x10_000, &f3);
    b.tx.add(&[(BUF + 0x10_000, f3.len() as u32, R)]);
    b.net.process_tx();
    assert_eq!(b.peer_frames(), vec![f1, f2, f3]);
    assert_eq!(
        b.tx.take_used().iter().map(|u| u.1).collect::<Vec<_>>(),
        [0, 0, 0]
    );
    assert_eq!(
        b.irq.eventfd().read().unwrap(),
        1,
        "one interrupt for the batch"
    );
    assert_eq!(b.net.stats().tx_frames, 3);
}

#[test]
fn receives_frames_and_sets_num_buffers() {
    let m = mem();
    let mut b = Bed::new(&m);
    let f = frame(
        VnetHeader {
            num_buffers: 0x5555,
            ..Default::default()
        },
        1400,
        9,
    );
    b.peer.send(&f).unwrap();
    // A buffer split in two descriptors.
    b.rx.add(&[(BUF, 100, W), (BUF + 0x1000, 4000, W)]);
    b.net.process_tap();
    assert_eq!(b.rx.take_used(), vec![(0, f.len() as u32)]);
    let mut want = f.clone();
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    let mut got = b.guest_bytes(BUF, 100);
    got.extend(b.guest_bytes(BUF + 0x1000, f.len() - 100));
    assert_eq!(got, want);
    assert_eq!(b.irq.eventfd().read().unwrap(), 1);
}

#[test]
fn a_frame_waits_for_a_buffer_and_goes_in_when_one_comes() {
    let m = mem();
    let mut b = Bed::new(&m);
    let f = frame(VnetHeader::default(), 200, 4);
    b.peer.send(&f).unwrap();
    b.net.process_tap();
    assert!(b.rx.take_used().is_empty());
    // The guest adds a buffer and kicks the RX queue.
    b.rx.add(&[(BUF, 2048, W)]);
    b.net.process_tap();
    assert_eq!(b.rx.take_used(), vec![(0, f.len() as u32)]);
    assert_eq!(b.guest_bytes(BUF + 12, 200), vec![4u8; 200]);
}

#[test]
fn malformed_tx_chains_drop_their_frame_and_the_device_goes_on() {
    let m = mem();
    let mut b = Bed::new(&m);
    let good = frame(VnetHeader::default(), 60, 5);
    b.put(BUF, &good);
    let len = good.len() as u32;
    let bad_csum = frame(
        VnetHeader {
            flags: 1,
            csum_start: 1000,
            csum_offset: 6,
            ..Default::default()
        },
        60,
        6,
    );
    b.put(BUF + 0x1000, &bad_csum);
    let unknown_flag = frame(
        VnetHeader {
            flags: 0x80,
            ..Default::default()
        },
        60,
        6,
    );
    b.put(BUF + 0x2000, &unknown_flag);
    type Case = (&'static str, Vec<(u64, u32, u16, Option<u16>)>);
    let cases: Vec<Case> = vec![
        (
            "outside guest memory",
            vec![(MEM_SIZE + 0x1000, len, R, None)],
        ),
        (
            "straddles the end of memory",
            vec![(MEM_SIZE - 10, len, R, None)],
        ),
        ("device-writable descriptor", vec![(BUF, len, W, None)]),
        (
            "readable then writable",
            vec![(BUF, 12, R, None), (BUF + 12, 60, W, None)],
        ),
        ("shorter than a vnet header", vec![(BUF, 11, R, None)]),
        ("empty", vec![(BUF, 0, R, None)]),
        (
            "loops",
            vec![(BUF, 12, R, None), (BUF + 12, 60, R, Some(0))],
        ),
        ("next outside the table", vec![(BUF, len, R, Some(200))]),
        (
            "longer than any frame",
            vec![(BUF, (MAX_BUFFER_LEN + 1) as u32, R, None)],
        ),
        (
            "checksum outside the frame",
            vec![(BUF + 0x1000, len, R, None)],
        ),
        ("unknown header flag", vec![(BUF + 0x2000, len, R, None)]),
    ];
    for (name, descs) in cases {
        b.tx.add_raw(&descs);
        b.net.process_tx();
        assert!(
            b.peer_frames().is_empty(),
            "{name}: nothing reaches the TAP"
        );
        let used = b.tx.take_used();
        assert_eq!(used.len(), 1, "{name}: the chain is returned");
        assert_eq!(used[0].1, 0, "{name}");
        b.assert_works();
    }
    assert_eq!(b.net.stats().tx_dropped, 11);
}

#[test]
fn offloads_that_were_not_negotiated_are_refused() {
    let m = mem();
    let (tap, peer) = fake_tap();
    let mut n = net(tap);
    n.set_acked_features(crate::devices::virtio::VIRTIO_F_VERSION_1);
    let mut tx = driver_queue(&m, TXQ_BASE);
    let rx = driver_queue(&m, RXQ_BASE);
    let irq = Arc::new(IrqTrigger::new().unwrap());
    n.activate(m.clone(), vec![rx.create_queue(), tx.create_queue()], irq)
        .unwrap();
    let tso = tso_header();
    let f = frame(tso, 3000, 1);
    m.write_slice(&f, GuestAddress(BUF)).unwrap();
    tx.add(&[(BUF, f.len() as u32, R)]);
    n.process_tx();
    let mut buf = [0u8; 16];
    assert!(
        peer.recv(&mut buf).is_err(),
        "TSO frame refused without HOST_TSO4"
    );
    assert_eq!(n.stats().tx_dropped, 1);
    assert_eq!(
        n.acked_features() & (1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_HOST_TSO4),
        0
    );
}

#[test]
fn malformed_rx_chains_are_returned_and_the_frame_goes_to_the_next_buffer() {
    let m = mem();
    let mut b = Bed::new(&m);
    let f = frame(VnetHeader::default(), 500, 8);
    type Case = (&'static str, Vec<(u64, u32, u16, Option<u16>)>);
    let cases: Vec<Case> = vec![
        ("read-only buffer", vec![(BUF, 2048, R, None)]),
        ("outside guest memory", vec![(MEM_SIZE, 2048, W, None)]),
        (
            "straddles the end of memory",
            vec![(MEM_SIZE - 100, 2048, W, None)],
        ),
        (
            "loops",
            vec![(BUF, 100, W, None), (BUF + 0x1000, 100, W, Some(0))],
        ),
        ("next outside the table", vec![(BUF, 2048, W, Some(300))]),
    ];
    for (name, descs) in cases {
        b.peer.send(&f).unwrap();
        b.rx.add_raw(&descs);
        b.rx.add(&[(BUF + 0x4000, 2048, W)]);
        b.net.process_tap();
        let used = b.rx.take_used();
        assert_eq!(
            used.len(),
            2,
            "{name}: both chains come back {used:?} {:?}",
            b.net.stats()
        );
        assert_eq!(used[0].1, 0, "{name}: the bad one unused");
        assert_eq!(
            used[1].1 as usize,
            f.len(),
            "{name}: the frame in the good one {used:?}"
        );
        assert_eq!(
            b.guest_bytes(BUF + 0x4000 + 12, 500),
            vec![8u8; 500],
            "{name}"
        );
    }
    b.assert_works();
}

#[test]
fn a_frame_too_large_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let m = mem();
    let mut b = Bed::new(&m);
    b.peer.send(&frame(VnetHeader::default(), 3000, 1)).unwrap();
    let small = frame(VnetHeader::default(), 100, 2);
    b.peer.send(&small).unwrap();
    b.rx.add(&[(BUF, 1600, W)]);
    b.net.process_tap();
    assert_eq!(b.rx.take_used(), vec![(0, small.len() as u32)]);
    assert_eq!(b.guest_bytes(BUF + 12, 100), vec![2u8; 100]);
    assert_eq!(b.net.stats().rx_dropped, 1);
}

#[test]
fn indirect_chains_are_followed() {
    let m = mem();
    let mut b = Bed::new(&m);
    let f = frame(VnetHeader::default(), 300, 3);
    b.put(BUF, &f);
    let table = [(BUF, 12u32), (BUF + 12, 300u32)];
    for (i, (addr, len)) in table.iter().enumerate() {
        let flags = if i == 0 { NEXT } else { 0 };
        let d = RawDescriptor::from(SplitDescriptor::new(*addr, *len, flags, i as u16 + 1));
        m.write_obj(d, GuestAddress(INDIRECT + i as u64 * 16))
            .unwrap();
    }
    b.tx.add(&[(INDIRECT, 32, VRING_DESC_F_INDIRECT as u16)]);
    b.net.process_tx();
    assert_eq!(b.peer_frames(), vec![f]);
}

#[test]
fn a_broken_ring_is_survived() {
    let m = mem();
    let mut b = Bed::new(&m);
    // The driver claims far more available entries than the queue has.
    b.tx.skew_avail(QSIZE + 5);
    b.rx.skew_avail(QSIZE + 5);
    b.peer.send(&frame(VnetHeader::default(), 60, 1)).unwrap();
    b.net.process_tx();
    b.net.process_tap();
    assert!(b.peer_frames().is_empty());
    b.tx.skew_avail((QSIZE + 5).wrapping_neg());
    b.rx.skew_avail((QSIZE + 5).wrapping_neg());
    // A head index outside the descriptor table.
    b.tx.push_avail(100);
    b.net.process_tx();
    assert!(b.peer_frames().is_empty());
    // The frame the RX side held is still delivered, then everything works.
    b.rx.add(&[(BUF, 2048, W)]);
    b.net.process_tap();
    assert_eq!(b.rx.take_used().len(), 1);
    b.tx.take_used();
    b.assert_works();
}

#[test]
fn activation_checks_queues_and_reset_stops_the_device() {
    let m = mem();
    let (tap, peer) = fake_tap();
    let mut n = net(tap);
    let irq = Arc::new(IrqTrigger::new().unwrap());
    assert!(matches!(
        n.activate(m.clone(), vec![], irq.clone()),
        Err(ActivateError::QueueCount { got: 0, want: 2 })
    ));
    let mut rx = driver_queue(&m, RXQ_BASE);
    let tx = driver_queue(&m, TXQ_BASE);
    n.activate(m.clone(), vec![rx.create_queue(), tx.create_queue()], irq)
        .unwrap();
    assert!(n.is_activated());
    assert!(n.reset());
    assert!(!n.is_activated());
    peer.send(&frame(VnetHeader::default(), 60, 1)).unwrap();
    rx.add(&[(BUF, 2048, W)]);
    n.process_tap();
    assert!(rx.take_used().is_empty(), "nothing moves after a reset");
}

#[test]
fn the_event_loop_moves_frames_both_ways() {
    let m = mem();
    let b = Bed::new(&m);
    let Bed {
        mut rx,
        mut tx,
        peer,
        net,
        ..
    } = b;
    let net = Arc::new(Mutex::new(net));
    let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    em.add_subscriber(net.clone());
    // Activation signalled both queues: drain those events.
    while em.run_with_timeout(10).unwrap() > 0 {}
    let f = frame(VnetHeader::default(), 80, 6);
    m.write_slice(&f, GuestAddress(BUF)).unwrap();
    tx.add(&[(BUF, f.len() as u32, R)]);
    net.lock().unwrap().queue_events()[TXQ_INDEX]
        .write(1)
        .unwrap();
    assert!(em.run_with_timeout(100).unwrap() >= 1);
    let mut got = vec![0u8; 256];
    let n = peer.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);
    assert_eq!(tx.take_used().len(), 1);
    // A frame from the network arrives (the TAP becomes readable).
    rx.add(&[(BUF + 0x4000, 2048, W)]);
    peer.send(&f).unwrap();
    assert!(em.run_with_timeout(100).unwrap() >= 1);
    assert_eq!(rx.take_used(), vec![(0, f.len() as u32)]);
}

//! Tests that drive the vsock device the way a guest driver would: guest memory with split
//! virtqueues driven by the shared test driver ([`DriverQueue`]), kicks through the queue
//! eventfds, and a real `EventManager` running the device, against real Unix sockets on
//! the host side.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::packet::*;
use super::*;
use crate::devices::virtio::test_utils::{DriverQueue, R, W};
use crate::devices::virtio::{
    GuestMemory, IrqTrigger, VirtioDevice, INTERRUPT_STATUS_USED_RING, TYPE_VSOCK,
    VIRTIO_F_VERSION_1,
};

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 256;
const MEM_SIZE: usize = 40 << 20;
const QUEUE_BASE: [u64; 3] = [0x1_0000, 0x2_0000, 0x3_0000];
const BUF_BASE: u64 = 0x10_0000;
/// Guest memory reserved per (queue, descriptor index): enough for a header plus 64 KiB.
const SLOT: u64 = 0x1_1000;
/// Receive buffer the test guest advertises.
const GUEST_BUF_ALLOC: u32 = 64 * 1024;
const RX_DATA_LEN: u32 = 4096;

/// The driver side of queue `index`: `QSIZE` entries at `QUEUE_BASE[index]`, each
/// descriptor with a buffer slot of its own, and the device's `Queue` for it.
fn driver_queue(mem: &GuestMemory, index: usize) -> (DriverQueue, Queue) {
    let slots = BUF_BASE + index as u64 * QSIZE as u64 * SLOT;
    let dq = DriverQueue::new(mem, QUEUE_BASE[index], QSIZE).with_buffer_slots(slots, SLOT);
    let q = dq.create_queue();
    (dq, q)
}

static TEST_DIR_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A scratch directory, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> Self {
        let n = TEST_DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("rvsock-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TestDir(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A received RX packet.
#[derive(Debug)]
struct RxPkt {
    hdr: Header,
    data: Vec<u8>,
}

struct Harness {
    mem: GuestMemory,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    irq: Arc<IrqTrigger>,
    rxq: DriverQueue,
    txq: DriverQueue,
    uds: PathBuf,
    /// RX chain head → its writable segments (address, length), to read packets back.
    rx_layout: HashMap<u16, Vec<(u64, u32)>>,
    /// RX buffers the device returned empty.
    empty_rx: usize,
    _dir: TestDir,
}

impl Harness {
    fn new() -> Self {
        let dir = TestDir::new();
        let uds = dir.0.join("v.sock");
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let dev = Arc::new(Mutex::new(Vsock::new(GUEST_CID, uds.clone()).unwrap()));
        let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let (rxq, q0) = driver_queue(&mem, 0);
        let (txq, q1) = driver_queue(&mem, 1);
        let (_evq, q2) = driver_queue(&mem, 2);
        let irq = Arc::new(IrqTrigger::new().unwrap());
        {
            let mut d = dev.lock().unwrap();
            d.set_acked_features(VIRTIO_F_VERSION_1);
            d.activate(mem.clone(), vec![q0, q1, q2], irq.clone())
                .unwrap();
        }
        let mut h = Harness {
            mem,
            dev,
            em,
            irq,
            rxq,
            txq,
            uds,
            rx_layout: HashMap::new(),
            empty_rx: 0,
            _dir: dir,
        };
        h.pump();
        h
    }

    fn kick(&self, q: usize) {
        self.dev.lock().unwrap().queue_events()[q].write(1).unwrap();
    }

    /// Runs the event loop until it goes quiet.
    fn pump(&mut self) {
        for _ in 0..1000 {
            if self.em.run_with_timeout(10).unwrap() == 0 {
                break;
            }
        }
    }

    /// Posts one RX chain made of writable segments of the given lengths.
    fn post_rx_chain(&mut self, lens: &[u32]) {
        let bufs: Vec<(u32, bool)> = lens.iter().map(|&l| (l, true)).collect();
        let idxs = self.rxq.add_buffers(&bufs, &[]);
        let segs = idxs
            .iter()
            .zip(lens)
            .map(|(&i, &l)| (self.rxq.slot(i), l))
            .collect();
        self.rx_layout.insert(idxs[0], segs);
    }

    /// Posts `n` RX buffers (alternating Linux's two layouts: header and data descriptors,
    /// or one descriptor for both).
    fn post_rx(&mut self, n: usize) {
        for i in 0..n {
            if i % 2 == 0 {
                self.post_rx_chain(&[HEADER_SIZE as u32, RX_DATA_LEN]);
            } else {
                self.post_rx_chain(&[HEADER_SIZE as u32 + RX_DATA_LEN]);
            }
        }
        self.kick(RXQ_INDEX);
    }

    /// Collects the RX packets the device has written.
    fn recv(&mut self) -> Vec<RxPkt> {
        let mut out = Vec::new();
        while let Some((head, len)) = self.rxq.pop_used() {
            let Some(segs) = self.rx_layout.remove(&head) else {
                assert_eq!(len, 0);
                self.empty_rx += 1;
                continue;
            };
            let cap: u32 = segs.iter().map(|s| s.1).sum();
            assert!(len as usize >= HEADER_SIZE && len <= cap, "used len {len}");
            let mut raw = Vec::new();
            for (addr, l) in segs {
                let mut b = vec![0u8; l as usize];
                self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                raw.extend(b);
            }
            raw.truncate(len as usize);
            let hdr = Header::from_bytes(&raw).unwrap();
            assert_eq!(len as usize, HEADER_SIZE + hdr.len as usize);
            assert_eq!(hdr.src_cid, HOST_CID);
            assert_eq!(hdr.dst_cid, GUEST_CID);
            assert_eq!(hdr.type_, TYPE_STREAM);
            out.push(RxPkt {
                hdr,
                data: raw[HEADER_SIZE..].to_vec(),
            });
        }
        out
    }

    /// Pumps and posts buffers until at least one packet arrives (or the deadline passes).
    fn recv_some(&mut self, timeout: Duration) -> Vec<RxPkt> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump();
            let pkts = self.recv();
            self.top_up_rx();
            if !pkts.is_empty() || Instant::now() > deadline {
                return pkts;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Keeps 64 RX buffers posted.
    fn top_up_rx(&mut self) {
        let n = 64usize.saturating_sub(self.rxq.in_flight());
        if n > 0 {
            self.post_rx(n);
        }
    }

    /// Sends a TX packet (header plus optional payload in a second descriptor).
    fn send_raw(&mut self, hdr: &Header, data: &[u8]) {
        let hb = hdr.to_bytes();
        if data.is_empty() {
            self.txq.add_buffers(&[(HEADER_SIZE as u32, false)], &[&hb]);
        } else {
            self.txq.add_buffers(
                &[(HEADER_SIZE as u32, false), (data.len() as u32, false)],
                &[&hb, data],
            );
        }
        self.kick(TXQ_INDEX);
        self.pump();
        self.reap_tx();
    }

    /// Returns the used TX descriptors to the driver; all TX buffers must come back.
    fn reap_tx(&mut self) {
        while let Some((_, len)) = self.txq.pop_used() {
            assert_eq!(len, 0);
        }
        assert_eq!(self.txq.in_flight(), 0, "device kept TX descriptors");
    }

    fn conns(&self) -> usize {
        self.dev.lock().unwrap().num_connections()
    }
}

/// Guest side of one connection.
struct GuestConn {
    port: u32,
    host_port: u32,
    /// Bytes received and "consumed" by the guest application.
    rx_total: u32,
    /// Bytes sent to the host, and the host's latest credit information.
    tx_total: u32,
    host_buf_alloc: u32,
    host_fwd_cnt: u32,
}

impl GuestConn {
    fn new(port: u32, host_port: u32) -> Self {
        GuestConn {
            port,
            host_port,
            rx_total: 0,
            tx_total: 0,
            host_buf_alloc: 0,
            host_fwd_cnt: 0,
        }
    }

    fn hdr(&self, op: u16, flags: u32, len: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: self.port,
            dst_port: self.host_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt: self.rx_total,
        }
    }

    fn matches(&self, p: &RxPkt) -> bool {
        p.hdr.src_port == self.host_port && p.hdr.dst_port == self.port
    }

    fn note_credit(&mut self, p: &RxPkt) {
        self.host_buf_alloc = p.hdr.buf_alloc;
        self.host_fwd_cnt = p.hdr.fwd_cnt;
    }

    fn host_credit(&self) -> u32 {
        self.host_buf_alloc
            .saturating_sub(self.tx_total.wrapping_sub(self.host_fwd_cnt))
    }
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

/// Guest connects to host port `port` where a listener waits; returns the guest connection
/// and the host stream.
fn guest_connect(h: &mut Harness, guest_port: u32, port: u32) -> (GuestConn, UnixStream) {
    let listener = UnixListener::bind(format!("{}_{port}", h.uds.display())).unwrap();
    let mut gc = GuestConn::new(guest_port, port);
    h.top_up_rx();
    h.send_raw(&gc.hdr(OP_REQUEST, 0, 0), &[]);
    let pkts = h.recv_some(Duration::from_secs(2));
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].hdr.op, OP_RESPONSE);
    assert!(gc.matches(&pkts[0]));
    gc.note_credit(&pkts[0]);
    assert_eq!(gc.host_buf_alloc, CONN_TX_BUF_SIZE);
    let (stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (gc, stream)
}

/// Guest sends `data`, respecting the host's credit, in packets of at most `chunk` bytes.
fn guest_send(h: &mut Harness, gc: &mut GuestConn, data: &[u8], chunk: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut off = 0;
    while off < data.len() {
        assert!(Instant::now() < deadline, "guest send stalled at {off}");
        let n = chunk.min(data.len() - off).min(gc.host_credit() as usize);
        if n == 0 {
            // Wait for a credit update.
            for p in h.recv_some(Duration::from_millis(50)) {
                if gc.matches(&p) {
                    assert!(p.hdr.op == OP_CREDIT_UPDATE || p.hdr.op == OP_RW, "{p:?}");
                    gc.note_credit(&p);
                }
            }
            continue;
        }
        let hdr = gc.hdr(OP_RW, 0, n as u32);
        h.send_raw(&hdr, &data[off..off + n]);
        gc.tx_total = gc.tx_total.wrapping_add(n as u32);
        off += n;
        for p in h.recv() {
            if gc.matches(&p) {
                gc.note_credit(&p);
            }
        }
        h.top_up_rx();
    }
}

/// Guest receives until `want` bytes of data arrived (sending credit updates as it
/// consumes), returning the data and any non-RW packets seen.
fn guest_recv(h: &mut Harness, gc: &mut GuestConn, want: usize) -> (Vec<u8>, Vec<RxPkt>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut data = Vec::with_capacity(want);
    let mut other = Vec::new();
    let mut updates = 0;
    while data.len() < want {
        assert!(
            Instant::now() < deadline,
            "guest receive stalled at {} of {want}",
            data.len()
        );
        let pkts = h.recv_some(Duration::from_millis(100));
        let before = gc.rx_total;
        for p in pkts {
            assert!(gc.matches(&p), "{p:?}");
            gc.note_credit(&p);
            if p.hdr.op == OP_RW {
                // The host never exceeds the credit we gave it.
                assert!(gc.rx_total.wrapping_add(p.hdr.len) - before <= GUEST_BUF_ALLOC);
                gc.rx_total = gc.rx_total.wrapping_add(p.hdr.len);
                data.extend_from_slice(&p.data);
            } else {
                other.push(p);
            }
        }
        if gc.rx_total != before {
            // The application consumed it all: tell the host.
            let hdr = gc.hdr(OP_CREDIT_UPDATE, 0, 0);
            h.send_raw(&hdr, &[]);
            updates += 1;
        }
    }
    if want > GUEST_BUF_ALLOC as usize {
        assert!(updates >= want / GUEST_BUF_ALLOC as usize);
    }
    (data, other)
}

#[test]
fn config_space_and_features() {
    let dir = TestDir::new();
    let uds = dir.0.join("cfg.sock");
    let mut dev = Vsock::new(0x0102_0304, uds.clone()).unwrap();
    assert_eq!(dev.device_type(), TYPE_VSOCK);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.queue_events().len(), 3);
    assert_eq!(dev.avail_features(), VIRTIO_F_VERSION_1);
    let mut cfg = [0xffu8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [4, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut hi = [0xffu8; 4];
    dev.read_config(2, &mut hi);
    assert_eq!(hi, [2, 1, 0, 0]);
    dev.read_config(u64::MAX, &mut hi);
    assert_eq!(hi, [0; 4]);
    dev.write_config(0, &[9; 8]);
    dev.read_config(0, &mut cfg[..8]);
    assert_eq!(cfg[..8], [4, 3, 2, 1, 0, 0, 0, 0]);
    assert!(!dev.is_activated());

    // Activation needs three valid queues.
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let irq = Arc::new(IrqTrigger::new().unwrap());
    assert!(dev.activate(mem.clone(), vec![], irq.clone()).is_err());
    let bad: Vec<Queue> = (0..3).map(|_| Queue::new(256).unwrap()).collect();
    assert!(dev.activate(mem, bad, irq).is_err());
    assert!(!dev.is_activated());

    // The socket exists while the device lives; a second device cannot take it.
    assert!(uds.exists());
    assert!(matches!(
        Vsock::new(3, uds.clone()),
        Err(VsockError::PathExists(_))
    ));
    assert!(matches!(
        Vsock::new(2, dir.0.join("other.sock")),
        Err(VsockError::InvalidCid(2))
    ));
    drop(dev);
    assert!(!uds.exists());
}

#[test]
fn guest_initiated_lifecycle() {
    let mut h = Harness::new();
    let (mut gc, mut host) = guest_connect(&mut h, 5000, 1025);
    assert_eq!(h.conns(), 1);
    assert_ne!(h.irq.status() & INTERRUPT_STATUS_USED_RING, 0);

    // Guest → host: a small message, read back exactly.
    let hello = b"hello from the guest";
    h.send_raw(&gc.hdr(OP_RW, 0, hello.len() as u32), hello);
    gc.tx_total += hello.len() as u32;
    let mut got = vec![0u8; hello.len()];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, hello);

    // Guest → host bulk, more than the host's buffer, while the host reads slowly.
    let bulk = pattern(700 * 1024, 1);
    let mut reader = host.try_clone().unwrap();
    let bulk_len = bulk.len();
    let rd = thread::spawn(move || {
        let mut v = vec![0u8; bulk_len];
        let mut off = 0;
        while off < bulk_len {
            let end = (off + 8192).min(bulk_len);
            reader.read_exact(&mut v[off..end]).unwrap();
            off = end;
            if off % (128 * 1024) == 0 {
                thread::sleep(Duration::from_millis(5));
            }
        }
        v
    });
    guest_send(&mut h, &mut gc, &bulk, 16 * 1024);
    // Let the device flush what the socket did not take at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rd.is_finished() && Instant::now() < deadline {
        h.pump();
        thread::sleep(Duration::from_millis(2));
    }
    assert!(rd.join().unwrap() == bulk, "guest → host bytes differ");

    // Host → guest: 1 MiB, in order, across many RX buffers and credit updates.
    let big = pattern(1 << 20, 2);
    let mut writer = host.try_clone().unwrap();
    let big2 = big.clone();
    let wr = thread::spawn(move || writer.write_all(&big2).unwrap());
    let (data, other) = guest_recv(&mut h, &mut gc, big.len());
    wr.join().unwrap();
    assert!(
        other.iter().all(|p| p.hdr.op == OP_CREDIT_UPDATE),
        "{other:?}"
    );
    assert_eq!(data.len(), big.len());
    assert!(data == big, "host → guest bytes differ");

    // Guest shuts down its sending side: the host reads EOF.
    h.send_raw(&gc.hdr(OP_SHUTDOWN, SHUTDOWN_SEND, 0), &[]);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(h.conns(), 1);

    // The host can still write; then it closes: the guest gets the bytes, then SHUTDOWN,
    // and the connection is finished (RST) and forgotten.
    host.write_all(b"bye").unwrap();
    drop(host);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.iter().any(|p: &RxPkt| p.hdr.op == OP_RST) && Instant::now() < deadline {
        seen.extend(h.recv_some(Duration::from_millis(100)));
    }
    let ops: Vec<u16> = seen.iter().map(|p| p.hdr.op).collect();
    assert_eq!(ops, vec![OP_RW, OP_SHUTDOWN, OP_RST], "{seen:?}");
    assert_eq!(seen[0].data, b"bye");
    assert_ne!(seen[1].hdr.flags & SHUTDOWN_SEND, 0);
    assert!(seen.iter().all(|p| gc.matches(p)));
    assert_eq!(h.conns(), 0);
}

#[test]
fn guest_close_both_directions() {
    let mut h = Harness::new();
    let (mut gc, mut host) = guest_connect(&mut h, 5001, 1024);
    h.send_raw(&gc.hdr(OP_RW, 0, 5), b"abcde");
    gc.tx_total += 5;
    // Linux's close(): SHUTDOWN with both flags, then it waits for our RST.
    h.send_raw(&gc.hdr(OP_SHUTDOWN, SHUTDOWN_SEND | SHUTDOWN_RCV, 0), &[]);
    let pkts = h.recv_some(Duration::from_secs(2));
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].hdr.op, OP_RST);
    assert_eq!(h.conns(), 0);
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"abcde");
}

#[test]
fn guest_connect_without_listener_gets_rst() {
    let mut h = Harness::new();
    h.top_up_rx();
    let gc = GuestConn::new(6000, 4321);
    h.send_raw(&gc.hdr(OP_REQUEST, 0, 0), &[]);
    let pkts = h.recv_some(Duration::from_secs(2));
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].hdr.op, OP_RST);
    assert!(gc.matches(&pkts[0]));
    assert_eq!(h.conns(), 0);
}

#[test]
fn guest_rst_closes_host_stream() {
    let mut h = Harness::new();
    let (gc, mut host) = guest_connect(&mut h, 5002, 1025);
    h.send_raw(&gc.hdr(OP_RST, 0, 0), &[]);
    assert_eq!(h.conns(), 0);
    let mut buf = [0u8; 8];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    // No reply to an RST.
    assert!(h.recv_some(Duration::from_millis(50)).is_empty());
}

#[test]
fn packets_wait_for_rx_buffers() {
    let mut h = Harness::new();
    let _listener = UnixListener::bind(format!("{}_1025", h.uds.display())).unwrap();
    let gc = GuestConn::new(5003, 1025);
    // No RX buffers yet: the RESPONSE waits.
    h.send_raw(&gc.hdr(OP_REQUEST, 0, 0), &[]);
    h.pump();
    assert!(h.recv().is_empty());
    h.post_rx(1);
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].hdr.op, OP_RESPONSE);
}

#[test]
fn guest_exceeding_credit_is_reset() {
    let mut h = Harness::new();
    let (mut gc, _host) = guest_connect(&mut h, 5004, 1025);
    // The host never reads; the guest ignores credit.
    let chunk = pattern(64 * 1024, 3);
    let mut reset = false;
    for _ in 0..64 {
        h.send_raw(&gc.hdr(OP_RW, 0, chunk.len() as u32), &chunk);
        gc.tx_total = gc.tx_total.wrapping_add(chunk.len() as u32);
        if h.recv().iter().any(|p| p.hdr.op == OP_RST && gc.matches(p)) {
            reset = true;
            break;
        }
        h.top_up_rx();
    }
    assert!(reset, "a guest overrunning its credit must be reset");
    assert_eq!(h.conns(), 0);
}

/// Reads a line from a blocking stream, byte by byte.
fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8(line).unwrap()
}

fn host_client(h: &Harness) -> UnixStream {
    let s = UnixStream::connect(&h.uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn host_initiated_connection() {
    let mut h = Harness::new();
    h.top_up_rx();
    let mut client = host_client(&h);
    // Bytes right after the newline belong to the stream and must not be lost.
    client.write_all(b"CONNECT 1234\nearly").unwrap();
    let pkts = h.recv_some(Duration::from_secs(2));
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    let req = &pkts[0].hdr;
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!(req.dst_port, 1234);
    assert!(req.src_port >= 1 << 30);
    assert_eq!(req.buf_alloc, CONN_TX_BUF_SIZE);
    let mut gc = GuestConn::new(1234, req.src_port);
    gc.note_credit(&pkts[0]);

    h.send_raw(&gc.hdr(OP_RESPONSE, 0, 0), &[]);
    assert_eq!(read_line(&mut client), format!("OK {}", req.src_port));

    // Host → guest, including the early bytes.
    client.write_all(b" and later").unwrap();
    let (data, _) = guest_recv(&mut h, &mut gc, 15);
    assert_eq!(data, b"early and later");

    // Guest → host.
    h.send_raw(&gc.hdr(OP_RW, 0, 4), b"pong");
    let mut got = [0u8; 4];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    assert_eq!(h.conns(), 1);

    // A second client gets a different local port.
    let mut c2 = host_client(&h);
    c2.write_all(b"CONNECT 1234\n").unwrap();
    let pkts = h.recv_some(Duration::from_secs(2));
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].hdr.op, OP_REQUEST);
    assert_ne!(pkts[0].hdr.src_port, req.src_port);
    // The guest refuses it: the client is closed.
    let gc2 = GuestConn::new(1234, pkts[0].hdr.src_port);
    h.send_raw(&gc2.hdr(OP_RST, 0, 0), &[]);
    let mut b = [0u8; 1];
    assert_eq!(c2.read(&mut b).unwrap(), 0);
    assert_eq!(h.conns(), 1);
}

#[test]
fn host_initiated_timeout() {
    let mut h = Harness::new();
    h.top_up_rx();
    let mut client = host_client(&h);
    client.write_all(b"CONNECT 77\n").unwrap();
    let pkts = h.recv_some(Duration::from_secs(2));
    assert_eq!(pkts[0].hdr.op, OP_REQUEST);
    let local = pkts[0].hdr.src_port;
    // The guest never answers.
    let start = Instant::now();
    let mut rst = false;
    while start.elapsed() < Duration::from_secs(5) && !rst {
        rst = h
            .recv_some(Duration::from_millis(200))
            .iter()
            .any(|p| p.hdr.op == OP_RST && p.hdr.src_port == local);
    }
    assert!(rst);
    assert!(start.elapsed() >= Duration::from_millis(1500));
    let mut b = [0u8; 1];
    assert_eq!(client.read(&mut b).unwrap(), 0);
    assert_eq!(h.conns(), 0);
}

#[test]
fn garbage_is_survived() {
    let mut h = Harness::new();
    // A broken (read-only) RX buffer first in line.
    h.rxq.add_buffers(&[(HEADER_SIZE as u32 + 64, false)], &[]);
    h.top_up_rx();
    let good = GuestConn::new(7000, 1025);

    // Header shorter than 44 bytes.
    let hb = good.hdr(OP_REQUEST, 0, 0).to_bytes();
    h.txq.add_buffers(&[(20, false)], &[&hb[..20]]);
    // `len` larger than the sane maximum.
    let mut big = good.hdr(OP_RW, 0, 100_000);
    let hb_big = big.to_bytes();
    h.txq
        .add_buffers(&[(HEADER_SIZE as u32, false), (60_000, false)], &[&hb_big]);
    // `len` larger than its descriptor.
    big.len = 1000;
    let hb_long = big.to_bytes();
    h.txq
        .add_buffers(&[(HEADER_SIZE as u32, false), (100, false)], &[&hb_long]);
    // Descriptor outside guest memory.
    h.txq
        .add_raw(&[(0xffff_ffff_0000, HEADER_SIZE as u32, R, None)]);
    // A data descriptor that runs past the end of guest memory.
    let hb_rw = good.hdr(OP_RW, 0, 4096).to_bytes();
    let idxs = h
        .txq
        .add_buffers(&[(HEADER_SIZE as u32, false), (4096, false)], &[&hb_rw]);
    h.txq.set_desc(idxs[1], MEM_SIZE as u64 - 100, 4096, R, 0);
    // A descriptor loop: header → data → header ...
    let slot = h.txq.slot(0);
    h.mem.write_slice(&hb_rw, GuestAddress(slot)).unwrap();
    h.txq.add_raw(&[
        (slot, HEADER_SIZE as u32, R, Some(1)),
        (slot, 10, R, Some(0)),
    ]);
    // A write-only TX descriptor.
    h.txq.add_buffers(&[(HEADER_SIZE as u32, true)], &[&hb]);
    h.kick(TXQ_INDEX);
    h.pump();
    h.reap_tx();
    // Unparseable chains are dropped; the two whose header is fine but whose length is
    // wrong get an RST (their stream would have lost bytes).
    let pkts = h.recv();
    assert_eq!(pkts.len(), 2, "{pkts:?}");
    assert!(pkts.iter().all(|p| p.hdr.op == OP_RST && good.matches(p)));

    // Wrong source CID, wrong destination CID: dropped.
    let mut bad = good.hdr(OP_REQUEST, 0, 0);
    bad.src_cid = 99;
    h.send_raw(&bad, &[]);
    bad.src_cid = GUEST_CID;
    bad.dst_cid = 7;
    h.send_raw(&bad, &[]);
    assert!(h.recv().is_empty());

    // Unsupported type, unknown op, data for an unknown connection: RST.
    let mut bad_type = good.hdr(OP_REQUEST, 0, 0);
    bad_type.type_ = 2;
    h.send_raw(&bad_type, &[]);
    h.send_raw(&good.hdr(99, 0, 0), &[]);
    h.send_raw(&good.hdr(OP_RW, 0, 3), b"xyz");
    h.send_raw(&good.hdr(OP_CREDIT_UPDATE, 0, 0), &[]);
    let pkts = h.recv_some(Duration::from_secs(1));
    assert_eq!(pkts.len(), 4, "{pkts:?}");
    assert!(pkts.iter().all(|p| p.hdr.op == OP_RST && good.matches(p)));

    // The broken RX buffer was returned empty and the next ones were used.
    assert_eq!(h.empty_rx, 1);

    // A host client with a garbage CONNECT line is closed.
    let mut c = host_client(&h);
    c.write_all(b"CONNECT garbage\n").unwrap();
    h.pump();
    let mut b = [0u8; 1];
    assert_eq!(c.read(&mut b).unwrap(), 0);
    // An overlong line: closed with our unread bytes still queued, hence a reset.
    let mut c = host_client(&h);
    c.write_all(&[b'A'; 100]).unwrap();
    h.pump();
    assert!(matches!(c.read(&mut b), Ok(0) | Err(_)));
    assert!(c.write_all(b"more").is_err() || c.write_all(b"more").is_err());
    assert_eq!(h.conns(), 0);

    // Everything still works.
    let (mut gc, mut host) = guest_connect(&mut h, 7001, 1025);
    h.send_raw(&gc.hdr(OP_RW, 0, 2), b"ok");
    gc.tx_total += 2;
    let mut got = [0u8; 2];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ok");
    host.write_all(b"fine").unwrap();
    let (data, _) = guest_recv(&mut h, &mut gc, 4);
    assert_eq!(data, b"fine");
}

#[test]
fn reset_drops_connections() {
    let mut h = Harness::new();
    let (_gc, mut host) = guest_connect(&mut h, 5005, 1025);
    assert!(h.dev.lock().unwrap().reset());
    h.pump();
    assert_eq!(h.conns(), 0);
    assert!(!h.dev.lock().unwrap().is_activated());
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0);
}

#[test]
fn descriptor_layouts() {
    let mut h = Harness::new();
    // RX chains laid out unusually: header split over two descriptors and data over two;
    // then one descriptor with room for 7 bytes of data.
    h.post_rx_chain(&[20, 24, 10, 30]);
    h.post_rx_chain(&[HEADER_SIZE as u32 + 7]);
    h.post_rx_chain(&[20, 24, 10, 30]);
    h.kick(RXQ_INDEX);
    let listener = UnixListener::bind(format!("{}_1025", h.uds.display())).unwrap();
    let mut gc = GuestConn::new(5006, 1025);
    h.send_raw(&gc.hdr(OP_REQUEST, 0, 0), &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].hdr.op, OP_RESPONSE);
    gc.note_credit(&pkts[0]);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    // TX: header and payload in one descriptor.
    let mut one = gc.hdr(OP_RW, 0, 5).to_bytes().to_vec();
    one.extend_from_slice(b"one..");
    h.txq.add_buffers(&[(one.len() as u32, false)], &[&one]);
    // TX: payload over three descriptors.
    let hb = gc.hdr(OP_RW, 0, 9).to_bytes();
    h.txq.add_buffers(
        &[
            (HEADER_SIZE as u32, false),
            (3, false),
            (3, false),
            (3, false),
        ],
        &[&hb, b"abc", b"def", b"ghi"],
    );
    // TX: header split over two descriptors, then the payload.
    let hb = gc.hdr(OP_RW, 0, 4).to_bytes();
    h.txq.add_buffers(
        &[(20, false), (24, false), (4, false)],
        &[&hb[..20], &hb[20..], b"wxyz"],
    );
    h.kick(TXQ_INDEX);
    h.pump();
    h.reap_tx();
    let mut got = [0u8; 18];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"one..abcdefghiwxyz");

    // RX: the 7-byte buffer takes 7 bytes, the split one the next 40.
    let data = pattern(47, 5);
    host.write_all(&data).unwrap();
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 2, "{pkts:?}");
    assert!(pkts.iter().all(|p| p.hdr.op == OP_RW));
    assert_eq!(pkts[0].data, data[..7]);
    assert_eq!(pkts[1].data, data[7..]);
}

/// A small deterministic PRNG (xorshift64*), so the fuzz test needs no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// Random TX chains, half of them with plausible headers aimed at a live connection:
/// the device must not panic, must return every descriptor, and must still work.
#[test]
fn random_tx_chains() {
    let mut h = Harness::new();
    let (_gc, _host) = guest_connect(&mut h, 9000, 1025);
    let _l2 = UnixListener::bind(format!("{}_1026", h.uds.display())).unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let ports = [9000u32, 9001, 1025, 1026, 1 << 30];
    for round in 0..3000 {
        let ndesc = 1 + rng.below(4) as usize;
        let mut descs = Vec::with_capacity(ndesc);
        for i in 0..ndesc {
            let slot = h.txq.slot(rng.below(QSIZE as u64) as u16);
            let addr = match rng.below(20) {
                0 => rng.next(),
                1 => MEM_SIZE as u64 - rng.below(64),
                _ => slot,
            };
            let len = match rng.below(10) {
                0 => rng.next() as u32,
                1 => 0,
                _ => rng.below(200) as u32,
            };
            let flags = if rng.chance(10) { W } else { R };
            let next = if i + 1 < ndesc {
                Some(i as u16 + 1)
            } else if rng.chance(20) {
                Some(0) // loop back to the head
            } else {
                None
            };
            if slot == addr {
                // Fill the buffer: a header that is sometimes plausible, then junk.
                let mut bytes: Vec<u8> = (0..200).map(|_| rng.next() as u8).collect();
                if rng.chance(2) {
                    let hdr = Header {
                        src_cid: if rng.chance(8) { rng.next() } else { GUEST_CID },
                        dst_cid: if rng.chance(8) { rng.next() } else { HOST_CID },
                        src_port: ports[rng.below(ports.len() as u64) as usize],
                        dst_port: ports[rng.below(ports.len() as u64) as usize],
                        len: if rng.chance(3) {
                            rng.next() as u32
                        } else {
                            rng.below(150) as u32
                        },
                        type_: if rng.chance(8) {
                            rng.next() as u16
                        } else {
                            TYPE_STREAM
                        },
                        op: rng.below(9) as u16,
                        flags: rng.below(4) as u32,
                        buf_alloc: rng.next() as u32,
                        fwd_cnt: rng.next() as u32,
                    };
                    bytes[..HEADER_SIZE].copy_from_slice(&hdr.to_bytes());
                }
                h.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
            }
            descs.push((addr, len, flags, next));
        }
        h.txq.add_raw(&descs);
        if round % 16 == 15 {
            h.kick(TXQ_INDEX);
            h.pump();
            h.reap_tx();
            h.recv();
            h.top_up_rx();
        }
    }
    h.kick(TXQ_INDEX);
    h.pump();
    h.reap_tx();
    h.recv();

    // Still works.
    let (mut gc, mut host) = guest_connect(&mut h, 9100, 1027);
    h.send_raw(&gc.hdr(OP_RW, 0, 3), b"sane");
    gc.tx_total += 3;
    let mut got = [0u8; 3];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"san");
    host.write_all(b"yes").unwrap();
    let (data, _) = guest_recv(&mut h, &mut gc, 3);
    assert_eq!(data, b"yes");
}

/// The host does not read: the guest runs out of credit (its bytes wait in the device,
/// bounded by the advertised buffer), then the host reads everything, in order.
#[test]
fn guest_to_host_backpressure() {
    let mut h = Harness::new();
    let (mut gc, host) = guest_connect(&mut h, 5007, 1025);
    let data = pattern(4 << 20, 9);
    let mut off = 0;
    let mut idle_rounds = 0;
    while idle_rounds < 3 {
        let n = (32 * 1024)
            .min(gc.host_credit() as usize)
            .min(data.len() - off);
        if n == 0 {
            idle_rounds += 1;
        } else {
            idle_rounds = 0;
            h.send_raw(&gc.hdr(OP_RW, 0, n as u32), &data[off..off + n]);
            gc.tx_total = gc.tx_total.wrapping_add(n as u32);
            off += n;
        }
        h.pump();
        for p in h.recv() {
            assert!(gc.matches(&p) && p.hdr.op == OP_CREDIT_UPDATE, "{p:?}");
            gc.note_credit(&p);
        }
        h.top_up_rx();
    }
    assert_eq!(gc.host_credit(), 0);
    assert!(
        off >= CONN_TX_BUF_SIZE as usize && off < data.len(),
        "{off}"
    );
    assert_eq!(h.conns(), 1);

    let mut reader = host.try_clone().unwrap();
    let total = data.len();
    let rd = thread::spawn(move || {
        let mut v = vec![0u8; total];
        reader.read_exact(&mut v).unwrap();
        v
    });
    guest_send(&mut h, &mut gc, &data[off..], 32 * 1024);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rd.is_finished() && Instant::now() < deadline {
        h.pump();
        thread::sleep(Duration::from_millis(2));
    }
    assert!(rd.join().unwrap() == data);
}

/// The host closes its socket while the guest still sends: the guest gets SHUTDOWN for
/// the EOF, and its next write (EPIPE on the host side) resets the connection.
#[test]
fn host_close_then_guest_write_resets() {
    let mut h = Harness::new();
    let (gc, host) = guest_connect(&mut h, 5008, 1025);
    drop(host);
    let pkts = h.recv_some(Duration::from_secs(2));
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].hdr.op, OP_SHUTDOWN);
    assert_eq!(h.conns(), 1);
    h.send_raw(&gc.hdr(OP_RW, 0, 4), b"late");
    let pkts = h.recv_some(Duration::from_secs(2));
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].hdr.op, OP_RST);
    assert_eq!(h.conns(), 0);
}

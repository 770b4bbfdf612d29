//! One vsock connection bridged to one host Unix stream: its state machine, the bytes from
//! the guest that the Unix socket has not taken yet, and credit accounting in both
//! directions.
//!
//! Credit (virtio-vsock flow control): each side advertises `buf_alloc` (its receive
//! buffer) and `fwd_cnt` (bytes it has consumed). A sender may have at most
//! `buf_alloc - (sent - fwd_cnt)` bytes outstanding.
//! - Guest → host: we advertise [`CONN_TX_BUF_SIZE`] and count in `fwd_cnt` the guest bytes
//!   written to the Unix socket. Bytes the socket does not take at once wait in `tx_buf`,
//!   which a well-behaved guest therefore cannot overflow; a guest that does is reset.
//! - Host → guest: we read from the Unix socket only what the guest's credit allows, and
//!   only directly into an RX buffer the guest gave us, so nothing is read that cannot be
//!   delivered.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::num::Wrapping;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;
use log::debug;

use super::super::fd::retry_on_eintr;
use super::packet::*;
use super::{CONN_TX_BUF_SIZE, HOST_CID};

/// Send a credit update once the guest's idea of our free buffer space drops below this,
/// and we have freed some.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_TX_BUF_SIZE / 2;

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: `OP_REQUEST` queued or sent, waiting for the guest's answer.
    LocalInit { deadline: Instant },
    /// Both sides agreed; data may flow.
    Established,
}

/// What the muxer must do with a connection after an operation on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it.
    Keep,
    /// Forget it; send `OP_RST` to the guest if `rst`.
    Kill { rst: bool },
}

/// Result of trying to produce data for one RX buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum RxData {
    /// A packet (`OP_RW` with `hdr.len` payload bytes, or `OP_SHUTDOWN` after EOF).
    Packet(Header),
    /// Nothing to send now (no credit, socket drained, or not allowed to send).
    Idle,
    /// The socket failed: reset the connection.
    Error,
}

/// One connection. Ports are named from the host's point of view: `local_port` is the host
/// side, `peer_port` the guest side.
pub struct Connection {
    pub(crate) stream: UnixStream,
    pub(crate) local_port: u32,
    pub(crate) peer_port: u32,
    guest_cid: u64,
    pub(crate) state: ConnState,

    // Guest → host.
    /// Guest bytes accepted but not yet written to the Unix socket.
    tx_buf: VecDeque<u8>,
    /// Guest bytes accepted in total.
    guest_bytes: Wrapping<u32>,
    /// Guest bytes written to the Unix socket in total (our `fwd_cnt`).
    fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` the guest last heard from us.
    last_fwd_cnt_sent: Wrapping<u32>,
    /// The guest will send no more.
    peer_shut_send: bool,
    /// The guest will receive no more.
    peer_shut_rcv: bool,
    /// We shut down the write side of the Unix socket.
    unix_wr_shut: bool,

    // Host → guest.
    /// Bytes sent to the guest in total.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// EOF read from the Unix socket and `OP_SHUTDOWN(SEND)` sent to the guest.
    local_eof: bool,

    // Pending control packets for the guest.
    pending_request: bool,
    pending_response: bool,
    pending_credit_update: bool,

    /// Queued in the muxer's data queue (the socket may be readable); while set we do not
    /// ask epoll for readability.
    pub(crate) in_data_q: bool,
    /// Queued in the muxer's control queue.
    pub(crate) in_ctl_q: bool,
    /// Current epoll registration (None: not registered).
    pub(crate) registered: Option<EventSet>,
}

impl Connection {
    /// A guest-initiated connection whose Unix side is already connected: answers
    /// `OP_RESPONSE`.
    pub fn new_peer_init(stream: UnixStream, guest_cid: u64, req: &Header) -> Self {
        let mut c = Self::new(
            stream,
            guest_cid,
            req.dst_port,
            req.src_port,
            ConnState::Established,
        );
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        c.pending_response = true;
        c
    }

    /// A host-initiated connection: sends `OP_REQUEST` and waits until `deadline`.
    pub fn new_local_init(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        deadline: Instant,
    ) -> Self {
        let mut c = Self::new(
            stream,
            guest_cid,
            local_port,
            peer_port,
            ConnState::LocalInit { deadline },
        );
        c.pending_request = true;
        c
    }

    fn new(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        state: ConnState,
    ) -> Self {
        Connection {
            stream,
            local_port,
            peer_port,
            guest_cid,
            state,
            tx_buf: VecDeque::new(),
            guest_bytes: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_shut_send: false,
            peer_shut_rcv: false,
            unix_wr_shut: false,
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            local_eof: false,
            pending_request: false,
            pending_response: false,
            pending_credit_update: false,
            in_data_q: false,
            in_ctl_q: false,
            registered: None,
        }
    }

    fn established(&self) -> bool {
        self.state == ConnState::Established
    }

    /// How many bytes the guest can take from us now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        // A guest reporting more consumed than we sent, or a smaller buffer than what is in
        // flight, gets no credit.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Bytes from the guest waiting for the Unix socket.
    pub fn tx_pending(&self) -> usize {
        self.tx_buf.len()
    }

    /// Whether a control packet is waiting to be sent.
    pub fn has_pending_ctl(&self) -> bool {
        self.pending_request || self.pending_response || self.pending_credit_update
    }

    /// Whether a host-initiated connection has waited too long for the guest.
    pub fn expired(&self, now: Instant) -> bool {
        matches!(self.state, ConnState::LocalInit { deadline } if now >= deadline)
    }

    /// Both directions are finished: the guest sends nothing more and all its bytes reached
    /// the Unix socket (whose write side we shut down), and the guest receives nothing more
    /// (it said so, or we delivered EOF).
    pub fn is_done(&self) -> bool {
        self.established()
            && self.peer_shut_send
            && self.tx_buf.is_empty()
            && self.unix_wr_shut
            && (self.peer_shut_rcv || self.local_eof)
    }

    /// The epoll events this connection wants now.
    pub fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.wants_to_read() && !self.in_data_q && self.peer_credit() > 0 {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    fn wants_to_read(&self) -> bool {
        self.established() && !self.peer_shut_rcv && !self.local_eof
    }

    /// Whether reading the Unix socket could produce something for the guest now.
    pub fn can_send_data(&self) -> bool {
        self.wants_to_read() && self.peer_credit() > 0
    }

    /// A header for a packet to the guest on this connection, carrying our credit.
    fn header(&mut self, op: u16, flags: u32, len: u32) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next control packet for the guest, if any.
    pub fn take_ctl(&mut self) -> Option<Header> {
        if self.pending_request {
            self.pending_request = false;
            return Some(self.header(OP_REQUEST, 0, 0));
        }
        if self.pending_response {
            self.pending_response = false;
            return Some(self.header(OP_RESPONSE, 0, 0));
        }
        if self.pending_credit_update {
            self.pending_credit_update = false;
            return Some(self.header(OP_CREDIT_UPDATE, 0, 0));
        }
        None
    }

    /// Reads from the Unix socket into `buf` (at most the guest's credit) and describes the
    /// packet to send. EOF becomes `OP_SHUTDOWN(SEND)`, after every byte read before it.
    pub fn fill_data(&mut self, buf: &mut [u8]) -> RxData {
        if !self.wants_to_read() {
            return RxData::Idle;
        }
        let n = buf.len().min(self.peer_credit() as usize);
        if n == 0 {
            return RxData::Idle;
        }
        loop {
            match self.stream.read(&mut buf[..n]) {
                Ok(0) => {
                    debug!(
                        "vsock: host side of {}:{} reached EOF",
                        self.local_port, self.peer_port
                    );
                    self.local_eof = true;
                    return RxData::Packet(self.header(OP_SHUTDOWN, SHUTDOWN_SEND, 0));
                }
                Ok(k) => {
                    let k = k.min(n);
                    self.rx_cnt += Wrapping(k as u32);
                    return RxData::Packet(self.header(OP_RW, 0, k as u32));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return RxData::Idle,
                Err(e) => {
                    debug!(
                        "vsock: read from host side of {}:{} failed: {e}",
                        self.local_port, self.peer_port
                    );
                    return RxData::Error;
                }
            }
        }
    }

    /// Handles a packet from the guest for this connection (cids, type and op are already
    /// validated by the muxer).
    pub fn handle_guest_pkt(&mut self, hdr: &Header, payload: &[u8]) -> Verdict {
        if hdr.op == OP_RST {
            debug!(
                "vsock: guest reset connection {}:{}",
                self.local_port, self.peer_port
            );
            // Bytes the guest already sent (and we acknowledged) still go out if the socket
            // takes them now, e.g. when a guest's close() timed out waiting for our RST.
            let _ = self.flush();
            return Verdict::Kill { rst: false };
        }
        // Every packet carries the guest's credit.
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);

        match (hdr.op, self.state) {
            (OP_RESPONSE, ConnState::LocalInit { .. }) => {
                self.state = ConnState::Established;
                let line = format!("OK {}\n", self.local_port);
                // A fresh socket's send buffer is empty, so this short line goes in whole;
                // anything else means the client is gone.
                match send_nosignal(&self.stream, line.as_bytes()) {
                    Ok(n) if n == line.len() => Verdict::Keep,
                    Ok(_) | Err(_) => Verdict::Kill { rst: true },
                }
            }
            (_, ConnState::LocalInit { .. }) => {
                log::log!(
                    super::GUEST_LOG.level(),
                    "vsock: guest sent op {} before accepting connection {}:{}",
                    hdr.op,
                    self.local_port,
                    self.peer_port
                );
                Verdict::Kill { rst: true }
            }
            (OP_REQUEST, _) | (OP_RESPONSE, _) => {
                log::log!(
                    super::GUEST_LOG.level(),
                    "vsock: unexpected op {} on established connection {}:{}",
                    hdr.op,
                    self.local_port,
                    self.peer_port
                );
                Verdict::Kill { rst: true }
            }
            (OP_RW, _) => self.handle_rw(payload),
            (OP_SHUTDOWN, _) => {
                if hdr.flags & SHUTDOWN_RCV != 0 {
                    self.peer_shut_rcv = true;
                }
                if hdr.flags & SHUTDOWN_SEND != 0 {
                    self.peer_shut_send = true;
                }
                self.flush()
            }
            (OP_CREDIT_UPDATE, _) => Verdict::Keep,
            (OP_CREDIT_REQUEST, _) => {
                self.pending_credit_update = true;
                Verdict::Keep
            }
            _ => Verdict::Kill { rst: true },
        }
    }

    fn handle_rw(&mut self, payload: &[u8]) -> Verdict {
        if self.peer_shut_send {
            log::log!(
                super::GUEST_LOG.level(),
                "vsock: guest sent data after shutting down {}:{}",
                self.local_port,
                self.peer_port
            );
            return Verdict::Kill { rst: true };
        }
        if payload.is_empty() {
            return Verdict::Keep;
        }
        let outstanding = (self.guest_bytes - self.fwd_cnt).0 as usize;
        if outstanding + payload.len() > CONN_TX_BUF_SIZE as usize {
            log::log!(
                super::GUEST_LOG.level(),
                "vsock: guest exceeded its credit on {}:{} ({} + {} > {})",
                self.local_port,
                self.peer_port,
                outstanding,
                payload.len(),
                CONN_TX_BUF_SIZE
            );
            return Verdict::Kill { rst: true };
        }
        self.guest_bytes += Wrapping(payload.len() as u32);
        let mut rest = payload;
        if self.tx_buf.is_empty() {
            match send_nosignal(&self.stream, rest) {
                Ok(n) => {
                    let n = n.min(rest.len());
                    self.fwd_cnt += Wrapping(n as u32);
                    rest = &rest[n..];
                }
                Err(e) if would_block(&e) => {}
                Err(e) => {
                    debug!(
                        "vsock: write to host side of {}:{} failed: {e}",
                        self.local_port, self.peer_port
                    );
                    return Verdict::Kill { rst: true };
                }
            }
        }
        self.tx_buf.extend(rest);
        self.check_credit_update();
        Verdict::Keep
    }

    /// Writes buffered guest bytes to the Unix socket; once all are written and the guest
    /// has shut down its sending side, shuts down the socket's write side.
    pub fn flush(&mut self) -> Verdict {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match send_nosignal(&self.stream, front) {
                Ok(0) => break,
                Ok(n) => {
                    let n = n.min(front.len());
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if would_block(&e) => break,
                Err(e) => {
                    debug!(
                        "vsock: write to host side of {}:{} failed: {e}",
                        self.local_port, self.peer_port
                    );
                    return Verdict::Kill { rst: true };
                }
            }
        }
        if self.tx_buf.is_empty() {
            if self.tx_buf.capacity() > 64 * 1024 {
                self.tx_buf.shrink_to(0);
            }
            if self.peer_shut_send && !self.unix_wr_shut && self.established() {
                // The host reader sees EOF. An error (peer already gone) changes nothing.
                let _ = self.stream.shutdown(std::net::Shutdown::Write);
                self.unix_wr_shut = true;
            }
        }
        self.check_credit_update();
        Verdict::Keep
    }

    /// Queues a credit update if the guest believes we have little room left and we have
    /// freed some since we last told it.
    fn check_credit_update(&mut self) {
        if self.fwd_cnt == self.last_fwd_cnt_sent || self.peer_shut_send {
            return;
        }
        let used_in_peer_view = (self.guest_bytes - self.last_fwd_cnt_sent).0;
        let free_in_peer_view = CONN_TX_BUF_SIZE.saturating_sub(used_in_peer_view);
        if free_in_peer_view < CREDIT_UPDATE_THRESHOLD {
            self.pending_credit_update = true;
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// `send(2)` with `MSG_NOSIGNAL`: a closed peer yields `EPIPE`, never `SIGPIPE`.
pub(crate) fn send_nosignal(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    retry_on_eintr(|| {
        // SAFETY: `buf` is a valid readable slice of `buf.len()` bytes for the duration of
        // the call, and the fd is owned by `stream`.
        unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        }
    })
}

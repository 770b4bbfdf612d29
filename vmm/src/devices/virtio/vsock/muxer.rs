//! The host side of the vsock device: the listening Unix socket for host-initiated
//! connections, the connection table keyed by (local port, peer port), and the queue of
//! work for the guest's RX buffers.
//!
//! The muxer never touches epoll directly while it handles events: it records what each fd
//! wants (connection interest, new host clients, fds to close), and [`Muxer::sync`] applies
//! it through the event manager's `EventOps` at the end of every `process` call. An fd is
//! always removed from epoll before it is closed, so fd numbers can be reused safely.
//!
//! RX priority: stray `OP_RST`s first, then connections' control packets
//! (`OP_REQUEST`/`OP_RESPONSE`/`OP_CREDIT_UPDATE`), then data, round-robin across
//! connections. Data is read from a Unix socket only into an RX buffer the guest gave us.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use log::{debug, error, warn};
use vmm_sys_util::timerfd::TimerFd;

use super::super::fd::set_nonblocking;
use super::connection::{ConnState, Connection, RxData, Verdict};
use super::packet::*;
use super::{VsockError, CONNECT_TIMEOUT, HOST_CID, MAX_CONNECTIONS, MAX_PENDING_CLIENTS};

/// `Events::data` values of the fds the vsock device registers.
pub const DATA_RXQ: u32 = 0;
pub const DATA_TXQ: u32 = 1;
pub const DATA_EVQ: u32 = 2;
pub const DATA_LISTENER: u32 = 3;
pub const DATA_TIMER: u32 = 4;
pub const DATA_CLIENT: u32 = 5;
pub const DATA_CONN: u32 = 6;

/// First local port handed out to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Longest `CONNECT <port>\n` line we accept.
const MAX_CONNECT_LINE: usize = 32;
/// Most `OP_RST` replies to stray packets kept waiting for RX buffers; more are dropped.
const MAX_STRAY_RST: usize = 1024;
/// Most connections accepted on the listener per event.
const MAX_ACCEPT_PER_EVENT: usize = 16;
/// Period of the timeout sweep while something has a deadline.
const TIMER_PERIOD: Duration = Duration::from_millis(250);

/// Connection key: (local port, peer port).
pub type ConnKey = (u32, u32);

/// A host client that has connected to the listener and not yet sent its `CONNECT` line.
struct PendingClient {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
    registered: bool,
}

/// The host side of the device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    timer: TimerFd,
    timer_armed: bool,

    conns: HashMap<ConnKey, Connection>,
    /// Connection fd → key.
    fd_map: HashMap<RawFd, ConnKey>,
    clients: HashMap<RawFd, PendingClient>,
    /// Fds to remove from epoll (if registered) and close.
    graveyard: Vec<(UnixStream, bool)>,

    stray_rst: VecDeque<Header>,
    ctl_q: VecDeque<ConnKey>,
    data_q: VecDeque<ConnKey>,

    next_local_port: u32,
}

impl Muxer {
    /// Binds the listening socket at `uds_path` (which must not exist).
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self, VsockError> {
        if uds_path.symlink_metadata().is_ok() {
            return Err(VsockError::PathExists(uds_path));
        }
        let listener = UnixListener::bind(&uds_path).map_err(|e| {
            VsockError::Bind(uds_path.clone(), e, super::ancestors_described(&uds_path))
        })?;
        let setup = || -> io::Result<TimerFd> {
            listener.set_nonblocking(true)?;
            let timer = TimerFd::new()?;
            // SAFETY: `timer` owns the descriptor and outlives this borrow (`TimerFd` offers
            // only `AsRawFd`).
            set_nonblocking(unsafe { BorrowedFd::borrow_raw(timer.as_raw_fd()) })?;
            Ok(timer)
        };
        let timer = match setup() {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_file(&uds_path);
                return Err(VsockError::EventFd(e));
            }
        };
        Ok(Muxer {
            guest_cid,
            uds_path,
            listener,
            timer,
            timer_armed: false,
            conns: HashMap::new(),
            fd_map: HashMap::new(),
            clients: HashMap::new(),
            graveyard: Vec::new(),
            stray_rst: VecDeque::new(),
            ctl_q: VecDeque::new(),
            data_q: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The listening socket's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Number of live connections.
    pub fn num_connections(&self) -> usize {
        self.conns.len()
    }

    /// Registers the listener and the timer (the device registers its queue eventfds).
    pub fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.listener,
            DATA_LISTENER,
            EventSet::IN,
        )) {
            error!("vsock: cannot register listener: {e:?}");
        }
        if let Err(e) = ops.add(Events::with_data(&self.timer, DATA_TIMER, EventSet::IN)) {
            error!("vsock: cannot register timer: {e:?}");
        }
    }

    /// Drops every connection and all pending work (device reset). The fds are closed at the
    /// next [`Muxer::sync`].
    pub fn reset(&mut self) {
        for (_, conn) in self.conns.drain() {
            self.graveyard
                .push((conn.stream, conn.registered.is_some()));
        }
        for (_, client) in self.clients.drain() {
            self.graveyard.push((client.stream, client.registered));
        }
        self.fd_map.clear();
        self.stray_rst.clear();
        self.ctl_q.clear();
        self.data_q.clear();
    }

    // ---------------------------------------------------------------- guest → host

    /// Handles one packet the guest sent (header already parsed, payload copied).
    pub fn handle_guest_pkt(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            log::log!(
                super::GUEST_LOG.level(),
                "vsock: dropping packet from cid {} to cid {} (guest cid is {})",
                hdr.src_cid,
                hdr.dst_cid,
                self.guest_cid
            );
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != TYPE_STREAM {
            debug!("vsock: unsupported socket type {}", hdr.type_);
            self.reply_rst(hdr);
            return;
        }
        if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&hdr.op) {
            log::log!(super::GUEST_LOG.level(), "vsock: unknown op {}", hdr.op);
            if self.conns.contains_key(&key) {
                self.kill(key, true);
            } else {
                self.reply_rst(hdr);
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            let verdict = conn.handle_guest_pkt(hdr, payload);
            self.after_update(key, verdict);
        } else if hdr.op == OP_REQUEST {
            self.guest_connect(hdr);
        } else if hdr.op != OP_RST {
            debug!(
                "vsock: op {} for unknown connection {}:{}",
                hdr.op, key.0, key.1
            );
            self.reply_rst(hdr);
        }
    }

    /// A packet whose header parsed but whose payload did not (bad length): the stream it
    /// belongs to has lost bytes, so it is reset.
    pub fn reject_guest_pkt(&mut self, hdr: &Header) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            self.kill(key, true);
        } else {
            self.reply_rst(hdr);
        }
    }

    /// Guest-initiated connection to host port `hdr.dst_port`: connect to `<uds_path>_port`.
    fn guest_connect(&mut self, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            log::log!(
                super::GUEST_LOG.level(),
                "vsock: too many connections, refusing port {}",
                hdr.dst_port
            );
            self.reply_rst(hdr);
            return;
        }
        let mut path: OsString = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                debug!("vsock: guest port {} connected to {:?}", hdr.src_port, path);
                let conn = Connection::new_peer_init(stream, self.guest_cid, hdr);
                let key = (conn.local_port, conn.peer_port);
                self.insert(key, conn);
            }
            Err(e) => {
                debug!("vsock: guest connect to {path:?} failed: {e}");
                self.reply_rst(hdr);
            }
        }
    }

    fn insert(&mut self, key: ConnKey, conn: Connection) {
        self.fd_map.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.after_update(key, Verdict::Keep);
    }

    /// Queues a reply `OP_RST` to a packet (never to an `OP_RST`).
    fn reply_rst(&mut self, hdr: &Header) {
        if hdr.op == OP_RST {
            return;
        }
        self.push_rst(hdr.dst_port, hdr.src_port);
    }

    fn push_rst(&mut self, local_port: u32, peer_port: u32) {
        if self.stray_rst.len() >= MAX_STRAY_RST {
            debug!("vsock: too many pending resets, dropping one");
            return;
        }
        self.stray_rst.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        });
    }

    /// Applies a verdict, and queues the connection for RX work it may now have.
    fn after_update(&mut self, key: ConnKey, verdict: Verdict) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let verdict = match verdict {
            Verdict::Keep if conn.is_done() => {
                debug!("vsock: connection {}:{} finished", key.0, key.1);
                Verdict::Kill { rst: true }
            }
            v => v,
        };
        if let Verdict::Kill { rst } = verdict {
            self.kill(key, rst);
            return;
        }
        if conn.has_pending_ctl() && !conn.in_ctl_q {
            conn.in_ctl_q = true;
            self.ctl_q.push_back(key);
        }
    }

    /// Forgets a connection; its fd is closed at the next sync.
    fn kill(&mut self, key: ConnKey, rst: bool) {
        if let Some(conn) = self.conns.remove(&key) {
            self.fd_map.remove(&conn.stream.as_raw_fd());
            self.graveyard
                .push((conn.stream, conn.registered.is_some()));
            if rst {
                self.push_rst(key.0, key.1);
            }
        }
    }

    // ---------------------------------------------------------------- host → guest

    /// Whether anything may be waiting for an RX buffer.
    pub fn has_rx_work(&self) -> bool {
        !self.stray_rst.is_empty() || !self.ctl_q.is_empty() || !self.data_q.is_empty()
    }

    /// Produces the next packet for the guest into `buf` (payload, `hdr.len` bytes; `buf`
    /// is sized to the RX buffer's capacity). Returns None when there is nothing to send.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<Header> {
        if let Some(hdr) = self.stray_rst.pop_front() {
            return Some(hdr);
        }
        while let Some(key) = self.ctl_q.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_ctl_q = false;
            if let Some(hdr) = conn.take_ctl() {
                self.after_update(key, Verdict::Keep);
                return Some(hdr);
            }
        }
        if buf.is_empty() {
            return None;
        }
        // Each pass either produces a packet or removes a key from the queue.
        while let Some(key) = self.data_q.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            if !conn.in_data_q {
                continue;
            }
            match conn.fill_data(buf) {
                RxData::Packet(hdr) => {
                    if conn.can_send_data() {
                        self.data_q.push_back(key);
                    } else {
                        conn.in_data_q = false;
                    }
                    self.after_update(key, Verdict::Keep);
                    return Some(hdr);
                }
                RxData::Idle => conn.in_data_q = false,
                RxData::Error => {
                    self.kill(key, true);
                    return self.stray_rst.pop_front();
                }
            }
        }
        None
    }

    /// A packet from [`Muxer::next_rx`] could not be written to guest memory: a stream
    /// that lost bytes (or a handshake that lost a step) is reset.
    pub fn rx_write_failed(&mut self, hdr: &Header) {
        if hdr.op != OP_RST {
            self.kill((hdr.src_port, hdr.dst_port), true);
        }
    }

    // ---------------------------------------------------------------- host events

    /// The listener is readable: accept host clients.
    pub fn handle_listener(&mut self) {
        for _ in 0..MAX_ACCEPT_PER_EVENT {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_PENDING_CLIENTS {
                        warn!("vsock: too many host clients waiting to connect, closing one");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        warn!("vsock: cannot make host client non-blocking: {e}");
                        continue;
                    }
                    self.clients.insert(
                        stream.as_raw_fd(),
                        PendingClient {
                            stream,
                            line: Vec::with_capacity(MAX_CONNECT_LINE),
                            deadline: Instant::now() + CONNECT_TIMEOUT,
                            registered: false,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("vsock: accept failed: {e}");
                    break;
                }
            }
        }
    }

    /// A host client that has not sent its `CONNECT` line is readable. Reads byte by byte so
    /// that nothing after the newline is consumed.
    pub fn handle_client(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let outcome = loop {
            let mut b = [0u8; 1];
            match client.stream.read(&mut b) {
                Ok(0) => break Some(Err("EOF before CONNECT line")),
                Ok(_) if b[0] == b'\n' => break Some(parse_connect(&client.line)),
                Ok(_) => {
                    client.line.push(b[0]);
                    if client.line.len() > MAX_CONNECT_LINE {
                        break Some(Err("CONNECT line too long"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(_) => break Some(Err("read error")),
            }
        };
        let Some(outcome) = outcome else {
            return;
        };
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        match outcome {
            Ok(port) => self.host_connect(client, port),
            Err(why) => {
                warn!("vsock: closing host client: {why}");
                self.graveyard.push((client.stream, client.registered));
            }
        }
    }

    /// Host-initiated connection to guest port `peer_port`.
    fn host_connect(&mut self, client: PendingClient, peer_port: u32) {
        if self.conns.len() >= MAX_CONNECTIONS {
            warn!("vsock: too many connections, refusing host connect to {peer_port}");
            self.graveyard.push((client.stream, client.registered));
            return;
        }
        let Some(local_port) = self.alloc_local_port(peer_port) else {
            self.graveyard.push((client.stream, client.registered));
            return;
        };
        debug!("vsock: host connect to guest port {peer_port} from local port {local_port}");
        let mut conn = Connection::new_local_init(
            client.stream,
            self.guest_cid,
            local_port,
            peer_port,
            Instant::now() + CONNECT_TIMEOUT,
        );
        // Still registered as a client fd: sync modifies or removes that registration.
        conn.registered = client.registered.then_some(EventSet::IN);
        self.insert((local_port, peer_port), conn);
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return Some(port);
            }
        }
        None
    }

    /// A connection's Unix socket has events.
    pub fn handle_conn(&mut self, fd: RawFd, events: EventSet) {
        let Some(&key) = self.fd_map.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let registered = conn.registered.unwrap_or(EventSet::empty());
        let mut verdict = Verdict::Keep;
        if registered.contains(EventSet::OUT) {
            verdict = conn.flush();
        }
        let readable = EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR;
        if verdict == Verdict::Keep
            && registered.contains(EventSet::IN)
            && events.intersects(readable)
            && !conn.in_data_q
        {
            conn.in_data_q = true;
            self.data_q.push_back(key);
        }
        if verdict == Verdict::Keep
            && events.intersects(EventSet::ERROR)
            && !registered.intersects(EventSet::IN | EventSet::OUT)
        {
            verdict = Verdict::Kill { rst: true };
        }
        self.after_update(key, verdict);
    }

    /// The timer fired: expire host clients and host-initiated connections that waited too
    /// long.
    pub fn handle_timer(&mut self) {
        // Non-blocking: a stale event just reads EAGAIN.
        let _ = self.timer.wait();
        let now = Instant::now();
        let expired: Vec<RawFd> = self
            .clients
            .iter()
            .filter(|(_, c)| now >= c.deadline)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in expired {
            if let Some(client) = self.clients.remove(&fd) {
                warn!("vsock: host client sent no CONNECT line in time");
                self.graveyard.push((client.stream, client.registered));
            }
        }
        let expired: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.expired(now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            warn!(
                "vsock: guest did not answer connection to port {} in time",
                key.1
            );
            self.kill(key, true);
        }
    }

    // ---------------------------------------------------------------- epoll

    /// Applies registration changes through `ops`: new host clients, connection interest,
    /// fds to close; arms or disarms the timeout timer.
    pub fn sync(&mut self, ops: &mut EventOps) {
        let mut unregistrable = Vec::new();
        for (fd, client) in self.clients.iter_mut() {
            if !client.registered {
                match ops.add(Events::with_data_raw(*fd, DATA_CLIENT, EventSet::IN)) {
                    Ok(()) => client.registered = true,
                    Err(e) => {
                        error!("vsock: cannot register host client: {e:?}");
                        unregistrable.push(*fd);
                    }
                }
            }
        }
        for fd in unregistrable {
            if let Some(client) = self.clients.remove(&fd) {
                self.graveyard.push((client.stream, false));
            }
        }
        let mut failed = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            let fd = conn.stream.as_raw_fd();
            let want = conn.interest();
            let res = match conn.registered {
                None if want.is_empty() => Ok(()),
                None => ops
                    .add(Events::with_data_raw(fd, DATA_CONN, want))
                    .map(|_| conn.registered = Some(want)),
                Some(_) if want.is_empty() => ops
                    .remove(Events::empty_raw(fd))
                    .map(|_| conn.registered = None),
                Some(cur) if cur == want => Ok(()),
                Some(_) => ops
                    .modify(Events::with_data_raw(fd, DATA_CONN, want))
                    .map(|_| conn.registered = Some(want)),
            };
            if let Err(e) = res {
                error!("vsock: epoll update for connection {key:?} failed: {e:?}");
                failed.push(*key);
            }
        }
        for key in failed {
            if let Some(conn) = self.conns.get_mut(&key) {
                // Assume the fd is still registered so that it is removed before closing.
                conn.registered = Some(EventSet::empty());
            }
            self.kill(key, true);
        }
        for (stream, registered) in self.graveyard.drain(..) {
            if registered {
                if let Err(e) = ops.remove(Events::empty(&stream)) {
                    debug!("vsock: removing closed fd from epoll: {e:?}");
                }
            }
            drop(stream);
        }

        let need_timer = !self.clients.is_empty()
            || self
                .conns
                .values()
                .any(|c| matches!(c.state, ConnState::LocalInit { .. }));
        if need_timer != self.timer_armed {
            let res = if need_timer {
                self.timer.reset(TIMER_PERIOD, Some(TIMER_PERIOD))
            } else {
                self.timer.clear()
            };
            match res {
                Ok(()) => self.timer_armed = need_timer,
                Err(e) => error!("vsock: timer update failed: {e}"),
            }
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// Parses `CONNECT <port>` (without the newline).
fn parse_connect(line: &[u8]) -> Result<u32, &'static str> {
    let digits = line.strip_prefix(b"CONNECT ").ok_or("not a CONNECT line")?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err("bad port in CONNECT line");
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or("bad port in CONNECT line")
}

/// Connects a non-blocking Unix stream socket to `path`. A full backlog fails with
/// `EAGAIN` instead of blocking the VMM thread.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "Unix socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain syscall; the returned fd is checked and then owned by the UnixStream.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let ret = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 1234"), Ok(1234));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Ok(u32::MAX));
        assert!(parse_connect(b"CONNECT 4294967296").is_err());
        assert!(parse_connect(b"CONNECT garbage").is_err());
        assert!(parse_connect(b"CONNECT ").is_err());
        assert!(parse_connect(b"CONNECT +12").is_err());
        assert!(parse_connect(b"connect 12").is_err());
        assert!(parse_connect(b"").is_err());
    }
}

//! A small rtnetlink client: the part of `NETLINK_ROUTE` that runvm needs, with no
//! dependency beyond libc, so that both the host (reading a network namespace, creating
//! tc rules) and the static guest init (configuring its interfaces) can use it.
//!
//! - this file: the socket, request/acknowledge and dump exchanges, and the message and
//!   attribute encoding (`nlmsghdr`, `rtattr`, nesting, 4-byte alignment);
//! - [`route`]: links, addresses and routes (read them, set a link up and its MTU, add an
//!   address or a route, delete a link);
//! - [`tc`]: the ingress qdisc and the filters (matchall, flower) with mirred actions that
//!   mirror traffic between a veth and a TAP.
//!
//! Everything read from the kernel is parsed with bounds checks: a short or malformed
//! message is an error, never a panic.

pub mod route;
pub mod tc;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub use route::{Address, Link, Route};

/// `nlmsghdr` flags.
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;

/// Errors talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused the request (`NLMSG_ERROR` with a negative errno).
    #[error("{op}: {source}")]
    Kernel { op: String, source: io::Error },
    #[error("malformed netlink message: {0}")]
    Malformed(&'static str),
}

impl Error {
    /// The errno of a refused request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A message under construction: a fixed header (`ifinfomsg`, `rtmsg`, …) followed by
/// attributes. Nested attributes are opened with [`Message::nest`] and closed with
/// [`Message::end_nest`].
#[derive(Clone, Debug, Default)]
pub struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Message {
    /// Starts a message whose fixed header is `header` (already in kernel layout).
    pub fn new(header: &[u8]) -> Self {
        let mut buf = header.to_vec();
        buf.resize(align4(buf.len()), 0);
        Self { buf, nests: vec![] }
    }

    /// Appends an attribute.
    pub fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn attr_u8(&mut self, kind: u16, v: u8) -> &mut Self {
        self.attr(kind, &[v])
    }

    pub fn attr_u16_be(&mut self, kind: u16, v: u16) -> &mut Self {
        self.attr(kind, &v.to_be_bytes())
    }

    pub fn attr_u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut d = s.as_bytes().to_vec();
        d.push(0);
        self.attr(kind, &d)
    }

    /// Opens a nested attribute.
    pub fn nest(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.attr(kind, &[]);
        self
    }

    /// Closes the innermost nested attribute.
    pub fn end_nest(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Iterates over the attributes in `data` (each `(type, payload)`, the type without the
/// nested/byte-order flag bits). Stops at the first malformed attribute.
pub fn attrs(data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let payload = &rest[4..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some((kind, payload))
    })
}

/// A `NETLINK_ROUTE` socket bound to the caller's network namespace (the namespace of the
/// thread that opens it).
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    pub fn route() -> Result<Self> {
        // SAFETY: plain socket(2); the result is checked and owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Extended acks are only a nicety: failing to ask for them is fine.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads an int from a valid pointer.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_CAP_ACK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(Self {
            fd,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    fn send(&mut self, kind: u16, flags: u16, msg: &Message) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let body = msg.bytes();
        let len = NLMSG_HDRLEN + body.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        out.extend_from_slice(&self.seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(body);
        // SAFETY: `out` is valid for reads of its length; the address is the kernel's
        // (a zeroed sockaddr_nl).
        let n = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.fd.as_raw_fd(),
                out.as_ptr().cast(),
                out.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(self.seq)
    }

    /// Receives the replies to `seq`, handing each message (type, payload) to `f`, until
    /// the acknowledgement (requests) or `NLMSG_DONE` (dumps).
    fn receive(
        &mut self,
        seq: u32,
        op: &str,
        mut f: impl FnMut(u16, &[u8]) -> Result<()>,
    ) -> Result<()> {
        loop {
            // SAFETY: the buffer is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let mut rest = &self.buf[..n as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let mseq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(Error::Malformed("message length"));
                }
                let payload = &rest[NLMSG_HDRLEN..len];
                rest = &rest[align4(len).min(rest.len())..];
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let errno = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or(Error::Malformed("error message"))?;
                        if errno == 0 {
                            return Ok(());
                        }
                        return Err(Error::Kernel {
                            op: op.to_string(),
                            source: io::Error::from_raw_os_error(-errno),
                        });
                    }
                    _ => f(kind, payload)?,
                }
            }
        }
    }

    /// Sends a request and waits for its acknowledgement. `op` names it in errors.
    pub fn request(&mut self, kind: u16, flags: u16, msg: &Message, op: &str) -> Result<()> {
        let seq = self.send(kind, flags | NLM_F_ACK, msg)?;
        self.receive(seq, op, |_, _| Ok(()))
    }

    /// Sends a dump request and returns the payload of every message of the answer.
    pub fn dump(&mut self, kind: u16, msg: &Message, op: &str) -> Result<Vec<Vec<u8>>> {
        let seq = self.send(kind, NLM_F_DUMP, msg)?;
        let mut out = Vec::new();
        self.receive(seq, op, |_, payload| {
            out.push(payload.to_vec());
            Ok(())
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_nest_align_and_parse_back() {
        let mut m = Message::new(&[1, 2, 3]);
        m.attr_u8(1, 7)
            .nest(2)
            .attr_str(3, "tap0")
            .attr_u32(4, 0xdead_beef)
            .end_nest()
            .attr_u16_be(5, 0x0800);
        let b = m.bytes();
        assert_eq!(&b[..4], &[1, 2, 3, 0], "the header is padded to 4 bytes");
        let top: Vec<(u16, Vec<u8>)> = attrs(&b[4..]).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0], (1, vec![7]));
        assert_eq!(top[2], (5, vec![0x08, 0x00]));
        let inner: Vec<(u16, Vec<u8>)> = attrs(&top[1].1).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(inner[0], (3, b"tap0\0".to_vec()));
        assert_eq!(inner[1], (4, 0xdead_beefu32.to_ne_bytes().to_vec()));
    }

    #[test]
    fn malformed_attributes_end_the_iteration() {
        // Length 2 (< 4), length past the end.
        assert_eq!(attrs(&[2, 0, 1, 0, 9, 9]).count(), 0);
        assert_eq!(attrs(&[40, 0, 1, 0, 9, 9, 9, 9]).count(), 0);
        let mut ok = Message::new(&[]);
        ok.attr_u32(1, 1);
        let mut b = ok.bytes().to_vec();
        b.extend_from_slice(&[200, 0, 2, 0]);
        assert_eq!(attrs(&b).count(), 1);
    }

    #[test]
    fn the_kernel_answers_a_dump_of_links() {
        let mut s = Socket::route().unwrap();
        let links = s.links().unwrap();
        assert!(links.iter().any(|l| l.name == "lo"), "{links:?}");
    }
}

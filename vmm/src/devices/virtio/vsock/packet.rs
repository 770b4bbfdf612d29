//! vsock packets: the header, reading guest TX packets from descriptor chains, and writing
//! RX packets into them.
//!
//! Chains are read and written through virtio-queue's [`Reader`]/[`Writer`], which accept
//! any descriptor layout: header and payload in one descriptor, in two, or the payload
//! spread over several (Linux puts fragmented socket buffers, e.g. with `MSG_ZEROCOPY`, in
//! several descriptors; the `virtio-vsock` crate's `VsockPacket` only takes one data descriptor
//! and would make us drop such packets). Every descriptor is checked against guest memory
//! before use, chains that loop or run past the queue are rejected, the header is copied
//! out once (no time-of-check/time-of-use), and the payload is bounded by
//! [`MAX_PKT_PAYLOAD`] and copied out before anything acts on it.

use std::io::{self, Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};

use super::super::queue::{check_chain, ChainShapeError};
use super::super::GuestMemory;
use super::MAX_PKT_PAYLOAD;

/// Size of the packet header, `struct virtio_vsock_hdr` (virtio 1.x, 5.10.6): `le64 src_cid;
/// le64 dst_cid; le32 src_port; le32 dst_port; le32 len; le16 type; le16 op; le32 flags;
/// le32 buf_alloc; le32 fwd_cnt`, packed: 44 bytes.
pub const HEADER_SIZE: usize = 44;

/// `type_`: stream socket, the only type we support.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (`op`).
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// `OP_SHUTDOWN` flags: the sender will receive no more / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet header, as plain host values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// The header as it sits in guest memory (little-endian, packed).
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses a header from its guest-memory representation (used by tests and tools).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; HEADER_SIZE] = b.get(..HEADER_SIZE)?.try_into().ok()?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or([0; 2]));
        Some(Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }
}

/// Why a descriptor chain was not a usable packet or buffer.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error(transparent)]
    BrokenChain(#[from] ChainShapeError),
    #[error("descriptor outside guest memory or chain too long: {0}")]
    Chain(#[source] virtio_queue::Error),
    #[error("{0} bytes available, a packet header needs {HEADER_SIZE}")]
    ShortHeader(usize),
    #[error("payload length {len} exceeds the {avail} bytes available or the maximum")]
    BadLen { hdr: Header, len: u32, avail: usize },
    #[error("guest memory access failed: {0}")]
    Memory(#[source] io::Error),
}

/// Reads one packet from a TX descriptor chain. The payload (`header.len` bytes, at most
/// [`MAX_PKT_PAYLOAD`]) is copied into `payload`, which is resized to fit.
pub fn read_tx_packet(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    payload: &mut Vec<u8>,
) -> Result<Header, PacketError> {
    payload.clear();
    check_chain(&chain, None)?;
    let mut reader: Reader<'_, ()> = Reader::new(mem, chain).map_err(PacketError::Chain)?;
    let avail = reader.available_bytes();
    if avail < HEADER_SIZE {
        return Err(PacketError::ShortHeader(avail));
    }
    let mut hb = [0u8; HEADER_SIZE];
    reader.read_exact(&mut hb).map_err(PacketError::Memory)?;
    let hdr = Header::from_bytes(&hb).ok_or(PacketError::ShortHeader(avail))?;
    let len = hdr.len as usize;
    let avail = avail - HEADER_SIZE;
    if len > MAX_PKT_PAYLOAD || len > avail {
        return Err(PacketError::BadLen {
            hdr,
            len: hdr.len,
            avail,
        });
    }
    payload.resize(len, 0);
    reader.read_exact(payload).map_err(PacketError::Memory)?;
    Ok(hdr)
}

/// A writable RX descriptor chain, ready to receive one packet.
pub struct RxBuffer<'a> {
    writer: Writer<'a, ()>,
}

impl<'a> RxBuffer<'a> {
    /// Takes the writable descriptors of an RX chain (any layout, at least a header's
    /// worth of space).
    pub fn from_chain(
        mem: &'a GuestMemory,
        chain: DescriptorChain<&GuestMemory>,
    ) -> Result<Self, PacketError> {
        check_chain(&chain, None)?;
        let writer: Writer<'a, ()> = Writer::new(mem, chain).map_err(PacketError::Chain)?;
        if writer.available_bytes() < HEADER_SIZE {
            return Err(PacketError::ShortHeader(writer.available_bytes()));
        }
        Ok(RxBuffer { writer })
    }

    /// How many payload bytes this buffer can carry.
    pub fn capacity(&self) -> usize {
        self.writer
            .available_bytes()
            .saturating_sub(HEADER_SIZE)
            .min(MAX_PKT_PAYLOAD)
    }

    /// Writes `hdr` with `payload` (truncated to `capacity()`; `hdr.len` is set to the
    /// payload length); returns the number of bytes written (the used length).
    pub fn write(&mut self, hdr: &Header, payload: &[u8]) -> Result<u32, PacketError> {
        let n = payload.len().min(self.capacity());
        let mut hdr = *hdr;
        hdr.len = n as u32;
        self.writer
            .write_all(&hdr.to_bytes())
            .map_err(PacketError::Memory)?;
        self.writer
            .write_all(&payload[..n])
            .map_err(PacketError::Memory)?;
        Ok((HEADER_SIZE + n) as u32)
    }
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_ends_with_fwd_cnt_at_header_size() {
        let hdr = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1024,
            dst_port: 5000,
            len: 7,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 0x1_0000,
            fwd_cnt: 0xaabb_ccdd,
        };
        let bytes = hdr.to_bytes();
        assert_eq!(bytes[HEADER_SIZE - 4..], 0xaabb_ccdd_u32.to_le_bytes());
        assert_eq!(bytes[28..30], TYPE_STREAM.to_le_bytes());
        assert_eq!(Header::from_bytes(&bytes), Some(hdr));
        assert_eq!(Header::from_bytes(&bytes[..HEADER_SIZE - 1]), None);
    }
}

//! vsock packets: the header, validation of guest TX packets, and writing RX packets.
//!
//! Descriptor chains are parsed with the `virtio-vsock` crate's [`VsockPacket`], which
//! reads the header once (no time-of-check/time-of-use on header fields), checks that the
//! header and payload fit their descriptors and guest memory, and bounds the payload length.
//! The payload is copied out of guest memory before anything acts on it.

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::Bytes;

use super::super::GuestMemory;
use super::MAX_PKT_PAYLOAD;

/// Size of the packet header (`struct virtio_vsock_hdr`): 44 bytes.
pub const HEADER_SIZE: usize = PKT_HEADER_SIZE;

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
    fn from_packet<B: vm_memory::bitmap::BitmapSlice>(pkt: &VsockPacket<'_, B>) -> Self {
        Header {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

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

/// Why a TX descriptor chain was not a usable packet.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("malformed descriptor chain: {0}")]
    Chain(virtio_vsock::packet::Error),
    #[error("cannot read packet payload from guest memory: {0}")]
    Payload(vm_memory::VolatileMemoryError),
}

/// Reads one packet from a TX descriptor chain. The payload (`header.len` bytes, at most
/// [`MAX_PKT_PAYLOAD`]) is copied into `payload`, which is resized to fit.
pub fn read_tx_packet(
    mem: &GuestMemory,
    chain: &mut DescriptorChain<&GuestMemory>,
    payload: &mut Vec<u8>,
) -> Result<Header, PacketError> {
    let pkt = VsockPacket::from_tx_virtq_chain(mem, chain, MAX_PKT_PAYLOAD as u32)
        .map_err(PacketError::Chain)?;
    let hdr = Header::from_packet(&pkt);
    payload.clear();
    if let Some(data) = pkt.data_slice() {
        // `from_tx_virtq_chain` guarantees the slice is exactly `len` (<= MAX) bytes.
        payload.resize(data.len().min(MAX_PKT_PAYLOAD), 0);
        data.read_slice(payload, 0).map_err(PacketError::Payload)?;
    }
    Ok(hdr)
}

/// A writable RX descriptor chain, ready to receive one packet.
pub struct RxBuffer<'a> {
    pkt: VsockPacket<'a, ()>,
}

impl<'a> RxBuffer<'a> {
    /// Parses an RX descriptor chain (header descriptor plus data descriptor, or one
    /// descriptor holding both).
    pub fn from_chain(
        mem: &'a GuestMemory,
        chain: &mut DescriptorChain<&GuestMemory>,
    ) -> Result<Self, PacketError> {
        // Large data buffers are fine: we simply never fill more than MAX_PKT_PAYLOAD.
        let pkt =
            VsockPacket::from_rx_virtq_chain(mem, chain, u32::MAX).map_err(PacketError::Chain)?;
        Ok(RxBuffer { pkt })
    }

    /// How many payload bytes this buffer can carry.
    pub fn capacity(&self) -> usize {
        self.pkt
            .data_slice()
            .map_or(0, |s| s.len())
            .min(MAX_PKT_PAYLOAD)
    }

    /// Writes `hdr` and `payload` (whose length must equal `hdr.len` and be at most
    /// `capacity()`); returns the number of bytes written (the used length).
    pub fn write(&mut self, hdr: &Header, payload: &[u8]) -> Result<u32, PacketError> {
        let n = payload.len().min(self.capacity());
        let mut hdr = *hdr;
        hdr.len = n as u32;
        if n > 0 {
            if let Some(data) = self.pkt.data_slice() {
                data.write_slice(&payload[..n], 0)
                    .map_err(PacketError::Payload)?;
            }
        }
        self.pkt
            .header_slice()
            .write_slice(&hdr.to_bytes(), 0)
            .map_err(PacketError::Payload)?;
        Ok((HEADER_SIZE + n) as u32)
    }
}

//! virtio-net: a network device backed by a TAP file descriptor the caller opened.
//!
//! - [`header`] parses and checks the `virtio_net_hdr` of the frames the guest sends
//!   (guest-controlled offload requests), before anything reaches the TAP;
//! - [`tap`] owns the TAP descriptor: non-blocking frame reads and writes, and the
//!   offloads the TAP may hand to the guest (`TUNSETOFFLOAD`);
//! - [`device`] is the virtio glue: features, config space (MAC, MTU), the RX and TX
//!   queues, activation and reset, and the event-loop handlers that move frames between
//!   the queues and the TAP.
//!
//! The TAP is opened with `IFF_VNET_HDR` and a 12-byte vnet header (`TUNSETVNETHDRSZ`),
//! the size of virtio 1.x's `virtio_net_hdr_v1`, so frames cross between the TAP and the
//! guest with their header unchanged: checksum and segmentation offloads (TSO) work in
//! both directions without the VMM touching the payload's protocol headers.

pub mod device;
pub mod header;
pub mod tap;

#[cfg(test)]
mod tests;

pub use device::Net;

use super::GuestLog;

/// Maximum size of each virtqueue.
pub const QUEUE_SIZE: u16 = 256;
/// Queues: receive (device → driver) and transmit (driver → device). No control queue.
pub const NUM_QUEUES: usize = 2;
pub const RXQ_INDEX: usize = 0;
pub const TXQ_INDEX: usize = 1;

/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers (virtio 1.x, 5.1.6).
pub const VNET_HDR_LEN: usize = 12;
/// Largest Ethernet frame a TSO packet can be (64 KiB of IP packet plus the Ethernet and
/// VLAN headers), and so the largest frame either direction carries.
pub const MAX_FRAME_LEN: usize = 65535 + 14 + 4;
/// Largest buffer one frame needs: the vnet header plus the largest frame.
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Frames moved per event before the device yields to the other devices of the event
/// loop (it re-signals itself to go on).
pub const FRAMES_PER_EVENT: usize = 128;

/// A network interface of the guest: the TAP behind it and what the guest's driver sees.
#[derive(Debug)]
pub struct NetConfig {
    /// An open TAP (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, vnet header size 12).
    pub tap: std::os::fd::OwnedFd,
    /// The MAC address the guest's interface gets (config space, `VIRTIO_NET_F_MAC`).
    pub mac: [u8; 6],
    /// The MTU the guest's interface gets (config space, `VIRTIO_NET_F_MTU`).
    pub mtu: u16,
}

/// Why a network device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot make the TAP descriptor non-blocking: {0}")]
    TapFlags(#[source] std::io::Error),
    #[error("MTU {0} is outside 68..=65535")]
    Mtu(u16),
    #[error("cannot create the queue eventfds: {0}")]
    EventFd(#[source] std::io::Error),
}

/// The virtio-net devices' log name and their budget of warnings about guest misbehaviour.
pub(crate) static GUEST_LOG: GuestLog = GuestLog::new("virtio-net");

//! The `virtio_net_hdr_v1` in front of every frame, and the checks on the ones the guest
//! writes (virtio 1.x, 5.1.6.2).
//!
//! A transmitted frame's header asks the host to finish the guest's work: complete a
//! partial checksum (`NEEDS_CSUM` with `csum_start`/`csum_offset`) or segment a large TCP
//! packet (`gso_type`, `gso_size`, `hdr_len`). The host kernel checks these again when the
//! frame is written to the TAP, but the device does not rely on it: a header that asks for
//! an offload the driver did not negotiate, uses unknown flags or types, or points outside
//! its frame is refused here, and the frame is dropped.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
};

use super::VNET_HDR_LEN;

/// A vnet header, as plain host values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

/// Why a transmitted frame's header was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("frame of {0} bytes is shorter than its {VNET_HDR_LEN}-byte vnet header")]
    Short(usize),
    #[error("unknown header flags {0:#x}")]
    Flags(u8),
    #[error("checksum offload requested, but VIRTIO_NET_F_CSUM was not negotiated")]
    CsumNotNegotiated,
    #[error("checksum at {start}+{offset} lies outside the {len}-byte frame")]
    CsumOutOfFrame { start: u16, offset: u16, len: usize },
    #[error("unknown or not negotiated GSO type {0:#x}")]
    GsoType(u8),
    #[error("segmentation offload without a partial checksum")]
    GsoWithoutCsum,
    #[error("segmentation offload with gso_size 0")]
    GsoSizeZero,
    #[error("header length {hdr_len} is beyond the {len}-byte frame")]
    HdrLen { hdr_len: u16, len: usize },
}

impl VnetHeader {
    /// Parses the first [`VNET_HDR_LEN`] bytes of `b` (little-endian fields).
    pub fn from_bytes(b: &[u8]) -> Result<Self, HeaderError> {
        let b: &[u8; VNET_HDR_LEN] = b
            .get(..VNET_HDR_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(HeaderError::Short(b.len()))?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        })
    }

    /// The header as it sits in memory.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Checks the header of a frame the guest transmits: `frame_len` is the length of the
    /// Ethernet frame after the header, `acked` the features the driver negotiated.
    pub fn check_tx(&self, frame_len: usize, acked: u64) -> Result<(), HeaderError> {
        let has = |bit: u32| acked & (1u64 << bit) != 0;
        let needs_csum = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        if self.flags & !needs_csum != 0 {
            return Err(HeaderError::Flags(self.flags));
        }
        let csum = self.flags & needs_csum != 0;
        if csum {
            if !has(VIRTIO_NET_F_CSUM) {
                return Err(HeaderError::CsumNotNegotiated);
            }
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if end > frame_len {
                return Err(HeaderError::CsumOutOfFrame {
                    start: self.csum_start,
                    offset: self.csum_offset,
                    len: frame_len,
                });
            }
        }
        let allowed = match u32::from(self.gso_type) {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => has(VIRTIO_NET_F_HOST_TSO4),
            VIRTIO_NET_HDR_GSO_TCPV6 => has(VIRTIO_NET_F_HOST_TSO6),
            // ECN (we offer no HOST_ECN), UFO (deprecated, not offered), anything else.
            t if t & VIRTIO_NET_HDR_GSO_ECN != 0 => false,
            _ => false,
        };
        if !allowed {
            return Err(HeaderError::GsoType(self.gso_type));
        }
        if u32::from(self.gso_type) != VIRTIO_NET_HDR_GSO_NONE {
            if !csum {
                return Err(HeaderError::GsoWithoutCsum);
            }
            if self.gso_size == 0 {
                return Err(HeaderError::GsoSizeZero);
            }
        }
        if usize::from(self.hdr_len) > frame_len {
            return Err(HeaderError::HdrLen {
                hdr_len: self.hdr_len,
                len: frame_len,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 =
        (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_HOST_TSO4) | (1 << VIRTIO_NET_F_HOST_TSO6);

    fn tso4() -> VnetHeader {
        VnetHeader {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    #[test]
    fn round_trips_through_bytes() {
        let h = tso4();
        assert_eq!(VnetHeader::from_bytes(&h.to_bytes()).unwrap(), h);
        assert_eq!(
            VnetHeader::from_bytes(&[0u8; 11]),
            Err(HeaderError::Short(11))
        );
    }

    #[test]
    fn plain_and_offloaded_frames_pass() {
        assert_eq!(VnetHeader::default().check_tx(60, 0), Ok(()));
        assert_eq!(tso4().check_tx(64_000, ALL), Ok(()));
        let mut v6 = tso4();
        v6.gso_type = VIRTIO_NET_HDR_GSO_TCPV6 as u8;
        assert_eq!(v6.check_tx(64_000, ALL), Ok(()));
    }

    #[test]
    fn guest_controlled_fields_are_checked() {
        let csum_only = 1u64 << VIRTIO_NET_F_CSUM;
        let cases: Vec<(&str, VnetHeader, usize, u64, HeaderError)> = vec![
            (
                "unknown flag",
                VnetHeader {
                    flags: 0x82,
                    ..Default::default()
                },
                60,
                ALL,
                HeaderError::Flags(0x82),
            ),
            (
                "csum not negotiated",
                VnetHeader {
                    flags: 1,
                    csum_start: 34,
                    csum_offset: 6,
                    ..Default::default()
                },
                60,
                0,
                HeaderError::CsumNotNegotiated,
            ),
            (
                "csum past the end",
                VnetHeader {
                    flags: 1,
                    csum_start: 50,
                    csum_offset: 16,
                    ..Default::default()
                },
                60,
                ALL,
                HeaderError::CsumOutOfFrame {
                    start: 50,
                    offset: 16,
                    len: 60,
                },
            ),
            (
                "csum offsets at their maximum",
                VnetHeader {
                    flags: 1,
                    csum_start: u16::MAX,
                    csum_offset: u16::MAX,
                    ..Default::default()
                },
                60,
                ALL,
                HeaderError::CsumOutOfFrame {
                    start: u16::MAX,
                    offset: u16::MAX,
                    len: 60,
                },
            ),
            (
                "tso4 not negotiated",
                tso4(),
                64_000,
                csum_only,
                HeaderError::GsoType(1),
            ),
            (
                "udp gso",
                VnetHeader {
                    gso_type: 3,
                    ..tso4()
                },
                64_000,
                ALL,
                HeaderError::GsoType(3),
            ),
            (
                "ecn",
                VnetHeader {
                    gso_type: 0x81,
                    ..tso4()
                },
                64_000,
                ALL,
                HeaderError::GsoType(0x81),
            ),
            (
                "gso without csum",
                VnetHeader { flags: 0, ..tso4() },
                64_000,
                ALL,
                HeaderError::GsoWithoutCsum,
            ),
            (
                "gso size zero",
                VnetHeader {
                    gso_size: 0,
                    ..tso4()
                },
                64_000,
                ALL,
                HeaderError::GsoSizeZero,
            ),
            (
                "hdr_len past the end",
                VnetHeader {
                    hdr_len: 100,
                    ..tso4()
                },
                80,
                ALL,
                HeaderError::HdrLen {
                    hdr_len: 100,
                    len: 80,
                },
            ),
        ];
        for (name, h, len, acked, want) in cases {
            assert_eq!(h.check_tx(len, acked), Err(want), "{name}");
        }
    }
}

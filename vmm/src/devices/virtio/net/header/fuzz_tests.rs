//! Property-based fuzzing of the vnet header of transmitted frames: any bytes parse or
//! are refused as short, and [`VnetHeader::check_tx`] accepts exactly the headers the
//! specification and the negotiated features allow, written here as a model.

use proptest::prelude::*;

use super::*;
use crate::devices::virtio::test_utils::fuzz::config;

/// A header, mostly of meaningful values, sometimes anything.
fn vnet_header() -> impl Strategy<Value = VnetHeader> {
    let small = || prop_oneof![4 => 0u16..200, 1 => any::<u16>()];
    (
        prop_oneof![4 => 0u8..2, 1 => any::<u8>()],
        prop_oneof![4 => prop::sample::select(vec![0u8, 1, 3, 4, 5, 0x80, 0x81, 0x84]), 1 => any::<u8>()],
        small(),
        small(),
        small(),
        small(),
        any::<u16>(),
    )
        .prop_map(
            |(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers)| VnetHeader {
                flags,
                gso_type,
                hdr_len,
                gso_size,
                csum_start,
                csum_offset,
                num_buffers,
            },
        )
}

/// Whether the specification (5.1.6.2) and the features let the device take the header.
fn model_ok(h: &VnetHeader, frame_len: usize, acked: u64) -> bool {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    let csum = h.flags == VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    let gso_ok = match u32::from(h.gso_type) {
        VIRTIO_NET_HDR_GSO_NONE => true,
        VIRTIO_NET_HDR_GSO_TCPV4 => has(VIRTIO_NET_F_HOST_TSO4) && csum && h.gso_size > 0,
        VIRTIO_NET_HDR_GSO_TCPV6 => has(VIRTIO_NET_F_HOST_TSO6) && csum && h.gso_size > 0,
        _ => false,
    };
    let csum_ok = !csum
        || (has(VIRTIO_NET_F_CSUM)
            && u64::from(h.csum_start) + u64::from(h.csum_offset) + 2 <= frame_len as u64);
    (h.flags == 0 || csum) && gso_ok && csum_ok && usize::from(h.hdr_len) <= frame_len
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes: a header iff there are enough, and it writes back as those bytes.
    #[test]
    fn fuzz_net_header_bytes(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
        match VnetHeader::from_bytes(&bytes) {
            Ok(h) => prop_assert_eq!(&h.to_bytes()[..], &bytes[..VNET_HDR_LEN]),
            Err(e) => {
                prop_assert!(bytes.len() < VNET_HDR_LEN);
                prop_assert_eq!(e, HeaderError::Short(bytes.len()));
            }
        }
    }

    /// `check_tx` accepts exactly what the model accepts, for any frame length and any
    /// negotiated features.
    #[test]
    fn fuzz_net_header_check_tx_matches_the_spec(
        h in vnet_header(),
        frame_len in prop_oneof![0usize..300, any::<usize>()],
        acked in prop_oneof![
            Just(0u64),
            Just((1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_HOST_TSO4) | (1 << VIRTIO_NET_F_HOST_TSO6)),
            any::<u64>(),
        ],
    ) {
        prop_assert_eq!(h.check_tx(frame_len, acked).is_ok(), model_ok(&h, frame_len, acked));
    }
}

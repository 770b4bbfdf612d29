//! Property-based fuzzing of what the guest reads from the virtio-fs device itself (the
//! FUSE requests go to the backend, not through the VMM): config-space reads at any
//! offset and width give the layout of the specification (5.11.4) and zeros outside it.

use proptest::prelude::*;

use super::*;
use crate::devices::virtio::test_utils::fuzz::config;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_fs_config_space_reads(
        tag in "[a-zA-Z0-9_./-]{1,36}",
        offset in prop_oneof![0u64..48, (u64::MAX - 16)..=u64::MAX, any::<u64>()],
        len in 0usize..16,
    ) {
        let config = config_space(&tag);
        let mut data = vec![0xa5u8; len];
        read_config_space(&config, offset, &mut data);
        for (i, &byte) in data.iter().enumerate() {
            // `u8 tag[36]` NUL-padded, then `le32 num_request_queues` = 1, then nothing.
            let want = match offset.checked_add(i as u64) {
                Some(at) if at < tag.len() as u64 => tag.as_bytes()[at as usize],
                Some(36) => 1,
                _ => 0,
            };
            prop_assert_eq!(byte, want, "byte {} of a read at {:#x}", i, offset);
        }
    }
}

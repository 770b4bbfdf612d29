//! Property-based fuzzing of the muxer: the `CONNECT <port>` line a host client writes,
//! and sequences of packets a hostile guest sends (any cids, ports, types, ops, credit),
//! which never make the host hold more than its limits: connections, queued resets, and
//! each connection's buffer of guest bytes ([`CONN_TX_BUF_SIZE`]).

use std::os::unix::net::UnixListener;

use proptest::prelude::*;

use super::*;
use crate::devices::virtio::test_utils::fuzz::config;
use crate::devices::virtio::vsock::{CONN_TX_BUF_SIZE, MAX_PKT_PAYLOAD};

const GUEST_CID: u64 = 3;
/// The host port with a listening Unix socket behind it (others refuse).
const OPEN_PORT: u32 = 5000;

/// A packet as a hostile guest sends it, mostly to the right cids and ports so that it
/// reaches connections, and a payload length (the payload is zeros).
fn packet() -> impl Strategy<Value = (Header, usize)> {
    let cid = |good: u64| prop_oneof![8 => Just(good), 1 => any::<u64>()];
    (
        (
            cid(GUEST_CID),
            cid(HOST_CID),
            prop_oneof![Just(1000u32), Just(1001), any::<u32>()],
            prop_oneof![4 => Just(OPEN_PORT), 1 => Just(OPEN_PORT + 1), 1 => any::<u32>()],
        ),
        (
            prop_oneof![8 => Just(TYPE_STREAM), 1 => any::<u16>()],
            prop_oneof![8 => 0u16..9, 1 => any::<u16>()],
            prop_oneof![0u32..4, any::<u32>()],
            prop_oneof![Just(0u32), Just(CONN_TX_BUF_SIZE), any::<u32>()],
            any::<u32>(),
        ),
        prop_oneof![4 => 0usize..2000, 1 => (MAX_PKT_PAYLOAD - 8)..=MAX_PKT_PAYLOAD],
    )
        .prop_map(
            |(
                (src_cid, dst_cid, src_port, dst_port),
                (type_, op, flags, buf_alloc, fwd_cnt),
                len,
            )| {
                let hdr = Header {
                    src_cid,
                    dst_cid,
                    src_port,
                    dst_port,
                    len: len as u32,
                    type_,
                    op,
                    flags,
                    buf_alloc,
                    fwd_cnt,
                };
                (hdr, if op == OP_RW { len } else { 0 })
            },
        )
}

proptest! {
    #![proptest_config(config())]

    /// Any line: a port iff the line is `CONNECT ` and 1 to 10 decimal digits of a `u32`.
    #[test]
    fn fuzz_vsock_connect_line(
        line in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            "CONNECT [0-9+ -]{0,12}".prop_map(String::into_bytes),
        ]
    ) {
        let want = line
            .strip_prefix(b"CONNECT ")
            .filter(|d| (1..=10).contains(&d.len()) && d.iter().all(u8::is_ascii_digit))
            .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u64>().ok())
            .and_then(|p| u32::try_from(p).ok());
        prop_assert_eq!(parse_connect(&line).ok(), want);
    }

    /// Every port round-trips through its line.
    #[test]
    fn fuzz_vsock_connect_line_round_trips(port in any::<u32>()) {
        prop_assert_eq!(parse_connect(format!("CONNECT {port}").as_bytes()), Ok(port));
    }

    /// Whatever the guest sends, the muxer stays within its limits, and the work it
    /// queues for the guest drains.
    #[test]
    fn fuzz_vsock_muxer_guest_packets(
        packets in prop::collection::vec((packet(), any::<bool>()), 1..40)
    ) {
        // Sockets come and go by the hundred thousand under `cargo xtask fuzz`: on tmpfs
        // where there is one, not on a disk's journal.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        let uds = dir.path().join("v.sock");
        // Nobody accepts or reads: the connection's socket fills, and guest bytes wait.
        let _open = UnixListener::bind(dir.path().join(format!("v.sock_{OPEN_PORT}"))).unwrap();
        let mut muxer = Muxer::new(GUEST_CID, uds).unwrap();
        let zeros = vec![0u8; MAX_PKT_PAYLOAD];
        let mut rx = vec![0u8; 4096];
        for ((hdr, len), drain) in packets {
            muxer.handle_guest_pkt(&hdr, &zeros[..len]);
            prop_assert!(muxer.conns.len() <= MAX_CONNECTIONS);
            prop_assert!(muxer.stray_rst.len() <= MAX_STRAY_RST);
            for conn in muxer.conns.values() {
                prop_assert!(conn.tx_pending() <= CONN_TX_BUF_SIZE as usize);
            }
            if drain {
                let mut n = 0;
                while let Some(out) = muxer.next_rx(&mut rx) {
                    prop_assert_eq!(out.src_cid, HOST_CID);
                    prop_assert_eq!(out.dst_cid, GUEST_CID);
                    prop_assert!(out.len as usize <= rx.len());
                    n += 1;
                    prop_assert!(n <= MAX_STRAY_RST + 2 * MAX_CONNECTIONS, "RX work does not drain");
                }
            }
        }
    }
}

//! Property-based fuzzing of what the host decodes from the guest: arbitrary JSON (built
//! from the protocol's own names, so that it reaches deep into the messages) and
//! arbitrary bytes into [`GuestMessage`] and the stream, DNS and socket-relay headers, and
//! base64 fields. The frame decoder's properties are beside it (`framing::fuzz_tests`);
//! [`config`] is the proptest configuration of both (`cargo xtask fuzz` runs them at
//! length).

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::{
    base64_field, DnsRelayHeader, ExitStatus, GuestMessage, GuestProcess, GuestStats, HostMessage,
    SocketRelayHeader, StreamHeader,
};

/// The configuration of every property of this crate: `RUNVM_FUZZ_CASES` cases (default
/// 256, what `cargo test` runs), from the seed `RUNVM_FUZZ_SEED` (default fixed, so that
/// `cargo test` is reproducible; `cargo xtask fuzz` gives a new one each round), and no
/// regression files written into the source tree.
pub(crate) fn config() -> Config {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    Config {
        cases: env("RUNVM_FUZZ_CASES").map_or(256, |n: u64| n.min(u64::from(u32::MAX)) as u32),
        rng_seed: RngSeed::Fixed(env("RUNVM_FUZZ_SEED").unwrap_or(0x5eed_f022)),
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    }
}

/// Names the protocol uses (variants and fields), or any string.
fn name() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "Hello", "Started", "StartFailed", "Exited", "Processes", "Stats", "Updated",
            "Signaled", "version", "process", "pid", "ppid", "uid", "cmd", "rss_kib", "code",
            "message", "status", "oom_kills", "request", "processes", "stats", "memory_usage",
            "memory_limit", "cpu_usage_usec", "pids_current", "pids_limit", "error", "fd",
            "relay", "server", "tcp", "path",
        ])
        .prop_map(String::from),
        1 => any::<String>(),
    ]
    .boxed()
}

/// Any JSON value, its objects keyed mostly by the protocol's names.
pub(crate) fn json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(i64::from(i32::MIN)),
            Just(i64::from(u32::MAX)),
            any::<i64>()
        ]
        .prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        name().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((name(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

fn guest_message() -> impl Strategy<Value = GuestMessage> {
    let status = prop_oneof![
        any::<i32>().prop_map(ExitStatus::Exited),
        any::<i32>().prop_map(ExitStatus::Signaled)
    ];
    let process = (
        any::<i32>(),
        any::<i32>(),
        any::<u32>(),
        any::<String>(),
        any::<u64>(),
    )
        .prop_map(|(pid, ppid, uid, cmd, rss_kib)| GuestProcess {
            pid,
            ppid,
            uid,
            cmd,
            rss_kib,
        });
    let stats = (
        any::<[u64; 4]>(),
        any::<Option<u64>>(),
        any::<Option<u64>>(),
    )
        .prop_map(
            |(
                [memory_usage, cpu_usage_usec, pids_current, oom_kills],
                memory_limit,
                pids_limit,
            )| {
                GuestStats {
                    memory_usage,
                    memory_limit,
                    cpu_usage_usec,
                    pids_current,
                    pids_limit,
                    oom_kills,
                }
            },
        );
    prop_oneof![
        any::<u32>().prop_map(|version| GuestMessage::Hello { version }),
        (any::<u32>(), any::<i32>())
            .prop_map(|(process, pid)| GuestMessage::Started { process, pid }),
        (any::<u32>(), any::<i32>(), any::<String>()).prop_map(|(process, code, message)| {
            GuestMessage::StartFailed {
                process,
                code,
                message,
            }
        }),
        (any::<u32>(), status, any::<u64>()).prop_map(|(process, status, oom_kills)| {
            GuestMessage::Exited {
                process,
                status,
                oom_kills,
            }
        }),
        (any::<u32>(), prop::collection::vec(process, 0..4))
            .prop_map(|(request, processes)| GuestMessage::Processes { request, processes }),
        (any::<u32>(), stats).prop_map(|(request, stats)| GuestMessage::Stats { request, stats }),
        (any::<u32>(), any::<Option<String>>())
            .prop_map(|(request, error)| GuestMessage::Updated { request, error }),
        (any::<u32>(), any::<Option<String>>())
            .prop_map(|(container, error)| GuestMessage::ContainerRemoved { container, error }),
    ]
}

pub(crate) fn any_guest_message() -> BoxedStrategy<GuestMessage> {
    guest_message().boxed()
}

/// Decodes `bytes` as a `T`; when that works, `T` writes back to JSON that decodes to
/// the same value (the host never holds something it could not have been sent).
fn decodes_consistently<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = serde_json::from_slice::<T>(bytes) {
        let again: T = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
        prop_assert_eq!(again, v);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any JSON the guest writes decodes into the guest's messages and headers, or is an
    /// error; never a panic, and what decodes is consistent.
    #[test]
    fn fuzz_messages_from_any_json(value in json()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        decodes_consistently::<GuestMessage>(&bytes)?;
        decodes_consistently::<StreamHeader>(&bytes)?;
        decodes_consistently::<SocketRelayHeader>(&bytes)?;
        decodes_consistently::<DnsRelayHeader>(&bytes)?;
        decodes_consistently::<HostMessage>(&bytes)?;
    }

    /// Any bytes: the same, for what is not even JSON.
    #[test]
    fn fuzz_messages_from_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        decodes_consistently::<GuestMessage>(&bytes)?;
        decodes_consistently::<StreamHeader>(&bytes)?;
        decodes_consistently::<SocketRelayHeader>(&bytes)?;
        decodes_consistently::<DnsRelayHeader>(&bytes)?;
    }

    /// Every message a guest can send round-trips through JSON.
    #[test]
    fn fuzz_guest_message_round_trips(msg in guest_message()) {
        let back: GuestMessage = serde_json::from_slice(&serde_json::to_vec(&msg).unwrap()).unwrap();
        prop_assert_eq!(back, msg);
    }

    /// A socket-relay header is a number and nothing else: any extra key is refused.
    #[test]
    fn fuzz_socket_relay_header_takes_no_extra_key(relay in any::<u32>(), key in name(), extra in json()) {
        // Any key but the one the header has.
        let key = if key == "relay" { format!("{key}_") } else { key };
        let mut obj = serde_json::Map::new();
        obj.insert("relay".into(), relay.into());
        let exact = serde_json::to_vec(&obj).unwrap();
        prop_assert_eq!(serde_json::from_slice::<SocketRelayHeader>(&exact).unwrap(), SocketRelayHeader { relay });
        obj.insert(key, extra);
        prop_assert!(serde_json::from_slice::<SocketRelayHeader>(&serde_json::to_vec(&obj).unwrap()).is_err());
    }

    /// Any bytes round-trip through base64.
    #[test]
    fn fuzz_base64_round_trips(data in prop::collection::vec(any::<u8>(), 0..300)) {
        let text = base64_field::encode(&data);
        prop_assert_eq!(text.len(), data.len().div_ceil(3) * 4);
        prop_assert_eq!(base64_field::decode(&text), Some(data));
    }

    /// Any text a guest sends as base64 is refused unless it is the one canonical
    /// encoding of what it decodes to, which is never longer than three quarters of it.
    #[test]
    fn fuzz_base64_decoding_is_strict(
        text in prop_oneof![
            "[A-Za-z0-9+/=]{0,40}",
            "[A-Za-z0-9+/]{0,40}={0,3}",
            any::<String>(),
        ]
    ) {
        if let Some(data) = base64_field::decode(&text) {
            prop_assert_eq!(base64_field::encode(&data), text.clone());
            prop_assert!(data.len() <= text.len() / 4 * 3);
        }
    }
}

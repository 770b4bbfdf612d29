//! `events`: the container's usage as runc prints it, one JSON object a line. `--stats`
//! prints one `stats` event and exits; without it, a `stats` event every `--interval`
//! seconds (and an `oom` event, within half a second, when the guest kernel OOM-killed a
//! process of the container) until the container stops.
//!
//! Memory and CPU come from the host cgroup (the whole VM: what `docker stats` shows),
//! pids from the guest's cgroup of the container (the host cgroup holds only the VMM's
//! threads); the guest's own figures are under `data.guest` too.

use std::path::Path;
use std::time::{Duration, Instant};

/// How often a streaming `events` looks for an OOM kill, whatever its `--interval`.
const OOM_POLL: Duration = Duration::from_millis(500);

use anyhow::{bail, Result};
use runvm_protocol::GuestStats;
use serde_json::{json, Value};

use crate::cgroup::{HostCgroup, HostStats};
use crate::monitor::api::{self, ControlResponse, Request};
use crate::state::ContainerState;

/// One line of `events`, with runc's key order (`type`, `id`, `data`).
#[derive(serde::Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
}

impl Event<'_> {
    fn line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `events --interval`: the value in milliseconds (see [`interval_ms`]).
pub fn events(root: &Path, args: &liboci_cli::Events) -> Result<i32> {
    let (id, stats_once, interval) = (&args.container_id, args.stats, args.interval);
    let state = super::load(root, id)?;
    state.status(root).can_events()?;
    if !stats_once && interval == 0 {
        bail!("--interval must be more than 0");
    }
    let state_dir = ContainerState::dir(root, id);
    let runtime = ContainerState::runtime_dir(root, id);
    let mut oom_seen: Option<u64> = None;
    let mut next_stats = Instant::now();
    loop {
        // Until the container stops.
        if state.status(root).can_events().is_err() {
            return Ok(0);
        }
        // A member's host cgroup holds only its monitor: its usage is the guest's.
        let host = HostCgroup::load(&state_dir)
            .filter(|_| state.sandbox.is_none())
            .map(|c| c.stats());
        let guest = guest_stats(&runtime);
        let ooms =
            guest.as_ref().map_or(0, |g| g.oom_kills) + host.as_ref().map_or(0, |h| h.oom_kills);
        if !stats_once {
            if oom_seen.is_some_and(|seen| ooms > seen) {
                let oom = Event {
                    kind: "oom",
                    id,
                    data: None,
                };
                println!("{}", oom.line());
            }
            oom_seen = Some(ooms);
        }
        let now = Instant::now();
        if stats_once || now >= next_stats {
            let stats = Event {
                kind: "stats",
                id,
                data: Some(stats_data(host.as_ref(), guest.as_ref())),
            };
            println!("{}", stats.line());
            if stats_once {
                return Ok(0);
            }
            next_stats = now + Duration::from_millis(interval.into());
        }
        // runc reports an OOM as it happens, whatever the interval: look at least every
        // OOM_POLL.
        std::thread::sleep(
            next_stats
                .saturating_duration_since(Instant::now())
                .min(OOM_POLL),
        );
    }
}

fn guest_stats(runtime: &Path) -> Option<GuestStats> {
    match api::request_control(runtime, &Request::Stats, Duration::from_secs(10)) {
        Ok(ControlResponse::Stats(s)) => Some(s),
        Ok(other) => {
            log::debug!("no guest stats: {other:?}");
            None
        }
        Err(e) => {
            log::debug!("no guest stats: {e}");
            None
        }
    }
}

/// `--interval` as runc takes it, a Go duration (`5s`, `100ms`, `1m30s`; a bare number
/// is seconds, as runvm took it before), in milliseconds (what clap stores in
/// liboci-cli's `u32` field).
pub fn interval_ms(text: &str) -> Result<u32, String> {
    let bad = || format!("invalid duration {text:?} (for example 5s, 100ms or 1m)");
    if let Ok(secs) = text.parse::<u32>() {
        return secs.checked_mul(1000).ok_or_else(bad);
    }
    let mut rest = text;
    let mut total_ns: f64 = 0.0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total_ns += value * scale;
        rest = &rest[unit_len..];
    }
    let ms = (total_ns / 1e6).ceil();
    if !(0.0..=f64::from(u32::MAX)).contains(&ms) {
        return Err(bad());
    }
    Ok(ms as u32)
}

/// The `data` of a runc `stats` event (`types.Stats` of runc's events: cpu, memory, pids).
pub fn stats_data(host: Option<&HostStats>, guest: Option<&GuestStats>) -> Value {
    let (mem_usage, mem_limit, mem_max) = match (host, guest) {
        (Some(h), _) if h.memory_usage > 0 => (h.memory_usage, h.memory_limit, h.memory_max_usage),
        (_, Some(g)) => (g.memory_usage, g.memory_limit, None),
        _ => (0, None, None),
    };
    let cpu = match (host, guest) {
        (Some(h), _) if h.cpu_total_ns > 0 => json!({
            "usage": { "total": h.cpu_total_ns, "percpu": [], "kernel": h.cpu_kernel_ns, "user": h.cpu_user_ns },
            "throttling": {},
        }),
        (_, Some(g)) => json!({
            "usage": { "total": g.cpu_usage_usec * 1000, "percpu": [], "kernel": 0, "user": 0 },
            "throttling": {},
        }),
        _ => {
            json!({ "usage": { "total": 0, "percpu": [], "kernel": 0, "user": 0 }, "throttling": {} })
        }
    };
    let pids = match guest {
        Some(g) => json!({ "current": g.pids_current, "limit": g.pids_limit.unwrap_or(0) }),
        None => json!({ "current": host.and_then(|h| h.pids_current).unwrap_or(0), "limit": 0 }),
    };
    let mut data = json!({
        "cpu": cpu,
        "memory": {
            "usage": {
                "usage": mem_usage,
                "limit": mem_limit.unwrap_or(u64::MAX),
                "max": mem_max.unwrap_or(0),
                "failcnt": 0,
            },
            "raw": {},
        },
        "pids": pids,
        "blkio": {},
        "hugetlb": {},
    });
    if let Some(g) = guest {
        data["guest"] = json!({
            "memory": { "usage": g.memory_usage, "limit": g.memory_limit },
            "cpu": { "usage_usec": g.cpu_usage_usec },
            "pids": { "current": g.pids_current, "limit": g.pids_limit },
            "oom_kills": g.oom_kills,
        });
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_memory_from_the_host_and_pids_from_the_guest() {
        let host = HostStats {
            memory_usage: 5 << 20,
            memory_limit: Some(300 << 20),
            cpu_total_ns: 7000,
            pids_current: Some(9),
            ..Default::default()
        };
        let guest = GuestStats {
            memory_usage: 1 << 20,
            pids_current: 2,
            pids_limit: Some(10),
            ..Default::default()
        };
        let e = stats_data(Some(&host), Some(&guest));
        assert_eq!(e["memory"]["usage"]["usage"], 5 << 20);
        assert_eq!(e["cpu"]["usage"]["total"], 7000);
        assert_eq!(e["pids"]["current"], 2);
        assert_eq!(e["guest"]["memory"]["usage"], 1 << 20);
        let only_guest = stats_data(None, Some(&guest));
        assert_eq!(only_guest["memory"]["usage"]["usage"], 1 << 20);
        let nothing = stats_data(None, None);
        assert_eq!(nothing["memory"]["usage"]["usage"], 0);
    }

    #[test]
    fn intervals_are_go_durations_or_seconds() {
        assert_eq!(interval_ms("5"), Ok(5000));
        assert_eq!(interval_ms("1s"), Ok(1000));
        assert_eq!(interval_ms("100ms"), Ok(100));
        assert_eq!(interval_ms("1m30s"), Ok(90_000));
        assert_eq!(interval_ms("1.5s"), Ok(1500));
        for bad in ["", "s", "5x", "-1s", "1s5", "99999999999s"] {
            assert!(interval_ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn event_lines_have_runcs_key_order() {
        let e = Event {
            kind: "stats",
            id: "c",
            data: Some(json!({ "pids": {} })),
        };
        assert_eq!(e.line(), r#"{"type":"stats","id":"c","data":{"pids":{}}}"#);
        let oom = Event {
            kind: "oom",
            id: "c",
            data: None,
        };
        assert_eq!(oom.line(), r#"{"type":"oom","id":"c"}"#);
    }
}

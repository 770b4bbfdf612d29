//! `events`: the container's usage as runc prints it, one JSON object a line. `--stats`
//! prints one `stats` event and exits; without it, a `stats` event every `--interval`
//! seconds (and an `oom` event when the guest kernel OOM-killed a process of the
//! container) until the container stops.
//!
//! Memory and CPU come from the host cgroup (the whole VM: what `docker stats` shows),
//! pids from the guest's cgroup of the container (the host cgroup holds only the VMM's
//! threads); the guest's own figures are under `data.guest` too.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use runvm_protocol::GuestStats;
use serde_json::{json, Value};

use crate::cgroup::{HostCgroup, HostStats};
use crate::monitor::api::{self, ControlResponse, Request};
use crate::state::ContainerState;

pub fn events(root: &Path, args: &liboci_cli::Events) -> Result<i32> {
    let (id, stats_once, interval) = (&args.container_id, args.stats, args.interval);
    let state = super::load(root, id)?;
    state.status(root).can_events()?;
    if !stats_once && interval == 0 {
        bail!("--interval must be at least 1 second");
    }
    let state_dir = ContainerState::dir(root, id);
    let runtime = ContainerState::runtime_dir(root, id);
    let mut oom_seen: Option<u64> = None;
    loop {
        // Until the container stops.
        if state.status(root).can_events().is_err() {
            return Ok(0);
        }
        let host = HostCgroup::load(&state_dir).map(|c| c.stats());
        let guest = guest_stats(&runtime);
        let ooms =
            guest.as_ref().map_or(0, |g| g.oom_kills) + host.as_ref().map_or(0, |h| h.oom_kills);
        if !stats_once {
            if oom_seen.is_some_and(|seen| ooms > seen) {
                println!("{}", json!({ "type": "oom", "id": id }));
            }
            oom_seen = Some(ooms);
        }
        println!("{}", stats_event(id, host.as_ref(), guest.as_ref()));
        if stats_once {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_secs(interval.into()));
    }
}

/// The guest's figures, if its monitor can ask it (not while paused or starting).
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

/// A runc `stats` event (`types.Stats` of runc's events: cpu, memory, pids).
pub fn stats_event(id: &str, host: Option<&HostStats>, guest: Option<&GuestStats>) -> Value {
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
    json!({ "type": "stats", "id": id, "data": data })
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
        let e = stats_event("c", Some(&host), Some(&guest));
        assert_eq!(e["type"], "stats");
        assert_eq!(e["data"]["memory"]["usage"]["usage"], 5 << 20);
        assert_eq!(e["data"]["cpu"]["usage"]["total"], 7000);
        assert_eq!(e["data"]["pids"]["current"], 2);
        assert_eq!(e["data"]["guest"]["memory"]["usage"], 1 << 20);
        let only_guest = stats_event("c", None, Some(&guest));
        assert_eq!(only_guest["data"]["memory"]["usage"]["usage"], 1 << 20);
        let nothing = stats_event("c", None, None);
        assert_eq!(nothing["data"]["memory"]["usage"]["usage"], 0);
    }
}

//! Which of a container's OCI resources runvm applies and how they map to the VM: the
//! protocol's [`Resources`] (memory, CPU, pids), the VM's RAM under a memory limit, the
//! host cgroup's share of it, and runc's shares-to-weight conversion.

use oci_spec::runtime::LinuxResources;
use runvm_protocol::Resources;

/// Host memory the VMM needs besides the guest's RAM (its own heap, stacks, device buffers).
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// Guest RAM beyond the container's memory limit: the guest kernel, init and page cache.
pub const GUEST_OVERHEAD_MIB: u64 = 96;

/// The OCI resources runvm applies, in the protocol's form. Docker fills in fields it
/// does not mean (shares 0, pids 0): those stay unset.
pub fn resources_from_oci(r: &LinuxResources) -> Resources {
    let mem = r.memory().as_ref();
    let cpu = r.cpu().as_ref();
    Resources {
        memory_limit: mem.and_then(|m| m.limit()).filter(|l| *l != 0),
        // runc writes it to `memory.low` when it is not zero.
        memory_reservation: mem.and_then(|m| m.reservation()).filter(|r| *r != 0),
        cpu_quota: cpu.and_then(|c| c.quota()).filter(|q| *q != 0),
        cpu_period: cpu.and_then(|c| c.period()).filter(|p| *p != 0),
        cpu_shares: cpu.and_then(|c| c.shares()).filter(|s| *s != 0),
        pids_limit: r.pids().as_ref().map(|p| p.limit()).filter(|l| *l != 0),
        // Set by the spec's reader; an update (as runc's) leaves the rules as they are.
        devices: None,
    }
}

/// What of an OCI resources document (`runvm update -r`) runvm cannot apply, by name.
pub fn unsupported_in_update(r: &LinuxResources) -> Vec<&'static str> {
    let mut out = Vec::new();
    if let Some(m) = r.memory() {
        if m.kernel().is_some_and(|v| v > 0) {
            out.push("memory.kernel");
        }
        if m.kernel_tcp().is_some_and(|v| v > 0) {
            out.push("memory.kernelTCP");
        }
        if m.swappiness().is_some_and(|v| v != u64::MAX) {
            out.push("memory.swappiness");
        }
    }
    if let Some(c) = r.cpu() {
        if c.realtime_runtime().is_some_and(|v| v > 0) {
            out.push("cpu.realtimeRuntime");
        }
        if c.realtime_period().is_some_and(|v| v > 0) {
            out.push("cpu.realtimePeriod");
        }
        if c.cpus().as_ref().is_some_and(|v| !v.is_empty()) {
            out.push("cpu.cpus");
        }
        if c.mems().as_ref().is_some_and(|v| !v.is_empty()) {
            out.push("cpu.mems");
        }
    }
    // Docker sends the sections it does not mean with zeros (`"blockIO":{"weight":0}`).
    let non_empty = |v: serde_json::Result<serde_json::Value>| v.is_ok_and(|v| meaningful(&v));
    if r.block_io()
        .as_ref()
        .is_some_and(|b| non_empty(serde_json::to_value(b)))
    {
        out.push("blockIO");
    }
    if r.hugepage_limits().as_ref().is_some_and(|v| !v.is_empty()) {
        out.push("hugepageLimits");
    }
    if r.network()
        .as_ref()
        .is_some_and(|n| non_empty(serde_json::to_value(n)))
    {
        out.push("network");
    }
    if r.rdma().as_ref().is_some_and(|v| !v.is_empty()) {
        out.push("rdma");
    }
    if r.unified().as_ref().is_some_and(|v| !v.is_empty()) {
        out.push("unified");
    }
    out
}

/// Whether a JSON value says anything: not null, zero, false or empty, nor made only of such.
fn meaningful(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => a.iter().any(meaningful),
        Value::Object(o) => o.values().any(meaningful),
        Value::Bool(true) => true,
    }
}

/// The VM's RAM for a container: with a memory limit (`docker run --memory`), the limit
/// plus the guest's own needs ([`GUEST_OVERHEAD_MIB`]), whatever `default` says, so that
/// the container gets all the memory its limit gives it under runc and the whole VM fits
/// its host cgroup; without one, `default` (`RUNVM_MEM_MIB`). Never more than the host
/// has (`host_mib`, when known).
pub fn vm_memory_mib(default: u64, r: &Resources, host_mib: Option<u64>) -> u64 {
    let want = match r.memory_limit.filter(|l| *l > 0) {
        Some(limit) => (limit as u64).div_ceil(1 << 20) + GUEST_OVERHEAD_MIB,
        None => default,
    };
    host_mib.map_or(want, |host| want.min(host))
}

/// The VM's vCPUs for a container: with a CPU quota (`docker run --cpus N`), the quota
/// over its period rounded up, and with a cpuset (`--cpuset-cpus`), the number of CPUs
/// in it (the fewer of the two when both are set), so that the container can use as many
/// CPUs as under runc and `nproc` counts its cpuset as there; without either, `default`
/// (`RUNVM_VCPUS`). At most the host's online CPUs and `max` (the VMM's limit), at least 1.
pub fn vm_vcpus(
    default: u8,
    r: &Resources,
    cpuset: Option<usize>,
    host_cpus: usize,
    max: u8,
) -> u8 {
    let quota = r.cpu_quota.filter(|q| *q > 0).map(|quota| {
        let period = r.cpu_period.filter(|p| *p > 0).unwrap_or(100_000);
        (quota as u64).div_ceil(period)
    });
    let set = cpuset.map(|n| n as u64);
    let want = match (quota, set) {
        (Some(q), Some(s)) => q.min(s),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => u64::from(default),
    }
    .min(u64::from(u8::MAX)) as u8;
    let host = u8::try_from(host_cpus.max(1)).unwrap_or(u8::MAX);
    want.min(host).min(max).max(1)
}

/// The host's memory in MiB (`MemTotal` of `/proc/meminfo`), if it can be read.
pub fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib >> 10)
}

/// The host cgroup's memory limit when the container has one: the VM's RAM plus the
/// VMM's overhead (the limit proper holds in the guest, where exceeding it OOM-kills the
/// container's process, not the VM).
pub fn host_memory_max(vm_mib: u64, r: &Resources) -> Option<u64> {
    r.memory_limit
        .filter(|l| *l > 0)
        .map(|_| (vm_mib + VMM_OVERHEAD_MIB) << 20)
}

/// runc's conversion of cgroup v1 `cpu.shares` (2..262144) to v2 `cpu.weight` (1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_quota_gives_the_vcpus_it_allows() {
        let cpus = |quota: i64, period: u64| Resources {
            cpu_quota: Some(quota),
            cpu_period: Some(period),
            ..Default::default()
        };
        assert_eq!(vm_vcpus(1, &Resources::default(), None, 16, 32), 1);
        assert_eq!(vm_vcpus(2, &Resources::default(), None, 1, 32), 1);
        assert_eq!(vm_vcpus(1, &cpus(200_000, 100_000), None, 16, 32), 2);
        assert_eq!(vm_vcpus(1, &cpus(50_000, 100_000), None, 16, 32), 1);
        assert_eq!(vm_vcpus(1, &cpus(250_000, 100_000), None, 16, 32), 3);
        assert_eq!(vm_vcpus(1, &cpus(4_000_000, 100_000), None, 16, 32), 16);
        assert_eq!(vm_vcpus(1, &cpus(4_000_000, 100_000), None, 64, 32), 32);
        // --cpuset-cpus 0,3: two vCPUs (nproc 2, as under runc); with a quota, the fewer.
        assert_eq!(vm_vcpus(1, &Resources::default(), Some(2), 16, 32), 2);
        assert_eq!(vm_vcpus(1, &cpus(50_000, 100_000), Some(2), 16, 32), 1);
        assert_eq!(vm_vcpus(1, &Resources::default(), Some(4), 2, 32), 2);
    }

    #[test]
    fn the_vm_fits_its_memory_limit() {
        let r = Resources {
            memory_limit: Some(32 << 20),
            ..Default::default()
        };
        assert_eq!(vm_memory_mib(256, &r, None), 32 + GUEST_OVERHEAD_MIB);
        assert_eq!(vm_memory_mib(64, &r, None), 32 + GUEST_OVERHEAD_MIB);
        assert_eq!(vm_memory_mib(256, &Resources::default(), None), 256);
        // A limit above the default raises the VM's RAM (`--memory 1500m`), up to the host's.
        let big = Resources {
            memory_limit: Some(1500 << 20),
            ..Default::default()
        };
        assert_eq!(
            vm_memory_mib(256, &big, Some(24 << 10)),
            1500 + GUEST_OVERHEAD_MIB
        );
        assert_eq!(vm_memory_mib(256, &big, Some(1024)), 1024);
        assert_eq!(
            host_memory_max(128, &r),
            Some((128 + VMM_OVERHEAD_MIB) << 20)
        );
        assert_eq!(host_memory_max(128, &Resources::default()), None);
        assert!(host_memory_mib().is_some_and(|m| m > 0));
        let unlimited = Resources {
            memory_limit: Some(-1),
            ..Default::default()
        };
        assert_eq!(host_memory_max(128, &unlimited), None);
    }

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn update_names_what_it_cannot_apply() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":1000,"kernel":10},"cpu":{"cpus":"0-1","quota":5},"blockIO":{"weight":10}}"#,
        )
        .unwrap();
        assert_eq!(
            unsupported_in_update(&r),
            ["memory.kernel", "cpu.cpus", "blockIO"]
        );
        // Docker's update: sections it does not mean, with zeros.
        let docker: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":314572800,"swap":314572800},"cpu":{"shares":0,"cpus":"","mems":""},"blockIO":{"weight":0},"pids":{"limit":0}}"#,
        )
        .unwrap();
        assert!(
            unsupported_in_update(&docker).is_empty(),
            "{:?}",
            unsupported_in_update(&docker)
        );
        let ok: LinuxResources =
            serde_json::from_str(r#"{"memory":{"limit":1000},"pids":{"limit":5}}"#).unwrap();
        assert!(unsupported_in_update(&ok).is_empty());
        let res = resources_from_oci(&ok);
        assert_eq!(res.memory_limit, Some(1000));
        assert_eq!(res.pids_limit, Some(5));
        assert_eq!(res.cpu_shares, None);
        assert_eq!(res.memory_reservation, None);
        // `docker update --memory-reservation 20m`: applied, as memory.low.
        let reservation: LinuxResources =
            serde_json::from_str(r#"{"memory":{"reservation":20971520,"limit":0}}"#).unwrap();
        assert!(unsupported_in_update(&reservation).is_empty());
        let res = resources_from_oci(&reservation);
        assert_eq!(res.memory_reservation, Some(20 << 20));
        assert_eq!(res.memory_limit, None);
    }
}

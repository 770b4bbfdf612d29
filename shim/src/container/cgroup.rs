//! The container's host cgroup: the monitor (the VMM, whose pid is the container's pid)
//! joins `linux.cgroupsPath` at create, on cgroup v2, v1, or a hybrid of both (every
//! mounted hierarchy, as runc does), creating it; the CPU limits apply there to the whole
//! VM, and `docker stats` reads its usage. The memory limit is enforced in the guest (see
//! [`host_memory_max`] for what the host cgroup gets); the pids limit goes to the guest
//! only. The directories runvm created are recorded in the state directory
//! ([`RECORD`]) and removed when the monitor ends, however it ends (its cleanup guard
//! does it), and again at `delete`.
//!
//! With `--systemd-cgroup`, `slice:prefix:name` becomes runc's path
//! (`/system.slice/prefix-name.scope`), made directly in the cgroup file system: runvm
//! does not ask systemd (over D-Bus) for a transient unit, so systemd does not know it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use runvm_protocol::Resources;
use serde::{Deserialize, Serialize};

use crate::mountinfo::{self, MountEntry, MountinfoError};

/// `--systemd-cgroup` was given (set once by `main`).
pub static SYSTEMD_CGROUP: AtomicBool = AtomicBool::new(false);
/// File in the state directory naming the container's cgroups.
pub const RECORD: &str = "cgroup.json";
/// Where cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Host memory the VMM needs besides the guest's RAM (its own heap, stacks, device buffers).
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// Guest RAM beyond the container's memory limit: the guest kernel, init and page cache.
pub const GUEST_OVERHEAD_MIB: u64 = 96;
/// The v2 controllers the host cgroup needs.
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Errors with host cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("linux.cgroupsPath {path:?}: {message}")]
    Path { path: String, message: String },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no cgroup file system is mounted under {CGROUP_ROOT}")]
    NoCgroupFs,
    #[error("cannot apply {0}")]
    Unsupported(String),
    #[error(transparent)]
    Mountinfo(#[from] MountinfoError),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The OCI resources runvm applies, in the protocol's form. Docker fills in fields it
/// does not mean (shares 0, pids 0): those stay unset.
pub fn resources_from_oci(r: &LinuxResources) -> Resources {
    let mem = r.memory().as_ref();
    let cpu = r.cpu().as_ref();
    Resources {
        memory_limit: mem.and_then(|m| m.limit()).filter(|l| *l != 0),
        cpu_quota: cpu.and_then(|c| c.quota()).filter(|q| *q != 0),
        cpu_period: cpu.and_then(|c| c.period()).filter(|p| *p != 0),
        cpu_shares: cpu.and_then(|c| c.shares()).filter(|s| *s != 0),
        pids_limit: r.pids().as_ref().map(|p| p.limit()).filter(|l| *l != 0),
    }
}

/// What of an OCI resources document (`runvm update -r`) runvm cannot apply, by name.
pub fn unsupported_in_update(r: &LinuxResources) -> Vec<&'static str> {
    let mut out = Vec::new();
    if let Some(m) = r.memory() {
        if m.reservation().is_some_and(|v| v > 0) {
            out.push("memory.reservation");
        }
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

/// The VM's RAM for a container: what was asked (`RUNVM_MEM_MIB`), but no more than the
/// memory limit plus the guest's own needs, so the whole VM fits its host cgroup.
pub fn vm_memory_mib(requested: u64, r: &Resources) -> u64 {
    match r.memory_limit.filter(|l| *l > 0) {
        Some(limit) => {
            let limit_mib = (limit as u64).div_ceil(1 << 20);
            requested.min(limit_mib + GUEST_OVERHEAD_MIB)
        }
        None => requested,
    }
}

/// The host cgroup's memory limit when the container has one: the VM's RAM plus the
/// VMM's overhead (the limit proper holds in the guest, where exceeding it OOM-kills the
/// container's process, not the VM).
pub fn host_memory_max(vm_mib: u64, r: &Resources) -> Option<u64> {
    r.memory_limit
        .filter(|l| *l > 0)
        .map(|_| (vm_mib + VMM_OVERHEAD_MIB) << 20)
}

/// Turns a systemd `slice:prefix:name` into a path, as runc does: the slice expands to
/// its parents (`a-b.slice` → `a.slice/a-b.slice`), the unit is `prefix-name.scope` (or
/// `name` itself when it is a slice).
pub fn systemd_path(spec: &str) -> Result<String, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err("with --systemd-cgroup it must be \"slice:prefix:name\"".into());
    };
    if name.is_empty() {
        return Err("the name part of \"slice:prefix:name\" is empty".into());
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let expanded = expand_slice(slice)?;
    let unit = if name.ends_with(".slice") {
        expand_slice(name)?
            .rsplit('/')
            .next()
            .unwrap_or(name)
            .to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Ok(format!("/{expanded}/{unit}"))
}

fn expand_slice(slice: &str) -> Result<String, String> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(format!(
            "{slice:?} is not a systemd slice (it must end in .slice)"
        ));
    };
    if slice.contains('/') {
        return Err(format!(
            "{slice:?} is not a systemd slice (it contains a /)"
        ));
    }
    if stem == "-" {
        return Ok(String::new());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for component in stem.split('-') {
        if component.is_empty() {
            return Err(format!("{slice:?} is not a valid systemd slice name"));
        }
        path.push_str(&format!("{prefix}{component}.slice/"));
        prefix.push_str(component);
        prefix.push('-');
    }
    Ok(path.trim_end_matches('/').to_string())
}

/// The container's cgroup path inside each hierarchy (absolute, from the hierarchy's
/// root), or `None` when it gets none: no `cgroupsPath` and no limits (a relative path is
/// taken from the monitor's current cgroup, as runc does).
fn cgroup_path(
    cgroups_path: Option<&str>,
    id: &str,
    has_limits: bool,
) -> Result<Option<String>, CgroupError> {
    let invalid = |p: &str, m: String| CgroupError::Path {
        path: p.to_string(),
        message: m,
    };
    let systemd = SYSTEMD_CGROUP.load(Ordering::Relaxed);
    let path = match cgroups_path {
        None if !has_limits => return Ok(None),
        None if systemd => format!("/system.slice/runvm-{id}.scope"),
        None => format!("/runvm/{id}"),
        Some(p) if systemd => systemd_path(p).map_err(|m| invalid(p, m))?,
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => {
            let own = own_cgroup_v2().unwrap_or_else(|| "/".into());
            format!("{}/{p}", own.trim_end_matches('/'))
        }
    };
    if path.split('/').any(|c| c == "..") {
        return Err(invalid(&path, "must not contain \"..\"".into()));
    }
    Ok(Some(path))
}

/// This process's cgroup in the v2 hierarchy (`0::/path`).
fn own_cgroup_v2() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// One mounted cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hierarchy {
    mountpoint: PathBuf,
    /// The hierarchy's directory that is mounted there (`/` unless in a cgroup namespace).
    root: String,
    /// v1 controllers (`cpu`, `cpuacct`, `name=systemd`); empty for v2.
    controllers: Vec<String>,
    v2: bool,
}

/// The cgroup hierarchies mounted under /sys/fs/cgroup.
fn hierarchies(mounts: &[MountEntry]) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for m in mounts {
        let mountpoint = m.mount_path();
        if !mountpoint.starts_with(CGROUP_ROOT) {
            continue;
        }
        let root = String::from_utf8_lossy(&m.root).into_owned();
        let h = match m.fstype.as_str() {
            "cgroup2" => Hierarchy {
                mountpoint,
                root,
                controllers: Vec::new(),
                v2: true,
            },
            "cgroup" => {
                let controllers: Vec<String> = m
                    .super_options
                    .iter()
                    .map(|o| String::from_utf8_lossy(o).into_owned())
                    .filter(|o| !matches!(o.as_str(), "rw" | "ro") && !o.contains("release_agent"))
                    .filter(|o| !o.contains('=') || o.starts_with("name="))
                    .filter(|o| !matches!(o.as_str(), "noprefix" | "clone_children" | "xattr"))
                    .collect();
                if controllers.is_empty() {
                    continue;
                }
                Hierarchy {
                    mountpoint,
                    root,
                    controllers,
                    v2: false,
                }
            }
            _ => continue,
        };
        // The same hierarchy mounted twice counts once.
        if !out
            .iter()
            .any(|o| o.v2 == h.v2 && o.controllers == h.controllers)
        {
            out.push(h);
        }
    }
    out
}

/// The directory of cgroup `path` in hierarchy `h`, if the hierarchy's mount shows it.
fn dir_in(h: &Hierarchy, path: &str) -> Option<PathBuf> {
    let root = h.root.trim_end_matches('/');
    let rel = if root.is_empty() {
        path
    } else {
        path.strip_prefix(root)?
    };
    Some(h.mountpoint.join(rel.trim_start_matches('/')))
}

/// The container's cgroups on the host, as recorded in the state directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCgroup {
    /// The cgroup's path from each hierarchy's root.
    pub path: String,
    /// Its v2 directory (the unified hierarchy, or the hybrid's `unified` mount).
    #[serde(default)]
    pub v2: Option<PathBuf>,
    /// Its v1 directories, with their hierarchies' controllers (`cpu,cpuacct`).
    #[serde(default)]
    pub v1: Vec<(String, PathBuf)>,
    /// Directories runvm created, deepest first: what is removed at the end.
    #[serde(default)]
    pub created: Vec<PathBuf>,
    /// Whether the v2 cgroup is the only one (no v1 hierarchies: limits go there).
    #[serde(default)]
    pub unified: bool,
}

impl HostCgroup {
    /// The v1 directory of `controller`.
    fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(c, _)| c.split(',').any(|x| x == controller))
            .map(|(_, d)| d.as_path())
    }

    /// Loads the record in `state_dir`, if the container has one.
    pub fn load(state_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(state_dir.join(RECORD)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Applies the host side of `r`: the CPU limits, and the memory limit of the VM as a
    /// whole (`host_memory`, see [`host_memory_max`]). Pids limits are the guest's.
    pub fn apply(&self, r: &Resources, host_memory: Option<u64>) -> Result<(), CgroupError> {
        if self.unified {
            let d = self.v2.as_deref().ok_or(CgroupError::NoCgroupFs)?;
            if let Some(max) = host_memory {
                write_controlled(d, "memory", "memory.max", &max.to_string())?;
            }
            let current = std::fs::read_to_string(d.join("cpu.max")).unwrap_or_default();
            if let Some(line) = r.cpu_max(&current) {
                write_controlled(d, "cpu", "cpu.max", &line)?;
            }
            if let Some(shares) = r.cpu_shares {
                write_controlled(
                    d,
                    "cpu",
                    "cpu.weight",
                    &shares_to_weight(shares).to_string(),
                )?;
            }
            return Ok(());
        }
        let need = |c: &str| {
            self.v1_dir(c).ok_or_else(|| {
                CgroupError::Unsupported(format!(
                    "{c} limits: the host has no {c} cgroup hierarchy"
                ))
            })
        };
        if let Some(max) = host_memory {
            write(need("memory")?, "memory.limit_in_bytes", &max.to_string())?;
        }
        if let Some(p) = r.cpu_period {
            write(need("cpu")?, "cpu.cfs_period_us", &p.to_string())?;
        }
        if let Some(q) = r.cpu_quota {
            write(need("cpu")?, "cpu.cfs_quota_us", &q.max(-1).to_string())?;
        }
        if let Some(s) = r.cpu_shares {
            write(need("cpu")?, "cpu.shares", &s.to_string())?;
        }
        Ok(())
    }

    /// Moves `pid` into every directory of the cgroup.
    fn join(&self, pid: u32) -> Result<(), CgroupError> {
        for d in self.v2.iter().chain(self.v1.iter().map(|(_, d)| d)) {
            write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Removes the directories runvm created (those still there), waiting a little for
    /// a monitor that is still exiting to leave them.
    pub fn remove(&self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        for d in &self.created {
            loop {
                match std::fs::remove_dir(d) {
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        // A parent shared with other containers is not empty: fine.
                        log::debug!("cannot remove cgroup {}: {e}", d.display());
                        break;
                    }
                    _ => break,
                }
            }
        }
    }

    /// Usage figures of the host cgroup (the whole VM).
    pub fn stats(&self) -> HostStats {
        let num = |d: Option<&Path>, f: &str| -> Option<u64> {
            std::fs::read_to_string(d?.join(f))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let keyed = |d: Option<&Path>, f: &str, key: &str| -> Option<u64> {
            let text = std::fs::read_to_string(d?.join(f)).ok()?;
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        };
        if self.unified {
            let d = self.v2.as_deref();
            HostStats {
                memory_usage: num(d, "memory.current").unwrap_or(0),
                memory_limit: num(d, "memory.max"),
                memory_max_usage: num(d, "memory.peak"),
                cpu_total_ns: keyed(d, "cpu.stat", "usage_usec").unwrap_or(0) * 1000,
                cpu_user_ns: keyed(d, "cpu.stat", "user_usec").unwrap_or(0) * 1000,
                cpu_kernel_ns: keyed(d, "cpu.stat", "system_usec").unwrap_or(0) * 1000,
                pids_current: num(d, "pids.current"),
                oom_kills: keyed(d, "memory.events", "oom_kill").unwrap_or(0),
            }
        } else {
            let mem = self.v1_dir("memory");
            let acct = self.v1_dir("cpuacct");
            HostStats {
                memory_usage: num(mem, "memory.usage_in_bytes").unwrap_or(0),
                memory_limit: num(mem, "memory.limit_in_bytes"),
                memory_max_usage: num(mem, "memory.max_usage_in_bytes"),
                cpu_total_ns: num(acct, "cpuacct.usage").unwrap_or(0),
                // cpuacct.stat counts USER_HZ ticks.
                cpu_user_ns: keyed(acct, "cpuacct.stat", "user").unwrap_or(0) * 10_000_000,
                cpu_kernel_ns: keyed(acct, "cpuacct.stat", "system").unwrap_or(0) * 10_000_000,
                pids_current: num(self.v1_dir("pids"), "pids.current"),
                oom_kills: keyed(mem, "memory.oom_control", "oom_kill").unwrap_or(0),
            }
        }
    }
}

/// What the host cgroup reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    pub memory_usage: u64,
    pub memory_limit: Option<u64>,
    pub memory_max_usage: Option<u64>,
    pub cpu_total_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_kernel_ns: u64,
    pub pids_current: Option<u64>,
    pub oom_kills: u64,
}

/// runc's conversion of cgroup v1 `cpu.shares` (2..262144) to v2 `cpu.weight` (1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(io("write", &path))
}

/// Writes a v2 interface file, explaining a controller the cgroup does not have.
fn write_controlled(
    dir: &Path,
    controller: &str,
    file: &str,
    value: &str,
) -> Result<(), CgroupError> {
    if !dir.join(file).exists() {
        return Err(CgroupError::Unsupported(format!(
            "{file}: the {controller} controller is not enabled in {} (the parent's cgroup.subtree_control lacks it)",
            dir.display()
        )));
    }
    write(dir, file, value)
}

/// Creates `dir` and its missing parents under `mountpoint`; returns those it made,
/// deepest first. v1 cpuset directories get their parent's CPUs and memory nodes (a new
/// one has none, and no process could join it).
fn create_dirs(mountpoint: &Path, dir: &Path, cpuset: bool) -> Result<Vec<PathBuf>, CgroupError> {
    let mut made = Vec::new();
    let mut cur = mountpoint.to_path_buf();
    let rel = dir.strip_prefix(mountpoint).unwrap_or(Path::new(""));
    for c in rel.components() {
        let parent = cur.clone();
        cur.push(c);
        match std::fs::create_dir(&cur) {
            Ok(()) => {
                made.push(cur.clone());
                if cpuset {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        if let Ok(v) = std::fs::read_to_string(parent.join(f)) {
                            let _ = write(&cur, f, v.trim());
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                for d in made.iter().rev() {
                    let _ = std::fs::remove_dir(d);
                }
                return Err(io("create cgroup", &cur)(e));
            }
        }
    }
    made.reverse();
    Ok(made)
}

/// Enables the v2 controllers the container needs on every ancestor of `dir` below
/// `mountpoint` (best effort: a parent that holds processes, or lacks a controller,
/// stays as it is, and applying a limit later names what is missing).
fn enable_v2_controllers(mountpoint: &Path, dir: &Path) {
    let mut cur = mountpoint.to_path_buf();
    let rel = dir.strip_prefix(mountpoint).unwrap_or(Path::new(""));
    for c in rel.components() {
        let available = std::fs::read_to_string(cur.join("cgroup.controllers")).unwrap_or_default();
        let enabled =
            std::fs::read_to_string(cur.join("cgroup.subtree_control")).unwrap_or_default();
        for ctl in V2_CONTROLLERS {
            let has = |t: &str| t.split_whitespace().any(|x| x == ctl);
            if has(&available) && !has(&enabled) {
                let _ = write(&cur, "cgroup.subtree_control", &format!("+{ctl}"));
            }
        }
        cur.push(c);
    }
}

/// Puts the calling process (the monitor) into the container's host cgroup, creating
/// it, recording it in `state_dir`, and applying the host side of `resources` (the VM has
/// `vm_mib` of RAM). Returns `None` when the container has no cgroup of its own.
pub fn join(
    cgroups_path: Option<&str>,
    id: &str,
    state_dir: &Path,
    resources: &Resources,
    vm_mib: u64,
) -> Result<Option<HostCgroup>, CgroupError> {
    let has_limits = *resources != Resources::default();
    let Some(path) = cgroup_path(cgroups_path, id, has_limits)? else {
        return Ok(None);
    };
    let all = hierarchies(&mountinfo::read_own()?);
    if all.is_empty() {
        return Err(CgroupError::NoCgroupFs);
    }
    let mut cg = HostCgroup {
        path: path.clone(),
        unified: all.iter().all(|h| h.v2),
        ..Default::default()
    };
    let result = (|| -> Result<(), CgroupError> {
        for h in &all {
            let Some(dir) = dir_in(h, &path) else {
                log::warn!(
                    "cgroup {path} is outside the part of hierarchy {} mounted at {}; not joined there",
                    h.controllers.join(","),
                    h.mountpoint.display()
                );
                continue;
            };
            let cpuset = h.controllers.iter().any(|c| c == "cpuset");
            // A parent shared with another container may vanish under us when that one
            // is removed (its last user takes it): try again.
            let mut tries = 0;
            let made = loop {
                match create_dirs(&h.mountpoint, &dir, cpuset) {
                    Err(CgroupError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound && tries < 5 =>
                    {
                        tries += 1;
                    }
                    r => break r?,
                }
            };
            cg.created.extend(made);
            if h.v2 {
                if cg.unified {
                    enable_v2_controllers(&h.mountpoint, &dir);
                }
                cg.v2 = Some(dir);
            } else {
                cg.v1.push((h.controllers.join(","), dir));
            }
        }
        // Recorded before anything joins, so the cleanup finds it whatever happens next.
        let json = serde_json::to_vec(&cg).map_err(|e| io("record", state_dir)(e.into()))?;
        std::fs::write(state_dir.join(RECORD), json)
            .map_err(io("write", &state_dir.join(RECORD)))?;
        cg.apply(resources, host_memory_max(vm_mib, resources))?;
        cg.join(std::process::id())
    })();
    match result {
        Ok(()) => Ok(Some(cg)),
        Err(e) => {
            cg.remove();
            let _ = std::fs::remove_file(state_dir.join(RECORD));
            Err(e)
        }
    }
}

/// The monitor's end: it moves itself out of the container's cgroup (to each
/// hierarchy's root, where it may always go) and removes the cgroup and its record, so
/// nothing is left even where no guard follows (`runvm run` removes its state directory
/// before it exits).
pub fn leave_and_remove(state_dir: &Path) {
    let Some(cg) = HostCgroup::load(state_dir) else {
        return;
    };
    let Ok(mounts) = mountinfo::read_own() else {
        return;
    };
    let me = std::process::id().to_string();
    for h in hierarchies(&mounts) {
        let _ = write(&h.mountpoint, "cgroup.procs", &me);
    }
    cg.remove();
    let _ = std::fs::remove_file(state_dir.join(RECORD));
}

/// Removes the cgroups recorded in `state_dir` (the monitor has gone).
pub fn remove_recorded(state_dir: &Path) {
    if let Some(cg) = HostCgroup::load(state_dir) {
        cg.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_paths_convert_like_runc() {
        assert_eq!(
            systemd_path("system.slice:docker:abc").unwrap(),
            "/system.slice/docker-abc.scope"
        );
        assert_eq!(
            systemd_path("user-1000.slice:libpod:x").unwrap(),
            "/user.slice/user-1000.slice/libpod-x.scope"
        );
        assert_eq!(
            systemd_path(":runvm:x").unwrap(),
            "/system.slice/runvm-x.scope"
        );
        assert_eq!(
            systemd_path("system.slice::x").unwrap(),
            "/system.slice/x.scope"
        );
        assert!(systemd_path("/abs/path").is_err());
        assert!(systemd_path("nope:docker:x").is_err());
        assert!(systemd_path("a--b.slice:p:x").is_err());
        assert!(systemd_path("system.slice:docker:").is_err());
    }

    #[test]
    fn hybrid_and_unified_mounts_are_found() {
        let hybrid = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 /docker/x /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 30 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct
40 25 0:40 / /proc rw - proc proc rw";
        let h = hierarchies(&mountinfo::parse(hybrid.as_bytes()).unwrap());
        assert_eq!(h.len(), 4, "{h:?}");
        assert!(h[0].v2);
        assert_eq!(h[1].controllers, ["name=systemd"]);
        assert_eq!(h[2].controllers, ["cpu", "cpuacct"]);
        assert_eq!(
            dir_in(&h[3], "/docker/x/c1"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/c1"))
        );
        assert_eq!(dir_in(&h[3], "/elsewhere"), None);
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate";
        let h = hierarchies(&mountinfo::parse(unified.as_bytes()).unwrap());
        assert_eq!(h.len(), 1);
        assert_eq!(
            dir_in(&h[0], "/system.slice/docker-a.scope"),
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/docker-a.scope"))
        );
    }

    #[test]
    fn paths_default_only_with_limits_and_refuse_dotdot() {
        assert_eq!(cgroup_path(None, "c", false).unwrap(), None);
        assert_eq!(cgroup_path(None, "c", true).unwrap().unwrap(), "/runvm/c");
        assert_eq!(
            cgroup_path(Some("/a/b"), "c", false).unwrap().unwrap(),
            "/a/b"
        );
        assert!(cgroup_path(Some("/a/../b"), "c", false).is_err());
    }

    #[test]
    fn the_vm_fits_its_memory_limit() {
        let r = Resources {
            memory_limit: Some(32 << 20),
            ..Default::default()
        };
        assert_eq!(vm_memory_mib(256, &r), 32 + GUEST_OVERHEAD_MIB);
        assert_eq!(vm_memory_mib(64, &r), 64);
        assert_eq!(vm_memory_mib(256, &Resources::default()), 256);
        assert_eq!(
            host_memory_max(128, &r),
            Some((128 + VMM_OVERHEAD_MIB) << 20)
        );
        assert_eq!(host_memory_max(128, &Resources::default()), None);
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
            r#"{"memory":{"limit":1000,"reservation":10},"cpu":{"cpus":"0-1","quota":5},"blockIO":{"weight":10}}"#,
        )
        .unwrap();
        assert_eq!(
            unsupported_in_update(&r),
            ["memory.reservation", "cpu.cpus", "blockIO"]
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
    }
}

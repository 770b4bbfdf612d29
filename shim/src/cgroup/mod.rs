//! The container's host cgroup: the monitor (the VMM, whose pid is the container's pid)
//! joins `linux.cgroupsPath` at create, on cgroup v2, v1, or a hybrid of both (every
//! mounted hierarchy, as runc does), creating it; the CPU limits apply there to the whole
//! VM, and `docker stats` reads its usage. The memory limit is enforced in the guest (see
//! [`host_memory_max`] for what the host cgroup gets); the pids limit goes to the guest
//! only. The directories runvm created are recorded in the state directory
//! ([`RECORD`]) and removed when the monitor ends, however it ends (its cleanup guard
//! does it), and again at `delete`.
//!
//! The guest's OOM kills are shown in this cgroup too ([`oom`]), with two leaves made
//! for a few milliseconds each time.
//!
//! With `--systemd-cgroup`, `slice:prefix:name` becomes runc's path
//! (`/system.slice/prefix-name.scope`), made directly in the cgroup file system: runvm
//! does not ask systemd (over D-Bus) for a transient unit, so systemd does not know it.

mod hierarchy;
pub mod oom;
mod path;
pub mod resources;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runvm_protocol::Resources;
use serde::{Deserialize, Serialize};

use crate::mountinfo::{self, MountinfoError};
use hierarchy::{dir_in, hierarchies, CGROUP_ROOT};
use path::cgroup_path;
pub use path::PathSyntax;
pub use resources::{
    host_memory_max, host_memory_mib, resources_from_oci, shares_to_weight, unsupported_in_update,
    vm_memory_mib, vm_vcpus,
};

/// File in the state directory naming the container's cgroups.
pub const RECORD: &str = "cgroup.json";
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
    /// The CPU quota, lifted while the guest boots and applied once the container's
    /// process runs ([`apply_at_start`]): a container's quota is for its workload, and a
    /// small one (runc's tests use 5 % of a CPU) would stretch the boot past its timeout.
    #[serde(default)]
    pub quota_at_start: Option<Resources>,
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

    /// Writes the record into `state_dir`.
    fn save(&self, state_dir: &Path) -> Result<(), CgroupError> {
        let json = serde_json::to_vec(self).map_err(|e| io("record", state_dir)(e.into()))?;
        std::fs::write(state_dir.join(RECORD), json).map_err(io("write", &state_dir.join(RECORD)))
    }

    /// Moves `pid` into every directory of the cgroup.
    fn join(&self, pid: u32) -> Result<(), CgroupError> {
        for d in self.v2.iter().chain(self.v1.iter().map(|(_, d)| d)) {
            write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Whether the container's own cgroup directory is still there, in any hierarchy.
    fn is_present(&self) -> bool {
        self.v2
            .iter()
            .chain(self.v1.iter().map(|(_, d)| d))
            .any(|d| d.exists())
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
/// `vm_mib` of RAM). `cgroups_path` is written in `syntax`. Returns `None` when the
/// container has no cgroup of its own.
pub fn join(
    cgroups_path: Option<&str>,
    syntax: PathSyntax,
    id: &str,
    state_dir: &Path,
    resources: &Resources,
    vm_mib: u64,
) -> Result<Option<HostCgroup>, CgroupError> {
    let has_limits = resources.has_limits();
    let Some(path) = cgroup_path(cgroups_path, syntax, id, has_limits)? else {
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
        cg.quota_at_start = quota_of(resources);
        cg.save(state_dir)?;
        // Every limit is applied (and so checked) now; the quota is then lifted for the
        // boot.
        cg.apply(resources, host_memory_max(vm_mib, resources))?;
        if cg.quota_at_start.is_some() {
            cg.apply(&UNLIMITED_QUOTA, None)?;
        }
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

/// A quota of "max": what the VM boots with.
const UNLIMITED_QUOTA: Resources = Resources {
    memory_limit: None,
    memory_reservation: None,
    cpu_quota: Some(-1),
    cpu_period: None,
    cpu_shares: None,
    pids_limit: None,
    devices: None,
};

/// The CPU quota and period of `r`, if it limits the CPU time.
fn quota_of(r: &Resources) -> Option<Resources> {
    r.cpu_quota.filter(|q| *q > 0).map(|_| Resources {
        cpu_quota: r.cpu_quota,
        cpu_period: r.cpu_period,
        ..Default::default()
    })
}

/// Once the container's process runs: applies the CPU quota lifted for the boot (see
/// [`HostCgroup::quota_at_start`]). A failure is logged; the guest's own cgroup holds the
/// quota all the same.
pub fn apply_at_start(state_dir: &Path) {
    let Some(mut cg) = HostCgroup::load(state_dir) else {
        return;
    };
    let Some(quota) = cg.quota_at_start.take() else {
        return;
    };
    if let Err(e) = cg.apply(&quota, None).and_then(|()| cg.save(state_dir)) {
        log::error!("cannot apply the container's CPU quota to its host cgroup: {e}");
    }
}

/// The container's end: `monitor` (the monitor process) and those of its children still
/// in the container's cgroup (a hook runner, a virtiofsd on its way out) move to each
/// hierarchy's root, and the cgroup and its record are removed. The monitor does it
/// itself where it may; a monitor that dropped its privileges asks its cleanup guard
/// (`runvm run`, which removes its state directory, and the record with it, before it
/// exits).
pub fn leave_and_remove(state_dir: &Path, monitor: u32) {
    let Some(cg) = HostCgroup::load(state_dir) else {
        return;
    };
    let Ok(roots) = hierarchy_roots() else {
        return;
    };
    let mut pids = vec![monitor];
    for dir in cg.v2.iter().chain(cg.v1.iter().map(|(_, d)| d)) {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            if !pids.contains(&pid) && parent_of(pid) == Some(monitor) {
                pids.push(pid);
            }
        }
    }
    for root in roots {
        for pid in &pids {
            let _ = write(&root, "cgroup.procs", &pid.to_string());
        }
    }
    cg.remove();
    // Kept while the container's cgroup is still there (something was still in it), so
    // that `delete` removes it later.
    if !cg.is_present() {
        let _ = std::fs::remove_file(state_dir.join(RECORD));
    }
}

/// The parent of process `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
    stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
}

/// The root of every mounted hierarchy: where a process that belongs to no container
/// goes (the monitor at its end; `crate::template`'s template VMs, which are no
/// container's and must not count against one's limits).
pub fn hierarchy_roots() -> Result<Vec<PathBuf>, MountinfoError> {
    Ok(hierarchies(&mountinfo::read_own()?)
        .into_iter()
        .map(|h| h.mountpoint)
        .collect())
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
    fn parent_of_reads_the_parent_pid() {
        let me = std::process::id();
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() } as u32;
        assert_eq!(parent_of(me), Some(parent));
        assert_eq!(parent_of(u32::MAX), None);
    }
}

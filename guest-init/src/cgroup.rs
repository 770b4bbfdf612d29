//! The containers' cgroups (v2) in the guest: `/sys/fs/cgroup/container` for the main
//! container and `/sys/fs/cgroup/c<N>` for member container `N` (siblings: a cgroup with
//! processes has no children with controllers), each with the memory, cpu and pids
//! controllers and the limits of its `linux.resources` (`memory.reservation` as
//! `memory.low`, as runc writes it). A container's processes join its
//! cgroup before anything of theirs runs; its main process then gets a cgroup namespace of
//! its own, so the container's `/sys/fs/cgroup` shows this cgroup as its root (as under
//! runc with Docker's private cgroup namespace). Exceeding `memory.max` OOM-kills a
//! process of the container, not the VM. The device rules are put in force on it as an
//! eBPF program ([`crate::device_filter`]) before any process joins it; an update without
//! rules leaves that program attached as it is.
//!
//! Cgroups are made once [`enable`] named the cgroup2 root (init does in the VM; host test
//! mode only when `RUNVM_INIT_CGROUP` names one); before, every container runs in init's
//! cgroup and the functions here do nothing (or answer zeros).
//!
//! Also here: the answers to the host's `ListProcesses`, `Stats` and `Update`.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::unistd::Pid;
use runvm_protocol::{ContainerId, GuestProcess, GuestStats, Resources, MAIN_CONTAINER};

use crate::device_filter::DeviceFilterError;
use crate::error::{Context, Error, Result};

/// The guest's cgroup2 mount (init's own).
pub const GUEST_ROOT: &str = "/sys/fs/cgroup";
/// The main container's cgroup, under the root.
const NAME: &str = "container";
/// Controllers the containers' cgroups get.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Most processes one answer lists, and most bytes of a command line in it.
const MAX_LISTED: usize = 2000;
const MAX_CMD: usize = 256;

/// The cgroup2 directory under which the containers' cgroups are made, once enabled.
static ROOT: OnceLock<PathBuf> = OnceLock::new();
/// The containers whose cgroup exists (so their processes join it), each with the device
/// cgroup program attached to it, kept to replace it. Init has no threads, so a forked
/// child never finds this lock held.
static CGROUPS: Mutex<BTreeMap<ContainerId, Option<OwnedFd>>> = Mutex::new(BTreeMap::new());

/// Makes cgroups for the containers from now on, under the cgroup2 directory `root`.
pub fn enable(root: PathBuf) {
    let _ = ROOT.set(root);
}

/// Whether [`enable`] was called: containers get cgroups of their own.
pub fn enabled() -> bool {
    ROOT.get().is_some()
}

fn cgroups() -> std::sync::MutexGuard<'static, BTreeMap<ContainerId, Option<OwnedFd>>> {
    // A poisoned lock only means a panic elsewhere; the map is still right.
    CGROUPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ready(container: ContainerId) -> bool {
    cgroups().contains_key(&container)
}

fn root() -> &'static Path {
    ROOT.get().map_or(Path::new(GUEST_ROOT), PathBuf::as_path)
}

/// The cgroup directory of `container`.
fn dir(container: ContainerId) -> PathBuf {
    if container == MAIN_CONTAINER {
        root().join(NAME)
    } else {
        root().join(format!("c{container}"))
    }
}

/// A cgroup file that did not take its value.
#[derive(Debug, thiserror::Error)]
#[error("{file} = {value:?}: {source}")]
pub struct WriteError {
    file: String,
    value: String,
    source: std::io::Error,
}

/// Why limits could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("the guest has no cgroup for the container")]
    NoCgroup,
    /// Each limit that failed; the others are set.
    #[error("{}", join(.0))]
    Writes(Vec<WriteError>),
    /// The device rules are not in force (nor, then, any other limit of this request:
    /// the rules come first).
    #[error("device rules: {0}")]
    Devices(#[from] DeviceFilterError),
}

fn join(errors: &[WriteError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn write(dir: &Path, file: &str, value: &str) -> std::result::Result<(), WriteError> {
    std::fs::write(dir.join(file), value).map_err(|source| WriteError {
        file: file.to_string(),
        value: value.to_string(),
        source,
    })
}

/// Creates the cgroup of `container` with `resources` applied. Called by init before the
/// container's main process starts. A cgroup whose limits fail is left for the caller to
/// [`remove`].
pub fn setup(container: ContainerId, resources: &Resources) -> Result<()> {
    let root = root();
    for c in CONTROLLERS {
        // A controller the kernel lacks fails here; a limit that needs it fails below.
        if let Err(e) = write(root, "cgroup.subtree_control", &format!("+{c}")) {
            crate::log::error(&format!("cgroup controller {c}: {e}"));
        }
    }
    let d = dir(container);
    match std::fs::create_dir(&d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::new(format!(
                "create the container's cgroup {}: {e}",
                d.display()
            )))
        }
    }
    cgroups().entry(container).or_insert(None);
    apply(container, resources)
        .map_err(|e| Error::new(format!("the container's cgroup {}: {e}", d.display())))
}

/// Removes the cgroup of `container` (a member whose processes have all ended) and
/// forgets it; nothing to do for a container without one.
pub fn remove(container: ContainerId) -> Result<()> {
    let Some(program) = cgroups().remove(&container) else {
        return Ok(());
    };
    drop(program);
    let d = dir(container);
    // The processes of a container that shared the main PID namespace may outlive its
    // main process: end them first.
    kill_all(container);
    let mut tries = 0;
    loop {
        match std::fs::remove_dir(&d) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // Killed processes leave the cgroup a moment after their SIGKILL.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                return Err(Error::new(format!(
                    "remove the cgroup {} of container {container}: {e}",
                    d.display()
                )))
            }
        }
    }
}

/// SIGKILLs every process in the cgroup of `container` (`cgroup.kill`), if it has one.
pub fn kill_all(container: ContainerId) {
    if !ready(container) {
        return;
    }
    let d = dir(container);
    if let Err(e) = write(&d, "cgroup.kill", "1") {
        crate::log::error(&format!("kill the processes of {}: {e}", d.display()));
    }
}

/// Freezes (`frozen`) or thaws the processes of `container`'s cgroup (`cgroup.freeze`):
/// `runvm pause` of a member container, whose VM goes on.
pub fn freeze(container: ContainerId, frozen: bool) -> std::result::Result<(), LimitsError> {
    if !ready(container) {
        return Err(LimitsError::NoCgroup);
    }
    write(
        &dir(container),
        "cgroup.freeze",
        if frozen { "1" } else { "0" },
    )
    .map_err(|e| LimitsError::Writes(vec![e]))
}

/// Applies the limits that are set; the error names each that failed. The device rules,
/// when given, first: they replace the program in force in one step.
pub fn apply(container: ContainerId, r: &Resources) -> std::result::Result<(), LimitsError> {
    let d = dir(container);
    let mut all = cgroups();
    let Some(current) = all.get_mut(&container) else {
        return Err(LimitsError::NoCgroup);
    };
    if let Some(rules) = &r.devices {
        let program = crate::device_filter::install(rules, &d, current.as_ref())?;
        *current = Some(program);
    }
    drop(all);
    let mut failed = Vec::new();
    let mut set = |file: &str, value: String| {
        if let Err(e) = write(&d, file, &value) {
            failed.push(e);
        }
    };
    if let Some(m) = r.memory_limit {
        set(
            "memory.max",
            if m > 0 { m.to_string() } else { "max".into() },
        );
    }
    if let Some(low) = r.memory_reservation {
        // runc's `memory.low` for `memory.reservation`.
        set(
            "memory.low",
            if low >= 0 {
                low.to_string()
            } else {
                "max".into()
            },
        );
    }
    if let Some(line) = r.cpu_max(&std::fs::read_to_string(d.join("cpu.max")).unwrap_or_default()) {
        set("cpu.max", line);
    }
    if let Some(s) = r.cpu_shares {
        set("cpu.weight", shares_to_weight(s).to_string());
    }
    if let Some(p) = r.pids_limit {
        set("pids.max", if p > 0 { p.to_string() } else { "max".into() });
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(LimitsError::Writes(failed))
    }
}

/// runc's conversion of `cpu.shares` to `cpu.weight`.
fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// Moves the calling process into the cgroup of `container` (in a child, before it
/// execs). Nothing to do when init made no cgroup (host test mode).
pub fn join_self(container: ContainerId) -> Result<()> {
    if !ready(container) {
        return Ok(());
    }
    let procs = dir(container).join("cgroup.procs");
    std::fs::write(&procs, "0")
        .with_context(|| format!("join the container's cgroup ({})", procs.display()))
}

/// The usage of the cgroup of `container`.
pub fn stats(container: ContainerId) -> GuestStats {
    let d = dir(container);
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
    let num = |f: &str| read(f).trim().parse::<u64>().ok();
    let keyed = |f: &str, key: &str| keyed_value(&read(f), key);
    GuestStats {
        memory_usage: num("memory.current").unwrap_or(0),
        memory_limit: num("memory.max"),
        cpu_usage_usec: keyed("cpu.stat", "usage_usec").unwrap_or(0),
        pids_current: num("pids.current").unwrap_or(0),
        pids_limit: num("pids.max"),
        oom_kills: keyed("memory.events", "oom_kill").unwrap_or(0),
    }
}

/// The container cgroup's `memory.events` `oom_kill` count: processes of the container
/// the kernel's OOM killer killed (for the limit, or for the VM's RAM), reported with
/// each exit so that the host can tell its own container engine before the exit. 0 when
/// init made no cgroup (host test mode).
pub fn oom_kills(container: ContainerId) -> u64 {
    if !ready(container) {
        return 0;
    }
    let text = std::fs::read_to_string(dir(container).join("memory.events")).unwrap_or_default();
    keyed_value(&text, "oom_kill").unwrap_or(0)
}

/// The number of `key` in a flat-keyed cgroup file (`key value` lines).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
    })
}

/// A process of the container as init lists it.
struct Listed {
    /// Its pid and its parent's in init's (the root) PID namespace.
    root_pid: i32,
    root_ppid: i32,
    /// As the container sees it (its parent's pid still to be translated).
    process: GuestProcess,
}

/// One `/proc/<pid>` as the container sees it, if it is in `pid_ns` (the inode of the
/// main process's PID namespace).
fn listed_process(pid: i32, pid_ns: u64) -> Option<Listed> {
    use std::os::unix::fs::MetadataExt;
    let base = PathBuf::from(format!("/proc/{pid}"));
    if std::fs::metadata(base.join("ns/pid")).ok()?.ino() != pid_ns {
        return None;
    }
    let status = std::fs::read_to_string(base.join("status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    // NSpid: the pid in each namespace, outermost first; the container's is the last.
    let ns_pid = field("NSpid:")?.split_whitespace().last()?.parse().ok()?;
    let ppid: i32 = field("PPid:")?.parse().ok()?;
    let uid = field("Uid:")?.split_whitespace().next()?.parse().ok()?;
    let rss_kib = field("VmRSS:")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cmdline = std::fs::read(base.join("cmdline")).unwrap_or_default();
    let cmd = if cmdline.is_empty() {
        format!("[{}]", field("Name:").unwrap_or_default())
    } else {
        String::from_utf8_lossy(&cmdline)
            .trim_end_matches('\0')
            .replace('\0', " ")
    };
    Some(Listed {
        root_pid: pid,
        root_ppid: ppid,
        process: GuestProcess {
            pid: ns_pid,
            ppid,
            uid,
            cmd,
            rss_kib,
        },
    })
}

/// The processes of the container (those in the PID namespace of `main`), by pid in
/// the container, their parents' pids translated too (0 for one outside it).
pub fn processes(main: Pid) -> Vec<GuestProcess> {
    use std::os::unix::fs::MetadataExt;
    let Ok(ns) = std::fs::metadata(format!("/proc/{main}/ns/pid")) else {
        return Vec::new();
    };
    let ns = ns.ino();
    let listed: Vec<Listed> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| listed_process(pid, ns))
        .collect();
    let ns_pid_of: HashMap<i32, i32> = listed.iter().map(|l| (l.root_pid, l.process.pid)).collect();
    let mut out: Vec<GuestProcess> = listed
        .into_iter()
        .map(|l| GuestProcess {
            ppid: ns_pid_of.get(&l.root_ppid).copied().unwrap_or(0),
            ..l.process
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    // The answer must fit a frame (a fork bomb has many processes, a command line may
    // be long).
    out.truncate(MAX_LISTED);
    for p in &mut out {
        truncate_on_char_boundary(&mut p.cmd, MAX_CMD);
    }
    out
}

/// Cuts `s` to at most `max` bytes without splitting a character.
fn truncate_on_char_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_listed_in_its_own_pid_namespace() {
        let me = nix::unistd::getpid();
        let procs = processes(me);
        let mine = procs
            .iter()
            .find(|p| p.pid == me.as_raw())
            .expect("this process is listed");
        assert!(!mine.cmd.is_empty());
        assert_eq!(mine.uid, nix::unistd::getuid().as_raw());
    }

    #[test]
    fn oom_kill_counts_are_read_by_key() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(2));
        assert_eq!(keyed_value(events, "oom"), Some(3));
        assert_eq!(keyed_value(events, "absent"), None);
        assert_eq!(keyed_value("oom_kill x\n", "oom_kill"), None);
    }

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(2), 1);
    }

    #[test]
    fn failed_limits_are_named_one_by_one() {
        let missing = Path::new("/nonexistent-cgroup-dir");
        let errors = vec![
            write(missing, "memory.max", "5").unwrap_err(),
            write(missing, "pids.max", "max").unwrap_err(),
        ];
        assert_eq!(
            LimitsError::Writes(errors).to_string(),
            "memory.max = \"5\": No such file or directory (os error 2); \
             pids.max = \"max\": No such file or directory (os error 2)"
        );
    }

    #[test]
    fn command_lines_are_cut_between_characters() {
        let mut s = "aé".repeat(3);
        truncate_on_char_boundary(&mut s, 4);
        assert_eq!(s, "aéa");
        truncate_on_char_boundary(&mut s, 2);
        assert_eq!(s, "a");
        truncate_on_char_boundary(&mut s, 10);
        assert_eq!(s, "a");
    }

    #[test]
    fn limits_without_a_cgroup_are_an_error() {
        assert!(apply(7, &Resources::default()).is_err());
    }
}

//! Which network namespace the container's monitor lives in, and the checks that keep
//! runvm from touching a network stack that is not the container's own.
//!
//! Decisions (README "Networking"):
//! - `network` with a `path` (Podman, newer Docker, `--network container:X`): the monitor
//!   joins it at `create`. The path must exist and be a network namespace.
//! - `network` without a path (Docker 20.10, containerd, `runc spec`): the monitor
//!   unshares a new one at `create`, with `lo` up as runc does. Docker then fills it
//!   (`libnetwork-setkey` prestart hook on `state.pid`, or `/proc/<pid>/ns/net` between
//!   create and start).
//! - no `network` namespace (`--network host`): refused. A VM has its own kernel and
//!   cannot share the host's network stack, and mirroring the host's interfaces into a
//!   guest would take them away from the host.
//! - a namespace other processes live in (`--network container:X` of a runc container,
//!   another runvm container's monitor, the host's namespace by path): refused at
//!   `create`. Mirroring its interfaces would take its traffic away from them.
//! - no `pid` or no `ipc` namespace (`--pid host`, `--ipc host`): refused. The container's
//!   processes and IPC objects live in the guest's kernel; the host's cannot be shared.
//! - a `pid` or `ipc` namespace given by path (`--pid container:X`, `--ipc container:X`):
//!   refused, unless the network namespace is given by path too, and is that of a
//!   running runvm container's VM whose namespaces these are: the container then runs in
//!   that VM (a member: [`crate::container::member`] checks it at `create`).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::NetworkError;

/// Where the container's network namespace comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// Unshare a new, empty one at `create`.
    New,
    /// Join this one at `create`.
    Join(PathBuf),
}

/// Reads `linux.namespaces` and decides, or refuses with the reason.
pub fn from_spec(spec: &oci_spec::runtime::Spec) -> Result<NetworkMode, NetworkError> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    // Every path first, before any other decision: a path of the wrong type is a mistake
    // in the spec whatever runvm would do with that namespace.
    for ns in &namespaces {
        if let Some(path) = ns.path() {
            check_ns_path(path, ns.typ())?;
        }
    }
    let find = |t: T| namespaces.iter().find(|n| n.typ() == t);
    let network_by_path = find(T::Network).is_some_and(|n| n.path().is_some());
    for (t, flag) in [(T::Pid, "--pid"), (T::Ipc, "--ipc")] {
        match find(t) {
            None => {
                return Err(NetworkError::Refused(format!(
                    "linux.namespaces has no {t:?} namespace ({flag} host): a runvm container's processes live in its own guest kernel and cannot share the host's; add a {} namespace",
                    format!("{t:?}").to_lowercase()
                )))
            }
            Some(ns) if ns.path().is_some() && !network_by_path => {
                return Err(NetworkError::Refused(joining_refused(
                    t,
                    ns.path().as_deref().unwrap_or(Path::new("")),
                )))
            }
            Some(_) => {}
        }
    }
    match find(T::Network) {
        None => Err(NetworkError::Refused(
            "linux.namespaces has no network namespace (--network host): a runvm container has its own kernel and cannot share the host's network stack; use a network namespace (Docker's bridge or user-defined networks, or --network none)".into(),
        )),
        Some(ns) => match ns.path() {
            None => Ok(NetworkMode::New),
            Some(p) => Ok(NetworkMode::Join(p.clone())),
        },
    }
}

/// Why a container that is not a member of another's VM cannot join namespace `path`.
pub fn joining_refused(t: oci_spec::runtime::LinuxNamespaceType, path: &Path) -> String {
    let (name, _) = ns_kind(t);
    format!(
        "linux.namespaces: joining the {name} namespace {} (--{name} container:…) is not supported by runvm: the container's processes live in its own guest kernel (it can share the namespaces of the container whose network it joins: --network container:X --{name} container:X)",
        path.display()
    )
}

/// `NSFS_MAGIC`: the file system of `/proc/<pid>/ns/*` and of their bind mounts.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `NS_GET_NSTYPE` (`_IO(0xb7, 0x3)`): the `CLONE_NEW*` flag of a namespace file.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The spec's name of a namespace type and its `CLONE_NEW*` flag.
fn ns_kind(t: oci_spec::runtime::LinuxNamespaceType) -> (&'static str, libc::c_int) {
    use oci_spec::runtime::LinuxNamespaceType as T;
    match t {
        T::Mount => ("mount", libc::CLONE_NEWNS),
        T::Cgroup => ("cgroup", libc::CLONE_NEWCGROUP),
        T::Uts => ("uts", libc::CLONE_NEWUTS),
        T::Ipc => ("ipc", libc::CLONE_NEWIPC),
        T::User => ("user", libc::CLONE_NEWUSER),
        T::Pid => ("pid", libc::CLONE_NEWPID),
        T::Network => ("network", libc::CLONE_NEWNET),
        T::Time => ("time", 0x80), // CLONE_NEWTIME
    }
}

/// The spec's name of the namespace type with this `CLONE_NEW*` flag.
fn ns_name_of_flag(flag: libc::c_int) -> Option<&'static str> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    [
        T::Mount,
        T::Cgroup,
        T::Uts,
        T::Ipc,
        T::User,
        T::Pid,
        T::Network,
        T::Time,
    ]
    .into_iter()
    .map(ns_kind)
    .find(|(_, f)| *f == flag)
    .map(|(n, _)| n)
}

/// Checks that a `linux.namespaces` path exists and is a namespace of the type it is
/// listed as (runc refuses `{"type": "uts", "path": "/proc/self/ns/cgroup"}` too).
fn check_ns_path(
    path: &Path,
    typ: oci_spec::runtime::LinuxNamespaceType,
) -> Result<(), NetworkError> {
    let (want, want_flag) = ns_kind(typ);
    let err = |problem: String| NetworkError::NamespacePath {
        typ: want,
        path: path.display().to_string(),
        problem,
    };
    let f = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            err("does not exist".into())
        } else {
            err(format!("cannot open it: {e}"))
        }
    })?;
    // SAFETY: an all-zero statfs is a valid value for fstatfs to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs fills `st`, valid for writes, for a descriptor we own.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } != 0 {
        return Err(err(format!("fstatfs: {}", std::io::Error::last_os_error())));
    }
    if st.f_type as i64 != NSFS_MAGIC {
        return Err(err("is not a namespace file (nsfs)".into()));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the type; the fd is ours.
    let got_flag = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
    if got_flag < 0 {
        return Err(err(format!(
            "cannot read its namespace type (NS_GET_NSTYPE): {}",
            std::io::Error::last_os_error()
        )));
    }
    if got_flag != want_flag {
        let got = ns_name_of_flag(got_flag).unwrap_or("unknown");
        return Err(err(format!("is a {got} namespace, not a {want} namespace")));
    }
    Ok(())
}

/// The namespace identity (device and inode of its nsfs file).
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether the namespace files `a` and `b` name one namespace.
pub fn same_namespace(a: &Path, b: &Path) -> bool {
    matches!((ns_id(a), ns_id(b)), (Some(x), Some(y)) if x == y)
}

/// Makes the calling (single-threaded) process live in the container's network
/// namespace: joins `Join`'s path, or unshares a new one (and sets its `lo` up). A
/// namespace other processes live in is refused unless the container is a `member` of
/// the VM that holds it (see [`crate::container::member`]).
pub fn enter(mode: &NetworkMode, member: bool) -> Result<(), NetworkError> {
    match mode {
        NetworkMode::New => {
            // SAFETY: unshare(2) with a flag only.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(NetworkError::Namespace {
                    path: "(new)".into(),
                    message: format!("unshare: {}", std::io::Error::last_os_error()),
                });
            }
            let mut s = runvm_netlink::Socket::route().map_err(NetworkError::Read)?;
            let lo = s
                .links()
                .map_err(NetworkError::Read)?
                .into_iter()
                .find(|l| l.flags & runvm_netlink::route::IFF_LOOPBACK != 0);
            if let Some(lo) = lo {
                s.set_link(lo.index, true, None)
                    .map_err(NetworkError::Read)?;
            }
            Ok(())
        }
        NetworkMode::Join(path) => {
            let err = |message: String| NetworkError::Namespace {
                path: path.display().to_string(),
                message,
            };
            if ns_id(path) == ns_id(Path::new("/proc/1/ns/net")) {
                return Err(NetworkError::Refused(format!(
                    "network namespace {} is the host's: a runvm container cannot share it (it would take the host's interfaces away)",
                    path.display()
                )));
            }
            let f = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
            // SAFETY: setns(2) on a descriptor we own.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(err(format!("setns: {}", std::io::Error::last_os_error())));
            }
            if member {
                return Ok(());
            }
            check_unshared(path)
        }
    }
}

/// Refuses a namespace that processes other than this one (and its children) live in.
fn check_unshared(path: &Path) -> Result<(), NetworkError> {
    let Some(mine) = ns_id(Path::new("/proc/self/ns/net")) else {
        return Ok(());
    };
    let me = std::process::id();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || parent_of(pid) == Some(me) {
            continue;
        }
        if ns_id(&e.path().join("ns/net")) == Some(mine) {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            return Err(NetworkError::Refused(format!(
                "network namespace {} is in use by process {pid} ({}): a runvm container cannot share a network stack with another container or process (docker run --network container:…); give it a namespace of its own",
                path.display(),
                comm.trim()
            )));
        }
    }
    Ok(())
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses: the fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(namespaces: serde_json::Value) -> oci_spec::runtime::Spec {
        let mut v = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
        v["linux"]["namespaces"] = namespaces;
        serde_json::from_value(v).unwrap()
    }

    fn all_but(skip: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut v: Vec<serde_json::Value> = ["pid", "ipc", "uts", "mount", "network"]
            .iter()
            .filter(|t| **t != skip)
            .map(|t| json!({ "type": t }))
            .collect();
        if !extra.is_null() {
            v.push(extra);
        }
        serde_json::Value::Array(v)
    }

    #[test]
    fn a_network_namespace_without_path_is_new() {
        assert_eq!(
            from_spec(&spec(all_but("", json!(null)))).unwrap(),
            NetworkMode::New
        );
    }

    #[test]
    fn host_modes_are_refused_with_the_flag_named() {
        for (skip, words) in [
            (
                "network",
                ["--network host", "cannot share the host's network stack"],
            ),
            ("pid", ["--pid host", "add a pid namespace"]),
            ("ipc", ["--ipc host", "add a ipc namespace"]),
        ] {
            let e = from_spec(&spec(all_but(skip, json!(null))))
                .unwrap_err()
                .to_string();
            for w in words {
                assert!(e.contains(w), "{skip}: {e}");
            }
        }
        let e = from_spec(&spec(all_but(
            "pid",
            json!({"type": "pid", "path": "/proc/self/ns/pid"}),
        )))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--pid container:") && e.contains("/proc/self/ns/pid"),
            "{e}"
        );
    }

    #[test]
    fn a_network_namespace_path_must_exist_and_be_a_namespace() {
        let e = from_spec(&spec(all_but(
            "network",
            json!({"type": "network", "path": "/run/netns/runvm-does-not-exist"}),
        )))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/run/netns/runvm-does-not-exist") && e.contains("does not exist"),
            "{e}"
        );
        let e = from_spec(&spec(all_but(
            "network",
            json!({"type": "network", "path": "/etc/hostname"}),
        )))
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a namespace file"), "{e}");
        // A namespace of another type.
        let e = from_spec(&spec(all_but(
            "network",
            json!({"type": "network", "path": "/proc/self/ns/uts"}),
        )))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("the network namespace path /proc/self/ns/uts is a uts namespace, not a network namespace"),
            "{e}"
        );
        let ok = from_spec(&spec(all_but(
            "network",
            json!({"type": "network", "path": "/proc/self/ns/net"}),
        )));
        assert_eq!(ok.unwrap(), NetworkMode::Join("/proc/self/ns/net".into()));
    }

    #[test]
    fn every_namespace_path_is_checked_against_its_type_first() {
        // For the types runvm joins (network), ignores (uts, mount, cgroup) and refuses
        // (pid, ipc), a path of another type fails with both types named.
        for (typ, other) in [
            ("uts", "cgroup"),
            ("mount", "uts"),
            ("cgroup", "net"),
            ("pid", "ipc"),
            ("ipc", "mnt"),
            ("user", "uts"),
            ("network", "pid"),
        ] {
            let e = from_spec(&spec(all_but(
                typ,
                json!({"type": typ, "path": format!("/proc/self/ns/{other}")}),
            )))
            .unwrap_err()
            .to_string();
            let got = match other {
                "net" => "network",
                "mnt" => "mount",
                o => o,
            };
            assert!(
                e.contains(&format!("is a {got} namespace, not a {typ} namespace")),
                "{typ} given a {other} path: {e}"
            );
        }
        // The right type passes this check (uts by path is then used as today).
        assert!(from_spec(&spec(all_but(
            "uts",
            json!({"type": "uts", "path": "/proc/self/ns/uts"})
        )))
        .is_ok());
    }

    #[test]
    fn the_parent_of_a_process_is_read_from_stat() {
        assert_eq!(
            parent_of(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
    }
}

//! The containers' processes: the main one of each container, started in new PID, mount
//! and UTS namespaces with the container's view built in its child (cgroup, hostname, root
//! switch, mounts, devices, sysctls, read-only and masked paths) and a user namespace when
//! the spec maps ids ([`crate::user_ns`]), and exec'd ones, which join a container's main
//! process's namespaces and root. Both then become their process ([`crate::execve`]).
//!
//! The main container is the VM's; a member container (a pod's other containers) is built
//! the same way from its own paths, cgroup and spec, in a new IPC namespace too, and joins
//! the main container's PID, IPC or UTS namespace where [`Sandbox::share`] says so.

use crate::error::{Context, Result};
use crate::execve::become_process;
use crate::mounts::{self, Paths};
use crate::spawn::{self, ChildStdio, Started};
use crate::user_ns::UserNamespace;
use crate::{attrs, binds, cgroup};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use runvm_protocol::{ContainerId, LinuxSpec, MountSpec, ProcessSpec, SharedNamespaces};
use std::convert::Infallible;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// Everything the child of a container's main process needs.
pub struct Request<'a> {
    pub container: ContainerId,
    pub paths: &'a Paths,
    pub process: &'a ProcessSpec,
    pub linux: &'a LinuxSpec,
    pub mounts: &'a [MountSpec],
    pub hostname: Option<&'a str>,
    /// For a member container: the main container, some of whose namespaces it joins.
    pub sandbox: Option<Sandbox>,
}

/// The main container as a member container sees it.
#[derive(Clone, Copy, Debug)]
pub struct Sandbox {
    /// The main container's main process (as init sees its pid).
    pub main: Pid,
    /// Which of its namespaces the member joins.
    pub share: SharedNamespaces,
}

/// Starts the main process of the container of `req` in new PID, mount and UTS
/// namespaces (and, for a member, a new IPC namespace), each but the mount namespace
/// replaced by the main container's where a member shares it.
pub fn spawn_container(req: &Request<'_>) -> Result<Started> {
    let mut namespaces = CloneFlags::CLONE_NEWNS;
    let share = req.sandbox.map(|s| s.share).unwrap_or_default();
    if !share.pid {
        namespaces |= CloneFlags::CLONE_NEWPID;
    }
    if !share.uts {
        namespaces |= CloneFlags::CLONE_NEWUTS;
    }
    if req.sandbox.is_some() && !share.ipc {
        namespaces |= CloneFlags::CLONE_NEWIPC;
    }
    match req.sandbox {
        Some(sandbox) if share.pid => in_pid_namespace_of(sandbox.main, || {
            spawn::start(namespaces, req.process, |stdio| main_child(req, stdio))
        }),
        _ => spawn::start(namespaces, req.process, |stdio| main_child(req, stdio)),
    }
}

/// Starts `process` as another process of the running container `container` whose main
/// process is `main`: it joins `main`'s namespaces (the PID namespace by forking after
/// `setns`, as runc's nsenter does), root and the container's cgroup, and is a child of
/// init, so init reaps it.
pub fn spawn_exec(container: ContainerId, main: Pid, process: &ProcessSpec) -> Result<Started> {
    in_pid_namespace_of(main, || {
        spawn::start(CloneFlags::empty(), process, |stdio| {
            exec_child(container, main, process, stdio)
        })
    })
}

/// Runs `start` with init's children going to the PID namespace of `pid`, then returns
/// init's to its own.
fn in_pid_namespace_of(pid: Pid, start: impl FnOnce() -> Result<Started>) -> Result<Started> {
    let own_pid_ns = std::fs::File::open("/proc/self/ns/pid").context("open /proc/self/ns/pid")?;
    let target = format!("/proc/{pid}/ns/pid");
    let pid_ns = std::fs::File::open(&target).with_context(|| format!("open {target}"))?;
    nix::sched::setns(&pid_ns, CloneFlags::CLONE_NEWPID)
        .with_context(|| format!("join the PID namespace of {pid}"))?;
    let started = start();
    // Init's own children must stay in init's namespace.
    nix::sched::setns(&own_pid_ns, CloneFlags::CLONE_NEWPID)
        .context("return to init's PID namespace")?;
    started
}

/// The main process: build the container's view, then become the process.
fn main_child(req: &Request<'_>, stdio: ChildStdio) -> Result<Infallible> {
    // Its own cgroup, seen as the root of the cgroup namespace it gets.
    cgroup::join_self(req.container)?;
    nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).context("unshare the cgroup namespace")?;
    if let Some(sandbox) = req.sandbox {
        // As the guest's root, before any user namespace.
        for (shared, name, flag) in [
            (sandbox.share.ipc, "ipc", CloneFlags::CLONE_NEWIPC),
            (sandbox.share.uts, "uts", CloneFlags::CLONE_NEWUTS),
        ] {
            if shared {
                let path = format!("/proc/{}/ns/{name}", sandbox.main);
                let ns = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
                nix::sched::setns(&ns, flag)
                    .with_context(|| format!("join the main container's {name} namespace"))?;
            }
        }
    }
    nix::sys::stat::umask(Mode::empty());
    if let Some(h) = req.hostname {
        nix::unistd::sethostname(h).with_context(|| format!("sethostname {h:?}"))?;
    }
    let user_ns = UserNamespace::for_main(&req.linux.uid_mappings, &req.linux.gid_mappings)?;
    build_container_view(req)?;
    become_process(req.process, stdio, user_ns)
}

/// The root switch and everything the container sees under its new root.
fn build_container_view(req: &Request<'_>) -> Result<()> {
    // Bind sources are taken from init's /run (the share, the relay sockets), which the
    // root switch hides.
    let mut binds = binds::prepare(req.mounts, req.paths)?;
    mounts::switch_root(&req.paths.newroot)?;
    mounts::container(req.mounts, &mut binds)?;
    mounts::devices(&req.linux.devices)?;
    mounts::finalize_dev(req.mounts)?;
    // runc's order: sysctls, then read-only paths (Docker lists /proc/sys), then masks.
    attrs::apply_sysctls(&req.linux.sysctl)?;
    for p in &req.linux.readonly_paths {
        mounts::readonly_path(p)?;
    }
    for p in &req.linux.masked_paths {
        mounts::mask_path(p)?;
    }
    Ok(())
}

/// The namespaces an exec'd process joins, by their `/proc/<pid>/ns` names. The PID
/// namespace is joined before the fork, by init.
const EXEC_NAMESPACES: [(&str, CloneFlags); 5] = [
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// An exec'd process: join the main process's namespaces and root, then become the
/// process.
fn exec_child(
    container: ContainerId,
    main: Pid,
    p: &ProcessSpec,
    stdio: ChildStdio,
) -> Result<Infallible> {
    // Before joining the container's namespaces, while init's /sys/fs/cgroup is seen.
    cgroup::join_self(container)?;
    nix::sys::stat::umask(Mode::empty());
    let root_path = format!("/proc/{main}/root");
    let root = std::fs::File::open(&root_path)
        .with_context(|| format!("open the container's root {root_path}"))?;
    // Joined last, in `become_process`: the other namespaces are joined as the guest's root.
    let user_ns = match namespace_of(main, "user")? {
        Some(ns) => UserNamespace::join(ns, main)?,
        None => UserNamespace::None,
    };
    join_namespaces_of(main)?;
    // The container's root, whatever way its main process entered it.
    nix::unistd::fchdir(root.as_raw_fd()).context("enter the container's root")?;
    nix::unistd::chroot(".").context("chroot into the container's root")?;
    std::env::set_current_dir("/").context("chdir / in the container root")?;
    drop(root);
    become_process(p, stdio, user_ns)
}

/// Joins each of [`EXEC_NAMESPACES`] of `main` that differs from the caller's own.
fn join_namespaces_of(main: Pid) -> Result<()> {
    for (name, flag) in EXEC_NAMESPACES {
        if let Some(f) = namespace_of(main, name)? {
            nix::sched::setns(&f, flag).with_context(|| format!("join the {name} namespace"))?;
        }
    }
    Ok(())
}

/// `main`'s namespace `name` (`/proc/<main>/ns/<name>`), opened, where it is not the
/// caller's own; `None` where it is, or where the kernel has no such namespace.
fn namespace_of(main: Pid, name: &str) -> Result<Option<std::fs::File>> {
    let theirs = format!("/proc/{main}/ns/{name}");
    let ours = format!("/proc/self/ns/{name}");
    let (Ok(t), Ok(o)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
        return Ok(None);
    };
    if t.ino() == o.ino() {
        return Ok(None);
    }
    let f = std::fs::File::open(&theirs).with_context(|| format!("open {theirs}"))?;
    Ok(Some(f))
}

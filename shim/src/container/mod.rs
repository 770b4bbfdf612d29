//! Containers: OCI semantics on top of the monitor, one file per operation (each takes
//! liboci-cli's arguments of its command).
//!
//! A container's state directory `<root>/<id>/` holds `state.json` (see [`crate::state`])
//! and `run/`, the monitor's runtime files (vsock sockets, `monitor.sock`, the root
//! filesystem image), which the cleanup guard removes if the monitor dies.

pub mod create;
pub mod delete;
pub mod events;
pub mod exec;
pub mod features;
mod hook_runner;
pub mod kill;
pub mod list;
pub mod member;
pub mod pause;
pub mod ps;
pub mod resume;
pub mod run;
pub mod spec;
pub mod start;
pub mod state;
pub mod update;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use runvm_protocol::HostMessage;

use crate::assets::GuestAssets;
use crate::cgroup::PathSyntax;
use crate::host_process;
use crate::monitor::guard::Undo;
use crate::monitor::MonitorConfig;
use crate::settings::{self, env_num};
use crate::spec::ContainerSpec;

/// Default state root, like runc's `/run/runc`.
pub const DEFAULT_ROOT: &str = "/run/runvm";

/// The state root in effect (`--root` or the default).
pub fn root_dir(root: Option<&Path>) -> PathBuf {
    root.map_or_else(|| PathBuf::from(DEFAULT_ROOT), Path::to_path_buf)
}

/// A validated container whose state directory exists and whose root filesystem image
/// is built: what both `run` and `create` start a monitor with.
pub struct Prepared {
    pub id: String,
    pub root: PathBuf,
    pub dir: PathBuf,
    pub spec: ContainerSpec,
    pub run: HostMessage,
    pub config: MonitorConfig,
    /// How `linux.cgroupsPath` is written (`--systemd-cgroup`).
    pub cgroups: PathSyntax,
}

impl Prepared {
    /// The monitor's runtime directory.
    pub fn runtime_dir(&self) -> PathBuf {
        crate::state::ContainerState::runtime_dir(&self.root, &self.id)
    }
}

/// Whether the VMM's threads get their seccomp filters: always in a release build;
/// `RUNVM_NO_SECCOMP=1` turns them off in a debug build only (for debugging a filter).
fn seccomp_on() -> bool {
    let off = std::env::var_os("RUNVM_NO_SECCOMP").is_some_and(|v| v != "0");
    if off && !cfg!(debug_assertions) {
        log::warn!("RUNVM_NO_SECCOMP is ignored: this runvm is a release build");
        return true;
    }
    !off
}

/// Validates everything before creating anything, then creates `<root>/<id>/run/` and the
/// root filesystem image in the state root `root`. On error after the directory exists,
/// it is removed again.
pub fn prepare(id: &str, bundle: &Path, root: &Path, cgroups: PathSyntax) -> Result<Prepared> {
    crate::id::validate(id)?;
    let spec = ContainerSpec::load(bundle)?;
    let Some(process) = spec.process.clone() else {
        bail!(
            "config.json in {} has no process to run",
            spec.bundle.display()
        );
    };
    let assets = GuestAssets::locate()?;
    let resources = &spec.linux.resources;
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let vcpus = crate::cgroup::vm_vcpus(
        env_num("RUNVM_VCPUS", 1)?,
        resources,
        spec.cpuset_cpus,
        host_cpus,
        vmm::MAX_VCPUS,
    );
    let mem_mib = crate::cgroup::vm_memory_mib(
        env_num("RUNVM_MEM_MIB", 256)?,
        resources,
        crate::cgroup::host_memory_mib(),
    );
    let boot_timeout = settings::boot_timeout()?;
    let fs_slots = env_num("RUNVM_FS_SLOTS", 8)?;
    let boot = settings::boot_mode()?;

    // State is root's alone (0700, as runc makes its root): it names the container's
    // sockets, its pid and its bundle.
    // The modes are set outright, whatever the caller's umask: the monitor, which keeps
    // no capability once the VM is set up, must still search and write these as their
    // owner (a containerd shim's umask had left them 0500).
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let owner_only = || std::fs::Permissions::from_mode(0o700);
    let made_root = !root.exists();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .and_then(|()| {
            if made_root {
                std::fs::set_permissions(root, owner_only())
            } else {
                Ok(())
            }
        })
        .with_context(|| format!("cannot create state root {}", root.display()))?;
    let dir = root.join(id);
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, owner_only()))
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("container with id {id:?} already exists")
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot create state directory {}", dir.display()))
        }
    }
    let built = (|| -> Result<MonitorConfig> {
        let runtime = crate::state::ContainerState::runtime_dir(root, id);
        std::fs::create_dir(&runtime)
            .and_then(|()| std::fs::set_permissions(&runtime, owner_only()))
            .with_context(|| format!("cannot create {}", runtime.display()))?;
        Ok(MonitorConfig {
            assets,
            vcpus,
            mem_mib,
            runtime_dir: runtime,
            share: spec.share.clone(),
            bounding_caps: spec
                .process
                .as_ref()
                .and_then(|p| p.capabilities.as_ref())
                .map(|c| c.bounding.clone())
                .unwrap_or_default(),
            debug_console: std::env::var_os("RUNVM_DEBUG_CONSOLE").is_some_and(|v| v != "0"),
            seccomp: seccomp_on(),
            boot_timeout,
            timings_file: std::env::var_os("RUNVM_TIMINGS_FILE").map(PathBuf::from),
            resolv_conf: spec.resolv_conf.clone(),
            cmdline_append: std::env::var("RUNVM_KERNEL_CMDLINE_APPEND")
                .ok()
                .filter(|s| !s.trim().is_empty()),
            on_started: None,
            fs_slots,
            boot,
        })
    })();
    let config = match built {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let run = HostMessage::Run {
        rootfs: runvm_protocol::RootfsSpec {
            readonly: spec.readonly,
            ..Default::default()
        },
        hostname: spec.hostname.clone(),
        process,
        linux: spec.linux.clone(),
        mounts: spec.mounts.clone(),
        // Filled in at start, from the network namespace as Docker left it.
        network: Default::default(),
    };
    Ok(Prepared {
        id: id.to_string(),
        root: root.to_path_buf(),
        dir,
        spec,
        run,
        config,
        cgroups,
    })
}

/// The umask `runvm` was started with, before the monitor set its own.
static CALLER_UMASK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0o022);

/// Gives the calling process (a hook runner forked by the monitor) the umask `runvm` was
/// started with, as runc's hooks have.
pub fn restore_caller_umask() {
    let bits = CALLER_UMASK.load(std::sync::atomic::Ordering::Relaxed);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(bits));
}

/// Makes the calling process (the monitor, still single-threaded) live in the container's
/// network namespace, and forks the cleanup guard for `dir` there, which also undoes the
/// network plumbing recorded in `runtime_dir` if the monitor dies. A `member` container
/// (see [`member`]) joins the namespace its sandbox's VM holds.
pub fn enter_network_and_guard(
    p: &Prepared,
    dir: &Path,
    member: bool,
) -> Result<crate::monitor::guard::CleanupGuard> {
    // What the monitor makes (its sockets, state files) is its owner's alone, and the
    // owner's in full, whatever umask the caller had: after the privilege drop it can use
    // only what its mode gives it. Hooks get the caller's back ([`caller_umask`]).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    CALLER_UMASK.store(old.bits(), std::sync::atomic::Ordering::Relaxed);
    crate::network::namespace::enter(&p.spec.network, member)?;
    let record = crate::monitor::network_record(&p.runtime_dir());
    let state_dir = p.dir.clone();
    let cgroup_dir = p.dir.clone();
    let undo = record.clone();
    // The guard's parent, and the process that asks it for an `Undo::Cgroup`.
    let monitor = std::process::id();
    let guard = crate::monitor::guard::spawn_with(
        dir,
        move |what| match what {
            Undo::Network => crate::network::mirror::teardown_recorded(&undo),
            Undo::Cgroup => crate::cgroup::leave_and_remove(&cgroup_dir, monitor),
        },
        move || {
            crate::network::mirror::teardown_recorded(&record);
            crate::cgroup::remove_recorded(&state_dir);
        },
    )
    .context("cannot start the cleanup guard")?;
    // After the guard's fork: the guard stays out of the cgroup it removes.
    let res = &p.spec.linux.resources;
    crate::cgroup::join(
        p.spec.cgroups_path.as_deref(),
        p.cgroups,
        &p.id,
        &p.dir,
        res,
        p.config.mem_mib,
    )
    .context("cannot put the container's monitor into its cgroup")?;
    let args = p.spec.process.as_ref().map(|p| p.args.join(" "));
    // The state root stays in it: it is how a leftover monitor is found.
    let title = format!(
        "{} --root {} {}: {}",
        if member { "runvm-member" } else { "runvm-vm" },
        p.root.display(),
        p.id,
        args.unwrap_or_default()
    );
    host_process::set_title(&title);
    Ok(guard)
}

/// The container of `p`, as its hooks see it.
pub fn hook_container(p: &Prepared) -> crate::hooks::Container {
    crate::hooks::Container {
        id: p.id.clone(),
        bundle: p.spec.bundle.clone(),
        rootfs: p.spec.rootfs.clone(),
        annotations: p.spec.annotations.clone(),
        hooks: p.spec.hooks.clone(),
        host_netns: None,
    }
}

/// Loads a container's state from the state root `root`; an unknown id gives runc's
/// "does not exist" wording.
pub fn load(root: &Path, id: &str) -> Result<crate::state::ContainerState> {
    crate::id::validate(id)?;
    Ok(crate::state::ContainerState::load(root, id)?)
}

//! `run`: create and start a container in the foreground and wait for it: the process
//! ends with the workload's exit code, and nothing of the container is left afterwards.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use runvm_protocol::{HostMessage, RootfsSpec};
use vmm::DiskConfig;

use crate::assets::GuestAssets;
use crate::monitor::{self, guard, MonitorConfig};
use crate::spec::ContainerSpec;

/// What `run` needs, already parsed.
pub struct RunOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub root: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid number")),
        Err(_) => Ok(default),
    }
}

/// Runs the container; returns the workload's exit code.
pub fn run(opts: RunOptions) -> Result<i32> {
    crate::id::validate(&opts.id)?;
    let spec = ContainerSpec::load(&opts.bundle)?;
    let Some(process) = spec.process.clone() else {
        bail!(
            "config.json in {} has no process to run",
            spec.bundle.display()
        );
    };
    if process.terminal {
        bail!("process.terminal is true, but terminal mode is not implemented yet in runvm; run without a tty");
    }
    let assets = GuestAssets::locate()?;
    let vcpus: u8 = env_num("RUNVM_VCPUS", 1)?;
    let mem_mib: u64 = env_num("RUNVM_MEM_MIB", 256)?;
    let boot_timeout = Duration::from_secs(env_num("RUNVM_BOOT_TIMEOUT", 60)?);

    let dir = crate::container::state_dir(&opts.root, &opts.id);
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create state root {}", parent.display()))?;
    }
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("container with id {:?} already exists", opts.id)
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot create state directory {}", dir.display()))
        }
    }
    // From here on the directory is ours: the guard removes it whatever happens to us.
    let guard = guard::spawn(&dir).context("cannot start the cleanup guard")?;
    let result = run_in(
        &opts,
        &spec,
        process,
        assets,
        vcpus,
        mem_mib,
        boot_timeout,
        &dir,
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(guard);
    result
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    opts: &RunOptions,
    spec: &ContainerSpec,
    process: runvm_protocol::ProcessSpec,
    assets: GuestAssets,
    vcpus: u8,
    mem_mib: u64,
    boot_timeout: Duration,
    dir: &std::path::Path,
) -> Result<i32> {
    if let Some(p) = &opts.pid_file {
        crate::container::write_pid_file(p, std::process::id())
            .with_context(|| format!("cannot write pid file {}", p.display()))?;
    }
    let image = dir.join("rootfs.erofs");
    crate::rootfs::build_erofs(&spec.rootfs, &image)?;
    let run = HostMessage::Run {
        rootfs: RootfsSpec {
            lower_devices: vec!["/dev/vda".into()],
            readonly: spec.readonly,
        },
        hostname: spec.hostname.clone(),
        process,
    };
    let cfg = MonitorConfig {
        assets,
        vcpus,
        mem_mib,
        runtime_dir: dir.to_path_buf(),
        disks: vec![DiskConfig {
            path: image,
            read_only: true,
        }],
        debug_console: std::env::var_os("RUNVM_DEBUG_CONSOLE").is_some_and(|v| v != "0"),
        seccomp: std::env::var_os("RUNVM_NO_SECCOMP").is_none_or(|v| v == "0"),
        boot_timeout,
        timings_file: std::env::var_os("RUNVM_TIMINGS_FILE").map(PathBuf::from),
    };
    let code =
        monitor::run_vm(cfg, run, [0, 1, 2]).with_context(|| format!("container {:?}", opts.id))?;
    monitor::remove_sockets(dir);
    Ok(code)
}

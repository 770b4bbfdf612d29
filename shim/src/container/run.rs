//! `run`: create and start a container in the foreground and wait for it: the process
//! ends with the workload's exit code, and nothing of the container is left afterwards.
//! The hooks run as with `create`, `start` and `delete`, in runvm's own namespaces
//! although this process, the monitor, lives in the container's network namespace.
//!
//! `run --detach` is `create` and `start` in one command, as runc's: it returns once the
//! process runs, and the monitor keeps the stdio it was given.
//!
//! With `process.terminal`, the caller's terminal is relayed as runc does: put in raw
//! mode (restored at the end), its size given to the guest's pty and SIGWINCH passed on;
//! or, with `--console-socket`, a new pty whose master goes to that socket.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use liboci_cli::Run;

use super::hook_runner::HookRunner;
use crate::cgroup::PathSyntax;
use crate::hooks::HookKind;
use crate::host_process;
use crate::monitor::{self, api, tty, HostStdio, Launch};

/// How long `run` waits for its guard to remove the container's cgroup (it waits up to
/// 3 s for processes still leaving it).
const CGROUP_UNDO_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `run`, in the foreground or (`--detach`) as `create` and `start`, in the state root
/// `root`; the cgroups path is written in `cgroups`.
pub fn run(root: &Path, cgroups: PathSyntax, args: &Run) -> Result<i32> {
    if args.detach {
        run_detached(root, cgroups, args)
    } else {
        run_foreground(root, cgroups, args)
    }
}

/// Runs the container; returns the workload's exit code.
fn run_foreground(root: &Path, cgroups: PathSyntax, args: &Run) -> Result<i32> {
    let mut p = super::prepare(&args.container_id, &args.bundle, root, cgroups)?;
    // `run` boots a VM of its own: it cannot be a member of another's.
    if let Err(e) = super::member::check_joined(&p, None) {
        let _ = std::fs::remove_dir_all(&p.dir);
        return Err(e);
    }
    let mut container = super::hook_container(&p);
    // The hooks run in the namespace this process is about to leave.
    container.host_netns = match std::fs::File::open("/proc/self/ns/net") {
        Ok(f) => Some(f.into()),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&p.dir);
            return Err(e).context("cannot open runvm's network namespace (/proc/self/ns/net)");
        }
    };
    // The host API of the running container (`state`, `kill`, `exec`, … from other
    // commands), as for a created one.
    let api_listener = match crate::sockpath::SocketDir::open(&p.runtime_dir())
        .and_then(|d| UnixListener::bind(d.path(api::SOCKET)))
    {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&p.dir);
            return Err(e).context("cannot create the monitor socket");
        }
    };
    // From here on the directory is ours: the guard removes it whatever happens to us
    // (with --keep only the runtime files, so that the stopped container stays listed).
    let guarded = if args.keep {
        p.runtime_dir()
    } else {
        p.dir.clone()
    };
    let guard = match super::enter_network_and_guard(&p, &guarded, false) {
        Ok(g) => g,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&p.dir);
            return Err(e);
        }
    };
    let pid = std::process::id() as i32;
    let before = super::create::run_create_hooks(&container, pid)
        .and_then(|()| container.run(HookKind::StartContainer, "created", pid));
    let saved = before.map_err(anyhow::Error::from).and_then(|()| {
        let state = super::create::state_of(&p, pid);
        state.save(&p.root).map_err(anyhow::Error::from)
    });
    // The hooks after the start run in a process that keeps runvm's privileges: this
    // process, the monitor, drops its own before the guest boots.
    let after_start = |h: &oci_spec::runtime::Hooks| {
        !HookKind::Poststart.of(h).is_empty() || !HookKind::Poststop.of(h).is_empty()
    };
    let runner = saved.and_then(|()| {
        if !container.hooks.as_ref().is_some_and(after_start) {
            return Ok(None);
        }
        HookRunner::spawn(&container, pid, &[api_listener.as_raw_fd()])
            .map(|r| Some(Arc::new(r)))
            .map_err(|e| {
                anyhow::anyhow!("cannot fork the runner of its poststart and poststop hooks: {e}")
            })
    });
    let runner = match runner {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&p.dir);
            drop(guard);
            container.run_warn(HookKind::Poststop, "stopped", 0);
            return Err(anyhow::anyhow!("cannot run container {:?}: {e}", p.id));
        }
    };
    if let Some(r) = runner.clone() {
        // poststart runs beside the monitor's loop, which must not wait for it.
        p.config.on_started = Some(Box::new(move || r.poststart()));
    }
    let runtime_dir = p.runtime_dir();
    let mut raw_mode = None;
    let result = (|| -> Result<i32> {
        let terminal = p.spec.process.as_ref().is_some_and(|p| p.terminal);
        let stdio = match (terminal, &args.console_socket) {
            (false, Some(_)) => bail!(
                "cannot use console socket if runvm will not detach or allocate tty (process.terminal is false)"
            ),
            (false, None) => HostStdio::inherited()?,
            (true, Some(path)) => {
                let slave = tty::Pty::for_console_socket(path)?;
                // Resizes reach us only if the pty can be our controlling terminal.
                if nix::unistd::setsid().is_ok() {
                    let _ = tty::make_controlling(slave.as_raw_fd());
                }
                HostStdio::Terminal {
                    output: std::fs::File::from(slave.try_clone()?),
                    input: std::fs::File::from(slave),
                }
            }
            (true, None) => {
                raw_mode = tty::RawMode::enter(0);
                match HostStdio::inherited()? {
                    HostStdio::Pipes { stdin, stdout, .. } => HostStdio::Terminal {
                        input: stdin,
                        output: stdout,
                    },
                    t => t,
                }
            }
        };
        host_process::write_pid_file_if(args.pid_file.as_deref(), std::process::id())?;
        let id = p.id.clone();
        let launch = Launch::Immediate {
            api: api_listener,
            state_dir: p.dir.clone(),
        };
        monitor::run_vm(p.config, p.run, stdio, launch).with_context(|| format!("container {id:?}"))
    })();
    drop(raw_mode);
    // This process, without privileges now, may not remove the container's cgroup: its
    // guard does, moving it (and the hook runner) out first, before the record goes
    // with the state directory.
    if let Err(e) =
        crate::monitor::guard::request_undo(crate::monitor::guard::Undo::Cgroup, CGROUP_UNDO_WAIT)
    {
        log::warn!("the container's cgroup may be left behind: {e}");
    }
    if args.keep {
        // runc's `run --keep`: the stopped container stays until `delete`.
        let _ = std::fs::remove_dir_all(&runtime_dir);
    } else {
        let _ = std::fs::remove_dir_all(&p.dir);
    }
    drop(guard);
    match runner {
        // After the poststart hooks, if they still run.
        Some(r) => r.poststop(),
        None => container.run_warn(HookKind::Poststop, "stopped", 0),
    }
    result
}

/// `run --detach`: `create` with `run`'s arguments, then `start`; a container that
/// cannot start is deleted.
fn run_detached(root: &Path, cgroups: PathSyntax, args: &Run) -> Result<i32> {
    let id = &args.container_id;
    let create = liboci_cli::Create {
        bundle: args.bundle.clone(),
        console_socket: args.console_socket.clone(),
        pid_file: args.pid_file.clone(),
        no_pivot: args.no_pivot,
        no_new_keyring: args.no_new_keyring,
        preserve_fds: args.preserve_fds,
        container_id: id.clone(),
    };
    super::create::create(root, cgroups, &create)?;
    let start = liboci_cli::Start {
        container_id: id.clone(),
    };
    match super::start::start(root, &start) {
        Ok(code) => Ok(code),
        Err(e) => {
            let delete = liboci_cli::Delete {
                container_id: id.clone(),
                force: true,
            };
            if let Err(d) = super::delete::delete(root, &delete) {
                log::warn!("cannot delete container {id:?} after its failed start: {d:#}");
            }
            Err(e)
        }
    }
}

//! `create`: starts the container's monitor, which waits for `start` before it boots the
//! VM (a created container holds no VM).
//!
//! The monitor is a child of `create` (so a subreaper such as containerd's shim inherits
//! and reaps it); `create` returns once the monitor is ready, having written the monitor's
//! pid to `--pid-file` and `state.json`. The workload does not run before `start`.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::path::Path;

use anyhow::{Context, Result};

use crate::cgroup::PathSyntax;
use crate::hooks::HookKind;
use crate::host_process;
use crate::monitor::{self, api, tty, HostStdio, Launch};
use crate::state::ContainerState;

/// Creates container `args.container_id` in the state root `root`; its cgroups path is
/// written in `cgroups`.
pub fn create(root: &Path, cgroups: PathSyntax, args: &liboci_cli::Create) -> Result<i32> {
    let p = super::prepare(&args.container_id, &args.bundle, root, cgroups)?;
    let fail = |e: anyhow::Error| -> anyhow::Error {
        let _ = std::fs::remove_dir_all(&p.dir);
        e
    };
    let terminal = p.spec.process.as_ref().is_some_and(|p| p.terminal);
    let console = match (terminal, &args.console_socket) {
        (true, None) => {
            return Err(fail(anyhow::anyhow!(
                "cannot allocate tty if runvm will detach without setting console socket (process.terminal is true: pass --console-socket)"
            )))
        }
        (false, Some(_)) => {
            return Err(fail(anyhow::anyhow!(
                "cannot use console socket if runvm will not detach or allocate tty (process.terminal is false)"
            )))
        }
        // The master goes to the caller now, as with runc; the monitor keeps the slave.
        (true, Some(path)) => Some(tty::Pty::for_console_socket(path).map_err(|e| fail(e.into()))?),
        (false, None) => None,
    };
    // A container in the network namespace of a running runvm container's VM runs in
    // that VM (see [`super::member`]).
    let sandbox = super::member::sandbox_of(&p).map_err(fail)?;
    super::member::check_joined(&p, sandbox.as_ref()).map_err(fail)?;
    super::member::check_pod(&p, sandbox.as_ref()).map_err(fail)?;
    let member = match &sandbox {
        Some(s) => Some(super::member::member_config(&p, s).map_err(fail)?),
        None => None,
    };
    let api_listener = crate::sockpath::SocketDir::open(&p.runtime_dir())
        .and_then(|d| UnixListener::bind(d.path(api::SOCKET)))
        .context("cannot create the monitor socket")
        .map_err(fail)?;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| {
        fail(anyhow::Error::from(e).context("cannot create the monitor's ready pipe"))
    })?;

    // SAFETY: create is single-threaded here; the child becomes the monitor and never
    // returns into this function's callers.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail(std::io::Error::last_os_error().into()));
    }
    if pid == 0 {
        drop(ready_r);
        // SAFETY: setsid has no preconditions; the monitor leaves create's session so
        // terminal signals meant for the caller do not reach it.
        unsafe { libc::setsid() };
        let runtime = p.runtime_dir();
        let stdio = match console {
            Some(slave) => monitor_terminal(slave),
            None => HostStdio::inherited(),
        };
        let is_member = member.is_some();
        let code = match stdio.map(|s| (s, super::enter_network_and_guard(&p, &runtime, is_member)))
        {
            Err(e) => {
                use std::io::Write;
                let _ = writeln!(std::fs::File::from(ready_w), "cannot set up stdio: {e}");
                1
            }
            Ok((stdio, Ok(_guard))) if member.is_some() => {
                let cfg = member.expect("a member's config");
                match monitor::member_monitor::run_member(cfg, stdio, api_listener, ready_w.into())
                {
                    Ok(code) => code,
                    Err(e) => {
                        log::error!("container {:?}: {e}", p.id);
                        1
                    }
                }
            }
            Ok((stdio, Ok(_guard))) => {
                let launch = Launch::OnStart {
                    api: api_listener,
                    ready: ready_w.into(),
                    state_dir: p.dir.clone(),
                };
                match monitor::run_vm(p.config, p.run, stdio, launch) {
                    Ok(code) => code,
                    Err(e) => {
                        log::error!("container {:?}: {e}", p.id);
                        1
                    }
                }
            }
            Ok((_, Err(e))) => {
                use std::io::Write;
                let msg = crate::error_message(&e);
                let _ = writeln!(std::fs::File::from(ready_w), "{msg}");
                1
            }
        };
        let _ = std::fs::remove_dir_all(&runtime);
        log::debug!("stop path: the monitor exits ({code})");
        std::process::exit(code);
    }
    drop(ready_w);
    drop(api_listener);

    let mut line = String::new();
    let _ = BufReader::new(std::fs::File::from(ready_r)).read_line(&mut line);
    let line = line.trim();
    if line != "ok" {
        stop_monitor(pid);
        let why = if line.is_empty() {
            "the monitor exited before the guest was up"
        } else {
            line
        };
        return Err(fail(anyhow::anyhow!(
            "cannot create container {:?}: {why}",
            p.id
        )));
    }
    // The monitor lives in the container's network namespace now: the hooks that run at
    // create (Docker 20.10's libnetwork-setkey among them) find it through the pid.
    let hook_container = super::hook_container(&p);
    if let Err(e) = run_create_hooks(&hook_container, pid) {
        stop_monitor(pid);
        let e = fail(anyhow::anyhow!("cannot create container {:?}: {e}", p.id));
        // The container is destroyed: the lifecycle goes on with the poststop hooks.
        hook_container.run_warn(HookKind::Poststop, "stopped", 0);
        return Err(e);
    }
    let mut state = state_of(&p, pid);
    state.sandbox = sandbox.map(|s| s.id);
    state.save(&p.root).map_err(|e| fail(e.into()))?;
    host_process::write_pid_file_if(args.pid_file.as_deref(), pid as u32)?;
    Ok(0)
}

/// The state of the prepared container `p` whose monitor is `pid`.
pub(crate) fn state_of(p: &super::Prepared, pid: i32) -> ContainerState {
    ContainerState {
        id: p.id.clone(),
        bundle: p.spec.bundle.clone(),
        rootfs: p.spec.rootfs.clone(),
        pid,
        pid_start_time: host_process::start_time(pid).unwrap_or(0),
        created: crate::logging::rfc3339_now(),
        annotations: p.spec.annotations.clone(),
        hooks: p.spec.hooks.clone(),
        sandbox: None,
    }
}

/// Stops the monitor (our child) and reaps it, before cleaning up after a failed create.
fn stop_monitor(pid: i32) {
    // SAFETY: `pid` is our unreaped child, so it cannot be another process.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// The hooks of `create`, in the spec's order, with runc's status ("creating") and the
/// monitor's pid: prestart and createRuntime, then createContainer (on the host too: the
/// container's mount namespace is in the guest, which does not exist before `start`).
pub(crate) fn run_create_hooks(
    c: &crate::hooks::Container,
    pid: i32,
) -> Result<(), crate::hooks::HookError> {
    for kind in [
        HookKind::Prestart,
        HookKind::CreateRuntime,
        HookKind::CreateContainer,
    ] {
        c.run(kind, "creating", pid)?;
    }
    Ok(())
}

/// The monitor's side of the console: the pty slave becomes its controlling terminal
/// (so resizes of the master bring SIGWINCH), and its own fds 0–2 leave create's stdio,
/// which a caller with a terminal reads to EOF (go-runc does).
fn monitor_terminal(slave: std::os::fd::OwnedFd) -> std::io::Result<HostStdio> {
    use std::os::fd::AsRawFd;
    if let Err(e) = tty::make_controlling(slave.as_raw_fd()) {
        log::warn!("the console pty cannot be the monitor's controlling terminal ({e}); resizes will not reach the container");
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..3 {
        nix::unistd::dup2(null.as_raw_fd(), fd)?;
    }
    let output = std::fs::File::from(slave.try_clone()?);
    Ok(HostStdio::Terminal {
        input: std::fs::File::from(slave),
        output,
    })
}

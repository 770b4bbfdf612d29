//! `create`: starts the container's monitor, which waits for `start` before it boots the
//! VM (a created container holds no VM).
//!
//! The monitor is a child of `create` (so a subreaper such as containerd's shim inherits
//! and reaps it); `create` returns once the monitor is ready, having written the monitor's
//! pid to `--pid-file` and `state.json`. The workload does not run before `start`.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::monitor::{self, api, guard, Launch};
use crate::state::{process_start_time, ContainerState};

/// What `create` needs, already parsed.
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub root: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
}

pub fn create(opts: CreateOptions) -> Result<i32> {
    if opts.console_socket.is_some() {
        bail!("--console-socket (terminal mode) is not implemented yet in runvm");
    }
    let p = super::prepare(&opts.id, &opts.bundle, &opts.root)?;
    let fail = |e: anyhow::Error| -> anyhow::Error {
        let _ = std::fs::remove_dir_all(&p.dir);
        e
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
        let code = match guard::spawn(&runtime) {
            Ok(_guard) => {
                let launch = Launch::OnStart {
                    api: api_listener,
                    ready: ready_w.into(),
                    state_dir: p.dir.clone(),
                };
                match monitor::run_vm(p.config, p.run, [0, 1, 2], launch) {
                    Ok(code) => code,
                    Err(e) => {
                        log::error!("container {:?}: {e}", p.id);
                        1
                    }
                }
            }
            Err(e) => {
                use std::io::Write;
                let _ = writeln!(std::fs::File::from(ready_w), "{e}");
                1
            }
        };
        let _ = std::fs::remove_dir_all(&runtime);
        std::process::exit(code);
    }
    drop(ready_w);
    drop(api_listener);

    let mut line = String::new();
    let _ = BufReader::new(std::fs::File::from(ready_r)).read_line(&mut line);
    let line = line.trim();
    if line != "ok" {
        // SAFETY: the monitor is our child; stop it and reap it before cleaning up.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
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
    let state = ContainerState {
        id: p.id.clone(),
        bundle: p.spec.bundle.clone(),
        rootfs: p.spec.rootfs.clone(),
        pid,
        pid_start_time: process_start_time(pid).unwrap_or(0),
        created: crate::logging::rfc3339_now(),
        annotations: Default::default(),
    };
    state.save(&p.root).map_err(|e| fail(e.into()))?;
    if let Some(f) = &opts.pid_file {
        super::write_pid_file(f, pid as u32)
            .with_context(|| format!("cannot write pid file {}", f.display()))?;
    }
    Ok(0)
}

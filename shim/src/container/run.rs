//! `run`: create and start a container in the foreground and wait for it: the process
//! ends with the workload's exit code, and nothing of the container is left afterwards.
//!
//! With `process.terminal`, the caller's terminal is relayed as runc does: put in raw
//! mode (restored at the end), its size given to the guest's pty and SIGWINCH passed on;
//! or, with `--console-socket`, a new pty whose master goes to that socket.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::monitor::{self, tty, HostStdio, Launch};

/// What `run` needs, already parsed.
pub struct RunOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub root: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
}

/// Runs the container; returns the workload's exit code.
pub fn run(opts: RunOptions) -> Result<i32> {
    let p = super::prepare(&opts.id, &opts.bundle, &opts.root)?;
    // From here on the directory is ours: the guard removes it whatever happens to us.
    let guard = match super::enter_network_and_guard(&p, &p.dir) {
        Ok(g) => g,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&p.dir);
            return Err(e);
        }
    };
    let mut raw_mode = None;
    let result = (|| -> Result<i32> {
        let terminal = p.spec.process.as_ref().is_some_and(|p| p.terminal);
        let stdio = match (terminal, &opts.console_socket) {
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
        if let Some(f) = &opts.pid_file {
            super::write_pid_file(f, std::process::id())
                .with_context(|| format!("cannot write pid file {}", f.display()))?;
        }
        let id = p.id.clone();
        monitor::run_vm(p.config, p.run, stdio, Launch::Immediate)
            .with_context(|| format!("container {id:?}"))
    })();
    drop(raw_mode);
    let _ = std::fs::remove_dir_all(&p.dir);
    drop(guard);
    result
}

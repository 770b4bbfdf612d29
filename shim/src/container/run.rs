//! `run`: create and start a container in the foreground and wait for it: the process
//! ends with the workload's exit code, and nothing of the container is left afterwards.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::monitor::{self, Launch};

/// What `run` needs, already parsed.
pub struct RunOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub root: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
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
    let result = (|| -> Result<i32> {
        if let Some(f) = &opts.pid_file {
            super::write_pid_file(f, std::process::id())
                .with_context(|| format!("cannot write pid file {}", f.display()))?;
        }
        let id = p.id.clone();
        monitor::run_vm(p.config, p.run, [0, 1, 2], Launch::Immediate)
            .with_context(|| format!("container {id:?}"))
    })();
    let _ = std::fs::remove_dir_all(&p.dir);
    drop(guard);
    result
}

//! `delete`: removes a stopped container, or (with `--force`, or while only created)
//! kills it first. Nothing of it is left: monitor, VM, sockets, state directory. Then
//! the poststop hooks run (a failure is a warning: the delete still succeeds).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::monitor::api::{self, Request};
use crate::state::{ContainerState, Status};

pub fn delete(root: &Option<PathBuf>, id: &str, force: bool) -> Result<i32> {
    let state = super::load(root, id)?;
    let root_dir = super::root_dir(root);
    let dir = ContainerState::dir(&root_dir, id);
    match state.status(&root_dir) {
        // The process has ended; the monitor may still be writing the container's changes
        // back: let it finish (bounded), as the write-back is part of the stop.
        Status::Stopped if !force => wait_for_monitor(&state, &root_dir),
        Status::Stopped => {
            if state.monitor_alive() {
                kill_and_wait(&state, &root_dir)
            }
        }
        s @ (Status::Running | Status::Paused) if !force => {
            bail!(
                "cannot delete container {id} that is not stopped: {}",
                s.as_str()
            )
        }
        Status::Created | Status::Running | Status::Paused => kill_and_wait(&state, &root_dir),
    }
    crate::cgroup::remove_recorded(&dir);
    std::fs::remove_dir_all(&dir).or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    crate::hooks::Container::from_state(&state).run_warn(
        crate::hooks::HookKind::Poststop,
        "stopped",
        0,
    );
    Ok(0)
}

/// Waits up to 30 s for the monitor of a stopped container to end by itself, then kills
/// it.
fn wait_for_monitor(state: &ContainerState, root_dir: &std::path::Path) {
    if !monitor_gone_by(state, Instant::now() + Duration::from_secs(30)) {
        log::warn!(
            "the monitor of stopped container {} did not end within 30 s: killing it",
            state.id
        );
        kill_and_wait(state, root_dir);
    }
}

/// Kills the container (SIGKILL through its monitor, which stops the VM) and waits up to
/// 10 s for the monitor to end, then SIGKILLs the monitor itself.
pub(super) fn kill_and_wait(state: &ContainerState, root_dir: &std::path::Path) {
    let _ = api::request(
        &ContainerState::runtime_dir(root_dir, &state.id),
        &Request::Signal {
            signal: libc::SIGKILL,
        },
        Duration::from_secs(5),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    if !monitor_gone_by(state, deadline) {
        // SAFETY: the pid is the monitor's (its start time matched just above).
        unsafe { libc::kill(state.pid, libc::SIGKILL) };
        monitor_gone_by(state, deadline + Duration::from_secs(5));
    }
}

/// Polls until the monitor has ended or `deadline` passed; whether it ended.
fn monitor_gone_by(state: &ContainerState, deadline: Instant) -> bool {
    while state.monitor_alive() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

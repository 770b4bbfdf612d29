//! `delete`: removes a stopped container, or (with `--force`, or while only created)
//! kills it first. Nothing of it is left: monitor, VM, sockets, state directory. Then
//! the poststop hooks run (a failure is a warning: the delete still succeeds).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::monitor::api::{self, Request};
use crate::state::ContainerState;

pub fn delete(root: &Path, args: &liboci_cli::Delete) -> Result<i32> {
    let (id, force) = (&args.container_id, args.force);
    let state = match super::load(root, id) {
        Ok(state) => state,
        // runc: `delete --force` of a container that does not exist succeeds, after
        // removing whatever an aborted create left under its id.
        Err(e) if force && is_not_found(&e) => {
            remove_dir_if_exists(&ContainerState::dir(root, id))?;
            return Ok(0);
        }
        Err(e) => return Err(e),
    };
    let dir = ContainerState::dir(root, id);
    let status = state.status(root);
    status.can_delete(id, force)?;
    if status.has_pid() {
        // Created, running or paused: its process goes first.
        kill_and_wait(&state, root);
    } else if !force {
        // The process has ended; the monitor may still be relaying the last output and
        // stopping the VM: let it finish (bounded), as both are part of the stop.
        wait_for_monitor(&state, root);
    } else if state.monitor_alive() {
        kill_and_wait(&state, root);
    }
    crate::cgroup::remove_recorded(&dir);
    remove_dir_if_exists(&dir)?;
    crate::hooks::Container::from_state(&state).run_warn(
        crate::hooks::HookKind::Poststop,
        "stopped",
        0,
    );
    Ok(0)
}

fn is_not_found(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<crate::state::StateError>(),
        Some(crate::state::StateError::NotFound(_))
    )
}

fn remove_dir_if_exists(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Waits up to 30 s for the monitor of a stopped container to end by itself, then kills
/// it.
fn wait_for_monitor(state: &ContainerState, root_dir: &Path) {
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
pub(super) fn kill_and_wait(state: &ContainerState, root_dir: &Path) {
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
pub(super) fn monitor_gone_by(state: &ContainerState, deadline: Instant) -> bool {
    while state.monitor_alive() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

//! `start`: runs the process of a created container, with the startContainer hooks
//! before it (a failure fails `start` and kills the container) and the poststart hooks
//! once it runs (a failure is a warning).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::hooks::HookKind;
use crate::monitor::api::{self, Request, Response};
use crate::state::{ContainerState, Status};

pub fn start(root: &Option<PathBuf>, id: &str) -> Result<i32> {
    let state = super::load(root, id)?;
    match state.status(&super::root_dir(root)) {
        Status::Created => {}
        Status::Running | Status::Paused => bail!("cannot start an already running container"),
        Status::Stopped => bail!("cannot start a container that has stopped"),
    }
    let dir = ContainerState::runtime_dir(&super::root_dir(root), id);
    let hooks = crate::hooks::Container::from_state(&state);
    if let Err(e) = hooks.run(HookKind::StartContainer, "created", state.pid) {
        // The process must not run: the container stops (and `delete` removes it).
        super::delete::kill_and_wait(&state, &super::root_dir(root));
        bail!("cannot start container {id:?}: {e}");
    }
    // The VM boots now: allow for the guest's boot timeout, and then some.
    let boot = super::env_num("RUNVM_BOOT_TIMEOUT", 60u64)?;
    match api::request(&dir, &Request::Start, Duration::from_secs(boot + 30))? {
        Response::Ok => {
            hooks.run_warn(HookKind::Poststart, "running", state.pid);
            Ok(0)
        }
        Response::Error(e) => bail!("cannot start container {id:?}: {e}"),
    }
}

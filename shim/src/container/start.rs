//! `start`: runs the process of a created container, with the startContainer hooks
//! before it (a failure fails `start` and kills the container) and the poststart hooks
//! once it runs (a failure is a warning).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::hooks::HookKind;
use crate::monitor::api::{self, Request, Response};
use crate::state::ContainerState;

/// How long a monitor whose container failed to start may take to end (it stops the VM,
/// which takes up to 10 s) before `start` kills it.
const MONITOR_END: Duration = Duration::from_secs(15);

pub fn start(root: &Path, args: &liboci_cli::Start) -> Result<i32> {
    let id = &args.container_id;
    let state = super::load(root, id)?;
    state.status(root).can_start()?;
    let dir = ContainerState::runtime_dir(root, id);
    let hooks = crate::hooks::Container::from_state(&state);
    if let Err(e) = hooks.run(HookKind::StartContainer, "created", state.pid) {
        // The process must not run: the container stops (and `delete` removes it).
        super::delete::kill_and_wait(&state, root);
        bail!("cannot start container {id:?}: {e}");
    }
    // The VM boots now: allow for the guest's boot timeout, and then some.
    let boot = crate::settings::boot_timeout()?;
    match api::request(&dir, &Request::Start, boot + Duration::from_secs(30))? {
        Response::Ok => {
            hooks.run_warn(HookKind::Poststart, "running", state.pid);
            Ok(0)
        }
        Response::Error(e) => {
            // The container has stopped; `start` returns once its monitor has ended, as
            // the failed start's caller acts at once: containerd's shim says "created"
            // (and containerd refuses to delete the task) until it has reaped the monitor.
            let deadline = Instant::now() + MONITOR_END;
            if !super::delete::monitor_gone_by(&state, deadline) {
                super::delete::kill_and_wait(&state, root);
            }
            bail!("cannot start container {id:?}: {e}")
        }
    }
}

//! `start`: runs the process of a created container.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

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
    // The VM boots now: allow for the guest's boot timeout, and then some.
    let boot = super::env_num("RUNVM_BOOT_TIMEOUT", 60u64)?;
    match api::request(&dir, &Request::Start, Duration::from_secs(boot + 30))? {
        Response::Ok => Ok(0),
        Response::Error(e) => bail!("cannot start container {id:?}: {e}"),
    }
}

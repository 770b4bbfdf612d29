//! `pause`: the monitor stops the VM's vCPUs, so everything in the container freezes
//! (the guest kernel too); `state` shows "paused" until `resume`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::monitor::api::{self, ControlResponse, Request};
use crate::state::{ContainerState, Status};

pub fn pause(root: &Option<PathBuf>, id: &str) -> Result<i32> {
    let state = super::load(root, id)?;
    let root_dir = super::root_dir(root);
    match state.status(&root_dir) {
        Status::Running => {}
        Status::Paused => bail!("container {id} is already paused"),
        Status::Created | Status::Stopped => bail!("container not running"),
    }
    let dir = ContainerState::runtime_dir(&root_dir, id);
    match api::request_control(&dir, &Request::Pause, Duration::from_secs(10))? {
        ControlResponse::Ok => Ok(0),
        ControlResponse::Error(e) => bail!("cannot pause container {id:?}: {e}"),
        other => bail!("cannot pause container {id:?}: unexpected answer {other:?}"),
    }
}

//! `resume`: the monitor lets a paused VM's vCPUs run again.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::monitor::api::{self, ControlResponse, Request};
use crate::state::{ContainerState, Status};

pub fn resume(root: &Option<PathBuf>, id: &str) -> Result<i32> {
    let state = super::load(root, id)?;
    let root_dir = super::root_dir(root);
    match state.status(&root_dir) {
        Status::Paused => {}
        Status::Running | Status::Created => bail!("container not paused"),
        Status::Stopped => bail!("container not running"),
    }
    let dir = ContainerState::runtime_dir(&root_dir, id);
    match api::request_control(&dir, &Request::Resume, Duration::from_secs(10))? {
        ControlResponse::Ok => Ok(0),
        ControlResponse::Error(e) => bail!("cannot resume container {id:?}: {e}"),
        other => bail!("cannot resume container {id:?}: unexpected answer {other:?}"),
    }
}

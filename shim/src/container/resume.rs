//! `resume`: the monitor lets a paused VM's vCPUs run again.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::monitor::api::{self, ControlResponse, Request};
use crate::state::ContainerState;

pub fn resume(root: &Path, args: &liboci_cli::Resume) -> Result<i32> {
    let id = &args.container_id;
    let state = super::load(root, id)?;
    state.status(root).can_resume()?;
    let dir = ContainerState::runtime_dir(root, id);
    match api::request_control(&dir, &Request::Resume, Duration::from_secs(10))? {
        ControlResponse::Ok => Ok(0),
        ControlResponse::Error(e) => bail!("cannot resume container {id:?}: {e}"),
        other => bail!("cannot resume container {id:?}: unexpected answer {other:?}"),
    }
}

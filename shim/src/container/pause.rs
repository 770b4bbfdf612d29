//! `pause`: the monitor stops the VM's vCPUs, so everything in the container freezes
//! (the guest kernel too); `state` shows "paused" until `resume`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::monitor::api::{self, ControlResponse, Request};
use crate::state::ContainerState;

pub fn pause(root: &Path, args: &liboci_cli::Pause) -> Result<i32> {
    let id = &args.container_id;
    let state = super::load(root, id)?;
    state.status(root).can_pause(id)?;
    let dir = ContainerState::runtime_dir(root, id);
    match api::request_control(&dir, &Request::Pause, Duration::from_secs(10))? {
        ControlResponse::Ok => Ok(0),
        ControlResponse::Error(e) => bail!("cannot pause container {id:?}: {e}"),
        other => bail!("cannot pause container {id:?}: unexpected answer {other:?}"),
    }
}

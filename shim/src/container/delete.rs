//! `delete`: removes a stopped container, or (with `--force`, or while only created)
//! kills it first. Nothing of it is left: monitor, VM, sockets, state directory.

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
        Status::Stopped => {}
        s @ (Status::Running | Status::Paused) if !force => {
            bail!(
                "cannot delete container {id} that is not stopped: {}",
                s.as_str()
            )
        }
        Status::Created | Status::Running | Status::Paused => {
            let _ = api::request(
                &ContainerState::runtime_dir(&root_dir, id),
                &Request::Signal {
                    signal: libc::SIGKILL,
                },
                Duration::from_secs(5),
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while state.monitor_alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if state.monitor_alive() {
                // SAFETY: the pid is the monitor's (its start time matched just above).
                unsafe { libc::kill(state.pid, libc::SIGKILL) };
                while state.monitor_alive() && Instant::now() < deadline + Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    super::cgroup::remove_recorded(&dir);
    std::fs::remove_dir_all(&dir).or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    Ok(0)
}

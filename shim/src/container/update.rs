//! `update`: new limits for a running container, on the host cgroup (CPU: the whole VM)
//! and in the guest's cgroup of the container (memory, CPU, pids). What runvm cannot
//! apply is refused by name, before anything changes.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::LinuxResources;
use runvm_protocol::Resources;

use crate::cgroup::{self, HostCgroup};
use crate::monitor::api::{self, ControlResponse, Request};
use crate::state::{ContainerState, Status};

/// `runvm update`'s options, already parsed.
pub struct UpdateOptions {
    pub id: String,
    pub root: Option<PathBuf>,
    /// `-r FILE` (`-` for stdin): an OCI `linux.resources` document.
    pub resources: Option<PathBuf>,
    pub memory: Option<u64>,
    pub cpu_quota: Option<u64>,
    pub cpu_period: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub pids_limit: Option<i64>,
    /// Flags given that runvm cannot apply, by name.
    pub unsupported: Vec<&'static str>,
}

/// The limits `opts` asks for: the document's, overridden by the flags.
fn wanted(opts: &UpdateOptions) -> Result<Resources> {
    if !opts.unsupported.is_empty() {
        bail!(
            "runvm cannot apply {} (it applies --memory, --cpu-quota, --cpu-period, --cpu-share, --pids-limit)",
            opts.unsupported.join(", ")
        );
    }
    let mut r = Resources::default();
    if let Some(path) = &opts.resources {
        let text = if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the resources from stdin")?;
            s
        } else {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
        };
        let doc: LinuxResources = crate::spec::from_json(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let cannot = cgroup::unsupported_in_update(&doc);
        if !cannot.is_empty() {
            bail!(
                "runvm cannot apply {} of {} (it applies memory.limit, cpu.quota, cpu.period, cpu.shares, pids.limit)",
                cannot.join(", "),
                path.display()
            );
        }
        r = cgroup::resources_from_oci(&doc);
    }
    if let Some(m) = opts.memory {
        r.memory_limit = Some(i64::try_from(m).unwrap_or(i64::MAX));
    }
    if let Some(q) = opts.cpu_quota {
        r.cpu_quota = Some(i64::try_from(q).unwrap_or(i64::MAX));
    }
    if let Some(p) = opts.cpu_period {
        r.cpu_period = Some(p);
    }
    if let Some(s) = opts.cpu_shares {
        r.cpu_shares = Some(s);
    }
    if let Some(p) = opts.pids_limit {
        r.pids_limit = Some(p);
    }
    Ok(r)
}

pub fn update(opts: UpdateOptions) -> Result<i32> {
    let r = wanted(&opts)?;
    let id = &opts.id;
    let state = super::load(&opts.root, id)?;
    let root_dir = super::root_dir(&opts.root);
    match state.status(&root_dir) {
        Status::Running => {}
        Status::Paused => bail!("cannot update container {id:?}: it is paused (its guest applies the limits: resume it first)"),
        Status::Created | Status::Stopped => bail!("container not running"),
    }
    if r == Resources::default() {
        return Ok(0);
    }
    if let Some(cg) = HostCgroup::load(&ContainerState::dir(&root_dir, id)) {
        // The VM's memory is fixed at boot: the host cgroup's memory limit stays.
        cg.apply(&r, None)
            .with_context(|| format!("cannot update the host cgroup of container {id:?}"))?;
    }
    let dir = ContainerState::runtime_dir(&root_dir, id);
    match api::request_control(
        &dir,
        &Request::Update { resources: r },
        Duration::from_secs(10),
    )? {
        ControlResponse::Ok => Ok(0),
        ControlResponse::Error(e) => bail!("cannot update container {id:?}: {e}"),
        other => bail!("cannot update container {id:?}: unexpected answer {other:?}"),
    }
}

//! `update`: new limits for a running container, on the host cgroup (CPU: the whole VM)
//! and in the guest's cgroup of the container (memory limit and reservation, CPU, pids).
//! What runvm cannot apply is refused by name, before anything changes.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use liboci_cli::Update;
use oci_spec::runtime::LinuxResources;
use runvm_protocol::Resources;

use crate::cgroup::{self, HostCgroup};
use crate::monitor::api::{self, ControlResponse, Request};
use crate::state::ContainerState;

/// The flags given that runvm cannot apply, by name.
fn unsupported_flags(u: &Update) -> Vec<&'static str> {
    [
        ("--blkio-weight", u.blkio_weight.is_some()),
        ("--cpu-rt-period", u.cpu_rt_period.is_some()),
        ("--cpu-rt-runtime", u.cpu_rt_runtime.is_some()),
        ("--cpuset-cpus", u.cpuset_cpus.is_some()),
        ("--cpuset-mems", u.cpuset_mems.is_some()),
        ("--memory-swap", u.memory_swap.is_some()),
        ("--l3-cache-schema", u.l3_cache_schema.is_some()),
        ("--mem-bw-schema", u.mem_bw_schema.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, given)| given.then_some(name))
    .collect()
}

/// The limits `args` asks for: the document's, overridden by the flags.
fn wanted(args: &Update) -> Result<Resources> {
    let unsupported = unsupported_flags(args);
    if !unsupported.is_empty() {
        bail!(
            "runvm cannot apply {} (it applies --memory, --memory-reservation, --cpu-quota, --cpu-period, --cpu-share, --pids-limit)",
            unsupported.join(", ")
        );
    }
    let mut r = Resources::default();
    if let Some(path) = &args.resources {
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
                "runvm cannot apply {} of {} (it applies memory.limit, memory.reservation, cpu.quota, cpu.period, cpu.shares, pids.limit)",
                cannot.join(", "),
                path.display()
            );
        }
        r = cgroup::resources_from_oci(&doc);
    }
    if let Some(m) = args.memory {
        r.memory_limit = Some(i64::try_from(m).unwrap_or(i64::MAX));
    }
    if let Some(m) = args.memory_reservation {
        r.memory_reservation = Some(i64::try_from(m).unwrap_or(i64::MAX));
    }
    if let Some(q) = args.cpu_quota {
        r.cpu_quota = Some(i64::try_from(q).unwrap_or(i64::MAX));
    }
    if let Some(p) = args.cpu_period {
        r.cpu_period = Some(p);
    }
    if let Some(s) = args.cpu_share {
        r.cpu_shares = Some(s);
    }
    if let Some(p) = args.pids_limit {
        r.pids_limit = Some(p);
    }
    Ok(r)
}

pub fn update(root: &Path, args: &Update) -> Result<i32> {
    let r = wanted(args)?;
    let id = &args.container_id;
    let state = super::load(root, id)?;
    state.status(root).can_update(id)?;
    if r == Resources::default() {
        return Ok(0);
    }
    if let Some(cg) = HostCgroup::load(&ContainerState::dir(root, id)) {
        // The VM's memory is fixed at boot: the host cgroup's memory limit stays.
        cg.apply(&r, None)
            .with_context(|| format!("cannot update the host cgroup of container {id:?}"))?;
    }
    let dir = ContainerState::runtime_dir(root, id);
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

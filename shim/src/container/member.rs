//! Member containers on the CLI's side: a container created in the network namespace a
//! running runvm container's VM already holds (`docker run --network container:X`, where
//! Docker names X's pid's namespace; the containers of a pod, which the CRI gives the
//! sandbox's namespace) runs in that container's VM, its sandbox, instead of a VM of its
//! own (two VMs cannot share one network stack). Its own monitor
//! ([`crate::monitor::member_monitor`]) holds no VM.
//!
//! Rules, in one place: the sandbox is found by the network namespace (the namespace of
//! its monitor, in the same state root); it must be running (a created sandbox has no VM
//! yet); a member of a member joins the first's sandbox; `exec` of a member goes to the
//! sandbox's monitor with the member's container id; the member shares the sandbox's
//! PID, IPC or UTS namespace where its spec joins one by path, as a pod's containers do.

use std::path::Path;

use anyhow::{bail, Result};
use runvm_protocol::{HostMessage, MAIN_CONTAINER};

use crate::monitor::api::MemberSpec;
use crate::monitor::member_monitor::{sandbox_runtime_dir, MemberConfig, MemberRecord};
use crate::network::namespace::{same_namespace, NetworkMode};
use crate::state::ContainerState;
use crate::status::ContainerStatus;

/// The running container whose VM holds the network namespace that the container of
/// `p` joins, if there is one in its state root: the container then runs in that VM.
pub fn sandbox_of(p: &super::Prepared) -> Result<Option<ContainerState>> {
    let NetworkMode::Join(netns) = &p.spec.network else {
        return Ok(None);
    };
    for state in ContainerState::all(&p.root) {
        if state.id == p.id || state.sandbox.is_some() || !state.monitor_alive() {
            continue;
        }
        let id = &state.id;
        let monitor_ns = format!("/proc/{}/ns/net", state.pid);
        if !same_namespace(Path::new(&monitor_ns), netns) {
            continue;
        }
        return match state.status(&p.root) {
            ContainerStatus::Running | ContainerStatus::Paused => Ok(Some(state)),
            other => bail!(
                "network namespace {} is container {id:?}'s, which is {}: a container that joins another's network runs in its VM; start {id:?} first",
                netns.display(),
                other.as_str()
            ),
        };
    }
    Ok(None)
}

/// CRI's annotations: a pod's container names its pod's sandbox.
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A container of a Kubernetes pod (CRI's annotations) must run in its pod's VM: the one
/// of its sandbox, which must be a running runvm container holding the pod's network
/// namespace.
pub fn check_pod(p: &super::Prepared, sandbox: Option<&ContainerState>) -> Result<()> {
    let a = &p.spec.annotations;
    if a.get(CRI_CONTAINER_TYPE).map(String::as_str) != Some("container") {
        return Ok(());
    }
    let Some(want) = a.get(CRI_SANDBOX_ID) else {
        return Ok(());
    };
    match sandbox {
        Some(s) if &s.id == want => Ok(()),
        Some(s) => bail!(
            "container {:?} belongs to pod sandbox {want:?} ({CRI_SANDBOX_ID}), but its network namespace is container {:?}'s VM's",
            p.id,
            s.id
        ),
        None => bail!(
            "container {:?}: its pod's sandbox {want:?} ({CRI_SANDBOX_ID}) is not a running runvm container holding the pod's network namespace: a pod's containers run in its sandbox's VM, so run the pod's sandbox with runvm too",
            p.id
        ),
    }
}

/// Refuses the PID, IPC and UTS namespaces `p` joins by path unless they are those of
/// `sandbox`'s VM (its monitor's), which a member shares; a container with a VM of its own
/// (`sandbox` `None`) can join none.
pub fn check_joined(p: &super::Prepared, sandbox: Option<&ContainerState>) -> Result<()> {
    use crate::network::namespace::joining_refused;
    use oci_spec::runtime::LinuxNamespaceType as T;
    for (t, path) in p.spec.joined.each() {
        let Some(s) = sandbox else {
            if t == T::Uts {
                // (As before members: a VM has its own UTS namespace, the hostname given.)
                continue;
            }
            bail!("{}", joining_refused(t, path));
        };
        let kind = match t {
            T::Pid => "pid",
            T::Ipc => "ipc",
            _ => "uts",
        };
        if !is_namespace_of(s.pid, kind, path) {
            bail!(
                "linux.namespaces: the {kind} namespace {} is not container {:?}'s, whose VM this container joins (its network namespace is that VM's): a container in a VM can share only that VM's container's namespaces",
                path.display(),
                s.id
            );
        }
    }
    Ok(())
}

/// Whether namespace file `path` names process `pid`'s namespace of `kind`: by its path
/// (`/proc/<pid>/ns/<kind>`, as Docker and the CRI give it), or by identity where that
/// namespace is not the host's (a monitor lives in the host's PID and IPC namespaces, so
/// identity alone would take any host process's for it).
fn is_namespace_of(pid: i32, kind: &str, path: &Path) -> bool {
    let theirs = format!("/proc/{pid}/ns/{kind}");
    if path == Path::new(&theirs) {
        return true;
    }
    let host = format!("/proc/1/ns/{kind}");
    same_namespace(Path::new(&theirs), path) && !same_namespace(Path::new(&host), path)
}

/// What the monitor of member `p` of `sandbox` needs.
pub fn member_config(p: &super::Prepared, sandbox: &ContainerState) -> Result<MemberConfig> {
    if !p.spec.share.sockets.is_empty() {
        bail!(
            "container {:?} joins the VM of container {:?}: bind mounts of host sockets are not supported there yet (bind the socket into {:?}, or give the container a network namespace of its own)",
            p.id,
            sandbox.id,
            sandbox.id
        );
    }
    let HostMessage::Run {
        rootfs,
        hostname,
        process,
        linux,
        mounts,
        ..
    } = &p.run
    else {
        bail!("internal error: the prepared container has no Run message");
    };
    let share = p.spec.joined.shared();
    Ok(MemberConfig {
        state_dir: p.dir.clone(),
        runtime_dir: p.runtime_dir(),
        sandbox: sandbox.id.clone(),
        sandbox_runtime_dir: sandbox_runtime_dir(&p.root, &sandbox.id),
        virtiofsd: p.config.assets.virtiofsd.clone(),
        share: p.config.share.clone(),
        bounding_caps: p.config.bounding_caps.clone(),
        member: MemberSpec {
            process: process.clone(),
            readonly: rootfs.readonly,
            // A shared UTS namespace has the sandbox's hostname (the guest refuses another).
            hostname: hostname.clone().filter(|_| !share.uts),
            linux: linux.clone(),
            mounts: mounts.clone(),
            share,
        },
    })
}

/// Where `exec` of the container of `state` goes: the runtime directory of the monitor
/// to ask and the container's id in that VM.
pub fn exec_target(root: &Path, state: &ContainerState) -> Result<(std::path::PathBuf, u32)> {
    let own = ContainerState::runtime_dir(root, &state.id);
    let Some(sandbox) = &state.sandbox else {
        return Ok((own, MAIN_CONTAINER));
    };
    match MemberRecord::load(&ContainerState::dir(root, &state.id)) {
        Some(record) if &record.sandbox == sandbox => {
            Ok((sandbox_runtime_dir(root, sandbox), record.container))
        }
        _ => bail!(
            "container {:?} is not running yet (it has not joined the VM of container {sandbox:?})",
            state.id
        ),
    }
}

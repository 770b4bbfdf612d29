//! A container's persisted state (`<root>/<id>/state.json`) and its status, which is
//! derived from whether the monitor process is alive and whether the process started.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host_process;
use crate::status::ContainerStatus;

/// The OCI runtime-spec version runvm reports (in `state`, in hooks' stdin).
pub const OCI_VERSION: &str = oci_spec::runtime::VERSION;

/// File names inside a container's state directory.
pub const STATE_FILE: &str = "state.json";
/// Written by the monitor once the container's process runs.
pub const STARTED_FILE: &str = "started";
/// Made by the monitor when the guest reports the end of the container's process: the
/// container is stopped from then on (as under runc, where that is the init's exit),
/// while the monitor may still finish the write-back and power the VM off.
pub const EXITED_FILE: &str = "exited";
/// Written by the monitor when the container's process has exited: its exit code.
pub const EXIT_FILE: &str = "exit";
/// Present while the monitor holds the VM's vCPUs paused (`runvm pause`).
pub const PAUSED_FILE: &str = "paused";

/// Errors reading or writing state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("cannot read the state of container {id:?} in {path}: {source}")]
    Read {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the state of container {id:?} in {path}: {source}")]
    Parse {
        id: String,
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the state of container {id:?} in {path}: {source}")]
    Write {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What runvm remembers about a container between commands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// The monitor: the pid in `--pid-file` and in `state`.
    pub pid: i32,
    /// The monitor's start time (field 22 of /proc/<pid>/stat), so a reused pid is not
    /// taken for the monitor.
    pub pid_start_time: u64,
    /// RFC 3339.
    pub created: String,
    #[serde(default)]
    pub annotations: std::collections::HashMap<String, String>,
    /// The container whose VM this one runs in (a member container: see
    /// [`crate::container::member`]); `None` for a container with a VM of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// config.json's hooks as they were at create (later edits of it do not count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<oci_spec::runtime::Hooks>,
}

impl ContainerState {
    pub fn dir(root: &Path, id: &str) -> PathBuf {
        root.join(id)
    }

    /// The monitor's runtime files (vsock sockets, `monitor.sock`, the rootfs image),
    /// which its cleanup guard removes if the monitor dies.
    pub fn runtime_dir(root: &Path, id: &str) -> PathBuf {
        Self::dir(root, id).join("run")
    }

    /// The state of every container in the state root `root` (those that can be read).
    pub fn all(root: &Path) -> impl Iterator<Item = Self> + '_ {
        std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(move |e| Self::load(root, &e.file_name().to_string_lossy()).ok())
    }

    pub fn load(root: &Path, id: &str) -> Result<Self, StateError> {
        let dir = Self::dir(root, id);
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.into()))
            }
            Err(source) => {
                return Err(StateError::Read {
                    id: id.into(),
                    path,
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|source| StateError::Parse {
            id: id.into(),
            path,
            source,
        })
    }

    /// Writes state.json atomically.
    pub fn save(&self, root: &Path) -> Result<(), StateError> {
        let dir = Self::dir(root, &self.id);
        let err = |source| StateError::Write {
            id: self.id.clone(),
            path: dir.clone(),
            source,
        };
        let tmp = dir.join(".state.json.tmp");
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        std::fs::write(&tmp, json).map_err(err)?;
        std::fs::rename(&tmp, dir.join(STATE_FILE)).map_err(err)
    }

    /// Whether the monitor still runs (a zombie, exited but not yet reaped by its
    /// parent, does not).
    pub fn monitor_alive(&self) -> bool {
        matches!(host_process::stat(self.pid), Some((state, t)) if t == self.pid_start_time && state != 'Z')
    }

    pub fn status(&self, root: &Path) -> ContainerStatus {
        let dir = Self::dir(root, &self.id);
        if !self.monitor_alive() || dir.join(EXITED_FILE).exists() {
            ContainerStatus::Stopped
        } else if dir.join(PAUSED_FILE).exists() {
            ContainerStatus::Paused
        } else if dir.join(STARTED_FILE).exists() {
            ContainerStatus::Running
        } else {
            ContainerStatus::Created
        }
    }

    /// The pid `state` and `list` show: the monitor's, 0 once the container stopped.
    pub fn visible_pid(&self, status: ContainerStatus) -> i32 {
        if status.has_pid() {
            self.pid
        } else {
            0
        }
    }

    /// The OCI state document (`runvm state`, `list --format json`), with runc's keys in
    /// runc's order.
    pub fn oci_state(&self, root: &Path) -> OciState<'_> {
        let status = self.status(root);
        OciState {
            oci_version: OCI_VERSION,
            id: &self.id,
            pid: self.visible_pid(status),
            status: status.as_str(),
            bundle: &self.bundle,
            rootfs: &self.rootfs,
            created: &self.created,
            annotations: self
                .annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            owner: "",
        }
    }
}

/// What `state` prints: runc's `containerState`, field for field and in its order.
#[derive(Debug, serde::Serialize)]
pub struct OciState<'a> {
    #[serde(rename = "ociVersion")]
    pub oci_version: &'a str,
    pub id: &'a str,
    pub pid: i32,
    pub status: &'a str,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub created: &'a str,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<&'a str, &'a str>,
    pub owner: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exited_unreaped_monitor_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let state = ContainerState {
            id: "z".into(),
            bundle: "/".into(),
            rootfs: "/".into(),
            pid,
            pid_start_time: host_process::start_time(pid).unwrap(),
            created: String::new(),
            annotations: Default::default(),
            hooks: None,
            sandbox: None,
        };
        // It exits, and stays a zombie until it is reaped below.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while host_process::stat(pid).is_some_and(|(s, _)| s != 'Z')
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(host_process::stat(pid).map(|(s, _)| s), Some('Z'));
        assert!(!state.monitor_alive());
        child.wait().unwrap();
    }
}

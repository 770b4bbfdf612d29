//! Containers: OCI semantics on top of the monitor, one file per operation.

pub mod run;

use std::path::PathBuf;

/// Default state root, like runc's `/run/runc`.
pub const DEFAULT_ROOT: &str = "/run/runvm";

/// Where a container's state and runtime files live: `<root>/<id>`.
pub fn state_dir(root: &Option<PathBuf>, id: &str) -> PathBuf {
    root.clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
        .join(id)
}

/// Writes `pid` to `path` atomically (a temporary file in the same directory, then a
/// rename), as runc does, so a reader never sees a partial pid.
pub fn write_pid_file(path: &std::path::Path, pid: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("pid file path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, pid.to_string())?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

//! Turns a root filesystem directory into an EROFS image the guest mounts read-only.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors building the root filesystem image.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot run mkfs.erofs (install the erofs-utils package): {0}")]
    Spawn(std::io::Error),
    #[error("mkfs.erofs failed on {dir} with {status}: {stderr}")]
    Mkfs {
        dir: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Writes an EROFS image of `dir` to `image`.
pub fn build_erofs(dir: &Path, image: &Path) -> Result<(), RootfsError> {
    let out = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(image)
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(RootfsError::Spawn)?;
    if !out.status.success() {
        return Err(RootfsError::Mkfs {
            dir: dir.to_path_buf(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

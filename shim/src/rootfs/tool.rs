//! Running the file system tools (`mkfs.erofs`, `mkfs.ext4`): no stdin, and on failure
//! their exit status and stderr for the error.

use std::process::{Command, ExitStatus, Stdio};

/// A tool that ran and failed.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {stderr}")]
pub struct ToolFailed {
    pub status: ExitStatus,
    /// What it wrote to stderr, trimmed.
    pub stderr: String,
}

/// Runs `cmd` to its end. The outer error: it could not be started; the inner one: it
/// failed.
pub fn run(cmd: &mut Command) -> std::io::Result<Result<(), ToolFailed>> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        return Ok(Ok(()));
    }
    Ok(Err(ToolFailed {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }))
}

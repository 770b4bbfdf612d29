//! The runvm command line, as the shim runs it (as containerd's runc shim runs runc).
//!
//! The shim is the subreaper of everything it starts, and the crate's signal thread reaps
//! every child the moment it exits, so a command's exit status is taken from the crate's
//! exit monitor (subscribed before the spawn), never from `wait`.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use containerd_shim::monitor::Topic;
use containerd_shim::synchronous::monitor::{monitor_subscribe, wait_pid, Subscription};

/// Why a runvm command failed.
#[derive(Debug, thiserror::Error)]
pub enum RunvmError {
    #[error("cannot start {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch for the exit of runvm: {0}")]
    Monitor(String),
    #[error("runvm {verb} failed (exit status {code}): {message}")]
    Failed {
        verb: String,
        code: i32,
        message: String,
    },
}

/// The stdio of a container's process, handed to `runvm create` or `runvm exec`.
pub struct ProcessStdio {
    pub stdin: File,
    pub stdout: File,
    pub stderr: File,
}

/// The runvm binary and the state root of one containerd namespace.
pub struct Runvm {
    bin: PathBuf,
    root: PathBuf,
}

impl Runvm {
    /// runvm next to this shim (as the two are installed), else the one on `PATH`; its
    /// state under `/run/containerd/runvm/<namespace>` (runc's is `…/runc/<namespace>`).
    pub fn new(namespace: &str) -> Self {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("runvm")))
            .filter(|p| p.is_file());
        Self {
            bin: beside.unwrap_or_else(|| PathBuf::from("runvm")),
            root: Path::new("/run/containerd/runvm").join(namespace),
        }
    }

    /// Runs `runvm --root R ARGS…` with its own output captured (and `input` on its
    /// stdin); its stdout, or its error.
    pub fn run(&self, args: &[&str], input: Option<&[u8]>) -> Result<String, RunvmError> {
        let mut cmd = self.command(args);
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let (mut child, subscription) = self.spawn(&mut cmd)?;
        if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
            use std::io::Write;
            let _ = stdin.write_all(input);
        }
        let mut err_pipe = child.stderr.take();
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(e) = err_pipe.as_mut() {
                let _ = e.read_to_string(&mut s);
            }
            s
        });
        let mut out = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        let err = err_reader.join().unwrap_or_default();
        let code = wait_pid(child.id() as i32, subscription);
        if code != 0 {
            return Err(failed(args, code, err.trim()));
        }
        Ok(out)
    }

    /// Runs `runvm --root R --log L --log-format json ARGS…` with a container process's
    /// `stdio` (`create`, `exec`): its errors are read from the log, as its stderr is the
    /// container's.
    pub fn run_with_stdio(
        &self,
        args: &[&str],
        stdio: ProcessStdio,
        log: &Path,
    ) -> Result<(), RunvmError> {
        let _ = std::fs::remove_file(log);
        let log_arg = log.display().to_string();
        let mut full = vec!["--log", log_arg.as_str(), "--log-format", "json"];
        full.extend_from_slice(args);
        let mut cmd = self.command(&full);
        cmd.stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        let (child, subscription) = self.spawn(&mut cmd)?;
        let code = wait_pid(child.id() as i32, subscription);
        if code != 0 {
            return Err(failed(args, code, &log_errors(log)));
        }
        Ok(())
    }

    /// Starts `cmd`, watched by a subscription to the crate's exit monitor taken before
    /// the spawn (so that its exit cannot be reaped unseen).
    fn spawn(&self, cmd: &mut Command) -> Result<(Child, Subscription), RunvmError> {
        let subscription =
            monitor_subscribe(Topic::Pid).map_err(|e| RunvmError::Monitor(e.to_string()))?;
        let child = cmd.spawn().map_err(|source| RunvmError::Spawn {
            bin: self.bin.clone(),
            source,
        })?;
        Ok((child, subscription))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root").arg(&self.root).args(args);
        cmd
    }
}

fn failed(args: &[&str], code: i32, message: &str) -> RunvmError {
    let verb = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .unwrap_or(&"")
        .to_string();
    let message = if message.is_empty() {
        "(no message)".to_string()
    } else {
        message.to_string()
    };
    RunvmError::Failed {
        verb,
        code,
        message,
    }
}

/// The `msg` of every error-level line of a JSON log, joined.
fn log_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error" || v["level"] == "fatal")
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_errors_of_a_json_log_are_its_message() {
        let dir = std::env::temp_dir().join(format!("runvm-shim-log-{}", std::process::id()));
        std::fs::write(
            &dir,
            "{\"level\":\"debug\",\"msg\":\"x\"}\nnot json\n{\"level\":\"error\",\"msg\":\"bad config\"}\n",
        )
        .unwrap();
        assert_eq!(log_errors(&dir), "bad config");
        let _ = std::fs::remove_file(&dir);
        let e = failed(&["--log", "create", "--bundle"], 1, "");
        assert_eq!(
            e.to_string(),
            "runvm create failed (exit status 1): (no message)"
        );
    }
}

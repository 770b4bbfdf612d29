//! `kill`: delivers a signal to the container's process (through its monitor).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Result};
use nix::sys::signal::Signal;

use crate::monitor::api::{self, Request, Response};
use crate::state::ContainerState;

/// Parses a signal the way runc does: a number (0, as kill(2)'s, only checks that the
/// container's process is there), or a name with or without `SIG`.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (0..=64).contains(&n) {
            return Ok(n);
        }
        bail!("invalid signal {s:?}");
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name)
        .map(|sig| sig as i32)
        .map_err(|_| anyhow::anyhow!("invalid signal {s:?}"))
}

/// `--all` needs nothing more: every process of the container lives in its PID namespace
/// in the VM, which goes with its PID 1.
pub fn kill(root: &Path, args: &liboci_cli::Kill) -> Result<i32> {
    let id = &args.container_id;
    let signal = parse_signal(&args.signal)?;
    let state = super::load(root, id)?;
    let status = state.status(root);
    if args.all && status == crate::status::ContainerStatus::Stopped {
        // runc: `kill --all` of a stopped container has no process left to signal.
        return Ok(0);
    }
    status.can_kill()?;
    if signal == 0 {
        // The container's process is there (its monitor is: the status says so).
        return Ok(0);
    }
    let dir = ContainerState::runtime_dir(root, id);
    match api::request(&dir, &Request::Signal { signal }, Duration::from_secs(10))? {
        Response::Ok => Ok(0),
        Response::Error(e) => bail!("cannot signal container {id:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_like_runc() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("term").unwrap(), 15);
        assert!(parse_signal("SIGNOPE").is_err());
        assert_eq!(parse_signal("0").unwrap(), 0);
        assert!(parse_signal("-1").is_err());
        assert!(parse_signal("65").is_err());
        assert!(parse_signal("").is_err());
    }
}

//! Reaping init's children: every one that exited, collected without blocking, with its
//! wait status in the protocol's terms.

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use runvm_protocol::ExitStatus;

/// A child that ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reaped {
    pub pid: Pid,
    pub status: ExitStatus,
}

/// Reaps every exited child (stops and continues are not ends).
pub fn reap_exited() -> Vec<Reaped> {
    let mut found = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return found,
            Ok(ws) => {
                if let (Some(pid), Some(status)) = (ws.pid(), exit_status(ws)) {
                    found.push(Reaped { pid, status });
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                crate::log::error(&format!("waitpid: {e}"));
                return found;
            }
        }
    }
}

/// Maps a `waitpid` result to the protocol's exit status (`None` for stops/continues).
fn exit_status(ws: WaitStatus) -> Option<ExitStatus> {
    match ws {
        WaitStatus::Exited(_, code) => Some(ExitStatus::Exited(code)),
        WaitStatus::Signaled(_, sig, _) => Some(ExitStatus::Signaled(sig as i32)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn wait_statuses_map_to_exit_statuses() {
        let pid = Pid::from_raw(5);
        assert_eq!(
            exit_status(WaitStatus::Exited(pid, 42)),
            Some(ExitStatus::Exited(42))
        );
        assert_eq!(
            exit_status(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(ExitStatus::Signaled(9))
        );
        assert_eq!(exit_status(WaitStatus::StillAlive), None);
    }
}

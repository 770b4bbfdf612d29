//! Init's helper processes (the DNS forwarder, the socket relays): forked from init
//! while it is still single-threaded and before the workload, so they live in the
//! guest's root PID namespace (the container's `ps` never sees them) and may run threads
//! of their own. Init itself must stay single-threaded: it starts the container's
//! processes with a raw `clone` whose child allocates.

use crate::error::{Context, Result};
use std::ffi::CStr;
use std::os::fd::RawFd;

/// Forks a helper named `name` that keeps only stdio and `keep` of init's descriptors
/// and runs `serve` (which serves for ever); returns its pid. The helper dies with init.
pub fn fork(name: &CStr, keep: &[RawFd], serve: impl FnOnce()) -> Result<nix::unistd::Pid> {
    let parent = nix::unistd::getpid();
    // SAFETY: init is single-threaded here (see the module comment); the child only runs
    // `serve` and never returns into init's code.
    match unsafe { nix::unistd::fork() }.with_context(|| format!("fork {name:?}"))? {
        nix::unistd::ForkResult::Parent { child } => Ok(child),
        nix::unistd::ForkResult::Child => {
            // SAFETY: prctl(PR_SET_NAME) reads a NUL-terminated name; PR_SET_PDEATHSIG
            // takes a signal number.
            unsafe {
                libc::prctl(libc::PR_SET_NAME, name.as_ptr());
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            // Init may have gone between the fork and the prctl (host test mode only).
            if nix::unistd::getppid() != parent {
                std::process::exit(0);
            }
            close_other_fds(keep);
            serve();
            // `serve` serves for ever; should it return, the helper ends.
            std::process::exit(1)
        }
    }
}

/// Closes every descriptor but stdio and `keep` (init's control connection and streams
/// must not stay open in a helper).
fn close_other_fds(keep: &[RawFd]) {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing descriptors this fresh process inherited and will not use.
            unsafe { libc::close(fd) };
        }
    }
}

//! Signals in the guest init.
//!
//! - Init blocks SIGCHLD and reads it from a signalfd ([`block_sigchld`]); every child
//!   starts from a clean signal state again ([`reset_in_child`]).
//! - The host's signals are forwarded as they are ([`send`]): any number, real-time ones
//!   included.
//! - PID 1 rules: the container's main process is PID 1 of its own PID namespace, so the
//!   kernel drops every signal it has no handler for, except SIGKILL and SIGSTOP sent from
//!   outside the namespace (by init) — exactly as under runc. Init adds no rule of its own.
//! - Killing the PID namespace ([`kill_pid_namespace`]): SIGKILL to its PID 1; the kernel
//!   then kills every other process in it, exec'd ones included.

use crate::error::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

/// Blocks SIGCHLD and returns a (non-blocking) signalfd that reads it.
pub fn block_sigchld() -> Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).context("block SIGCHLD")?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).context("signalfd")
}

/// Reads every pending SIGCHLD off `sigchld` (what exited is found by reaping).
pub fn drain(sigchld: &SignalFd) {
    while let Ok(Some(_)) = sigchld.read_signal() {}
}

/// In a child of init: init blocks SIGCHLD (for its signalfd) and ignores SIGPIPE; both
/// survive `execve`, so every child empties its mask and sets every handler to the default.
pub fn reset_in_child() -> Result<()> {
    signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .context("reset the signal mask")?;
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL runs no code of ours in signal context.
            let _ = unsafe { signal::signal(sig, signal::SigHandler::SigDfl) };
        }
    }
    Ok(())
}

/// `kill(pid, signal)` for any signal number, real-time signals included; a failure is
/// logged (the process may just have exited).
pub fn send(pid: Pid, signal: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory. nix's `kill` only accepts
    // its `Signal` enum, which has no real-time signals.
    let rc = unsafe { libc::kill(pid.as_raw(), signal) };
    if rc != 0 {
        crate::log::error(&format!("kill({pid}, {signal}): {}", Errno::last()));
    }
}

/// SIGKILL to one process.
pub fn kill(pid: Pid) {
    send(pid, libc::SIGKILL);
}

/// Ends the PID namespace whose PID 1 is `namespace_init` (as init sees its pid), and with
/// it every process in it.
pub fn kill_pid_namespace(namespace_init: Pid) {
    kill(namespace_init);
}

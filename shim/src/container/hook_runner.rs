//! The hooks a foreground `run` runs once its container has started (poststart, and
//! poststop at the end), in a small process of their own.
//!
//! A foreground `run` is the container's monitor, and the monitor drops its privileges
//! before the guest boots ([`crate::monitor::privileges`]); hooks run as runc runs them,
//! with runvm's privileges and in runvm's own network namespace (entering it takes
//! `CAP_SYS_ADMIN`). So `run` forks this runner before the drop: it keeps the privileges,
//! never reads anything the guest wrote, and runs the hooks when asked over a pipe: a
//! byte for poststart, EOF (the monitor is done, or died) for poststop, after which it
//! exits.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use crate::hooks::{Container, HookKind};

/// The runner, as the monitor holds it.
pub struct HookRunner {
    /// The request pipe; closing it asks for poststop.
    requests: Mutex<Option<OwnedFd>>,
    pid: libc::pid_t,
}

impl HookRunner {
    /// Forks the runner of `container`'s hooks, which they see with the monitor's `pid`;
    /// it closes its copies of `close` (the monitor's own sockets). Must be called while
    /// the process has a single thread.
    pub fn spawn(container: &Container, pid: i32, close: &[RawFd]) -> std::io::Result<Self> {
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // SAFETY: the caller guarantees the process is single-threaded, so the child may
        // run ordinary Rust code; it never returns into the caller's code.
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                drop(write_end);
                super::restore_caller_umask();
                for fd in close {
                    // SAFETY: closes this new process's copy of a descriptor its parent
                    // keeps; nothing in the runner uses it.
                    unsafe { libc::close(*fd) };
                }
                runner_main(read_end, container, pid)
            }
            child => Ok(Self {
                requests: Mutex::new(Some(write_end)),
                pid: child,
            }),
        }
    }

    /// Has the runner run the poststart hooks; does not wait for them.
    pub fn poststart(&self) {
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = requests.as_ref() {
            // SAFETY: writes one byte from a literal to a pipe this process owns.
            if unsafe { libc::write(fd.as_raw_fd(), b"s".as_ptr().cast(), 1) } != 1 {
                log::warn!(
                    "cannot run the poststart hooks: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }

    /// Has the runner run the poststop hooks (after any poststart ones) and waits until
    /// it has ended.
    pub fn poststop(&self) {
        let taken = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if taken.is_none() {
            return;
        }
        drop(taken);
        let mut status = 0;
        // SAFETY: waits for this process's own child, into a local.
        while unsafe { libc::waitpid(self.pid, &mut status, 0) } < 0 {
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break;
            }
        }
    }
}

impl Drop for HookRunner {
    fn drop(&mut self) {
        self.poststop();
    }
}

fn runner_main(requests: OwnedFd, container: &Container, pid: i32) -> ! {
    // SAFETY: plain syscalls on this new process's name and signal dispositions.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"runvm-hooks".as_ptr());
        // The terminal's signals are the monitor's to pass on to the container.
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    // The guard must see its pipe close when the monitor ends, not when this does.
    crate::monitor::guard::close_in_child();
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reads one byte into a local buffer from this process's own pipe.
        match unsafe { libc::read(requests.as_raw_fd(), b.as_mut_ptr().cast(), 1) } {
            1 => container.run_warn(HookKind::Poststart, "running", pid),
            0 => break,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    container.run_warn(HookKind::Poststop, "stopped", 0);
    // SAFETY: ends this process without running the parent's atexit handlers.
    unsafe { libc::_exit(0) }
}

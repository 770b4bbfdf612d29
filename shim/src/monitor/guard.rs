//! The cleanup guard: a tiny child process that removes a container's runtime files
//! (sockets, images) when the monitor goes away, however it goes, SIGKILL included, and
//! does on the monitor's request the privileged undoing the monitor can no longer do
//! itself once it has dropped its privileges ([`super::privileges`]).
//!
//! It is forked before the monitor starts any thread and before the drop, so it keeps
//! the monitor's privileges and namespaces; it holds nothing but the read end of a pipe
//! whose write end only the monitor has, and the write end of a pipe back. Each byte it
//! reads is a request ([`Undo`]): it runs its `undo_now` action for it and answers with a
//! byte. When that read returns EOF (the monitor dropped its [`CleanupGuard`] or died) it
//! runs its `cleanup` and removes the directory. It never reads anything the guest wrote.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Errors starting the guard or asking it to act.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("cannot create the cleanup guard's pipe: {0}")]
    Pipe(std::io::Error),
    #[error("cannot fork the cleanup guard: {0}")]
    Fork(std::io::Error),
    #[error("this process has no cleanup guard to ask")]
    NoGuard,
    #[error("cannot ask the cleanup guard to act: {0}")]
    Request(#[source] std::io::Error),
    #[error("the cleanup guard did not answer within {0:?}")]
    NoAnswer(Duration),
}

/// What the monitor asks its guard to undo now, with the privileges the guard kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// The network plumbing (the VM has stopped).
    Network,
    /// The container's cgroup, the monitor (waiting for the answer) moved out of it
    /// first: the container has ended.
    Cgroup,
}

impl Undo {
    /// The request's byte on the pipe.
    fn byte(self) -> u8 {
        match self {
            Undo::Network => b'u',
            Undo::Cgroup => b'c',
        }
    }

    fn of(byte: u8) -> Option<Self> {
        [Undo::Network, Undo::Cgroup]
            .into_iter()
            .find(|u| u.byte() == byte)
    }
}

/// The monitor's ends of the pipes to its guard (one guard per monitor process).
struct Channel {
    /// Requests; closing it (the only copy) tells the guard to clean up.
    requests: OwnedFd,
    /// The guard's answers.
    answers: OwnedFd,
}

/// The channel of this process's guard, while its [`CleanupGuard`] lives. Kept here, not
/// in the handle, so that what the monitor sets up (its network plumbing) can ask the
/// guard to undo it without a handle passed down to it.
static CHANNEL: Mutex<Option<Channel>> = Mutex::new(None);

/// Held by the monitor; dropping it (or the monitor dying) makes the guard clean up.
pub struct CleanupGuard {
    _private: (),
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        // Closes the request pipe: the guard sees EOF.
        CHANNEL.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Forks the guard for `dir`, which runs `undo_now` (in the guard, so in the namespaces
/// and with the privileges the monitor had when it forked) with what [`request_undo`]
/// asks for, whenever it asks, and `cleanup` before removing `dir` once the monitor is
/// gone. Must be called while the process has a single thread.
pub fn spawn_with(
    dir: &Path,
    undo_now: impl FnMut(Undo),
    cleanup: impl FnOnce(),
) -> Result<CleanupGuard, GuardError> {
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| GuardError::Pipe(e.into()));
    let (read_end, write_end) = pipe()?;
    let (answers, answer_end) = pipe()?;
    let dir: PathBuf = dir.to_path_buf();
    // SAFETY: the caller guarantees the process is single-threaded, so the child may
    // run ordinary Rust code; it never returns into the caller's code.
    match unsafe { libc::fork() } {
        -1 => Err(GuardError::Fork(std::io::Error::last_os_error())),
        0 => {
            drop(write_end);
            drop(answers);
            guard_main(
                read_end.as_raw_fd(),
                answer_end.as_raw_fd(),
                &dir,
                undo_now,
                cleanup,
            )
        }
        _ => {
            *CHANNEL.lock().unwrap_or_else(|e| e.into_inner()) = Some(Channel {
                requests: write_end,
                answers,
            });
            Ok(CleanupGuard { _private: () })
        }
    }
}

/// Asks this process's guard to undo `what` now and waits up to `timeout` for it to be
/// done.
pub fn request_undo(what: Undo, timeout: Duration) -> Result<(), GuardError> {
    let channel = CHANNEL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = channel.as_ref() else {
        return Err(GuardError::NoGuard);
    };
    let byte = [what.byte()];
    // SAFETY: writes one byte from a local array to a pipe this process owns.
    if unsafe { libc::write(c.requests.as_raw_fd(), byte.as_ptr().cast(), 1) } != 1 {
        return Err(GuardError::Request(std::io::Error::last_os_error()));
    }
    let mut pfd = libc::pollfd {
        fd: c.answers.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll on one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            break;
        }
        if r == 0 {
            return Err(GuardError::NoAnswer(timeout));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(GuardError::Request(e));
        }
    }
    let mut b = [0u8; 1];
    // SAFETY: reads one byte into a local buffer from a pipe this process owns.
    match unsafe { libc::read(c.answers.as_raw_fd(), b.as_mut_ptr().cast(), 1) } {
        1 => Ok(()),
        0 => Err(GuardError::Request(std::io::Error::from(
            std::io::ErrorKind::UnexpectedEof,
        ))),
        _ => Err(GuardError::Request(std::io::Error::last_os_error())),
    }
}

fn guard_main(
    requests: i32,
    answers: i32,
    dir: &Path,
    mut undo_now: impl FnMut(Undo),
    cleanup: impl FnOnce(),
) -> ! {
    // SAFETY: plain syscalls on descriptors and signal dispositions of this new process.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"runvm-guard".as_ptr());
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // Hold no stdio: a guard must never keep a caller's pipe open.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(3, 65536) as i32;
        for fd in 3..max {
            if fd != requests && fd != answers {
                libc::close(fd);
            }
        }
    }
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reads one byte into a local buffer from this process's own pipe.
        match unsafe { libc::read(requests, b.as_mut_ptr().cast(), 1) } {
            0 => break,
            1 => {
                if let Some(what) = Undo::of(b[0]) {
                    undo_now(what);
                }
                // SAFETY: writes one byte from a literal to this process's own pipe
                // (SIGPIPE is ignored: a monitor gone meanwhile is an EPIPE).
                unsafe { libc::write(answers, b"d".as_ptr().cast(), 1) };
            }
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    cleanup();
    let _ = std::fs::remove_dir_all(dir);
    // SAFETY: ends this process without running the parent's atexit handlers.
    unsafe { libc::_exit(0) }
}

/// In a process forked from a monitor (not the guard): closes its copies of the pipes to
/// the guard, so that the guard still cleans up when the monitor ends.
pub fn close_in_child() {
    CHANNEL.lock().unwrap_or_else(|e| e.into_inner()).take();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_request_has_a_byte_of_its_own_and_others_are_none() {
        for what in [Undo::Network, Undo::Cgroup] {
            assert_eq!(Undo::of(what.byte()), Some(what));
        }
        assert_ne!(Undo::Network.byte(), Undo::Cgroup.byte());
        assert_eq!(Undo::of(b'x'), None);
    }
}

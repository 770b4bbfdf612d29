//! The cleanup guard: a tiny child process that removes a container's runtime files
//! (sockets, images) when the monitor goes away, however it goes, SIGKILL included.
//!
//! It is forked before the monitor starts any thread, holds nothing but the read end of
//! a pipe whose write end only the monitor has, and acts when that read returns EOF.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Errors starting the guard.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("cannot create the cleanup guard's pipe: {0}")]
    Pipe(std::io::Error),
    #[error("cannot fork the cleanup guard: {0}")]
    Fork(std::io::Error),
}

/// Held by the monitor; dropping it (or the monitor dying) makes the guard clean up.
pub struct CleanupGuard {
    _write_end: OwnedFd,
}

/// Forks the guard for `dir`, which runs `cleanup` (in the guard, so in the namespaces the
/// monitor had when it forked) before removing `dir`. Must be called while the process
/// has a single thread.
pub fn spawn_with(dir: &Path, cleanup: impl FnOnce()) -> Result<CleanupGuard, GuardError> {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| GuardError::Pipe(e.into()))?;
    let dir: PathBuf = dir.to_path_buf();
    // SAFETY: the caller guarantees the process is single-threaded, so the child may
    // run ordinary Rust code; it never returns into the caller's code.
    match unsafe { libc::fork() } {
        -1 => Err(GuardError::Fork(std::io::Error::last_os_error())),
        0 => {
            drop(write_end);
            guard_main(read_end.as_raw_fd(), &dir, cleanup)
        }
        _ => Ok(CleanupGuard {
            _write_end: write_end,
        }),
    }
}

fn guard_main(pipe: i32, dir: &Path, cleanup: impl FnOnce()) -> ! {
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
            if fd != pipe {
                libc::close(fd);
            }
        }
        let mut b = [0u8; 1];
        while libc::read(pipe, b.as_mut_ptr().cast(), 1) != 0 {
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
    }
    cleanup();
    let _ = std::fs::remove_dir_all(dir);
    // SAFETY: ends this process without running the parent's atexit handlers.
    unsafe { libc::_exit(0) }
}

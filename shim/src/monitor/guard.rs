//! The cleanup guard: a tiny child process that removes a container's runtime files
//! (sockets, images) when the monitor goes away, however it goes, SIGKILL included, and
//! does on the monitor's request the privileged undoing the monitor can no longer do
//! itself once it has dropped its privileges ([`super::privileges`]).
//!
//! It is forked before the monitor starts any thread and before the drop, so it keeps
//! the monitor's privileges and namespaces; it holds nothing but one end of a socket
//! pair whose other end only the monitor has, and the write end of a pipe back. Each
//! message it reads is a request, answered with a byte: a plain one runs its `undo_now`
//! action; one that carries descriptors ([`keep_until_gone`]: the VM's) makes it hold
//! them until the monitor is gone. When that read returns EOF (the monitor dropped its
//! [`CleanupGuard`] or died) it closes what it held, runs its `cleanup`, removes the
//! directory and exits. It never reads anything the guest wrote.
//!
//! Why it holds the VM: the kernel tears a KVM VM down when its last descriptor closes,
//! and on an emulated CPU that takes up to a second (the TDP MMU's `rcu_barrier`, which
//! the kernel runs one VM at a time). Closed by the monitor, it would run in the
//! monitor's exit, before its parent (containerd's shim, Docker) learns that the
//! container ended; held by the guard, it runs after.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
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

/// The monitor's ends of the channel to its guard (one guard per monitor process).
struct Channel {
    /// Requests (a `SOCK_SEQPACKET` socket, which carries descriptors); closing it (the
    /// only copy) tells the guard to clean up.
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
/// and with the privileges the monitor had when it forked) whenever [`request_undo`] asks,
/// and `cleanup` before removing `dir` once the monitor is gone. Must be called while the
/// process has a single thread.
pub fn spawn_with(
    dir: &Path,
    undo_now: impl FnMut(),
    cleanup: impl FnOnce(),
) -> Result<CleanupGuard, GuardError> {
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| GuardError::Pipe(e.into()));
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (read_end, write_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| GuardError::Pipe(e.into()))?;
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

/// Asks this process's guard to run its `undo_now` action and waits up to `timeout` for
/// it to be done.
pub fn request_undo(timeout: Duration) -> Result<(), GuardError> {
    ask(&[], timeout)
}

/// Hands `fds` (the VM's descriptor) to this process's guard, which holds them until the
/// monitor is gone, and waits up to `timeout` for it to have them.
pub fn keep_until_gone(fds: &[BorrowedFd<'_>], timeout: Duration) -> Result<(), GuardError> {
    ask(fds, timeout)
}

/// Sends the guard one request (with `fds`, if any) and waits up to `timeout` for its
/// answer.
fn ask(fds: &[BorrowedFd<'_>], timeout: Duration) -> Result<(), GuardError> {
    let channel = CHANNEL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(c) = channel.as_ref() else {
        return Err(GuardError::NoGuard);
    };
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    if raw.is_empty() {
        // SAFETY: writes one byte from a literal to a socket this process owns.
        if unsafe { libc::write(c.requests.as_raw_fd(), b"u".as_ptr().cast(), 1) } != 1 {
            return Err(GuardError::Request(std::io::Error::last_os_error()));
        }
    } else {
        crate::scm::send_fds(c.requests.as_fd(), b"k", &raw)
            .map_err(|e| GuardError::Request(std::io::Error::other(e)))?;
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
    mut undo_now: impl FnMut(),
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
    // SAFETY: `requests` is this process's own socket, open for its whole life.
    let socket = unsafe { BorrowedFd::borrow_raw(requests) };
    // What the monitor handed over to hold until it is gone (the VM's descriptor).
    let mut held: Vec<OwnedFd> = Vec::new();
    loop {
        match crate::scm::recv_message(socket) {
            Ok((fds, _)) if !fds.is_empty() => held.extend(fds),
            Ok(_) => undo_now(),
            // EOF: the monitor is gone (or dropped its guard).
            Err(crate::scm::ScmError::Closed) => break,
            Err(_) => break,
        }
        // SAFETY: writes one byte from a literal to this process's own pipe (SIGPIPE is
        // ignored: a monitor gone meanwhile is an EPIPE).
        unsafe { libc::write(answers, b"d".as_ptr().cast(), 1) };
    }
    // First the VM's teardown (the monitor's parent has been told already): KVM's
    // per-VM kernel thread sits in the container's cgroup until then, and `cleanup`
    // removes that cgroup.
    drop(held);
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

//! Byte relays between host descriptors (the caller's pipes, FIFOs, files or terminal)
//! and the guest's stream connections, one thread per direction: host descriptors are
//! used blocking, as they are (the monitor never changes the caller's file flags).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::EventFd;

/// A running output relay.
pub struct OutputRelay {
    handle: JoinHandle<u64>,
    /// Set (before `done` fires) once the stream ended and `out` is closed.
    finished: Arc<AtomicBool>,
}

impl OutputRelay {
    /// The guest closed the stream and everything was written (or dropped).
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Waits for the thread (it is about to return once [`Self::finished`]).
    pub fn join(self) -> u64 {
        self.handle.join().unwrap_or(0)
    }
}

/// Copies the guest stream to `out` until the guest closes it, then closes `out` and
/// fires `done`. If the host side stops accepting data, the rest is read and dropped so
/// the guest never blocks.
pub fn spawn_output(
    mut stream: UnixStream,
    mut out: File,
    done: EventFd,
) -> std::io::Result<OutputRelay> {
    let finished = Arc::new(AtomicBool::new(false));
    let flag = finished.clone();
    let handle = std::thread::Builder::new()
        .name("runvm-out".into())
        .spawn(move || {
            vmm::seccomp::enter(vmm::seccomp::ThreadKind::StdioRelay);
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            let mut host_open = true;
            loop {
                let n = match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                total += n as u64;
                if host_open && out.write_all(&buf[..n]).is_err() {
                    host_open = false;
                }
            }
            drop(out);
            // The flag first: whoever wakes on `done` must see it set.
            flag.store(true, Ordering::Release);
            let _ = done.write(1);
            total
        })?;
    Ok(OutputRelay { handle, finished })
}

/// A running input relay; [`InputRelay::cancel`] ends it (and closes its descriptor)
/// even while the host side never sends anything.
pub struct InputRelay {
    cancel: EventFd,
}

impl InputRelay {
    pub fn cancel(&self) {
        let _ = self.cancel.write(1);
    }
}

/// Copies `input` to the guest stream; EOF on the host becomes EOF in the guest.
pub fn spawn_input(input: File, stream: UnixStream) -> std::io::Result<InputRelay> {
    let cancel = EventFd::new(libc::EFD_CLOEXEC)?;
    let theirs = cancel.try_clone()?;
    std::thread::Builder::new()
        .name("runvm-stdin".into())
        .spawn(move || {
            vmm::seccomp::enter(vmm::seccomp::ThreadKind::StdioRelay);
            let mut input = input;
            let mut stream = stream;
            let mut buf = vec![0u8; 64 * 1024];
            let cancel = super::poll::eventfd(&theirs);
            loop {
                let mut fds = [
                    PollFd::new(input.as_fd(), PollFlags::POLLIN),
                    PollFd::new(cancel, PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break,
                }
                if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                    // The process is gone: nobody reads this input any more.
                    return;
                }
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    // EIO: a terminal whose other side was closed.
                    Err(_) => break,
                }
            }
            let _ = stream.shutdown(Shutdown::Write);
        })?;
    Ok(InputRelay { cancel })
}

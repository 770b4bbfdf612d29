//! System calls on the host descriptors behind the devices (the TAP, Unix sockets, the
//! disk image, timers): putting a descriptor in non-blocking mode, and running a call again
//! when a signal interrupted it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Sets `O_NONBLOCK` on `fd` (which the event loop must never block on).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor borrowed for the duration of the call, with integer
    // arguments only.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `call`, a system call that returns a byte count or -1 with `errno` set, again for
/// as long as it fails with `EINTR`.
pub fn retry_on_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        // Non-negative: a byte count.
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn nonblocking_reads_would_block_and_retried_calls_report_errors() {
        let (mut a, b) = UnixStream::pair().unwrap();
        set_nonblocking(b.as_fd()).unwrap();
        let mut buf = [0u8; 8];
        let read = |buf: &mut [u8]| {
            retry_on_eintr(|| {
                // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `b` owns the fd.
                unsafe { libc::read(b.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
            })
        };
        let err = read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        a.write_all(b"abc").unwrap();
        assert_eq!(read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");

        let mut calls = 0;
        let interrupted_once = retry_on_eintr(|| {
            calls += 1;
            if calls == 1 {
                // SAFETY: errno is this thread's; setting it is what a failing call does.
                unsafe { *libc::__errno_location() = libc::EINTR };
                -1
            } else {
                5
            }
        });
        assert_eq!((interrupted_once.unwrap(), calls), (5, 2));
    }
}

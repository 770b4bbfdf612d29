//! Passing file descriptors over Unix sockets (SCM_RIGHTS), between host processes: the
//! exec client hands its stdio to the monitor, and `create`/`exec` hand a pty master to a
//! console socket (go-runc's `recvFd` protocol: exactly one descriptor, the pty's name as
//! the data), where containerd-shim-runvm-v2 receives it.
//!
//! What arrives on a socket is checked: the number of descriptors must be the one
//! expected, and every descriptor received is owned (closed on error), never leaked.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};

/// Most descriptors one message may carry here.
pub const MAX_FDS: usize = 4;

/// Errors passing descriptors.
#[derive(Debug, thiserror::Error)]
pub enum ScmError {
    #[error("sendmsg with SCM_RIGHTS: {0}")]
    Send(#[source] nix::Error),
    #[error("recvmsg: {0}")]
    Recv(#[source] nix::Error),
    #[error("the peer closed the connection before sending its descriptors")]
    Closed,
    #[error("expected {expected} descriptors, got {got}")]
    Count { expected: usize, got: usize },
    #[error("the descriptors' message was truncated")]
    Truncated,
}

/// Sends `fds` with `data` (at least one byte is sent, so the message is not empty).
pub fn send_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> Result<(), ScmError> {
    let data = if data.is_empty() { &b"\0"[..] } else { data };
    let iov = [IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(ScmError::Send)?;
    Ok(())
}

/// Receives one message that must carry exactly `expected` descriptors (close-on-exec);
/// returns them and the data bytes.
pub fn recv_fds(
    sock: BorrowedFd<'_>,
    expected: usize,
) -> Result<(Vec<OwnedFd>, Vec<u8>), ScmError> {
    let mut data = vec![0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = loop {
        match socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r.map_err(ScmError::Recv)?,
        }
    };
    let mut fds = Vec::new();
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    for c in msg.cmsgs().map_err(ScmError::Recv)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed this descriptor in our table; nothing
                // else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let n = msg.bytes;
    if n == 0 && fds.is_empty() {
        return Err(ScmError::Closed);
    }
    if truncated {
        return Err(ScmError::Truncated);
    }
    if fds.len() != expected {
        return Err(ScmError::Count {
            expected,
            got: fds.len(),
        });
    }
    data.truncate(n);
    Ok((fds, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_and_data_arrive() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut r, w) = UnixStream::pair().unwrap();
        send_fds(a.as_fd(), b"/dev/pts/7", &[w.as_raw_fd()]).unwrap();
        drop(w);
        let (fds, data) = recv_fds(b.as_fd(), 1).unwrap();
        assert_eq!(data, b"/dev/pts/7");
        let mut got = UnixStream::from(fds.into_iter().next().unwrap());
        got.write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"x");
    }

    #[test]
    fn a_wrong_count_or_a_closed_peer_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, y) = UnixStream::pair().unwrap();
        send_fds(a.as_fd(), b"m", &[x.as_raw_fd(), y.as_raw_fd()]).unwrap();
        assert!(matches!(
            recv_fds(b.as_fd(), 3),
            Err(ScmError::Count {
                expected: 3,
                got: 2
            })
        ));
        // Plain bytes without descriptors.
        (&a).write_all(b"junk").unwrap();
        assert!(matches!(
            recv_fds(b.as_fd(), 1),
            Err(ScmError::Count { got: 0, .. })
        ));
        drop(a);
        assert!(matches!(recv_fds(b.as_fd(), 1), Err(ScmError::Closed)));
    }

    #[test]
    fn more_descriptors_than_the_limit_are_refused_not_leaked() {
        let (a, b) = UnixStream::pair().unwrap();
        let pairs: Vec<_> = (0..MAX_FDS + 2)
            .map(|_| UnixStream::pair().unwrap())
            .collect();
        let raw: Vec<RawFd> = pairs.iter().map(|p| p.0.as_raw_fd()).collect();
        send_fds(a.as_fd(), b"m", &raw).unwrap();
        assert!(recv_fds(b.as_fd(), MAX_FDS + 2).is_err());
    }
}

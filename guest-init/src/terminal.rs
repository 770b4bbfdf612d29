//! The container's terminal. The child opens a pty from the container's own `/dev/ptmx`
//! (its devpts), makes the slave its controlling terminal (a new session) and its fds 0–2,
//! as runc's init does with its console, and hands the master to init over a socketpair
//! (SCM_RIGHTS). Init relays the master and resizes it on the host's request.

use crate::error::{Context, Error, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::socket;
use nix::sys::stat::Mode;
use runvm_protocol::WindowSize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// In the child: opens the pty, sets its size, sends the master over `to_parent`, and
/// makes the slave the controlling terminal and stdio of the calling process.
pub fn attach(to_parent: OwnedFd, size: Option<WindowSize>) -> Result<()> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .context("open /dev/ptmx in the container")?;
    nix::pty::grantpt(&master).context("grantpt")?;
    nix::pty::unlockpt(&master).context("unlockpt")?;
    let name = nix::pty::ptsname_r(&master).context("ptsname")?;
    let slave = open_slave(&name)?;
    if let Some(size) = size {
        set_window_size(&slave, size)?;
    }
    send_master(to_parent.as_fd(), master.as_fd())?;
    drop((master, to_parent));
    make_controlling_stdio(slave.as_fd(), &name)
}

fn open_slave(name: &str) -> Result<OwnedFd> {
    let fd = nix::fcntl::open(
        name,
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("open the pty slave {name}"))?;
    // SAFETY: open just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new session with `slave` (named `name`) as its controlling terminal, and on fds 0–2.
fn make_controlling_stdio(slave: BorrowedFd<'_>, name: &str) -> Result<()> {
    nix::unistd::setsid().context("setsid")?;
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal) and no memory.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(Error::new(format!(
            "make {name} the controlling terminal: {}",
            Errno::last()
        )));
    }
    for target in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), target).context("dup2 the pty slave")?;
    }
    Ok(())
}

/// `TIOCSWINSZ` on a terminal descriptor.
pub fn set_window_size(terminal: impl AsFd, size: WindowSize) -> Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct from a valid pointer; the descriptor is
    // borrowed, so it is open for the call.
    if unsafe { libc::ioctl(terminal.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(Error::new(format!("TIOCSWINSZ: {}", Errno::last())));
    }
    Ok(())
}

/// Sends `master` with SCM_RIGHTS and one data byte.
fn send_master(sock: BorrowedFd<'_>, master: BorrowedFd<'_>) -> Result<()> {
    let iov = [std::io::IoSlice::new(b"m")];
    let fds = [master.as_raw_fd()];
    let cmsg = [socket::ControlMessage::ScmRights(&fds)];
    socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &cmsg,
        socket::MsgFlags::empty(),
        None,
    )
    .context("send the pty master to init")?;
    Ok(())
}

/// In init: receives the master the child sent with SCM_RIGHTS (it is already queued: the
/// child sent it before its `execve`).
pub fn receive_master(sock: impl AsFd) -> Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = socket::recvmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        socket::MsgFlags::MSG_DONTWAIT | socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("recvmsg")?;
    let mut received = Vec::new();
    for c in msg.cmsgs().context("control messages")? {
        if let socket::ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor for us; we own it.
                received.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    // Any further descriptor is closed with the vector.
    received
        .into_iter()
        .next()
        .ok_or_else(|| Error::new("the process sent no pty master"))
}

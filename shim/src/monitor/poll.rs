//! Waiting on the monitor's descriptors: a [`PollSet`] registers each under a name (a
//! slot of the caller's own enum) and says which names are ready, so no caller counts
//! positions in a descriptor array. Also the signalfd's pending signals.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;
use vmm_sys_util::eventfd::EventFd;

use super::MonitorError;

/// Descriptors to wait on for input, each under a slot name `S`.
pub(super) struct PollSet<'fd, S> {
    slots: Vec<(S, BorrowedFd<'fd>)>,
}

/// The slots whose descriptors are ready (readable, closed or failed).
pub(super) struct Ready<S> {
    slots: Vec<S>,
}

impl<'fd, S: Copy + PartialEq> PollSet<'fd, S> {
    pub(super) fn new() -> Self {
        Self { slots: Vec::new() }
    }

    /// Registers `fd` under `slot`.
    pub(super) fn add(&mut self, slot: S, fd: BorrowedFd<'fd>) {
        self.slots.push((slot, fd));
    }

    /// Waits until a descriptor is ready or `deadline` passes (then nothing is ready).
    pub(super) fn wait(&self, deadline: Option<Instant>) -> Result<Ready<S>, MonitorError> {
        let fds: Vec<BorrowedFd<'_>> = self.slots.iter().map(|(_, fd)| *fd).collect();
        let ready = wait_ready(&fds, deadline)?;
        Ok(Ready {
            slots: self
                .slots
                .iter()
                .zip(ready)
                .filter(|(_, r)| *r)
                .map(|((slot, _), _)| *slot)
                .collect(),
        })
    }
}

impl<S: Copy + PartialEq> Ready<S> {
    /// Whether the descriptor of `slot` is ready.
    pub(super) fn contains(&self, slot: S) -> bool {
        self.slots.contains(&slot)
    }

    /// The ready slots, in the order they were registered.
    pub(super) fn iter(&self) -> impl Iterator<Item = S> + '_ {
        self.slots.iter().copied()
    }
}

/// Waits until one of `fds` is readable (or closed, or failed), or `deadline` passes; says
/// which are, in order. An interrupted wait goes on.
pub(super) fn wait_ready(
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> Result<Vec<bool>, MonitorError> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let mut pfds: Vec<PollFd> = fds
            .iter()
            .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        match poll(&mut pfds, timeout) {
            Ok(0) => return Ok(vec![false; fds.len()]),
            Ok(_) => {
                return Ok(pfds
                    .iter()
                    .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                    .collect())
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(MonitorError::Poll(e)),
        }
    }
}

/// An eventfd's descriptor, borrowed for as long as the eventfd (vmm-sys-util's
/// `EventFd` has no `AsFd`).
pub(super) fn eventfd(e: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: the descriptor belongs to `e`, which stays open (and is not closed through
    // another path) for the lifetime of the returned borrow, tied to `&e`.
    unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) }
}

/// The signals waiting on the signalfd (which is non-blocking), in order.
pub(super) fn pending_signals(sigfd: &SignalFd) -> Vec<i32> {
    let mut out = Vec::new();
    while let Ok(Some(info)) = sigfd.read_signal() {
        out.push(info.ssi_signo as i32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Slot {
        Quiet,
        Written,
        Event,
    }

    #[test]
    fn the_ready_slots_are_named() {
        let (quiet, _quiet_peer) = UnixStream::pair().unwrap();
        let (written, mut peer) = UnixStream::pair().unwrap();
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut set = PollSet::new();
        set.add(Slot::Quiet, quiet.as_fd());
        set.add(Slot::Written, written.as_fd());
        set.add(Slot::Event, eventfd(&event));

        let soon = Some(Instant::now() + Duration::from_millis(20));
        let ready = set.wait(soon).unwrap();
        assert_eq!(ready.iter().count(), 0, "nothing is ready yet");

        peer.write_all(b"x").unwrap();
        event.write(1).unwrap();
        let ready = set.wait(None).unwrap();
        assert!(!ready.contains(Slot::Quiet));
        assert!(ready.contains(Slot::Written));
        assert!(ready.contains(Slot::Event));
        assert_eq!(
            ready.iter().collect::<Vec<_>>(),
            [Slot::Written, Slot::Event]
        );
    }
}

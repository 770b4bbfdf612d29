//! The guest's OOM kills, shown on the host: the guest reports its container cgroup's
//! `oom_kill` count with every exit (`Exited`), and in every `Stats` answer, which the
//! session also asks for every [`POLL_INTERVAL`] while the main process runs (for a
//! process killed while the container goes on). When the count rises, the host cgroup's
//! count is raised ([`crate::cgroup::oom`]) before the exit is passed on, so a container
//! engine that watches it (containerd's shim for Docker) has its OOM event first.
//!
//! The guest's count is untrusted: only a rise above the highest it ever reported
//! counts, and the guest can make at most one report per answer the host asked for or
//! exit it reports, which a lying guest can only use to mark its own container OOM-killed.

use std::time::{Duration, Instant};

use runvm_protocol::{GuestMessage, HostMessage, MAIN_CONTAINER};

use super::Session;
use crate::cgroup::oom::{OomReportError, OomReporter, ReadWatch};
use crate::monitor::MonitorError;

/// How often the running container's guest is asked for its count: the delay of an `oom`
/// event for a process killed while the container goes on (an exit carries its count at
/// once). Every answer wakes the guest and crosses vsock twice; at one a second, twenty
/// idle containers under emulation spent a large part of a CPU on it.
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How long the session's end waits for the engine to read the raised count.
const READ_WAIT: Duration = Duration::from_secs(1);

/// What the session knows of the guest's OOM kills and of showing them on the host.
pub(in crate::monitor) struct OomWatch {
    /// The host cgroup's reporter: `None` without a host cgroup, an error once it
    /// cannot report (said once).
    reporter: Option<Result<OomReporter, OomReportError>>,
    /// The highest count the guest reported.
    guest_count: u64,
    /// The poll's request, while its answer is awaited.
    poll_request: Option<u32>,
    next_poll: Instant,
    /// After a report: the watch for the engine's read of it, and when it was made.
    unread: Option<(ReadWatch, Instant)>,
}

impl OomWatch {
    /// The watch of the container whose state (and cgroup record) is in `state_dir`.
    pub(in crate::monitor) fn new(state_dir: Option<&std::path::Path>) -> Self {
        Self {
            reporter: state_dir.and_then(OomReporter::for_container),
            guest_count: 0,
            poll_request: None,
            next_poll: Instant::now() + POLL_INTERVAL,
            unread: None,
        }
    }

    fn can_report(&self) -> bool {
        matches!(self.reporter, Some(Ok(_)))
    }

    /// When the session should next ask the guest for its count.
    pub(in crate::monitor) fn poll_deadline(&self) -> Option<Instant> {
        (self.can_report() && self.poll_request.is_none()).then_some(self.next_poll)
    }

    /// The guest says its count is `count`: a rise is shown on the host.
    fn guest_reported(&mut self, count: u64) {
        if count <= self.guest_count {
            return;
        }
        let kills = count - self.guest_count;
        self.guest_count = count;
        let reporter = match &mut self.reporter {
            None => return,
            Some(Err(e)) => {
                log::warn!("the guest's OOM killer killed {kills} more process(es) of the container; container engines will not report it: {e}");
                return;
            }
            Some(Ok(reporter)) => reporter,
        };
        match reporter.report() {
            Ok(host_count) => {
                log::debug!(
                    "the guest's OOM killer killed {kills} more process(es); the host cgroup {} counts {host_count}",
                    reporter.dir().display()
                );
                match ReadWatch::new(reporter.dir()) {
                    Ok(watch) => self.unread = Some((watch, Instant::now())),
                    Err(e) => log::debug!("cannot watch reads of memory.events: {e}"),
                }
            }
            Err(e) => {
                log::warn!("the guest's OOM killer killed a process of the container, but its host cgroup {} cannot show it (container engines will not report the OOM): {e}", reporter.dir().display());
                self.reporter = Some(Err(e));
            }
        }
    }
}

impl Drop for OomWatch {
    /// The session ends, and the monitor soon after (which the engine then reports as
    /// the container's exit): a raised count is given [`READ_WAIT`] to be read first.
    fn drop(&mut self) {
        if let Some((watch, at)) = self.unread.take() {
            if !watch.wait_read(at + READ_WAIT) {
                log::debug!("nothing read the host cgroup's OOM count within {READ_WAIT:?}");
            }
        }
    }
}

impl Session<'_> {
    /// Asks the running guest for its count when it is time.
    pub(super) fn poll_oom(&mut self) -> Result<(), MonitorError> {
        let now = Instant::now();
        if self.oom.poll_deadline().is_none_or(|d| now < d)
            || !self.main_running()
            || self.io.vm.is_paused()
        {
            return Ok(());
        }
        let request = self.next_query();
        self.oom.poll_request = Some(request);
        self.oom.next_poll = now + POLL_INTERVAL;
        self.send(&HostMessage::Stats {
            request,
            container: runvm_protocol::MAIN_CONTAINER,
        })
    }

    /// Takes the count a guest message carries; true when the message was the answer
    /// to the session's own poll (nothing else is to be done with it).
    pub(super) fn oom_count_in(&mut self, msg: &GuestMessage) -> bool {
        match msg {
            // Only the main container's counts: a member's are its own (passed to its
            // monitor with its exit, see `super::super::member`).
            GuestMessage::Exited {
                process, oom_kills, ..
            } if self.container_of(*process) == MAIN_CONTAINER => {
                self.oom.guest_reported(*oom_kills)
            }
            GuestMessage::Stats { request, stats } => {
                if self.stats_of_main(*request) {
                    self.oom.guest_reported(stats.oom_kills);
                }
                if self.oom.poll_request == Some(*request) {
                    self.oom.poll_request = None;
                    return true;
                }
            }
            _ => {}
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_host_cgroup_nothing_is_polled_or_reported() {
        let state = tempfile::tempdir().unwrap();
        let mut w = OomWatch::new(Some(state.path()));
        assert!(w.poll_deadline().is_none());
        w.guest_reported(3);
        assert_eq!(w.guest_count, 3);
        assert!(w.unread.is_none());
        assert!(OomWatch::new(None).poll_deadline().is_none());
    }

    #[test]
    fn only_a_rise_above_the_highest_count_is_reported() {
        let mut w = OomWatch::new(None);
        // A reporter that cannot report: each rise is noted, nothing else.
        w.reporter = Some(Err(OomReportError::NotV2));
        w.guest_reported(2);
        w.guest_reported(1);
        assert_eq!(w.guest_count, 2);
        w.guest_reported(5);
        assert_eq!(w.guest_count, 5);
        assert!(w.poll_deadline().is_none(), "no poll without a reporter");
    }
}

//! The host side of the write-back: applies the guest's writable-layer changes
//! ([`WritebackEntry`](runvm_protocol::WritebackEntry) frames on
//! [`WRITEBACK_PORT`](runvm_protocol::WRITEBACK_PORT)) to the container's `root.path`, as
//! a diff through the merged view. Through Docker's overlay mount the host kernel turns
//! it into upperdir changes (so `docker diff`, `commit` and `cp` see them); for a plain
//! directory the changes land in it, as under runc.
//!
//! The stream comes from the guest, so it is untrusted:
//! - frames are small
//!   ([`MAX_WRITEBACK_FRAME_LEN`](runvm_protocol::MAX_WRITEBACK_FRAME_LEN)), decode into a
//!   closed enum, and paths must be relative, without empty, `.` or `..` components or
//!   NUL bytes, and short;
//! - every lookup is relative to a descriptor of `root.path` opened at create, with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//!   RESOLVE_NO_XDEV)` (or a component walk with `O_NOFOLLOW` where the kernel lacks
//!   openat2), so no symlink, in the host tree or planted by the stream, leads out of the
//!   root, and no other file system mounted inside it is touched;
//! - sizes and counts are capped, and the whole write-back has a deadline.
//!
//! Each entry is applied whole or not at all: new files, links and nodes are made under a
//! temporary name in their directory and renamed into place. A malformed stream stops the
//! write-back with an error (the entries before it stay applied); an entry the host cannot
//! apply (no space, a path that leads through a symlink) is logged and skipped.
//!
//! The parts: [`path`] checks the paths the guest sends, [`dirfd`] holds the
//! descriptor-relative file operations that never leave the root, [`apply`] applies
//! entries with them; this file receives the stream and reports.

mod apply;
mod dirfd;
mod path;

use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use runvm_protocol::FrameError;

/// Caps on one write-back.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    pub max_entries: u64,
}

/// What a write-back did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub entries: u64,
    pub bytes: u64,
    /// Entries the host could not apply (see `errors`).
    pub failed: u64,
    pub errors: Vec<String>,
    /// Changes the guest could not read and did not send.
    pub guest_skipped: u64,
}

/// Why a write-back stopped early.
#[derive(Debug, thiserror::Error)]
pub enum WritebackError {
    #[error("malformed write-back stream: {0}")]
    Frame(#[source] FrameError),
    #[error("the write-back stream ended after {0} entries without its end marker (truncated)")]
    Truncated(u64),
    #[error("refused the path {path:?} from the guest: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("refused {path:?} from the guest: {size} bytes is over the limit of {limit}")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("the guest sent more than {0} entries")]
    TooManyEntries(u64),
    #[error("the guest's end marker counts {claimed} entries, {got} came")]
    Count { claimed: u64, got: u64 },
    #[error("reading the write-back stream: {0}")]
    Io(#[source] std::io::Error),
    #[error("the write-back did not finish within {0:?}")]
    Timeout(Duration),
}

impl From<FrameError> for WritebackError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(io) if is_timeout(&io) => Self::Io(io),
            FrameError::Io(io) if io.kind() == ErrorKind::UnexpectedEof => Self::Truncated(0),
            other => Self::Frame(other),
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Where and how a container's changes are written back (held by its monitor).
#[derive(Debug)]
pub struct WritebackTarget {
    /// `root.path`, opened at create (`O_PATH`).
    pub root: OwnedFd,
    pub path: PathBuf,
    pub limits: Limits,
    pub timeout: Duration,
}

impl WritebackTarget {
    /// Opens `path` for a later write-back.
    pub fn open(path: PathBuf, limits: Limits, timeout: Duration) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&path)?;
        Ok(Self {
            root: f.into(),
            path,
            limits,
            timeout,
        })
    }

    /// Accepts the guest's write-back connection on `listener` and applies it, logging
    /// the outcome. Gives up when `abort` (the VM's end) becomes readable or at the
    /// deadline. A connection that closes before its first frame (a guest connect that
    /// gave up and retries) is dropped and the next one awaited.
    pub fn receive(&self, listener: &UnixListener, abort: BorrowedFd) {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let result = (|| -> Result<Report, WritebackError> {
            loop {
                let conn = accept_until(listener, abort, deadline)?;
                let left = deadline.saturating_duration_since(Instant::now());
                conn.set_read_timeout(Some(left.max(Duration::from_millis(100))))
                    .map_err(WritebackError::Io)?;
                let mut reader = std::io::BufReader::with_capacity(256 << 10, conn);
                match apply_stream(self.root.as_fd(), &mut reader, &self.limits, Some(deadline)) {
                    Err(WritebackError::Truncated(0)) => {
                        log::debug!("a write-back connection closed before its first frame; waiting for the next");
                    }
                    Err(WritebackError::Io(e)) if is_timeout(&e) => {
                        return Err(WritebackError::Timeout(self.timeout))
                    }
                    other => return other,
                }
            }
        })();
        let ms = started.elapsed().as_millis();
        match result {
            Ok(r) => {
                log::info!(
                    "wrote back {} changes ({} bytes) to {} in {ms} ms",
                    r.entries,
                    r.bytes,
                    self.path.display()
                );
                if r.failed > 0 {
                    log::error!(
                        "write-back to {}: {} of {} changes could not be applied: {}",
                        self.path.display(),
                        r.failed,
                        r.entries,
                        r.errors.join("; ")
                    );
                }
                if r.guest_skipped > 0 {
                    log::error!(
                        "write-back to {}: the guest could not read {} changed files (see its log)",
                        self.path.display(),
                        r.guest_skipped
                    );
                }
            }
            Err(e) => log::error!(
                "write-back to {} stopped after {ms} ms: {e}; changes before that point were applied, each file whole",
                self.path.display()
            ),
        }
    }
}

/// Waits for one connection on `listener`, until `abort` is readable or `deadline`.
fn accept_until(
    listener: &UnixListener,
    abort: BorrowedFd,
    deadline: Instant,
) -> Result<std::os::unix::net::UnixStream, WritebackError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WritebackError::Timeout(left));
        }
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(abort, PollFlags::POLLIN),
        ];
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(WritebackError::Io(e.into())),
            Ok(_) => {}
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).map_err(WritebackError::Io)?;
                    return Ok(s);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(WritebackError::Io(e)),
            }
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return Err(WritebackError::Io(std::io::Error::other(
                "the VM stopped before it sent its changes",
            )));
        }
    }
}

/// Applies one write-back stream read from `r` below `root`. Returns what was done, or
/// why the stream was refused part way.
pub fn apply_stream<R: Read>(
    root: BorrowedFd<'_>,
    r: &mut R,
    limits: &Limits,
    deadline: Option<Instant>,
) -> Result<Report, WritebackError> {
    let mut a = apply::Applier::new(root)?;
    let result = a.run(r, limits, deadline);
    // Directory times last: creating their contents changed them. Also after an error, so
    // what was applied looks as it did in the guest.
    a.apply_dir_times();
    result.map(|()| a.report)
}

#[cfg(test)]
mod tests;

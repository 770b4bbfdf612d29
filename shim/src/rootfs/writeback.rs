//! The host side of the write-back: applies the guest's writable-layer changes
//! ([`WritebackEntry`] frames on [`WRITEBACK_PORT`](runvm_protocol::WRITEBACK_PORT)) to the
//! container's `root.path`, as a diff through the merged view. Through Docker's overlay
//! mount the host kernel turns it into upperdir changes (so `docker diff`, `commit` and
//! `cp` see them); for a plain directory the changes land in it, as under runc.
//!
//! The stream comes from the guest, so it is untrusted:
//! - frames are small ([`MAX_WRITEBACK_FRAME_LEN`]), decode into a closed enum, and paths
//!   must be relative, without empty, `.` or `..` components or NUL bytes, and short;
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

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use runvm_protocol::{
    read_frame_limited, FileMeta, FrameError, SpecialKind, WritebackEntry, MAX_WRITEBACK_FRAME_LEN,
};

/// Longest path the host accepts (PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Longest path component (NAME_MAX).
pub const MAX_NAME: usize = 255;
/// How many entry errors are kept for the log.
const KEPT_ERRORS: usize = 8;
/// Most bytes of directory paths kept for setting their mtimes at the end.
const MAX_DIR_TIME_BYTES: usize = 64 << 20;

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
    Frame(FrameError),
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
    Io(std::io::Error),
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
    pub fn receive(&self, listener: &UnixListener, abort: RawFd) {
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
    abort: RawFd,
    deadline: Instant,
) -> Result<std::os::unix::net::UnixStream, WritebackError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WritebackError::Timeout(left));
        }
        // SAFETY: `abort` is owned by the caller and outlives this call.
        let abort_fd = unsafe { BorrowedFd::borrow_raw(abort) };
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(abort_fd, PollFlags::POLLIN),
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

/// Checks a path from the guest; the error says why it is refused.
pub fn check_path(p: &[u8]) -> Result<(), &'static str> {
    if p.is_empty() {
        return Err("empty");
    }
    if p.len() > MAX_PATH {
        return Err("longer than 4096 bytes");
    }
    if p[0] == b'/' {
        return Err("absolute");
    }
    if p.contains(&0) {
        return Err("contains a NUL byte");
    }
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" => return Err("has an empty component"),
            b"." | b".." => return Err("has a . or .. component"),
            c if c.len() > MAX_NAME => return Err("has a component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// `(parent, name)` of a checked path.
fn split(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&[], p),
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
    let mut a = Applier::new(root)?;
    let result = a.run(r, limits, deadline);
    // Directory times last: creating their contents changed them. Also after an error, so
    // what was applied looks as it did in the guest.
    a.apply_dir_times();
    result.map(|()| a.report)
}

struct Applier<'a> {
    root: BorrowedFd<'a>,
    root_dev: u64,
    report: Report,
    /// The last parent directory opened (`O_PATH`), by path.
    parent: Option<(Vec<u8>, OwnedFd)>,
    /// Directories were removed or replaced since: reopen the parent next time (the old
    /// descriptor stays valid until then, for the entry that is being applied).
    parent_stale: bool,
    dir_times: Vec<(Vec<u8>, FileMeta)>,
    dir_time_bytes: usize,
    tmp_counter: u64,
    buf: Vec<u8>,
}

/// What one entry did not manage (the stream goes on).
type EntryResult = Result<(), String>;

impl<'a> Applier<'a> {
    fn new(root: BorrowedFd<'a>) -> Result<Self, WritebackError> {
        let st =
            nix::sys::stat::fstat(root.as_raw_fd()).map_err(|e| WritebackError::Io(e.into()))?;
        Ok(Self {
            root,
            root_dev: st.st_dev,
            report: Report::default(),
            parent: None,
            parent_stale: false,
            dir_times: Vec::new(),
            dir_time_bytes: 0,
            tmp_counter: 0,
            buf: vec![0u8; 128 << 10],
        })
    }

    fn run<R: Read>(
        &mut self,
        r: &mut R,
        limits: &Limits,
        deadline: Option<Instant>,
    ) -> Result<(), WritebackError> {
        let over = |d: Option<Instant>| d.is_some_and(|d| Instant::now() > d);
        loop {
            if over(deadline) {
                return Err(WritebackError::Timeout(Duration::ZERO));
            }
            let entry: WritebackEntry = match read_frame_limited(r, MAX_WRITEBACK_FRAME_LEN) {
                Ok(e) => e,
                Err(FrameError::Closed) => {
                    return Err(WritebackError::Truncated(self.report.entries))
                }
                Err(e) => {
                    return Err(match WritebackError::from(e) {
                        WritebackError::Truncated(_) => {
                            WritebackError::Truncated(self.report.entries.max(1))
                        }
                        other => other,
                    })
                }
            };
            if let WritebackEntry::End { entries, skipped } = entry {
                if entries != self.report.entries {
                    return Err(WritebackError::Count {
                        claimed: entries,
                        got: self.report.entries,
                    });
                }
                self.report.guest_skipped = skipped;
                return Ok(());
            }
            self.report.entries += 1;
            if self.report.entries > limits.max_entries {
                return Err(WritebackError::TooManyEntries(limits.max_entries));
            }
            let path = entry_path(&entry);
            check_path(path).map_err(|why| WritebackError::BadPath {
                path: show(path),
                why,
            })?;
            let path = path.to_vec();
            let outcome = match entry {
                WritebackEntry::File { meta, size, .. } => {
                    let limit = limits
                        .max_file_bytes
                        .min(limits.max_total_bytes.saturating_sub(self.report.bytes));
                    if size > limit {
                        return Err(WritebackError::TooLarge {
                            path: show(&path),
                            size,
                            limit,
                        });
                    }
                    self.report.bytes += size;
                    self.file(&path, &meta, size, r, deadline)?
                }
                WritebackEntry::Dir { meta, opaque, .. } => self.dir(&path, &meta, opaque),
                WritebackEntry::Symlink { meta, target, .. } => {
                    if target.is_empty() || target.len() > MAX_PATH || target.contains(&0) {
                        Err("a symlink target that is empty, too long or has a NUL byte".into())
                    } else {
                        self.symlink(&path, &meta, &target)
                    }
                }
                WritebackEntry::Hardlink { target, .. } => {
                    check_path(&target).map_err(|why| WritebackError::BadPath {
                        path: show(&target),
                        why,
                    })?;
                    self.hardlink(&path, &target)
                }
                WritebackEntry::Special {
                    meta, kind, rdev, ..
                } => self.special(&path, &meta, kind, rdev),
                WritebackEntry::Whiteout { .. } => self.whiteout(&path),
                WritebackEntry::End { .. } => unreachable_end(),
            };
            if let Err(why) = outcome {
                self.report.failed += 1;
                if self.report.errors.len() < KEPT_ERRORS {
                    self.report.errors.push(format!("{}: {why}", show(&path)));
                }
            }
        }
    }

    /// Opens directory `rel` (relative to the root, `""` for the root) without following
    /// any symlink or leaving the root's file system.
    fn open_dir(&self, rel: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
        let path: &[u8] = if rel.is_empty() { b"." } else { rel };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        match nix::fcntl::openat2(self.root.as_raw_fd(), path, how) {
            // SAFETY: openat2 just returned this descriptor; nothing else owns it.
            Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(Errno::ENOSYS) => self.walk_dir(rel, flags),
            Err(e) => Err(e),
        }
    }

    /// [`Self::open_dir`] for kernels without openat2: one component at a time, never
    /// following a symlink, staying on the root's file system.
    fn walk_dir(&self, rel: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
        let base = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let open = |dir: RawFd, name: &[u8], f: OFlag| -> nix::Result<OwnedFd> {
            let fd = nix::fcntl::openat(Some(dir), name, f | base, Mode::empty())?;
            // SAFETY: openat just returned this descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if nix::sys::stat::fstat(fd.as_raw_fd())?.st_dev != self.root_dev {
                return Err(Errno::EXDEV);
            }
            Ok(fd)
        };
        let mut cur = open(self.root.as_raw_fd(), b".", OFlag::O_PATH)?;
        for c in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            cur = open(cur.as_raw_fd(), c, OFlag::O_PATH)?;
        }
        if flags.contains(OFlag::O_PATH) {
            return Ok(cur);
        }
        open(cur.as_raw_fd(), b".", flags)
    }

    /// The parent directory of `path` (`O_PATH`), reusing the last one opened.
    fn parent_of(&mut self, path: &[u8]) -> Result<RawFd, String> {
        let (parent, _) = split(path);
        if let Some((p, fd)) = &self.parent {
            if p == parent && !self.parent_stale {
                return Ok(fd.as_raw_fd());
            }
        }
        self.parent_stale = false;
        let fd = self
            .open_dir(parent, OFlag::O_PATH)
            .map_err(|e| format!("cannot open its directory: {}", e.desc()))?;
        let raw = fd.as_raw_fd();
        self.parent = Some((parent.to_vec(), fd));
        Ok(raw)
    }

    /// Directories were removed or replaced: do not reuse the cached parent.
    fn forget_parent(&mut self) {
        self.parent_stale = true;
    }

    fn tmp_name(&mut self) -> Vec<u8> {
        self.tmp_counter += 1;
        format!(".runvm-wb.{}.{}", std::process::id(), self.tmp_counter).into_bytes()
    }

    fn lstat(dir: RawFd, name: &[u8]) -> Option<nix::sys::stat::FileStat> {
        nix::sys::stat::fstatat(Some(dir), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).ok()
    }

    fn is_dir(st: &nix::sys::stat::FileStat) -> bool {
        st.st_mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// Removes `name` in `dir`, a whole tree if it is a directory. Never follows a symlink
    /// and never enters another file system. A missing name is fine.
    fn remove_tree(&self, dir: RawFd, name: &[u8], depth: usize) -> nix::Result<()> {
        let Some(st) = Self::lstat(dir, name) else {
            return Ok(());
        };
        if !Self::is_dir(&st) {
            return match nix::unistd::unlinkat(Some(dir), name, UnlinkatFlags::NoRemoveDir) {
                Err(Errno::ENOENT) => Ok(()),
                r => r,
            };
        }
        if st.st_dev != self.root_dev || depth > MAX_PATH {
            return Err(Errno::EXDEV);
        }
        let fd = nix::fcntl::openat(
            Some(dir),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: openat just returned this descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        self.clear_dir(fd.as_raw_fd(), depth + 1)?;
        match nix::unistd::unlinkat(Some(dir), name, UnlinkatFlags::RemoveDir) {
            Err(Errno::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// Removes everything in directory `dir`.
    fn clear_dir(&self, dir: RawFd, depth: usize) -> nix::Result<()> {
        let dup = nix::unistd::dup(dir)?;
        let mut d = nix::dir::Dir::from_fd(dup)?;
        let names: Vec<Vec<u8>> = d
            .iter()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_bytes().to_vec())
            .filter(|n| n != b"." && n != b"..")
            .collect();
        for n in names {
            self.remove_tree(dir, n.as_slice(), depth)?;
        }
        Ok(())
    }

    /// Sets owner, then permissions (chown clears setuid bits), then times, of `fd`.
    fn set_meta_fd(fd: RawFd, meta: &FileMeta) -> nix::Result<()> {
        nix::unistd::fchown(
            fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )?;
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(meta.mode & 0o7777))?;
        nix::sys::stat::futimens(fd, &TimeSpec::UTIME_OMIT, &mtime(meta))
    }

    /// Owner and times of a name that cannot be opened (symlink, device, socket), and
    /// permissions where they mean something.
    fn set_meta_at(dir: RawFd, name: &[u8], meta: &FileMeta, chmod: bool) -> nix::Result<()> {
        let nofollow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        nix::unistd::fchownat(
            Some(dir),
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            nofollow,
        )?;
        if chmod {
            // Not a symlink (the caller knows): fchmodat cannot follow one here.
            nix::sys::stat::fchmodat(
                Some(dir),
                name,
                Mode::from_bits_truncate(meta.mode & 0o7777),
                nix::sys::stat::FchmodatFlags::NoFollowSymlink,
            )
            .or_else(|e| {
                // Linux's fchmodat has no NOFOLLOW before 6.6: the name was just made
                // by us and is not a symlink, so the plain call is the same.
                if e == Errno::EOPNOTSUPP || e == Errno::ENOTSUP || e == Errno::EINVAL {
                    nix::sys::stat::fchmodat(
                        Some(dir),
                        name,
                        Mode::from_bits_truncate(meta.mode & 0o7777),
                        nix::sys::stat::FchmodatFlags::FollowSymlink,
                    )
                } else {
                    Err(e)
                }
            })?;
        }
        nix::sys::stat::utimensat(
            Some(dir),
            name,
            &TimeSpec::UTIME_OMIT,
            &mtime(meta),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
    }

    /// Renames `tmp` over `name` in `dir`, first removing a directory that is in the way
    /// (a rename cannot replace one with a non-directory).
    fn replace(&mut self, dir: RawFd, tmp: &[u8], name: &[u8]) -> EntryResult {
        if Self::lstat(dir, name).is_some_and(|st| Self::is_dir(&st)) {
            self.forget_parent();
            if let Err(e) = self.remove_tree(dir, name, 0) {
                let _ = nix::unistd::unlinkat(Some(dir), tmp, UnlinkatFlags::NoRemoveDir);
                return Err(format!(
                    "cannot remove the directory in its place: {}",
                    e.desc()
                ));
            }
        }
        nix::fcntl::renameat(Some(dir), tmp, Some(dir), name).map_err(|e| {
            let _ = nix::unistd::unlinkat(Some(dir), tmp, UnlinkatFlags::NoRemoveDir);
            format!("cannot move it into place: {}", e.desc())
        })
    }

    fn dir(&mut self, path: &[u8], meta: &FileMeta, opaque: bool) -> EntryResult {
        let pfd = self.parent_of(path)?;
        let (_, name) = split(path);
        match Self::lstat(pfd, name) {
            Some(st) if Self::is_dir(&st) => {
                if opaque {
                    self.forget_parent();
                    let fd = nix::fcntl::openat(
                        Some(pfd),
                        name,
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| format!("cannot open it: {}", e.desc()))?;
                    // SAFETY: openat just returned this descriptor.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    if nix::sys::stat::fstat(fd.as_raw_fd()).map(|s| s.st_dev).ok()
                        != Some(self.root_dev)
                    {
                        return Err("another file system is mounted there".into());
                    }
                    self.clear_dir(fd.as_raw_fd(), 0)
                        .map_err(|e| format!("cannot empty it: {}", e.desc()))?;
                }
            }
            other => {
                if other.is_some() {
                    self.forget_parent();
                    self.remove_tree(pfd, name, 0)
                        .map_err(|e| format!("cannot remove what is in its place: {}", e.desc()))?;
                }
                nix::sys::stat::mkdirat(Some(pfd), name, Mode::from_bits_truncate(0o700))
                    .map_err(|e| format!("cannot create it: {}", e.desc()))?;
            }
        }
        let fd = nix::fcntl::openat(
            Some(pfd),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("cannot open it: {}", e.desc()))?;
        // SAFETY: openat just returned this descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        nix::unistd::fchown(
            fd.as_raw_fd(),
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .and_then(|()| {
            nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(meta.mode & 0o7777))
        })
        .map_err(|e| format!("cannot set its owner or mode: {}", e.desc()))?;
        if self.dir_time_bytes + path.len() <= MAX_DIR_TIME_BYTES {
            self.dir_time_bytes += path.len();
            self.dir_times.push((path.to_vec(), *meta));
        }
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        path: &[u8],
        meta: &FileMeta,
        size: u64,
        r: &mut R,
        deadline: Option<Instant>,
    ) -> Result<EntryResult, WritebackError> {
        let (_, name) = split(path);
        let target = match self.parent_of(path) {
            Ok(pfd) => {
                let tmp = self.tmp_name();
                match nix::fcntl::openat(
                    Some(pfd),
                    tmp.as_slice(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                ) {
                    // SAFETY: openat just returned this descriptor.
                    Ok(fd) => Ok((pfd, tmp, unsafe { File::from_raw_fd(fd) })),
                    Err(e) => Err(format!("cannot create it: {}", e.desc())),
                }
            }
            Err(e) => Err(e),
        };
        // The data follows whether or not the file can be made: read it all.
        let mut out = target.as_ref().ok().map(|(_, _, f)| f);
        let mut write_err = None;
        let mut left = size;
        while left > 0 {
            if deadline.is_some_and(|d| Instant::now() > d) {
                self.drop_tmp(&target);
                return Err(WritebackError::Timeout(Duration::ZERO));
            }
            let want = left.min(self.buf.len() as u64) as usize;
            let n = match r.read(&mut self.buf[..want]) {
                Ok(0) => {
                    self.drop_tmp(&target);
                    return Err(WritebackError::Truncated(self.report.entries));
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.drop_tmp(&target);
                    return Err(WritebackError::Io(e));
                }
            };
            left -= n as u64;
            if let Some(mut f) = out {
                if let Err(e) = f.write_all(&self.buf[..n]) {
                    write_err = Some(format!("cannot write it: {e}"));
                    out = None;
                }
            }
        }
        let (pfd, tmp, f) = match target {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(e) = write_err {
            drop(f);
            let _ = nix::unistd::unlinkat(Some(pfd), tmp.as_slice(), UnlinkatFlags::NoRemoveDir);
            return Ok(Err(e));
        }
        if let Err(e) = Self::set_meta_fd(f.as_raw_fd(), meta) {
            drop(f);
            let _ = nix::unistd::unlinkat(Some(pfd), tmp.as_slice(), UnlinkatFlags::NoRemoveDir);
            return Ok(Err(format!(
                "cannot set its owner, mode or time: {}",
                e.desc()
            )));
        }
        drop(f);
        Ok(self.replace(pfd, &tmp, name))
    }

    fn drop_tmp(&self, target: &Result<(RawFd, Vec<u8>, File), String>) {
        if let Ok((pfd, tmp, _)) = target {
            let _ = nix::unistd::unlinkat(Some(*pfd), tmp.as_slice(), UnlinkatFlags::NoRemoveDir);
        }
    }

    fn symlink(&mut self, path: &[u8], meta: &FileMeta, target: &[u8]) -> EntryResult {
        let pfd = self.parent_of(path)?;
        let tmp = self.tmp_name();
        nix::unistd::symlinkat(target, Some(pfd), tmp.as_slice())
            .map_err(|e| format!("cannot create it: {}", e.desc()))?;
        if let Err(e) = Self::set_meta_at(pfd, &tmp, meta, false) {
            let _ = nix::unistd::unlinkat(Some(pfd), tmp.as_slice(), UnlinkatFlags::NoRemoveDir);
            return Err(format!("cannot set its owner or time: {}", e.desc()));
        }
        self.replace(pfd, &tmp, split(path).1)
    }

    fn hardlink(&mut self, path: &[u8], target: &[u8]) -> EntryResult {
        let (tparent, tname) = split(target);
        let tfd = self
            .open_dir(tparent, OFlag::O_PATH)
            .map_err(|e| format!("cannot open the directory of its target: {}", e.desc()))?;
        let pfd = self.parent_of(path)?;
        let tmp = self.tmp_name();
        // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never followed.
        nix::unistd::linkat(
            Some(tfd.as_raw_fd()),
            tname,
            Some(pfd),
            tmp.as_slice(),
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(|e| format!("cannot link it to {}: {}", show(target), e.desc()))?;
        self.replace(pfd, &tmp, split(path).1)
    }

    fn special(
        &mut self,
        path: &[u8],
        meta: &FileMeta,
        kind: SpecialKind,
        rdev: u64,
    ) -> EntryResult {
        let (sflag, dev) = match kind {
            SpecialKind::Fifo => (SFlag::S_IFIFO, 0),
            SpecialKind::Socket => (SFlag::S_IFSOCK, 0),
            // A 0/0 character device is what overlayfs takes for a whiteout.
            SpecialKind::CharDevice if rdev == 0 => {
                return Err("a 0:0 character device (that is a whiteout)".into())
            }
            SpecialKind::CharDevice => (SFlag::S_IFCHR, rdev),
            SpecialKind::BlockDevice => (SFlag::S_IFBLK, rdev),
        };
        let pfd = self.parent_of(path)?;
        let tmp = self.tmp_name();
        nix::sys::stat::mknodat(
            Some(pfd),
            tmp.as_slice(),
            sflag,
            Mode::from_bits_truncate(0o600),
            dev,
        )
        .map_err(|e| format!("cannot create it: {}", e.desc()))?;
        if let Err(e) = Self::set_meta_at(pfd, &tmp, meta, true) {
            let _ = nix::unistd::unlinkat(Some(pfd), tmp.as_slice(), UnlinkatFlags::NoRemoveDir);
            return Err(format!("cannot set its owner, mode or time: {}", e.desc()));
        }
        self.replace(pfd, &tmp, split(path).1)
    }

    fn whiteout(&mut self, path: &[u8]) -> EntryResult {
        let pfd = match self.parent_of(path) {
            Ok(fd) => fd,
            // Its directory is not there: neither is the path.
            Err(_)
                if matches!(
                    self.open_dir(split(path).0, OFlag::O_PATH),
                    Err(Errno::ENOENT)
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        self.forget_parent();
        let r = self.remove_tree(pfd, split(path).1, 0);
        r.map_err(|e| format!("cannot delete it: {}", e.desc()))
    }

    fn apply_dir_times(&mut self) {
        let times = std::mem::take(&mut self.dir_times);
        for (path, meta) in times.iter().rev() {
            let r = self.open_dir(path, OFlag::O_RDONLY).and_then(|fd| {
                nix::sys::stat::futimens(fd.as_raw_fd(), &TimeSpec::UTIME_OMIT, &mtime(meta))
            });
            if let Err(e) = r {
                log::debug!(
                    "write-back: cannot set the time of {}: {}",
                    show(path),
                    e.desc()
                );
            }
        }
    }
}

fn mtime(meta: &FileMeta) -> TimeSpec {
    TimeSpec::new(meta.mtime, i64::from(meta.mtime_nsec.min(999_999_999)))
}

fn entry_path(e: &WritebackEntry) -> &[u8] {
    match e {
        WritebackEntry::Dir { path, .. }
        | WritebackEntry::File { path, .. }
        | WritebackEntry::Symlink { path, .. }
        | WritebackEntry::Hardlink { path, .. }
        | WritebackEntry::Special { path, .. }
        | WritebackEntry::Whiteout { path } => path,
        WritebackEntry::End { .. } => &[],
    }
}

/// `End` is handled before entries are dispatched.
fn unreachable_end() -> EntryResult {
    Err("an end marker in the middle of the stream".into())
}

#[cfg(test)]
mod tests;

//! Applying a checked write-back stream, entry by entry, below the root: each entry is
//! applied whole or not at all (new files, links and nodes are made under a temporary
//! name in their directory and renamed into place), and one the host cannot apply is
//! counted and skipped while the stream goes on. Directory times are set last.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::SFlag;
use runvm_protocol::{
    read_frame_limited, FileMeta, FrameError, SpecialKind, WritebackEntry, MAX_WRITEBACK_FRAME_LEN,
};

use super::dirfd;
use super::path::{check_path, check_symlink_target, show, split};
use super::{Limits, Report, WritebackError};

/// How many entry errors are kept for the log.
const KEPT_ERRORS: usize = 8;
/// Most bytes of directory paths kept for setting their mtimes at the end.
const MAX_DIR_TIME_BYTES: usize = 64 << 20;

/// Why one entry was not applied (the stream goes on; the report keeps the message).
#[derive(Debug, thiserror::Error)]
enum EntryError {
    /// A file operation failed; `what` says which, of the entry's path ("it").
    #[error("{what}: {}", .source.desc())]
    Op { what: String, source: Errno },
    #[error("cannot write it: {0}")]
    Write(#[source] std::io::Error),
    /// The entry is one the host does not apply.
    #[error("{0}")]
    Refused(&'static str),
}

/// The error of the file operation `what`.
fn failed(what: impl Into<String>) -> impl FnOnce(Errno) -> EntryError {
    move |source| EntryError::Op {
        what: what.into(),
        source,
    }
}

type EntryResult = Result<(), EntryError>;

/// A file being written under its temporary name in its directory.
struct TempFile {
    dir: Rc<OwnedFd>,
    name: Vec<u8>,
    file: std::fs::File,
}

impl TempFile {
    /// Removes the temporary file (the entry is not applied).
    fn discard(self) {
        drop(self.file);
        let _ = dirfd::remove_file_at(self.dir.as_fd(), &self.name);
    }
}

pub(super) struct Applier<'a> {
    root: BorrowedFd<'a>,
    root_dev: u64,
    pub(super) report: Report,
    /// The last parent directory opened (`O_PATH`), by path.
    parent: Option<(Vec<u8>, Rc<OwnedFd>)>,
    /// Directories were removed or replaced since: reopen the parent next time (the old
    /// descriptor stays valid, for the entry that is being applied).
    parent_stale: bool,
    dir_times: Vec<(Vec<u8>, FileMeta)>,
    dir_time_bytes: usize,
    tmp_counter: u64,
    buf: Vec<u8>,
}

impl<'a> Applier<'a> {
    pub(super) fn new(root: BorrowedFd<'a>) -> Result<Self, WritebackError> {
        let root_dev = dirfd::device(root).map_err(|e| WritebackError::Io(e.into()))?;
        Ok(Self {
            root,
            root_dev,
            report: Report::default(),
            parent: None,
            parent_stale: false,
            dir_times: Vec::new(),
            dir_time_bytes: 0,
            tmp_counter: 0,
            buf: vec![0u8; 128 << 10],
        })
    }

    /// Reads and applies entries until the end marker, or the error that stops the
    /// stream.
    pub(super) fn run<R: Read>(
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
            checked(path)?;
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
                WritebackEntry::Symlink { meta, target, .. } => check_symlink_target(&target)
                    .map_err(EntryError::Refused)
                    .and_then(|()| self.symlink(&path, &meta, &target)),
                WritebackEntry::Hardlink { target, .. } => {
                    checked(&target)?;
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

    /// Opens directory `rel` below the root.
    fn open_dir(&self, rel: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
        dirfd::open_beneath(self.root, self.root_dev, rel, flags)
    }

    /// The parent directory of `path` (`O_PATH`), reusing the last one opened.
    fn parent_of(&mut self, path: &[u8]) -> Result<Rc<OwnedFd>, EntryError> {
        let (parent, _) = split(path);
        if let Some((p, fd)) = &self.parent {
            if p == parent && !self.parent_stale {
                return Ok(fd.clone());
            }
        }
        self.parent_stale = false;
        let fd = self
            .open_dir(parent, OFlag::O_PATH)
            .map_err(failed("cannot open its directory"))?;
        let fd = Rc::new(fd);
        self.parent = Some((parent.to_vec(), fd.clone()));
        Ok(fd)
    }

    /// Directories were removed or replaced: do not reuse the cached parent.
    fn forget_parent(&mut self) {
        self.parent_stale = true;
    }

    fn tmp_name(&mut self) -> Vec<u8> {
        self.tmp_counter += 1;
        format!(".runvm-wb.{}.{}", std::process::id(), self.tmp_counter).into_bytes()
    }

    fn remove_tree(&self, dir: BorrowedFd, name: &[u8]) -> nix::Result<()> {
        dirfd::remove_tree_at(dir, name, self.root_dev, 0)
    }

    /// Renames `tmp` over `name` in `dir`, first removing a directory that is in the way
    /// (a rename cannot replace one with a non-directory). On failure `tmp` is removed.
    fn replace(&mut self, dir: BorrowedFd, tmp: &[u8], name: &[u8]) -> EntryResult {
        if dirfd::is_dir_at(dir, name) {
            self.forget_parent();
            if let Err(e) = self.remove_tree(dir, name) {
                let _ = dirfd::remove_file_at(dir, tmp);
                return Err(failed("cannot remove the directory in its place")(e));
            }
        }
        dirfd::rename_at(dir, tmp, name).map_err(|e| {
            let _ = dirfd::remove_file_at(dir, tmp);
            failed("cannot move it into place")(e)
        })
    }

    /// Sets the metadata of the new name `tmp` in `dir` (with `set`) and renames it over
    /// the entry's name; `what` says which metadata, for the error.
    fn finish_node(
        &mut self,
        dir: BorrowedFd,
        tmp: &[u8],
        path: &[u8],
        what: &str,
        set: impl FnOnce() -> nix::Result<()>,
    ) -> EntryResult {
        if let Err(e) = set() {
            let _ = dirfd::remove_file_at(dir, tmp);
            return Err(failed(format!("cannot set its {what}"))(e));
        }
        self.replace(dir, tmp, split(path).1)
    }

    fn dir(&mut self, path: &[u8], meta: &FileMeta, opaque: bool) -> EntryResult {
        let pfd = self.parent_of(path)?;
        let pfd = pfd.as_fd();
        let (_, name) = split(path);
        match dirfd::lstat_at(pfd, name) {
            Some(st) if dirfd::is_dir(&st) => {
                if opaque {
                    self.forget_parent();
                    let fd = dirfd::open_dir_at(pfd, name, OFlag::O_RDONLY)
                        .map_err(failed("cannot open it"))?;
                    if dirfd::device(fd.as_fd()).ok() != Some(self.root_dev) {
                        return Err(EntryError::Refused("another file system is mounted there"));
                    }
                    dirfd::clear_dir(fd.as_fd(), self.root_dev, 0)
                        .map_err(failed("cannot empty it"))?;
                }
            }
            other => {
                if other.is_some() {
                    self.forget_parent();
                    self.remove_tree(pfd, name)
                        .map_err(failed("cannot remove what is in its place"))?;
                }
                dirfd::mkdir_at(pfd, name).map_err(failed("cannot create it"))?;
            }
        }
        let fd =
            dirfd::open_dir_at(pfd, name, OFlag::O_RDONLY).map_err(failed("cannot open it"))?;
        dirfd::set_owner_and_mode(fd.as_fd(), meta)
            .map_err(failed("cannot set its owner or mode"))?;
        if self.dir_time_bytes + path.len() <= MAX_DIR_TIME_BYTES {
            self.dir_time_bytes += path.len();
            self.dir_times.push((path.to_vec(), *meta));
        }
        Ok(())
    }

    /// A regular file: its `size` bytes of data follow the entry in `r`, and are read
    /// whether or not the file can be made. Errors of the stream stop it.
    fn file<R: Read>(
        &mut self,
        path: &[u8],
        meta: &FileMeta,
        size: u64,
        r: &mut R,
        deadline: Option<Instant>,
    ) -> Result<EntryResult, WritebackError> {
        let target = self.parent_of(path).and_then(|dir| {
            let name = self.tmp_name();
            match dirfd::create_file_at(dir.as_fd(), &name) {
                Ok(file) => Ok(TempFile { dir, name, file }),
                Err(e) => Err(failed("cannot create it")(e)),
            }
        });
        let mut out = target.as_ref().ok().map(|t| &t.file);
        let mut write_err = None;
        let mut left = size;
        let stream_err = loop {
            if left == 0 {
                break None;
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                break Some(WritebackError::Timeout(Duration::ZERO));
            }
            let want = left.min(self.buf.len() as u64) as usize;
            let n = match r.read(&mut self.buf[..want]) {
                Ok(0) => break Some(WritebackError::Truncated(self.report.entries)),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => break Some(WritebackError::Io(e)),
            };
            left -= n as u64;
            if let Some(mut f) = out {
                if let Err(e) = f.write_all(&self.buf[..n]) {
                    write_err = Some(EntryError::Write(e));
                    out = None;
                }
            }
        };
        if let Some(e) = stream_err {
            if let Ok(t) = target {
                t.discard();
            }
            return Err(e);
        }
        let t = match target {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(e) = write_err {
            t.discard();
            return Ok(Err(e));
        }
        if let Err(e) = dirfd::set_meta(t.file.as_fd(), meta) {
            t.discard();
            return Ok(Err(failed("cannot set its owner, mode or time")(e)));
        }
        let TempFile { dir, name, file } = t;
        drop(file);
        Ok(self.replace(dir.as_fd(), &name, split(path).1))
    }

    fn symlink(&mut self, path: &[u8], meta: &FileMeta, target: &[u8]) -> EntryResult {
        let pfd = self.parent_of(path)?;
        let tmp = self.tmp_name();
        dirfd::symlink_at(target, pfd.as_fd(), &tmp).map_err(failed("cannot create it"))?;
        self.finish_node(pfd.as_fd(), &tmp, path, "owner or time", || {
            dirfd::set_meta_at(pfd.as_fd(), &tmp, meta, false)
        })
    }

    fn hardlink(&mut self, path: &[u8], target: &[u8]) -> EntryResult {
        let (tparent, tname) = split(target);
        let tfd = self
            .open_dir(tparent, OFlag::O_PATH)
            .map_err(failed("cannot open the directory of its target"))?;
        let pfd = self.parent_of(path)?;
        let tmp = self.tmp_name();
        dirfd::link_at(tfd.as_fd(), tname, pfd.as_fd(), &tmp)
            .map_err(failed(format!("cannot link it to {}", show(target))))?;
        self.replace(pfd.as_fd(), &tmp, split(path).1)
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
                return Err(EntryError::Refused(
                    "a 0:0 character device (that is a whiteout)",
                ))
            }
            SpecialKind::CharDevice => (SFlag::S_IFCHR, rdev),
            SpecialKind::BlockDevice => (SFlag::S_IFBLK, rdev),
        };
        let pfd = self.parent_of(path)?;
        let tmp = self.tmp_name();
        dirfd::mknod_at(pfd.as_fd(), &tmp, sflag, dev).map_err(failed("cannot create it"))?;
        self.finish_node(pfd.as_fd(), &tmp, path, "owner, mode or time", || {
            dirfd::set_meta_at(pfd.as_fd(), &tmp, meta, true)
        })
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
        self.remove_tree(pfd.as_fd(), split(path).1)
            .map_err(failed("cannot delete it"))
    }

    /// Sets the directories' times, deepest last-made first (making their contents
    /// changed them).
    pub(super) fn apply_dir_times(&mut self) {
        let times = std::mem::take(&mut self.dir_times);
        for (path, meta) in times.iter().rev() {
            let r = self
                .open_dir(path, OFlag::O_RDONLY)
                .and_then(|fd| dirfd::set_mtime(fd.as_fd(), meta));
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

/// A path from the guest, checked; the error refuses the stream.
fn checked(path: &[u8]) -> Result<(), WritebackError> {
    check_path(path).map_err(|why| WritebackError::BadPath {
        path: show(path),
        why,
    })
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
    Err(EntryError::Refused(
        "an end marker in the middle of the stream",
    ))
}

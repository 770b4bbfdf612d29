//! Showing the guest's OOM kills in the container's host cgroup (cgroup v2), where
//! container engines look for them: containerd's runc shim (Docker's) and conmon
//! (Podman's) watch the `memory.events` of the cgroup the container's pid was in at
//! create, and report an OOM when its `oom_kill` count rises. The guest's kernel kills
//! the container's process, so the host cgroup's count would never rise by itself.
//!
//! So the monitor raises it, with a process of its own that the host's OOM killer
//! kills. For each report, for a few milliseconds, it moves the container's processes
//! (the monitor, with all its threads) down into a leaf [`VMM_LEAF`] and makes a sibling
//! [`VICTIM_LEAF`] whose `memory.max` is [`VICTIM_MEMORY_MAX`] (cgroup v2 lets a cgroup
//! give its children the memory controller only once it holds no process itself). A
//! forked victim joins [`VICTIM_LEAF`], asks to be killed first (`oom_score_adj` 1000)
//! and touches more memory than it may: the kernel kills it, and `memory.events` counts
//! the kill in the victim's cgroup and every ancestor, the container's cgroup included.
//! Then everything is put back: the processes in the container's cgroup, no leaf (so
//! whatever reads the container pid's cgroup later still finds the container's).
//!
//! The VMM is never at risk: an OOM in [`VICTIM_LEAF`] only ever chooses among that
//! cgroup's processes, and the victim's at most [`VICTIM_MEMORY_MAX`] come out of the
//! VMM's 64 MiB of headroom in the container's cgroup; were that cgroup itself ever
//! short, the victim's score (1000) makes it the one the kernel takes before the VMM.
//! The container's cgroup keeps its limits, its usage and its path; the two leaves are
//! recorded in `cgroup.json` before they are first made, so that a cleanup after a
//! monitor killed in the middle of a report removes them too.
//!
//! cgroup v1 is not done: its OOM notification (an eventfd on `memory.oom_control`)
//! fires only for an OOM of the cgroup itself or of an ancestor, never a child's, so
//! the container's cgroup would have to run out of memory itself, with the VMM in it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{io, write, CgroupError, HostCgroup, RECORD};

/// The leaf the container's host processes (the monitor) move into.
pub const VMM_LEAF: &str = "runvm-vmm";
/// The leaf where a victim is OOM-killed for each report.
pub const VICTIM_LEAF: &str = "runvm-oom";
/// `memory.max` of [`VICTIM_LEAF`]: all the victim may ever take from the container.
pub const VICTIM_MEMORY_MAX: u64 = 1 << 20;
/// What the victim tries to touch (well over [`VICTIM_MEMORY_MAX`]).
const VICTIM_TOUCH: usize = 16 << 20;
/// How long the victim may take to be killed before the monitor kills it itself.
const VICTIM_WAIT: Duration = Duration::from_secs(2);

/// The victim's exit codes when it was not OOM-killed.
const VICTIM_NO_SCORE: i32 = 10;
const VICTIM_NOT_MOVED: i32 = 11;
const VICTIM_NO_MEMORY: i32 = 12;
const VICTIM_SURVIVED: i32 = 13;

/// Errors showing an OOM kill on the host.
#[derive(Debug, thiserror::Error)]
pub enum OomReportError {
    #[error("the container's host cgroup is not on cgroup v2 (OOM kills are shown on v2 only)")]
    NotV2,
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot fork the OOM victim: {0}")]
    Fork(#[source] std::io::Error),
    #[error("the OOM victim in {dir} was not OOM-killed ({how})")]
    NotKilled { dir: PathBuf, how: String },
    #[error("{file} still counts {count} OOM kills after the victim's (the kill is not counted in the parent: is cgroup2 mounted with memory_localevents?)")]
    NotCounted { file: PathBuf, count: u64 },
}

/// Raises the `oom_kill` count of a container's v2 host cgroup, once per call.
#[derive(Debug)]
pub struct OomReporter {
    /// The container's v2 cgroup.
    dir: PathBuf,
    /// Where its record (`cgroup.json`) is.
    state_dir: PathBuf,
    /// Whether the two leaves are in the record.
    recorded: bool,
}

impl OomReporter {
    /// The reporter of the container whose cgroup is recorded in `state_dir`; `None`
    /// when it has no host cgroup.
    pub fn for_container(state_dir: &Path) -> Option<Result<Self, OomReportError>> {
        let cg = HostCgroup::load(state_dir)?;
        Some(match (cg.unified, cg.v2) {
            (true, Some(dir)) => Ok(Self {
                dir,
                state_dir: state_dir.to_path_buf(),
                recorded: false,
            }),
            _ => Err(OomReportError::NotV2),
        })
    }

    /// The container's cgroup directory (the one whose `memory.events` is watched).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `oom_kill` count of the container's cgroup.
    pub fn oom_kills(&self) -> u64 {
        let text = std::fs::read_to_string(self.dir.join("memory.events")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Has the host's OOM killer kill one victim in the container's cgroup, so that its
    /// `oom_kill` count rises by one; returns the count after. The container's cgroup is
    /// as before when it returns (its processes in it, no leaf), whatever happened.
    pub fn report(&mut self) -> Result<u64, OomReportError> {
        let vmm = self.dir.join(VMM_LEAF);
        let victims = self.dir.join(VICTIM_LEAF);
        if !self.recorded {
            // Recorded before they exist, so that every cleanup finds them.
            record_created(&self.state_dir, &[victims.clone(), vmm.clone()])?;
            self.recorded = true;
        }
        let before = self.oom_kills();
        let killed = self
            .set_aside(&vmm, &victims)
            .map_err(OomReportError::from)
            .and_then(|()| kill_a_victim(&victims));
        let restored = self.restore(&vmm, &victims);
        killed?;
        restored?;
        let after = self.oom_kills();
        if after <= before {
            return Err(OomReportError::NotCounted {
                file: self.dir.join("memory.events"),
                count: after,
            });
        }
        Ok(after)
    }

    /// Moves the container's processes into [`VMM_LEAF`], gives the children the memory
    /// controller and makes [`VICTIM_LEAF`] with its limit.
    fn set_aside(&self, vmm: &Path, victims: &Path) -> Result<(), CgroupError> {
        make_dir(vmm)?;
        move_processes(&self.dir, vmm)?;
        write(&self.dir, "cgroup.subtree_control", "+memory")?;
        make_dir(victims)?;
        write(victims, "memory.max", &VICTIM_MEMORY_MAX.to_string())?;
        // With swap, the victim's pages could go there instead of its being killed.
        if victims.join("memory.swap.max").exists() {
            write(victims, "memory.swap.max", "0")?;
        }
        Ok(())
    }

    /// Undoes [`Self::set_aside`], or as much of it as was done: the processes back in
    /// the container's cgroup, which gives no controller to children again, and no leaf.
    fn restore(&self, vmm: &Path, victims: &Path) -> Result<(), CgroupError> {
        remove_leaf(victims)?;
        write(&self.dir, "cgroup.subtree_control", "-memory")?;
        move_processes(vmm, &self.dir)?;
        remove_leaf(vmm)
    }
}

/// Moves every process of cgroup `from` (all its threads with it) into `to`; nothing
/// when `from` does not exist.
fn move_processes(from: &Path, to: &Path) -> Result<(), CgroupError> {
    let procs = from.join("cgroup.procs");
    let pids = match std::fs::read_to_string(&procs) {
        Ok(pids) => pids,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("read", &procs)(e)),
    };
    for pid in pids.split_whitespace() {
        match write(to, "cgroup.procs", pid) {
            // A process that has exited since.
            Err(CgroupError::Io { source, .. }) if source.raw_os_error() == Some(libc::ESRCH) => {}
            r => r?,
        }
    }
    Ok(())
}

/// Removes the leaf `dir` if it exists, waiting a little for a process that has just
/// left it (or died in it) to be gone.
fn remove_leaf(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + VICTIM_WAIT;
    loop {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            r => return r.map_err(io("remove cgroup", dir)),
        }
    }
}

fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io("create cgroup", dir)(e)),
        _ => Ok(()),
    }
}

/// Adds `dirs` (deepest first) at the head of the record's directories to remove, and
/// writes the record anew (a complete file or the old one, never half of one).
fn record_created(state_dir: &Path, dirs: &[PathBuf]) -> Result<(), CgroupError> {
    let record = state_dir.join(RECORD);
    let mut cg = HostCgroup::load(state_dir).ok_or_else(|| CgroupError::Io {
        what: "read",
        path: record.clone(),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    let missing: Vec<PathBuf> = dirs
        .iter()
        .filter(|d| !cg.created.contains(d))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    cg.created.splice(0..0, missing);
    let json = serde_json::to_vec(&cg).map_err(|e| io("record", state_dir)(e.into()))?;
    let tmp = state_dir.join(format!("{RECORD}.new"));
    std::fs::write(&tmp, json).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &record).map_err(io("replace", &record))
}

/// Forks a victim into the cgroup `victims` and waits until the OOM killer has killed it.
fn kill_a_victim(victims: &Path) -> Result<(), OomReportError> {
    let procs_path = victims.join("cgroup.procs");
    // Opened here: the victim, a fork of a process with threads, may not allocate.
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(|e| CgroupError::Io {
            what: "open",
            path: procs_path.clone(),
            source: e,
        })?;
    // SAFETY: the child runs only `victim_main`, which makes raw system calls on memory
    // and descriptors that exist before the fork and never returns; the parent goes on
    // as before.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(OomReportError::Fork(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        victim_main(procs.as_raw_fd());
    }
    drop(procs);
    let not_killed = |how: String| OomReportError::NotKilled {
        dir: victims.to_path_buf(),
        how,
    };
    let status = wait_for_victim(pid).map_err(|e| not_killed(format!("waitpid: {e}")))?;
    if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
        // The monitor's own SIGKILL after VICTIM_WAIT counts nowhere: the count tells.
        return Ok(());
    }
    let how = if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            VICTIM_NO_SCORE => "it could not set its oom_score_adj".into(),
            VICTIM_NOT_MOVED => "it could not join the cgroup".into(),
            VICTIM_NO_MEMORY => "it could not map memory".into(),
            VICTIM_SURVIVED => format!("it touched {VICTIM_TOUCH} bytes and lived"),
            c => format!("it exited {c}"),
        }
    } else {
        format!("wait status {status:#x}")
    };
    Err(not_killed(how))
}

/// Waits for the victim `pid`, killing it after [`VICTIM_WAIT`]; its wait status.
fn wait_for_victim(pid: libc::pid_t) -> std::io::Result<i32> {
    let deadline = Instant::now() + VICTIM_WAIT;
    let mut status = 0;
    loop {
        // SAFETY: waits for this process's own child, into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(status);
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        if Instant::now() >= deadline {
            // SAFETY: signals and reaps this process's own, unreaped, child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The victim: first in line for the OOM killer, into its cgroup, then more memory
/// than the cgroup allows. Only raw system calls: it is a fork of a process with threads.
fn victim_main(procs: RawFd) -> ! {
    // SAFETY: system calls on a path literal, a descriptor opened before the fork and a
    // private anonymous mapping this process makes; it ends with `_exit` or is killed.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"runvm-oom".as_ptr());
        let score = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if score < 0 || libc::write(score, b"1000".as_ptr().cast(), 4) != 4 {
            libc::_exit(VICTIM_NO_SCORE);
        }
        libc::close(score);
        if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
            libc::_exit(VICTIM_NOT_MOVED);
        }
        let mem = libc::mmap(
            std::ptr::null_mut(),
            VICTIM_TOUCH,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if mem == libc::MAP_FAILED {
            libc::_exit(VICTIM_NO_MEMORY);
        }
        let mem = mem.cast::<u8>();
        let mut offset = 0;
        while offset < VICTIM_TOUCH {
            std::ptr::write_volatile(mem.add(offset), 1);
            offset += 4096;
        }
        libc::_exit(VICTIM_SURVIVED)
    }
}

/// Tells when someone (the container engine's OOM watcher) has read a cgroup's
/// `memory.events` since it was made: an inotify watch for reads of that file.
#[derive(Debug)]
pub struct ReadWatch {
    inotify: OwnedFd,
}

impl ReadWatch {
    /// Watches reads of `dir`/memory.events from now on.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let file = dir.join("memory.events");
        let path = std::ffi::CString::new(file.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: creates a new descriptor, owned at once.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a watch on a valid descriptor, with a NUL-terminated path.
        if unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_ACCESS) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { inotify })
    }

    /// Waits until the file was read (true) or `until` has passed (false).
    pub fn wait_read(&self, until: Instant) -> bool {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: polls one valid descriptor through a local pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r > 0 {
                return true;
            }
            if r == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(dir: &Path, created: Vec<PathBuf>) {
        let cg = HostCgroup {
            path: "/c".into(),
            v2: Some("/sys/fs/cgroup/c".into()),
            created,
            unified: true,
            ..Default::default()
        };
        std::fs::write(dir.join(RECORD), serde_json::to_vec(&cg).unwrap()).unwrap();
    }

    #[test]
    fn the_leaves_are_recorded_first_in_line_for_removal_once() {
        let state = tempfile::tempdir().unwrap();
        recorded(state.path(), vec!["/sys/fs/cgroup/c".into()]);
        let leaves = [
            PathBuf::from("/sys/fs/cgroup/c").join(VICTIM_LEAF),
            PathBuf::from("/sys/fs/cgroup/c").join(VMM_LEAF),
        ];
        record_created(state.path(), &leaves).unwrap();
        record_created(state.path(), &leaves).unwrap();
        let cg = HostCgroup::load(state.path()).unwrap();
        assert_eq!(
            cg.created,
            [
                leaves[0].clone(),
                leaves[1].clone(),
                "/sys/fs/cgroup/c".into()
            ]
        );
        assert!(!state.path().join(format!("{RECORD}.new")).exists());
    }

    #[test]
    fn undoing_what_was_never_done_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = dir.path().join(VMM_LEAF);
        move_processes(&leaf, dir.path()).unwrap();
        remove_leaf(&leaf).unwrap();
        std::fs::create_dir(&leaf).unwrap();
        remove_leaf(&leaf).unwrap();
        assert!(!leaf.exists());
    }

    #[test]
    fn a_reporter_needs_a_v2_cgroup() {
        let state = tempfile::tempdir().unwrap();
        assert!(OomReporter::for_container(state.path()).is_none());
        recorded(state.path(), Vec::new());
        let r = OomReporter::for_container(state.path()).unwrap().unwrap();
        assert_eq!(r.dir(), Path::new("/sys/fs/cgroup/c"));
        let v1 = HostCgroup {
            v1: vec![("memory".into(), "/sys/fs/cgroup/memory/c".into())],
            ..Default::default()
        };
        std::fs::write(state.path().join(RECORD), serde_json::to_vec(&v1).unwrap()).unwrap();
        assert!(matches!(
            OomReporter::for_container(state.path()),
            Some(Err(OomReportError::NotV2))
        ));
    }

    #[test]
    fn a_read_of_the_watched_file_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.events"), "oom_kill 1\n").unwrap();
        let watch = ReadWatch::new(dir.path()).unwrap();
        let soon = || Instant::now() + Duration::from_millis(50);
        assert!(!watch.wait_read(soon()), "nothing read yet");
        std::fs::read_to_string(dir.path().join("memory.events")).unwrap();
        assert!(watch.wait_read(soon()));
    }
}

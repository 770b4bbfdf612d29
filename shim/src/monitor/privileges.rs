//! What the monitor keeps once its VM is set up: no capability, `no_new_privs`, no core
//! dump and no descriptor it did not open itself.
//!
//! The monitor runs the guest through KVM and parses every byte the guest sends, so it is
//! the process an escaping guest would take over. Everything that needs privilege happens
//! before [`drop_all`]: joining the network namespace and the cgroup, the TAPs and tc
//! rules, the mount points in the root filesystem, virtiofsd (which keeps the
//! capabilities the container has, in its own process). After it, the monitor keeps:
//!
//! - a jailed monitor, a uid and gid of its own as its real, effective and saved ids
//!   ([`MONITOR_ID_BASE`] plus its pid, so that no two live monitors share one), and no
//!   supplementary group: it can signal no process but itself and the children it forks
//!   later (not the host's root processes, containerd, virtiofsd or another container's
//!   monitor), and the per-user limits are its own; its file-system uid and gid stay 0, so
//!   that it still opens and writes the root-owned files it uses at run time (the state
//!   directory's started/exit files, `/dev/kvm`, the guest kernel, the container's cgroup
//!   files: `cpu.max` at start, the OOM report's leaf cgroups), which needs no capability.
//!   (The foreground `runvm run`, not jailed, keeps uid 0: its hooks run after the VM.)
//!   Processes the monitor connects to over a UNIX socket (the host sockets the container
//!   binds) see its own uid as the peer's;
//! - no capability in any set (effective, permitted, inheritable, ambient, bounding), with
//!   the securebits locked so that uid 0 never brings them back (`SECBIT_NOROOT`);
//! - `no_new_privs` (nothing it could execute gains privileges);
//! - not dumpable: no core file of guest memory, and only a process with
//!   `CAP_SYS_PTRACE` (the host's `runvm`, containerd) can read its `/proc` files or
//!   trace it;
//! - the descriptors it opened (all close-on-exec) and its stdio: every other one above
//!   2 was inherited from the caller and is closed.
//!
//! The privileged work left for later is done by the cleanup guard, forked before the
//! drop ([`super::guard`]): undoing the network plumbing (deleting ingress qdiscs needs
//! `CAP_NET_ADMIN`) when the VM has stopped or the monitor died.
//!
//! Just before the drop, the monitor (but the foreground `runvm run`'s) moves into a
//! mount namespace whose root is not the host's ([`super::jail`]); the files it names
//! after the drop are bound there at their own paths.
//!
//! Capabilities and `no_new_privs`, like the mount namespace and the root, belong to a
//! thread, and a new thread copies them from the one that makes it. So the monitor
//! jails itself and drops them before it starts any thread, and [`drop_all`] checks
//! every thread of the process: a thread still privileged is a failure to start the
//! container, never a guest that runs with privileges. ([`drop_in_this_thread`] is
//! there for a thread that must drop its own.)

use std::path::PathBuf;

/// Errors dropping the monitor's privileges: the container does not start.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot drop capability {cap} from the bounding set: {source}")]
    Bounding {
        cap: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot clear the ambient capabilities: {0}")]
    Ambient(#[source] std::io::Error),
    #[error("cannot lock the securebits (SECBIT_NOROOT): {0}")]
    Securebits(#[source] std::io::Error),
    #[error("cannot clear the capabilities (capset): {0}")]
    Capset(#[source] std::io::Error),
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(#[source] std::io::Error),
    #[error("cannot run the monitor as uid and gid {id}: {what}: {source}")]
    OwnId {
        id: u32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the monitor non-dumpable: {0}")]
    Dumpable(#[source] std::io::Error),
    #[error("cannot read {path}: {source}")]
    Proc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot close inherited descriptor {fd}: {source}")]
    Close {
        fd: i32,
        #[source]
        source: std::io::Error,
    },
    /// A thread of the monitor kept privileges after the drop (its status line).
    #[error("thread {tid} ({name}) of the monitor still has {line:?} after the privilege drop; the container was not started")]
    Kept {
        tid: u32,
        name: String,
        line: String,
    },
}

/// Whether uid 0 without capabilities can still use `dir`: search every directory from
/// the root down to it, and write in it (where the monitor binds its sockets). The error
/// names the first directory that stops it, with its owner and mode.
pub fn reachable_unprivileged(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let mut dirs: Vec<&std::path::Path> = dir.ancestors().collect();
    dirs.reverse();
    for d in dirs {
        let m = std::fs::metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        let bits = if m.uid() == 0 {
            m.mode() >> 6
        } else if m.gid() == 0 {
            m.mode() >> 3
        } else {
            m.mode()
        };
        let need = if d == dir { 0o3 } else { 0o1 };
        if bits & need != need {
            return Err(format!(
                "{} ({}:{} {:o}) is not {} by its owner without CAP_DAC_OVERRIDE",
                d.display(),
                m.uid(),
                m.gid(),
                m.mode() & 0o7777,
                if d == dir {
                    "writable and searchable"
                } else {
                    "searchable"
                }
            ));
        }
    }
    Ok(())
}

/// The first uid and gid of jailed monitors: a monitor's is this plus its pid (below 2^22),
/// above the ranges container engines give user namespaces (systemd's end at 0x6fffffff)
/// and below 2^31. Files never get it: the monitor's file-system ids stay 0.
pub const MONITOR_ID_BASE: u32 = 0x7e00_0000;

/// The uid and gid of the calling monitor once jailed ([`take_own_id`]).
pub fn own_id() -> u32 {
    MONITOR_ID_BASE + std::process::id()
}

/// securebits: a uid change leaves the capability sets as they are.
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;

/// Makes `id` the calling thread's real, effective and saved uid and gid, with no
/// supplementary groups, while its file-system uid and gid stay 0 (see the module
/// comment). Needs `CAP_SETUID`, `CAP_SETGID` and `CAP_SETPCAP`; call it before
/// [`drop_in_this_thread`], with no other thread (the ids belong to a thread, and a
/// thread started later copies them).
pub fn take_own_id(id: u32) -> Result<(), PrivilegeError> {
    let err = |what: &'static str, source| PrivilegeError::OwnId { id, what, source };
    let last = std::io::Error::last_os_error;
    // The capabilities survive the change of uid: setfsuid(0) below needs CAP_SETUID.
    // (drop_in_this_thread replaces these bits with its own.)
    prctl(libc::PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP).map_err(|source| {
        err(
            "keep the capabilities across it (SECBIT_NO_SETUID_FIXUP)",
            source,
        )
    })?;
    // SAFETY: raw id system calls on this thread with integer arguments (setgroups with
    // an empty list reads no memory); no other thread exists to disagree with it.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0 {
            return Err(err("setgroups", last()));
        }
        if libc::syscall(libc::SYS_setresgid, id, id, id) != 0 {
            return Err(err("setresgid", last()));
        }
        if libc::syscall(libc::SYS_setresuid, id, id, id) != 0 {
            return Err(err("setresuid", last()));
        }
        libc::syscall(libc::SYS_setfsuid, 0);
        libc::syscall(libc::SYS_setfsgid, 0);
        // setfsuid(-1) changes nothing and says what the id is.
        if libc::syscall(libc::SYS_setfsuid, u32::MAX) != 0
            || libc::syscall(libc::SYS_setfsgid, u32::MAX) != 0
        {
            return Err(err(
                "keep file-system uid and gid 0",
                std::io::Error::from_raw_os_error(libc::EPERM),
            ));
        }
    }
    Ok(())
}

/// `_LINUX_CAPABILITY_VERSION_3` (linux/capability.h): two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// securebits (linux/securebits.h): uid 0 gets no capabilities from exec or setuid, no
/// capability may be made ambient, and neither can be changed back.
const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> std::io::Result<libc::c_int> {
    // SAFETY: prctl with integer arguments only; the options used here read no memory.
    let r = unsafe { libc::prctl(option, arg2, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The highest capability number the kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        // Past every capability Linux has today; the drop stops at the first number
        // the kernel does not know.
        .unwrap_or(63)
}

/// Drops every capability of the calling thread (bounding set first, while it may still,
/// then ambient, securebits, the effective/permitted/inheritable sets) and sets its
/// `no_new_privs`. Threads it makes afterwards inherit all of it.
pub fn drop_in_this_thread() -> Result<(), PrivilegeError> {
    for cap in 0..=last_cap() {
        if let Err(e) = prctl(libc::PR_CAPBSET_DROP, cap.into()) {
            // Without CAP_SETPCAP (a second call) the kernel refuses even a drop of what
            // is gone: only a capability still in the set is an error.
            match prctl(libc::PR_CAPBSET_READ, cap.into()) {
                Ok(0) => {}
                // Past the last capability this kernel knows.
                Err(r) if r.raw_os_error() == Some(libc::EINVAL) => break,
                _ => return Err(PrivilegeError::Bounding { cap, source: e }),
            }
        }
    }
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )
    .map_err(PrivilegeError::Ambient)?;
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    if let Err(e) = prctl(libc::PR_SET_SECUREBITS, bits) {
        // A second call (no CAP_SETPCAP any more) finds them set already.
        let now = prctl(libc::PR_GET_SECUREBITS, 0).unwrap_or(0) as libc::c_ulong;
        if now & bits != bits {
            return Err(PrivilegeError::Securebits(e));
        }
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a version-3 header and two data structs, both valid here.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(PrivilegeError::Capset(std::io::Error::last_os_error()));
    }
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(PrivilegeError::NoNewPrivs)?;
    Ok(())
}

/// Drops the monitor's privileges for good: closes the descriptors above 2 it inherited
/// (those without close-on-exec, apart from `keep`), takes `own_id` as its uid and gid
/// ([`take_own_id`]) if given, drops the calling thread's capabilities, makes the process
/// non-dumpable, then checks that every thread of the process has neither capability nor
/// a missing `no_new_privs` (nor, with `own_id`, another uid or gid). Call it before
/// starting any thread.
pub fn drop_all(keep: &[i32], own_id: Option<u32>) -> Result<(), PrivilegeError> {
    close_inherited(keep)?;
    if let Some(id) = own_id {
        take_own_id(id)?;
    }
    drop_in_this_thread()?;
    prctl(libc::PR_SET_DUMPABLE, 0).map_err(PrivilegeError::Dumpable)?;
    if let Some(kept) = first_privileged_thread(own_id)? {
        return Err(kept);
    }
    log::debug!("monitor: privileges dropped");
    Ok(())
}

/// Closes every descriptor above 2 that is not close-on-exec and not in `keep`: runvm
/// opens all of its own close-on-exec, so those were inherited from whoever started
/// runvm (a leaked pipe, a preserved descriptor runvm does not pass on).
fn close_inherited(keep: &[i32]) -> Result<(), PrivilegeError> {
    let path = PathBuf::from("/proc/self/fd");
    let proc_err = |source| PrivilegeError::Proc {
        path: path.clone(),
        source,
    };
    // Collected first: the listing's own descriptor is open while it is read.
    let fds: Vec<i32> = std::fs::read_dir(&path)
        .map_err(proc_err)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    close_if_inherited(&fds, keep)
}

/// Of `fds`, closes those above 2 that are not close-on-exec and not in `keep`.
fn close_if_inherited(fds: &[i32], keep: &[i32]) -> Result<(), PrivilegeError> {
    for &fd in fds.iter().filter(|fd| **fd > 2 && !keep.contains(fd)) {
        // SAFETY: F_GETFD reads a descriptor's flags; a closed one gives EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || flags & libc::FD_CLOEXEC != 0 {
            continue;
        }
        // SAFETY: an inherited descriptor that nothing in this process owns (everything
        // runvm opens is close-on-exec).
        if unsafe { libc::close(fd) } != 0 {
            return Err(PrivilegeError::Close {
                fd,
                source: std::io::Error::last_os_error(),
            });
        }
        log::debug!("monitor: closed inherited descriptor {fd}");
    }
    Ok(())
}

/// The first thread of this process that still has a capability, lacks `no_new_privs`
/// or (with `own_id`) has other ids, as the error that says so.
fn first_privileged_thread(own_id: Option<u32>) -> Result<Option<PrivilegeError>, PrivilegeError> {
    let tasks = PathBuf::from("/proc/self/task");
    let entries = std::fs::read_dir(&tasks).map_err(|source| PrivilegeError::Proc {
        path: tasks.clone(),
        source,
    })?;
    for entry in entries.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread that ended meanwhile has nothing left to drop.
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if let Some(line) = privileged_line(&status).or_else(|| other_ids(&status, own_id?)) {
            let name = status
                .lines()
                .find_map(|l| l.strip_prefix("Name:"))
                .unwrap_or("")
                .trim()
                .to_string();
            return Ok(Some(PrivilegeError::Kept {
                tid,
                name,
                line: line.to_string(),
            }));
        }
    }
    Ok(None)
}

/// The line of a `/proc/…/status` that shows a privilege: a capability set that is not
/// empty, or `NoNewPrivs` not set.
fn privileged_line(status: &str) -> Option<&str> {
    status.lines().find(|l| match l.split_once(':') {
        Some(("CapInh" | "CapPrm" | "CapEff" | "CapBnd" | "CapAmb", v)) => {
            u64::from_str_radix(v.trim(), 16) != Ok(0)
        }
        Some(("NoNewPrivs", v)) => v.trim() != "1",
        _ => false,
    })
}

/// The `Uid:` or `Gid:` line of a thread's status whose real, effective or saved id is not
/// `id` or whose file-system id is not 0.
fn other_ids(status: &str, id: u32) -> Option<&str> {
    let want = [id, id, id, 0];
    status.lines().find(|l| match l.split_once(':') {
        Some(("Uid" | "Gid", v)) => {
            let ids: Vec<Option<u32>> = v.split_whitespace().map(|n| n.parse().ok()).collect();
            ids != want.map(Some)
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DROPPED_STATUS: &str = "Name:\trunvm-vmm\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n";

    #[test]
    fn a_directory_under_one_its_owner_cannot_search_is_not_reachable() {
        use std::os::unix::fs::PermissionsExt;
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("state/run");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(reachable_unprivileged(&dir), Ok(()));
        let state = top.path().join("state");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = reachable_unprivileged(&dir).unwrap_err();
        assert!(err.contains("state (0:0 600) is not searchable"), "{err}");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).unwrap();
        assert!(reachable_unprivileged(&dir)
            .unwrap_err()
            .contains("not writable and searchable"));
    }

    #[test]
    fn a_status_with_any_capability_or_without_no_new_privs_is_privileged() {
        assert_eq!(privileged_line(DROPPED_STATUS), None);
        let bnd = DROPPED_STATUS.replace("CapBnd:\t0000000000000000", "CapBnd:\t0000000000001000");
        assert_eq!(privileged_line(&bnd), Some("CapBnd:\t0000000000001000"));
        let nnp = DROPPED_STATUS.replace("NoNewPrivs:\t1", "NoNewPrivs:\t0");
        assert_eq!(privileged_line(&nnp), Some("NoNewPrivs:\t0"));
        let garbled = DROPPED_STATUS.replace("CapEff:\t0000000000000000", "CapEff:\tzz");
        assert_eq!(privileged_line(&garbled), Some("CapEff:\tzz"));
    }

    /// Drops the privileges of a thread of its own (the test process keeps its own) and
    /// reads them back: every set empty, `no_new_privs`, the securebits locked; a second
    /// drop is no error. Needs to run with capabilities (CI runs as root).
    #[test]
    fn a_thread_that_drops_keeps_nothing() {
        let status = std::thread::spawn(|| {
            drop_in_this_thread().expect("first drop");
            drop_in_this_thread().expect("a second drop is no error");
            // SAFETY: gettid has no arguments.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) };
            let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
            let bits = prctl(libc::PR_GET_SECUREBITS, 0).unwrap() as libc::c_ulong;
            (status, bits)
        })
        .join()
        .unwrap();
        assert_eq!(privileged_line(&status.0), None, "{}", status.0);
        assert!(
            status.0.contains("CapBnd:\t0000000000000000"),
            "{}",
            status.0
        );
        assert_eq!(status.1 & SECBIT_NOROOT_LOCKED, SECBIT_NOROOT_LOCKED);
    }

    #[test]
    fn a_status_with_other_ids_than_the_monitors_own_is_privileged() {
        let own = "Uid:\t7\t7\t7\t0\nGid:\t7\t7\t7\t0\n";
        assert_eq!(other_ids(own, 7), None);
        assert_eq!(
            other_ids("Uid:\t7\t7\t0\t0\nGid:\t7\t7\t7\t0\n", 7),
            Some("Uid:\t7\t7\t0\t0")
        );
        assert_eq!(
            other_ids("Uid:\t7\t7\t7\t0\nGid:\t7\t7\t7\t7\n", 7),
            Some("Gid:\t7\t7\t7\t7")
        );
    }

    /// In a forked child (ids belong to a thread; the test's other threads keep theirs):
    /// with its own id the child still writes in a root-only directory as root, but can
    /// signal neither its root parent nor init, and cannot get uid 0 back.
    #[test]
    fn with_its_own_id_the_monitor_writes_as_root_but_signals_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let file = std::ffi::CString::new(dir.path().join("f").to_str().unwrap()).unwrap();
        let id = MONITOR_ID_BASE + 12_345;
        // SAFETY: the child makes raw system calls only (take_own_id's, open, kill,
        // getpid) and ends with _exit; the parent waits for it.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: as above; each step that goes wrong exits with its own code.
            unsafe {
                let parent = libc::getppid();
                if take_own_id(id).is_err() || drop_in_this_thread().is_err() {
                    libc::_exit(10);
                }
                let fd = libc::open(file.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
                if fd < 0 {
                    libc::_exit(11);
                }
                if libc::kill(parent, 0) == 0 || libc::kill(1, 0) == 0 {
                    libc::_exit(12);
                }
                if libc::kill(libc::getpid(), 0) != 0 {
                    libc::_exit(13);
                }
                if libc::syscall(libc::SYS_setresuid, 0, 0, 0) == 0 {
                    libc::_exit(14);
                }
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "{status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "the step that went wrong");
        use std::os::unix::fs::MetadataExt;
        let made = std::fs::metadata(dir.path().join("f")).unwrap();
        assert_eq!((made.uid(), made.gid()), (0, 0));
    }

    #[test]
    fn inherited_descriptors_are_closed_and_close_on_exec_ones_are_not() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        // SAFETY: dup(2) of a descriptor we own: the copy is not close-on-exec, as an
        // inherited one would be.
        let inherited = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&f)) };
        // SAFETY: likewise, a second one that `keep` names.
        let kept = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&f)) };
        assert!(inherited > 2 && kept > 2);
        let own = std::os::fd::AsRawFd::as_raw_fd(&f);
        // Only these: other tests' descriptors are not this test's to close.
        close_if_inherited(&[0, 1, 2, own, inherited, kept], &[kept]).unwrap();
        // SAFETY: F_GETFD on descriptor numbers only.
        unsafe {
            assert_eq!(libc::fcntl(inherited, libc::F_GETFD), -1, "closed");
            assert!(libc::fcntl(kept, libc::F_GETFD) >= 0, "kept");
            assert!(
                libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_GETFD) >= 0,
                "close-on-exec: runvm's own"
            );
            libc::close(kept);
        }
    }
}

//! virtiofsd for one container: started by the monitor at `start`, just before the VM is
//! built (the VMM connects to it then), in a mount namespace of its own where the share's
//! directory is staged, and ended with the monitor on every path.
//!
//! Staging happens in the child between `fork` and `exec` (async-signal-safe system calls
//! only, every path prepared before): a new mount namespace with everything private, a
//! small tmpfs on the share directory (`<runtime>/share`, empty on the host), one
//! bind mount per [`Entry`] in it (recursive for `rbind`), each made `nosuid,nodev` (and
//! read-only ones read-only) recursively with `mount_setattr`, and the tmpfs itself made
//! read-only, so that the guest cannot add entries at the top of its share. (`nosuid` and
//! `nodev` only bind virtiofsd's own opens, which already refuse device nodes: the files
//! the guest makes also exist at their host paths, bound by the capabilities below.) Nothing is mounted on the host, so
//! nothing is left to unmount: the namespace goes with the daemon.
//!
//! virtiofsd then sandboxes itself (its own namespaces and `pivot_root` into the share,
//! seccomp `kill`), keeps only the capabilities the container has of those it uses,
//! refuses file owners the container could not give ([`forbidden_owners`]), and
//! serves exactly one connection, the VMM's: it exits when the VMM closes it. The monitor
//! also kills it when it ends (and the kernel does, `PR_SET_PDEATHSIG`, if the monitor is
//! SIGKILLed).

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use runvm_protocol::{IdMapping, LinuxSpec, ProcessSpec, VIRTIOFSD_FLAGS};

use super::{Entry, EntryKind, SharePlan};

/// Capabilities virtiofsd keeps by default that bound what the guest can do to host
/// files, with the container capability each stands for.
const BOUNDED_CAPS: &[(&str, &str)] = &[
    ("CAP_CHOWN", "chown"),
    ("CAP_DAC_OVERRIDE", "dac_override"),
    ("CAP_FOWNER", "fowner"),
    ("CAP_FSETID", "fsetid"),
    ("CAP_MKNOD", "mknod"),
    ("CAP_SETFCAP", "setfcap"),
];

/// Open files virtiofsd may hold: it keeps one per inode the guest looked up where the
/// file system cannot give file handles (overlayfs without `nfs_export`). Where runvm
/// lacks `CAP_SYS_RESOURCE` (runvm itself in a container), the hard limit it has.
const RLIMIT_NOFILE: u64 = 1 << 19;

/// Errors starting virtiofsd.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create the virtio-fs socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the share directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build virtiofsd's setuid guard: {0}")]
    Filter(#[source] crate::seccomp::SeccompError),
    #[error("a share path contains a NUL byte: {0}")]
    Nul(PathBuf),
    #[error("cannot start virtiofsd ({program}) with the container's share staged in its mount namespace (binds of {sources}): {source}")]
    Spawn {
        program: PathBuf,
        sources: String,
        source: std::io::Error,
    },
}

/// A running virtiofsd, killed and reaped when dropped.
pub struct Virtiofsd {
    child: Child,
    /// Where the VMM connects.
    pub socket: PathBuf,
    /// virtiofsd's stderr, until [`Virtiofsd::read_log`] reads it.
    log: Option<std::process::ChildStderr>,
}

/// The `--modcaps` words that drop what the container lacks (`None` if it lacks nothing).
pub fn modcaps(bounding: &[String]) -> Option<String> {
    let dropped: Vec<String> = BOUNDED_CAPS
        .iter()
        .filter(|(cap, _)| !bounding.iter().any(|b| b == cap))
        .map(|(_, word)| format!("-{word}"))
        .collect();
    (!dropped.is_empty()).then(|| format!("--modcaps={}", dropped.join(":")))
}

/// The owners a container's files may get from its processes without `CAP_CHOWN`,
/// `CAP_SETUID` or `CAP_SETGID`: root (the guest init makes mount points, and an exec may
/// run as root) and the process's user and groups. With a user namespace, the ids it maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    pub uid: u32,
    /// The process's group and its additional groups.
    pub gids: Vec<u32>,
    /// The container's user namespace (`linux.uidMappings`), empty without one.
    pub uid_mappings: Vec<IdMapping>,
    /// `linux.gidMappings`.
    pub gid_mappings: Vec<IdMapping>,
}

impl Owners {
    /// The owners of the files of a container whose main process is `process`.
    pub fn of(process: &ProcessSpec, linux: &LinuxSpec) -> Owners {
        let mut gids = vec![process.gid];
        gids.extend(&process.additional_gids);
        Owners {
            uid: process.uid,
            gids,
            uid_mappings: linux.uid_mappings.clone(),
            gid_mappings: linux.gid_mappings.clone(),
        }
    }
}

/// The `--translate-uid`/`--translate-gid` words that refuse (`EPERM`) a file owner the
/// container could not give. virtiofsd creates each file as the uid and gid the guest
/// names in the request, so a guest root could make files owned by anyone: under runc a
/// process needs `CAP_SETUID` (to act as another user) or `CAP_CHOWN` (to give a file
/// away) for that, so without both only root's and the process's uid are allowed; likewise
/// gids without `CAP_SETGID` and `CAP_CHOWN`. In a user namespace every capability stops at
/// its map ([`mapped_owners`]).
pub fn forbidden_owners(bounding: &[String], owners: &Owners) -> Vec<String> {
    if !owners.uid_mappings.is_empty() {
        let mut words = mapped_owners("uid", &owners.uid_mappings);
        words.extend(mapped_owners("gid", &owners.gid_mappings));
        return words;
    }
    let has = |cap: &str| bounding.iter().any(|b| b == cap);
    let single = |ids: &[u32]| -> Vec<Range<u64>> {
        ids.iter()
            .map(|&a| u64::from(a)..u64::from(a) + 1)
            .collect()
    };
    let mut words = Vec::new();
    if !has("CAP_CHOWN") && !has("CAP_SETUID") {
        words.extend(forbid_outside("uid", &single(&[0, owners.uid])));
    }
    if !has("CAP_CHOWN") && !has("CAP_SETGID") {
        let mut gids = owners.gids.clone();
        gids.push(0);
        words.extend(forbid_outside("gid", &single(&gids)));
    }
    words
}

/// The owners a container with a user namespace may give: the host ids of its `maps`
/// only, as under runc, where its capabilities end at its map. The guest sees the host's
/// ids, so these are the ids its kernel sends. The guest's root, which makes the
/// container's mount points before the workload enters its namespace, creates them as the
/// container's root (`guest:0:<host id of container root>:1`), as runc does; with no
/// container root mapped, it may create nothing.
fn mapped_owners(kind: &str, maps: &[IdMapping]) -> Vec<String> {
    let mut allowed: Vec<Range<u64>> = maps.iter().map(IdMapping::host_ids).collect();
    let mut words = Vec::new();
    let root_is_mapped = allowed.iter().any(|r| r.contains(&0));
    if let Some(host_root) = IdMapping::host_of(maps, 0).filter(|_| !root_is_mapped) {
        words.push(format!("--translate-{kind}=guest:0:{host_root}:1"));
        allowed.push(0..1);
    }
    words.extend(forbid_outside(kind, &allowed));
    words
}

/// `--translate-<kind>=forbid-guest:<first>:<count>` for every id outside the `allowed`
/// ranges, up to 2^32-2: -1 means "unchanged" and virtiofsd's ranges end below 2^32.
fn forbid_outside(kind: &str, allowed: &[Range<u64>]) -> Vec<String> {
    let last = u64::from(u32::MAX);
    let mut allowed = allowed.to_vec();
    allowed.sort_unstable_by_key(|r| (r.start, r.end));
    let mut words = Vec::new();
    let mut next: u64 = 0;
    for Range { start, end } in allowed.into_iter().chain(std::iter::once(last..last)) {
        let start = start.min(last);
        if start > next {
            words.push(format!(
                "--translate-{kind}=forbid-guest:{next}:{}",
                start - next
            ));
        }
        next = next.max(end);
    }
    words
}

/// Where the container lacks `CAP_FSETID`, a seccomp filter virtiofsd runs under (stacked
/// under its own) that refuses (`EPERM`) every mode with the setuid or setgid bit in a
/// `chmod`, a creating `open` and a `mknod`, and takes `openat2` away (`ENOSYS`: its mode
/// is in memory a filter cannot read; virtiofsd then uses `openat`). virtiofsd changes
/// modes as root, the owner of what the guest's root creates, and an owner may set those
/// bits whatever its capabilities (so runc would let such a container set them too): the
/// filter is what keeps setuid and setgid files from a container without `CAP_FSETID` off
/// the host. (Stricter than runc: a `chmod` that keeps an existing setuid bit is refused
/// too; directories keep their setgid bit, `mkdir` is not filtered.)
pub fn fsetid_guard(bounding: &[String]) -> Result<Option<Vec<libc::sock_filter>>, DaemonError> {
    use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp};
    if bounding.iter().any(|c| c == "CAP_FSETID") {
        return Ok(None);
    }
    let eperm = ScmpAction::Errno(libc::EPERM);
    let mut rules = Vec::new();
    for (name, mode_arg) in [
        ("chmod", 1),
        ("fchmod", 1),
        ("fchmodat", 2),
        ("fchmodat2", 2),
        ("creat", 1),
        ("open", 2),
        ("openat", 3),
        ("mknod", 1),
        ("mknodat", 2),
    ] {
        for bit in [libc::S_ISUID, libc::S_ISGID] {
            let bit = u64::from(bit);
            let cmp = ScmpArgCompare::new(mode_arg, ScmpCompareOp::MaskedEqual(bit), bit);
            rules.push((eperm, name, vec![cmp]));
        }
    }
    rules.push((ScmpAction::Errno(libc::ENOSYS), "openat2", vec![]));
    let bpf = crate::seccomp::host_filter(&rules).map_err(DaemonError::Filter)?;
    Ok(Some(
        bpf.chunks_exact(runvm_protocol::SECCOMP_INSTRUCTION_LEN)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    ))
}

/// One staging step, prepared before `fork` (no allocation after it).
struct Stage {
    target: CString,
    source: CString,
    dir: bool,
    readonly: bool,
    recursive: bool,
}

fn cstring(p: &Path) -> Result<CString, DaemonError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| DaemonError::Nul(p.to_path_buf()))
}

impl Virtiofsd {
    /// Starts virtiofsd serving `plan` (staged at `share_dir`, which must not exist yet)
    /// on a listening socket bound at `socket` (a path from [`crate::sockpath::SocketDir`]),
    /// keeping those of its capabilities that are in the container's `bounding` set and
    /// refusing the file owners the container could not give (its processes' are `owners`).
    pub fn start(
        program: &Path,
        plan: &SharePlan,
        share_dir: &Path,
        socket: PathBuf,
        bounding: &[String],
        owners: &Owners,
    ) -> Result<Virtiofsd, DaemonError> {
        std::fs::create_dir(share_dir).map_err(|source| DaemonError::Dir {
            path: share_dir.to_path_buf(),
            source,
        })?;
        let listener = UnixListener::bind(&socket).map_err(|source| DaemonError::Socket {
            path: socket.clone(),
            source,
        })?;
        let stages = plan
            .entries
            .iter()
            .map(|e: &Entry| {
                Ok(Stage {
                    target: cstring(&share_dir.join(&e.name))?,
                    source: cstring(&e.source)?,
                    dir: e.kind == EntryKind::Dir,
                    readonly: e.readonly,
                    recursive: e.recursive,
                })
            })
            .collect::<Result<Vec<_>, DaemonError>>()?;
        let share = cstring(share_dir)?;
        let guard = fsetid_guard(bounding)?;

        let mut cmd = Command::new(program);
        cmd.args(["--fd", "3", "--shared-dir"])
            .arg(share_dir)
            .args(VIRTIOFSD_FLAGS)
            // Set in the child before the exec ([`raise_nofile`]): virtiofsd leaves it.
            .arg("--rlimit-nofile=0");
        if let Some(m) = modcaps(bounding) {
            cmd.arg(m);
        }
        cmd.args(forbidden_owners(bounding, owners));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let listen_fd = listener.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec and makes only
        // async-signal-safe system calls on data prepared before the fork (no allocation);
        // it touches nothing of the parent's.
        unsafe {
            cmd.pre_exec(move || {
                stage_in_child(listen_fd, &share, &stages)?;
                match &guard {
                    Some(filter) => install_filter(filter),
                    None => Ok(()),
                }
            });
        }
        let sources = plan
            .entries
            .iter()
            .map(|e| e.source.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut child = cmd.spawn().map_err(|source| DaemonError::Spawn {
            program: program.to_path_buf(),
            sources,
            source,
        })?;
        drop(listener);
        let log = child.stderr.take();
        Ok(Virtiofsd { child, socket, log })
    }
}

impl Virtiofsd {
    /// Starts the thread that passes virtiofsd's messages to runvm's log (never to the
    /// container's stderr). Called after the monitor's jail and privilege drop, so the
    /// thread shares them.
    pub fn read_log(&mut self) {
        let Some(err) = self.log.take() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("runvm-virtiofsd-log".into())
            .spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok).take(1000) {
                    log::warn!("virtiofsd: {line}");
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot read virtiofsd's messages: {e}");
        }
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        if self.child.kill().is_ok() {
            let _ = self.child.wait();
            return;
        }
        // A jailed monitor runs as a uid of its own and cannot signal virtiofsd (root).
        // It ends on its own once the VMM's connection has closed, or at the latest with
        // the monitor (`PR_SET_PDEATHSIG`); the monitor does not wait for it: its exit is
        // what Docker waits for.
        let _ = self.child.try_wait();
    }
}

/// `struct mount_attr` (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// In the child: loads `filter` (root may, without no_new_privs: virtiofsd sets that itself).
fn install_filter(filter: &[libc::sock_filter]) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at the prepared instructions, which outlive the call; the
    // kernel copies them.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// In the child: raises the open-file limit to [`RLIMIT_NOFILE`], or as far as the hard
/// limit where raising that is refused (no `CAP_SYS_RESOURCE`: virtiofsd asked for more
/// itself, and exited when it could not).
fn raise_nofile() -> std::io::Result<()> {
    let wanted = libc::rlimit {
        rlim_cur: RLIMIT_NOFILE,
        rlim_max: RLIMIT_NOFILE,
    };
    // SAFETY: setrlimit and getrlimit read or fill a `rlimit` on this stack.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            return Ok(());
        }
        let mut now = wanted;
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if now.rlim_cur < now.rlim_max {
            now.rlim_cur = now.rlim_max.min(RLIMIT_NOFILE);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &now) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// In the child: dies with the monitor, takes the listening socket as fd 3, and stages
/// the share in a mount namespace of its own.
fn stage_in_child(listen_fd: i32, share: &CString, stages: &[Stage]) -> std::io::Result<()> {
    let check = |r: libc::c_long| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain system calls with NUL-terminated strings and a `MountAttr` that live
    // in the parent's prepared data or on this stack, in a child that is about to exec.
    unsafe {
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL).into())?;
        raise_nofile()?;
        // dup2 clears close-on-exec on the copy.
        check(libc::dup2(listen_fd, 3).into())?;
        check(libc::unshare(libc::CLONE_NEWNS).into())?;
        check(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
            .into(),
        )?;
        check(
            libc::mount(
                c"runvm-share".as_ptr(),
                share.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"mode=0755,size=64k,nr_inodes=4096".as_ptr().cast(),
            )
            .into(),
        )?;
        for s in stages {
            if s.dir {
                check(libc::mkdir(s.target.as_ptr(), 0o755).into())?;
            } else {
                let fd = libc::open(
                    s.target.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                check(fd.into())?;
                libc::close(fd);
            }
            let flags = libc::MS_BIND | if s.recursive { libc::MS_REC } else { 0 };
            check(
                libc::mount(
                    s.source.as_ptr(),
                    s.target.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                )
                .into(),
            )?;
            let readonly = if s.readonly {
                libc::MOUNT_ATTR_RDONLY
            } else {
                0
            };
            let attr = MountAttr {
                attr_set: libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | readonly,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            };
            let at = libc::AT_SYMLINK_NOFOLLOW | if s.recursive { libc::AT_RECURSIVE } else { 0 };
            check(libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                s.target.as_ptr(),
                at,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ))?;
        }
        check(
            libc::mount(
                std::ptr::null(),
                share.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            )
            .into(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_cap_fsetid_the_guard_refuses_setuid_and_setgid_modes() {
        assert!(fsetid_guard(&["CAP_FSETID".to_string()]).unwrap().is_none());
        let filter = fsetid_guard(&[]).unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = CString::new(dir.path().join("f").as_os_str().as_bytes()).unwrap();
        let made = CString::new(dir.path().join("made").as_os_str().as_bytes()).unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        // SAFETY: the child makes only raw system calls on prepared data, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            // SAFETY: raw system calls with prepared NUL-terminated paths; exits at once.
            unsafe {
                if install_filter(&filter).is_err() {
                    libc::_exit(100);
                }
                let code = if libc::chmod(file.as_ptr(), 0o4755) == 0 || errno() != libc::EPERM {
                    1
                } else if libc::chmod(file.as_ptr(), 0o2755) == 0 || errno() != libc::EPERM {
                    2
                } else if libc::chmod(file.as_ptr(), 0o1777) != 0 {
                    3
                } else if libc::open(made.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o6755) >= 0
                    || errno() != libc::EPERM
                {
                    4
                } else if libc::syscall(libc::SYS_openat2, libc::AT_FDCWD, file.as_ptr(), 0, 0) >= 0
                    || errno() != libc::ENOSYS
                {
                    5
                } else if libc::open(made.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644) < 0 {
                    6
                } else {
                    0
                };
                libc::_exit(code);
            }
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "{status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "the step that went wrong");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o1777);
    }

    #[test]
    fn without_cap_sys_resource_virtiofsd_gets_the_hard_limit() {
        // SAFETY: the child makes only raw system calls on stack data, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: capget/capset on a version-3 header and two data structs on this
            // stack; setrlimit/getrlimit on a `rlimit` here; exits at once.
            unsafe {
                let mut header = [0x2008_0522u32, 0];
                let mut data = [0u32; 6];
                if libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) != 0 {
                    libc::_exit(100);
                }
                // CAP_SYS_RESOURCE (24) out of the effective set.
                data[0] &= !(1 << 24);
                if libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) != 0 {
                    libc::_exit(101);
                }
                let low = libc::rlimit {
                    rlim_cur: 1024,
                    rlim_max: 4096,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &low) != 0 {
                    libc::_exit(102);
                }
                if raise_nofile().is_err() {
                    libc::_exit(1);
                }
                let mut now = low;
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut now);
                libc::_exit(if (now.rlim_cur, now.rlim_max) == (4096, 4096) {
                    0
                } else {
                    2
                });
            }
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "{status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "the step that went wrong");
    }

    #[test]
    fn virtiofsd_keeps_only_the_containers_file_capabilities() {
        let caps = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Docker's default set has them all.
        let docker = caps(&[
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_MKNOD",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE",
        ]);
        assert_eq!(modcaps(&docker), None);
        assert_eq!(
            modcaps(&caps(&[
                "CAP_CHOWN",
                "CAP_DAC_OVERRIDE",
                "CAP_FOWNER",
                "CAP_SETFCAP"
            ])),
            Some("--modcaps=-fsetid:-mknod".into())
        );
        assert_eq!(
            modcaps(&[]),
            Some("--modcaps=-chown:-dac_override:-fowner:-fsetid:-mknod:-setfcap".into())
        );
    }

    #[test]
    fn owners_the_container_could_not_give_are_forbidden() {
        let caps = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let user = Owners {
            uid: 1000,
            gids: vec![1000, 10, 1000],
            ..Owners::default()
        };
        // CAP_CHOWN, or CAP_SETUID and CAP_SETGID: any owner, as under runc.
        assert!(forbidden_owners(&caps(&["CAP_CHOWN"]), &user).is_empty());
        assert!(forbidden_owners(&caps(&["CAP_SETUID", "CAP_SETGID"]), &user).is_empty());
        // Neither: root's and the process's ids only.
        let max = u32::MAX;
        assert_eq!(
            forbidden_owners(&caps(&["CAP_SETGID"]), &user),
            [
                "--translate-uid=forbid-guest:1:999".to_string(),
                format!("--translate-uid=forbid-guest:1001:{}", max - 1001),
            ]
        );
        assert_eq!(
            forbidden_owners(&[], &user)[2..],
            [
                "--translate-gid=forbid-guest:1:9".to_string(),
                "--translate-gid=forbid-guest:11:989".to_string(),
                format!("--translate-gid=forbid-guest:1001:{}", max - 1001),
            ]
        );
        let root = Owners::of(&ProcessSpec::default(), &LinuxSpec::default());
        assert_eq!(
            forbidden_owners(&[], &root),
            [
                format!("--translate-uid=forbid-guest:1:{}", max - 1),
                format!("--translate-gid=forbid-guest:1:{}", max - 1),
            ]
        );
        // Ids at the top: nothing is left to forbid after them.
        let top = Owners {
            uid: max - 1,
            gids: vec![max],
            ..Owners::default()
        };
        assert_eq!(
            forbidden_owners(&[], &top),
            [
                format!("--translate-uid=forbid-guest:1:{}", max - 2),
                format!("--translate-gid=forbid-guest:1:{}", max - 1),
            ]
        );
    }

    #[test]
    fn in_a_user_namespace_only_the_mapped_owners_are_allowed_whatever_the_capabilities() {
        let map = |container_id, host_id, size| IdMapping {
            container_id,
            host_id,
            size,
        };
        let caps = vec!["CAP_CHOWN".to_string(), "CAP_SETUID".to_string()];
        let remapped = Owners {
            uid_mappings: vec![map(0, 100_000, 65_536)],
            gid_mappings: vec![map(0, 200_000, 10), map(10, 300_000, 1)],
            ..Owners::default()
        };
        let max = u32::MAX;
        assert_eq!(
            forbidden_owners(&caps, &remapped),
            [
                "--translate-uid=guest:0:100000:1".to_string(),
                "--translate-uid=forbid-guest:1:99999".to_string(),
                format!("--translate-uid=forbid-guest:165536:{}", max - 165_536),
                "--translate-gid=guest:0:200000:1".to_string(),
                "--translate-gid=forbid-guest:1:199999".to_string(),
                "--translate-gid=forbid-guest:200010:99990".to_string(),
                format!("--translate-gid=forbid-guest:300001:{}", max - 300_001),
            ]
        );
        // Container root unmapped: the guest's root may create nothing; a map that holds
        // host id 0 itself needs no translation; a map up to the last id leaves no tail.
        let odd = Owners {
            uid_mappings: vec![map(1000, 1000, 1)],
            gid_mappings: vec![map(0, 0, 1), map(1, max - 5, 5)],
            ..Owners::default()
        };
        assert_eq!(
            forbidden_owners(&[], &odd),
            [
                "--translate-uid=forbid-guest:0:1000".to_string(),
                format!("--translate-uid=forbid-guest:1001:{}", max - 1001),
                format!("--translate-gid=forbid-guest:1:{}", max - 6),
            ]
        );
    }
}

//! Starting the container's processes: the main one (`clone` into new PID, mount and UTS
//! namespaces, set up the container's view in the child) and exec'd ones (join the main
//! process's namespaces), then the OCI process attributes and `execve`. Stdio is three
//! pipes, or with `terminal` a pty the child opens from the container's devpts and whose
//! master it hands back to init over a socketpair (SCM_RIGHTS).
//!
//! The child reports how far it got through a close-on-exec pipe: EOF means `execve`
//! succeeded; otherwise it writes a runc-like code (`i32`, little endian) and a message,
//! and exits with that code.

use crate::error::{Context, Error, Result, CODE_NOT_EXECUTABLE, CODE_NOT_FOUND, CODE_SETUP};
use crate::mounts::{self, Paths};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::socket;
use nix::sys::stat::Mode;
use nix::sys::wait::WaitStatus;
use nix::unistd::{Gid, Pid, Uid};
use runvm_protocol::{ExitStatus, LinuxSpec, MountSpec, ProcessSpec, WindowSize};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The parent's side of a started process's stdio.
pub enum Stdio {
    /// Pipes: the write end of stdin, the read ends of stdout and stderr.
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// The master of the process's pty (allocated from the container's devpts).
    Terminal { master: OwnedFd },
}

/// What the parent keeps of a started process.
pub struct Spawned {
    pub pid: Pid,
    pub stdio: Stdio,
}

/// A process whose setup or `execve` failed: the error, and the pid to reap.
pub struct Failed {
    pub pid: Pid,
    pub error: Error,
}

/// Everything the child of the container's main process needs.
pub struct Request<'a> {
    pub paths: &'a Paths,
    pub process: &'a ProcessSpec,
    pub linux: &'a LinuxSpec,
    pub mounts: &'a [MountSpec],
    pub hostname: Option<&'a str>,
    pub readonly_root: bool,
}

/// The child's side of its stdio, set up in the container after its mounts exist.
enum ChildStdio {
    Pipes([OwnedFd; 3]),
    /// Open a pty from the container's `/dev/ptmx`, send its master over `to_parent`.
    Terminal {
        to_parent: OwnedFd,
        size: Option<WindowSize>,
    },
}

/// The parent's ends of the stdio plumbing, before the child runs.
enum ParentStdio {
    Pipes([OwnedFd; 3]),
    Terminal(OwnedFd),
}

fn stdio_plumbing(terminal: bool, size: Option<WindowSize>) -> Result<(ParentStdio, ChildStdio)> {
    let cloexec = OFlag::O_CLOEXEC;
    if terminal {
        let (parent, child) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::Stream,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )
        .context("socketpair for the pty master")?;
        return Ok((
            ParentStdio::Terminal(parent),
            ChildStdio::Terminal {
                to_parent: child,
                size,
            },
        ));
    }
    let (stdin_r, stdin_w) = nix::unistd::pipe2(cloexec).context("pipe")?;
    let (stdout_r, stdout_w) = nix::unistd::pipe2(cloexec).context("pipe")?;
    let (stderr_r, stderr_w) = nix::unistd::pipe2(cloexec).context("pipe")?;
    Ok((
        ParentStdio::Pipes([stdin_w, stdout_r, stderr_r]),
        ChildStdio::Pipes([stdin_r, stdout_w, stderr_w]),
    ))
}

/// Starts the container's main process in new PID, mount and UTS namespaces.
/// `Ok(Err(_))` is a process that ran into an error before or at `execve` (the child
/// exists and must be reaped); `Err(_)` is a failure of init itself.
pub fn spawn(req: &Request<'_>) -> Result<std::result::Result<Spawned, Failed>> {
    let p = req.process;
    let flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS;
    start_child(flags, p, |stdio| main_child(req, stdio))
}

/// Starts `process` as another process of the running container whose main process is
/// `main`: it joins `main`'s namespaces (the PID namespace by forking after `setns`, as
/// runc's nsenter does) and root, and is a child of init, so init reaps it.
pub fn spawn_exec(
    main: Pid,
    process: &ProcessSpec,
) -> Result<std::result::Result<Spawned, Failed>> {
    let own_pid_ns = std::fs::File::open("/proc/self/ns/pid").context("open /proc/self/ns/pid")?;
    let target = format!("/proc/{main}/ns/pid");
    let pid_ns = std::fs::File::open(&target).with_context(|| format!("open {target}"))?;
    nix::sched::setns(&pid_ns, CloneFlags::CLONE_NEWPID)
        .with_context(|| format!("join the PID namespace of {main}"))?;
    let started = start_child(0, process, |stdio| exec_child(main, process, stdio));
    // Init's own children must stay in init's namespace.
    nix::sched::setns(&own_pid_ns, CloneFlags::CLONE_NEWPID)
        .context("return to init's PID namespace")?;
    started
}

/// Clones a child with `flags` (fork semantics), runs `child` in it, and waits for it to
/// `execve` (the close-on-exec status pipe reaches EOF) or to report an error.
fn start_child(
    flags: libc::c_int,
    p: &ProcessSpec,
    child: impl FnOnce(ChildStdio) -> Result<std::convert::Infallible>,
) -> Result<std::result::Result<Spawned, Failed>> {
    let (parent_stdio, child_stdio) = stdio_plumbing(p.terminal, p.console_size)?;
    let (status_r, status_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    // SAFETY: a raw clone without CLONE_VM and with a null stack has fork semantics: the
    // child gets a copy of our (single-threaded) address space and returns here on its own
    // copy of the stack. nix's `clone` wants a separate stack and a callback, and glibc's
    // `fork` cannot create namespaces. The child never returns from `child_main`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if ret < 0 {
        return Err(Error::new(format!("clone: {}", Errno::last())));
    }
    if ret == 0 {
        drop((parent_stdio, status_r));
        child_main(child, child_stdio, status_w);
    }
    let pid = Pid::from_raw(ret as i32);
    drop((child_stdio, status_w));

    // Wait for the child to exec (EOF) or report an error.
    let mut report = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match nix::unistd::read(status_r.as_raw_fd(), &mut chunk) {
            Ok(0) => break,
            Ok(n) => report.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::new(format!("read the workload's exec status: {e}"))),
        }
    }
    if let Some(error) = decode_report(&report) {
        return Ok(Err(Failed { pid, error }));
    }
    let stdio = match parent_stdio {
        ParentStdio::Pipes([stdin, stdout, stderr]) => Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        },
        ParentStdio::Terminal(sock) => match recv_fd(&sock) {
            Ok(master) => Stdio::Terminal { master },
            Err(e) => {
                crate::relay::send_signal(pid, libc::SIGKILL);
                return Ok(Err(Failed {
                    pid,
                    error: Error::new(format!("receive the pty master: {e}")),
                }));
            }
        },
    };
    Ok(Ok(Spawned { pid, stdio }))
}

/// Receives the one descriptor the child sent with SCM_RIGHTS (it is already queued:
/// the child sent it before its `execve`).
fn recv_fd(sock: &OwnedFd) -> Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        socket::MsgFlags::MSG_DONTWAIT | socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("recvmsg")?;
    let mut got = None;
    for c in msg.cmsgs().context("control messages")? {
        if let socket::ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor for us; we own it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if got.is_none() {
                    got = Some(owned);
                }
            }
        }
    }
    got.ok_or_else(|| Error::new("the process sent no pty master"))
}

/// Sends `fd` with SCM_RIGHTS and one data byte.
fn send_fd(sock: &OwnedFd, fd: RawFd) -> Result<()> {
    let iov = [std::io::IoSlice::new(b"m")];
    let fds = [fd];
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

/// The child: set up, exec, or report and exit. Never returns.
fn child_main(
    child: impl FnOnce(ChildStdio) -> Result<std::convert::Infallible>,
    stdio: ChildStdio,
    status: OwnedFd,
) -> ! {
    let e = match child(stdio) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let report = encode_report(&e);
    let mut off = 0;
    while off < report.len() {
        match nix::unistd::write(&status, &report[off..]) {
            Ok(n) => off += n,
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    // SAFETY: _exit ends this forked child at once, without running atexit handlers or
    // flushing stdio buffers that are copies of the parent's. nix 0.29 has no wrapper.
    unsafe { libc::_exit(e.code & 0xff) }
}

fn encode_report(e: &Error) -> Vec<u8> {
    let mut v = e.code.to_le_bytes().to_vec();
    v.extend_from_slice(e.message.as_bytes());
    v
}

/// `None` for an empty report (exec succeeded).
fn decode_report(b: &[u8]) -> Option<Error> {
    if b.is_empty() {
        return None;
    }
    let (code, msg) = match b.get(..4) {
        Some(c) => {
            let mut le = [0u8; 4];
            le.copy_from_slice(c);
            (
                i32::from_le_bytes(le),
                String::from_utf8_lossy(&b[4..]).into_owned(),
            )
        }
        None => (
            CODE_SETUP,
            "truncated error report from the workload".to_string(),
        ),
    };
    Some(Error::with_code(code, msg))
}

/// Init blocks SIGCHLD (for its signalfd) and ignores SIGPIPE; both survive execve, so
/// every child starts from a clean signal state.
fn reset_signals() -> Result<()> {
    signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .context("reset the signal mask")?;
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL runs no code of ours in signal context.
            let _ = unsafe { signal::signal(sig, signal::SigHandler::SigDfl) };
        }
    }
    Ok(())
}

/// The main process: build the container's view, then become the process.
fn main_child(req: &Request<'_>, stdio: ChildStdio) -> Result<std::convert::Infallible> {
    reset_signals()?;
    // Its own cgroup, seen as the root of the cgroup namespace it gets.
    crate::cgroup::join_self()?;
    nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).context("unshare the cgroup namespace")?;
    nix::sys::stat::umask(Mode::empty());

    if let Some(h) = req.hostname {
        nix::unistd::sethostname(h).with_context(|| format!("sethostname {h:?}"))?;
    }
    // Copied-in files are taken from init's /run, which the root switch hides.
    let mut binds = crate::binds::prepare(req.mounts, &req.paths.run)?;
    mounts::switch_root(&req.paths.newroot)?;
    mounts::container(req.mounts, req.readonly_root, &mut binds)?;
    mounts::devices(&req.linux.devices)?;
    // runc's order: sysctls, then read-only paths (Docker lists /proc/sys), then masks.
    crate::attrs::apply_sysctls(&req.linux.sysctl)?;
    for p in &req.linux.readonly_paths {
        mounts::readonly_path(p)?;
    }
    for p in &req.linux.masked_paths {
        mounts::mask_path(p)?;
    }
    become_process(req.process, stdio)
}

/// The namespaces an exec'd process joins, by their `/proc/<pid>/ns` names. The PID
/// namespace is joined before the fork, by init.
const EXEC_NAMESPACES: [(&str, CloneFlags); 5] = [
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// An exec'd process: join the main process's namespaces and root, then become the
/// process.
fn exec_child(main: Pid, p: &ProcessSpec, stdio: ChildStdio) -> Result<std::convert::Infallible> {
    reset_signals()?;
    // Before joining the container's namespaces, while init's /sys/fs/cgroup is seen.
    crate::cgroup::join_self()?;
    nix::sys::stat::umask(Mode::empty());
    let root_path = format!("/proc/{main}/root");
    let root = std::fs::File::open(&root_path)
        .with_context(|| format!("open the container's root {root_path}"))?;
    for (name, flag) in EXEC_NAMESPACES {
        let theirs = format!("/proc/{main}/ns/{name}");
        let ours = format!("/proc/self/ns/{name}");
        let (Ok(t), Ok(o)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
            // A namespace type the kernel does not have.
            continue;
        };
        if std::os::unix::fs::MetadataExt::ino(&t) == std::os::unix::fs::MetadataExt::ino(&o) {
            continue;
        }
        let f = std::fs::File::open(&theirs).with_context(|| format!("open {theirs}"))?;
        nix::sched::setns(&f, flag).with_context(|| format!("join the {name} namespace"))?;
    }
    // The container's root, whatever way its main process entered it.
    nix::unistd::fchdir(root.as_raw_fd()).context("enter the container's root")?;
    nix::unistd::chroot(".").context("chroot into the container's root")?;
    std::env::set_current_dir("/").context("chdir / in the container root")?;
    drop(root);
    become_process(p, stdio)
}

/// Opens a pty from the container's `/dev/ptmx`, hands the master to init, and makes the
/// slave this process's controlling terminal (a new session) and its fds 0–2, as runc's
/// init does with its console.
fn attach_terminal(to_parent: OwnedFd, size: Option<WindowSize>) -> Result<()> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .context("open /dev/ptmx in the container")?;
    nix::pty::grantpt(&master).context("grantpt")?;
    nix::pty::unlockpt(&master).context("unlockpt")?;
    let name = nix::pty::ptsname_r(&master).context("ptsname")?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("open the pty slave {name}"))?;
    // SAFETY: open just returned this descriptor; we own it.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    if let Some(sz) = size {
        set_window_size(slave.as_raw_fd(), sz)?;
    }
    send_fd(&to_parent, master.as_raw_fd())?;
    drop((master, to_parent));
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
pub fn set_window_size(fd: RawFd, size: WindowSize) -> Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct from a valid pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(Error::new(format!("TIOCSWINSZ: {}", Errno::last())));
    }
    Ok(())
}

/// Everything after the container's view exists: stdio, `HOME`, rlimits, OOM score,
/// capabilities, no_new_privs, user and groups, cwd, umask, the seccomp filter, and
/// `execve`. Shared by main and exec'd processes.
fn become_process(p: &ProcessSpec, stdio: ChildStdio) -> Result<std::convert::Infallible> {
    match stdio {
        ChildStdio::Pipes(fds) => {
            for (target, fd) in fds.iter().enumerate() {
                nix::unistd::dup2(fd.as_raw_fd(), target as i32).context("dup2 stdio")?;
            }
        }
        ChildStdio::Terminal { to_parent, size } => attach_terminal(to_parent, size)?,
    }
    close_other_fds()?;
    // runc: a process without HOME gets its user's home from the container's passwd.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let env = crate::attrs::env_with_home(&p.env, p.uid, &passwd);
    let seccomp = p
        .seccomp
        .as_ref()
        .map(|s| crate::seccomp::instructions(s).map(|f| (f, s.flags)))
        .transpose()?;
    crate::attrs::apply_rlimits(&p.rlimits)?;
    crate::attrs::set_oom_score_adj(p.oom_score_adj)?;
    let caps = p
        .capabilities
        .as_ref()
        .map(crate::caps::resolve)
        .transpose()?;
    crate::attrs::set_no_new_privs(p.no_new_privileges)?;
    // runc's order: without no_new_privs, loading a filter needs CAP_SYS_ADMIN, so it is
    // loaded before the user switch and the capability drop; with it, as late as can be.
    if let (Some((filter, flags)), false) = (&seccomp, p.no_new_privileges) {
        crate::seccomp::install(filter, *flags)?;
    }
    if let Some(c) = &caps {
        crate::caps::before_user_switch(c)?;
    }

    let gids: Vec<Gid> = p
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids).context("setgroups")?;
    nix::unistd::setgid(Gid::from_raw(p.gid)).with_context(|| format!("setgid {}", p.gid))?;
    nix::unistd::setuid(Uid::from_raw(p.uid)).with_context(|| format!("setuid {}", p.uid))?;

    let cwd = if p.cwd.is_empty() {
        "/"
    } else {
        p.cwd.as_str()
    };
    std::env::set_current_dir(cwd).map_err(|e| {
        Error::new(format!(
            "chdir to cwd ({cwd:?}) set in config.json failed: {}",
            io_msg(&e)
        ))
    })?;
    // Like runc: the working directory is entered with the full permitted set, then the
    // process's own capabilities are set.
    if let Some(c) = &caps {
        crate::caps::after_user_switch(c)?;
    }

    let arg0 = p
        .args
        .first()
        .ok_or_else(|| Error::new("args must not be empty"))?;
    let path = resolve_executable(arg0, &env, Path::new(cwd), &FsProbe)?;
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::new("executable path contains a NUL byte"))?;
    let argv = to_cstrings(&p.args, "args")?;
    let envp = to_cstrings(&env, "env")?;
    nix::sys::stat::umask(Mode::from_bits_truncate(
        p.umask.unwrap_or(DEFAULT_UMASK) as libc::mode_t
    ));
    if let (Some((filter, flags)), true) = (&seccomp, p.no_new_privileges) {
        crate::seccomp::install(filter, *flags)?;
    }
    let err = match nix::unistd::execve(&cpath, &argv, &envp) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    Err(Error::with_code(
        exec_errno_code(err),
        format!("exec: {:?}: {}", arg0, err.desc().to_lowercase()),
    ))
}

/// runc's umask when `process.user.umask` is not set.
const DEFAULT_UMASK: u32 = 0o022;

fn io_msg(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_lowercase(),
        None => e.to_string(),
    }
}

fn to_cstrings(v: &[String], what: &str) -> Result<Vec<CString>> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::new(format!("{what} contain a NUL byte")))
}

/// Marks every fd from 3 up close-on-exec, so only 0, 1 and 2 reach the workload (the
/// exec-status pipe stays usable until `execve` itself).
fn close_other_fds() -> Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on our own descriptors;
    // no memory is passed. Neither nix nor libc's safe API wraps it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // Older kernels: walk /proc/self/fd.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .context("list /proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    Ok(())
}

/// runc's mapping of an `execve` errno to an exit code.
pub fn exec_errno_code(e: Errno) -> i32 {
    match e {
        Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP | Errno::ENAMETOOLONG => CODE_NOT_FOUND,
        _ => CODE_NOT_EXECUTABLE,
    }
}

/// What path resolution needs to know about a candidate file.
pub trait Probe {
    /// `Ok(true)` regular file with an execute bit, `Ok(false)` exists but is not
    /// executable (or a directory), `Err(errno)` when `stat` fails.
    fn executable(&self, p: &Path) -> std::result::Result<bool, Errno>;
}

/// The real filesystem.
pub struct FsProbe;

impl Probe for FsProbe {
    fn executable(&self, p: &Path) -> std::result::Result<bool, Errno> {
        let md = std::fs::metadata(p)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)))?;
        Ok(md.is_file() && md.permissions().mode() & 0o111 != 0)
    }
}

/// Resolves `args[0]` like runc (Go's `exec.LookPath` with the container's environment):
/// a name with a `/` is used as is (checked with `stat`); otherwise each entry of the
/// spec's `PATH` is tried in order (an empty entry is the current directory), and a name
/// that is found nowhere is "executable file not found in $PATH". Relative results are
/// taken relative to `cwd`.
pub fn resolve_executable(
    arg0: &str,
    env: &[String],
    cwd: &Path,
    probe: &dyn Probe,
) -> Result<PathBuf> {
    if arg0.is_empty() {
        return Err(Error::with_code(
            CODE_NOT_FOUND,
            "exec: \"\": executable file not found in $PATH",
        ));
    }
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return match probe.executable(&p) {
            Ok(true) => Ok(p),
            Ok(false) => Err(Error::with_code(
                CODE_NOT_EXECUTABLE,
                format!("exec: {arg0:?}: permission denied"),
            )),
            Err(e) => Err(Error::with_code(
                exec_errno_code(e),
                format!("exec: {arg0:?}: stat {arg0}: {}", e.desc().to_lowercase()),
            )),
        };
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("");
    if !path_var.is_empty() {
        for dir in path_var.split(':') {
            let dir = if dir.is_empty() { "." } else { dir };
            let cand = Path::new(dir).join(arg0);
            let abs = if cand.is_absolute() {
                cand.clone()
            } else {
                cwd.join(&cand)
            };
            if let Ok(true) = probe.executable(&abs) {
                return Ok(cand);
            }
        }
    }
    Err(Error::with_code(
        CODE_NOT_FOUND,
        format!("exec: {arg0:?}: executable file not found in $PATH"),
    ))
}

/// Maps a `waitpid` result to the protocol's exit status (`None` for stops/continues).
pub fn exit_status(ws: WaitStatus) -> Option<ExitStatus> {
    match ws {
        WaitStatus::Exited(_, code) => Some(ExitStatus::Exited(code)),
        WaitStatus::Signaled(_, sig, _) => Some(ExitStatus::Signaled(sig as i32)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeFs(HashMap<&'static str, bool>);

    impl Probe for FakeFs {
        fn executable(&self, p: &Path) -> std::result::Result<bool, Errno> {
            self.0
                .get(p.to_str().unwrap())
                .copied()
                .ok_or(Errno::ENOENT)
        }
    }

    fn fs() -> FakeFs {
        FakeFs(HashMap::from([
            ("/usr/bin/sh", true),
            ("/bin/sh", true),
            ("/bin/noexec", false),
            ("/usr/bin/noexec", true),
            ("/work/./tool", true),
            ("/work/rel/tool2", true),
            ("/abs/script", true),
            ("/abs/plain", false),
        ]))
    }

    fn env(path: Option<&str>) -> Vec<String> {
        let mut v = vec!["HOME=/root".to_string()];
        if let Some(p) = path {
            v.push(format!("PATH={p}"));
        }
        v
    }

    fn resolve(arg0: &str, path: Option<&str>) -> Result<PathBuf> {
        resolve_executable(arg0, &env(path), Path::new("/work"), &fs())
    }

    #[test]
    fn path_lookup_uses_the_spec_path_in_order() {
        assert_eq!(
            resolve("sh", Some("/usr/bin:/bin")).unwrap(),
            Path::new("/usr/bin/sh")
        );
        assert_eq!(
            resolve("sh", Some("/bin:/usr/bin")).unwrap(),
            Path::new("/bin/sh")
        );
        // A non-executable match is skipped, like Go's LookPath.
        assert_eq!(
            resolve("noexec", Some("/bin:/usr/bin")).unwrap(),
            Path::new("/usr/bin/noexec")
        );
    }

    #[test]
    fn relative_and_empty_path_entries_are_relative_to_cwd() {
        assert_eq!(
            resolve("tool", Some("/bin::/usr/bin")).unwrap(),
            Path::new("./tool")
        );
        assert_eq!(
            resolve("tool2", Some("rel")).unwrap(),
            Path::new("rel/tool2")
        );
    }

    #[test]
    fn missing_path_or_name_is_127_with_runc_message() {
        let e = resolve("sh", None).unwrap_err();
        assert_eq!(e.code, 127);
        let e = resolve("nosuchcmd", Some("/bin")).unwrap_err();
        assert_eq!(e.code, 127);
        assert_eq!(
            e.message,
            r#"exec: "nosuchcmd": executable file not found in $PATH"#
        );
        // The last PATH= wins: runc applies the spec's env with os.Setenv in order.
        let mut env = env(Some("/nothing"));
        env.push("PATH=/bin".into());
        assert!(resolve_executable("sh", &env, Path::new("/"), &fs()).is_ok());
    }

    #[test]
    fn names_with_a_slash_are_not_searched() {
        assert_eq!(
            resolve("/abs/script", Some("/bin")).unwrap(),
            Path::new("/abs/script")
        );
        let e = resolve("/abs/plain", Some("/bin")).unwrap_err();
        assert_eq!(e.code, 126);
        let e = resolve("/abs/missing", Some("/bin")).unwrap_err();
        assert_eq!(e.code, 127);
        assert_eq!(
            e.message,
            r#"exec: "/abs/missing": stat /abs/missing: no such file or directory"#
        );
    }

    #[test]
    fn exec_errnos_map_like_runc() {
        assert_eq!(exec_errno_code(Errno::ENOENT), 127);
        assert_eq!(exec_errno_code(Errno::EACCES), 126);
        assert_eq!(exec_errno_code(Errno::ENOEXEC), 126);
        assert_eq!(exec_errno_code(Errno::EPERM), 126);
    }

    #[test]
    fn wait_statuses_map_to_exit_statuses() {
        let pid = Pid::from_raw(5);
        assert_eq!(
            exit_status(WaitStatus::Exited(pid, 42)),
            Some(ExitStatus::Exited(42))
        );
        assert_eq!(
            exit_status(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(ExitStatus::Signaled(9))
        );
        assert_eq!(exit_status(WaitStatus::StillAlive), None);
    }

    #[test]
    fn exec_reports_round_trip() {
        assert!(decode_report(&[]).is_none());
        let e = Error::with_code(127, "exec: \"x\": executable file not found in $PATH");
        assert_eq!(decode_report(&encode_report(&e)), Some(e));
        assert_eq!(decode_report(&[1, 2]).unwrap().code, 1);
    }
}

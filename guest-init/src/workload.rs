//! Starting the container's process: `clone` into new PID, mount and UTS namespaces, set
//! up the container's view in the child, and `execve` the OCI process.
//!
//! The child reports how far it got through a close-on-exec pipe: EOF means `execve`
//! succeeded; otherwise it writes a runc-like code (`i32`, little endian) and a message,
//! and exits with that code.

use crate::error::{Context, Error, Result, CODE_NOT_EXECUTABLE, CODE_NOT_FOUND, CODE_SETUP};
use crate::mounts::{self, Paths};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::WaitStatus;
use nix::unistd::{Gid, Pid, Uid};
use runvm_protocol::{ExitStatus, LinuxSpec, MountSpec, ProcessSpec};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What the parent keeps of a started workload.
pub struct Spawned {
    pub pid: Pid,
    /// Write end of the workload's stdin pipe.
    pub stdin: OwnedFd,
    /// Read end of the workload's stdout pipe.
    pub stdout: OwnedFd,
    /// Read end of the workload's stderr pipe.
    pub stderr: OwnedFd,
}

/// A workload whose setup or `execve` failed: the error, and the pid to reap.
pub struct Failed {
    pub pid: Pid,
    pub error: Error,
}

/// Everything the child needs.
pub struct Request<'a> {
    pub paths: &'a Paths,
    pub process: &'a ProcessSpec,
    pub linux: &'a LinuxSpec,
    pub mounts: &'a [MountSpec],
    pub hostname: Option<&'a str>,
    pub readonly_root: bool,
}

/// Starts the workload. `Ok(Err(_))` is a workload that ran into an error before or at
/// `execve` (the child exists and must be reaped); `Err(_)` is a failure of init itself.
pub fn spawn(req: &Request<'_>) -> Result<std::result::Result<Spawned, Failed>> {
    let cloexec = OFlag::O_CLOEXEC;
    let (stdin_r, stdin_w) = nix::unistd::pipe2(cloexec).context("pipe")?;
    let (stdout_r, stdout_w) = nix::unistd::pipe2(cloexec).context("pipe")?;
    let (stderr_r, stderr_w) = nix::unistd::pipe2(cloexec).context("pipe")?;
    let (status_r, status_w) = nix::unistd::pipe2(cloexec).context("pipe")?;

    let flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::SIGCHLD;
    // SAFETY: a raw clone without CLONE_VM and with a null stack has fork semantics: the
    // child gets a copy of our (single-threaded) address space and returns here on its own
    // copy of the stack. nix's `clone` wants a separate stack and a callback, and glibc's
    // `fork` cannot create namespaces. The child never returns from `child_main`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
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
        drop((stdin_w, stdout_r, stderr_r, status_r));
        child_main(req, [stdin_r, stdout_w, stderr_w], status_w);
    }
    let pid = Pid::from_raw(ret as i32);
    drop((stdin_r, stdout_w, stderr_w, status_w));

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
    match decode_report(&report) {
        None => Ok(Ok(Spawned {
            pid,
            stdin: stdin_w,
            stdout: stdout_r,
            stderr: stderr_r,
        })),
        Some(error) => Ok(Err(Failed { pid, error })),
    }
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

/// The child: set up, exec, or report and exit. Never returns.
fn child_main(req: &Request<'_>, stdio: [OwnedFd; 3], status: OwnedFd) -> ! {
    let e = match child_setup_and_exec(req, stdio) {
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

fn child_setup_and_exec(
    req: &Request<'_>,
    stdio: [OwnedFd; 3],
) -> Result<std::convert::Infallible> {
    let p = req.process;
    // Init blocks SIGCHLD (for its signalfd) and ignores SIGPIPE; both survive execve.
    signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .context("reset the signal mask")?;
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL runs no code of ours in signal context.
            let _ = unsafe { signal::signal(sig, signal::SigHandler::SigDfl) };
        }
    }
    nix::sys::stat::umask(Mode::empty());

    if let Some(h) = req.hostname {
        nix::unistd::sethostname(h).with_context(|| format!("sethostname {h:?}"))?;
    }
    // Copied-in files are taken from init's /run, which the root switch hides.
    let mut binds = crate::binds::prepare(req.mounts, &req.paths.run)?;
    mounts::switch_root(&req.paths.newroot)?;
    mounts::container(req.mounts, req.readonly_root, &mut binds)?;
    // runc's order: sysctls, then read-only paths (Docker lists /proc/sys), then masks.
    crate::attrs::apply_sysctls(&req.linux.sysctl)?;
    for p in &req.linux.readonly_paths {
        mounts::readonly_path(p)?;
    }
    for p in &req.linux.masked_paths {
        mounts::mask_path(p)?;
    }

    for (target, fd) in stdio.iter().enumerate() {
        nix::unistd::dup2(fd.as_raw_fd(), target as i32).context("dup2 stdio")?;
    }
    drop(stdio);
    close_other_fds()?;
    crate::attrs::apply_rlimits(&p.rlimits)?;
    crate::attrs::set_oom_score_adj(p.oom_score_adj)?;
    let caps = p
        .capabilities
        .as_ref()
        .map(crate::caps::resolve)
        .transpose()?;
    crate::attrs::set_no_new_privs(p.no_new_privileges)?;
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
    let path = resolve_executable(arg0, &p.env, Path::new(cwd), &FsProbe)?;
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::new("executable path contains a NUL byte"))?;
    let argv = to_cstrings(&p.args, "args")?;
    let envp = to_cstrings(&p.env, "env")?;
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    let err = match nix::unistd::execve(&cpath, &argv, &envp) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    Err(Error::with_code(
        exec_errno_code(err),
        format!("exec: {:?}: {}", arg0, err.desc().to_lowercase()),
    ))
}

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

//! The last stretch of every container process, in its child, once the container's view
//! exists (main process) or is joined (exec'd ones): stdio on fds 0–2 and every other
//! descriptor close-on-exec, `HOME`, rlimits, the OOM score, the credentials dropped
//! ([`crate::credentials`]), the working directory, the program found on `PATH`
//! ([`crate::path_lookup`]), the umask, and `execve`.

use crate::attrs;
use crate::credentials::Credentials;
use crate::error::{Context, Error, Result};
use crate::path_lookup::{self, FsProbe};
use crate::seccomp;
use crate::spawn::ChildStdio;
use crate::user_ns::UserNamespace;
use nix::errno::Errno;
use nix::sys::stat::Mode;
use runvm_protocol::ProcessSpec;
use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// runc's umask when `process.user.umask` is not set.
const DEFAULT_UMASK: u32 = 0o022;

/// Turns the calling child into the process `p` describes, in `user_ns`; returns only on
/// failure.
pub fn become_process(
    p: &ProcessSpec,
    stdio: ChildStdio,
    user_ns: UserNamespace,
) -> Result<Infallible> {
    stdio.install()?;
    close_other_fds()?;
    // runc: a process without HOME gets its user's home from the container's passwd.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let env = attrs::env_with_home(&p.env, p.uid, &passwd);
    let seccomp = seccomp::Filter::from_spec(p.seccomp.as_ref())?;
    attrs::apply_rlimits(&p.rlimits)?;
    attrs::set_oom_score_adj(p.oom_score_adj)?;
    // Last of what needs the guest's own capabilities (rlimits above their hard limit, a
    // lower OOM score); from here on the user and capabilities are the namespace's.
    user_ns.enter(p.uid)?;
    let credentials = Credentials::resolve(p, seccomp)?;
    credentials.drop_before_user_switch()?;
    // As runc: the working directory is entered before the user switch (the user may not
    // reach it, root can), and again after it only if root was refused (a file system
    // that checks permissions as the user, such as the share of a read-only root).
    let entered = enter_cwd(p, true)?;
    credentials.switch_user()?;
    let cwd = if entered {
        cwd_of(p)
    } else {
        enter_cwd(p, false).map(|_| cwd_of(p))?
    };
    // Like runc: the working directory is entered with the full permitted set, then the
    // process's own capabilities are set.
    credentials.set_capabilities()?;
    let program = Program::resolve(p, env, cwd)?;
    nix::sys::stat::umask(Mode::from_bits_truncate(
        p.umask.unwrap_or(DEFAULT_UMASK) as libc::mode_t
    ));
    credentials.install_late_seccomp()?;
    Err(program.exec())
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

/// The process's working directory (`/` when the spec has none).
fn cwd_of(p: &ProcessSpec) -> &Path {
    Path::new(if p.cwd.is_empty() {
        "/"
    } else {
        p.cwd.as_str()
    })
}

/// Enters the process's working directory. `may_retry`: a permission error is not yet
/// an error (false is returned: the caller tries again as the container's user).
fn enter_cwd(p: &ProcessSpec, may_retry: bool) -> Result<bool> {
    let cwd = cwd_of(p);
    match std::env::set_current_dir(cwd) {
        Ok(()) => Ok(true),
        Err(e) if may_retry && e.kind() == std::io::ErrorKind::PermissionDenied => Ok(false),
        Err(e) => Err(Error::new(format!(
            "chdir to cwd ({:?}) set in config.json failed: {}",
            cwd.display().to_string(),
            errno_text(&e)
        ))),
    }
}

/// An I/O error as runc words it: the errno's description in lower case.
fn errno_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_lowercase(),
        None => e.to_string(),
    }
}

/// What `execve` gets.
struct Program {
    /// `args[0]` as the spec gave it, for messages.
    arg0: String,
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl Program {
    /// Finds `args[0]` of `p` (see [`path_lookup`]) and converts everything to C strings.
    fn resolve(p: &ProcessSpec, env: Vec<String>, cwd: &Path) -> Result<Self> {
        let arg0 = p
            .args
            .first()
            .ok_or_else(|| Error::new("args must not be empty"))?;
        let path = path_lookup::resolve_executable(arg0, &env, cwd, &FsProbe)?;
        Ok(Self {
            arg0: arg0.clone(),
            path: CString::new(path.as_os_str().as_bytes())
                .map_err(|_| Error::new("executable path contains a NUL byte"))?,
            argv: to_cstrings(&p.args, "args")?,
            envp: to_cstrings(&env, "env")?,
        })
    }

    /// `execve`; what comes back is the failure, with runc's code.
    fn exec(self) -> Error {
        let err = match nix::unistd::execve(&self.path, &self.argv, &self.envp) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        Error::with_code(
            path_lookup::exec_errno_code(err),
            format!("exec: {:?}: {}", self.arg0, err.desc().to_lowercase()),
        )
    }
}

fn to_cstrings(v: &[String], what: &str) -> Result<Vec<CString>> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::new(format!("{what} contain a NUL byte")))
}

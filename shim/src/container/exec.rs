//! `exec`: runs another process in a running container.
//!
//! The process spec is `--process P.json`, or the container's own process with the
//! command line's overrides (args, `--tty`, `--env`, `--cwd`, `--user`,
//! `--additional-gids`, `--cap`, `--no-new-privs`), as runc builds it. The `runvm exec`
//! process hands its stdio (or, with a terminal, a host pty's slave or the caller's
//! terminal) to the container's monitor over its API socket with SCM_RIGHTS; the monitor
//! relays it to the guest, where the process joins the container's namespaces.
//!
//! The waiting process (this one, or with `--detach` a child of it, whose pid goes to
//! `--pid-file`, so that a subreaper such as containerd's shim reaps it) forwards every
//! catchable signal it gets to the exec'd process, passes on window-size changes, and
//! exits with the process's code (128+signo for a signal death). If it is SIGKILLed, the
//! monitor kills the exec'd process. A process that cannot start makes `runvm exec` fail
//! with runc's "exec failed: …" message and exit code 255.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use liboci_cli::Exec;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use runvm_protocol::{read_frame, write_frame, FrameError, ProcessSpec, WindowSize};

use crate::host_process;
use crate::monitor::api::{self, exec_fd_count, ExecControl, ExecEvent, Request};
use crate::monitor::tty;
use crate::state::ContainerState;

/// The exec'd process did not start: `runvm exec` exits with `code` (runc's 255).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExecFailed {
    pub code: i32,
    pub message: String,
}

/// runc's exit code for an exec that could not start.
const EXEC_FAILED_CODE: i32 = 255;

fn start_failure(message: &str) -> anyhow::Error {
    ExecFailed {
        code: EXEC_FAILED_CODE,
        message: format!("exec failed: unable to start container process: {message}"),
    }
    .into()
}

/// Every error of `exec` is runc's "exec failed: …" with code 255 (runc's exec exits so
/// whatever kept the process from running: an unknown id, a stopped container, a pid
/// file it cannot write).
pub fn as_exec_failure(e: anyhow::Error) -> anyhow::Error {
    if e.is::<ExecFailed>() {
        return e;
    }
    ExecFailed {
        code: EXEC_FAILED_CODE,
        message: format!("exec failed: {}", crate::error_message(&e)),
    }
    .into()
}

pub fn exec(root: &Path, opts: &Exec) -> Result<i32> {
    let state = super::load(root, &opts.container_id)?;
    state.status(root).can_exec()?;
    let mut spec = process_spec(opts, &state)?;
    if spec.terminal && opts.detach && opts.console_socket.is_none() {
        bail!("cannot allocate tty if runvm will detach without setting console socket");
    }
    if !spec.terminal && opts.console_socket.is_some() {
        bail!("cannot use console socket if runvm will not detach or allocate tty");
    }
    let host = HostSide::new(&spec, opts.console_socket.as_deref())?;
    if spec.terminal && spec.console_size.is_none() {
        spec.console_size = host.window_size();
    }

    let (dir, container) = super::member::exec_target(root, &state)?;
    let mut conn = api::connect(&dir)?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    let want = exec_fd_count(spec.terminal);
    write_frame(&mut conn, &Request::Exec { spec, container })
        .context("cannot send the exec request")?;
    let fds: Vec<RawFd> = host.fds.iter().map(|f| f.as_raw_fd()).collect();
    debug_assert_eq!(fds.len(), want);
    runvm_protocol::scm::send_fds(conn.as_fd(), b"\0", &fds)
        .context("cannot hand the process's stdio to the monitor")?;
    let HostSide {
        fds: sent,
        raw_mode,
        size_from,
        console_slave,
    } = host;
    // The monitor has its own copies now; the waiter must not hold the caller's pipes.
    drop(sent);

    if opts.detach {
        return detach(conn, size_from, console_slave, opts.pid_file.as_deref());
    }
    // The caller's terminal stays raw until the process ends.
    let _raw_mode = raw_mode;
    let mut ctty = false;
    if let Some(slave) = &console_slave {
        ctty = nix::unistd::setsid().is_ok() && tty::make_controlling(slave.as_raw_fd()).is_ok();
    }
    let sigfd = forwarded_signals()?;
    let waiter = Waiter {
        conn,
        sigfd,
        size_from,
        poll_size: console_slave.is_some() && !ctty,
    };
    waiter.wait(|_pid| {
        host_process::write_pid_file_if(opts.pid_file.as_deref(), std::process::id())?;
        Ok(())
    })
}

/// A `--process` document without `user` runs as uid 0, gid 0, as under runc (whose
/// process type has the zero user where the key is missing).
fn with_default_user(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(mut m)) if !m.contains_key("user") => {
            m.insert("user".into(), serde_json::json!({ "uid": 0, "gid": 0 }));
            serde_json::Value::Object(m).to_string()
        }
        // Anything else is parsed as it is (and its errors named as they are).
        _ => text.to_string(),
    }
}

/// The process to run: `--process`, or the container's process with the overrides.
/// Either way it runs under the container's seccomp filter, as under runc.
fn process_spec(opts: &Exec, state: &ContainerState) -> Result<ProcessSpec> {
    let bundle = crate::spec::ContainerSpec::load(&state.bundle)?;
    if let Some(path) = &opts.process {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the process spec {}", path.display()))?;
        let p: oci_spec::runtime::Process = crate::spec::from_json(&with_default_user(&text))
            .map_err(|e| anyhow!("{}: not a valid OCI process: {e}", path.display()))?;
        let mut spec =
            crate::spec::process_spec(&p).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        spec.seccomp = bundle.seccomp;
        return Ok(spec);
    }
    let mut p = bundle
        .process
        .ok_or_else(|| anyhow!("the container's config.json has no process"))?;
    apply_overrides(&mut p, opts)?;
    Ok(p)
}

/// runc's `getProcess` without `--process`: the command line over the container's spec.
fn apply_overrides(p: &mut ProcessSpec, opts: &Exec) -> Result<()> {
    if opts.command.is_empty() {
        bail!("exec args cannot be empty");
    }
    p.args = opts.command.clone();
    p.terminal = opts.tty;
    p.console_size = None;
    p.env
        .extend(opts.env.iter().map(|(k, v)| format!("{k}={v}")));
    if let Some(cwd) = &opts.cwd {
        let cwd = cwd.to_string_lossy().into_owned();
        if !cwd.starts_with('/') {
            bail!("--cwd {cwd:?} must be an absolute path");
        }
        p.cwd = cwd;
    }
    if let Some((uid, gid)) = opts.user {
        p.uid = uid;
        if let Some(gid) = gid {
            p.gid = gid;
        }
    }
    p.additional_gids.extend(&opts.additional_gids);
    if let Some(c) = p.capabilities.as_mut() {
        // runc: added to bounding, effective and permitted, and to ambient only when the
        // spec has inheritable capabilities (ambient ones need them).
        let has_inheritable = !c.inheritable.is_empty();
        for cap in &opts.cap {
            c.bounding.push(cap.clone());
            c.effective.push(cap.clone());
            c.permitted.push(cap.clone());
            if has_inheritable {
                c.ambient.push(cap.clone());
            }
        }
    }
    if opts.no_new_privs {
        p.no_new_privileges = true;
    }
    Ok(())
}

/// The descriptors the monitor relays for the process, and what this side keeps.
struct HostSide {
    /// Sent to the monitor: stdin, stdout, stderr; or a terminal's input and output.
    fds: Vec<OwnedFd>,
    /// The caller's terminal in raw mode (foreground with a terminal, no console socket).
    raw_mode: Option<tty::RawMode>,
    /// The terminal whose size the process's pty follows.
    size_from: Option<OwnedFd>,
    /// The pty slave of `--console-socket` (its master went to the socket).
    console_slave: Option<OwnedFd>,
}

impl HostSide {
    fn new(spec: &ProcessSpec, console_socket: Option<&Path>) -> Result<Self> {
        let dup = |fd: BorrowedFd| -> Result<OwnedFd> { Ok(fd.try_clone_to_owned()?) };
        let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        let (stdin, stdout, stderr) = (stdin.as_fd(), stdout.as_fd(), stderr.as_fd());
        if !spec.terminal {
            return Ok(Self {
                fds: vec![dup(stdin)?, dup(stdout)?, dup(stderr)?],
                raw_mode: None,
                size_from: None,
                console_slave: None,
            });
        }
        if let Some(path) = console_socket {
            let slave = tty::Pty::for_console_socket(path)?;
            return Ok(Self {
                fds: vec![slave.try_clone()?, slave.try_clone()?],
                raw_mode: None,
                size_from: Some(slave.try_clone()?),
                console_slave: Some(slave),
            });
        }
        Ok(Self {
            fds: vec![dup(stdin)?, dup(stdout)?],
            raw_mode: tty::RawMode::enter(0),
            size_from: Some(dup(stdin)?),
            console_slave: None,
        })
    }

    fn window_size(&self) -> Option<WindowSize> {
        self.size_from
            .as_ref()
            .and_then(|f| tty::window_size(f.as_raw_fd()))
    }
}

/// Every catchable signal, blocked and read from a signalfd, except SIGPIPE (ours,
/// from a monitor that went away, never the caller's).
fn forwarded_signals() -> Result<SignalFd> {
    // SAFETY: sigfillset/sigdelset initialise and edit a local sigset_t.
    let mask = unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigfillset(&mut set);
        libc::sigdelset(&mut set, libc::SIGPIPE);
        SigSet::from_sigset_t_unchecked(set)
    };
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .context("cannot block signals")?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("cannot create a signalfd")
}

/// `--detach`: a child waits for the process (its pid goes to `--pid-file`); this
/// process returns once the process runs, or fails with its error.
fn detach(
    conn: UnixStream,
    size_from: Option<OwnedFd>,
    console_slave: Option<OwnedFd>,
    pid_file: Option<&Path>,
) -> Result<i32> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: `runvm exec` is single-threaded; the child only runs the waiter below and
    // exits, never returning into the caller's code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!(
            "cannot fork the exec waiter: {}",
            std::io::Error::last_os_error()
        );
    }
    if pid == 0 {
        drop(ready_r);
        std::process::exit(detached_waiter(conn, size_from, console_slave, ready_w));
    }
    drop((ready_w, conn, size_from, console_slave));
    let mut line = String::new();
    let _ = BufReader::new(std::fs::File::from(ready_r)).read_line(&mut line);
    let line = line.trim_end_matches('\n');
    if line == "ok" {
        host_process::write_pid_file_if(pid_file, pid as u32)?;
        return Ok(0);
    }
    // SAFETY: the waiter is our child; reap it (it exits right after reporting).
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    match line.strip_prefix("failed ") {
        Some(msg) => Err(start_failure(msg)),
        None if line.is_empty() => bail!("the exec waiter ended before the process started"),
        None => bail!("{line}"),
    }
}

/// The detached waiter: reports "ok" or "failed <message>" on `ready`, then waits.
fn detached_waiter(
    conn: UnixStream,
    size_from: Option<OwnedFd>,
    console_slave: Option<OwnedFd>,
    ready: OwnedFd,
) -> i32 {
    // Its own session: it leaves the caller's terminal signals, and can own the console
    // pty as its controlling terminal (SIGWINCH on resizes).
    let _ = nix::unistd::setsid();
    let ctty = console_slave
        .as_ref()
        .is_some_and(|s| tty::make_controlling(s.as_raw_fd()).is_ok());
    // Hold none of the caller's stdio: the monitor has its own copies.
    crate::host_process::stdio_to_dev_null();
    let mut ready = Some(std::fs::File::from(ready));
    let sigfd = match forwarded_signals() {
        Ok(s) => s,
        Err(e) => {
            if let Some(mut r) = ready.take() {
                let _ = writeln!(r, "{e}");
            }
            return 1;
        }
    };
    // The monitor lists this waiter's pid in `runvm ps` (it knows only the caller's).
    let holder = crate::monitor::api::ExecControl::Holder {
        pid: std::process::id() as i32,
    };
    let _ = runvm_protocol::write_frame(&mut &conn, &holder);
    let waiter = Waiter {
        conn,
        sigfd,
        size_from,
        poll_size: console_slave.is_some() && !ctty,
    };
    let result = waiter.wait(|_pid| {
        if let Some(mut r) = ready.take() {
            let _ = writeln!(r, "ok");
        }
        Ok(())
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            let (code, msg) = match e.downcast_ref::<ExecFailed>() {
                Some(f) => (f.code, f.message.clone()),
                None => (1, format!("{e:#}")),
            };
            if let Some(mut r) = ready.take() {
                let msg = msg
                    .strip_prefix("exec failed: unable to start container process: ")
                    .map(|m| format!("failed {m}"))
                    .unwrap_or(msg);
                let _ = writeln!(r, "{}", msg.replace('\n', " "));
            } else {
                log::error!("{msg}");
            }
            code
        }
    }
}

/// Waits on the monitor's connection for the exec'd process, forwarding signals and
/// window-size changes.
struct Waiter {
    conn: UnixStream,
    sigfd: SignalFd,
    size_from: Option<OwnedFd>,
    /// No SIGWINCH can come (no controlling terminal): check the size now and then.
    poll_size: bool,
}

impl Waiter {
    /// Returns the process's exit code; `on_started` runs once it runs.
    fn wait(mut self, mut on_started: impl FnMut(i32) -> Result<()>) -> Result<i32> {
        let mut last_size = self.current_size();
        let timeout = if self.poll_size {
            PollTimeout::from(250u16)
        } else {
            PollTimeout::NONE
        };
        loop {
            let (conn_ready, sig_ready) = {
                let mut fds = [
                    PollFd::new(self.conn.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => bail!("poll: {e}"),
                }
                let r = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                (r(&fds[0]), r(&fds[1]))
            };
            if sig_ready {
                while let Ok(Some(info)) = self.sigfd.read_signal() {
                    let signal = info.ssi_signo as i32;
                    match signal {
                        libc::SIGWINCH => self.resize(&mut last_size, true),
                        // Our own children (none but reaped ones) and Go-style noise.
                        libc::SIGCHLD | libc::SIGURG => {}
                        _ => self.control(&ExecControl::Signal { signal }),
                    }
                }
            }
            if self.poll_size {
                self.resize(&mut last_size, false);
            }
            if !conn_ready {
                continue;
            }
            match read_frame::<_, ExecEvent>(&mut self.conn) {
                Ok(ExecEvent::Added { .. }) => {}
                Ok(ExecEvent::Started { pid }) => {
                    log::debug!("exec'd process runs (guest pid {pid})");
                    on_started(pid)?;
                }
                Ok(ExecEvent::Failed { message, .. }) => return Err(start_failure(&message)),
                Ok(ExecEvent::Exited { code, .. }) => return Ok(code),
                Err(FrameError::Closed) | Err(FrameError::Io(_)) => {
                    // The monitor, and the VM with the process, are gone.
                    log::error!("the container's monitor went away; the exec'd process is gone");
                    return Ok(128 + libc::SIGKILL);
                }
                Err(e) => bail!("a bad answer from the container's monitor: {e}"),
            }
        }
    }

    fn current_size(&self) -> Option<WindowSize> {
        self.size_from
            .as_ref()
            .and_then(|f| tty::window_size(f.as_raw_fd()))
    }

    fn resize(&mut self, last: &mut Option<WindowSize>, always: bool) {
        let now = self.current_size();
        if let Some(ws) = now.filter(|n| always || Some(*n) != *last) {
            self.control(&ExecControl::Resize {
                rows: ws.rows,
                cols: ws.cols,
            });
        }
        *last = now;
    }

    fn control(&mut self, msg: &ExecControl) {
        msg.send(&mut self.conn);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_process_without_user_runs_as_root_like_runcs() {
        let out = super::with_default_user(r#"{"args":["true"],"cwd":"/"}"#);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["user"], serde_json::json!({ "uid": 0, "gid": 0 }));
        assert_eq!(v["args"][0], "true");
        let given = r#"{"args":["true"],"cwd":"/","user":{"uid":7,"gid":8}}"#;
        assert_eq!(super::with_default_user(given), given);
        assert_eq!(super::with_default_user("not json"), "not json");
    }

    use super::*;
    use runvm_protocol::Capabilities;

    fn opts() -> Exec {
        Exec {
            container_id: "c".into(),
            process: None,
            command: vec!["id".into(), "-u".into()],
            detach: false,
            pid_file: None,
            console_socket: None,
            tty: true,
            env: vec![("A".into(), "b".into())],
            cwd: Some("/tmp".into()),
            user: Some((1000, Some(1001))),
            additional_gids: vec![5],
            cap: vec!["CAP_NET_ADMIN".into()],
            no_new_privs: true,
            process_label: None,
            apparmor: None,
            preserve_fds: 0,
            ignore_paused: false,
            cgroup: None,
        }
    }

    fn base() -> ProcessSpec {
        ProcessSpec {
            args: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![1],
            capabilities: Some(Capabilities {
                bounding: vec!["CAP_CHOWN".into()],
                ..Default::default()
            }),
            console_size: Some(WindowSize { rows: 1, cols: 1 }),
            ..Default::default()
        }
    }

    #[test]
    fn the_command_line_overrides_the_containers_process_like_runc() {
        let mut p = base();
        apply_overrides(&mut p, &opts()).unwrap();
        assert_eq!(p.args, ["id", "-u"]);
        assert!(p.terminal);
        assert_eq!(p.console_size, None);
        assert_eq!(p.env, ["PATH=/bin", "A=b"]);
        assert_eq!(p.cwd, "/tmp");
        assert_eq!((p.uid, p.gid), (1000, 1001));
        assert_eq!(p.additional_gids, [1, 5]);
        assert!(p.no_new_privileges);
        let c = p.capabilities.unwrap();
        assert_eq!(c.bounding, ["CAP_CHOWN", "CAP_NET_ADMIN"]);
        assert_eq!(c.effective, ["CAP_NET_ADMIN"]);
        assert_eq!(c.permitted, ["CAP_NET_ADMIN"]);
        assert!(c.ambient.is_empty(), "no inheritable set: no ambient caps");
    }

    #[test]
    fn a_user_without_group_keeps_the_gid_and_empty_args_are_refused() {
        let mut p = base();
        p.gid = 7;
        let mut o = opts();
        o.user = Some((1000, None));
        apply_overrides(&mut p, &o).unwrap();
        assert_eq!((p.uid, p.gid), (1000, 7));
        o.command.clear();
        let e = apply_overrides(&mut base(), &o).unwrap_err();
        assert!(e.to_string().contains("exec args cannot be empty"));
        let mut o = opts();
        o.cwd = Some("rel".into());
        assert!(apply_overrides(&mut base(), &o).is_err());
    }
}

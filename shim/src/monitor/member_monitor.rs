//! The monitor of a member container: a container that runs in another container's VM
//! (its sandbox) because it joins that container's network namespace (`docker run
//! --network container:…`, the containers of a Kubernetes pod). It holds no VM: it is
//! the member's host process (its pid in `state` and `--pid-file`, in its cgroup), serves
//! its host API like a container's monitor (`start`, `kill`, `state`), and at `start`
//! starts the virtiofsd that serves the member's root filesystem and binds, then asks the
//! sandbox's monitor for the container over its host API ([`api::Request::AddContainer`],
//! handled in [`super::member`]). From then on it waits like a detached `runvm exec`:
//! signals it gets or is asked for go to the member's main process, and it exits with
//! that process's code. Its end (even a SIGKILL) ends the member in the guest: the
//! sandbox's monitor kills a process whose waiter's connection closed.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::signalfd::SignalFd;
use runvm_protocol::{read_frame, write_frame, ContainerId, FrameError};
use serde::{Deserialize, Serialize};

use super::api::{self, ControlResponse, ExecControl, ExecEvent, MemberSpec, Request, Response};
use super::poll::{pending_signals, PollSet};
use super::prestart::{before_running, refuse_exec, refuse_start, wait_for_start, BeforeStart};
use super::process::HostStdio;
use super::MonitorError;
use crate::share::daemon::{Owners, Virtiofsd};
use crate::share::SharePlan;
use crate::sockpath::SocketDir;
use crate::state::{ContainerState, EXITED_FILE, EXIT_FILE, PAUSED_FILE, STARTED_FILE};

/// Written in a member's state directory once its sandbox's monitor took it: where
/// `runvm exec` of the member goes.
pub const MEMBER_FILE: &str = "member.json";

/// A member's place in its sandbox's VM ([`MEMBER_FILE`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The sandbox container's id (in the same state root).
    pub sandbox: String,
    /// The member's container id in the guest.
    pub container: ContainerId,
}

impl MemberRecord {
    pub fn load(state_dir: &Path) -> Option<Self> {
        let text = std::fs::read(state_dir.join(MEMBER_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// How long a query (`ps`, `events`, `update`) waits for the sandbox's monitor.
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the member's monitor needs: what its `create` prepared.
pub struct MemberConfig {
    /// The member's state directory and runtime directory.
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    /// The sandbox: its id and its runtime directory (its monitor's socket).
    pub sandbox: String,
    pub sandbox_runtime_dir: PathBuf,
    pub virtiofsd: PathBuf,
    pub share: SharePlan,
    pub bounding_caps: Vec<String>,
    pub member: MemberSpec,
}

/// Runs the member's monitor: tells `create` on `ready` once it waits for `start` on
/// `api`; returns the member's exit code.
pub fn run_member(
    cfg: MemberConfig,
    stdio: HostStdio,
    api: UnixListener,
    mut ready: std::fs::File,
) -> Result<i32, MonitorError> {
    let sigfd = match super::block_signals() {
        Ok(s) => s,
        Err(source) => {
            let _ = writeln!(ready, "cannot block signals: {source}");
            return Err(MonitorError::Setup {
                dir: cfg.runtime_dir.clone(),
                source,
            });
        }
    };
    let _ = writeln!(ready, "ok");
    drop(ready);
    let mut start = match wait_for_start(&api, &sigfd)? {
        BeforeStart::Start(conn) => conn,
        BeforeStart::Killed(signal) => {
            mark(&cfg.state_dir, EXITED_FILE, b"");
            return Ok(128 + signal);
        }
    };
    let mut member = match join_sandbox(&cfg, &stdio) {
        Ok(m) => m,
        Err(e) => {
            mark(&cfg.state_dir, EXITED_FILE, b"");
            api::answer(&mut start, &Response::Error(e.to_string()));
            return Err(e);
        }
    };
    // The sandbox's monitor has its own copies of the member's stdio: hold none of the
    // caller's (a pipe held here would not see its end when the member's does).
    drop(stdio);
    crate::host_process::stdio_to_dev_null();
    let code = member.wait(&cfg, &api, &sigfd, Some(start));
    mark(&cfg.state_dir, EXIT_FILE, format!("{code}\n").as_bytes());
    mark(&cfg.state_dir, EXITED_FILE, b"");
    Ok(code)
}

fn mark(state_dir: &Path, name: &str, contents: &[u8]) {
    let _ = std::fs::write(state_dir.join(name), contents);
}

/// The member in its sandbox's VM: the connection to the sandbox's monitor, and the
/// virtiofsd of its share (killed when this is dropped).
struct Joined {
    conn: UnixStream,
    _virtiofsd: Virtiofsd,
    _sockets: SocketDir,
    /// The member's host terminal, for resizes.
    terminal: Option<std::fs::File>,
    /// Its container id in the guest, once the sandbox's monitor said it.
    container: Option<ContainerId>,
}

/// Starts the member's virtiofsd and hands the member, its stdio and a connection to
/// that virtiofsd to the sandbox's monitor.
fn join_sandbox(cfg: &MemberConfig, stdio: &HostStdio) -> Result<Joined, MonitorError> {
    let setup = |source| MonitorError::Setup {
        dir: cfg.runtime_dir.clone(),
        source,
    };
    let sockets = SocketDir::open(&cfg.runtime_dir).map_err(setup)?;
    let mut virtiofsd = super::plumbing::serve_share(
        &cfg.virtiofsd,
        &cfg.share,
        &cfg.member.mounts,
        &Owners::of(&cfg.member.process, &cfg.member.linux),
        &cfg.bounding_caps,
        &cfg.runtime_dir,
        &sockets,
    )?;
    virtiofsd.read_log();
    let share = UnixStream::connect(&virtiofsd.socket).map_err(setup)?;
    let unreachable = |e: api::ApiError| MonitorError::Setup {
        dir: cfg.sandbox_runtime_dir.clone(),
        source: std::io::Error::other(format!(
            "cannot reach the monitor of container {:?}, whose VM this container joins: {e}",
            cfg.sandbox
        )),
    };
    let mut conn = api::connect(&cfg.sandbox_runtime_dir).map_err(unreachable)?;
    let mut member = cfg.member.clone();
    if member.process.terminal && member.process.console_size.is_none() {
        if let HostStdio::Terminal { input, .. } = stdio {
            member.process.console_size = super::tty::window_size(input.as_raw_fd());
        }
    }
    write_frame(&mut conn, &Request::AddContainer { member }).map_err(|e| unreachable(e.into()))?;
    let mut fds: Vec<RawFd> = stdio.raw_fds();
    fds.push(share.as_raw_fd());
    runvm_protocol::scm::send_fds(conn.as_fd(), b"\0", &fds)
        .map_err(|e| setup(std::io::Error::other(e)))?;
    let terminal = match stdio {
        HostStdio::Terminal { input, .. } => input.try_clone().ok(),
        HostStdio::Pipes { .. } => None,
    };
    Ok(Joined {
        conn,
        _virtiofsd: virtiofsd,
        _sockets: sockets,
        terminal,
        container: None,
    })
}

impl Joined {
    /// Serves the member's host API and signals until its main process has ended;
    /// `start` hears how the start went.
    fn wait(
        &mut self,
        cfg: &MemberConfig,
        api_listener: &UnixListener,
        sigfd: &SignalFd,
        mut start: Option<UnixStream>,
    ) -> i32 {
        #[derive(Clone, Copy, PartialEq)]
        enum Slot {
            Sandbox,
            Api,
            Signals,
        }
        loop {
            let ready = {
                let mut waiting = PollSet::new();
                waiting.add(Slot::Sandbox, self.conn.as_fd());
                waiting.add(Slot::Api, api_listener.as_fd());
                waiting.add(Slot::Signals, sigfd.as_fd());
                match waiting.wait(None) {
                    Ok(r) => r,
                    Err(e) => {
                        log::error!("member container: {e}");
                        return 1;
                    }
                }
            };
            if ready.contains(Slot::Signals) {
                for signal in pending_signals(sigfd) {
                    if signal == libc::SIGWINCH {
                        self.resize();
                    } else {
                        self.control(&ExecControl::Signal { signal });
                    }
                }
            }
            if ready.contains(Slot::Api) {
                self.api_request(cfg, api_listener);
            }
            if !ready.contains(Slot::Sandbox) {
                continue;
            }
            match read_frame::<_, ExecEvent>(&mut self.conn) {
                Ok(ExecEvent::Added { container }) => {
                    self.container = Some(container);
                    let record = MemberRecord {
                        sandbox: cfg.sandbox.clone(),
                        container,
                    };
                    if let Ok(json) = serde_json::to_vec(&record) {
                        mark(&cfg.state_dir, MEMBER_FILE, &json);
                    }
                }
                Ok(ExecEvent::Started { pid }) => {
                    log::debug!("member container runs (guest pid {pid})");
                    crate::cgroup::apply_at_start(&cfg.state_dir);
                    mark(&cfg.state_dir, STARTED_FILE, b"");
                    if let Some(mut c) = start.take() {
                        api::answer(&mut c, &Response::Ok);
                    }
                }
                Ok(ExecEvent::Failed { code, message }) => {
                    mark(&cfg.state_dir, EXITED_FILE, b"");
                    match start.take() {
                        Some(mut c) => api::answer(&mut c, &Response::Error(message)),
                        None => log::error!("member container: {message}"),
                    }
                    return code;
                }
                Ok(ExecEvent::Exited { code, oom_kills }) => {
                    if oom_kills > 0 {
                        show_oom_kills(&cfg.state_dir);
                    }
                    return code;
                }
                Err(e) => {
                    if !matches!(e, FrameError::Closed) {
                        log::error!(
                            "member container: a bad message from the monitor of {:?}: {e}",
                            cfg.sandbox
                        );
                    }
                    // The sandbox's VM, and the member with it, are gone.
                    mark(&cfg.state_dir, EXITED_FILE, b"");
                    if let Some(mut c) = start.take() {
                        let why = format!("the VM of container {:?} ended", cfg.sandbox);
                        api::answer(&mut c, &Response::Error(why));
                    }
                    return 128 + libc::SIGKILL;
                }
            }
        }
    }

    fn api_request(&mut self, cfg: &MemberConfig, api_listener: &UnixListener) {
        let Some((mut conn, req)) = api::accept_request(api_listener) else {
            return;
        };
        match req {
            Request::Start => refuse_start(&mut conn),
            Request::Signal { signal } => {
                self.control(&ExecControl::Signal { signal });
                api::answer(&mut conn, &Response::Ok);
            }
            Request::Exec { .. } | Request::AddContainer { .. } => refuse_exec(
                &mut conn,
                &format!(
                    "this container runs in the VM of container {:?}: exec through its monitor",
                    cfg.sandbox
                ),
            ),
            Request::Processes { guest: false } => {
                api::answer(&mut conn, &before_running(&req, "running"))
            }
            Request::Processes { .. } | Request::Stats | Request::Update { .. } => {
                let answer = self.query(cfg, req);
                api::answer(&mut conn, &answer);
            }
            Request::Pause | Request::Resume => {
                // Its guest cgroup is frozen or thawed; the VM, and its other
                // containers, go on.
                let pause = matches!(req, Request::Pause);
                let answer = self.query(cfg, req);
                if answer == ControlResponse::Ok {
                    let paused = cfg.state_dir.join(PAUSED_FILE);
                    let _ = if pause {
                        std::fs::write(paused, b"")
                    } else {
                        std::fs::remove_file(paused)
                    };
                }
                api::answer(&mut conn, &answer);
            }
            Request::Member { .. } => api::answer(
                &mut conn,
                &ControlResponse::Error(format!(
                    "not a request for a container that runs in the VM of container {:?}",
                    cfg.sandbox
                )),
            ),
        }
    }

    /// Asks the sandbox's monitor `req` about this member; its host process is this one.
    fn query(&self, cfg: &MemberConfig, req: Request) -> ControlResponse {
        let Some(container) = self.container else {
            return before_running(&req, "starting");
        };
        let asked = Request::Member {
            container,
            query: Box::new(req),
        };
        match api::request_control(&cfg.sandbox_runtime_dir, &asked, QUERY_TIMEOUT) {
            Ok(ControlResponse::Processes { guest, .. }) => ControlResponse::Processes {
                host_pids: vec![std::process::id() as i32],
                guest,
            },
            Ok(answer) => answer,
            Err(e) => ControlResponse::Error(format!(
                "the monitor of container {:?}, whose VM this container runs in: {e}",
                cfg.sandbox
            )),
        }
    }

    fn resize(&mut self) {
        let resize = self
            .terminal
            .as_ref()
            .and_then(|t| ExecControl::resize_to(t.as_raw_fd()));
        if let Some(r) = resize {
            self.control(&r);
        }
    }

    fn control(&mut self, msg: &ExecControl) {
        msg.send(&mut self.conn);
    }
}

/// How long the member's end waits for the engine to read a raised OOM count.
const OOM_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The guest's OOM killer killed processes of the member: its host cgroup counts a kill
/// too ([`crate::cgroup::oom`]), read by the engine before the member's exit.
fn show_oom_kills(state_dir: &Path) {
    use crate::cgroup::oom::{OomReporter, ReadWatch};
    match OomReporter::for_container(state_dir) {
        None => {}
        Some(Err(e)) => log::warn!("the member's OOM kill cannot be shown in its host cgroup (container engines will not report it): {e}"),
        Some(Ok(mut reporter)) => match reporter.report() {
            Ok(_) => {
                if let Ok(watch) = ReadWatch::new(reporter.dir()) {
                    watch.wait_read(std::time::Instant::now() + OOM_READ_WAIT);
                }
            }
            Err(e) => log::warn!("the member's OOM kill cannot be shown in its host cgroup {} (container engines will not report it): {e}", reporter.dir().display()),
        },
    }
}

/// The sandbox's runtime directory in state root `root`.
pub fn sandbox_runtime_dir(root: &Path, sandbox: &str) -> PathBuf {
    ContainerState::runtime_dir(root, sandbox)
}

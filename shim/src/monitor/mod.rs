//! The monitor: one host process per container that holds the VM, speaks the control
//! protocol with the guest init over vsock, relays stdio, forwards signals, runs exec'd
//! processes, and ends with the workload's exit code.
//!
//! Here: the VM's thread, the wait for `runvm start`, the boot and the guest's hello.
//! The running container is [`session`]; its process table [`process`]; exec requests
//! [`exec`]; host terminals [`tty`]; byte relays [`stdio`]; the host API [`api`].

pub mod api;
mod control;
mod exec;
pub mod guard;
pub mod process;
mod session;
mod stdio;
pub mod tty;
mod untrusted;

use std::io::{ErrorKind, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use runvm_protocol::{
    read_frame, write_frame, write_frame_limited, ExitStatus, FrameError, GuestMessage,
    HostMessage, NetworkSpec, CONTROL_PORT, DNS_PORT, MAX_HOST_FRAME_LEN, PROTOCOL_VERSION,
    STREAM_PORT, WRITEBACK_PORT,
};
use vmm::{BootTimes, DiskConfig, VmConfig, VmExit, VmExitReason, Vmm, VmmError, VsockConfig};
use vmm_sys_util::eventfd::EventFd;

use crate::assets::GuestAssets;
pub use process::HostStdio;
use untrusted::FrameReader;

/// Guest CID of every runvm guest (each VM has its own vsock device, so they never clash).
pub const GUEST_CID: u64 = 3;
/// Signals a foreground monitor forwards to the workload, as runc does.
const FORWARDED: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
];

/// Errors running a container's VM.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot set up the monitor in {dir}: {source}")]
    Setup {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the VM: {0}")]
    Vmm(#[from] VmmError),
    #[error("the guest did not connect within {0:?}; rerun with RUNVM_DEBUG_CONSOLE=1 to see the guest kernel's console")]
    BootTimeout(Duration),
    #[error("the guest's init connected but did not finish its Hello within {0:?} (it sent {1} bytes); the VM was stopped")]
    HelloTimeout(Duration, usize),
    #[error("the guest stopped before its init connected ({0}); rerun with RUNVM_DEBUG_CONSOLE=1 to see the guest kernel's console")]
    DiedBeforeHello(String),
    #[error("the guest sent a malformed or unexpected message ({0}); the VM was stopped")]
    Protocol(String),
    #[error("the guest speaks protocol version {0}, this runvm speaks {PROTOCOL_VERSION}; rebuild the initramfs (cargo xtask initramfs)")]
    Version(u32),
    #[error("the VM stopped before the workload's exit status was reported: {0}")]
    GuestDied(String),
    #[error(transparent)]
    Binds(#[from] crate::rootfs::binds::BindError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
}

/// How to build and run one container's VM.
pub struct MonitorConfig {
    pub assets: GuestAssets,
    pub vcpus: u8,
    pub mem_mib: u64,
    /// Private directory for the vsock sockets (removed by the caller).
    pub runtime_dir: PathBuf,
    pub disks: Vec<DiskConfig>,
    /// How the guest stacks the disks (sent in `Run`).
    pub rootfs_spec: runvm_protocol::RootfsSpec,
    /// Where the guest's changes are written back when the container stops.
    pub writeback: Option<crate::rootfs::writeback::WritebackTarget>,
    /// Images the disks name as `/proc/self/fd/N` (and the cache locks): held until exit,
    /// never read.
    #[allow(dead_code)]
    pub held_files: Vec<std::fs::File>,
    pub debug_console: bool,
    pub seccomp: bool,
    pub boot_timeout: Duration,
    pub timings_file: Option<PathBuf>,
    /// The container's `resolv.conf` on the host: its loopback nameservers get a DNS
    /// forwarder in the guest.
    pub resolv_conf: PathBuf,
    /// Words appended to the guest kernel's command line (`RUNVM_KERNEL_CMDLINE_APPEND`).
    pub cmdline_append: Option<String>,
    /// Called once, on the monitor's thread, when the container's process has started
    /// (the foreground `run`'s poststart hooks); it must not block.
    pub on_started: Option<Box<dyn Fn() + Send + Sync>>,
}

/// The record of the network plumbing (TAPs, tc rules) in a runtime directory, which
/// the cleanup guard undoes if the monitor dies.
pub fn network_record(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("network.json")
}

fn explain(reason: &VmExitReason) -> String {
    match reason {
        VmExitReason::Reset => {
            "the guest rebooted (its init exited, or its kernel panicked or rebooted)".into()
        }
        VmExitReason::TripleFault => "the guest kernel crashed (triple fault)".into(),
        VmExitReason::KvmError(m) => m.clone(),
        VmExitReason::Stopped => "the VM was stopped".into(),
    }
}

/// When the container's process runs.
pub enum Launch {
    /// `runvm run`: as soon as the guest is up.
    Immediate,
    /// `runvm create`: report readiness (a line on `ready`: `ok`, or the error), wait
    /// for `runvm start` on `api`, and only then boot the VM, so a created container holds
    /// no VM (and the network namespace is complete: Docker fills it between create and
    /// start). `state_dir` gets the started and exit files.
    OnStart {
        api: UnixListener,
        ready: std::fs::File,
        state_dir: PathBuf,
    },
}

type VmResult = Arc<Mutex<Option<Result<VmExit, VmmError>>>>;

/// A VM running on its own thread, with an eventfd that fires when it ends.
struct RunningVm {
    handle: vmm::VmmHandle,
    done: EventFd,
    result: VmResult,
    thread: Option<JoinHandle<()>>,
}

impl RunningVm {
    fn start(vmm: Vmm) -> Result<Self, MonitorError> {
        let handle = vmm.handle();
        let done = EventFd::new(libc::EFD_NONBLOCK).map_err(vmm::VmmError::Io)?;
        let result: VmResult = Arc::new(Mutex::new(None));
        let (r, d) = (result.clone(), done.try_clone().map_err(vmm::VmmError::Io)?);
        let thread = std::thread::Builder::new()
            .name("runvm-vmm".into())
            .spawn(move || {
                let res = vmm.run();
                *r.lock().unwrap_or_else(|e| e.into_inner()) = Some(res);
                let _ = d.write(1);
            })
            .map_err(vmm::VmmError::Io)?;
        Ok(Self {
            handle,
            done,
            result,
            thread: Some(thread),
        })
    }

    fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits up to `timeout` for the guest to stop by itself, then stops it.
    fn finish(&mut self, timeout: Duration) -> Result<VmExit, MonitorError> {
        // Sleep on the VM thread's eventfd, not in a 2 ms polling loop: twenty monitors
        // waiting for their guests to power off at once (`docker stop` of twenty
        // containers) woke 10,000 times a second between them, taking CPU from the
        // very guests they waited for.
        let deadline = Instant::now() + timeout;
        let ended = self.finished()
            || wait_ready(&[self.done.as_raw_fd()], Some(deadline))
                .map(|r| r[0])
                .unwrap_or(false);
        if !ended {
            log::warn!("the guest did not power off within {timeout:?}; stopping it");
            self.handle.stop();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        match self.result.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(r) => Ok(r?),
            None => Err(MonitorError::GuestDied(
                "the VMM thread ended without a result".into(),
            )),
        }
    }
}

/// Outcome of the workload.
pub(crate) enum Ending {
    Exited(ExitStatus),
    StartFailed(i32, String),
}

/// How the wait of a created container ended.
enum BeforeStart {
    /// `runvm start` asked for the process; its connection waits for the answer.
    Start(UnixStream),
    /// A signal that would end a waiting process (`runvm kill` of a created container,
    /// or one sent to the monitor itself): the container stops with 128+signo.
    Killed(i32),
}

/// Serves the host API of a created container until `start` or a terminating signal.
/// No VM exists yet.
fn wait_for_start(api: &UnixListener, sigfd: &SignalFd) -> Result<BeforeStart, MonitorError> {
    loop {
        let ready_fds = wait_ready(&[api.as_raw_fd(), sigfd.as_raw_fd()], None)?;
        if ready_fds[1] {
            if let Some(signal) = pending_signals(sigfd)
                .into_iter()
                .find(|s| terminates_by_default(*s))
            {
                return Ok(BeforeStart::Killed(signal));
            }
        }
        if !ready_fds[0] {
            continue;
        }
        let Ok((mut conn, _)) = api.accept() else {
            continue;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        match read_frame::<_, api::Request>(&mut conn) {
            Ok(api::Request::Start) => return Ok(BeforeStart::Start(conn)),
            Ok(api::Request::Signal { signal }) => {
                reply(&mut conn, api::Response::Ok);
                if terminates_by_default(signal) {
                    return Ok(BeforeStart::Killed(signal));
                }
            }
            Ok(api::Request::Exec { .. }) => {
                let _ = write_frame(
                    &mut conn,
                    &api::ExecEvent::Failed {
                        code: 1,
                        message: "cannot exec in a created container: container not running".into(),
                    },
                );
            }
            Ok(other) => control::answer(&mut conn, control::before_running(&other, "created")),
            Err(e) => log::warn!("ignoring a malformed request on the monitor socket: {e}"),
        }
    }
}

/// Whether a signal's default action ends a process (so it stops a created container,
/// whose process has not started, as it would stop runc's waiting init).
fn terminates_by_default(signal: i32) -> bool {
    ![libc::SIGCHLD, libc::SIGCONT, libc::SIGURG, libc::SIGWINCH].contains(&signal)
}

/// Boots the VM described by `cfg`, runs `run` (a [`HostMessage::Run`]) in it with the
/// given host stdio descriptors when `launch` says so, and returns the workload's exit code.
/// Must be called before the process has other threads (signals are blocked here).
pub fn run_vm(
    cfg: MonitorConfig,
    run: HostMessage,
    stdio: HostStdio,
    launch: Launch,
) -> Result<i32, MonitorError> {
    let (api, mut ready, state_dir) = match launch {
        Launch::Immediate => (None, None, None),
        Launch::OnStart {
            api,
            ready,
            state_dir,
        } => (Some(api), Some(ready), Some(state_dir)),
    };
    let mut start_conn = None;
    let result = run_vm_inner(
        &cfg,
        run,
        stdio,
        api.as_ref(),
        &mut ready,
        &mut start_conn,
        state_dir.as_deref(),
    );
    if let Err(e) = &result {
        if let Some(r) = ready.as_mut() {
            // create is still waiting: tell it why the container could not be created.
            let _ = writeln!(r, "{e}");
        }
        if let Some(c) = start_conn.as_mut() {
            // start is waiting: tell it why the container could not start.
            reply(c, api::Response::Error(e.to_string()));
        }
    }
    if let (Ok(code), Some(dir)) = (&result, &state_dir) {
        let _ = std::fs::write(dir.join(crate::state::EXIT_FILE), format!("{code}\n"));
    }
    // The VM is gone: so goes its cgroup (the runtime directory is in the state directory).
    if let Some(dir) = cfg.runtime_dir.parent() {
        crate::container::cgroup::leave_and_remove(dir);
    }
    result
}

fn run_vm_inner(
    cfg: &MonitorConfig,
    run: HostMessage,
    stdio: HostStdio,
    api: Option<&UnixListener>,
    ready: &mut Option<std::fs::File>,
    start_conn: &mut Option<UnixStream>,
    state_dir: Option<&Path>,
) -> Result<i32, MonitorError> {
    let setup = |source| MonitorError::Setup {
        dir: cfg.runtime_dir.clone(),
        source,
    };
    let mut mask = SigSet::empty();
    FORWARDED.iter().for_each(|s| mask.add(*s));
    // A terminal's size changes (the monitor's controlling terminal, if it has one).
    mask.add(Signal::SIGWINCH);
    mask.thread_block().map_err(|e| setup(e.into()))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| setup(e.into()))?;

    if let Some(api) = api {
        if let Some(mut r) = ready.take() {
            // create returns now; nothing runs, and no VM exists, until `runvm start`.
            let _ = writeln!(r, "ok");
        }
        match wait_for_start(api, &sigfd)? {
            BeforeStart::Start(conn) => *start_conn = Some(conn),
            BeforeStart::Killed(signal) => return Ok(128 + signal),
        }
    }

    // Held open until the VM is gone: the vsock device binds and connects through it.
    let sockets = crate::sockpath::SocketDir::open(&cfg.runtime_dir).map_err(setup)?;
    let uds = sockets.path("vsock.sock");
    let port_path = |port: u32| PathBuf::from(format!("{}_{port}", uds.display()));
    let control_listener = UnixListener::bind(port_path(CONTROL_PORT)).map_err(setup)?;
    let stream_listener = UnixListener::bind(port_path(STREAM_PORT)).map_err(setup)?;
    let writeback_listener = match cfg.writeback {
        Some(_) => Some(UnixListener::bind(port_path(WRITEBACK_PORT)).map_err(setup)?),
        None => None,
    };
    // Bind-mounted files are read now, at start: Docker writes them after create.
    let mut run = run;
    if let HostMessage::Run { mounts, .. } = &mut run {
        crate::rootfs::binds::load_files(mounts)?;
    }

    // The network namespace is as Docker left it: mirror it into the guest. Dropped
    // (undone) when this function returns, after the VM has stopped.
    let mut mirror = crate::network::Mirror::setup(&network_record(&cfg.runtime_dir))?;
    let nics = mirror.take_nics();
    let dns_forward = if nics.is_empty() {
        Vec::new()
    } else {
        crate::network::dns::loopback_nameservers_in(&cfg.resolv_conf)
    };
    if !dns_forward.is_empty() {
        let dns_listener = UnixListener::bind(port_path(DNS_PORT)).map_err(setup)?;
        crate::network::dns::serve(dns_listener).map_err(setup)?;
    }
    if let HostMessage::Run { network, .. } = &mut run {
        *network = NetworkSpec {
            interfaces: mirror.interfaces().to_vec(),
            dns_forward,
        };
    }

    let mut cmdline = String::new();
    if cfg.debug_console {
        cmdline.push_str("runvm.debug=1");
    } else {
        cmdline.push_str("quiet");
    }
    if let Some(extra) = &cfg.cmdline_append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    let vmm = Vmm::new(VmConfig {
        vcpus: cfg.vcpus,
        mem_mib: cfg.mem_mib,
        kernel: cfg.assets.kernel.clone(),
        initramfs: Some(cfg.assets.initramfs.clone()),
        cmdline,
        disks: cfg.disks.clone(),
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: uds.clone(),
        }),
        nics,
        serial: cfg
            .debug_console
            .then(|| Box::new(std::io::stderr()) as Box<dyn std::io::Write + Send>),
        seccomp: cfg.seccomp,
    })?;
    let mut vm = RunningVm::start(vmm)?;

    let io = Io {
        control_listener: &control_listener,
        stream_listener: &stream_listener,
        writeback: writeback_listener.as_ref().zip(cfg.writeback.as_ref()),
        sigfd: &sigfd,
        api,
        state_dir,
        on_started: cfg.on_started.as_deref(),
        vm: vm.handle.clone(),
    };
    let result = converse(cfg, &mut vm, run, stdio, &io, start_conn);
    let ending = match result {
        Ok(e) => e,
        Err(e) => {
            vm.handle.stop();
            let exit = vm.finish(Duration::from_secs(5));
            return Err(match (e, exit) {
                (MonitorError::GuestDied(_), Ok(exit)) => {
                    MonitorError::GuestDied(explain(&exit.reason))
                }
                (MonitorError::GuestDied(_), Err(e)) => e,
                (MonitorError::DiedBeforeHello(_), Ok(exit)) => {
                    MonitorError::DiedBeforeHello(explain(&exit.reason))
                }
                (e, _) => e,
            });
        }
    };
    // Everything the container leaves is on the host now (exit status, output, the
    // write-back of its writable layer); what the guest would still do after `Shutdown`,
    // sync a writable layer that dies with this process and reboot, is of no use. Stop
    // the VM now: its exit then costs no guest CPU time, which twenty guests stopping at
    // once under emulation did not have within Docker's SIGKILL deadline.
    vm.handle.stop();
    let exit = vm.finish(Duration::from_secs(10))?;
    report_times(cfg, &exit.times);
    match ending {
        Ending::Exited(status) => Ok(status.code()),
        Ending::StartFailed(code, message) => {
            if api.is_none() {
                eprintln!("runvm: {message}");
            }
            Ok(code)
        }
    }
}

fn report_times(cfg: &MonitorConfig, t: &BootTimes) {
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let launch = crate::LAUNCH
        .get()
        .and_then(|l| t.vmm_start.map(|v| v.saturating_duration_since(*l)));
    let json = serde_json::json!({
        "launch_to_vmm_start_ms": ms(launch),
        "kernel_entry_ms": ms(t.kernel_entry),
        "init_started_ms": ms(t.init_started),
        "workload_started_ms": ms(t.workload_started),
        "workload_exited_ms": ms(t.workload_exited),
        "vm_exit_ms": ms(t.vm_exit),
    });
    log::debug!("boot times: {json}");
    if let Some(path) = &cfg.timings_file {
        if let Err(e) = std::fs::write(path, format!("{json}\n")) {
            log::warn!("cannot write boot timings to {}: {e}", path.display());
        }
    }
}

fn wait_ready(fds: &[RawFd], deadline: Option<Instant>) -> Result<Vec<bool>, MonitorError> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        // SAFETY: the descriptors are owned by the caller and outlive this call.
        let borrowed: Vec<_> = fds
            .iter()
            .map(|fd| unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) })
            .collect();
        let mut pfds: Vec<PollFd> = borrowed
            .iter()
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut pfds, timeout) {
            Ok(0) => return Ok(vec![false; fds.len()]),
            Ok(_) => {
                return Ok(pfds
                    .iter()
                    .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                    .collect())
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(MonitorError::Protocol(format!("poll failed: {e}"))),
        }
    }
}

fn protocol(e: FrameError) -> MonitorError {
    MonitorError::Protocol(e.to_string())
}

fn pending_signals(sigfd: &SignalFd) -> Vec<i32> {
    let mut out = Vec::new();
    while let Ok(Some(info)) = sigfd.read_signal() {
        out.push(info.ssi_signo as i32);
    }
    out
}

/// The descriptors the monitor listens on.
pub(crate) struct Io<'a> {
    control_listener: &'a UnixListener,
    stream_listener: &'a UnixListener,
    /// The guest's write-back connection and where it goes (containers with a writable layer).
    writeback: Option<(
        &'a UnixListener,
        &'a crate::rootfs::writeback::WritebackTarget,
    )>,
    sigfd: &'a SignalFd,
    api: Option<&'a UnixListener>,
    state_dir: Option<&'a Path>,
    on_started: Option<&'a (dyn Fn() + Send + Sync)>,
    /// Pauses and resumes the VM.
    vm: vmm::VmmHandle,
}

fn reply(conn: &mut UnixStream, r: api::Response) {
    // A caller that went away only misses its answer.
    let _ = write_frame(conn, &r);
}

/// Most control connections kept waiting for their Hello at once.
const MAX_HELLO_CANDIDATES: usize = 8;
/// How long a write of a control message to the guest may block.
const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A guest message named for an error, without its (guest-written, unbounded) text.
fn describe(m: &GuestMessage) -> String {
    match m {
        GuestMessage::Hello { version } => format!("Hello (version {version})"),
        GuestMessage::Started { process, .. } => format!("Started (process {process})"),
        GuestMessage::StartFailed { process, .. } => format!("StartFailed (process {process})"),
        GuestMessage::Exited { process, .. } => format!("Exited (process {process})"),
        GuestMessage::Processes { request, .. } => format!("Processes (request {request})"),
        GuestMessage::Stats { request, .. } => format!("Stats (request {request})"),
        GuestMessage::Updated { request, .. } => format!("Updated (request {request})"),
    }
}

/// One request on the host API while the guest boots: signals wait until the process
/// runs, except SIGKILL, which stops the boot (returns true); exec is refused.
fn boot_api_request(io: &Io, queued: &mut Vec<i32>) -> bool {
    let Some(Ok((mut conn, _))) = io.api.map(|a| a.accept()) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    match read_frame::<_, api::Request>(&mut conn) {
        Ok(api::Request::Start) => reply(
            &mut conn,
            api::Response::Error("cannot start an already started container".into()),
        ),
        Ok(api::Request::Signal { signal }) => {
            reply(&mut conn, api::Response::Ok);
            if signal == libc::SIGKILL {
                return true;
            }
            queued.push(signal);
        }
        Ok(api::Request::Exec { .. }) => {
            let _ = write_frame(
                &mut conn,
                &api::ExecEvent::Failed {
                    code: 1,
                    message: "cannot exec: the container's process has not started yet (container not running)".into(),
                },
            );
        }
        Ok(other) => control::answer(&mut conn, control::before_running(&other, "starting")),
        Err(e) => log::warn!("ignoring a malformed request on the monitor socket: {e}"),
    }
    false
}

fn converse(
    cfg: &MonitorConfig,
    vm: &mut RunningVm,
    run: HostMessage,
    stdio: HostStdio,
    io: &Io,
    pending_start: &mut Option<UnixStream>,
) -> Result<Ending, MonitorError> {
    let mut queued: Vec<i32> = Vec::new();

    // Phase 1: the guest init connects and says hello, within the boot timeout however
    // it sends its bytes. A connection that ends before its Hello (the guest gave up on a
    // slow connect and retries) is dropped, not fatal. The host API answers meanwhile.
    let deadline = Instant::now() + cfg.boot_timeout;
    let mut candidates: Vec<(UnixStream, FrameReader)> = Vec::new();
    let (mut control, reader) = 'hello: loop {
        let mut fds = vec![
            io.control_listener.as_raw_fd(),
            vm.done.as_raw_fd(),
            io.sigfd.as_raw_fd(),
        ];
        if let Some(a) = io.api {
            fds.push(a.as_raw_fd());
        }
        let first_candidate = fds.len();
        fds.extend(candidates.iter().map(|(c, _)| c.as_raw_fd()));
        let ready_fds = wait_ready(&fds, Some(deadline))?;
        for i in (0..candidates.len()).rev() {
            if !ready_fds[first_candidate + i] {
                continue;
            }
            let (conn, reader) = &mut candidates[i];
            let open = reader
                .fill(conn.as_fd())
                .map_err(|e| MonitorError::Protocol(format!("reading the guest's hello: {e}")))?;
            match reader.next::<GuestMessage>() {
                Ok(Some(GuestMessage::Hello { version })) if version == PROTOCOL_VERSION => {
                    break 'hello candidates.swap_remove(i);
                }
                Ok(Some(GuestMessage::Hello { version })) => {
                    return Err(MonitorError::Version(version))
                }
                Ok(Some(other)) => {
                    return Err(MonitorError::Protocol(format!(
                        "expected Hello, got {}",
                        describe(&other)
                    )))
                }
                Ok(None) if !open => {
                    log::debug!(
                        "a control connection ended before its Hello; waiting for the next"
                    );
                    candidates.remove(i);
                }
                Ok(None) => {}
                Err(e) => return Err(protocol(e)),
            }
        }
        if ready_fds[0] {
            match io.control_listener.accept() {
                Ok((conn, _)) => {
                    // Control messages to the guest are small: a guest that stops reading
                    // them fails the container instead of stalling the monitor.
                    let _ = conn.set_write_timeout(Some(CONTROL_WRITE_TIMEOUT));
                    if candidates.len() >= MAX_HELLO_CANDIDATES {
                        log::warn!("the guest opened more than {MAX_HELLO_CANDIDATES} control connections without a Hello; dropping the oldest");
                        candidates.remove(0);
                    }
                    candidates.push((conn, FrameReader::default()));
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(MonitorError::Protocol(format!(
                        "accepting the control connection: {e}"
                    )))
                }
            }
        }
        if ready_fds[1] {
            return Err(MonitorError::DiedBeforeHello(String::new()));
        }
        if ready_fds[2] {
            queued.extend(pending_signals(io.sigfd));
        }
        if io.api.is_some() && ready_fds[3] && boot_api_request(io, &mut queued) {
            // `runvm kill -s KILL` (or `delete --force`) while the guest boots.
            vm.handle.stop();
            if let Some(mut c) = pending_start.take() {
                reply(
                    &mut c,
                    api::Response::Error(
                        "the container was killed (SIGKILL) while its VM booted".into(),
                    ),
                );
            }
            return Ok(Ending::Exited(ExitStatus::Signaled(libc::SIGKILL)));
        }
        if Instant::now() >= deadline {
            return Err(match candidates.iter().map(|(_, r)| r.received()).max() {
                None => MonitorError::BootTimeout(cfg.boot_timeout),
                Some(got) => MonitorError::HelloTimeout(cfg.boot_timeout, got),
            });
        }
    };

    // Other connections that never said hello are of no use.
    drop(candidates);

    let mut run = run;
    if let HostMessage::Run { process, .. } = &mut run {
        if process.terminal && process.console_size.is_none() {
            // The host terminal's size when the process starts.
            if let HostStdio::Terminal { input, .. } = &stdio {
                process.console_size = tty::window_size(input.as_raw_fd());
            }
        }
    }
    write_frame_limited(&mut control, &run, MAX_HOST_FRAME_LEN).map_err(protocol)?;
    session::Session::new(
        control,
        reader,
        io,
        vm.done.as_raw_fd(),
        stdio,
        queued,
        pending_start,
    )?
    .run()
}

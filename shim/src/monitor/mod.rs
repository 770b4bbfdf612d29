//! The monitor: one host process per container that holds the VM, speaks the control
//! protocol with the guest init over vsock, relays stdio, forwards signals, runs exec'd
//! processes, and ends with the workload's exit code.
//!
//! Here: [`run_vm`], the course of a container from its create (or run) to its end, and
//! the monitor's errors. The course's steps: the host API before the process runs
//! ([`prestart`]), what is set up at start ([`plumbing`]), the VM's thread ([`vm`]), the
//! guest's hello ([`hello`]), the running container ([`session`]) with its process table
//! ([`process`]), exec requests ([`exec`]) and control requests ([`control`]). Beside
//! them: host terminals [`tty`], byte relays [`stdio`], the host API's messages [`api`],
//! waiting on descriptors [`poll`], reading the guest's bytes [`untrusted`], and what the
//! monitor keeps once the VM is set up ([`privileges`]: nothing but its descriptors).

pub mod api;
mod control;
mod exec;
pub mod guard;
mod hello;
mod jail;
mod member;
pub mod member_monitor;
mod plumbing;
mod poll;
mod prestart;
pub mod privileges;
pub mod process;
mod session;
mod stdio;
pub mod tty;
mod untrusted;
mod vm;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use runvm_protocol::{
    write_frame_limited, ExitStatus, FrameError, HostMessage, ProcessId, MAX_HOST_FRAME_LEN,
    PROTOCOL_VERSION,
};
use vmm::{Vmm, VmmError};
use vmm_sys_util::eventfd::EventFd;

use crate::assets::GuestAssets;
use hello::Hello;
use jail::Bind;
pub use plumbing::guest_cmdline;
use plumbing::Plumbing;
use prestart::BeforeStart;
pub use process::{AttachError, HostStdio};
use session::Session;
use untrusted::GuestText;
pub use vm::VmGone;
use vm::{report_times, RunningVm};

/// Guest CID of every runvm guest (each VM has its own vsock device, so they never clash).
pub const GUEST_CID: u64 = 3;
/// Where the host's cgroup file systems are mounted (bound into the monitor's jail).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// KVM's device, opened when the VM is built (in the monitor's jail).
const KVM_DEVICE: &str = "/dev/kvm";
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

/// Errors running a container's VM. Nothing the guest wrote reaches a message unbounded:
/// its frames' errors are [`GuestText`], its messages are named by kind and numbers.
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
    DiedBeforeHello(#[source] VmGone),
    /// The guest said what it may not say at this point (the monitor's own words, with
    /// the guest's numbers and never its text).
    #[error("the guest sent a malformed or unexpected message ({0}); the VM was stopped")]
    Protocol(String),
    /// A frame on the control connection that does not decode or is over its limit.
    #[error("the guest sent a malformed or unexpected message ({0}); the VM was stopped")]
    Frame(#[source] GuestText<FrameError>),
    /// The first frame of a stream connection that does not decode or is over its limit.
    #[error("the guest sent a malformed or unexpected message (a stream header from the guest: {0}); the VM was stopped")]
    StreamHeader(#[source] GuestText<FrameError>),
    /// A stream the guest opened that its process cannot take.
    #[error("the guest sent a malformed or unexpected message (process {process}: {source}); the VM was stopped")]
    Attach {
        process: ProcessId,
        source: AttachError,
    },
    #[error("cannot read the guest's hello: {0}; the VM was stopped")]
    HelloRead(#[source] std::io::Error),
    #[error("cannot accept the guest's control connection: {0}; the VM was stopped")]
    Accept(#[source] std::io::Error),
    #[error("cannot send a message to the guest ({0}); the VM was stopped")]
    Send(#[source] FrameError),
    #[error("cannot create the eventfd of the output relays: {0}")]
    Relays(#[source] std::io::Error),
    #[error("cannot wait on the monitor's descriptors (poll): {0}")]
    Poll(#[source] nix::Error),
    #[error("the guest speaks protocol version {0}, this runvm speaks {PROTOCOL_VERSION}; rebuild the initramfs (cargo xtask initramfs)")]
    Version(u32),
    #[error("the VM stopped before the workload's exit status was reported: {0}")]
    GuestDied(#[source] VmGone),
    #[error(transparent)]
    Share(#[from] crate::share::ShareError),
    #[error(transparent)]
    Virtiofsd(#[from] crate::share::daemon::DaemonError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    #[error("cannot drop the monitor's privileges, so the guest was not started: {0}")]
    Privileges(#[from] privileges::PrivilegeError),
    #[error("cannot jail the monitor, so the guest was not started: {0}")]
    Jail(#[from] jail::JailError),
    #[error("cannot wake the guest restored from its warm-start template: {0}; the VM was stopped (RUNVM_BOOT=cold boots without templates)")]
    Wake(String),
}

/// How to build and run one container's VM.
pub struct MonitorConfig {
    pub assets: GuestAssets,
    pub vcpus: u8,
    pub mem_mib: u64,
    /// Private directory for the vsock sockets (removed by the caller).
    pub runtime_dir: PathBuf,
    /// What the host shares with the guest (its root filesystem, its binds, its sockets).
    pub share: crate::share::SharePlan,
    /// The container's capability bounding set: virtiofsd keeps only those of its own
    /// capabilities that are in it.
    pub bounding_caps: Vec<String>,
    pub debug_console: bool,
    pub seccomp: bool,
    pub boot_timeout: Duration,
    pub timings_file: Option<PathBuf>,
    /// The container's `resolv.conf` on the host: its loopback nameservers get a DNS
    /// forwarder in the guest.
    pub resolv_conf: crate::in_root::InRoot,
    /// Words appended to the guest kernel's command line (`RUNVM_KERNEL_CMDLINE_APPEND`).
    pub cmdline_append: Option<String>,
    /// Spare file-system slots for member containers (`RUNVM_FS_SLOTS`).
    pub fs_slots: usize,
    /// Cold boot or warm start from a template (`RUNVM_BOOT`).
    pub boot: crate::settings::BootMode,
    /// Called once, on the monitor's thread, when the container's process has started
    /// (the foreground `run`'s poststart hooks); it must not block.
    pub on_started: Option<Box<dyn Fn() + Send + Sync>>,
}

/// The record of the network plumbing (TAPs, tc rules) in a runtime directory, which
/// the cleanup guard undoes if the monitor dies.
pub fn network_record(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("network.json")
}

/// When the container's process runs.
pub enum Launch {
    /// `runvm run` in the foreground: as soon as the guest is up, serving the host API on
    /// `api` meanwhile (`state`, `kill`, `exec`, … of the running container); `state_dir`
    /// gets the started and exit files.
    Immediate {
        api: UnixListener,
        state_dir: PathBuf,
    },
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

/// Outcome of the workload.
pub(crate) enum Ending {
    Exited(ExitStatus),
    StartFailed(i32, String),
}

/// A caller still waiting to hear how the container's start went.
enum Waiter {
    /// `runvm create`, until the monitor waits for `runvm start`: a line on its pipe.
    Create(std::fs::File),
    /// `runvm start`, until the process has started: an answer on its connection.
    Start(UnixStream),
}

/// A failed run, and whoever still waits to be told about it.
struct Failed {
    error: MonitorError,
    waiter: Option<Waiter>,
}

impl Failed {
    /// A failure nobody waits for (or that the caller was already told about).
    fn alone(error: MonitorError) -> Self {
        Self {
            error,
            waiter: None,
        }
    }

    /// A failure that `runvm start`, if it waits on `start`, is told about.
    fn start_waits(error: MonitorError, start: Option<UnixStream>) -> Self {
        Self {
            error,
            waiter: start.map(Waiter::Start),
        }
    }

    /// Tells the waiter, if any, why the container could not be created or started.
    fn tell(self) -> MonitorError {
        match self.waiter {
            Some(Waiter::Create(mut ready)) => {
                let _ = writeln!(ready, "{}", self.error);
            }
            Some(Waiter::Start(mut conn)) => {
                api::answer(&mut conn, &api::Response::Error(self.error.to_string()));
            }
            None => {}
        }
        self.error
    }
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
    if !cfg.seccomp {
        vmm::seccomp::disable_for_process();
    }
    let (api, ready, state_dir) = match launch {
        Launch::Immediate { api, state_dir } => (api, None, state_dir),
        Launch::OnStart {
            api,
            ready,
            state_dir,
        } => (api, Some(ready), state_dir),
    };
    let result = run_container(&cfg, run, stdio, &api, ready, &state_dir).map_err(|failed| {
        // The container has stopped before `create` or `start` hears why: their callers
        // act at once (containerd deletes a task whose start failed, and refuses to while
        // `state` still says "created").
        let _ = std::fs::write(state_dir.join(crate::state::EXITED_FILE), b"");
        failed.tell()
    });
    if let (Ok(code), dir) = (&result, &state_dir) {
        let _ = std::fs::write(dir.join(crate::state::EXIT_FILE), format!("{code}\n"));
    }
    // The VM is gone: so goes its cgroup (the runtime directory is in the state directory).
    if let Some(dir) = cfg.runtime_dir.parent() {
        crate::cgroup::leave_and_remove(dir, std::process::id());
    }
    log::debug!("stop path: the monitor has left its cgroup and removed it where it may");
    result
}

/// The container's course: the signals blocked, the wait for `runvm start` (a created
/// container, with `api`; `create` hears `ok` on `ready` first), then the VM.
fn run_container(
    cfg: &MonitorConfig,
    run: HostMessage,
    stdio: HostStdio,
    api: &UnixListener,
    ready: Option<std::fs::File>,
    state_dir: &Path,
) -> Result<i32, Failed> {
    let sigfd = match block_signals() {
        Ok(sigfd) => sigfd,
        Err(source) => {
            let error = MonitorError::Setup {
                dir: cfg.runtime_dir.clone(),
                source,
            };
            return Err(Failed {
                error,
                waiter: ready.map(Waiter::Create),
            });
        }
    };
    let start = match ready {
        // `runvm run`: the process starts at once.
        None => None,
        Some(mut r) => {
            // create returns now; nothing runs, and no VM exists, until `runvm start`.
            let _ = writeln!(r, "ok");
            match prestart::wait_for_start(api, &sigfd).map_err(Failed::alone)? {
                BeforeStart::Start(conn) => Some(conn),
                BeforeStart::Killed(signal) => return Ok(128 + signal),
            }
        }
    };
    let host = HostSide {
        sigfd: &sigfd,
        api: Some(api),
        state_dir: Some(state_dir),
        foreground: start.is_none(),
    };
    run_started(cfg, run, stdio, host, start)
}

/// Blocks the signals the monitor handles (those it forwards, and SIGWINCH: a terminal's
/// size changed) and opens the signalfd that receives them.
fn block_signals() -> std::io::Result<SignalFd> {
    let mut mask = SigSet::empty();
    FORWARDED.iter().for_each(|s| mask.add(*s));
    mask.add(Signal::SIGWINCH);
    mask.thread_block()?;
    Ok(SignalFd::with_flags(
        &mask,
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )?)
}

/// What the run of a started container has on the host from before the start.
struct HostSide<'a> {
    /// Receives the signals the monitor handles ([`block_signals`]).
    sigfd: &'a SignalFd,
    /// The host API's socket (a created container).
    api: Option<&'a UnixListener>,
    /// Where the started, exited and paused files go (a created container).
    state_dir: Option<&'a Path>,
    /// `runvm run` in the foreground: its own stderr is where a failed start is told.
    foreground: bool,
}

/// The started container: the plumbing, the VM, the conversation with its guest, and the
/// VM's end. `start` is `runvm start`'s connection, waiting for the process to start.
fn run_started(
    cfg: &MonitorConfig,
    mut run: HostMessage,
    stdio: HostStdio,
    host: HostSide,
    start: Option<UnixStream>,
) -> Result<i32, Failed> {
    // Dropped (sockets closed, network undone) when this function returns, after the VM
    // has stopped.
    let template = match cfg.boot {
        crate::settings::BootMode::Warm => warm_template(cfg),
        crate::settings::BootMode::Cold => None,
    };
    let (mut plumbing, vm_config) = match Plumbing::set_up(cfg, &mut run, template) {
        Ok(set_up) => set_up,
        Err(error) => return Err(Failed::start_waits(error, start)),
    };
    // Nothing from here on needs a privilege, and no thread of the monitor's has started
    // yet: move into the jail and drop every privilege now, before the VM is built (it
    // starts threads) and any guest byte is read. The network's teardown, which needs
    // CAP_NET_ADMIN, is the cleanup guard's from now on.
    plumbing.hand_over();
    let jailed = match privileges::reachable_unprivileged(&cfg.runtime_dir) {
        Ok(()) => confine(cfg, &host, &stdio),
        Err(why) => {
            // The monitor's own files lie where it could not reach them without
            // CAP_DAC_READ_SEARCH (ctr's state root is under /run/containerd, 0600): it
            // keeps its privileges, and the host's root, rather than fail the container.
            log::warn!("the monitor keeps its privileges and the host's root: {why}");
            Ok(false)
        }
    };
    let jailed = match jailed.and_then(|jailed| plumbing.serve(cfg).map(|()| jailed)) {
        Ok(jailed) => jailed,
        Err(error) => return Err(Failed::start_waits(error, start)),
    };
    let booted = Vmm::new(vm_config)
        .map_err(MonitorError::from)
        .and_then(RunningVm::start);
    let mut vm = match booted {
        Ok(vm) => vm,
        Err(error) => return Err(Failed::start_waits(error, start)),
    };
    if let Err(error) = plumbing.wake(&vm.handle, cfg.boot_timeout) {
        return Err(Failed::start_waits(vm.stop_after(error), start));
    }
    if jailed {
        // The VM's and the relays' threads run under filters of their own; from here on
        // the main thread (and the stdio relays it starts, which stack theirs) does too.
        vmm::seccomp::enter(vmm::seccomp::ThreadKind::MonitorMain);
    }
    let io = Io {
        control_listener: &plumbing.control,
        stream_listener: &plumbing.streams,
        sigfd: host.sigfd,
        api: host.api,
        state_dir: host.state_dir,
        on_started: cfg.on_started.as_deref(),
        vm: vm.handle.clone(),
    };
    let ending = match converse(cfg, &vm, run, stdio, &io, start) {
        Ok(ending) => ending,
        Err(Failed { error, waiter }) => {
            return Err(Failed {
                error: vm.stop_after(error),
                waiter,
            })
        }
    };
    // Everything the container leaves is on the host now (exit status, output; its files
    // were written through the share as it ran); what the guest would still do after
    // `Shutdown`, sync and reboot, is of no use. Stop the VM now: its exit then costs no
    // guest CPU time, which twenty guests stopping at once under emulation did not have
    // within Docker's SIGKILL deadline.
    log::debug!("stop path: stopping the VM");
    vm.handle.stop();
    let exit = vm.finish(Duration::from_secs(10)).map_err(Failed::alone)?;
    report_times(cfg, &exit.times, plumbing.warm_start);
    match ending {
        Ending::Exited(status) => Ok(status.code()),
        Ending::StartFailed(code, message) => {
            if host.foreground {
                // `runvm run`: nobody else reads the reason.
                eprintln!("runvm: {message}");
            }
            Ok(code)
        }
    }
}

/// The warm-start template for this container's VM, made now if there is none; `None`
/// (a cold boot, with a warning) when none can be had.
fn warm_template(cfg: &MonitorConfig) -> Option<vmm::Snapshot> {
    let inputs = crate::template::TemplateInputs {
        kernel: cfg.assets.kernel.clone(),
        initramfs: cfg.assets.initramfs.clone(),
        vcpus: cfg.vcpus,
        mem_mib: cfg.mem_mib,
        debug_console: cfg.debug_console,
        cmdline_append: cfg.cmdline_append.clone(),
    };
    let started = std::time::Instant::now();
    match crate::template::obtain(&inputs, cfg.boot_timeout) {
        Ok(snapshot) => {
            log::debug!(
                "warm start: template {} loaded in {:.1?}",
                snapshot.dir().display(),
                started.elapsed()
            );
            Some(snapshot)
        }
        Err(e) => {
            log::warn!("no warm-start template ({e}); booting cold");
            None
        }
    }
}

/// Jails the monitor ([`jail`]) where it can leave the host's root, then drops its
/// privileges for good ([`privileges`]).
///
/// The foreground `runvm run` keeps the host's root: after its VM it removes its own
/// state directory, which is a mount point in the jail. Every other monitor (`create`,
/// `run --detach`) is jailed with what it still opens by name bound at its own path.
/// Says whether it jailed the monitor, whose main thread then takes its seccomp filter
/// once the VM runs (the foreground `run` still removes its state directory and runs
/// hooks after the VM).
fn confine(cfg: &MonitorConfig, host: &HostSide, stdio: &HostStdio) -> Result<bool, MonitorError> {
    let mut jailed = false;
    if let (false, Some(state_dir)) = (host.foreground, host.state_dir) {
        let base = cfg.runtime_dir.join("jail");
        std::fs::create_dir(&base).map_err(|source| MonitorError::Setup {
            dir: base.clone(),
            source,
        })?;
        // What the VM is built from (it is built in the jail: building it starts a
        // thread, which must start there), the files the monitor writes and the sockets
        // it connects to.
        let mut binds = vec![
            Bind::device(KVM_DEVICE),
            Bind::read_only(&cfg.assets.kernel),
            Bind::read_only(&cfg.assets.initramfs),
            Bind::writable(state_dir),
            Bind::writable(&cfg.runtime_dir),
        ];
        // Where KVM is PVM, building the VM says so at once (vmm's `Vm::new`).
        let pvm = Path::new("/sys/module/kvm_pvm");
        if pvm.exists() {
            binds.push(Bind::read_only(pvm));
        }
        let cgroups = Path::new(CGROUP_ROOT);
        if cgroups.is_dir() {
            binds.push(Bind::writable(cgroups));
        }
        binds.extend(cfg.share.sockets.iter().map(Bind::writable));
        if let Some(timings) = &cfg.timings_file {
            // Made now, so that it can be bound and written at the end.
            if std::fs::write(timings, b"").is_ok() {
                binds.push(Bind::writable(timings));
            }
        }
        jail::enter(&base, &binds)?;
        jailed = true;
    }
    privileges::drop_all(&stdio.raw_fds(), jailed.then(privileges::own_id))?;
    Ok(jailed)
}

/// The descriptors the monitor listens on.
pub(crate) struct Io<'a> {
    control_listener: &'a UnixListener,
    stream_listener: &'a UnixListener,
    sigfd: &'a SignalFd,
    api: Option<&'a UnixListener>,
    state_dir: Option<&'a Path>,
    on_started: Option<&'a (dyn Fn() + Send + Sync)>,
    /// Pauses and resumes the VM.
    vm: vmm::VmmHandle,
}

/// The conversation with the guest: its hello, `Run`, then the session until the
/// container is done. `start` is told how the start went.
fn converse(
    cfg: &MonitorConfig,
    vm: &RunningVm,
    run: HostMessage,
    stdio: HostStdio,
    io: &Io,
    start: Option<UnixStream>,
) -> Result<Ending, Failed> {
    let relay_done = match EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) {
        Ok(e) => e,
        Err(e) => return Err(Failed::start_waits(MonitorError::Relays(e), start)),
    };
    let (control, queued) = match greet(cfg, vm, run, &stdio, io) {
        Ok(Hello::Said { control, queued }) => (control, queued),
        Ok(Hello::Killed) => {
            vm.handle.stop();
            if let Some(dir) = io.state_dir {
                let _ = std::fs::write(dir.join(crate::state::EXITED_FILE), b"");
            }
            if let Some(mut c) = start {
                api::answer(
                    &mut c,
                    &api::Response::Error(
                        "the container was killed (SIGKILL) while its VM booted".into(),
                    ),
                );
            }
            return Ok(Ending::Exited(ExitStatus::Signaled(libc::SIGKILL)));
        }
        Err(error) => return Err(Failed::start_waits(error, start)),
    };
    let end = Session::new(control, io, &vm.done, stdio, relay_done, queued, start).run();
    end.ending
        .map_err(|error| Failed::start_waits(error, end.unanswered_start))
}

/// Waits for the guest's hello and sends it `run`, with the terminal's size if the
/// process has a terminal whose size was not given.
fn greet(
    cfg: &MonitorConfig,
    vm: &RunningVm,
    mut run: HostMessage,
    stdio: &HostStdio,
    io: &Io,
) -> Result<Hello, MonitorError> {
    let Hello::Said {
        mut control,
        queued,
    } = hello::await_hello(io, &vm.done, cfg.boot_timeout)?
    else {
        return Ok(Hello::Killed);
    };
    if let HostMessage::Run { process, .. } = &mut run {
        process.shared_output = stdio.output_shared();
        process.stdin_null = stdio.stdin_is_null();
        if process.terminal && process.console_size.is_none() {
            // The host terminal's size when the process starts.
            if let HostStdio::Terminal { input, .. } = stdio {
                process.console_size = tty::window_size(input.as_raw_fd());
            }
        }
    }
    write_frame_limited(&mut control.stream, &run, MAX_HOST_FRAME_LEN)
        .map_err(MonitorError::Send)?;
    Ok(Hello::Said { control, queued })
}

#[cfg(test)]
mod tests {
    use super::*;
    use runvm_protocol::{FrameDecoder, GuestMessage, MAX_FRAME_LEN};

    /// The message of `e` and of every cause behind it, as the CLI prints them.
    fn chain(e: &dyn std::error::Error) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut cause = e.source();
        while let Some(c) = cause {
            out.push(c.to_string());
            cause = c.source();
        }
        out
    }

    fn frame_error(frame: &[u8]) -> FrameError {
        let mut d = FrameDecoder::default();
        d.push(frame);
        d.next_frame::<GuestMessage>().unwrap_err()
    }

    #[test]
    fn a_bad_frame_is_named_and_no_cause_repeats_the_guest_in_full() {
        // serde quotes a string of the wrong type in full: 200 000 CRs and BELs.
        let body = format!(
            r#"{{"Hello":{{"version":"{}"}}}}"#,
            r"\r\u0007".repeat(100_000)
        );
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(body.as_bytes());
        let e = MonitorError::Frame(GuestText::new(frame_error(&frame)));
        let messages = chain(&e);
        assert!(
            messages[0].contains("malformed frame: invalid type: string"),
            "{:.200}",
            messages[0]
        );
        for m in &messages {
            assert!(m.len() < 4096, "{} bytes: {:.200}", m.len(), m);
            assert!(!m.contains('\x07') && !m.contains('\r'), "{m:.200}");
        }

        let e = MonitorError::Frame(GuestText::new(frame_error(
            &(MAX_FRAME_LEN + 1).to_le_bytes(),
        )));
        assert!(e.to_string().contains("over the 1048576-byte limit"), "{e}");
    }

    #[test]
    fn the_vms_end_is_said_in_the_error() {
        let e = MonitorError::GuestDied(VmGone::Exited(vmm::VmExitReason::TripleFault));
        assert_eq!(
            e.to_string(),
            "the VM stopped before the workload's exit status was reported: the guest kernel crashed (triple fault)"
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let e = MonitorError::GuestDied(VmGone::ControlFailed(io));
        assert_eq!(chain(&e).len(), 3, "{:?}", chain(&e));
        assert!(e.to_string().contains("the control connection failed"));
    }
}

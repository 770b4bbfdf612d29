//! runvm's guest init: PID 1 of the microVM.
//!
//! The sequence (see `runvm_protocol` for the wire side): report the boot mark, mount the
//! basics; in template mode (`runvm.template=1` on the kernel command line: a warm-start
//! template, see `wake`) listen on the wake port, report `TemplateReady`, wait for the
//! host's `Wake` (across a snapshot and restore) and take it in (entropy and a reseed,
//! the wall clock, the filled slots' devices bound); say `Hello` on the control
//! connection, receive `Run`, mount the container's share (virtio-fs) and bind its root
//! directory as the container's root, listen for the socket relays, open the stdio
//! streams, start the workload as PID 1 of a new PID namespace, relay stdio and signals
//! (and run exec'd processes) until it and every exec'd process exited, end the socket
//! relays, report `Exited`, wait for the host's `Shutdown`, sync, and reboot. Any failure
//! is reported as `StartFailed` (when the control connection is up) and ends in a reboot
//! too: PID 1 never exits and never panics.
//!
//! Host test mode: with `RUNVM_INIT_TEST=<dir>` in the environment, init uses Unix sockets
//! `<dir>/<port>` (`1024`, `1025`, `1028`, …) instead of vsock, builds the root under
//! `<dir>`, takes the directory `<dir>/virtiofs/<tag>` as the share of virtio-fs tag
//! `<tag>` (bind-mounted where the share would be mounted), skips the boot timer, the
//! network and its own mounts, makes no cgroups unless `RUNVM_INIT_CGROUP` names a cgroup2
//! directory to make them under, and exits instead of rebooting. Template mode is on when
//! `RUNVM_INIT_TEMPLATE=1` is set (never from the host's command line): init listens on
//! `<dir>/1029`, reads and checks the `Wake`, and changes nothing of the host with it (no
//! entropy, clock or device binds). Run it inside `unshare -m` so its mounts vanish with
//! it.
//!
//! Modules and what each uses; the graph has no cycle. `error` and `log` are used nearly
//! everywhere and left out.
//!
//! - `main` → `boot_timer`, `wake`, `mounts`, `net`, `net_dns`, `socket_relay`, `cgroup`,
//!   `vsock`, `relay`, `signals`, `spawn`, `workload`, `supervisor`
//! - `wake` (a template's wait for the host's `Wake`) → `vsock`, `boot_timer`,
//!   `virtio_mmio`
//! - `cgroup` → `device_filter`
//! - `supervisor` (the control-message loop, member containers) → `relay`, `workload`,
//!   `spawn`, `signals`, `reap`, `terminal`, `cgroup`, `vsock`, `mounts`, `socket_relay`
//! - `relay` (stdio bytes over the host streams) → `spawn`, `vsock`
//! - `workload` (main and exec'd processes) → `spawn`, `execve`, `mounts`, `binds`,
//!   `attrs`, `cgroup`
//! - `execve` (the child's last steps) → `spawn`, `credentials`, `path_lookup`, `seccomp`,
//!   `attrs`
//! - `credentials` (uid/gid/groups, capabilities, no_new_privs, seccomp order) → `caps`,
//!   `seccomp`
//! - `spawn` (clone, stdio plumbing, exec status) → `signals`, `terminal`
//! - `mounts` → `binds`, `mount_options`, `mount_api`, `virtio_mmio`; `binds` → `mounts`
//!   (paths only), `mount_options`, `mount_api`, `in_root`; `in_root` → `mount_api`
//! - `net_dns`, `socket_relay` (the bind-mounted host sockets) → `vsock`, `helper_process`
//! - `signals`, `reap`, `terminal`, `path_lookup`, `attrs`, `caps`, `seccomp`,
//!   `device_filter`, `net`, `vsock`, `mount_options`, `mount_api`, `helper_process`,
//!   `boot_timer`, `virtio_mmio` → none

mod attrs;
mod binds;
mod boot_timer;
mod caps;
mod cgroup;
mod credentials;
mod device_filter;
mod error;
mod execve;
mod helper_process;
mod in_root;
mod log;
mod mount_api;
mod mount_options;
mod mounts;
mod net;
mod net_dns;
mod path_lookup;
mod reap;
mod relay;
mod seccomp;
mod signals;
mod socket_relay;
mod spawn;
mod supervisor;
mod terminal;
mod user_ns;
mod virtio_mmio;
mod vsock;
mod wake;
mod workload;

use error::{Error, Result};
use mounts::{Paths, ShareSource};
use runvm_protocol::{
    BootMark, GuestMessage, HostMessage, LinuxSpec, MountSpec, NetworkSpec, ProcessSpec,
    RootfsSpec, CONTROL_PORT, MAIN_CONTAINER, MAIN_PROCESS, PROTOCOL_VERSION,
};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vsock::{Control, Transport};

/// How long to wait for the host's `Shutdown` once everything is reported.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// VM or host test mode.
struct Mode {
    test_dir: Option<PathBuf>,
}

impl Mode {
    /// Host test mode when `RUNVM_INIT_TEST` names a directory. It is never honoured as
    /// PID 1: the kernel passes unknown `key=value` words of its command line to init as
    /// environment, and the real init must stay the real init.
    fn from_environment() -> Self {
        let is_pid1 = nix::unistd::getpid().as_raw() == 1;
        Self {
            test_dir: std::env::var_os("RUNVM_INIT_TEST")
                .filter(|_| !is_pid1)
                .map(PathBuf::from),
        }
    }

    fn transport(&self) -> Transport {
        match &self.test_dir {
            Some(d) => Transport::Unix(d.clone()),
            None => Transport::Vsock,
        }
    }

    fn paths(&self) -> Paths {
        match &self.test_dir {
            Some(d) => Paths::under(d),
            None => Paths::under(std::path::Path::new("/")),
        }
    }

    /// The cgroup2 directory under which the containers' cgroups are made: the guest's
    /// own; in host test mode `RUNVM_INIT_CGROUP` if set, else none.
    fn cgroup_root(&self) -> Option<PathBuf> {
        match &self.test_dir {
            None => Some(PathBuf::from(cgroup::GUEST_ROOT)),
            Some(_) => std::env::var_os("RUNVM_INIT_CGROUP").map(PathBuf::from),
        }
    }

    /// Template mode (a warm-start template, see `wake`): `runvm.template=1` on the
    /// kernel command line (so only once `prepare` has mounted `/proc`); in host test mode
    /// `RUNVM_INIT_TEMPLATE=1` instead, since the host's command line is not the guest's.
    fn is_template(&self) -> bool {
        if self.test_dir.is_some() {
            return std::env::var_os("RUNVM_INIT_TEMPLATE").is_some_and(|v| v == "1");
        }
        match std::fs::read_to_string("/proc/cmdline") {
            Ok(cmdline) => wake::cmdline_has_template(&cmdline),
            Err(e) => {
                log::error(&format!(
                    "cannot read /proc/cmdline (not a template then): {e}"
                ));
                false
            }
        }
    }

    fn share_source(&self) -> ShareSource {
        match &self.test_dir {
            Some(d) => ShareSource::Directories(d.join("virtiofs")),
            None => ShareSource::VirtioFs,
        }
    }
}

fn main() {
    let mode = Mode::from_environment();
    if mode.test_dir.is_none() {
        if boot_timer::enable() {
            boot_timer::mark(BootMark::InitStarted);
        }
    } else {
        log::set_stderr(true);
        log::set_debug(std::env::var_os("RUNVM_INIT_DEBUG").is_some());
    }
    let transport = mode.transport();
    let ok = match prepare(&mode)
        .and_then(|()| wake_if_template(&mode, &transport))
        .and_then(|()| connect(&transport))
    {
        Ok(mut control) => {
            let result = run(&mode, &transport, &mut control);
            report_failure(&mut control, result)
        }
        Err(e) => {
            log::error(&format!("fatal: {e}"));
            false
        }
    };
    finish(&mode, ok)
}

/// Sync and reboot (VM), or exit (test mode).
fn finish(mode: &Mode, ok: bool) -> ! {
    nix::unistd::sync();
    if mode.test_dir.is_some() {
        std::process::exit(if ok { 0 } else { 1 });
    }
    log::info("rebooting");
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Exiting PID 1 would panic the kernel; wait for the end instead.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Whether `result` is a success; a failure is logged, reported to the host as
/// `StartFailed`, and followed by the wait for its `Shutdown`.
fn report_failure(control: &mut Control, result: Result<()>) -> bool {
    let Err(e) = result else { return true };
    log::error(&format!("fatal: {e}"));
    let _ = control.send(&GuestMessage::StartFailed {
        process: MAIN_PROCESS,
        code: e.code,
        message: e.message,
    });
    wait_for_shutdown(control);
    false
}

/// Everything before the control connection: fds 0–2, and in the VM the rebased root,
/// init's own mounts and the debug switch of the kernel command line.
fn prepare(mode: &Mode) -> Result<()> {
    ensure_std_fds();
    if mode.test_dir.is_none() {
        if let Err(e) = mounts::rebase_initramfs_root() {
            // Not fatal: the workload falls back to MS_MOVE + chroot.
            log::error(&format!("rebase of the initramfs root: {e}"));
        }
        mounts::early()?;
        if let Ok(cmdline) = std::fs::read_to_string("/proc/cmdline") {
            log::set_debug(log::cmdline_has_debug(&cmdline));
        }
    }
    log::info("started");
    Ok(())
}

/// In template mode, waits for the host's `Wake` and takes it in; in host test mode the
/// `Wake` is read and checked, and nothing of the host is changed with it. A failure
/// ends init before the control connection exists.
fn wake_if_template(mode: &Mode, transport: &Transport) -> Result<()> {
    if !mode.is_template() {
        return Ok(());
    }
    let wake = wake::wait(transport)?;
    if mode.test_dir.is_some() {
        log::info("host test mode: the Wake changes nothing of the host");
        return Ok(());
    }
    wake::apply(&wake)
}

/// Opens the control connection and says `Hello`.
fn connect(transport: &Transport) -> Result<Control> {
    let mut control = Control::new(transport.connect(CONTROL_PORT)?);
    control.send(&GuestMessage::Hello {
        version: PROTOCOL_VERSION,
    })?;
    Ok(control)
}

/// The container the host's `Run` describes.
struct RunRequest {
    rootfs: RootfsSpec,
    hostname: Option<String>,
    process: ProcessSpec,
    linux: LinuxSpec,
    mounts: Vec<MountSpec>,
    network: NetworkSpec,
}

/// Waits for `Run`; `None` when the host closes the connection first.
fn receive_run(control: &mut Control) -> Result<Option<RunRequest>> {
    match control.recv()? {
        Some(HostMessage::Run {
            rootfs,
            hostname,
            process,
            linux,
            mounts,
            network,
        }) => Ok(Some(RunRequest {
            rootfs,
            hostname,
            process,
            linux,
            mounts,
            network,
        })),
        None => Ok(None),
        Some(other) => Err(Error::new(format!(
            "protocol error: expected Run, got {other:?}"
        ))),
    }
}

/// Runs the container from `Run` to its reported exit and the host's `Shutdown`.
fn run(mode: &Mode, transport: &Transport, control: &mut Control) -> Result<()> {
    let Some(run) = receive_run(control)? else {
        log::info("host closed the control connection before Run");
        return Ok(());
    };
    log::info(&format!("run {:?}", run.process.args));

    // The network as the host mirrored it (loopback only when it sent none), and the DNS
    // forwarder, before anything of the container runs. Test mode has no network of its
    // own to configure.
    if mode.test_dir.is_none() {
        start_network(&run.network, transport)?;
    }

    let paths = mode.paths();
    mounts::share(&paths, &run.rootfs, &mode.share_source())?;
    mounts::rootfs(&paths, &run.rootfs)?;
    log::info("root filesystem assembled");
    // Before any thread or workload exists: the relays run in a helper process.
    let owner = (
        nix::unistd::Uid::from_raw(run.process.uid),
        nix::unistd::Gid::from_raw(run.process.gid),
    );
    let mut relays = socket_relay::Relays::start(&run.mounts, &paths, owner, transport)?;

    // The container's own cgroup, with its limits (host test mode has none, unless
    // `RUNVM_INIT_CGROUP` names a cgroup2 directory for it).
    if let Some(root) = mode.cgroup_root() {
        cgroup::enable(root);
        cgroup::setup(MAIN_CONTAINER, &run.linux.resources)?;
    }
    let streams = relay::Streams::open(transport, MAIN_PROCESS, run.process.terminal)?;
    // SIGCHLD goes to a signalfd; the child unblocks it before exec.
    let sigchld = signals::block_sigchld()?;
    let spawned = start_main_process(&paths, &run, &streams)?;
    boot_timer::mark(BootMark::WorkloadStarted);
    control.send(&GuestMessage::Started {
        process: MAIN_PROCESS,
        pid: spawned.pid.as_raw(),
    })?;
    log::info(&format!("workload started as pid {}", spawned.pid));

    let place = supervisor::Place {
        paths: &paths,
        share_source: &mode.share_source(),
    };
    let outcome =
        supervisor::Supervisor::new(control, &sigchld, transport, place, spawned, streams)?
            .run(|_| boot_timer::mark(BootMark::WorkloadExited))?;
    log::info(&format!("workload exited: {:?}", outcome.status));
    // The container has ended: so do its socket relays.
    relays.stop();
    if outcome.host_gone {
        return Ok(());
    }
    control.send(&GuestMessage::Exited {
        process: MAIN_PROCESS,
        status: outcome.status,
        oom_kills: cgroup::oom_kills(MAIN_CONTAINER),
    })?;
    wait_for_shutdown(control);
    Ok(())
}

/// The guest's interfaces and the DNS forwarder (VM only).
fn start_network(network: &NetworkSpec, transport: &Transport) -> Result<()> {
    net::configure(network)?;
    if let Some(pid) = net_dns::start(&network.dns_forward, transport)? {
        log::info(&format!(
            "dns forwarder for {:?} is pid {pid}",
            network.dns_forward
        ));
    }
    Ok(())
}

/// Starts the container's main process; one that fails to start is reaped, its streams
/// ended, and its error returned.
fn start_main_process(
    paths: &Paths,
    run: &RunRequest,
    streams: &relay::Streams,
) -> Result<spawn::Spawned> {
    let req = workload::Request {
        container: MAIN_CONTAINER,
        paths,
        process: &run.process,
        linux: &run.linux,
        mounts: &run.mounts,
        hostname: run.hostname.as_deref(),
        sandbox: None,
    };
    match workload::spawn_container(&req)? {
        spawn::Started::Running(spawned) => Ok(spawned),
        spawn::Started::Failed(failed) => {
            log::error(&format!("workload failed to start: {}", failed.error));
            let _ = nix::sys::wait::waitpid(failed.pid, None);
            streams.shut_down();
            Err(failed.error)
        }
    }
}

/// Waits (bounded) for `Shutdown` or EOF on the control connection.
fn wait_for_shutdown(control: &mut Control) {
    let deadline = Instant::now() + SHUTDOWN_WAIT;
    loop {
        loop {
            match control.next_buffered() {
                Ok(Some(HostMessage::Shutdown)) => return,
                Ok(Some(other)) => log::info(&format!("ignoring {other:?} while shutting down")),
                Ok(None) => break,
                Err(e) => {
                    log::error(&format!("while waiting for Shutdown: {e}"));
                    return;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log::error("no Shutdown from the host; rebooting anyway");
            return;
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            control.fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => match control.read_available() {
                Ok(true) => {}
                Ok(false) | Err(_) => return,
            },
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Makes sure fds 0, 1 and 2 are open (on /dev/null if need be), so pipes and sockets
/// never land on them.
fn ensure_std_fds() {
    for fd in 0..3 {
        if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
            if let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                let f = OwnedFd::from(f);
                let raw = std::os::fd::AsRawFd::as_raw_fd(&f);
                if raw != fd {
                    let _ = nix::unistd::dup2(raw, fd);
                } else {
                    std::mem::forget(f);
                }
            }
        }
    }
}

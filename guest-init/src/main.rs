//! runvm's guest init: PID 1 of the microVM.
//!
//! The sequence (see `runvm_protocol` for the wire side): report the boot mark, mount the
//! basics, say `Hello` on the control connection, receive `Run`, assemble the container's
//! root filesystem, open the stdio streams, start the workload as PID 1 of a new PID
//! namespace, relay stdio and signals (and run exec'd processes) until it and every
//! exec'd process exited, report `Exited`, wait for the host's
//! `Shutdown`, sync, and reboot. Any failure is reported as `StartFailed` (when the
//! control connection is up) and ends in a reboot too: PID 1 never exits and never panics.
//!
//! Host test mode: with `RUNVM_INIT_TEST=<dir>` in the environment, init uses Unix sockets
//! `<dir>/1024` and `<dir>/1025` instead of vsock, builds the root under `<dir>`, skips the
//! boot timer and its own mounts, and exits instead of rebooting. Run it inside
//! `unshare -m` so its mounts vanish with it.

mod attrs;
mod binds;
mod boot_timer;
mod caps;
mod cgroup;
mod credentials;
mod error;
mod execve;
mod log;
mod mount_options;
mod mounts;
mod net;
mod net_dns;
mod path_lookup;
mod reap;
mod relay;
mod seccomp;
mod signals;
mod spawn;
mod supervisor;
mod terminal;
mod vsock;
mod workload;
mod writeback;

use error::{Error, Result};
use mounts::Paths;
use runvm_protocol::{
    BootMark, GuestMessage, HostMessage, CONTROL_PORT, MAIN_PROCESS, PROTOCOL_VERSION,
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
}

fn main() {
    // Test mode is never honoured as PID 1: the kernel passes unknown `key=value` words of
    // its command line to init as environment, and the real init must stay the real init.
    let is_pid1 = nix::unistd::getpid().as_raw() == 1;
    let mode = Mode {
        test_dir: std::env::var_os("RUNVM_INIT_TEST")
            .filter(|_| !is_pid1)
            .map(PathBuf::from),
    };
    if mode.test_dir.is_none() {
        if boot_timer::enable() {
            boot_timer::mark(BootMark::InitStarted);
        }
    } else {
        log::set_stderr(true);
        log::set_debug(std::env::var_os("RUNVM_INIT_DEBUG").is_some());
    }

    let mut control = None;
    let result = run(&mode, &mut control);
    let ok = match result {
        Ok(()) => true,
        Err(e) => {
            log::error(&format!("fatal: {e}"));
            if let Some(c) = control.as_mut() {
                let _ = c.send(&GuestMessage::StartFailed {
                    process: MAIN_PROCESS,
                    code: e.code,
                    message: e.message.clone(),
                });
                wait_for_shutdown(c);
            }
            false
        }
    };
    drop(control);
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

fn run(mode: &Mode, control_slot: &mut Option<Control>) -> Result<()> {
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

    let transport = mode.transport();
    let control = control_slot.insert(Control::new(transport.connect(CONTROL_PORT)?));
    control.send(&GuestMessage::Hello {
        version: PROTOCOL_VERSION,
    })?;
    let (rootfs, hostname, process, linux, spec_mounts, network) = match control.recv()? {
        Some(HostMessage::Run {
            rootfs,
            hostname,
            process,
            linux,
            mounts,
            network,
        }) => (rootfs, hostname, process, linux, mounts, network),
        None => {
            log::info("host closed the control connection before Run");
            *control_slot = None;
            return Ok(());
        }
        Some(other) => {
            return Err(Error::new(format!(
                "protocol error: expected Run, got {other:?}"
            )))
        }
    };
    log::info(&format!("run {:?}", process.args));

    // The network as the host mirrored it (loopback only when it sent none), and the DNS
    // forwarder, before anything of the container runs. Test mode has no network of its
    // own to configure.
    if mode.test_dir.is_none() {
        net::configure(&network)?;
        if let Some(pid) = net_dns::start(&network.dns_forward, &transport)? {
            log::info(&format!(
                "dns forwarder for {:?} is pid {pid}",
                network.dns_forward
            ));
        }
    }

    let paths = mode.paths();
    mounts::rootfs(&paths, &rootfs)?;
    log::info("root filesystem assembled");

    // The container's own cgroup, with its limits (host test mode has none).
    if mode.test_dir.is_none() {
        cgroup::setup(&linux.resources)?;
    }
    let streams = relay::Streams::open(&transport, MAIN_PROCESS, process.terminal)?;

    // SIGCHLD goes to a signalfd; the child unblocks it before exec.
    let sigchld = signals::block_sigchld()?;

    let req = workload::Request {
        paths: &paths,
        process: &process,
        linux: &linux,
        mounts: &spec_mounts,
        hostname: hostname.as_deref(),
        readonly_root: rootfs.readonly,
    };
    let spawned = match workload::spawn_main(&req)? {
        spawn::Started::Running(s) => s,
        spawn::Started::Failed(failed) => {
            log::error(&format!("workload failed to start: {}", failed.error));
            let _ = nix::sys::wait::waitpid(failed.pid, None);
            streams.shut_down();
            return Err(failed.error);
        }
    };
    boot_timer::mark(BootMark::WorkloadStarted);
    control.send(&GuestMessage::Started {
        process: MAIN_PROCESS,
        pid: spawned.pid.as_raw(),
    })?;
    log::info(&format!("workload started as pid {}", spawned.pid));

    let outcome = supervisor::Supervisor::new(control, &sigchld, &transport, spawned, streams)?
        .run(|_| boot_timer::mark(BootMark::WorkloadExited))?;
    log::info(&format!("workload exited: {:?}", outcome.status));
    if outcome.host_gone {
        return Ok(());
    }
    control.send(&GuestMessage::Exited {
        process: MAIN_PROCESS,
        status: outcome.status,
    })?;
    if rootfs.writable_device.is_some() && !rootfs.readonly {
        // The workload's PID namespace is gone with it: nothing writes the layer any more.
        if let Err(e) = writeback::send(&transport, &mounts::writable_dir(&paths).join("upper")) {
            log::error(&format!("write-back: {e}"));
        }
    }
    wait_for_shutdown(control);
    Ok(())
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

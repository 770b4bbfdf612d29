//! What the monitor sets up when the container starts, just before the VM boots: the
//! vsock sockets the guest connects to, virtiofsd serving the container's share (its root
//! filesystem and binds) with the relays of its bind-mounted sockets, the container's
//! network mirrored into the guest with a DNS relay for its loopback nameservers, and the
//! [`VmConfig`] of the VM.
//!
//! In two steps around the monitor's jail and privilege drop ([`super::jail`],
//! [`super::privileges`]): [`Plumbing::set_up`] does what needs privileges and starts no
//! thread of the monitor's; [`Plumbing::hand_over`] leaves the network's teardown to the
//! cleanup guard; [`Plumbing::serve`], after the drop, starts the threads of the relays
//! and of virtiofsd's log, which so inherit neither privilege nor the host's root.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use runvm_protocol::{
    HostMessage, NetworkSpec, Wake, CONTROL_PORT, DNS_PORT, SHARE_TAG, SOCKET_PORT, STREAM_PORT,
    WAKE_PORT, WAKE_SEED_LEN,
};
use vmm::{FsBackend, FsConfig, FsSlotShare, NetConfig, VmConfig, VsockConfig};

use crate::network::Mirror;
use crate::share::daemon::{Owners, Virtiofsd};
use crate::sockpath::SocketDir;

use super::{network_record, MonitorConfig, MonitorError, GUEST_CID};

/// The host ends of the guest's connections and of its network, for as long as the VM
/// runs: drop it only after the VM has stopped.
pub(super) struct Plumbing {
    /// Held open until the VM is gone: the vsock device binds and connects through it.
    _sockets: SocketDir,
    /// [`CONTROL_PORT`]: the guest init's control connection.
    pub(super) control: UnixListener,
    /// [`STREAM_PORT`]: the stdio streams of the guest's processes.
    pub(super) streams: UnixListener,
    /// The TAPs and tc rules of the mirrored network, undone when dropped; `None` once
    /// handed over to the cleanup guard.
    mirror: Option<Mirror>,
    /// The guard undoes the network when this is dropped (it was handed over with
    /// something to undo).
    guard_undoes_network: bool,
    /// The listeners of the relays [`Plumbing::serve`] starts: the bind-mounted sockets'
    /// and the DNS forwarder's.
    socket_relay: Option<UnixListener>,
    dns_relay: Option<UnixListener>,
    /// virtiofsd, killed when dropped (after the VM, which is its only client).
    virtiofsd: Virtiofsd,
    /// A VM restored from a template: what goes in its spare slots before its guest is
    /// woken ([`Plumbing::wake`]); `None` once done, or for a cold boot.
    warm: Option<SlottedDevices>,
    /// Whether the VM is restored from a template (for the boot timings).
    pub(super) warm_start: bool,
    /// The vsock device's socket (host-initiated connections to the guest).
    vsock_socket: PathBuf,
}

/// The devices of a container whose VM was restored from a template, put in its spare
/// slots after the restore.
struct SlottedDevices {
    /// A connection to the container's virtiofsd (made before the monitor was confined).
    share: UnixStream,
    nics: Vec<NetConfig>,
}

/// How long the monitor waits for the cleanup guard to undo the network.
const GUARD_UNDO_WAIT: Duration = Duration::from_secs(10);

impl Plumbing {
    /// Sets up everything the VM needs at start, completes `run` with the bind-mounted
    /// files and the network, and says which VM to build.
    pub(super) fn set_up(
        cfg: &MonitorConfig,
        run: &mut HostMessage,
        template: Option<vmm::Snapshot>,
    ) -> Result<(Self, VmConfig), MonitorError> {
        let setup = |source| MonitorError::Setup {
            dir: cfg.runtime_dir.clone(),
            source,
        };
        let sockets = SocketDir::open(&cfg.runtime_dir).map_err(setup)?;
        let uds = sockets.path("vsock.sock");
        let port_path = |port: u32| PathBuf::from(format!("{}_{port}", uds.display()));
        let control = UnixListener::bind(port_path(CONTROL_PORT)).map_err(setup)?;
        let streams = UnixListener::bind(port_path(STREAM_PORT)).map_err(setup)?;
        // The share, served by virtiofsd, and the relays of bind-mounted sockets.
        let (mounts, owners) = match run {
            HostMessage::Run {
                mounts,
                process,
                linux,
                ..
            } => (mounts.as_slice(), Owners::of(process, linux)),
            _ => (&[][..], Owners::default()),
        };
        let virtiofsd = serve_share(
            &cfg.assets.virtiofsd,
            &cfg.share,
            mounts,
            &owners,
            &cfg.bounding_caps,
            &cfg.runtime_dir,
            &sockets,
        )?;
        let socket_relay = if cfg.share.sockets.is_empty() {
            None
        } else {
            Some(UnixListener::bind(port_path(SOCKET_PORT)).map_err(setup)?)
        };

        // The network namespace is as Docker left it: mirror it into the guest.
        let mut mirror = Mirror::setup(&network_record(&cfg.runtime_dir))?;
        let nics = mirror.take_nics();
        let dns_forward = if nics.is_empty() {
            Vec::new()
        } else {
            crate::network::dns::loopback_nameservers_in(&cfg.resolv_conf)
        };
        let dns_relay = if dns_forward.is_empty() {
            None
        } else {
            Some(UnixListener::bind(port_path(DNS_PORT)).map_err(setup)?)
        };
        if let HostMessage::Run { network, .. } = run {
            *network = NetworkSpec {
                interfaces: mirror.interfaces().to_vec(),
                dns_forward,
                ipv6: mirror.ipv6(),
            };
        }
        // Made now, while the monitor may still mount its huge-page tmpfs: the VM is built
        // after the privilege drop, and a 4 KiB memfd makes a nested guest much slower.
        let ram = || {
            vmm::memory::GuestRamFile::create(cfg.mem_mib)
                .map_err(|e| MonitorError::Vmm(vmm::VmmError::Memory(e)))
        };
        let mut ram_file = ram()?;
        // A template's memory goes into the RAM file now too: a snapshot found corrupt on
        // the way leaves a cold boot possible, with a fresh RAM file.
        let copying = std::time::Instant::now();
        let template = match template {
            Some(snapshot) => match ram_file.restore_from(&snapshot) {
                Ok(()) => {
                    log::debug!(
                        "warm start: {} MiB of template memory copied in {:.1?}",
                        snapshot.memory_image().data_len() >> 20,
                        copying.elapsed()
                    );
                    Some(snapshot)
                }
                Err(e) => {
                    log::warn!("the warm-start template cannot be restored ({e}); booting cold");
                    crate::template::discard(snapshot.dir());
                    ram_file = ram()?;
                    None
                }
            },
            None => None,
        };
        let (mut vm, warm) = match template {
            Some(snapshot) => {
                let share = UnixStream::connect(&virtiofsd.socket).map_err(setup)?;
                let mut vm = vm_config(cfg, uds.clone(), Vec::new(), None);
                vm.fs_slots = crate::template::TEMPLATE_SLOTS;
                vm.restore = Some(snapshot);
                (vm, Some(SlottedDevices { share, nics }))
            }
            None => (
                vm_config(cfg, uds.clone(), nics, Some(virtiofsd.socket.clone())),
                None,
            ),
        };
        vm.ram = Some(ram_file);
        let plumbing = Self {
            _sockets: sockets,
            control,
            streams,
            mirror: Some(mirror),
            guard_undoes_network: false,
            socket_relay,
            dns_relay,
            virtiofsd,
            warm_start: warm.is_some(),
            warm,
            vsock_socket: uds,
        };
        Ok((plumbing, vm))
    }

    /// Leaves the network's teardown to the cleanup guard, which keeps the privilege to
    /// do it: asked when this is dropped (the VM has stopped), or when the monitor dies.
    pub(super) fn hand_over(&mut self) {
        if let Some(mirror) = self.mirror.take() {
            self.guard_undoes_network = !mirror.is_empty();
            mirror.hand_over();
        }
    }

    /// For a VM restored from a template: puts the container's share and NICs in its
    /// spare slots, then wakes its guest (on [`WAKE_PORT`], through the vsock device's
    /// socket) with fresh entropy, the wall clock and the devices to bind. The guest then
    /// says its `Hello` as a cold-booted one does. Nothing to do for a cold boot. Runs
    /// before the monitor's main thread takes its seccomp filter (it makes a socket).
    pub(super) fn wake(
        &mut self,
        vm: &vmm::VmmHandle,
        timeout: Duration,
    ) -> Result<(), MonitorError> {
        let Some(devices) = self.warm.take() else {
            return Ok(());
        };
        let failed = |what: String| MonitorError::Wake(what);
        let share = vm
            .fill_fs_slot(
                None,
                FsSlotShare {
                    tag: SHARE_TAG.into(),
                    backend: FsBackend::Connected(devices.share),
                    // As for a share present at boot: the container cannot go on without it.
                    on_failure: vm.backend_failure(),
                },
            )
            .map_err(|e| failed(e.to_string()))?;
        let mut bind = vec![share.platform as u32];
        for nic in devices.nics {
            let filled = vm
                .fill_net_slot(None, nic)
                .map_err(|e| failed(e.to_string()))?;
            bind.push(filled.platform as u32);
        }
        let wake = Wake {
            seed: fresh_seed().map_err(|e| failed(format!("cannot read random bytes: {e}")))?,
            realtime_secs: 0,
            realtime_nanos: 0,
            bind,
        };
        send_wake(&self.vsock_socket, wake, timeout).map_err(|e| {
            failed(format!(
                "cannot reach the guest's init on vsock port {WAKE_PORT}: {e}"
            ))
        })
    }

    /// Starts the threads of the relays and of virtiofsd's log (after the jail and the
    /// privilege drop: they share them).
    pub(super) fn serve(&mut self, cfg: &MonitorConfig) -> Result<(), MonitorError> {
        self.virtiofsd.read_log();
        let setup = |source| MonitorError::Setup {
            dir: cfg.runtime_dir.clone(),
            source,
        };
        if let Some(listener) = self.socket_relay.take() {
            crate::share::relay::serve(listener, cfg.share.sockets.clone()).map_err(setup)?;
        }
        if let Some(listener) = self.dns_relay.take() {
            crate::network::dns::serve(listener).map_err(setup)?;
        }
        Ok(())
    }
}

impl Drop for Plumbing {
    fn drop(&mut self) {
        if self.guard_undoes_network {
            if let Err(e) = super::guard::request_undo(super::guard::Undo::Network, GUARD_UNDO_WAIT)
            {
                // The record stays: the guard undoes it when the monitor has gone.
                log::warn!("the cleanup guard did not undo the container's network now ({e}); it will once the monitor exits");
            }
        }
        // The VM, declared after the plumbing, was dropped before it.
        log::debug!("stop path: the VM is dropped and the network undone; the plumbing goes");
    }
}

/// Connects to the guest's [`WAKE_PORT`] through the vsock device's socket `uds`
/// (`CONNECT`, then the device's `OK <port>` line) and sends `wake`, its clock taken now.
fn send_wake(uds: &Path, mut wake: Wake, timeout: Duration) -> std::io::Result<()> {
    let mut conn = UnixStream::connect(uds)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.write_all(format!("CONNECT {WAKE_PORT}\n").as_bytes())?;
    // `OK <port>\n`: a short line, read a byte at a time so nothing after it is taken.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 32 {
        if conn.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the guest refused the connection (is its init waiting in template mode?)",
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::other(
            "the vsock device did not confirm the connection",
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    wake.realtime_secs = now.as_secs() as i64;
    wake.realtime_nanos = now.subsec_nanos();
    runvm_protocol::write_frame(&mut conn, &wake).map_err(std::io::Error::other)
}

/// [`WAKE_SEED_LEN`] bytes from the host's random number generator (`getrandom`: the
/// jailed monitor has no `/dev/urandom`).
fn fresh_seed() -> std::io::Result<Vec<u8>> {
    let mut seed = vec![0u8; WAKE_SEED_LEN];
    let mut filled = 0;
    while filled < seed.len() {
        let rest = &mut seed[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        filled += n as usize;
    }
    Ok(seed)
}

/// The VM of the container: the guest assets, the vsock device behind `vsock_path`, its
/// NICs, and its share served on `share_socket` (`None`: it goes in a spare slot later).
fn vm_config(
    cfg: &MonitorConfig,
    vsock_path: PathBuf,
    nics: Vec<NetConfig>,
    share_socket: Option<PathBuf>,
) -> VmConfig {
    let nics_count = nics.len();
    VmConfig {
        vcpus: cfg.vcpus,
        mem_mib: cfg.mem_mib,
        kernel: cfg.assets.kernel.clone(),
        initramfs: Some(cfg.assets.initramfs.clone()),
        cmdline: guest_cmdline(cfg.debug_console, cfg.cmdline_append.as_deref()),
        disks: Vec::new(),
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: vsock_path,
        }),
        nics,
        fs: share_socket
            .into_iter()
            .map(|socket| FsConfig {
                tag: SHARE_TAG.into(),
                socket,
            })
            .collect(),
        fs_slots: spare_fs_slots(cfg.fs_slots, nics_count),
        serial: cfg
            .debug_console
            .then(|| Box::new(std::io::stderr()) as Box<dyn std::io::Write + Send>),
        seccomp: cfg.seccomp,
        ram: None,
        template: false,
        restore: None,
    }
}

/// Starts the virtiofsd that serves `share` (a container's, at its start; a member
/// container's, at its start in its sandbox's VM): the sources as they are now (Docker
/// and Podman make some between create and start), the mount points of `mounts` made,
/// staged under `runtime_dir`/share, listening on `sockets`' `virtiofs.sock`, keeping
/// the capabilities of `bounding` and refusing owners other than `owners`.
pub(super) fn serve_share(
    program: &std::path::Path,
    share: &crate::share::SharePlan,
    mounts: &[runvm_protocol::MountSpec],
    owners: &Owners,
    bounding: &[String],
    runtime_dir: &std::path::Path,
    sockets: &SocketDir,
) -> Result<Virtiofsd, MonitorError> {
    share.recheck()?;
    share.make_mount_points(mounts)?;
    Ok(Virtiofsd::start(
        program,
        share,
        &runtime_dir.join("share"),
        sockets.path("virtiofs.sock"),
        bounding,
        owners,
    )?)
}

/// The spare file-system slots of a VM with `nics` NICs (for the containers that join its
/// network namespace: [`super::member`]): `wanted`, as far as virtio-mmio IRQs are left
/// after the vsock device, the share and the NICs.
fn spare_fs_slots(wanted: usize, nics: usize) -> usize {
    let lines = (vmm::layout::IRQ_MAX - vmm::layout::VIRTIO_IRQ_START + 1) as usize;
    wanted.min(lines.saturating_sub(2 + nics))
}

/// What runvm adds to the guest kernel's command line: the init's debug switch or
/// `quiet`, then the words of `RUNVM_KERNEL_CMDLINE_APPEND` (`append`).
pub fn guest_cmdline(debug_console: bool, append: Option<&str>) -> String {
    let mut cmdline = String::from(if debug_console {
        "runvm.debug=1"
    } else {
        "quiet"
    });
    if let Some(extra) = append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    cmdline
}

#[cfg(test)]
mod tests {
    use super::{fresh_seed, spare_fs_slots, WAKE_SEED_LEN};

    #[test]
    fn every_wake_seed_is_new() {
        let (a, b) = (fresh_seed().unwrap(), fresh_seed().unwrap());
        assert_eq!(a.len(), WAKE_SEED_LEN);
        assert_ne!(a, b);
    }

    #[test]
    fn spare_slots_take_only_the_irq_lines_left() {
        assert_eq!(spare_fs_slots(4, 1), 4);
        assert_eq!(spare_fs_slots(0, 1), 0);
        // 19 virtio-mmio lines: vsock, the share and 14 NICs leave 3.
        assert_eq!(spare_fs_slots(4, 14), 3);
        assert_eq!(spare_fs_slots(4, 30), 0);
    }
}

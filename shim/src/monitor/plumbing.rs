//! What the monitor sets up when the container starts, just before the VM boots: the
//! vsock sockets the guest connects to, the bind-mounted files read into `Run` (Docker
//! writes them after create), the container's network mirrored into the guest with a
//! DNS relay for its loopback nameservers, and the [`VmConfig`] of the VM.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use runvm_protocol::{
    HostMessage, NetworkSpec, CONTROL_PORT, DNS_PORT, STREAM_PORT, WRITEBACK_PORT,
};
use vmm::{NetConfig, VmConfig, VsockConfig};

use crate::network::Mirror;
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
    /// [`WRITEBACK_PORT`], for a container with a writable layer.
    pub(super) writeback: Option<UnixListener>,
    /// The TAPs and tc rules of the mirrored network, undone when dropped.
    _mirror: Mirror,
}

impl Plumbing {
    /// Sets up everything the VM needs at start, completes `run` with the bind-mounted
    /// files and the network, and says which VM to build.
    pub(super) fn set_up(
        cfg: &MonitorConfig,
        run: &mut HostMessage,
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
        let writeback = match cfg.writeback {
            Some(_) => Some(UnixListener::bind(port_path(WRITEBACK_PORT)).map_err(setup)?),
            None => None,
        };
        // Bind-mounted files are read now, at start: Docker writes them after create.
        if let HostMessage::Run { mounts, .. } = run {
            crate::rootfs::binds::load_files(mounts)?;
        }

        // The network namespace is as Docker left it: mirror it into the guest.
        let mut mirror = Mirror::setup(&network_record(&cfg.runtime_dir))?;
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
        if let HostMessage::Run { network, .. } = run {
            *network = NetworkSpec {
                interfaces: mirror.interfaces().to_vec(),
                dns_forward,
            };
        }
        let vm = vm_config(cfg, uds, nics);
        let plumbing = Self {
            _sockets: sockets,
            control,
            streams,
            writeback,
            _mirror: mirror,
        };
        Ok((plumbing, vm))
    }
}

/// The VM of the container: the guest assets, its disks, the vsock device behind
/// `vsock_path`, its NICs.
fn vm_config(cfg: &MonitorConfig, vsock_path: PathBuf, nics: Vec<NetConfig>) -> VmConfig {
    VmConfig {
        vcpus: cfg.vcpus,
        mem_mib: cfg.mem_mib,
        kernel: cfg.assets.kernel.clone(),
        initramfs: Some(cfg.assets.initramfs.clone()),
        cmdline: kernel_cmdline(cfg),
        disks: cfg.disks.clone(),
        vsock: Some(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: vsock_path,
        }),
        nics,
        fs: Vec::new(),
        serial: cfg
            .debug_console
            .then(|| Box::new(std::io::stderr()) as Box<dyn std::io::Write + Send>),
        seccomp: cfg.seccomp,
    }
}

/// What runvm adds to the guest kernel's command line: the init's debug switch or
/// `quiet`, then the words of `RUNVM_KERNEL_CMDLINE_APPEND`.
fn kernel_cmdline(cfg: &MonitorConfig) -> String {
    let mut cmdline = String::from(if cfg.debug_console {
        "runvm.debug=1"
    } else {
        "quiet"
    });
    if let Some(extra) = &cfg.cmdline_append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    cmdline
}

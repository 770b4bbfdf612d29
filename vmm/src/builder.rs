//! [`Vmm`]: builds a VM from a [`VmConfig`] (memory, kernel, devices on the buses and in
//! the event loop, vCPUs) and runs it, one thread per vCPU and one for the devices, each
//! under its seccomp filter, until the guest resets, crashes, or the host stops it.
//! [`VmmHandle`] stops, pauses and resumes it from another thread, and fills its spare
//! slots with shares or network interfaces and empties them ([`crate::fs_slots`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::boot::{cpu, loader, mptable};
use crate::bus::{Bus, BusError};
use crate::devices::legacy::{BootTimer, BootTimes, SerialConsole, I8042};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::fs::{self, Fs, FsConfig, FsError, VhostUserBackend};
use crate::devices::virtio::mmio::{MmioTransport, TransportRestoreError};
use crate::devices::virtio::net::{Net, NetConfig, NetError};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::VirtioDevice;
use crate::fs_slots::{
    self, EmptiedFsSlot, FilledFsSlot, FilledNetSlot, FsSlotError, FsSlotShare, FsSlots, MmioPlace,
    Subscriber,
};
use crate::layout::*;
use crate::memory::{guest_memory_in, GuestRamFile, MemoryError};
use crate::seccomp::{self, SeccompError, ThreadKind};
use crate::snapshot::{
    self as snap, Snapshot, SnapshotError, SnapshotState, VmShape, SNAPSHOT_FORMAT,
};
use crate::vstate::pause::{PauseControl, PauseError};
use crate::vstate::vcpu::{self, Vcpu};
use crate::vstate::vm::{Vm, VmError};
use crate::vstate::{VmExitReason, VmState};
use runvm_protocol::{BOOT_TIMER_PORT, TEMPLATE_CMDLINE};

/// Kernel parameters every runvm guest gets (reset through the i8042, no PCI, no probing
/// of legacy hardware that is not there).
pub const BASE_CMDLINE: &str =
    "reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp \
     i8042.dumbkbd io_delay=none tsc=reliable no_timer_check cryptomgr.notests random.trust_cpu=on \
     rcupdate.rcu_expedited=1";

/// A disk: a file given to the guest as a virtio-blk device (`/dev/vda`, `/dev/vdb`, …).
#[derive(Clone, Debug)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

/// The vsock device and its host Unix socket.
#[derive(Clone, Debug)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

/// Everything needed to build a VM.
pub struct VmConfig {
    pub vcpus: u8,
    pub mem_mib: u64,
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    /// Extra kernel parameters, appended to [`BASE_CMDLINE`] and the device list.
    pub cmdline: String,
    pub disks: Vec<DiskConfig>,
    pub vsock: Option<VsockConfig>,
    /// Network interfaces, each a virtio-net device on its TAP (in this order after the
    /// disks and the vsock device; the guest tells them apart by MAC).
    pub nics: Vec<NetConfig>,
    /// File-system shares, each a virtio-fs device served by the virtiofsd listening on
    /// its socket (after the network interfaces; the guest mounts them by tag). The VMM
    /// connects while it builds the VM; if a virtiofsd goes away later, the VM stops with
    /// [`VmExitReason::BackendFailed`].
    pub fs: Vec<FsConfig>,
    /// Spare slots (after the shares): empty virtio-mmio slots that
    /// [`VmmHandle::fill_fs_slot`] fills with a share, or [`VmmHandle::fill_net_slot`]
    /// with a network interface, while the VM runs. 0: none, and the VM is exactly as
    /// without them.
    pub fs_slots: usize,
    /// Where the serial console goes; `None` leaves the guest without a serial port.
    pub serial: Option<Box<dyn Write + Send>>,
    /// Install the per-thread seccomp filters (disable only to debug).
    pub seccomp: bool,
    /// The guest RAM file, made beforehand by a caller that drops its capabilities
    /// before it builds the VM (`None`: made now). Its size must be `mem_mib`.
    pub ram: Option<GuestRamFile>,
    /// Boot the guest init in template mode ([`runvm_protocol::TEMPLATE_CMDLINE`]): it
    /// stops, ready to be snapshotted ([`Vmm::snapshot_when_ready`]), before it asks the
    /// host for a container.
    pub template: bool,
    /// Restore this snapshot instead of booting: the VM must have the snapshot's shape (its
    /// vCPUs, memory, serial port, vsock CID and spare slots; no disk, NIC or boot-time
    /// share). The kernel, initramfs and command line are not used: the guest is where the
    /// snapshot left it.
    pub restore: Option<Snapshot>,
}

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("the guest RAM file made beforehand holds {0} MiB, the VM wants {1} MiB")]
    RamSize(u64, u64),
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("cannot place a device: {0}")]
    Bus(#[from] BusError),
    #[error("cannot open disk {path}: {source}")]
    Disk { path: PathBuf, source: BlockError },
    #[error("cannot create the vsock device at {path}: {source}")]
    Vsock { path: PathBuf, source: VsockError },
    #[error("cannot create network interface {index}: {source}")]
    Net { index: usize, source: NetError },
    #[error("cannot create the file-system share {tag:?} (virtiofsd socket {socket}): {source}")]
    Fs {
        tag: String,
        socket: PathBuf,
        source: FsError,
    },
    #[error("too many devices: no IRQ left for device {0}")]
    TooManyDevices(usize),
    #[error("{0} vCPUs requested; between 1 and {max} are supported", max = mptable::MAX_VCPUS)]
    VcpuCount(u8),
    #[error("cannot set up the VMM: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot start the event loop: {0}")]
    EventManager(#[source] event_manager::Error),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot restore the vsock device from the snapshot: {0}")]
    RestoreVsock(#[source] TransportRestoreError),
}

/// How a VM ended.
#[derive(Clone, Debug)]
pub struct VmExit {
    pub reason: VmExitReason,
    pub times: BootTimes,
}

/// Stops the event loop when its eventfd fires.
struct LoopStopper {
    evt: EventFd,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for LoopStopper {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stop.store(true, Ordering::Release);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("cannot watch the event loop's stop eventfd: {e}");
        }
    }
}

/// A cloneable handle to ask a running VM to stop, pause or resume, and to fill its spare
/// slots (with shares or network interfaces) and empty them.
#[derive(Clone)]
pub struct VmmHandle {
    state: Arc<VmState>,
    timer: BootTimer,
    pause: Arc<PauseControl>,
    fs_slots: Arc<FsSlots>,
}

impl VmmHandle {
    /// Stops the VM (the guest gets no chance to shut down).
    pub fn stop(&self) {
        self.state.request_exit(VmExitReason::Stopped);
    }

    /// What a device whose backend fails calls to stop the VM with the failure's
    /// message, as a share present at boot does. It holds the VM's exit state only, not
    /// the handle: a device in a spare slot that held the handle would keep its own slot,
    /// and with it its backend's connection, alive past the VM's end (a virtiofsd that
    /// outlived the VM kept the container's cgroup busy).
    pub fn backend_failure(&self) -> fs::BackendFailed {
        let state = self.state.clone();
        Box::new(move |message| state.request_exit(VmExitReason::BackendFailed(message)))
    }

    /// Stops every vCPU (the guest freezes entirely) until [`VmmHandle::resume`]; returns
    /// once each has left the guest.
    pub fn pause(&self) -> Result<(), PauseError> {
        self.pause.pause()
    }

    /// Lets a paused guest run again.
    pub fn resume(&self) {
        self.pause.resume()
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.pause.is_paused()
    }

    /// Boot milestones so far.
    pub fn times(&self) -> BootTimes {
        self.timer.times()
    }

    /// The number of spare slots ([`VmConfig::fs_slots`]), filled or not.
    pub fn fs_slot_count(&self) -> usize {
        self.fs_slots.count()
    }

    /// Puts `share` in spare slot `slot` (the first free one if `None`) and
    /// says which platform device the guest binds to find it. The VM keeps running if
    /// the share's virtiofsd fails later (see [`FsSlotShare::on_failure`]). Runs on the
    /// calling thread, except for the event loop's part (see [`crate::fs_slots`]).
    pub fn fill_fs_slot(
        &self,
        slot: Option<usize>,
        share: FsSlotShare,
    ) -> Result<FilledFsSlot, FsSlotError> {
        self.fs_slots.fill(slot, share)
    }

    /// Puts a network interface on `nic`'s TAP in spare slot `slot` (the first free one if
    /// `None`) and says which platform device the guest binds to find it (the guest tells
    /// its interfaces apart by MAC). The VM keeps running whatever happens to the TAP
    /// later. Runs on the calling thread, except for the event loop's part (see
    /// [`crate::fs_slots`]); the interface's frames move on the device thread.
    pub fn fill_net_slot(
        &self,
        slot: Option<usize>,
        nic: NetConfig,
    ) -> Result<FilledNetSlot, FsSlotError> {
        self.fs_slots.fill_net(slot, nic)
    }

    /// Takes what spare slot `slot` holds out of it (after the guest unbound its device):
    /// a share's virtiofsd connection is closed, a network interface's TAP; the slot is
    /// free again, for either kind.
    pub fn empty_fs_slot(&self, slot: usize) -> Result<EmptiedFsSlot, FsSlotError> {
        self.fs_slots.empty(slot)
    }
}

/// The vsock device and its transport.
type VsockSlot = (Arc<Mutex<MmioTransport>>, Arc<Mutex<Vsock>>);

/// The devices a snapshot saves the state of.
struct SnapshotDevices {
    vsock: Option<VsockSlot>,
    serial: Option<Arc<Mutex<SerialConsole>>>,
    /// What makes the VM other than a template's (a disk, a NIC, a boot-time share):
    /// such a VM cannot be snapshotted.
    not_template: Option<String>,
    shape: VmShape,
}

/// A built VM, ready to run.
pub struct Vmm {
    vm: Arc<Vm>,
    mem: GuestMemoryMmap<()>,
    vcpus: Vec<Vcpu>,
    events: EventManager<Subscriber>,
    state: Arc<VmState>,
    timer: BootTimer,
    pause: Arc<PauseControl>,
    fs_slots: Arc<FsSlots>,
    seccomp: bool,
    devices: SnapshotDevices,
}

/// The threads of a running VM.
struct Running {
    vcpus: Vec<JoinHandle<Vcpu>>,
    devices: JoinHandle<EventManager<Subscriber>>,
    vcpu_stop: Arc<AtomicBool>,
    loop_stop: EventFd,
    pause: Arc<PauseControl>,
}

impl Running {
    /// Stops the vCPUs (each out of `KVM_RUN`, its I/O completed) and then the event loop,
    /// and hands them back.
    fn stop(self) -> (Vec<Vcpu>, Option<EventManager<Subscriber>>) {
        self.vcpu_stop.store(true, Ordering::Release);
        self.pause.stop();
        for t in &self.vcpus {
            while !t.is_finished() {
                // The signal only interrupts KVM_RUN; resend until the thread sees the flag.
                let _ = t.kill(vcpu::kick_signal());
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let vcpus = self
            .vcpus
            .into_iter()
            .filter_map(|t| t.join().ok())
            .collect();
        let _ = self.loop_stop.write(1);
        (vcpus, self.devices.join().ok())
    }
}

impl Vmm {
    /// Builds the VM. Nothing of the guest runs until [`Vmm::run`].
    pub fn new(mut config: VmConfig) -> Result<Self, VmmError> {
        let start = Instant::now();
        if config.vcpus == 0 || config.vcpus > mptable::MAX_VCPUS {
            return Err(VmmError::VcpuCount(config.vcpus));
        }
        let timer = BootTimer::new(start);
        let state = Arc::new(VmState::new()?);
        let restore = config.restore.take();
        let shape = VmShape {
            vcpus: config.vcpus,
            mem_mib: config.mem_mib,
            serial: config.serial.is_some(),
            vsock_cid: config.vsock.as_ref().map_or(0, |v| v.guest_cid),
            fs_slots: config.fs_slots,
        };
        let not_template = if !config.disks.is_empty() {
            Some("it has disks".to_string())
        } else if !config.nics.is_empty() {
            Some("it has network interfaces".into())
        } else if !config.fs.is_empty() {
            Some("it has boot-time file-system shares".into())
        } else if config.vsock.is_none() {
            Some("it has no vsock device".into())
        } else {
            None
        };
        if let Some(snapshot) = &restore {
            if let Some(what) = &not_template {
                return Err(VmmError::Snapshot(SnapshotError::Shape {
                    dir: snapshot.dir.clone(),
                    what: what.clone(),
                }));
            }
            if snapshot.state.shape != shape {
                return Err(VmmError::Snapshot(SnapshotError::Shape {
                    dir: snapshot.dir.clone(),
                    what: format!("{:?}, this VM is {shape:?}", snapshot.state.shape),
                }));
            }
        }
        let ram_restored = config.ram.as_ref().is_some_and(GuestRamFile::is_restored);
        if ram_restored && restore.is_none() {
            // A kernel booted on a snapshot's memory would run on another guest's pages.
            return Err(SnapshotError::NotTemplate(
                "its RAM file holds a snapshot's memory, but no snapshot is restored".into(),
            )
            .into());
        }
        let vm = Arc::new(Vm::new()?);
        let mut ram = match config.ram.take() {
            Some(ram) if ram.size_mib() == config.mem_mib => ram,
            Some(ram) => return Err(VmmError::RamSize(ram.size_mib(), config.mem_mib)),
            None => GuestRamFile::create(config.mem_mib)?,
        };
        if let Some(snapshot) = restore.as_ref().filter(|_| !ram_restored) {
            ram.restore_from(snapshot)?;
        }
        let mem = guest_memory_in(ram)?;
        vm.register_memory(&mem)?;
        if let Some(snapshot) = &restore {
            vm.restore_state(&snapshot.state.vm)?;
        }

        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let mut events: EventManager<Subscriber> =
            EventManager::new().map_err(VmmError::EventManager)?;
        let mut cmdline = String::from(BASE_CMDLINE);

        pio.insert(
            Arc::new(Mutex::new(I8042::new(state.clone()))),
            u64::from(I8042_DATA_PORT),
            5,
        )?;
        pio.insert(
            Arc::new(Mutex::new(timer.clone())),
            u64::from(BOOT_TIMER_PORT),
            1,
        )?;
        let mut serial = None;
        match config.serial.take() {
            Some(out) => {
                let irq = EventFd::new(libc::EFD_NONBLOCK)?;
                vm.register_irqfd(&irq, SERIAL_IRQ)?;
                let saved = restore
                    .as_ref()
                    .and_then(|s| s.state.serial.as_ref().map(|saved| (s, saved)));
                let console = match saved {
                    Some((snapshot, saved)) => SerialConsole::restored(irq, out, saved)
                        .ok_or_else(|| snapshot.corrupt("its serial port state".into()))?,
                    None => SerialConsole::new(irq, out),
                };
                let console = Arc::new(Mutex::new(console));
                pio.insert(console.clone(), u64::from(SERIAL_PORT), 8)?;
                serial = Some(console);
                cmdline.push_str(" console=ttyS0");
            }
            None => cmdline.push_str(" 8250.nr_uarts=0"),
        }

        let mut slots = VirtioSlots {
            vm: &vm,
            mem: &mem,
            mmio: &mut mmio,
            events: &mut events,
            cmdline: &mut cmdline,
            next: 0,
        };
        for (i, disk) in config.disks.iter().enumerate() {
            let id = format!("runvm-vd{}", (b'a' + i as u8) as char);
            let dev =
                Block::new(&disk.path, disk.read_only, &id).map_err(|source| VmmError::Disk {
                    path: disk.path.clone(),
                    source,
                })?;
            slots.attach(Arc::new(Mutex::new(dev)))?;
        }
        let mut vsock = None;
        if let Some(v) = &config.vsock {
            let dev =
                Vsock::new(v.guest_cid, v.uds_path.clone()).map_err(|source| VmmError::Vsock {
                    path: v.uds_path.clone(),
                    source,
                })?;
            let dev = Arc::new(Mutex::new(dev));
            let transport = slots.attach(dev.clone())?;
            if let Some(snapshot) = &restore {
                transport
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .restore_state(&snapshot.state.vsock)
                    .map_err(VmmError::RestoreVsock)?;
            }
            vsock = Some((transport, dev));
        }
        for (index, nic) in std::mem::take(&mut config.nics).into_iter().enumerate() {
            let dev = Net::new(nic).map_err(|source| VmmError::Net { index, source })?;
            slots.attach(Arc::new(Mutex::new(dev)))?;
        }
        for share in &config.fs {
            let error = |source| VmmError::Fs {
                tag: share.tag.clone(),
                socket: share.socket.clone(),
                source,
            };
            let backend = VhostUserBackend::connect(&share.socket, fs::NUM_QUEUES)
                .map_err(|e| error(FsError::Backend(e)))?;
            let exit = state.clone();
            let on_failure = Box::new(move |message| {
                exit.request_exit(VmExitReason::BackendFailed(message));
            });
            let dev = Fs::new(&share.tag, backend, on_failure).map_err(error)?;
            slots.attach(Arc::new(Mutex::new(dev)))?;
        }
        let spare_places = (0..config.fs_slots)
            .map(|_| slots.reserve())
            .collect::<Result<Vec<_>, _>>()?;
        let fs_slots = Arc::new(FsSlots::new(
            vm.clone(),
            mem.clone(),
            events.remote_endpoint(),
            &spare_places,
        ));
        for i in 0..spare_places.len() {
            if let Some((place, slot)) = fs_slots.bus_device(i) {
                mmio.insert(slot, place.base, VIRTIO_MMIO_SIZE)?;
            }
        }
        if !config.cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&config.cmdline);
        }
        if config.template {
            cmdline.push(' ');
            cmdline.push_str(TEMPLATE_CMDLINE);
        }

        let entry = if restore.is_none() {
            let kernel = loader::load_kernel(&mem, &config.kernel)?;
            let initramfs = match &config.initramfs {
                Some(p) => Some(loader::load_initramfs(&mem, p, kernel.kernel_end)?),
                None => None,
            };
            loader::write_boot_info(&mem, &cmdline, initramfs)?;
            mptable::setup_mptable(&mem, config.vcpus)?;
            cpu::write_gdt(&mem)?;
            log::debug!("kernel command line: {cmdline}");
            Some(kernel.entry)
        } else {
            None
        };

        let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
        let base_cpuid = vm.supported_cpuid()?;
        let tsc_deadline = vm.has_tsc_deadline();
        let amd = cpu::is_amd(&base_cpuid);
        let mut vcpus = Vec::with_capacity(config.vcpus as usize);
        for id in 0..config.vcpus {
            let v = Vcpu::new(
                &vm,
                id,
                pio.clone(),
                mmio.clone(),
                state.clone(),
                timer.clone(),
            )?;
            let cpuid = cpu::vcpu_cpuid(&base_cpuid, id, config.vcpus, tsc_deadline);
            if let Some(snapshot) = &restore {
                cpu::set_cpuid(v.fd(), &cpuid)?;
                v.restore_state(&snapshot.state.vcpus[usize::from(id)], amd)?;
            } else if let Some(entry) = entry {
                cpu::setup_vcpu(v.fd(), &cpuid, entry, id == 0)?;
            }
            vcpus.push(v);
        }
        Ok(Self {
            vm,
            mem,
            vcpus,
            events,
            state,
            timer,
            pause: Arc::new(PauseControl::default()),
            fs_slots,
            seccomp: config.seccomp,
            devices: SnapshotDevices {
                vsock,
                serial,
                not_template,
                shape,
            },
        })
    }

    pub fn handle(&self) -> VmmHandle {
        VmmHandle {
            state: self.state.clone(),
            timer: self.timer.clone(),
            pause: self.pause.clone(),
            fs_slots: self.fs_slots.clone(),
        }
    }

    /// Runs the VM on its own threads (one per vCPU, one for devices) until it stops.
    pub fn run(self) -> Result<VmExit, VmmError> {
        let (state, timer) = (self.state.clone(), self.timer.clone());
        let fs_slots = self.fs_slots.clone();
        let running = self.start()?.0;
        wait_readable(state.exit_evt());
        timer.mark_vm_exit();
        // The event loop comes back to this thread to be dropped: the vsock muxer's drop
        // unlinks its socket, which the device thread's filter does not allow.
        drop(running.stop());
        // The spare slots' backends go now too, not when the last handle does (a
        // container's share in a slot: its virtiofsd, which the monitor's end waits for).
        fs_slots.release_all();
        let reason = state.exit_reason().unwrap_or(VmExitReason::Stopped);
        Ok(VmExit {
            reason,
            times: timer.times(),
        })
    }

    /// Runs a template VM ([`VmConfig::template`]) until its guest init reports it is
    /// ready (within `timeout`), stops it, and writes its snapshot to `dir` (see
    /// [`crate::snapshot`]). Returns how many bytes of guest memory the snapshot holds.
    pub fn snapshot_when_ready(self, dir: &Path, timeout: Duration) -> Result<u64, VmmError> {
        if let Some(what) = &self.devices.not_template {
            return Err(SnapshotError::NotTemplate(what.clone()).into());
        }
        let (state, timer) = (self.state.clone(), self.timer.clone());
        let (running, rest) = self.start()?;
        let deadline = Instant::now() + timeout;
        let ready = loop {
            if timer.times().template_ready.is_some() {
                break Ok(());
            }
            if let Some(reason) = state.exit_reason() {
                break Err(format!("the VM stopped: {reason:?}"));
            }
            if Instant::now() >= deadline {
                break Err("it did not report TemplateReady".to_string());
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let (vcpus, events) = running.stop();
        ready.map_err(|why| SnapshotError::NotReady(timeout, why))?;
        let result = rest.save(&vcpus, dir);
        drop(events);
        result
    }

    /// Starts the device thread and one thread per vCPU.
    fn start(self) -> Result<(Running, Stopped), VmmError> {
        let Vmm {
            vm,
            mem,
            vcpus,
            mut events,
            state,
            timer: _,
            pause,
            fs_slots: _,
            seccomp,
            devices,
        } = self;
        vcpu::register_kick_handler()?;
        let (vcpu_filter, dev_filter) = if seccomp {
            (
                Some(Arc::new(seccomp::filter(ThreadKind::Vcpu)?)),
                Some(seccomp::filter(ThreadKind::Devices)?),
            )
        } else {
            (None, None)
        };

        let loop_stop = Arc::new(AtomicBool::new(false));
        let stop_evt = EventFd::new(libc::EFD_NONBLOCK)?;
        events.add_subscriber(Arc::new(Mutex::new(LoopStopper {
            evt: stop_evt.try_clone()?,
            stop: loop_stop.clone(),
        })));
        let dev_state = state.clone();
        let device_thread = std::thread::Builder::new()
            .name("runvm-devices".into())
            .spawn(move || {
                if !install_filter(ThreadKind::Devices, dev_filter.as_ref(), &dev_state) {
                    return events;
                }
                while !loop_stop.load(Ordering::Acquire) {
                    if let Err(e) = events.run() {
                        dev_state.request_exit(VmExitReason::KvmError(format!(
                            "device event loop failed: {e:?}"
                        )));
                        break;
                    }
                }
                events
            })?;

        let mut running = Running {
            vcpus: Vec::new(),
            devices: device_thread,
            vcpu_stop: Arc::new(AtomicBool::new(false)),
            loop_stop: stop_evt,
            pause: pause.clone(),
        };
        for v in vcpus {
            let stop = running.vcpu_stop.clone();
            let pause = pause.clone();
            let filter = vcpu_filter.clone();
            let st = state.clone();
            let spawned = std::thread::Builder::new()
                .name("runvm-vcpu".into())
                .spawn(move || {
                    if !install_filter(ThreadKind::Vcpu, filter.as_deref(), &st) {
                        return v;
                    }
                    v.run(stop, pause)
                });
            match spawned {
                Ok(t) => running.vcpus.push(t),
                Err(e) => {
                    state.request_exit(VmExitReason::KvmError(format!(
                        "cannot start a vCPU thread: {e}"
                    )));
                    break;
                }
            }
        }
        Ok((running, Stopped { vm, mem, devices }))
    }
}

/// What a snapshot needs besides the vCPUs, kept while the VM runs.
struct Stopped {
    vm: Arc<Vm>,
    mem: GuestMemoryMmap<()>,
    devices: SnapshotDevices,
}

impl Stopped {
    /// Saves the stopped VM with its `vcpus` as the snapshot `dir`.
    fn save(&self, vcpus: &[Vcpu], dir: &Path) -> Result<u64, VmmError> {
        let (transport, vsock) = self
            .devices
            .vsock
            .as_ref()
            .ok_or_else(|| SnapshotError::NotTemplate("it has no vsock device".into()))?;
        let connections = vsock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .num_connections();
        if connections != 0 {
            return Err(SnapshotError::NotTemplate(format!(
                "its vsock device has {connections} connections"
            ))
            .into());
        }
        if vcpus.len() != usize::from(self.devices.shape.vcpus) {
            return Err(SnapshotError::NotTemplate(format!(
                "{} of its {} vCPUs stopped",
                vcpus.len(),
                self.devices.shape.vcpus
            ))
            .into());
        }
        let msr_indices = self.vm.msr_indices()?;
        let vcpu_states = vcpus
            .iter()
            .map(|v| v.save_state(&msr_indices))
            .collect::<Result<Vec<_>, _>>()?;
        let vm_state = self.vm.save_state()?;
        let vsock_state = transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .save_state();
        let serial = self
            .devices
            .serial
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).save());
        let shape = self.devices.shape.clone();
        Ok(snap::write_snapshot(
            dir,
            |out| snap::save_memory(&self.mem, out),
            |memory| SnapshotState {
                format: SNAPSHOT_FORMAT,
                shape,
                vm: vm_state,
                vcpus: vcpu_states,
                vsock: vsock_state,
                serial,
                memory,
            },
        )?)
    }
}

/// Installs a VMM thread's seccomp filter (when filters are on). On failure the VM is
/// told to stop with the reason, and the thread must not go on: returns false.
fn install_filter(
    kind: ThreadKind,
    filter: Option<&seccompiler::BpfProgram>,
    state: &VmState,
) -> bool {
    match filter.map(|f| seccomp::apply(kind, f)) {
        Some(Err(e)) => {
            let thread = kind.name();
            state.request_exit(VmExitReason::KvmError(format!("{thread} thread: {e}")));
            false
        }
        _ => true,
    }
}

fn wait_readable(evt: &EventFd) {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: evt.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r > 0 || (r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
            return;
        }
    }
}

/// Hands out virtio-mmio slots: each device gets the next MMIO window and IRQ.
struct VirtioSlots<'a> {
    vm: &'a Vm,
    mem: &'a GuestMemoryMmap<()>,
    mmio: &'a mut Bus,
    events: &'a mut EventManager<Subscriber>,
    cmdline: &'a mut String,
    next: usize,
}

impl VirtioSlots<'_> {
    /// Puts a virtio device on the MMIO bus in the next slot, wires its interrupt and queue
    /// notifications into KVM, hands it to the event loop and announces it on the command line.
    fn attach<D>(&mut self, dev: Arc<Mutex<D>>) -> Result<Arc<Mutex<MmioTransport>>, VmmError>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        let place = self.reserve()?;
        let transport = MmioTransport::new(self.mem.clone(), dev.clone())?;
        let sink = {
            let d = dev.lock().unwrap_or_else(|e| e.into_inner());
            fs_slots::wire(self.vm, &transport, &*d, place)?
        };
        // KVM holds its own reference to the sink; the eventfd only has to exist when it
        // is registered (its count saturates, it never blocks).
        drop(sink);
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport.clone(), place.base, VIRTIO_MMIO_SIZE)?;
        self.events.add_subscriber(dev);
        Ok(transport)
    }

    /// Takes the next slot (window, IRQ, platform device number) and announces it on the
    /// command line; the caller puts something on the bus there.
    fn reserve(&mut self) -> Result<MmioPlace, VmmError> {
        let slot = self.next;
        let irq = VIRTIO_IRQ_START + slot as u32;
        if irq > IRQ_MAX {
            return Err(VmmError::TooManyDevices(slot));
        }
        let base = VIRTIO_MMIO_START + slot as u64 * VIRTIO_MMIO_SIZE;
        self.cmdline
            .push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{irq}"));
        self.next += 1;
        Ok(MmioPlace {
            platform: slot,
            base,
            irq,
        })
    }
}

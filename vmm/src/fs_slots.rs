//! Spare slots: virtio-fs and virtio-net devices added to and removed from a running VM.
//!
//! virtio-mmio has no hotplug. Instead the VM is built with a number of spare slots
//! ([`crate::VmConfig::fs_slots`]), each declared on the kernel command line like every
//! other device (`virtio_mmio.device=4K@base:irq`, after the boot-time devices) and on
//! the MMIO bus as an empty [`MmioSlot`], which reads as a placeholder (`DeviceID` 0): the
//! guest's `virtio_mmio` driver leaves its platform device, `virtio-mmio.<N>` (N its place
//! among the command line's devices, counted from 0 as the kernel counts them in
//! `vm_cmdline_set`), unbound. A slot holds either kind of device, one at a time: a
//! file-system share (a member container's, or a restored VM's container's) or a network
//! interface (a restored VM's: its template was snapshotted without NICs).
//!
//! [`FsSlots::fill`] puts a virtio-fs device in a free slot, [`FsSlots::fill_net`] a
//! virtio-net device; both go through one path and are made and wired exactly as boot-time
//! devices: a share connected to its virtiofsd, a NIC on its TAP; the device's interrupt
//! eventfd a KVM irqfd on the slot's IRQ, its queue eventfds KVM ioeventfds on the slot's
//! `QueueNotify`, the device (a share's backend connection; a NIC's queues and TAP)
//! watched by the event loop. The guest then binds the platform device (a write of its
//! name to `/sys/bus/platform/drivers/virtio-mmio/bind`), which probes it again and finds
//! the device; guest memory goes to virtiofsd when the driver activates a share's device,
//! as for any share. [`FsSlots::empty`] undoes it all, whatever the slot holds, once the
//! guest has unbound the device (unbinding resets it, which stops virtiofsd's rings or
//! the NIC's frames); a slot emptied under a guest that did not unbind it loses its device
//! all the same (the guest's mount stops working, its interface stops moving frames; the
//! host's removal is not the guest's to refuse).
//!
//! Threads: fill and empty run on the caller's thread (the monitor's main thread, through
//! [`crate::VmmHandle`]), under one lock for all slots. The KVM registrations are ioctls on
//! the VM's descriptor from that thread (`KVM_IRQFD`, `KVM_IOEVENTFD`: allowed on the
//! monitor's main thread's seccomp list for this); the event loop's subscription changes
//! (`epoll_ctl`) run on the device thread, sent there through the event manager's remote
//! endpoint and awaited for at most [`EVENT_LOOP_TIMEOUT`]. A confined monitor thread
//! cannot make sockets: it passes a connection it got elsewhere
//! ([`FsBackend::Connected`]), and a NIC's TAP opened elsewhere. A NIC's frames move on the
//! device thread, as a boot-time NIC's. vCPU threads see a slot filled or empty from one
//! access to the next (the slot's lock).
//!
//! A device in a slot never stops the VM. A share's backend that dies while its slot is
//! filled does not (a boot-time share's does): the slot belongs to one container, whose
//! owner is told through the callback given at fill ([`FsSlotShare::on_failure`]) and
//! decides (end the member, empty the slot). A NIC's TAP errors are logged and the device
//! goes on, as at boot.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

use event_manager::{MutEventSubscriber, RemoteEndpoint, SubscriberId, SubscriberOps};
use log::{error, warn};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::fs::vhost_user::REPLY_TIMEOUT;
use crate::devices::virtio::fs::{self, BackendFailed, Fs, FsError, VhostUserBackend, NUM_QUEUES};
use crate::devices::virtio::mmio::{status, MmioTransport, INTERRUPT_ACK_REG, NOTIFY_REG_OFFSET};
use crate::devices::virtio::net::{Net, NetConfig, NetError};
use crate::devices::virtio::slot::MmioSlot;
use crate::devices::virtio::{GuestMemory, IrqTrigger, VirtioDevice, INTERRUPT_STATUS_USED_RING};
use crate::vstate::vm::{Vm, VmError};

/// What the event loop holds: every device, behind its lock.
pub(crate) type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// How long a fill or an empty waits for the event loop to take or drop the device.
pub const EVENT_LOOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Wiring a virtio-mmio device into KVM: its interrupt and its queue notifications.
/// The [`Vm`]'s; tests record the calls instead.
pub trait DeviceWiring: Send + Sync {
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError>;
    fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError>;
    fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError>;
    fn unregister_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError>;
}

impl DeviceWiring for Vm {
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        Vm::register_irqfd(self, evt, gsi)
    }
    fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        Vm::unregister_irqfd(self, evt, gsi)
    }
    fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        Vm::register_mmio_ioevent(self, evt, addr, datamatch)
    }
    fn unregister_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        Vm::unregister_mmio_ioevent(self, evt, addr, datamatch)
    }
}

/// Where a virtio-mmio device sits: its register window and its IRQ, and its platform
/// device's number in the guest (`virtio-mmio.<platform>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioPlace {
    pub platform: usize,
    pub base: u64,
    pub irq: u32,
}

/// Wires the device behind `transport` at `place`: its interrupt eventfd becomes an irqfd
/// on the IRQ, each queue eventfd an ioeventfd on `QueueNotify` with the queue's index.
/// For a device whose backend interrupts the guest itself, the guest's acknowledgements
/// of used-ring interrupts are swallowed by KVM (into the returned sink eventfd, which
/// must live as long as the registration): the transport has nothing to do with them (it
/// reports that bit as always set), and other values (a configuration change) still reach
/// it. On failure, what was registered is unregistered.
pub(crate) fn wire(
    wiring: &dyn DeviceWiring,
    transport: &MmioTransport,
    device: &dyn VirtioDevice,
    place: MmioPlace,
) -> Result<Option<EventFd>, VmError> {
    let irq = transport.interrupt();
    let sink = if device.interrupts_guest_directly() {
        Some(EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(VmError::EventFd)?)
    } else {
        None
    };
    let result = (|| {
        wiring.register_irqfd(irq.eventfd(), place.irq)?;
        for (i, evt) in device.queue_events().iter().enumerate() {
            wiring.register_mmio_ioevent(evt, place.base + NOTIFY_REG_OFFSET, i as u32)?;
        }
        if let Some(sink) = &sink {
            wiring.register_mmio_ioevent(
                sink,
                place.base + INTERRUPT_ACK_REG,
                INTERRUPT_STATUS_USED_RING,
            )?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(sink),
        Err(e) => {
            // Some of these were never registered: KVM says so, and that is fine.
            unwire(wiring, &irq, device, sink.as_ref(), place, false);
            Err(e)
        }
    }
}

/// Undoes [`wire`]. Failures are logged when `log_failures` (a registration that cannot be
/// undone leaves KVM signalling an eventfd nobody reads: harmless, but worth a line).
fn unwire(
    wiring: &dyn DeviceWiring,
    irq: &IrqTrigger,
    device: &dyn VirtioDevice,
    sink: Option<&EventFd>,
    place: MmioPlace,
    log_failures: bool,
) {
    let mut results = vec![wiring.unregister_irqfd(irq.eventfd(), place.irq)];
    for (i, evt) in device.queue_events().iter().enumerate() {
        results.push(wiring.unregister_mmio_ioevent(evt, place.base + NOTIFY_REG_OFFSET, i as u32));
    }
    if let Some(sink) = sink {
        results.push(wiring.unregister_mmio_ioevent(
            sink,
            place.base + INTERRUPT_ACK_REG,
            INTERRUPT_STATUS_USED_RING,
        ));
    }
    if log_failures {
        for e in results.into_iter().filter_map(Result::err) {
            error!("virtio-mmio.{}: {e}", place.platform);
        }
    }
}

/// The virtiofsd a slot's device talks to.
pub enum FsBackend {
    /// Its listening socket: connected on the caller's thread (which must be allowed to
    /// make a Unix socket and connect it: not the confined monitor thread).
    Socket(PathBuf),
    /// A connection to it made beforehand (by a process or thread allowed to).
    Connected(UnixStream),
}

/// A share to put in a slot.
pub struct FsSlotShare {
    /// The tag the guest mounts it by.
    pub tag: String,
    pub backend: FsBackend,
    /// Told (once, with what happened) if the backend fails or goes away while the slot is
    /// filled; the VM goes on. Runs on a vCPU thread or the device thread: it must not
    /// fill or empty a slot itself (send the news elsewhere).
    pub on_failure: BackendFailed,
}

/// What a filled slot holds: a share, known by its tag, or a network interface, known by
/// its MAC address (as the guest tells them apart). Displayed as "the share \"tag\"" or
/// "the network interface 02:…".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotContent {
    Share { tag: String },
    Nic { mac: [u8; 6] },
}

impl std::fmt::Display for SlotContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotContent::Share { tag } => write!(f, "the share {tag:?}"),
            SlotContent::Nic { mac } => write!(f, "the network interface {}", mac_text(mac)),
        }
    }
}

/// `mac` as `ip link` writes it (`02:42:ac:11:00:02`).
fn mac_text(mac: &[u8; 6]) -> String {
    let bytes: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    bytes.join(":")
}

/// A slot filled with a share, as the guest finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilledFsSlot {
    /// The slot's index among the spare slots.
    pub slot: usize,
    /// The guest's platform device to bind (`virtio-mmio.<N>`).
    pub device: String,
    /// Its number N.
    pub platform: usize,
    /// The tag the guest mounts the share by.
    pub tag: String,
}

/// A slot filled with a network interface, as the guest finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilledNetSlot {
    /// The slot's index among the spare slots.
    pub slot: usize,
    /// The guest's platform device to bind (`virtio-mmio.<N>`).
    pub device: String,
    /// Its number N.
    pub platform: usize,
    /// The MAC address of the guest's interface (its config space).
    pub mac: [u8; 6],
}

/// What an emptied slot held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmptiedFsSlot {
    /// The share or the network interface that was in the slot.
    pub held: SlotContent,
    /// Whether the guest had released the device before the slot was emptied: its
    /// status is reset, or only `ACKNOWLEDGE` (what Linux's unbind leaves).
    pub released_by_guest: bool,
}

/// Why a slot could not be filled or emptied.
#[derive(Debug, thiserror::Error)]
pub enum FsSlotError {
    #[error("the VM has no spare slot {slot} (it has {count}): pick one below {count}, or none to take the first free one")]
    NoSuchSlot { slot: usize, count: usize },
    #[error("spare slot {slot} already holds {held}: empty it first, or pick another slot")]
    Busy { slot: usize, held: SlotContent },
    #[error("all {count} spare slots of the VM are in use: empty one first, or build the VM with more spare slots")]
    NoneFree { count: usize },
    #[error("spare slot {0} is empty: there is nothing to take out of it")]
    NotFilled(usize),
    #[error("cannot create the file-system share {tag:?} for spare slot {slot}: {source}")]
    Fs {
        slot: usize,
        tag: String,
        #[source]
        source: FsError,
    },
    #[error("cannot create the network interface {} for spare slot {slot}: {source}", mac_text(.mac))]
    Net {
        slot: usize,
        mac: [u8; 6],
        #[source]
        source: NetError,
    },
    #[error("cannot create the register window of spare slot {slot}: {source}")]
    Transport {
        slot: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wire spare slot {slot} into KVM: {source}")]
    Wire {
        slot: usize,
        #[source]
        source: VmError,
    },
    #[error("the VM's event loop did not take the request for spare slot {slot}: {source}")]
    EventLoop {
        slot: usize,
        #[source]
        source: event_manager::Error,
    },
    #[error("the VM's event loop did not answer within {EVENT_LOOP_TIMEOUT:?} (the VM is stopping or stopped)")]
    EventLoopGone,
}

/// A device a spare slot can hold: a share's ([`Fs`]) or a NIC's ([`Net`]).
trait SlotDevice: VirtioDevice + MutEventSubscriber + Send {
    /// Cuts the device off from what it works with when it leaves its slot (or does not
    /// make it in), even if a reference to it lingers somewhere: a share's connection to
    /// virtiofsd is closed (which ends virtiofsd; the hang-up is not reported as a
    /// failure), a NIC is reset (it moves no more frames and lets go of guest memory; its
    /// TAP closes with the device).
    fn release(&mut self);
}

impl SlotDevice for Fs {
    fn release(&mut self) {
        self.disconnect();
    }
}

impl SlotDevice for Net {
    fn release(&mut self) {
        VirtioDevice::reset(self);
    }
}

/// The device in a filled slot and what was done to wire it.
struct Occupant {
    held: SlotContent,
    device: Arc<Mutex<dyn SlotDevice>>,
    irq: Arc<IrqTrigger>,
    sink: Option<EventFd>,
    subscriber: SubscriberId,
}

struct Slot {
    place: MmioPlace,
    bus: Arc<Mutex<MmioSlot>>,
    occupant: Option<Occupant>,
}

/// The spare slots of one VM.
pub struct FsSlots {
    wiring: Arc<dyn DeviceWiring>,
    mem: GuestMemory,
    events: RemoteEndpoint<Subscriber>,
    slots: Mutex<Vec<Slot>>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The slot a fill goes to: `slot` if the VM has it and it is free, the first free one if
/// `None`.
fn free_slot(slots: &[Slot], slot: Option<usize>) -> Result<usize, FsSlotError> {
    let count = slots.len();
    match slot {
        Some(i) => match slots.get(i) {
            None => Err(FsSlotError::NoSuchSlot { slot: i, count }),
            Some(Slot {
                occupant: Some(o), ..
            }) => Err(FsSlotError::Busy {
                slot: i,
                held: o.held.clone(),
            }),
            Some(_) => Ok(i),
        },
        None => slots
            .iter()
            .position(|s| s.occupant.is_none())
            .ok_or(FsSlotError::NoneFree { count }),
    }
}

impl FsSlots {
    /// Empty slots at `places` (put each [`FsSlots::bus_device`] on the MMIO bus at its
    /// base), wired through `wiring`, their devices watched by the event loop behind
    /// `events`.
    pub(crate) fn new(
        wiring: Arc<dyn DeviceWiring>,
        mem: GuestMemory,
        events: RemoteEndpoint<Subscriber>,
        places: &[MmioPlace],
    ) -> Self {
        let slots = places
            .iter()
            .map(|&place| Slot {
                place,
                bus: Arc::new(Mutex::new(MmioSlot::new())),
                occupant: None,
            })
            .collect();
        Self {
            wiring,
            mem,
            events,
            slots: Mutex::new(slots),
        }
    }

    /// The VM has stopped: cuts every filled slot's device off from its backend at once
    /// ([`SlotDevice::release`]: a share's virtiofsd connection closes, which ends that
    /// virtiofsd), as the devices present at boot are with the event loop, instead of
    /// when the last handle to the slots goes. The slots stay filled; nothing is asked of
    /// the (stopped) event loop or of KVM.
    pub(crate) fn release_all(&self) {
        for slot in lock(&self.slots).iter() {
            if let Some(occupant) = &slot.occupant {
                lock(&occupant.device).release();
            }
        }
    }

    /// The number of spare slots.
    pub fn count(&self) -> usize {
        lock(&self.slots).len()
    }

    /// Slot `slot`'s register window, for the MMIO bus.
    pub(crate) fn bus_device(&self, slot: usize) -> Option<(MmioPlace, Arc<Mutex<MmioSlot>>)> {
        lock(&self.slots)
            .get(slot)
            .map(|s| (s.place, s.bus.clone()))
    }

    /// Puts `share` in spare slot `slot`, or in the first free one if `None`.
    pub fn fill(
        &self,
        slot: Option<usize>,
        share: FsSlotShare,
    ) -> Result<FilledFsSlot, FsSlotError> {
        let mut slots = lock(&self.slots);
        let index = free_slot(&slots, slot)?;
        let FsSlotShare {
            tag,
            backend,
            on_failure,
        } = share;
        let fs_error = |source| FsSlotError::Fs {
            slot: index,
            tag: tag.clone(),
            source,
        };
        let backend = match backend {
            FsBackend::Socket(path) => VhostUserBackend::connect(&path, fs::NUM_QUEUES),
            FsBackend::Connected(stream) => {
                VhostUserBackend::from_stream(stream, NUM_QUEUES, REPLY_TIMEOUT)
            }
        }
        .map_err(|e| fs_error(FsError::Backend(e)))?;
        let device = Fs::new(&tag, backend, on_failure).map_err(fs_error)?;
        let held = SlotContent::Share { tag: tag.clone() };
        let platform = slots[index].place.platform;
        let device = self.install(&mut slots[index], index, device, held)?;
        Ok(FilledFsSlot {
            slot: index,
            device,
            platform,
            tag,
        })
    }

    /// Puts a network interface on the TAP in `nic` in spare slot `slot`, or in the first
    /// free one if `None`. When the NIC does not go in (whatever the reason), its TAP is
    /// closed.
    pub fn fill_net(
        &self,
        slot: Option<usize>,
        nic: NetConfig,
    ) -> Result<FilledNetSlot, FsSlotError> {
        let mut slots = lock(&self.slots);
        let index = free_slot(&slots, slot)?;
        let mac = nic.mac;
        let device = Net::new(nic).map_err(|source| FsSlotError::Net {
            slot: index,
            mac,
            source,
        })?;
        let held = SlotContent::Nic { mac };
        let platform = slots[index].place.platform;
        let device = self.install(&mut slots[index], index, device, held)?;
        Ok(FilledNetSlot {
            slot: index,
            device,
            platform,
            mac,
        })
    }

    /// Puts `device`, made for free slot `slot` (number `index`), in it: its register
    /// window on the slot, its interrupt and queue notifications wired into KVM at the
    /// slot's place, the device handed to the event loop. Returns the guest's platform
    /// device (`virtio-mmio.<N>`). On failure nothing of it stays and the device is
    /// released ([`SlotDevice::release`]).
    fn install<D: SlotDevice + 'static>(
        &self,
        slot: &mut Slot,
        index: usize,
        device: D,
        held: SlotContent,
    ) -> Result<String, FsSlotError> {
        let place = slot.place;
        let device = Arc::new(Mutex::new(device));
        let give_up = |e: FsSlotError| {
            lock(&device).release();
            e
        };
        let transport = MmioTransport::new(self.mem.clone(), device.clone()).map_err(|source| {
            give_up(FsSlotError::Transport {
                slot: index,
                source,
            })
        })?;
        let irq = transport.interrupt();
        let wired = wire(&*self.wiring, &transport, &*lock(&device), place);
        let sink = wired.map_err(|source| {
            give_up(FsSlotError::Wire {
                slot: index,
                source,
            })
        })?;
        let subscriber: Subscriber = device.clone();
        let added = self.call_event_loop(index, move |ops| ops.add_subscriber(subscriber));
        let subscriber = match added {
            Ok(id) => id,
            Err(e) => {
                unwire(
                    &*self.wiring,
                    &irq,
                    &*lock(&device),
                    sink.as_ref(),
                    place,
                    true,
                );
                return Err(give_up(e));
            }
        };
        let filled = lock(&slot.bus).fill(transport);
        debug_assert!(filled.is_ok(), "an unoccupied slot holds a transport");
        let platform_device = format!("virtio-mmio.{}", place.platform);
        log::info!("{held} is in spare slot {index} (guest device {platform_device})");
        slot.occupant = Some(Occupant {
            held,
            device,
            irq,
            sink,
            subscriber,
        });
        Ok(platform_device)
    }

    /// Takes the device out of slot `slot`, whatever it is: the slot reads as empty again,
    /// the KVM wiring and the event loop's watch are undone, and the device is released (a
    /// share's connection to virtiofsd closed, which ends it; a NIC's TAP closed with the
    /// device). Meant for after the guest unbound the device.
    pub fn empty(&self, slot: usize) -> Result<EmptiedFsSlot, FsSlotError> {
        let mut slots = lock(&self.slots);
        let count = slots.len();
        let s = slots
            .get_mut(slot)
            .ok_or(FsSlotError::NoSuchSlot { slot, count })?;
        let occupant = s.occupant.take().ok_or(FsSlotError::NotFilled(slot))?;
        let place = s.place;
        let transport = lock(&s.bus).empty();
        // The lock stays held until the slot is free for good: a fill of the same slot
        // would register its ioeventfds where this device's still are.
        // Linux's unbind resets the device and then sets ACKNOWLEDGE again
        // (`virtio_dev_remove`): released is reset, or only acknowledged.
        let released_by_guest = transport
            .as_ref()
            .is_none_or(|t| t.status() & !status::ACKNOWLEDGE == 0);
        drop(transport);
        let held = occupant.held.clone();
        if !released_by_guest {
            warn!(
                "{held}: spare slot {slot} emptied while the guest still drove the device (virtio-mmio.{} was not unbound)",
                place.platform
            );
        }
        unwire(
            &*self.wiring,
            &occupant.irq,
            &*lock(&occupant.device),
            occupant.sink.as_ref(),
            place,
            true,
        );
        let id = occupant.subscriber;
        let removed = self
            .call_event_loop(slot, move |ops| ops.remove_subscriber(id).map(drop))
            .and_then(|r| r.map_err(|source| FsSlotError::EventLoop { slot, source }));
        if let Err(e) = removed {
            error!("{held}: the event loop cannot stop watching its device: {e}");
        }
        // Cut the device off even if a reference to it lingers.
        lock(&occupant.device).release();
        drop(occupant);
        Ok(EmptiedFsSlot {
            held,
            released_by_guest,
        })
    }

    /// Runs `f` on the event loop's thread and returns what it returned. Gives up after
    /// [`EVENT_LOOP_TIMEOUT`] (a request not yet taken by then is not run).
    fn call_event_loop<O: Send + 'static>(
        &self,
        slot: usize,
        f: impl FnOnce(&mut dyn SubscriberOps<Subscriber = Subscriber>) -> O + Send + 'static,
    ) -> Result<O, FsSlotError> {
        let (tx, rx) = mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let cancel = cancelled.clone();
        self.events
            .fire(move |ops| {
                if !cancel.load(Ordering::Acquire) {
                    let _ = tx.send(f(ops));
                }
            })
            .map_err(|source| FsSlotError::EventLoop { slot, source })?;
        match rx.recv_timeout(EVENT_LOOP_TIMEOUT) {
            Ok(o) => Ok(o),
            Err(_) => {
                cancelled.store(true, Ordering::Release);
                // It may have run just now.
                rx.try_recv().map_err(|_| FsSlotError::EventLoopGone)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;

//! Tests of the spare slots: what the guest reads through the MMIO bus before, while and
//! after a slot holds a share or a NIC, the KVM wiring (recorded by a stand-in for the
//! VM), the event loop's watch of the device (a real event manager on a thread of its
//! own, reached as the VMM reaches it: a share's backend, a NIC's queues and TAP), and the
//! refusals. A share's backend is the scripted virtiofsd of the virtio-fs tests; a NIC's
//! TAP is a datagram socket pair (it keeps frame boundaries as a TAP does), whose other
//! end plays the host's network.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::Instant;

use event_manager::EventManager;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::bus::Bus;
use crate::devices::virtio::fs::tests::{virtiofsd_like, Running};
use crate::devices::virtio::fs::TAG_LEN;
use crate::devices::virtio::mmio::{
    status, CONFIG_SPACE_OFFSET, DEVICE_FEATURES_REG, DEVICE_FEATURES_SEL_REG, DEVICE_ID_REG,
    DRIVER_FEATURES_REG, DRIVER_FEATURES_SEL_REG, INTERRUPT_STATUS_REG, MAGIC_VALUE_REG,
    MMIO_MAGIC_VALUE, QUEUE_DESC_HIGH_REG, QUEUE_DESC_LOW_REG, QUEUE_DEVICE_HIGH_REG,
    QUEUE_DEVICE_LOW_REG, QUEUE_DRIVER_HIGH_REG, QUEUE_DRIVER_LOW_REG, QUEUE_NUM_MAX_REG,
    QUEUE_NUM_REG, QUEUE_READY_REG, QUEUE_SEL_REG, STATUS_REG, VENDOR_ID_REG, VERSION_REG,
};
use crate::devices::virtio::net::{QUEUE_SIZE as NET_QUEUE_SIZE, VNET_HDR_LEN};
use crate::devices::virtio::test_utils::{DriverQueue, R, W};
use crate::devices::virtio::{TYPE_FS, TYPE_NET, VIRTIO_F_VERSION_1};
use crate::memory::create_guest_memory;

/// Two spare slots, after three boot-time devices.
const PLACES: [MmioPlace; 2] = [
    MmioPlace {
        platform: 3,
        base: 0xd000_3000,
        irq: 8,
    },
    MmioPlace {
        platform: 4,
        base: 0xd000_4000,
        irq: 9,
    },
];

/// One KVM registration: irqfd (gsi) or ioeventfd (address, datamatch), with its eventfd.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reg {
    Irqfd { fd: i32, gsi: u32 },
    Ioevent { fd: i32, addr: u64, datamatch: u32 },
}

/// Stands in for the VM: keeps what is registered, refuses what KVM would refuse
/// (a registration twice, an unregistration of nothing), and can be told to refuse
/// ioeventfds. With `raw_ioctls`, each call also makes the KVM ioctl the VM would make
/// (on no descriptor: it fails with `EBADF`), for the seccomp filters to judge.
#[derive(Default)]
pub(crate) struct Recorder {
    live: Mutex<Vec<Reg>>,
    refuse_ioevents: AtomicBool,
    raw_ioctls: bool,
}

fn kvm_refused(what: &'static str, errno: i32) -> VmError {
    VmError::Kvm {
        what,
        source: kvm_ioctls::Error::new(errno),
    }
}

impl Recorder {
    fn add(&self, reg: Reg) -> Result<(), VmError> {
        self.raw_ioctl(&reg);
        let mut live = lock(&self.live);
        if live.contains(&reg) {
            return Err(kvm_refused("register", libc::EEXIST));
        }
        live.push(reg);
        Ok(())
    }

    fn remove(&self, reg: Reg) -> Result<(), VmError> {
        self.raw_ioctl(&reg);
        let mut live = lock(&self.live);
        match live.iter().position(|r| *r == reg) {
            Some(i) => {
                live.remove(i);
                Ok(())
            }
            None => Err(kvm_refused("unregister", libc::ENOENT)),
        }
    }

    fn raw_ioctl(&self, reg: &Reg) {
        if !self.raw_ioctls {
            return;
        }
        let request = match reg {
            Reg::Irqfd { .. } => crate::seccomp::rules::KVM_IRQFD,
            Reg::Ioevent { .. } => crate::seccomp::rules::KVM_IOEVENTFD,
        };
        // SAFETY: an ioctl on a descriptor that does not exist: it fails with EBADF
        // without reading its argument.
        unsafe { libc::ioctl(-1, request as _, 0) };
    }

    fn live(&self) -> Vec<Reg> {
        lock(&self.live).clone()
    }
}

use std::os::fd::AsRawFd;

impl DeviceWiring for Recorder {
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.add(Reg::Irqfd {
            fd: evt.as_raw_fd(),
            gsi,
        })
    }
    fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.remove(Reg::Irqfd {
            fd: evt.as_raw_fd(),
            gsi,
        })
    }
    fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        if self.refuse_ioevents.load(Ordering::SeqCst) {
            return Err(kvm_refused("register an ioeventfd", libc::ENOSPC));
        }
        self.add(Reg::Ioevent {
            fd: evt.as_raw_fd(),
            addr,
            datamatch,
        })
    }
    fn unregister_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.remove(Reg::Ioevent {
            fd: evt.as_raw_fd(),
            addr,
            datamatch,
        })
    }
}

/// The slots, the bus the guest reaches them on, and the event loop on its thread.
pub(crate) struct Fixture {
    pub(crate) slots: FsSlots,
    wiring: Arc<Recorder>,
    bus: Bus,
    stop: Arc<AtomicBool>,
    event_loop: Option<JoinHandle<()>>,
}

impl Fixture {
    fn new() -> Self {
        Self::with(Recorder::default(), false)
    }

    /// Slots wired through `wiring`, their event loop's thread confined as the VMM's
    /// device thread when `confined_loop`.
    pub(crate) fn with(wiring: Recorder, confined_loop: bool) -> Self {
        let mem = create_guest_memory(16).unwrap();
        let mut events = EventManager::<Subscriber>::new().unwrap();
        let endpoint = events.remote_endpoint();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let event_loop = std::thread::spawn(move || {
            if confined_loop {
                crate::seccomp::enter(crate::seccomp::ThreadKind::Devices);
            }
            while !stopped.load(Ordering::SeqCst) {
                events.run_with_timeout(20).unwrap();
            }
        });
        let wiring = Arc::new(wiring);
        let slots = FsSlots::new(wiring.clone(), mem, endpoint, &PLACES);
        let mut bus = Bus::new();
        for (i, want) in PLACES.iter().enumerate() {
            let (place, dev) = slots.bus_device(i).unwrap();
            assert_eq!(place, *want);
            bus.insert(dev, place.base, 0x1000).unwrap();
        }
        Self {
            slots,
            wiring,
            bus,
            stop,
            event_loop: Some(event_loop),
        }
    }

    /// A 4-byte register read of slot `slot`, as a vCPU makes it.
    pub(crate) fn r(&self, slot: usize, reg: u64) -> u32 {
        let mut b = [0xffu8; 4];
        assert!(self.bus.read(PLACES[slot].base + reg, &mut b));
        u32::from_le_bytes(b)
    }

    fn w(&self, slot: usize, reg: u64, v: u32) {
        assert!(self.bus.write(PLACES[slot].base + reg, &v.to_le_bytes()));
    }

    /// What the guest's driver does to bring the device in slot `slot` up, as Linux's
    /// `virtio_mmio` and the device's driver do it: reset, acknowledge, accept `features`,
    /// set up `queues` (queue `i` the `i`th), `DRIVER_OK`.
    fn bring_up(&self, slot: usize, features: u64, queues: &[&DriverQueue]) {
        self.w(slot, STATUS_REG, 0);
        self.w(slot, STATUS_REG, status::ACKNOWLEDGE);
        self.w(slot, STATUS_REG, status::ACKNOWLEDGE | status::DRIVER);
        self.w(slot, DRIVER_FEATURES_SEL_REG, 0);
        self.w(slot, DRIVER_FEATURES_REG, features as u32);
        self.w(slot, DRIVER_FEATURES_SEL_REG, 1);
        self.w(slot, DRIVER_FEATURES_REG, (features >> 32) as u32);
        let negotiated = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.w(slot, STATUS_REG, negotiated);
        assert_eq!(self.r(slot, STATUS_REG), negotiated, "features refused");
        for (i, q) in queues.iter().enumerate() {
            self.w(slot, QUEUE_SEL_REG, i as u32);
            self.w(slot, QUEUE_NUM_REG, u32::from(NIC_QUEUE_SIZE));
            for (low, high, addr) in [
                (QUEUE_DESC_LOW_REG, QUEUE_DESC_HIGH_REG, q.desc_table_addr()),
                (
                    QUEUE_DRIVER_LOW_REG,
                    QUEUE_DRIVER_HIGH_REG,
                    q.avail_ring_addr(),
                ),
                (
                    QUEUE_DEVICE_LOW_REG,
                    QUEUE_DEVICE_HIGH_REG,
                    q.used_ring_addr(),
                ),
            ] {
                self.w(slot, low, addr.0 as u32);
                self.w(slot, high, (addr.0 >> 32) as u32);
            }
            self.w(slot, QUEUE_READY_REG, 1);
        }
        self.w(slot, STATUS_REG, negotiated | status::DRIVER_OK);
        assert_eq!(
            self.r(slot, STATUS_REG),
            negotiated | status::DRIVER_OK,
            "the device did not activate"
        );
    }

    /// The driver's first reads in Linux's `vm_probe`: an empty slot is a placeholder.
    fn assert_placeholder(&self, slot: usize) {
        assert_eq!(self.r(slot, MAGIC_VALUE_REG), MMIO_MAGIC_VALUE);
        assert_eq!(self.r(slot, VERSION_REG), 2);
        assert_eq!(self.r(slot, DEVICE_ID_REG), 0);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.event_loop.take() {
            let _ = t.join();
        }
    }
}

/// A share over a scripted virtiofsd; its failures arrive on the receiver.
pub(crate) fn share(running: &Running, tag: &str) -> (FsSlotShare, Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let share = FsSlotShare {
        tag: tag.into(),
        backend: FsBackend::Connected(running.frontend.try_clone().unwrap()),
        on_failure: Box::new(move |m| {
            let _ = lock(&tx).send(m);
        }),
    };
    (share, rx)
}

/// What a slot holding the share `tag` says it holds.
fn share_held(tag: &str) -> SlotContent {
    SlotContent::Share { tag: tag.into() }
}

/// Fills `slot` with a share over a new scripted virtiofsd.
fn fill(
    f: &Fixture,
    slot: Option<usize>,
    tag: &str,
) -> (Result<FilledFsSlot, FsSlotError>, Running) {
    let running = virtiofsd_like().spawn();
    let (share, _failures) = share(&running, tag);
    (f.slots.fill(slot, share), running)
}

#[test]
fn an_empty_slot_is_a_placeholder_that_ignores_writes() {
    let f = Fixture::new();
    assert_eq!(f.slots.count(), 2);
    for (slot, place) in PLACES.iter().enumerate() {
        f.assert_placeholder(slot);
        for reg in [
            VENDOR_ID_REG,
            DEVICE_FEATURES_REG,
            QUEUE_NUM_MAX_REG,
            STATUS_REG,
        ] {
            assert_eq!(f.r(slot, reg), 0, "{reg:#x}");
        }
        f.w(slot, STATUS_REG, status::ACKNOWLEDGE);
        f.w(slot, MAGIC_VALUE_REG, 0);
        assert_eq!(f.r(slot, STATUS_REG), 0);
        assert_eq!(f.r(slot, MAGIC_VALUE_REG), MMIO_MAGIC_VALUE);
        assert_eq!(f.r(slot, CONFIG_SPACE_OFFSET), 0);
        // Reads of another width give zeros.
        let mut b = [0xffu8; 2];
        assert!(f.bus.read(place.base, &mut b));
        assert_eq!(b, [0, 0]);
    }
    assert!(f.wiring.live().is_empty());
}

#[test]
fn a_filled_slot_is_the_share_and_an_emptied_one_a_placeholder_again() {
    let f = Fixture::new();
    let running = virtiofsd_like().spawn();
    let (share, failures) = share(&running, "member1");
    let filled = f.slots.fill(Some(1), share).unwrap();
    assert_eq!(
        filled,
        FilledFsSlot {
            slot: 1,
            device: "virtio-mmio.4".into(),
            platform: 4,
            tag: "member1".into(),
        }
    );
    // SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM.
    running.take(5);

    // What the driver finds when the guest binds the device.
    assert_eq!(f.r(1, MAGIC_VALUE_REG), MMIO_MAGIC_VALUE);
    assert_eq!(f.r(1, VERSION_REG), 2);
    assert_eq!(f.r(1, DEVICE_ID_REG), TYPE_FS);
    f.w(1, DEVICE_FEATURES_SEL_REG, 0);
    assert_eq!(f.r(1, DEVICE_FEATURES_REG), (1 << 28) | (1 << 29));
    f.w(1, DEVICE_FEATURES_SEL_REG, 1);
    assert_eq!(
        f.r(1, DEVICE_FEATURES_REG),
        (VIRTIO_F_VERSION_1 >> 32) as u32
    );
    let mut tag = [0u8; TAG_LEN];
    assert!(f.bus.read(PLACES[1].base + CONFIG_SPACE_OFFSET, &mut tag));
    assert_eq!(&tag[..8], b"member1\0");
    // The other slot is untouched.
    f.assert_placeholder(0);

    // Wired as a boot-time share: its interrupt on the slot's IRQ, both queues'
    // notifications, and the used-ring acknowledgement swallowed by KVM.
    let live = f.wiring.live();
    assert_eq!(live.len(), 4, "{live:?}");
    assert!(matches!(live[0], Reg::Irqfd { gsi: 9, .. }), "{live:?}");
    for (i, reg) in live[1..3].iter().enumerate() {
        assert!(
            matches!(reg, Reg::Ioevent { addr: 0xd000_4050, datamatch, .. } if *datamatch == i as u32),
            "{live:?}"
        );
    }
    assert!(
        matches!(
            live[3],
            Reg::Ioevent {
                addr: 0xd000_4064,
                datamatch: 1,
                ..
            }
        ),
        "{live:?}"
    );

    let emptied = f.slots.empty(1).unwrap();
    assert_eq!(
        emptied,
        EmptiedFsSlot {
            held: share_held("member1"),
            released_by_guest: true,
        }
    );
    f.assert_placeholder(1);
    assert_eq!(f.r(1, DEVICE_FEATURES_REG), 0);
    assert!(f.wiring.live().is_empty());
    // virtiofsd sees its connection end; our own hang-up is no failure.
    assert!(running.ended());
    assert!(failures.recv_timeout(Duration::from_millis(200)).is_err());

    // The slot takes a share again.
    let (again, _running) = fill(&f, Some(1), "member2");
    assert_eq!(again.unwrap().device, "virtio-mmio.4");
    assert_eq!(f.r(1, DEVICE_ID_REG), TYPE_FS);
}

#[test]
fn at_the_vms_end_every_slots_backend_is_let_go_at_once() {
    let f = Fixture::new();
    let running = virtiofsd_like().spawn();
    let (root, failures) = share(&running, "root");
    f.slots.fill(Some(0), root).unwrap();
    running.take(5);
    assert!(!running.ended());

    f.slots.release_all();
    // virtiofsd sees its connection end (and is not told of a failure) while the slot is
    // still held: nothing waits for the slots' last handle.
    assert!(running.ended());
    assert!(failures.recv_timeout(Duration::from_millis(200)).is_err());
    assert!(matches!(
        f.slots.fill(Some(0), share(&running, "again").0),
        Err(FsSlotError::Busy { slot: 0, .. })
    ));
}

#[test]
fn a_busy_or_missing_slot_or_none_free_is_refused() {
    let f = Fixture::new();
    let (r, _b2) = fill(&f, Some(2), "a");
    assert!(
        matches!(r, Err(FsSlotError::NoSuchSlot { slot: 2, count: 2 })),
        "{r:?}"
    );
    let (r, _b0) = fill(&f, None, "a");
    assert_eq!(r.unwrap().slot, 0);
    let (r, _b) = fill(&f, Some(0), "b");
    assert!(
        matches!(&r, Err(FsSlotError::Busy { slot: 0, held }) if *held == share_held("a")),
        "{r:?}"
    );
    let (r, _b1) = fill(&f, None, "b");
    assert_eq!(r.unwrap().device, "virtio-mmio.4");
    let (r, _b) = fill(&f, None, "c");
    assert!(
        matches!(r, Err(FsSlotError::NoneFree { count: 2 })),
        "{r:?}"
    );
    // The refusals left the slots as they were.
    assert_eq!(f.r(0, DEVICE_ID_REG), TYPE_FS);
    assert_eq!(f.r(1, DEVICE_ID_REG), TYPE_FS);

    assert_eq!(f.slots.empty(0).unwrap().held, share_held("a"));
    assert!(matches!(f.slots.empty(0), Err(FsSlotError::NotFilled(0))));
    assert!(matches!(
        f.slots.empty(7),
        Err(FsSlotError::NoSuchSlot { slot: 7, count: 2 })
    ));
    let (r, _b) = fill(&f, None, "c");
    assert_eq!(r.unwrap().slot, 0);
}

#[test]
fn a_fill_that_kvm_refuses_leaves_the_slot_free_and_nothing_registered() {
    let f = Fixture::new();
    f.wiring.refuse_ioevents.store(true, Ordering::SeqCst);
    let (r, running) = fill(&f, None, "a");
    assert!(matches!(r, Err(FsSlotError::Wire { slot: 0, .. })), "{r:?}");
    assert!(f.wiring.live().is_empty());
    f.assert_placeholder(0);
    assert!(running.ended());
    f.wiring.refuse_ioevents.store(false, Ordering::SeqCst);
    let (r, _running) = fill(&f, None, "a");
    assert_eq!(r.unwrap().slot, 0);
}

#[test]
fn a_backend_that_dies_in_a_slot_is_reported_and_the_slot_can_be_emptied() {
    let f = Fixture::new();
    let running = virtiofsd_like().spawn();
    let (share, failures) = share(&running, "member");
    f.slots.fill(None, share).unwrap();
    // virtiofsd exits: the event loop notices and tells the slot's owner, once.
    running
        .backend_end
        .shutdown(std::net::Shutdown::Both)
        .unwrap();
    let message = failures.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        message.contains("\"member\"") && message.contains("closed its connection"),
        "{message}"
    );
    assert!(failures.recv_timeout(Duration::from_millis(200)).is_err());
    assert_eq!(f.slots.empty(0).unwrap().held, share_held("member"));
    f.assert_placeholder(0);
}

#[test]
fn a_slot_emptied_under_a_guest_that_still_drives_it_says_so() {
    let f = Fixture::new();
    let (r, _running) = fill(&f, None, "a");
    r.unwrap();
    f.w(0, STATUS_REG, status::ACKNOWLEDGE);
    f.w(0, STATUS_REG, status::ACKNOWLEDGE | status::DRIVER);
    assert_eq!(f.r(0, STATUS_REG), status::ACKNOWLEDGE | status::DRIVER);
    let emptied = f.slots.empty(0).unwrap();
    assert!(!emptied.released_by_guest);
    f.assert_placeholder(0);
    assert_eq!(f.r(0, STATUS_REG), 0);

    // What Linux's unbind leaves: reset, then ACKNOWLEDGE again.
    let (r, _running) = fill(&f, None, "b");
    r.unwrap();
    f.w(0, STATUS_REG, status::ACKNOWLEDGE);
    assert!(f.slots.empty(0).unwrap().released_by_guest);
}

/// The stand-in VM that also makes the KVM ioctls (see [`Recorder`]).
pub(crate) fn raw_ioctl_recorder() -> Recorder {
    Recorder {
        raw_ioctls: true,
        ..Recorder::default()
    }
}

/// Fills a slot and empties it, checking what the guest reads: run on a thread confined
/// as the monitor's main thread by the seccomp tests.
pub(crate) fn fill_and_empty(f: &Fixture, backend: UnixStream) {
    let share = FsSlotShare {
        tag: "confined".into(),
        backend: FsBackend::Connected(backend),
        on_failure: Box::new(|m| panic!("{m}")),
    };
    let filled = f.slots.fill(None, share).unwrap();
    assert_eq!(filled.device, "virtio-mmio.3");
    assert_eq!(f.r(0, DEVICE_ID_REG), TYPE_FS);
    assert_eq!(f.slots.empty(0).unwrap().held, share_held("confined"));
    assert_eq!(f.r(0, DEVICE_ID_REG), 0);
}

/// The MAC address of the test NICs.
const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
/// The size the test driver gives a NIC's queues.
const NIC_QUEUE_SIZE: u16 = 16;

/// A NIC (MTU `mtu`) on a fake TAP, and the fake TAP's other end: the host's network.
fn nic_on_fake_tap_with_mtu(mtu: u16) -> (NetConfig, UnixDatagram) {
    let (tap, network) = UnixDatagram::pair().unwrap();
    network
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let nic = NetConfig {
        tap: OwnedFd::from(tap),
        mac: MAC,
        mtu,
    };
    (nic, network)
}

fn nic_on_fake_tap() -> (NetConfig, UnixDatagram) {
    nic_on_fake_tap_with_mtu(1500)
}

/// Whether the fake TAP's device end is closed (the device that held it is gone).
fn tap_closed(network: &UnixDatagram) -> bool {
    match network.send(&[0u8; VNET_HDR_LEN + 60]) {
        Ok(_) => false,
        Err(e) => e.raw_os_error() == Some(libc::ECONNREFUSED),
    }
}

/// A frame as it crosses a TAP: a vnet header asking for nothing, then `len` bytes of `fill`.
fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend(std::iter::repeat_n(fill, len));
    f
}

/// What a slot holding a test NIC says it holds.
const NIC_HELD: SlotContent = SlotContent::Nic { mac: MAC };

#[test]
fn a_slot_holds_a_nic_that_the_guest_finds_and_drives_and_then_a_share_again() {
    let f = Fixture::new();
    let (nic, network) = nic_on_fake_tap();
    let filled = f.slots.fill_net(Some(1), nic).unwrap();
    assert_eq!(
        filled,
        FilledNetSlot {
            slot: 1,
            device: "virtio-mmio.4".into(),
            platform: 4,
            mac: MAC,
        }
    );

    // What the driver finds when the guest binds the device: a NIC with its MAC.
    assert_eq!(f.r(1, MAGIC_VALUE_REG), MMIO_MAGIC_VALUE);
    assert_eq!(f.r(1, VERSION_REG), 2);
    assert_eq!(f.r(1, DEVICE_ID_REG), TYPE_NET);
    f.w(1, DEVICE_FEATURES_SEL_REG, 0);
    let mac_feature = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
    assert_ne!(f.r(1, DEVICE_FEATURES_REG) & mac_feature, 0);
    let mut mac = [0u8; 6];
    assert!(f.bus.read(PLACES[1].base + CONFIG_SPACE_OFFSET, &mut mac));
    assert_eq!(mac, MAC);
    assert_eq!(f.r(1, QUEUE_NUM_MAX_REG), u32::from(NET_QUEUE_SIZE));
    f.assert_placeholder(0);

    // Wired as a boot-time NIC: its interrupt on the slot's IRQ and both queues'
    // notifications at the slot's QueueNotify; the VMM acknowledges its interrupts itself,
    // so no acknowledgement goes to KVM.
    let live = f.wiring.live();
    assert_eq!(live.len(), 3, "{live:?}");
    assert!(matches!(live[0], Reg::Irqfd { gsi: 9, .. }), "{live:?}");
    for (i, reg) in live[1..].iter().enumerate() {
        assert!(
            matches!(reg, Reg::Ioevent { addr: 0xd000_4050, datamatch, .. } if *datamatch == i as u32),
            "{live:?}"
        );
    }

    // The guest brings the interface up with a frame to send and a buffer to receive in:
    // the event loop moves frames both ways and interrupts the guest.
    let mem = f.slots.mem.clone();
    let mut rx = DriverQueue::new(&mem, 0x10_0000, NIC_QUEUE_SIZE);
    let mut tx = DriverQueue::new(&mem, 0x20_0000, NIC_QUEUE_SIZE);
    let sent = frame(60, 0x5a);
    mem.write_slice(&sent, GuestAddress(0x30_0000)).unwrap();
    tx.add(&[(0x30_0000, sent.len() as u32, R)]);
    rx.add(&[(0x40_0000, 2048, W)]);
    f.bring_up(1, VIRTIO_F_VERSION_1, &[&rx, &tx]);
    let mut got = vec![0u8; 4096];
    let n = network
        .recv(&mut got)
        .expect("the guest's frame reaches the TAP");
    assert_eq!(&got[..n], &sent[..]);
    let received = frame(100, 0xa5);
    network.send(&received).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let used = loop {
        let used = rx.take_used();
        if !used.is_empty() || Instant::now() > deadline {
            break used;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(
        used,
        vec![(0, received.len() as u32)],
        "a frame from the network"
    );
    let mut payload = [0u8; 100];
    mem.read_slice(&mut payload, GuestAddress(0x40_0000 + VNET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(payload, [0xa5; 100]);
    assert_eq!(tx.take_used().len(), 1);
    assert_ne!(
        f.r(1, INTERRUPT_STATUS_REG) & crate::devices::virtio::INTERRUPT_STATUS_USED_RING,
        0
    );

    // The guest unbinds it (reset, then ACKNOWLEDGE again), and the slot is emptied: the
    // wiring is undone and the device is gone from the event loop too (its TAP closed).
    f.w(1, STATUS_REG, 0);
    f.w(1, STATUS_REG, status::ACKNOWLEDGE);
    let emptied = f.slots.empty(1).unwrap();
    assert_eq!(
        emptied,
        EmptiedFsSlot {
            held: NIC_HELD,
            released_by_guest: true,
        }
    );
    f.assert_placeholder(1);
    assert!(f.wiring.live().is_empty());
    assert!(tap_closed(&network));

    // The slot takes a share now.
    let (again, _running) = fill(&f, Some(1), "member");
    assert_eq!(again.unwrap().device, "virtio-mmio.4");
    assert_eq!(f.r(1, DEVICE_ID_REG), TYPE_FS);
}

#[test]
fn a_nic_and_a_share_each_refuse_a_slot_the_other_holds() {
    let f = Fixture::new();
    let (r, _running) = fill(&f, Some(0), "a");
    r.unwrap();
    let (nic0, network0) = nic_on_fake_tap();
    let r = f.slots.fill_net(Some(0), nic0);
    assert!(
        matches!(&r, Err(FsSlotError::Busy { slot: 0, held }) if *held == share_held("a")),
        "{r:?}"
    );
    // The refused NIC's TAP is not kept.
    assert!(tap_closed(&network0));

    let (nic1, _network1) = nic_on_fake_tap();
    assert_eq!(f.slots.fill_net(None, nic1).unwrap().slot, 1);
    let (r, _running) = fill(&f, Some(1), "b");
    let e = r.unwrap_err();
    assert!(
        matches!(&e, FsSlotError::Busy { slot: 1, held } if *held == NIC_HELD),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "spare slot 1 already holds the network interface 02:42:ac:11:00:02: empty it first, or pick another slot"
    );
    let (nic2, _network2) = nic_on_fake_tap();
    let r = f.slots.fill_net(Some(1), nic2);
    assert!(
        matches!(&r, Err(FsSlotError::Busy { slot: 1, .. })),
        "{r:?}"
    );
    let (nic3, _network3) = nic_on_fake_tap();
    let r = f.slots.fill_net(None, nic3);
    assert!(
        matches!(r, Err(FsSlotError::NoneFree { count: 2 })),
        "{r:?}"
    );
    let (nic4, _network4) = nic_on_fake_tap();
    let r = f.slots.fill_net(Some(2), nic4);
    assert!(
        matches!(r, Err(FsSlotError::NoSuchSlot { slot: 2, count: 2 })),
        "{r:?}"
    );
    // The refusals left the slots as they were.
    assert_eq!(f.r(0, DEVICE_ID_REG), TYPE_FS);
    assert_eq!(f.r(1, DEVICE_ID_REG), TYPE_NET);
    assert_eq!(f.wiring.live().len(), 4 + 3);
}

#[test]
fn a_nic_that_cannot_be_made_or_wired_names_its_slot_and_leaves_it_free() {
    let f = Fixture::new();
    let (nic, network) = nic_on_fake_tap_with_mtu(10);
    let e = f.slots.fill_net(None, nic).unwrap_err();
    assert!(
        matches!(
            e,
            FsSlotError::Net {
                slot: 0,
                mac: MAC,
                source: NetError::Mtu(10)
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "cannot create the network interface 02:42:ac:11:00:02 for spare slot 0: MTU 10 is outside 68..=65535"
    );
    assert!(tap_closed(&network));
    f.assert_placeholder(0);
    assert!(f.wiring.live().is_empty());

    f.wiring.refuse_ioevents.store(true, Ordering::SeqCst);
    let (nic, network) = nic_on_fake_tap();
    let r = f.slots.fill_net(None, nic);
    assert!(matches!(r, Err(FsSlotError::Wire { slot: 0, .. })), "{r:?}");
    assert!(f.wiring.live().is_empty());
    f.assert_placeholder(0);
    assert!(tap_closed(&network));
    f.wiring.refuse_ioevents.store(false, Ordering::SeqCst);
    let (nic, _network) = nic_on_fake_tap();
    assert_eq!(f.slots.fill_net(None, nic).unwrap().slot, 0);
}

#[test]
fn a_nic_emptied_under_a_guest_that_still_drives_it_says_so_and_is_gone() {
    let f = Fixture::new();
    let (nic, network) = nic_on_fake_tap();
    f.slots.fill_net(None, nic).unwrap();
    let mem = f.slots.mem.clone();
    let rx = DriverQueue::new(&mem, 0x10_0000, NIC_QUEUE_SIZE);
    let tx = DriverQueue::new(&mem, 0x20_0000, NIC_QUEUE_SIZE);
    f.bring_up(0, VIRTIO_F_VERSION_1, &[&rx, &tx]);
    let emptied = f.slots.empty(0).unwrap();
    assert_eq!(
        emptied,
        EmptiedFsSlot {
            held: NIC_HELD,
            released_by_guest: false,
        }
    );
    f.assert_placeholder(0);
    assert_eq!(f.r(0, STATUS_REG), 0);
    assert!(f.wiring.live().is_empty());
    assert!(tap_closed(&network));
}

/// Fills a slot with a NIC on `tap` and empties it, checking what the guest reads: run on
/// a thread confined as the monitor's main thread by the seccomp tests.
pub(crate) fn fill_and_empty_nic(f: &Fixture, tap: OwnedFd) {
    let nic = NetConfig {
        tap,
        mac: MAC,
        mtu: 1500,
    };
    let filled = f.slots.fill_net(None, nic).unwrap();
    assert_eq!(filled.device, "virtio-mmio.3");
    assert_eq!(f.r(0, DEVICE_ID_REG), TYPE_NET);
    assert_eq!(f.slots.empty(0).unwrap().held, NIC_HELD);
    assert_eq!(f.r(0, DEVICE_ID_REG), 0);
}

//! Tests of the spare file-system slots: what the guest reads through the MMIO bus before,
//! while and after a slot holds a share, the KVM wiring (recorded by a stand-in for the
//! VM), the event loop's watch of the backend (a real event manager on a thread of its
//! own, reached as the VMM reaches it), and the refusals. The backend is the scripted
//! virtiofsd of the virtio-fs tests.

use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use event_manager::EventManager;

use super::*;
use crate::bus::Bus;
use crate::devices::virtio::fs::tests::{virtiofsd_like, Running};
use crate::devices::virtio::fs::TAG_LEN;
use crate::devices::virtio::mmio::{
    status, CONFIG_SPACE_OFFSET, DEVICE_FEATURES_REG, DEVICE_FEATURES_SEL_REG, DEVICE_ID_REG,
    MAGIC_VALUE_REG, MMIO_MAGIC_VALUE, QUEUE_NUM_MAX_REG, STATUS_REG, VENDOR_ID_REG, VERSION_REG,
};
use crate::devices::virtio::{TYPE_FS, VIRTIO_F_VERSION_1};
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
            tag: "member1".into(),
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
        matches!(&r, Err(FsSlotError::Busy { slot: 0, tag }) if tag == "a"),
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

    assert_eq!(f.slots.empty(0).unwrap().tag, "a");
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
    assert_eq!(f.slots.empty(0).unwrap().tag, "member");
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
    assert_eq!(f.slots.empty(0).unwrap().tag, "confined");
    assert_eq!(f.r(0, DEVICE_ID_REG), 0);
}

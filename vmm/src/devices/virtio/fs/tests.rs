//! Tests of the virtio-fs device and its vhost-user frontend against a scripted backend: a
//! thread on the other end of a socket pair that records every request (with the
//! descriptor it carried) and answers as virtiofsd would, or closes, stalls, refuses or
//! answers nonsense where a test says so. Guest memory is the VMM's own (a memfd).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::super::test_utils::DriverQueue;
use super::super::{ActivateError, GuestMemory, IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1};
use super::vhost_user::{VhostUserBackend, VhostUserError};
use super::{Fs, FsError, NUM_QUEUES, TAG_LEN};
use crate::memory::create_guest_memory;

// vhost-user requests (the `FrontendReq` codes).
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_QUEUE_NUM: u32 = 17;
const SET_VRING_ENABLE: u32 = 18;

// Header flags.
const VERSION: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;

// Feature bits.
const PROTOCOL_FEATURES: u64 = 1 << 30;
const LOG_ALL: u64 = 1 << 26;
const INDIRECT: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
const RING_RESET: u64 = 1 << 40;
const FS_NOTIFICATION: u64 = 1;
// Protocol feature bits.
const MQ: u64 = 0x1;
const REPLY_ACK: u64 = 0x8;
const BACKEND_REQ: u64 = 0x20;
const CONFIG: u64 = 0x200;
const RESET_DEVICE: u64 = 0x2000;
const CONFIGURE_MEM_SLOTS: u64 = 0x8000;

/// How long the tests' backends may take to answer (long: a loaded machine must not fail
/// the tests), and the one that stalls on purpose.
const TIMEOUT: Duration = Duration::from_secs(5);
const STALL_TIMEOUT: Duration = Duration::from_secs(1);

/// One request the backend received.
pub(crate) struct Msg {
    code: u32,
    flags: u32,
    body: Vec<u8>,
    fd: Option<File>,
}

impl Msg {
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.body[at..at + 4].try_into().unwrap())
    }
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.body[at..at + 8].try_into().unwrap())
    }
}

/// What the backend does with a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// As virtiofsd does.
    Normal,
    /// Closes the connection.
    Close,
    /// Never answers (waits until the frontend gives up).
    Stall,
    /// A reply to some other request.
    Garbage,
    /// Acknowledges with an error.
    Refuse,
}

/// The scripted backend: what it offers, and its answer to the `n`th request with a code.
pub(crate) struct Backend {
    features: u64,
    protocol: u64,
    queues: u64,
    script: fn(code: u32, n: usize) -> Answer,
}

/// What virtiofsd offers, plus two features the VMM must not pass on.
pub(crate) fn virtiofsd_like() -> Backend {
    Backend {
        features: VIRTIO_F_VERSION_1
            | INDIRECT
            | EVENT_IDX
            | PROTOCOL_FEATURES
            | LOG_ALL
            | RING_RESET
            | FS_NOTIFICATION,
        protocol: MQ | REPLY_ACK | BACKEND_REQ | CONFIGURE_MEM_SLOTS | RESET_DEVICE,
        queues: 2,
        script: |_, _| Answer::Normal,
    }
}

/// The backend's thread: the frontend's end of the socket, the requests as they arrive,
/// and the backend's own end (to hang up from the test).
pub(crate) struct Running {
    pub(crate) frontend: UnixStream,
    requests: Receiver<Msg>,
    pub(crate) backend_end: UnixStream,
    /// How long the frontend waits for each answer.
    timeout: Duration,
}

impl Backend {
    pub(crate) fn spawn(self) -> Running {
        let (frontend, backend) = UnixStream::pair().unwrap();
        let backend_end = backend.try_clone().unwrap();
        let (tx, requests) = channel();
        std::thread::spawn(move || {
            let mut seen = std::collections::HashMap::<u32, usize>::new();
            let mut sock = backend;
            while let Some(msg) = receive(&mut sock) {
                let n = seen.entry(msg.code).or_default();
                let answer = (self.script)(msg.code, *n);
                *n += 1;
                let (code, flags) = (msg.code, msg.flags);
                let index = msg
                    .body
                    .get(..4)
                    .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()));
                let _ = tx.send(msg);
                let ack = |value: u64| (flags & NEED_REPLY != 0).then_some(value);
                let reply: Option<Vec<u8>> = match (answer, code) {
                    (Answer::Close, _) => {
                        // All of its descriptors: the test holds a clone.
                        let _ = sock.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    (Answer::Stall, _) => {
                        // Until the frontend shuts the connection down.
                        let _ = sock.read(&mut [0u8; 1]);
                        return;
                    }
                    (Answer::Garbage, _) => {
                        let mut bytes = header(code + 1, 8);
                        bytes.extend_from_slice(&0u64.to_le_bytes());
                        let _ = sock.write_all(&bytes);
                        continue;
                    }
                    (_, GET_FEATURES) => Some(self.features.to_le_bytes().to_vec()),
                    (_, GET_PROTOCOL_FEATURES) => Some(self.protocol.to_le_bytes().to_vec()),
                    (_, GET_QUEUE_NUM) => Some(self.queues.to_le_bytes().to_vec()),
                    (_, GET_VRING_BASE) => Some([index.to_le_bytes(), 0u32.to_le_bytes()].concat()),
                    (Answer::Refuse, _) => ack(1).map(|v| v.to_le_bytes().to_vec()),
                    (Answer::Normal, _) => ack(0).map(|v| v.to_le_bytes().to_vec()),
                };
                if let Some(body) = reply {
                    let mut bytes = header(code, body.len() as u32);
                    bytes.extend_from_slice(&body);
                    if sock.write_all(&bytes).is_err() {
                        return;
                    }
                }
            }
        });
        Running {
            frontend,
            requests,
            backend_end,
            timeout: TIMEOUT,
        }
    }
}

/// A reply header for request `code` with a body of `size` bytes.
fn header(code: u32, size: u32) -> Vec<u8> {
    [code, VERSION | REPLY, size]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// Reads one request; `None` at the end of the connection.
fn receive(sock: &mut UnixStream) -> Option<Msg> {
    let mut hdr = [0u8; 12];
    // The descriptor of a request comes with its first bytes.
    let (n, fd) = sock.recv_with_fd(&mut hdr).ok()?;
    if n == 0 {
        return None;
    }
    sock.read_exact(&mut hdr[n..]).ok()?;
    let word = |i: usize| u32::from_le_bytes(hdr[4 * i..4 * i + 4].try_into().unwrap());
    let mut body = vec![0u8; word(2) as usize];
    sock.read_exact(&mut body).ok()?;
    Some(Msg {
        code: word(0),
        flags: word(1),
        body,
        fd,
    })
}

impl Running {
    /// The next `n` requests the backend received.
    pub(crate) fn take(&self, n: usize) -> Vec<Msg> {
        (0..n)
            .map(|i| {
                self.requests
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("request {i} of {n}: {e}"))
            })
            .collect()
    }

    /// Whether the backend's thread ended (the connection closed) within a few seconds.
    pub(crate) fn ended(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.requests.recv_timeout(Duration::from_millis(50)) {
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return true,
                _ => continue,
            }
        }
        false
    }
}

fn codes(msgs: &[Msg]) -> Vec<u32> {
    msgs.iter().map(|m| m.code).collect()
}

/// The frontend over the scripted backend.
fn connect(running: &Running) -> Result<VhostUserBackend, VhostUserError> {
    let stream = running.frontend.try_clone().unwrap();
    VhostUserBackend::from_stream(stream, NUM_QUEUES, running.timeout)
}

/// The failures a device reported.
type Failures = Arc<Mutex<Vec<String>>>;

fn device(running: &Running, tag: &str) -> (Fs, Failures) {
    let failures = Failures::default();
    let seen = failures.clone();
    let fs = Fs::new(
        tag,
        connect(running).unwrap(),
        Box::new(move |m| seen.lock().unwrap().push(m)),
    )
    .unwrap();
    // SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM.
    running.take(5);
    (fs, failures)
}

/// Guest memory, the driver's two queues in it, and the device's interrupt.
struct Driver {
    mem: GuestMemory,
    queues: Vec<DriverQueue>,
    irq: Arc<IrqTrigger>,
}

impl Driver {
    fn new() -> Self {
        let mem = create_guest_memory(16).unwrap();
        let queues = (0..NUM_QUEUES as u64)
            .map(|i| DriverQueue::new(&mem, 0x10_0000 + i * 0x1_0000, 16))
            .collect();
        Self {
            mem,
            queues,
            irq: Arc::new(IrqTrigger::new().unwrap()),
        }
    }

    /// Activates `fs` as the transport does at DRIVER_OK, after the driver acked `acked`.
    fn activate(&self, fs: &mut Fs, acked: u64) -> Result<(), ActivateError> {
        fs.set_acked_features(acked);
        let queues = self.queues.iter().map(DriverQueue::create_queue).collect();
        fs.activate(self.mem.clone(), queues, self.irq.clone())
    }

    fn host(&self, addr: GuestAddress) -> u64 {
        self.mem.get_host_address(addr).unwrap() as u64
    }
}

/// The requests that hand the device to the backend.
fn activation_codes() -> Vec<u32> {
    let mut want = vec![SET_FEATURES, SET_MEM_TABLE];
    for _ in 0..NUM_QUEUES {
        want.extend([
            SET_VRING_NUM,
            SET_VRING_ADDR,
            SET_VRING_BASE,
            SET_VRING_CALL,
            SET_VRING_KICK,
        ]);
    }
    want.extend([SET_VRING_ENABLE; NUM_QUEUES]);
    want
}

#[test]
fn config_space_is_the_tag_then_one_request_queue() {
    let running = virtiofsd_like().spawn();
    let (fs, _) = device(&running, "myshare");
    let mut config = [0xffu8; TAG_LEN + 8];
    fs.read_config(0, &mut config);
    let mut want = [0u8; TAG_LEN + 8];
    want[..7].copy_from_slice(b"myshare");
    want[TAG_LEN] = 1;
    assert_eq!(config, want, "tag, NUL padding, le32 1, nothing after");
    let mut queues = [0u8; 4];
    fs.read_config(TAG_LEN as u64, &mut queues);
    assert_eq!(u32::from_le_bytes(queues), 1);
    assert_eq!(fs.tag(), "myshare");
    assert_eq!(fs.device_type(), 26);
    assert_eq!(fs.queue_max_sizes(), [1024, 1024]);

    // A tag of the full length has no NUL after it.
    let long = "t".repeat(TAG_LEN);
    let (fs, _) = device(&running, &long);
    let mut tag = [0u8; TAG_LEN + 1];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag[..TAG_LEN], long.as_bytes());
    assert_eq!(tag[TAG_LEN], 1);
}

#[test]
fn tags_that_do_not_fit_the_config_space_are_refused() {
    let running = virtiofsd_like().spawn();
    for tag in [String::new(), "t".repeat(TAG_LEN + 1), "a\0b".into()] {
        let backend = connect(&running).unwrap();
        let err = Fs::new(&tag, backend, Box::new(|_| {})).err();
        assert!(
            matches!(err, Some(FsError::InvalidTag(t)) if t == tag),
            "{tag:?}"
        );
    }
}

#[test]
fn negotiation_takes_what_the_backend_offers_and_the_vmm_supports() {
    let running = virtiofsd_like().spawn();
    let backend = connect(&running).unwrap();
    let msgs = running.take(5);
    assert_eq!(
        codes(&msgs),
        [
            SET_OWNER,
            GET_FEATURES,
            GET_PROTOCOL_FEATURES,
            SET_PROTOCOL_FEATURES,
            GET_QUEUE_NUM
        ]
    );
    assert_eq!(msgs[3].u64_at(0), MQ | REPLY_ACK, "protocol features acked");
    // Acknowledged requests from then on.
    assert_eq!(msgs[4].flags & NEED_REPLY, NEED_REPLY);
    let fs = Fs::new("share", backend, Box::new(|_| {})).unwrap();
    // No RING_RESET, no virtio-fs NOTIFICATION, no vhost-user bits for the driver.
    assert_eq!(
        fs.avail_features(),
        VIRTIO_F_VERSION_1 | INDIRECT | EVENT_IDX
    );

    // A backend that offers less gets a device that offers less.
    let running = Backend {
        features: VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES,
        protocol: REPLY_ACK | CONFIG,
        ..virtiofsd_like()
    }
    .spawn();
    let fs = Fs::new("share", connect(&running).unwrap(), Box::new(|_| {})).unwrap();
    assert_eq!(fs.avail_features(), VIRTIO_F_VERSION_1);
    let msgs = running.take(4);
    assert_eq!(msgs[3].code, SET_PROTOCOL_FEATURES);
    assert_eq!(msgs[3].u64_at(0), REPLY_ACK, "no MQ: no GET_QUEUE_NUM");
}

#[test]
fn backends_that_cannot_serve_the_device_are_refused() {
    let cases = [
        (VIRTIO_F_VERSION_1, 2, "VHOST_USER_F_PROTOCOL_FEATURES"),
        (PROTOCOL_FEATURES | INDIRECT, 2, "VIRTIO_F_VERSION_1"),
        (VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES, 1, "1 queues"),
    ];
    for (features, queues, says) in cases {
        let running = Backend {
            features,
            queues,
            ..virtiofsd_like()
        }
        .spawn();
        let err = connect(&running).err().expect("refused");
        assert!(err.to_string().contains(says), "{err}");
        assert!(running.ended(), "{says}: the connection is closed");
    }
}

#[test]
fn activation_hands_memory_rings_and_eventfds_to_the_backend_and_reset_stops_the_rings() {
    let running = virtiofsd_like().spawn();
    let (mut fs, failures) = device(&running, "share");
    let driver = Driver::new();
    // The driver acks less than was offered (and something that was not).
    driver
        .activate(&mut fs, VIRTIO_F_VERSION_1 | EVENT_IDX | RING_RESET)
        .unwrap();
    assert!(fs.is_activated());
    let msgs = running.take(activation_codes().len());
    assert_eq!(codes(&msgs), activation_codes());
    assert!(msgs.iter().all(|m| m.flags & NEED_REPLY != 0));

    assert_eq!(
        msgs[0].u64_at(0),
        VIRTIO_F_VERSION_1 | EVENT_IDX | PROTOCOL_FEATURES
    );
    // The memory table: one region, with the memfd behind guest memory.
    let table = &msgs[1];
    assert_eq!(table.u32_at(0), 1, "regions");
    let region = driver.mem.iter().next().unwrap();
    assert_eq!(table.u64_at(8), 0, "guest address");
    assert_eq!(table.u64_at(16), 16 << 20, "size");
    assert_eq!(
        table.u64_at(24),
        driver.host(GuestAddress(0)),
        "VMM address"
    );
    assert_eq!(table.u64_at(32), 0, "offset in the file");
    let sent = table.fd.as_ref().expect("the memory's fd");
    let memfd = region.file_offset().unwrap().file();
    assert_eq!(
        sent.metadata().unwrap().ino(),
        memfd.metadata().unwrap().ino()
    );

    for (q, dq) in driver.queues.iter().enumerate() {
        let m = &msgs[2 + 5 * q..7 + 5 * q];
        assert_eq!((m[0].u32_at(0), m[0].u32_at(4)), (q as u32, 16), "NUM");
        assert_eq!(m[1].u32_at(0), q as u32);
        assert_eq!(m[1].u64_at(8), driver.host(dq.desc_table_addr()));
        assert_eq!(m[1].u64_at(16), driver.host(dq.used_ring_addr()));
        assert_eq!(m[1].u64_at(24), driver.host(dq.avail_ring_addr()));
        assert_eq!((m[2].u32_at(0), m[2].u32_at(4)), (q as u32, 0), "BASE");
        // The call fd interrupts the guest: it is the device's irqfd.
        assert_eq!(m[3].u64_at(0), q as u64);
        let mut call = m[3].fd.as_ref().expect("call fd");
        call.write_all(&1u64.to_ne_bytes()).unwrap();
        assert_eq!(driver.irq.eventfd().read().unwrap(), 1);
        // The kick fd is the queue's notification eventfd, which KVM signals.
        assert_eq!(m[4].u64_at(0), q as u64);
        let mut kick = m[4].fd.as_ref().expect("kick fd");
        fs.queue_events()[q].write(1).unwrap();
        let mut count = [0u8; 8];
        kick.read_exact(&mut count).unwrap();
        assert_eq!(u64::from_ne_bytes(count), 1);
    }
    for (q, enable) in msgs[12..].iter().enumerate() {
        assert_eq!((enable.u32_at(0), enable.u32_at(4)), (q as u32, 1));
    }

    assert!(fs.reset());
    assert!(!fs.is_activated());
    let msgs = running.take(2 * NUM_QUEUES);
    for (q, pair) in msgs.chunks(2).enumerate() {
        assert_eq!(codes(pair), [SET_VRING_ENABLE, GET_VRING_BASE]);
        assert_eq!((pair[0].u32_at(0), pair[0].u32_at(4)), (q as u32, 0));
        assert_eq!(pair[1].u32_at(0), q as u32);
    }

    // And again, as after a guest driver reloads.
    driver.activate(&mut fs, VIRTIO_F_VERSION_1).unwrap();
    assert_eq!(
        codes(&running.take(activation_codes().len())),
        activation_codes()
    );
    assert!(failures.lock().unwrap().is_empty());
}

#[test]
fn a_backend_that_refuses_a_request_fails_activation_and_is_reported_once() {
    let running = Backend {
        script: |code, _| match code {
            SET_MEM_TABLE => Answer::Refuse,
            _ => Answer::Normal,
        },
        ..virtiofsd_like()
    }
    .spawn();
    let (mut fs, failures) = device(&running, "share");
    let driver = Driver::new();
    let err = driver.activate(&mut fs, VIRTIO_F_VERSION_1).unwrap_err();
    assert!(
        matches!(
            err,
            ActivateError::VhostUser(VhostUserError::Request {
                request: "SET_MEM_TABLE",
                ..
            })
        ),
        "{err}"
    );
    assert!(!fs.is_activated());
    assert!(fs.has_failed());
    assert!(running.ended(), "the connection is shut down");
    // The driver tries again, and resets: nothing more is sent or reported.
    let err = driver.activate(&mut fs, VIRTIO_F_VERSION_1).unwrap_err();
    assert!(matches!(
        err,
        ActivateError::VhostUser(VhostUserError::Broken)
    ));
    assert!(fs.reset());
    let failures = failures.lock().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("\"share\"") && failures[0].contains("SET_MEM_TABLE"),
        "{}",
        failures[0]
    );
}

#[test]
fn a_backend_that_stalls_is_cut_off_after_the_timeout() {
    let mut running = Backend {
        script: |code, _| match code {
            SET_VRING_ADDR => Answer::Stall,
            _ => Answer::Normal,
        },
        ..virtiofsd_like()
    }
    .spawn();
    running.timeout = STALL_TIMEOUT;
    let (mut fs, failures) = device(&running, "share");
    let driver = Driver::new();
    let start = Instant::now();
    let err = driver.activate(&mut fs, VIRTIO_F_VERSION_1).unwrap_err();
    assert!(start.elapsed() < STALL_TIMEOUT + Duration::from_secs(2));
    assert!(
        matches!(
            err,
            ActivateError::VhostUser(VhostUserError::TimedOut {
                request: "SET_VRING_ADDR",
                ..
            })
        ),
        "{err}"
    );
    assert!(running.ended(), "the connection is shut down");
    let failures = failures.lock().unwrap();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].contains("stalled"), "{}", failures[0]);
}

#[test]
fn a_backend_that_answers_nonsense_or_closes_is_refused() {
    for answer in [Answer::Garbage, Answer::Close] {
        let running = Backend {
            script: if answer == Answer::Garbage {
                |code, _| match code {
                    GET_FEATURES => Answer::Garbage,
                    _ => Answer::Normal,
                }
            } else {
                |code, _| match code {
                    GET_PROTOCOL_FEATURES => Answer::Close,
                    _ => Answer::Normal,
                }
            },
            ..virtiofsd_like()
        }
        .spawn();
        let err = connect(&running).err().expect("refused");
        let request = if answer == Answer::Garbage {
            "GET_FEATURES"
        } else {
            "GET_PROTOCOL_FEATURES"
        };
        assert!(
            matches!(err, VhostUserError::Request { request: r, .. } if r == request),
            "{err}"
        );
        assert!(running.ended());
    }
}

#[test]
fn a_backend_that_hangs_up_is_reported_once_through_the_event_loop() {
    let running = virtiofsd_like().spawn();
    let (fs, failures) = device(&running, "share");
    let fs = Arc::new(Mutex::new(fs));
    let mut em = EventManager::<Arc<Mutex<Fs>>>::new().unwrap();
    em.add_subscriber(fs.clone());
    // A live backend: nothing to see (its answers are not the event loop's to read).
    assert_eq!(em.run_with_timeout(50).unwrap(), 0);
    Driver::new()
        .activate(&mut fs.lock().unwrap(), VIRTIO_F_VERSION_1)
        .unwrap();
    assert_eq!(em.run_with_timeout(50).unwrap(), 0);
    assert!(failures.lock().unwrap().is_empty());

    // virtiofsd exits.
    running
        .backend_end
        .shutdown(std::net::Shutdown::Both)
        .unwrap();
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
    assert!(fs.lock().unwrap().has_failed());
    // Reported once, and no longer watched.
    assert_eq!(em.run_with_timeout(50).unwrap(), 0);
    let failures = failures.lock().unwrap();
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].contains("\"share\"") && failures[0].contains("closed its connection"),
        "{}",
        failures[0]
    );
}

//! The virtio-fs device against a real virtiofsd (`RUNVM_VIRTIOFSD`, built by
//! `cargo xtask virtiofsd`; run as root for its namespace sandbox). Ignored when
//! `RUNVM_VIRTIOFSD` is not set at build time; when it is, the test runs and must pass:
//!
//! ```text
//! RUNVM_VIRTIOFSD=$(cargo xtask virtiofsd) cargo test -p vmm --test virtio_fs
//! ```
//!
//! No KVM: the test plays the guest driver. It activates the device over the VMM's memfd
//! guest memory, puts FUSE requests on the request queue, kicks the queue's eventfd (what
//! KVM does when the guest writes `QueueNotify`) and waits on the device's interrupt
//! eventfd (the irqfd), which virtiofsd signals itself. Then it kills virtiofsd and
//! checks that the device reports the share gone.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::virtio::fs::{Fs, VhostUserBackend, NUM_QUEUES, REQUEST_QUEUE};
use vmm::devices::virtio::test_utils::DriverQueue;
use vmm::devices::virtio::{GuestMemory, IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1};
use vmm::memory::create_guest_memory;
use vmm_sys_util::eventfd::EventFd;

// FUSE opcodes.
const FUSE_LOOKUP: u32 = 1;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_INIT: u32 = 26;
/// The root directory's node id.
const FUSE_ROOT_ID: u64 = 1;
/// `fuse_in_header`, `fuse_out_header`, `fuse_entry_out`, `fuse_open_out`.
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
const ENTRY_OUT: usize = 128;
const OPEN_OUT: usize = 16;

/// How long virtiofsd may take to answer one request.
const ANSWER: Duration = Duration::from_secs(10);

/// The virtiofsd under test; killed when dropped.
struct Virtiofsd(Child);

impl Virtiofsd {
    /// `virtiofsd --socket-path SOCKET --shared-dir DIR --sandbox namespace --cache auto`.
    fn start(shared: &Path, socket: &Path) -> Self {
        let bin = std::env::var("RUNVM_VIRTIOFSD")
            .expect("RUNVM_VIRTIOFSD names the virtiofsd to test (cargo xtask virtiofsd)");
        let child = Command::new(&bin)
            .arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(shared)
            .args(["--sandbox", "namespace", "--cache", "auto"])
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        Self(child)
    }

    /// Kills it and waits for it; after that its sandboxed child goes too (it asked for
    /// SIGTERM on its parent's death).
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `fuse_out_header` and the reply after it.
struct Reply {
    error: i32,
    unique: u64,
    body: Vec<u8>,
}

impl Reply {
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.body[at..at + 8].try_into().unwrap())
    }
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.body[at..at + 4].try_into().unwrap())
    }
}

/// The guest driver's side: the request queue, the kick and the interrupt.
struct Driver {
    mem: GuestMemory,
    requests: DriverQueue,
    kick: EventFd,
    irq: Arc<IrqTrigger>,
    unique: u64,
}

impl Driver {
    /// Sends one FUSE request (`fuse_in_header` for `opcode` on `nodeid`, then `body`)
    /// with room for a reply of `reply_len` bytes, and waits for virtiofsd's answer.
    fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8], reply_len: usize) -> Reply {
        self.unique += 1;
        let mut req = Vec::new();
        req.extend_from_slice(&((IN_HEADER + body.len()) as u32).to_le_bytes());
        req.extend_from_slice(&opcode.to_le_bytes());
        req.extend_from_slice(&self.unique.to_le_bytes());
        req.extend_from_slice(&nodeid.to_le_bytes());
        // uid, gid, pid, total_extlen, padding
        req.extend_from_slice(&[0u8; 16]);
        req.extend_from_slice(body);
        let out_len = OUT_HEADER + reply_len;
        let idxs = self.requests.add_buffers(
            &[(req.len() as u32, false), (out_len as u32, true)],
            &[&req],
        );
        self.kick.write(1).unwrap();
        wait_readable(self.irq.eventfd(), ANSWER);
        self.irq.eventfd().read().unwrap();
        let (head, len) = self
            .requests
            .pop_used()
            .expect("an interrupt, and a used chain with it");
        assert_eq!(head, idxs[0]);
        let mut out = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut out, GuestAddress(self.requests.slot(idxs[1])))
            .unwrap();
        assert!(out.len() >= OUT_HEADER, "reply of {} bytes", out.len());
        let reply_len = u32::from_le_bytes(out[0..4].try_into().unwrap());
        assert_eq!(reply_len, len, "fuse_out_header.len is what was written");
        Reply {
            error: i32::from_le_bytes(out[4..8].try_into().unwrap()),
            unique: u64::from_le_bytes(out[8..16].try_into().unwrap()),
            body: out[OUT_HEADER..].to_vec(),
        }
    }
}

fn wait_readable(fd: &impl AsRawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
        if r > 0 {
            return;
        }
        assert!(
            r == 0 || std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted,
            "poll: {}",
            std::io::Error::last_os_error()
        );
        assert!(
            Instant::now() < deadline,
            "virtiofsd did not interrupt the guest within {timeout:?}"
        );
    }
}

#[test]
#[cfg_attr(
    not(virtiofsd),
    ignore = "set RUNVM_VIRTIOFSD to a virtiofsd binary (cargo xtask virtiofsd); needs root"
)]
fn a_guest_reads_a_host_file_through_virtiofsd() {
    let shared = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(shared.path().join("file.txt"), &content).unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("fs.sock");
    let mut virtiofsd = Virtiofsd::start(shared.path(), &socket);

    // What the VMM does while it builds the VM.
    let mem = create_guest_memory(64).unwrap();
    let backend = VhostUserBackend::connect(&socket, NUM_QUEUES).unwrap();
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = failures.clone();
    let mut fs = Fs::new(
        "shared",
        backend,
        Box::new(move |m| seen.lock().unwrap().push(m)),
    )
    .unwrap();
    assert_eq!(fs.device_type(), 26);
    assert_ne!(fs.avail_features() & VIRTIO_F_VERSION_1, 0);

    // The driver: two queues, acks VERSION_1, DRIVER_OK.
    let hiprio = DriverQueue::new(&mem, 0x10_0000, 16);
    let requests = DriverQueue::new(&mem, 0x20_0000, 16).with_buffer_slots(0x100_0000, 0x2_0000);
    let irq = Arc::new(IrqTrigger::new().unwrap());
    fs.set_acked_features(VIRTIO_F_VERSION_1);
    fs.activate(
        mem.clone(),
        vec![hiprio.create_queue(), requests.create_queue()],
        irq.clone(),
    )
    .unwrap();
    let mut driver = Driver {
        mem: mem.clone(),
        requests,
        kick: fs.queue_events()[REQUEST_QUEUE].try_clone().unwrap(),
        irq,
        unique: 0,
    };

    // FUSE_INIT: major 7, minor 31, max_readahead, flags.
    let init: Vec<u8> = [7u32, 31, 128 << 10, 0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let reply = driver.request(FUSE_INIT, 0, &init, 64);
    assert_eq!(reply.error, 0);
    assert_eq!(reply.unique, 1);
    assert_eq!(reply.u32_at(0), 7, "FUSE major version");

    // A name that is not there.
    let reply = driver.request(FUSE_LOOKUP, FUSE_ROOT_ID, b"missing\0", ENTRY_OUT);
    assert_eq!(reply.error, -libc::ENOENT);

    // FUSE_LOOKUP + FUSE_OPEN + FUSE_READ of the file.
    let reply = driver.request(FUSE_LOOKUP, FUSE_ROOT_ID, b"file.txt\0", ENTRY_OUT);
    assert_eq!(reply.error, 0);
    let node = reply.u64_at(0);
    assert_ne!(node, 0);
    assert_eq!(reply.u64_at(40 + 8), content.len() as u64, "attr.size");
    // flags O_RDONLY, open_flags
    let reply = driver.request(FUSE_OPEN, node, &[0u8; 8], OPEN_OUT);
    assert_eq!(reply.error, 0);
    let fh = reply.u64_at(0);
    let read = |driver: &mut Driver| {
        let mut read_in = Vec::new();
        read_in.extend_from_slice(&fh.to_le_bytes());
        read_in.extend_from_slice(&0u64.to_le_bytes()); // offset
        read_in.extend_from_slice(&8192u32.to_le_bytes()); // size
        read_in.extend_from_slice(&[0u8; 20]); // read_flags, lock_owner, flags, padding
        driver.request(FUSE_READ, node, &read_in, 8192)
    };
    let reply = read(&mut driver);
    assert_eq!(reply.error, 0);
    assert_eq!(reply.body, content, "the file's bytes");

    // Live: what the host writes, the guest reads.
    let changed = b"changed on the host".to_vec();
    {
        use std::io::Write;
        let mut f = File::create(shared.path().join("file.txt")).unwrap();
        f.write_all(&changed).unwrap();
    }
    assert_eq!(read(&mut driver).body, changed);

    // The driver resets the device; virtiofsd stops the rings.
    assert!(fs.reset());
    assert!(!fs.is_activated());
    assert!(failures.lock().unwrap().is_empty(), "{failures:?}");

    // virtiofsd exits while the guest runs: the share is reported gone.
    let fs = Arc::new(Mutex::new(fs));
    let mut events = EventManager::<Arc<Mutex<Fs>>>::new().unwrap();
    events.add_subscriber(fs.clone());
    assert_eq!(
        events.run_with_timeout(50).unwrap(),
        0,
        "virtiofsd is alive"
    );
    virtiofsd.kill();
    let deadline = Instant::now() + ANSWER;
    while failures.lock().unwrap().is_empty() && Instant::now() < deadline {
        events.run_with_timeout(100).unwrap();
    }
    let failures = failures.lock().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].contains("\"shared\"") && failures[0].contains("closed its connection"),
        "{}",
        failures[0]
    );
}

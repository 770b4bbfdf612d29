//! What both host-mode test files need: the init binary, a scratch directory with a
//! busybox root in the directory that stands in for the container's virtio-fs share,
//! init started under `unshare` in its host test mode, its connections accepted, and its
//! exit awaited.

use runvm_protocol::{
    read_frame, Chunk, GuestMessage, OutputReader, MAX_CHUNK_LEN, PROTOCOL_VERSION, SHARE_ROOT,
    SHARE_TAG,
};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const BUSYBOX: &str = "/bin/busybox";
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The binary under test: this build's, or `RUNVM_INIT_BIN` (e.g. the static release
/// build that goes into the initramfs).
pub fn init_bin() -> PathBuf {
    std::env::var_os("RUNVM_INIT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_guest-init")))
}

/// The directory that stands in for the share of the default virtio-fs tag in host test
/// mode (`<dir>/virtiofs/<tag>`).
pub fn share_dir(scratch: &Path) -> PathBuf {
    scratch.join("virtiofs").join(SHARE_TAG)
}

/// The container's root directory in the share of `scratch` (the host's `root.path`).
pub fn root_dir(scratch: &Path) -> PathBuf {
    share_dir(scratch).join(SHARE_ROOT)
}

/// A scratch directory, removed on drop, holding a share whose root is a busybox tree
/// with the directories `dirs` and the `applets` as links to busybox.
pub fn busybox_scratch(dirs: &[&str], applets: &[&str]) -> TempDir {
    let scratch = tempfile::Builder::new()
        .prefix("runvm-init-test-")
        .tempdir()
        .unwrap();
    let root = root_dir(scratch.path());
    for d in ["bin"].iter().chain(dirs) {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    scratch
}

/// `unshare -m <more namespaces> <init>` in host test mode on `dir`, so init's mounts
/// vanish with it.
pub fn init_command(dir: &Path, namespaces: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.arg("-m")
        .args(namespaces)
        .args(["--propagation", "private"])
        .arg(init_bin())
        .env("RUNVM_INIT_TEST", dir);
    c
}

/// Accepts init's next connection on `l` (failing if init exits or TIMEOUT passes).
pub fn accept(l: &UnixListener, child: &mut Child) -> UnixStream {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!("init exited ({st}) before connecting");
                }
                assert!(Instant::now() < deadline, "init did not connect");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Reads init's first message and checks that it is `Hello` with this protocol version.
pub fn expect_hello(ctl: &mut UnixStream) {
    let hello: GuestMessage = read_frame(ctl).unwrap();
    assert_eq!(
        hello,
        GuestMessage::Hello {
            version: PROTOCOL_VERSION
        }
    );
}

/// Waits (at most TIMEOUT) for init to exit after `Shutdown`.
pub fn wait_for_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "init did not exit after Shutdown"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads `Exited` messages from init's control connection until the main process's;
/// returns them all in order (anything else fails the test).
#[allow(dead_code)] // host_mode and pod_host_mode use it; rootfs_host_mode does not.
pub fn exits_until_main(ctl: &mut UnixStream) -> Vec<(u32, runvm_protocol::ExitStatus)> {
    let mut exits = vec![];
    loop {
        match read_frame(ctl).unwrap() {
            GuestMessage::Exited {
                process, status, ..
            } => {
                exits.push((process, status));
                if process == 0 {
                    return exits;
                }
            }
            m => panic!("expected Exited, got {m:?}"),
        }
    }
}

/// Fails if anything is still mounted under `dir`.
pub fn assert_no_mounts_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.display().to_string();
    assert!(!mounts.contains(&d), "mounts left behind under {d}");
}

/// Splits a process's output stream (stdout and stderr as chunks) into two streams that
/// carry each as its own bytes, ended where init ends it, as the monitor writes them
/// to the host's two descriptors.
pub fn split_output(stream: UnixStream) -> (UnixStream, UnixStream) {
    let (out_r, out_w) = UnixStream::pair().unwrap();
    let (err_r, err_w) = UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        let mut outs = [Some(out_w), Some(err_w)];
        let mut reader = OutputReader::new(stream);
        let mut buf = vec![0u8; MAX_CHUNK_LEN];
        while let Some(chunk) = reader.next_chunk(&mut buf).expect("a valid output stream") {
            match chunk {
                Chunk::Data { fd, len } => {
                    let out = outs[usize::from(fd - 1)].as_mut();
                    let out = out.expect("no data after the end of an output");
                    let _ = out.write_all(&buf[..len]);
                }
                Chunk::End { fd } => {
                    assert!(outs[usize::from(fd - 1)].take().is_some(), "ended twice");
                }
            }
        }
    });
    (out_r, err_r)
}

//! Warm start in the guest init's host test mode (`RUNVM_INIT_TEST=<dir>`, see
//! `host_mode.rs`) with template mode on (`RUNVM_INIT_TEMPLATE=1`, the stand-in for
//! `runvm.template=1` on the kernel command line): init listens on `<dir>/1029` (the wake
//! port) and does not connect to the control port `<dir>/1024` until this test, playing
//! the host, has sent it a good `Wake`; then it goes on as a cold-booted init does. Host
//! test mode reads and checks the `Wake` but changes nothing of this host with it.
//!
//! Needs root, `unshare` and a static busybox (Debian's `busybox-static`).

mod common;

use common::{accept, BUSYBOX, TIMEOUT};
use runvm_protocol::{
    read_frame, write_frame, ExitStatus, GuestMessage, HostMessage, ProcessSpec, RootfsSpec,
    StreamHeader, Wake, OUTPUT_STREAM_FD, WAKE_PORT, WAKE_SEED_LEN,
};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How long init is given to connect to the control port on its own, which it must not.
const UNWOKEN_WAIT: Duration = Duration::from_millis(300);

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    assert!(
        Path::new(BUSYBOX).exists(),
        "this test needs {BUSYBOX} (apt-get install busybox-static)"
    );
}

/// A good `Wake` with a seed of `seed_len` bytes.
fn wake(seed_len: usize) -> Wake {
    Wake {
        seed: (0..seed_len).map(|i| i as u8).collect(),
        realtime_secs: 1_700_000_000,
        realtime_nanos: 5,
        bind: vec![3, 4],
    }
}

/// The host's side of one template init: its control and stream listeners, and init.
struct Template {
    scratch: tempfile::TempDir,
    control: UnixListener,
    streams: UnixListener,
    child: Child,
}

impl Template {
    /// Starts init in template mode; its stderr is piped when `capture_stderr`.
    fn start(capture_stderr: bool) -> Self {
        let scratch =
            common::busybox_scratch(&["proc", "sys", "dev", "tmp", "etc"], &["sh", "echo"]);
        let control = UnixListener::bind(scratch.path().join("1024")).unwrap();
        let streams = UnixListener::bind(scratch.path().join("1025")).unwrap();
        control.set_nonblocking(true).unwrap();
        let mut command = common::init_command(scratch.path(), &[]);
        command.env("RUNVM_INIT_TEMPLATE", "1");
        if capture_stderr {
            command.stderr(Stdio::piped());
        } else {
            command.env("RUNVM_INIT_DEBUG", "1");
        }
        let child = command.spawn().unwrap();
        Self {
            scratch,
            control,
            streams,
            child,
        }
    }

    /// Connects to init's wake port, retrying until init listens there (failing if it
    /// exits or TIMEOUT passes).
    fn connect_wake(&mut self) -> UnixStream {
        let path = self.scratch.path().join(WAKE_PORT.to_string());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match UnixStream::connect(&path) {
                Ok(s) => {
                    s.set_read_timeout(Some(TIMEOUT)).unwrap();
                    return s;
                }
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) =>
                {
                    if let Ok(Some(st)) = self.child.try_wait() {
                        panic!("init exited ({st}) without listening on the wake port");
                    }
                    assert!(Instant::now() < deadline, "init did not listen on {path:?}");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("connect to {path:?}: {e}"),
            }
        }
    }

    /// Fails if init has connected to the control port.
    fn assert_no_control_connection(&self) {
        match self.control.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok(_) => panic!("init connected to the control port without a good Wake"),
            Err(e) => panic!("accept: {e}"),
        }
    }

    /// Waits for init to exit; returns whether it succeeded and what it wrote to stderr
    /// (when captured).
    fn exit(&mut self) -> (bool, String) {
        let status = common::wait_for_exit(&mut self.child);
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut stderr).unwrap();
        }
        common::assert_no_mounts_under(self.scratch.path());
        (status.success(), stderr)
    }
}

#[test]
fn a_template_connects_to_the_host_only_once_woken_then_runs_its_container() {
    require_root();
    let mut t = Template::start(false);
    let mut wake_connection = t.connect_wake();
    std::thread::sleep(UNWOKEN_WAIT);
    assert!(
        t.child.try_wait().unwrap().is_none(),
        "init exited before its Wake"
    );
    t.assert_no_control_connection();

    write_frame(&mut wake_connection, &wake(WAKE_SEED_LEN)).unwrap();
    // Init closes the wake connection once it has read the one frame.
    let mut after = Vec::new();
    wake_connection.read_to_end(&mut after).unwrap();
    assert!(
        after.is_empty(),
        "init wrote {after:?} on the wake connection"
    );

    let mut ctl = accept(&t.control, &mut t.child);
    common::expect_hello(&mut ctl);
    write_frame(
        &mut ctl,
        &HostMessage::Run {
            rootfs: RootfsSpec::default(),
            hostname: None,
            process: ProcessSpec {
                args: vec!["sh".into(), "-c".into(), "echo woken; exit 7".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                ..Default::default()
            },
            linux: Default::default(),
            mounts: vec![],
            network: Default::default(),
        },
    )
    .unwrap();
    let mut stdin = None;
    let mut output = None;
    for _ in 0..2 {
        let mut s = accept(&t.streams, &mut t.child);
        let header: StreamHeader = read_frame(&mut s).unwrap();
        assert_eq!(header.process, 0);
        match header.fd {
            0 => stdin = Some(s),
            OUTPUT_STREAM_FD => output = Some(s),
            fd => panic!("unexpected stream fd {fd}"),
        }
    }
    drop(stdin);
    let (mut stdout, _stderr) = common::split_output(output.expect("an output stream"));
    match read_frame(&mut ctl).unwrap() {
        GuestMessage::Started { process: 0, .. } => {}
        m => panic!("expected Started, got {m:?}"),
    }
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(out, "woken\n");
    assert_eq!(
        common::exits_until_main(&mut ctl),
        vec![(0, ExitStatus::Exited(7))]
    );
    write_frame(&mut ctl, &HostMessage::Shutdown).unwrap();
    let (ok, _) = t.exit();
    assert!(ok, "init failed after a good run");
}

/// Sends `bytes` on the wake connection of a template init, and checks that init fails
/// without ever connecting to the control port; returns its stderr.
fn refused_wake(bytes: &[u8]) -> String {
    let mut t = Template::start(true);
    let mut wake_connection = t.connect_wake();
    wake_connection.write_all(bytes).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while t.child.try_wait().unwrap().is_none() {
        t.assert_no_control_connection();
        assert!(
            Instant::now() < deadline,
            "init did not end after a bad Wake"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    t.assert_no_control_connection();
    let (ok, stderr) = t.exit();
    assert!(!ok, "init succeeded after a bad Wake: {stderr}");
    stderr
}

fn frame_of(wake: &Wake) -> Vec<u8> {
    let mut frame = Vec::new();
    write_frame(&mut frame, wake).unwrap();
    frame
}

#[test]
fn a_wake_with_a_short_seed_ends_init_before_the_control_connection() {
    require_root();
    let stderr = refused_wake(&frame_of(&wake(WAKE_SEED_LEN - 1)));
    assert!(
        stderr.contains(&format!("a seed of {} bytes", WAKE_SEED_LEN - 1)),
        "{stderr}"
    );
}

#[test]
fn a_malformed_or_oversized_wake_ends_init_before_the_control_connection() {
    require_root();
    let mut not_json = 5u32.to_le_bytes().to_vec();
    not_json.extend_from_slice(b"{{{{{");
    let stderr = refused_wake(&not_json);
    assert!(stderr.contains("malformed frame"), "{stderr}");

    let stderr = refused_wake(&(1u32 << 20).to_le_bytes());
    assert!(stderr.contains("over the"), "{stderr}");

    let mut bad_time = wake(WAKE_SEED_LEN);
    bad_time.realtime_nanos = 1_000_000_000;
    let stderr = refused_wake(&frame_of(&bad_time));
    assert!(stderr.contains("not a time since the epoch"), "{stderr}");
}

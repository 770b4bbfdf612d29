//! Hostile guests: the guest init is replaced by `tests/hostile-init`, which misbehaves
//! on vsock in one way per mode (see its doc). Each must give a clear error that says
//! what the guest did, a non-zero exit, in bounded time, and leave nothing behind,
//! through `runvm run` and through `create`/`start`; a normal container beside a hostile
//! one is not disturbed. Run with `cargo xtask guest-test hostile`, which builds the
//! hostile initramfs and sets `RUNVM_HOSTILE_INITRAMFS`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runvm_tests::*;

/// What a mode that behaves after misbehaving prints (hostile-init's `BEHAVED_OUTPUT`).
const BEHAVED: &str = "the hostile init behaved\n";
/// The boot timeout the hostile guests get (every mode that connects does so well before).
/// (Generous: guests boot emulated in the test host, two at a time.)
const BOOT_TIMEOUT_SECS: u64 = 30;
/// How long any hostile run may take, boot timeout and the 10 s stall limit included.
const BOUND: Duration = Duration::from_secs(90);

fn hostile_initramfs() -> String {
    std::env::var("RUNVM_HOSTILE_INITRAMFS").unwrap_or_else(|_| {
        panic!("RUNVM_HOSTILE_INITRAMFS is not set: run through `cargo xtask guest-test hostile`")
    })
}

/// A bundle with a tiny root filesystem: the hostile init never looks at it. Read-only,
/// so the monitor expects no write-back (the hostile init sends none; a guest that owes
/// one and never sends it is bounded by RUNVM_WRITEBACK_TIMEOUT instead).
fn tiny_bundle() -> Bundle {
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "terminal": false, "user": { "uid": 0, "gid": 0 }, "args": ["true"], "cwd": "/" },
        "root": { "path": "rootfs", "readonly": true },
        "linux": { "namespaces": runvm_tests::default_namespaces() },
    });
    let b = Bundle::from_config(&config.to_string());
    std::fs::create_dir(b.path().join("rootfs")).unwrap();
    std::fs::write(b.path().join("rootfs/hostile"), "nothing to see\n").unwrap();
    b
}

/// `runvm --root R <args…>` whose guest runs the hostile init in `mode`.
fn hostile(root: &StateRoot, mode: &str, args: &[&str]) -> Command {
    let mut c = root.command(args);
    c.env("RUNVM_INITRAMFS", hostile_initramfs())
        .env(
            "RUNVM_KERNEL_CMDLINE_APPEND",
            format!("runvm_hostile={mode}"),
        )
        .env("RUNVM_BOOT_TIMEOUT", BOOT_TIMEOUT_SECS.to_string());
    c
}

/// `runvm run` of a hostile guest: its output and how long it took.
fn hostile_run(root: &StateRoot, mode: &str, id: &str) -> (std::process::Output, Duration) {
    let bundle = tiny_bundle();
    let start = Instant::now();
    let child = hostile(
        root,
        mode,
        &["run", "--bundle", bundle.path().to_str().unwrap(), id],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("cannot start runvm run");
    let out = wait_with_timeout(child, BOUND);
    (out, start.elapsed())
}

/// What `create` + `start` of a hostile guest gave.
struct Started {
    start: std::process::Output,
    monitor_code: i32,
    stdout: String,
    /// What the monitor wrote to its stderr (create's): its error, if the guest
    /// misbehaved after `start` had returned.
    monitor_stderr: String,
}

/// `runvm create` (hostile) + `runvm start`, then reaps the monitor, checks `state` says
/// stopped, deletes the container and checks nothing is left.
fn hostile_create_start(root: &StateRoot, mode: &str, id: &str) -> Started {
    let bundle = tiny_bundle();
    let (created, pid) = create_with(hostile(root, mode, &[]), &bundle, id);
    assert_eq!(code(&created), 0, "create: {}", stderr(&created));
    let pid = pid.expect("create wrote no pid file");
    let t = Instant::now();
    let start = root.cmd(&["start", id]);
    let monitor_code = reap(pid, BOUND);
    assert!(
        t.elapsed() < BOUND,
        "{mode}: start and the monitor took {:?}",
        t.elapsed()
    );
    let state = root.state(id).expect("state of the ended container");
    assert_eq!(state["status"], "stopped", "{state}");
    let del = root.cmd(&["delete", id]);
    assert_eq!(code(&del), 0, "delete: {}", stderr(&del));
    root.assert_clean(Duration::from_secs(5));
    Started {
        start,
        monitor_code,
        stdout: bundle.stdout(),
        monitor_stderr: std::fs::read_to_string(bundle.path().join("stderr")).unwrap_or_default(),
    }
}

/// The guest's misbehaviour is refused with `needle` in the error, through `run` and
/// through `create`/`start`, with a non-zero exit and nothing left behind.
fn refused(mode: &str, needle: &str) {
    let root = StateRoot::new();
    let (out, took) = hostile_run(&root, mode, "hostile-run");
    let err = stderr(&out);
    assert_ne!(code(&out), 0, "{mode}: run succeeded; stderr: {err}");
    assert!(
        err.contains(needle),
        "{mode}: expected {needle:?} in: {err}"
    );
    assert_eq!(stdout(&out), "", "{mode}");
    assert!(took < BOUND, "{mode}: run took {took:?}");
    root.assert_clean(Duration::from_secs(5));

    // If the guest misbehaves before its process is reported started, `start` fails
    // with the error; after it, `start` has succeeded and the monitor (the container's
    // pid for containerd) fails with it. Either way the monitor's code is not 0.
    let s = hostile_create_start(&root, mode, "hostile-start");
    let err = stderr(&s.start);
    if code(&s.start) == 0 {
        assert!(
            s.monitor_stderr.contains(needle),
            "{mode}: start succeeded, and {needle:?} is not in the monitor's error: {}",
            s.monitor_stderr
        );
    } else {
        assert_eq!(code(&s.start), 1, "{mode}: start: {err}");
        assert!(
            err.contains(needle),
            "{mode}: expected {needle:?} in start's error: {err}"
        );
    }
    assert_ne!(s.monitor_code, 0, "{mode}: the monitor exited 0");
}

/// The guest misbehaves in a way that only costs itself, then behaves: the container
/// runs to its end with its own output and code 0.
fn survived(mode: &str) {
    let root = StateRoot::new();
    let (out, took) = hostile_run(&root, mode, "hostile-run");
    assert_eq!(code(&out), 0, "{mode}: stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), BEHAVED, "{mode}");
    assert!(took < BOUND, "{mode}: run took {took:?}");
    root.assert_clean(Duration::from_secs(5));

    let s = hostile_create_start(&root, mode, "hostile-start");
    assert_eq!(code(&s.start), 0, "{mode}: start: {}", stderr(&s.start));
    assert_eq!(s.monitor_code, 0, "{mode}");
    assert_eq!(s.stdout, BEHAVED, "{mode}");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn a_guest_that_never_connects_times_out() {
    refused(
        "never-connect",
        &format!("did not connect within {BOOT_TIMEOUT_SECS}s"),
    );
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn an_init_that_exits_at_once_panics_the_guest_kernel() {
    refused("panic", "before its init connected");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn a_control_connection_that_says_nothing() {
    refused("silent", "did not finish its Hello");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn garbage_on_the_control_connection() {
    refused("garbage", "malformed frame");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn an_oversized_length_prefix() {
    refused("oversized", "over the 1048576-byte limit");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn a_hello_with_another_protocol_version() {
    refused("bad-version", "protocol version 999");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn a_first_message_that_is_not_hello() {
    refused("not-hello", "expected Hello, got Started");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn a_hello_trickled_a_byte_a_second() {
    refused("trickle", "did not finish its Hello");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn a_frame_trickled_a_byte_a_second_after_run() {
    refused("trickle-run", "did not complete it within");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn the_exit_of_a_process_that_never_started() {
    refused("exit-unknown", "exit of process 77, which does not exist");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn started_reported_twice() {
    refused("started-twice", "start of process 0 twice");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn an_exit_before_the_start() {
    refused("exit-before-start", "exit of process 0 before its start");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn a_death_by_an_impossible_signal() {
    refused("bad-signal", "signal 2147483647");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn a_failed_start_that_claims_success() {
    refused("start-failed-zero", "failed start with exit code 0");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn hundreds_of_streams_for_processes_that_do_not_exist() {
    refused("stream-bogus", "process 4000, which does not exist");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn a_stream_opened_twice() {
    refused("stream-twice", "opened twice");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn a_crash_after_the_start() {
    refused(
        "crash-after-start",
        "before the workload's exit status was reported",
    );
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn hundreds_of_stream_connections_without_a_header() {
    survived("stream-silent");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn connections_to_ports_nobody_listens_on() {
    survived("wrong-ports");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn a_huge_start_failure_message_is_cut_and_defanged() {
    let root = StateRoot::new();
    let (out, took) = hostile_run(&root, "huge-message", "huge");
    let err = stderr(&out);
    // The guest's own code for a failed start passes through, as for a real one.
    assert_eq!(code(&out), 127, "stderr: {}", &err[..err.len().min(2000)]);
    assert!(took < BOUND, "run took {took:?}");
    assert!(err.contains("HUGE"), "{}", &err[..err.len().min(2000)]);
    assert!(
        err.contains("more bytes"),
        "{}",
        &err[..err.len().min(2000)]
    );
    assert!(err.len() < 8192, "{} bytes of stderr", err.len());
    assert!(
        !out.stderr
            .iter()
            .any(|b| *b == 0x1b || *b == b'\r' || *b == 0x07),
        "terminal control bytes reached stderr: {err:?}"
    );
    root.assert_clean(Duration::from_secs(5));

    let s = hostile_create_start(&root, "huge-message", "huge-start");
    let err = stderr(&s.start);
    assert_eq!(code(&s.start), 1, "{}", &err[..err.len().min(2000)]);
    assert!(
        err.contains("HUGE") && err.len() < 8192,
        "{} bytes",
        err.len()
    );
    assert!(!s.start.stderr.contains(&0x1b));
    assert_eq!(s.monitor_code, 127);
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn a_stdout_flood_is_relayed_and_sigkill_still_gets_through() {
    become_subreaper();
    let root = StateRoot::new();
    let bundle = tiny_bundle();
    let pid_file = bundle.path().join("init.pid");
    let mut create = hostile(
        &root,
        "stdout-flood",
        &[
            "create",
            "--bundle",
            bundle.path().to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "flood",
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("cannot start runvm create");
    // The monitor keeps create's stdout: the container's output arrives on this pipe.
    let mut pipe = create.stdout.take().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut only_y = true;
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => return only_y,
                Ok(n) => {
                    only_y &= buf[..n].iter().all(|b| *b == b'y');
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    });
    assert!(create.wait().unwrap().success(), "create failed");
    let pid = read_pid(&pid_file).expect("create wrote no pid file");
    let start = root.cmd(&["start", "flood"]);
    assert_eq!(code(&start), 0, "start: {}", stderr(&start));

    const WANT: u64 = 16 << 20;
    let deadline = Instant::now() + BOUND;
    while count.load(Ordering::Relaxed) < WANT {
        assert!(
            Instant::now() < deadline,
            "only {} bytes of the flood arrived",
            count.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The monitor answers while the flood goes on.
    let t = Instant::now();
    let state = root.state("flood").expect("state during the flood");
    assert_eq!(state["status"], "running");
    let kill = root.cmd(&["kill", "flood", "KILL"]);
    assert_eq!(code(&kill), 0, "kill: {}", stderr(&kill));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "state and kill took {:?}",
        t.elapsed()
    );
    assert_eq!(reap(pid, Duration::from_secs(30)), 137);
    assert!(reader.join().unwrap(), "the flood arrived altered");
    let del = root.cmd(&["delete", "flood"]);
    assert_eq!(code(&del), 0, "delete: {}", stderr(&del));
    root.assert_clean(Duration::from_secs(5));
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn a_normal_container_beside_hostile_ones_is_not_disturbed() {
    become_subreaper();
    let root = Arc::new(StateRoot::new());
    // A hostile guest that connects and then says nothing, waiting out a long boot
    // timeout while the normal container runs.
    let bundle = tiny_bundle();
    let b = bundle.path().to_str().unwrap().to_string();
    let pid_file = bundle.path().join("init.pid");
    let created = wait_with_timeout(
        hostile(
            &root,
            "silent",
            &[
                "create",
                "--bundle",
                &b,
                "--pid-file",
                pid_file.to_str().unwrap(),
                "quiet",
            ],
        )
        .env("RUNVM_BOOT_TIMEOUT", "90")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
        BOUND,
    );
    assert_eq!(code(&created), 0, "{}", stderr(&created));
    let silent_pid = read_pid(&pid_file).expect("create wrote no pid file");
    let r = root.clone();
    let silent_start = std::thread::spawn(move || r.cmd(&["start", "quiet"]));
    // And one that floods the monitor with bogus stream connections, in the foreground.
    let r = root.clone();
    let bogus = std::thread::spawn(move || hostile_run(&r, "stream-bogus", "bogus").0);

    let normal = Bundle::new(&["sh", "-c", "echo normal output; echo to stderr >&2; exit 3"]);
    let out = root.run(&normal, "normal", b"");
    assert_eq!(code(&out), 3, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "normal output\n");
    assert_eq!(stderr(&out), "to stderr\n");

    let bogus = bogus.join().unwrap();
    assert_ne!(code(&bogus), 0);
    // The silent one is still waiting for its Hello: kill it.
    let state = root.state("quiet").expect("state of the silent container");
    assert_eq!(state["status"], "created", "{state}");
    let del = root.cmd(&["delete", "--force", "quiet"]);
    assert_eq!(code(&del), 0, "{}", stderr(&del));
    let start = silent_start.join().unwrap();
    assert_ne!(code(&start), 0, "start of the silent guest succeeded");
    assert_ne!(reap(silent_pid, BOUND), 0);
    root.assert_clean(Duration::from_secs(5));
}

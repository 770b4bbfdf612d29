//! Hostile guests: the guest init is replaced by `tests/hostile-init`, which misbehaves
//! on vsock in one way per mode (see its doc). Each must give a clear error that says
//! what the guest did, a non-zero exit, in bounded time, and leave nothing behind,
//! through `runvm run` and through `create`/`start`; a normal container beside a hostile
//! one is not disturbed. Run with `cargo xtask guest-test hostile`, which builds the
//! hostile initramfs and sets `RUNVM_HOSTILE_INITRAMFS`.
//!
//! The `share-*` modes attack the host's files through the container's virtio-fs share
//! as a guest root can: the tests check the host's files afterwards. What the guest makes
//! is bounded by the container's capabilities as under runc, read-only stays read-only,
//! nothing is made outside the share, and an open flood stays within virtiofsd's limit.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
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
fn an_output_stream_that_turns_to_garbage_is_cut_where_it_breaks() {
    let root = StateRoot::new();
    let (out, took) = hostile_run(&root, "output-garbage", "hostile-run");
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "stderr: {err}");
    assert_eq!(
        stdout(&out),
        BEHAVED,
        "what came before the garbage, nothing after"
    );
    assert!(!err.contains("GARBAGE"), "{err}");
    assert!(
        err.contains("output stream is broken") && err.contains("fd 9"),
        "the monitor says why the rest was dropped: {err}"
    );
    assert!(took < BOUND, "run took {took:?}");
    root.assert_clean(Duration::from_secs(5));
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

/// Docker's default capabilities without those that make privileged files or other
/// owners' files: CAP_CHOWN, CAP_FSETID, CAP_MKNOD, CAP_SETFCAP, CAP_SETUID, CAP_SETGID.
const WITHOUT_FILE_CAPS: &[&str] = &[
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_NET_RAW",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A bundle for the share attacks: its own copy of the busybox tree as the root
/// (read-only if `readonly`), a root process with capabilities `caps`, and `mounts`.
fn share_bundle(caps: &[&str], readonly: bool, mounts: serde_json::Value) -> Bundle {
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false, "user": { "uid": 0, "gid": 0 }, "args": ["true"], "cwd": "/",
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
        },
        "root": { "path": "rootfs", "readonly": readonly },
        "mounts": mounts,
        "linux": { "namespaces": runvm_tests::default_namespaces() },
    });
    let b = Bundle::from_config(&config.to_string());
    private_rootfs(b.path());
    b
}

/// A bind mount of `source` on `dest` with `options`, as config.json has it.
fn bind(dest: &str, source: &Path, options: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "destination": dest, "type": "bind", "source": source, "options": options,
    })
}

/// `runvm run` of `bundle` as `id` with the hostile init attacking the share in `modes`
/// (comma-separated): the attempts it reported, one line each (`<attempt> <share path>:
/// ok` or `…: <errno>`). The guest then behaves: the run must end with code 0.
fn attack_share(root: &StateRoot, bundle: &Bundle, modes: &str, id: &str) -> String {
    let child = hostile(
        root,
        modes,
        &["run", "--bundle", bundle.path().to_str().unwrap(), id],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("cannot start runvm run");
    let out = wait_with_timeout(child, BOUND);
    assert_eq!(code(&out), 0, "{modes}: stderr: {}", stderr(&out));
    let all = stdout(&out);
    let report = all
        .strip_suffix(BEHAVED)
        .unwrap_or_else(|| panic!("{modes}: the hostile init did not behave: {all}"));
    assert!(!report.contains("mount: "), "{modes}: {report}");
    // Shown with a failure.
    println!("{modes}:\n{report}");
    report.to_string()
}

/// Asserts that every attempt of `report` for which `pred` holds was refused.
#[track_caller]
fn all_refused(report: &str, pred: impl Fn(&str) -> bool) {
    let done: Vec<&str> = report
        .lines()
        .filter(|l| pred(l) && l.ends_with(": ok"))
        .collect();
    assert!(done.is_empty(), "succeeded: {done:#?}\nreport:\n{report}");
}

/// The share path an attempt names (`root/x` in `chmod 777 root/x: ok`).
fn attempt_path(line: &str) -> &str {
    let attempt = line.split_once(": ").map_or(line, |(a, _)| a);
    attempt.rsplit(' ').next().unwrap_or("")
}

/// Mode bits (permissions, setuid, setgid, sticky) of `path`, not following a symlink.
fn mode_of(path: &Path) -> u32 {
    let md = path
        .symlink_metadata()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    md.mode() & 0o7777
}

fn owner_of(path: &Path) -> (u32, u32) {
    let md = path
        .symlink_metadata()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (md.uid(), md.gid())
}

/// The extended attribute `name` of `path` (not following a symlink), if it has one.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 1024];
    // SAFETY: lgetxattr reads the two NUL-terminated strings and writes at most
    // `buf.len()` bytes into `buf`.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| {
        buf.truncate(len as usize);
        buf
    })
}

/// Every path under `dir` (itself included), not following symlinks.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            out.extend(entries);
        }
        i += 1;
    }
    out
}

/// What the host's inode of a file says: any change to a file (content, mode, owner,
/// links, extended attributes) changes its ctime.
#[derive(Debug, PartialEq, Eq)]
struct Inode {
    mode: u32,
    owner: (u32, u32),
    nlink: u64,
    size: u64,
    ctime: (i64, i64),
}

/// The inode of every path under `dir`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Inode> {
    walk(dir)
        .into_iter()
        .map(|p| {
            let m = p.symlink_metadata().unwrap();
            let inode = Inode {
                mode: m.mode(),
                owner: (m.uid(), m.gid()),
                nlink: m.nlink(),
                size: m.size(),
                ctime: (m.ctime(), m.ctime_nsec()),
            };
            (p, inode)
        })
        .collect()
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn without_the_capabilities_the_guest_makes_no_device_foreign_owner_or_file_capability() {
    let b = share_bundle(WITHOUT_FILE_CAPS, false, serde_json::json!([]));
    let rootfs = b.path().join("rootfs");
    let root = StateRoot::new();
    let report = attack_share(
        &root,
        &b,
        "share-setuid,share-mknod,share-chown,share-xattr",
        "no-caps",
    );
    root.assert_clean(Duration::from_secs(5));
    let f = |name: &str| rootfs.join(name);

    // No CAP_MKNOD: no device node. A fifo and a socket need no capability, as under runc.
    for dev in ["hostile-mem", "hostile-null", "hostile-sda"] {
        assert!(
            f(dev).symlink_metadata().is_err(),
            "{dev} is on the host; report:\n{report}"
        );
    }
    let ft = |name: &str| f(name).symlink_metadata().unwrap().file_type();
    assert!(ft("hostile-fifo").is_fifo(), "{report}");
    assert!(ft("hostile-socket").is_socket(), "{report}");

    // No CAP_CHOWN, CAP_SETUID or CAP_SETGID: nothing given away, nothing made as another
    // user, anywhere in the root.
    let foreign: Vec<_> = walk(&rootfs)
        .into_iter()
        .filter(|p| {
            let (uid, gid) = owner_of(p);
            uid == 12345 || gid == 12345
        })
        .collect();
    assert!(foreign.is_empty(), "{foreign:?}; report:\n{report}");
    assert!(!f("hostile-open/hostile-made-as-12345").exists());

    // No CAP_SETFCAP: no file capability; never overlay's trusted attributes (they need
    // CAP_SYS_ADMIN).
    let x = |name: &str, attr: &str| xattr(&f(name), attr);
    assert_eq!(x("hostile-fcap", "security.capability"), None);
    assert_eq!(x("hostile-opaque", "trusted.overlay.opaque"), None);
    assert_eq!(x("hostile-opaque", "trusted.overlay.redirect"), None);

    // No CAP_FSETID: no setuid or setgid bit reaches the host, by chmod, at create or
    // kept through a write (the host's file server refuses such modes: stricter than
    // runc, where the owner of a file may set them without the capability).
    for name in [
        "hostile-setuid",
        "hostile-setgid",
        "hostile-setuid-created",
        "hostile-setuid-written",
    ] {
        let p = f(name);
        if p.exists() {
            assert_eq!(mode_of(&p) & 0o6000, 0, "{name}: {report}");
        }
    }
    assert!(f("hostile-setuid").exists(), "{report}");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn with_dockers_capabilities_the_guest_makes_them_as_under_runc() {
    let b = share_bundle(runvm_tests::DOCKER_CAPS, false, serde_json::json!([]));
    let rootfs = b.path().join("rootfs");
    let root = StateRoot::new();
    let report = attack_share(
        &root,
        &b,
        "share-setuid,share-mknod,share-chown,share-xattr",
        "docker-caps",
    );
    root.assert_clean(Duration::from_secs(5));
    let f = |name: &str| rootfs.join(name);

    for (dev, char_dev, major, minor) in [
        ("hostile-mem", true, 1, 1),
        ("hostile-null", true, 1, 3),
        ("hostile-sda", false, 8, 0),
    ] {
        let md = f(dev)
            .symlink_metadata()
            .unwrap_or_else(|e| panic!("{dev}: {e}; report:\n{report}"));
        let ft = md.file_type();
        assert!(
            if char_dev {
                ft.is_char_device()
            } else {
                ft.is_block_device()
            },
            "{dev}: {ft:?}"
        );
        assert_eq!(
            (libc::major(md.rdev()), libc::minor(md.rdev())),
            (major, minor)
        );
    }
    assert_eq!(owner_of(&f("hostile-chown")), (12345, 12345), "{report}");
    assert_eq!(
        owner_of(&f("hostile-open/hostile-made-as-12345")),
        (12345, 12345),
        "{report}"
    );
    assert!(
        xattr(&f("hostile-fcap"), "security.capability").is_some(),
        "{report}"
    );
    // Docker's set has no CAP_SYS_ADMIN.
    assert_eq!(xattr(&f("hostile-opaque"), "trusted.overlay.opaque"), None);
    // CAP_FSETID: the bits stay through a write.
    for (name, mode) in [
        ("hostile-setuid", 0o4755),
        ("hostile-setgid", 0o2755),
        ("hostile-setuid-created", 0o6755),
        ("hostile-setuid-written", 0o6755),
    ] {
        assert_eq!(mode_of(&f(name)), mode, "{name}; report:\n{report}");
    }
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn read_only_binds_and_root_stay_unchanged_whatever_the_guest_tries() {
    let b = share_bundle(runvm_tests::DOCKER_CAPS, true, serde_json::json!([]));
    let (dir, file) = (b.path().join("ro-dir"), b.path().join("ro-file"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("data"), "data\n").unwrap();
    std::fs::write(&file, "conf\n").unwrap();
    b.edit_config(|v| {
        v["mounts"] = serde_json::json!([
            bind("/ro-dir", &dir, &["rbind", "ro"]),
            bind("/ro-file", &file, &["bind", "ro"]),
        ])
    });
    // The mount points (the host would make them at start).
    let rootfs = b.path().join("rootfs");
    std::fs::create_dir(rootfs.join("ro-dir")).unwrap();
    std::fs::write(rootfs.join("ro-file"), "").unwrap();
    let before: Vec<_> = [&rootfs, &dir, &file].map(|p| snapshot(p)).into();

    let root = StateRoot::new();
    let report = attack_share(
        &root,
        &b,
        "share-write-ro,share-setuid,share-mknod,share-chown,share-xattr,share-symlink,share-hardlink,share-top-level",
        "read-only",
    );
    root.assert_clean(Duration::from_secs(5));
    all_refused(&report, |_| true);
    assert!(report.contains("append m1: "), "{report}");
    let after: Vec<_> = [&rootfs, &dir, &file].map(|p| snapshot(p)).into();
    assert!(
        before == after,
        "the host's files changed; report:\n{report}"
    );
    assert_eq!(std::fs::read_to_string(dir.join("data")).unwrap(), "data\n");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "conf\n");
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn nothing_is_made_outside_the_share_and_runvm_does_not_follow_the_guests_symlinks() {
    let b = share_bundle(runvm_tests::DOCKER_CAPS, false, serde_json::json!([]));
    // Next to the shared sources: files the guest must not reach.
    let (data, conf) = (b.path().join("data"), b.path().join("conf"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("file"), "data\n").unwrap();
    std::fs::write(&conf, "conf\n").unwrap();
    std::fs::write(b.path().join("secret"), "secret\n").unwrap();
    std::fs::write(b.path().join("passwd"), "leaked:x:0:0:leaked:/:/bin/sh\n").unwrap();
    b.edit_config(|v| {
        v["mounts"] = serde_json::json!([
            bind("/data", &data, &["rbind", "rw"]),
            bind("/conf", &conf, &["bind", "rw"]),
        ])
    });
    let listing = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let bundle_before = listing(b.path());
    let data_before = snapshot(&data);

    let root = StateRoot::new();
    let report = attack_share(
        &root,
        &b,
        "share-symlink,share-hardlink,share-top-level",
        "outside",
    );
    root.assert_clean(Duration::from_secs(5));
    let rootfs = b.path().join("rootfs");

    // Symlinks are made as they are: plain symlinks in the root, which the host never follows.
    assert_eq!(
        std::fs::read_link(rootfs.join("hostile-abs")).unwrap(),
        Path::new("/etc/shadow"),
        "{report}"
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("etc/passwd")).unwrap(),
        Path::new("../../passwd"),
        "{report}"
    );
    // Hard links cross no entry of the share: each file keeps its one name.
    all_refused(&report, |l| l.starts_with("link "));
    assert_eq!(snapshot(&data), data_before, "{report}");
    for f in [&conf, &rootfs.join("hostile-own")] {
        assert_eq!(f.metadata().unwrap().nlink(), 1, "{}", f.display());
    }
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "conf\n");
    // The share's top level is the host's to make: nothing is added, moved or replaced.
    all_refused(&report, |l| !attempt_path(l).contains('/'));
    assert!(report.contains("rename root: "), "{report}");
    assert_eq!(listing(b.path()), bundle_before, "{report}");
    assert!(rootfs.join("bin/busybox").is_file() && conf.is_file());

    // runvm reads the root's /etc/passwd (`ps` names users) inside the root: the guest's
    // symlink leads nowhere, not to the `passwd` next to the root.
    b.edit_config(|v| v["process"]["args"] = serde_json::json!(["sleep", "60"]));
    let pid = root.running(&b, "after");
    root.wait_for_guest_process("after", "sleep 60", Duration::from_secs(60));
    let table = stdout(&root.cmd(&["ps", "after"]));
    assert!(!table.contains("leaked"), "{table}");
    let row = table.lines().find(|l| l.ends_with(" sleep 60")).unwrap();
    assert_eq!(row.split_whitespace().nth(2), Some("0"), "{table}");
    let kill = root.cmd(&["kill", "after", "KILL"]);
    assert_eq!(code(&kill), 0, "kill: {}", stderr(&kill));
    assert_eq!(reap(pid, Duration::from_secs(30)), 137);
    let del = root.cmd(&["delete", "after"]);
    assert_eq!(code(&del), 0, "delete: {}", stderr(&del));
    root.assert_clean(Duration::from_secs(5));
}

/// The pids of the virtiofsd processes of `root`'s containers (virtiofsd serves from a
/// child in namespaces of its own).
fn virtiofsd_of(root: &StateRoot) -> Vec<i32> {
    root.processes()
        .iter()
        .filter(|p| p.contains("virtiofsd") && p.contains("--shared-dir"))
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect()
}

/// How many descriptors process `pid` has open.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The soft `RLIMIT_NOFILE` of process `pid`.
fn max_open_files(pid: i32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn an_open_flood_stays_in_virtiofsds_limit_and_disturbs_no_other_container() {
    let root = Arc::new(StateRoot::new());
    let b = share_bundle(runvm_tests::DOCKER_CAPS, false, serde_json::json!([]));
    let r = root.clone();
    let flood = std::thread::spawn(move || attack_share(&r, &b, "share-open-flood", "flood"));
    // virtiofsd opens a file for each of the guest's opens, up to its limit.
    let (pid, limit) = wait_for("virtiofsd to hold the flood's files", BOUND, || {
        let pid = virtiofsd_of(&root)
            .into_iter()
            .max_by_key(|p| open_fds(*p))?;
        (open_fds(pid) > 1000).then(|| (pid, max_open_files(pid)))
    });
    assert!(
        limit.is_some_and(|l| l <= 1 << 19),
        "virtiofsd {pid}: descriptor limit {limit:?}"
    );
    // Meanwhile another container runs as usual.
    let normal = Bundle::new(&["sh", "-c", "echo normal output"]);
    let out = root.run(&normal, "normal", b"");
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "normal output\n");
    // The flooded container stops as usual, its file still opens, nothing is left.
    let report = flood.join().unwrap();
    assert!(
        report.contains("open once more root/hostile-flood: ok"),
        "{report}"
    );
    root.assert_clean(Duration::from_secs(5));
}

/// The capability, `no_new_privs` and id lines of every thread of process `pid`: those
/// that show a privilege (a capability set that is not empty, `NoNewPrivs` not 1, ids
/// other than the monitor's own), as `tid name: line`, and how many threads were read.
fn privileged_threads(pid: i32) -> (Vec<String>, usize) {
    let mut found = Vec::new();
    let mut threads = 0;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the monitor's threads");
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        threads += 1;
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("")
            .trim()
            .to_string();
        let mut seen = 0;
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let bad = match key {
                "CapInh" | "CapPrm" | "CapEff" | "CapBnd" | "CapAmb" => {
                    seen += 1;
                    u64::from_str_radix(value, 16) != Ok(0)
                }
                "NoNewPrivs" => {
                    seen += 1;
                    value != "1"
                }
                // Its own uid and gid (runvm's MONITOR_ID_BASE, 0x7e000000, plus its
                // pid) as real, effective and saved ids, file-system ids 0: it signals no
                // host process, yet writes its root-owned files.
                "Uid" | "Gid" => {
                    seen += 1;
                    let own = (0x7e00_0000 + pid).to_string();
                    value.split_whitespace().collect::<Vec<_>>()
                        != [own.as_str(), own.as_str(), own.as_str(), "0"]
                }
                _ => false,
            };
            if bad {
                found.push(format!(
                    "{} {name}: {line}",
                    task.file_name().to_string_lossy()
                ));
            }
        }
        assert_eq!(seen, 8, "thread {name}: missing lines in {status}");
    }
    (found, threads)
}

/// What the descriptors of process `pid` point to, by number.
fn descriptors(pid: i32) -> BTreeMap<i32, String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the monitor's descriptors")
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Whether a descriptor's target is the guest's RAM file on its own huge-page tmpfs (an
/// unlinked file on a detached mount: `/#<inode> (deleted)`), not the 4 KiB memfd a
/// monitor falls back to when it cannot mount one.
fn is_guest_ram_on_its_tmpfs(target: &str) -> bool {
    target
        .strip_prefix("/#")
        .and_then(|t| t.strip_suffix(" (deleted)"))
        .is_some_and(|ino| !ino.is_empty() && ino.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a monitor's descriptor above 2 is one it may hold: KVM's, eventfds and the
/// like, sockets (vsock, API, virtiofsd), pipes (the guard's, virtiofsd's log), the
/// guest's memory, the TAP device, the terminal, copies of its stdio `stdio`, and
/// directories of its own state under `root`.
fn expected_descriptor(target: &str, root: &Path, stdio: &[&String]) -> bool {
    ["anon_inode:", "socket:[", "pipe:[", "/dev/pts/"]
        .iter()
        .any(|p| target.starts_with(p))
        || is_guest_ram_on_its_tmpfs(target)
        || stdio.iter().any(|s| s.as_str() == target)
        || ["/dev/kvm", "/dev/net/tun", "/dev/null", "/dev/ptmx"].contains(&target)
        || Path::new(target).starts_with(root)
}

/// The root of the monitor `pid` is not the host's: another file system, holding only
/// its procfs and the paths bound at their own places (the state root's first
/// directory, the cgroups under `/sys`, `/dev/kvm` alone in `/dev`, the guest's kernel
/// and initramfs), none of the host's files (`/etc`, `/usr`, `/bin`), and no way to
/// write a new file into it.
fn assert_root_is_not_the_hosts(root: &StateRoot, pid: i32) {
    let jail = PathBuf::from(format!("/proc/{pid}/root"));
    let (theirs, ours) = (
        std::fs::metadata(jail.join(".")).expect("the monitor's root"),
        std::fs::metadata("/").unwrap(),
    );
    assert_ne!(
        (theirs.dev(), theirs.ino()),
        (ours.dev(), ours.ino()),
        "the monitor's root is the host's"
    );
    let mut top: Vec<String> = std::fs::read_dir(&jail)
        .expect("the monitor's root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let state_top = root
        .path()
        .components()
        .nth(1)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap();
    let assets = ["RUNVM_KERNEL", "RUNVM_INITRAMFS"].map(|v| {
        std::env::var(v)
            .ok()
            .and_then(|p| {
                Path::new(&p)
                    .components()
                    .nth(1)
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
            })
            .unwrap_or_default()
    });
    let allowed = [
        "proc",
        "sys",
        "dev",
        state_top.as_str(),
        assets[0].as_str(),
        assets[1].as_str(),
    ];
    assert!(
        top.iter().all(|n| allowed.contains(&n.as_str())) && top.contains(&"proc".to_string()),
        "the monitor's root holds {top:?}, not only {allowed:?}"
    );
    for host in ["etc", "usr", "bin"] {
        assert!(
            !jail.join(host).exists() || allowed.contains(&host),
            "the host's /{host} is in the monitor's root"
        );
    }
    let devices: Vec<String> = std::fs::read_dir(jail.join("dev"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(devices, ["kvm"], "the devices in the monitor's root");
    // Read-only: the monitor cannot make a file in it (root, with every capability,
    // cannot either).
    let probe = jail.join("runvm-probe");
    assert!(
        std::fs::write(&probe, b"").is_err(),
        "the monitor's root is writable"
    );
}

/// `runvm create` whose monitor inherits a descriptor its caller leaked (not
/// close-on-exec, number 9) to the file `leak`.
fn create_with_leaked_descriptor(root: &StateRoot, b: &Bundle, id: &str, leak: &Path) -> i32 {
    let file = std::fs::File::create(leak).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let mut cmd = root.command(&[]);
    // SAFETY: dup2 is async-signal-safe; the copy (fd 9) is not close-on-exec, as a
    // caller's leaked descriptor would be.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::dup2(fd, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (out, pid) = create_with(cmd, b, id);
    drop(file);
    assert_eq!(code(&out), 0, "create: {}", stderr(&out));
    pid.expect("create wrote no pid file")
}

/// The running monitor `pid` of `id`: no thread keeps a capability or lacks
/// `no_new_privs`, it holds only descriptors it needs (not the leaked `leak`, KVM's, and
/// `/dev/net/tun` if `tap`); then exec, kill and delete still work and leave nothing.
fn assert_jailed_then_lifecycle(root: &StateRoot, id: &str, pid: i32, leak: &Path, tap: bool) {
    let (privileged, threads) = privileged_threads(pid);
    assert!(
        privileged.is_empty(),
        "threads of the monitor with privileges: {privileged:#?}"
    );
    // The main thread, the VMM's, its device and vCPU threads at least.
    assert!(threads >= 4, "only {threads} threads read");
    let fds = descriptors(pid);
    let shown = format!("{fds:#?}");
    assert!(
        !fds.values().any(|t| Path::new(t) == leak),
        "the monitor kept the descriptor its caller leaked: {shown}"
    );
    let stdio: Vec<&String> = (0..3).filter_map(|fd| fds.get(&fd)).collect();
    let unexpected: Vec<_> = fds
        .iter()
        .filter(|(fd, t)| **fd > 2 && !expected_descriptor(t, root.path(), &stdio))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected descriptors {unexpected:?} in {shown}"
    );
    assert!(fds.values().any(|t| t == "/dev/kvm"), "{shown}");
    // Made before the drop: a monitor without capabilities cannot mount it any more.
    assert!(
        fds.values().any(|t| is_guest_ram_on_its_tmpfs(t)),
        "the guest's RAM is not on its huge-page tmpfs: {shown}"
    );
    assert!(
        fds.values().any(|t| t.starts_with("anon_inode:kvm-vm")),
        "{shown}"
    );
    assert_eq!(fds.values().any(|t| t == "/dev/net/tun"), tap, "{shown}");
    assert_root_is_not_the_hosts(root, pid);

    // The unprivileged monitor still serves exec, kill and delete.
    let out = root.cmd(&["exec", id, "echo", "exec after the drop"]);
    assert_eq!(code(&out), 0, "exec: {}", stderr(&out));
    assert_eq!(stdout(&out), "exec after the drop\n");
    let out = root.cmd(&["kill", id, "KILL"]);
    assert_eq!(code(&out), 0, "kill: {}", stderr(&out));
    assert_eq!(reap(pid, BOUND), 137);
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn the_running_monitor_keeps_no_privilege_and_no_inherited_descriptor() {
    let root = StateRoot::new();
    let b = Bundle::new(&["sh", "-c", "echo up; exec sleep 600"]);
    let leak = b.path().join("leaked-descriptor");
    let pid = create_with_leaked_descriptor(&root, &b, "jailed", &leak);
    let out = root.cmd(&["start", "jailed"]);
    assert_eq!(code(&out), 0, "start: {}", stderr(&out));
    b.wait_for_stdout("up", Duration::from_secs(60));
    // A new namespace with loopback only: no TAP.
    assert_jailed_then_lifecycle(&root, "jailed", pid, &leak, false);
    let del = root.cmd(&["delete", "jailed"]);
    assert_eq!(code(&del), 0, "delete: {}", stderr(&del));
    root.assert_clean(Duration::from_secs(5));
}

/// A network namespace with a veth `eth0` (its peer on the host), removed on drop.
struct VethNamespace {
    name: String,
    peer: String,
}

impl VethNamespace {
    fn new() -> Self {
        let n = std::process::id() % 10_000;
        let (name, peer) = (format!("rvpriv-{n}"), format!("rvpv{n}"));
        let script = format!(
            "ip netns add {name} && ip -n {name} link set lo up && \
             ip link add {peer} type veth peer name rvpt{n} && ip link set {peer} up && \
             ip link set rvpt{n} netns {name} && ip -n {name} link set rvpt{n} name eth0 && \
             ip -n {name} addr add 10.213.0.2/24 dev eth0 && ip -n {name} link set eth0 up"
        );
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name, peer }
    }

    fn sh(&self, cmd: &str) -> String {
        let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What runvm changes in the namespace: its links, its qdiscs, its port range.
    fn plumbing(&self) -> String {
        let n = &self.name;
        self.sh(&format!(
            "ip -n {n} -o link | grep -o 'runvm-tap[0-9]*'; tc -n {n} qdisc show | grep ingress; \
             ip netns exec {n} cat /proc/sys/net/ipv4/ip_local_port_range"
        ))
    }
}

impl Drop for VethNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.peer])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask guest-test hostile`"]
fn a_monitor_with_a_network_keeps_no_privilege_and_its_guard_undoes_the_network() {
    let ns = VethNamespace::new();
    let before = ns.plumbing();
    let root = StateRoot::new();
    let b = Bundle::new(&["sh", "-c", "echo up; exec sleep 600"]);
    let path = format!("/run/netns/{}", ns.name);
    b.edit_config(|v| {
        for n in v["linux"]["namespaces"].as_array_mut().unwrap() {
            if n["type"] == "network" {
                n["path"] = path.clone().into();
            }
        }
    });
    let leak = b.path().join("leaked-descriptor");
    let pid = create_with_leaked_descriptor(&root, &b, "jailed-net", &leak);
    let out = root.cmd(&["start", "jailed-net"]);
    assert_eq!(code(&out), 0, "start: {}", stderr(&out));
    b.wait_for_stdout("up", Duration::from_secs(60));
    let running = ns.plumbing();
    assert!(
        running.contains("runvm-tap0") && running.contains("ingress"),
        "the network is not mirrored: {running}"
    );
    assert_jailed_then_lifecycle(&root, "jailed-net", pid, &leak, true);
    // The monitor could not undo its tc rules itself: its guard did, before it exited.
    assert_eq!(
        ns.plumbing(),
        before,
        "left in the namespace after the monitor's exit"
    );
    let del = root.cmd(&["delete", "jailed-net"]);
    assert_eq!(code(&del), 0, "delete: {}", stderr(&del));
    root.assert_clean(Duration::from_secs(5));
}

/// A guest that starts a member container (`--network container:`, a pod's container)
/// and then ignores its SIGKILL and its removal: the host ends the member itself within a
/// few seconds (its pid exits 137, its share is taken from the VM and its virtiofsd ends),
/// and the sandbox goes on.
#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn a_member_the_guest_will_not_stop_is_ended_by_the_host() {
    let root = StateRoot::new();
    let sandbox = tiny_bundle();
    let (out, pid) = create_with(hostile(&root, "ignore-members", &[]), &sandbox, "sandbox");
    assert_eq!(code(&out), 0, "create: {}", stderr(&out));
    let sandbox_pid = pid.unwrap();
    let out = root.cmd(&["start", "sandbox"]);
    assert_eq!(code(&out), 0, "start: {}", stderr(&out));

    let member = tiny_bundle();
    let file = member.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    for ns in config["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = serde_json::json!(format!("/proc/{sandbox_pid}/ns/net"));
        }
    }
    std::fs::write(&file, config.to_string()).unwrap();
    let (out, pid) = create_with(root.command(&[]), &member, "member");
    assert_eq!(code(&out), 0, "create: {}", stderr(&out));
    let member_pid = pid.unwrap();
    let out = root.cmd(&["start", "member"]);
    assert_eq!(code(&out), 0, "start: {}", stderr(&out));
    let member_dir = root.path().join("member").display().to_string();
    assert!(
        !processes_mentioning(&member_dir).is_empty(),
        "the member's virtiofsd serves it"
    );

    let t = Instant::now();
    assert_eq!(code(&root.cmd(&["kill", "member", "KILL"])), 0);
    assert_eq!(reap(member_pid, BOUND), 137);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(root.status("member"), "stopped");
    assert_eq!(code(&root.cmd(&["delete", "member"])), 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&member_dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(processes_mentioning(&member_dir), Vec::<String>::new());

    assert_eq!(root.status("sandbox"), "running");
    assert_eq!(code(&root.cmd(&["kill", "sandbox", "KILL"])), 0);
    assert_eq!(reap(sandbox_pid, BOUND), 137);
    assert_eq!(code(&root.cmd(&["delete", "sandbox"])), 0);
    root.assert_clean(Duration::from_secs(5));
}

//! Drives the real guest-init binary on this host, without a VM, in its host test mode
//! (`RUNVM_INIT_TEST=<dir>`): this test plays the host side of the protocol on Unix
//! sockets `<dir>/1024` and `<dir>/1025`, and the root filesystem is a busybox directory
//! in the directory standing in for the container's share (`<dir>/virtiofs/runvm/root`).
//! Init runs under `unshare -m`, so its mounts die with it; the workload still gets its
//! own PID, mount and UTS namespaces.
//!
//! Needs root, `unshare` and a static busybox (Debian's `busybox-static`, which
//! `cargo xtask test` installs); without them each test fails and says what is missing.

mod common;

use common::{accept, BUSYBOX};
use runvm_protocol::{
    read_frame, write_frame, Capabilities, ExitStatus, GuestMessage, HostMessage, IdMapping,
    LinuxSpec, MountSpec, ProcessSpec, Rlimit, RootfsSpec, StreamHeader, OUTPUT_STREAM_FD,
};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command};
use std::thread::JoinHandle;
use std::time::Duration;
use tempfile::TempDir;

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root".into());
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!("needs {BUSYBOX} (apt-get install busybox-static)"));
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        return Some("needs unshare (util-linux)".into());
    }
    None
}

/// A scratch directory with a busybox root filesystem; removed on drop.
fn scratch() -> TempDir {
    let scratch = common::busybox_scratch(
        &["proc", "sys", "dev", "tmp", "etc", "work"],
        &[
            "sh", "echo", "cat", "head", "ps", "sleep", "hostname", "kill", "true", "ls", "id",
            "wc", "mount", "grep", "cut", "stty", "tty", "readlink",
        ],
    );
    let root = common::root_dir(scratch.path());
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("bin/notexec"), "#!/bin/sh\n").unwrap();
    // Root's own, which another user cannot enter.
    std::fs::create_dir(root.join("private")).unwrap();
    std::fs::set_permissions(
        root.join("private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    scratch
}

#[derive(Debug)]
struct Outcome {
    started_pid: Option<i32>,
    start_failed: Option<(i32, String)>,
    exited: Option<ExitStatus>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    init_ok: bool,
}

fn spec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/bin:/bin".into(), "HOME=/root".into()],
        cwd: "/".into(),
        ..Default::default()
    }
}

/// Runs init once with `process`, feeding `stdin`; `after_start` may send control
/// messages once the workload runs.
fn run(process: ProcessSpec, stdin: &[u8], after_start: impl FnOnce(&mut UnixStream)) -> Outcome {
    run_with(process, LinuxSpec::default(), vec![], stdin, after_start)
}

/// [`run`] with the container's `linux.*` settings.
fn run_with(
    process: ProcessSpec,
    linux: LinuxSpec,
    mounts: Vec<MountSpec>,
    stdin: &[u8],
    after_start: impl FnOnce(&mut UnixStream),
) -> Outcome {
    let mut s = Session::launch(process, linux, mounts);
    let [mut s_in, s_out, s_err]: [UnixStream; 3] = std::mem::take(&mut s.main)
        .try_into()
        .expect("three streams");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = s_in.write_all(&input);
        let _ = s_in.shutdown(Shutdown::Write);
        s_in // keep it open until joined
    });
    let reader = |mut s: UnixStream| -> JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            v
        })
    };
    let (out_t, err_t) = (reader(s_out), reader(s_err));

    let mut o = Outcome {
        started_pid: None,
        start_failed: None,
        exited: None,
        stdout: vec![],
        stderr: vec![],
        init_ok: false,
    };
    match s.recv() {
        GuestMessage::Started { process: 0, pid } => {
            o.started_pid = Some(pid);
            after_start(&mut s.ctl);
            match s.recv() {
                GuestMessage::Exited {
                    process: 0, status, ..
                } => o.exited = Some(status),
                m => panic!("expected Exited, got {m:?}"),
            }
        }
        GuestMessage::StartFailed {
            process: 0,
            code,
            message,
        } => o.start_failed = Some((code, message)),
        m => panic!("expected Started, got {m:?}"),
    }
    // The protocol promises the streams are at EOF before Exited/StartFailed.
    o.stdout = out_t.join().unwrap();
    o.stderr = err_t.join().unwrap();
    drop(writer.join().unwrap());
    o.init_ok = s.shutdown().success();

    // Nothing left behind: no workload process (and, checked by shutdown, no mounts).
    if let Some(pid) = o.started_pid {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "workload pid {pid} still exists"
        );
    }
    o
}

macro_rules! require_root {
    () => {
        if let Some(why) = skip_reason() {
            panic!("this test {why}; `cargo xtask test` (as root) sets everything up");
        }
    };
}

#[test]
fn echo_reaches_stdout_and_exits_0() {
    require_root!();
    let o = run(spec(&["echo", "hi"]), b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    assert_eq!(o.stdout, b"hi\n");
    assert!(o.stderr.is_empty());
    assert!(o.init_ok);
}

#[test]
fn exit_code_is_reported() {
    require_root!();
    let o = run(spec(&["sh", "-c", "echo oops >&2; exit 42"]), b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(42)));
    assert_eq!(o.stderr, b"oops\n");
}

#[test]
fn shared_output_is_one_pipe_in_write_order() {
    require_root!();
    let script = "i=0; while [ $i -lt 200 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done";
    let mut p = spec(&["sh", "-c", script]);
    p.shared_output = true;
    let o = run(p, b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    let want: String = (0..200).map(|i| format!("out{i}\nerr{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&o.stdout), want);
    assert!(o.stderr.is_empty());
}

#[test]
fn init_relays_at_nice_minus_20_once_stdout_and_stderr_mix_and_forks_at_0() {
    require_root!();
    let mut s = Session::start(spec(&[
        "sh",
        "-c",
        "echo out; sleep 1; echo err >&2; sleep 100",
    ]));
    let init = nix::sys::socket::getsockopt(&s.ctl, nix::sys::socket::sockopt::PeerCredentials)
        .unwrap()
        .pid();
    // Field 19 of /proc/PID/stat is the nice value.
    let nice = |pid: String| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.split(' ').nth(18).unwrap().to_string()
    };
    let [_, mut out, mut err]: [UnixStream; 3] = std::mem::take(&mut s.main).try_into().unwrap();
    let mut line = [0u8; 4];
    out.read_exact(&mut line).unwrap();
    assert_eq!(
        nice(init.to_string()),
        nice("self".into()),
        "stdout alone: init gathers at its own nice value (0 in the VM)"
    );
    err.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"err\n");
    assert_eq!(
        nice(init.to_string()),
        "-20",
        "stdout and stderr: init reads each write"
    );
    // What init forks starts at nice 0 (SCHED_RESET_ON_FORK).
    let streams = s.exec(1, spec(&["sh", "-c", "cut -d' ' -f19 /proc/self/stat"]));
    assert_eq!(read_all(streams.into_iter().nth(1).unwrap()), b"0\n");
    assert_eq!(s.exit_of(1), ExitStatus::Exited(0));
    s.end_by_sigkill();
}

#[test]
fn pid1_ignores_term_without_handler_and_dies_by_kill() {
    require_root!();
    let o = run(spec(&["sleep", "100"]), b"", |ctl| {
        write_frame(
            ctl,
            &HostMessage::Signal {
                process: 0,
                signal: 15,
            },
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        write_frame(
            ctl,
            &HostMessage::Signal {
                process: 0,
                signal: 9,
            },
        )
        .unwrap();
    });
    assert_eq!(o.exited, Some(ExitStatus::Signaled(9)));
}

#[test]
fn term_with_a_handler_is_delivered() {
    require_root!();
    let o = run(
        spec(&[
            "sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.05; done",
        ]),
        b"",
        |ctl| {
            std::thread::sleep(Duration::from_millis(300));
            write_frame(
                ctl,
                &HostMessage::Signal {
                    process: 0,
                    signal: 15,
                },
            )
            .unwrap();
        },
    );
    assert_eq!(o.exited, Some(ExitStatus::Exited(3)), "{o:?}");
    assert_eq!(o.stdout, b"ready\ngot-term\n");
}

#[test]
fn self_kill_of_pid1_is_ignored_like_runc() {
    require_root!();
    // Inside its PID namespace the workload is PID 1: the kernel drops SIGKILL sent to it
    // from inside the namespace, exactly as under runc.
    let o = run(
        spec(&["sh", "-c", "kill -9 $$; echo survived"]),
        b"",
        |_| {},
    );
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)));
    assert_eq!(o.stdout, b"survived\n");
}

#[test]
fn one_mebibyte_of_output_arrives_whole() {
    require_root!();
    let o = run(spec(&["head", "-c", "1048576", "/dev/zero"]), b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)));
    assert_eq!(o.stdout.len(), 1 << 20);
    assert!(o.stdout.iter().all(|b| *b == 0));
}

#[test]
fn stdin_is_relayed_until_eof() {
    require_root!();
    let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let o = run(spec(&["cat"]), &input, |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)));
    assert_eq!(o.stdout, input);
}

#[test]
fn a_null_stdin_is_the_containers_dev_null_not_the_stream() {
    require_root!();
    // `docker run` without `-i`: the host's stdin is /dev/null; whatever the stream
    // carries never reaches the process.
    let mut p = spec(&["sh", "-c", "readlink /proc/self/fd/0; cat; echo end"]);
    p.stdin_null = true;
    let o = run(p, b"not for the process\n", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/dev/null\nend\n");
    // Without it, stdin is the stream's pipe.
    let o = run(
        spec(&["sh", "-c", "readlink /proc/self/fd/0; cat"]),
        b"in\n",
        |_| {},
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("pipe:[") && out.ends_with("]\nin\n"),
        "{out:?}"
    );
}

#[test]
fn ps_shows_only_the_workload() {
    require_root!();
    let o = run(spec(&["ps", "-e"]), b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[1].trim_start().starts_with("1 "), "{out}");
}

#[test]
fn container_view_pipes_hostname_and_mounts() {
    require_root!();
    let script = "echo to-dev-stdout > /dev/stdout; hostname; pwd; \
                  ls /dev/pts/ptmx /dev/shm /dev/mqueue /sys/fs/cgroup/cgroup.controllers >/dev/null && echo mounts-ok; \
                  ls /proc/self/fd | wc -l";
    let mut p = spec(&["sh", "-c", script]);
    p.cwd = "/work".into();
    let o = run(p, b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    // ls sees 0, 1, 2 and its own directory fd: nothing of init leaks in.
    assert_eq!(
        out, "to-dev-stdout\ntestbox\n/work\nmounts-ok\n4\n",
        "stderr: {err}"
    );
}

#[test]
fn user_and_groups_are_applied() {
    require_root!();
    let mut p = spec(&["id"]);
    p.uid = 1000;
    p.gid = 1001;
    p.additional_gids = vec![1002, 1003];
    let o = run(p, b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "uid=1000 gid=1001 groups=1002,1003\n"
    );
}

#[test]
fn missing_command_is_start_failed_127() {
    require_root!();
    let o = run(spec(&["nosuchcmd"]), b"", |_| {});
    assert_eq!(
        o.start_failed,
        Some((
            127,
            r#"exec: "nosuchcmd": executable file not found in $PATH"#.to_string()
        ))
    );
    assert!(!o.init_ok);
}

#[test]
fn not_executable_is_start_failed_126() {
    require_root!();
    let o = run(spec(&["/bin/notexec"]), b"", |_| {});
    assert_eq!(o.start_failed.as_ref().map(|f| f.0), Some(126), "{o:?}");
}

#[test]
fn a_cwd_only_root_can_enter_is_entered_before_the_user_switch_as_runc_does() {
    require_root!();
    let mut p = spec(&[
        "sh",
        "-c",
        "pwd; id -u; ls . 2>/dev/null || echo cannot-list",
    ]);
    p.uid = 1000;
    p.gid = 1000;
    p.cwd = "/private".into();
    let o = run(p, b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "/private\n1000\ncannot-list\n"
    );
}

#[test]
fn missing_cwd_is_start_failed_1() {
    require_root!();
    let mut p = spec(&["true"]);
    p.cwd = "/does/not/exist".into();
    let o = run(p, b"", |_| {});
    let (code, msg) = o.start_failed.unwrap();
    assert_eq!(code, 1);
    assert!(msg.contains("chdir to cwd"), "{msg}");
}

/// A running init that was sent `Run`, for tests that talk to it step by step.
struct Session {
    scratch: TempDir,
    child: Child,
    ctl: UnixStream,
    streams: UnixListener,
    /// The main process's streams, by fd (one with a terminal).
    main: Vec<UnixStream>,
}

impl Session {
    /// Starts init, sends `Run` with `process`, `linux` and `mounts`, and accepts the main
    /// process's streams.
    fn launch(process: ProcessSpec, linux: LinuxSpec, mounts: Vec<MountSpec>) -> Self {
        let scratch = scratch();
        let ctl_l = UnixListener::bind(scratch.path().join("1024")).unwrap();
        let streams = UnixListener::bind(scratch.path().join("1025")).unwrap();
        // Own IPC and network namespaces too (the VM has its own kernel), so that sysctl
        // tests do not change this host.
        let mut child = common::init_command(scratch.path(), &["--ipc", "--net"])
            .env("RUNVM_INIT_DEBUG", "1")
            .spawn()
            .unwrap();
        let mut ctl = accept(&ctl_l, &mut child);
        common::expect_hello(&mut ctl);
        let terminal = process.terminal;
        write_frame(
            &mut ctl,
            &HostMessage::Run {
                rootfs: RootfsSpec::default(),
                hostname: Some("testbox".into()),
                process,
                linux,
                mounts,
                network: Default::default(),
            },
        )
        .unwrap();
        let mut s = Self {
            scratch,
            child,
            ctl,
            streams,
            main: vec![],
        };
        s.main = s.accept_streams(0, terminal);
        s
    }

    /// [`Session::launch`] with default `linux` and no mounts, up to `Started`.
    fn start(process: ProcessSpec) -> Self {
        let mut s = Self::launch(process, LinuxSpec::default(), vec![]);
        match s.recv() {
            GuestMessage::Started { process: 0, .. } => {}
            m => panic!("expected Started, got {m:?}"),
        }
        s
    }

    fn recv(&mut self) -> GuestMessage {
        read_frame(&mut self.ctl).unwrap()
    }

    fn send(&mut self, m: &HostMessage) {
        write_frame(&mut self.ctl, m).unwrap();
    }

    /// Accepts the streams of `process`: stdin, stdout and stderr (split from the output
    /// stream), or the terminal's.
    fn accept_streams(&mut self, process: u32, terminal: bool) -> Vec<UnixStream> {
        let mut got: [Option<UnixStream>; 2] = [None, None];
        for _ in 0..if terminal { 1 } else { 2 } {
            let mut s = accept(&self.streams, &mut self.child);
            let h: StreamHeader = read_frame(&mut s).unwrap();
            assert_eq!(h.process, process);
            let i = match h.fd {
                0 => 0,
                OUTPUT_STREAM_FD if !terminal => 1,
                fd => panic!("unexpected stream fd {fd}"),
            };
            assert!(got[i].is_none(), "stream {} opened twice", h.fd);
            got[i] = Some(s);
        }
        let [stdin, output] = got;
        let mut streams = vec![stdin.unwrap()];
        if let Some(output) = output {
            let (stdout, stderr) = common::split_output(output);
            streams.extend([stdout, stderr]);
        }
        streams
    }

    /// Sends `Exec`, expects `Started`, and returns the new process's streams.
    fn exec(&mut self, process: u32, spec: ProcessSpec) -> Vec<UnixStream> {
        let terminal = spec.terminal;
        self.send(&HostMessage::Exec {
            process,
            spec,
            container: runvm_protocol::MAIN_CONTAINER,
        });
        match self.recv() {
            GuestMessage::Started { process: p, .. } if p == process => {}
            m => panic!("expected Started for {process}, got {m:?}"),
        }
        self.accept_streams(process, terminal)
    }

    /// The status of the next message, which must be `Exited` of `process`.
    fn exit_of(&mut self, process: u32) -> ExitStatus {
        match self.recv() {
            GuestMessage::Exited {
                process: p, status, ..
            } if p == process => status,
            m => panic!("expected Exited of {process}, got {m:?}"),
        }
    }

    /// Reads `Exited` messages until the main process's; returns them all in order.
    fn exits_until_main(&mut self) -> Vec<(u32, ExitStatus)> {
        common::exits_until_main(&mut self.ctl)
    }

    /// SIGKILLs the main process (with no other process left), expects its exit, and
    /// shuts init down cleanly.
    fn end_by_sigkill(mut self) {
        self.send(&HostMessage::Signal {
            process: 0,
            signal: 9,
        });
        assert_eq!(self.exits_until_main(), vec![(0, ExitStatus::Signaled(9))]);
        assert!(self.shutdown().success());
    }

    /// Sends `Shutdown`, waits for init to exit, checks that none of its mounts is left,
    /// and returns how it exited.
    fn shutdown(mut self) -> std::process::ExitStatus {
        self.send(&HostMessage::Shutdown);
        let status = common::wait_for_exit(&mut self.child);
        common::assert_no_mounts_under(self.scratch.path());
        status
    }
}

fn read_all(mut s: UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    v
}

/// Reads from a terminal stream until `want` has appeared (or panics after TIMEOUT).
fn read_until(s: &mut UnixStream, want: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(want) {
        let n = s.read(&mut buf).expect("terminal read");
        assert!(
            n > 0,
            "terminal ended before {want:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn terminal_is_a_pty_of_the_container_with_the_given_size() {
    require_root!();
    let mut p = spec(&["sh", "-c", "stty size; tty; exit 3"]);
    p.terminal = true;
    p.console_size = Some(runvm_protocol::WindowSize {
        rows: 30,
        cols: 100,
    });
    let mut s = Session::start(p);
    let out = String::from_utf8_lossy(&read_all(s.main.remove(0))).into_owned();
    assert!(out.contains("30 100"), "{out:?}");
    assert!(out.contains("/dev/pts/0"), "{out:?}");
    assert_eq!(s.exits_until_main(), vec![(0, ExitStatus::Exited(3))]);
    assert!(s.shutdown().success());
}

#[test]
fn terminal_input_resize_and_interrupt() {
    require_root!();
    let mut p = spec(&["sh"]);
    p.terminal = true;
    let mut s = Session::start(p);
    let mut t = s.main.remove(0);
    t.write_all(b"echo he''llo\n").unwrap();
    read_until(&mut t, "hello");
    s.send(&HostMessage::Resize {
        process: 0,
        rows: 12,
        cols: 34,
    });
    std::thread::sleep(Duration::from_millis(100));
    t.write_all(b"stty size\n").unwrap();
    read_until(&mut t, "12 34");
    // ^C interrupts a foreground sleep; the shell goes on.
    t.write_all(b"sleep 100\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    t.write_all(b"\x03").unwrap();
    t.write_all(b"echo af''ter $?\n").unwrap();
    read_until(&mut t, "after 130");
    t.write_all(b"exit 7\n").unwrap();
    let _ = read_all(t);
    assert_eq!(s.exits_until_main(), vec![(0, ExitStatus::Exited(7))]);
    assert!(s.shutdown().success());
}

#[test]
fn exec_joins_the_container_and_reports_its_exit() {
    require_root!();
    let mut s = Session::start(spec(&["sleep", "100"]));
    let mut e = spec(&[
        "sh",
        "-c",
        "hostname; ps -o pid,args; read x; echo got $x >&2; exit 5",
    ]);
    e.cwd = "/work".into();
    let mut streams = s.exec(1, e).into_iter();
    let (mut sin, sout, serr) = (
        streams.next().unwrap(),
        streams.next().unwrap(),
        streams.next().unwrap(),
    );
    sin.write_all(b"input\n").unwrap();
    sin.shutdown(Shutdown::Write).unwrap();
    let out = String::from_utf8_lossy(&read_all(sout)).into_owned();
    let err = read_all(serr);
    assert!(out.starts_with("testbox\n"), "{out:?}");
    assert!(
        out.lines().any(|l| l.trim() == "1 sleep 100"),
        "the main process is PID 1 in the exec's PID namespace: {out:?}"
    );
    assert_eq!(err, b"got input\n");
    assert_eq!(s.exit_of(1), ExitStatus::Exited(5));
    s.end_by_sigkill();
}

#[test]
fn a_user_namespace_maps_the_containers_ids_and_exec_joins_it() {
    require_root!();
    let map = |host_id| {
        vec![IdMapping {
            container_id: 0,
            host_id,
            size: 65_536,
        }]
    };
    let linux = LinuxSpec {
        uid_mappings: map(100_000),
        gid_mappings: map(200_000),
        ..LinuxSpec::default()
    };
    let mut s = Session::launch(spec(&["sleep", "100"]), linux, vec![]);
    match s.recv() {
        GuestMessage::Started { process: 0, .. } => {}
        m => panic!("expected Started, got {m:?}"),
    }
    // As Docker's userns-remap leaves an image: owned by the container's root.
    let work = common::root_dir(s.scratch.path()).join("work");
    std::os::unix::fs::chown(&work, Some(100_000), Some(200_000)).unwrap();
    let streams = s.exec(
        1,
        spec(&[
            "sh",
            "-c",
            "cat /proc/1/uid_map /proc/self/uid_map /proc/self/gid_map; id -u; id -g; \
             touch /work/made; echo x >> /etc/passwd || echo host-root-file-denied; \
             mkdir /work/m && mount -t tmpfs none /work/m && echo mounted; \
             hostname inside && hostname",
        ]),
    );
    let out = read_all(streams.into_iter().nth(1).unwrap());
    let words: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        words,
        [
            "0 100000 65536",
            "0 100000 65536",
            "0 200000 65536",
            "0",
            "0",
            "host-root-file-denied",
            "mounted",
            "inside"
        ]
    );
    assert_eq!(s.exit_of(1), ExitStatus::Exited(0));
    // What the container's root made is the mapped ids' on the host.
    let made = std::fs::metadata(work.join("made")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((made.uid(), made.gid()), (100_000, 200_000));
    // A terminal is the container user's, as runc's console is (not the guest root's,
    // which the namespace shows as 65534).
    let mut t = spec(&[
        "sh",
        "-c",
        "ls -lnL /proc/self/fd/0 | tr -s ' ' | cut -d' ' -f3",
    ]);
    t.terminal = true;
    let tty = s.exec(2, t).into_iter().next().unwrap();
    let owner = String::from_utf8_lossy(&read_all(tty)).trim().to_string();
    assert_eq!(owner, "0");
    assert_eq!(s.exit_of(2), ExitStatus::Exited(0));
    s.end_by_sigkill();
}

#[test]
fn exec_failures_and_signals_and_death_with_the_main_process() {
    require_root!();
    let mut s = Session::start(spec(&["sleep", "100"]));
    s.send(&HostMessage::Exec {
        process: 1,
        spec: spec(&["nosuchcmd"]),
        container: runvm_protocol::MAIN_CONTAINER,
    });
    match s.recv() {
        GuestMessage::StartFailed {
            process: 1,
            code,
            message,
        } => {
            assert_eq!(code, 127);
            assert!(message.contains("executable file not found"), "{message}");
        }
        m => panic!("expected StartFailed, got {m:?}"),
    }
    // A handler gets the signal sent to an exec'd process.
    let st = s.exec(
        2,
        spec(&[
            "sh",
            "-c",
            "trap 'echo term; exit 9' TERM; echo ready; while :; do sleep 1; done",
        ]),
    );
    let mut out2 = st.into_iter().nth(1).unwrap();
    let mut b = [0u8; 6];
    out2.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ready\n");
    s.send(&HostMessage::Signal {
        process: 2,
        signal: 15,
    });
    assert_eq!(read_all(out2), b"term\n");
    assert_eq!(s.exit_of(2), ExitStatus::Exited(9));
    // An exec'd process dies with the main process (its PID namespace).
    let _st3 = s.exec(3, spec(&["sleep", "100"]));
    let mut t = spec(&["sh", "-c", "tty"]);
    t.terminal = true;
    let mut tty = s.exec(4, t).remove(0);
    read_until(&mut tty, "/dev/pts/");
    assert_eq!(s.exit_of(4), ExitStatus::Exited(0));
    s.send(&HostMessage::Signal {
        process: 0,
        signal: 9,
    });
    assert_eq!(
        s.exits_until_main(),
        vec![(3, ExitStatus::Signaled(9)), (0, ExitStatus::Signaled(9))]
    );
    assert!(s.shutdown().success());
}

#[test]
fn rlimits_are_applied() {
    require_root!();
    let mut p = spec(&["sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c"]);
    p.rlimits = vec![
        Rlimit {
            kind: "RLIMIT_NOFILE".into(),
            soft: 123,
            hard: 456,
        },
        Rlimit {
            kind: "RLIMIT_CORE".into(),
            soft: 0,
            hard: 0,
        },
    ];
    let o = run(p, b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "123\n456\n0\n");
}

#[test]
fn unknown_rlimit_is_start_failed_naming_it() {
    require_root!();
    let mut p = spec(&["true"]);
    p.rlimits = vec![Rlimit {
        kind: "RLIMIT_BOGUS".into(),
        soft: 1,
        hard: 1,
    }];
    let o = run(p, b"", |_| {});
    let (code, msg) = o.start_failed.unwrap();
    assert_eq!(code, 1);
    assert!(msg.contains("RLIMIT_BOGUS"), "{msg}");
}

#[test]
fn no_new_privileges_and_oom_score_adj_are_applied() {
    require_root!();
    let script = "grep NoNewPrivs: /proc/self/status; cat /proc/self/oom_score_adj";
    let mut p = spec(&["sh", "-c", script]);
    p.no_new_privileges = true;
    // Positive: lowering it needs CAP_SYS_RESOURCE, which this test host may lack.
    p.oom_score_adj = Some(321);
    let o = run(p, b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "NoNewPrivs:\t1\n321\n");
    // Without them, the defaults stay.
    let o = run(spec(&["sh", "-c", script]), b"", |_| {});
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.starts_with("NoNewPrivs:\t0\n"), "{out}");
}

fn caps(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

const SHOW_CAPS: &str = "grep ^Cap /proc/self/status";

#[test]
fn capabilities_of_root_are_limited_to_the_spec() {
    require_root!();
    let mut p = spec(&["sh", "-c", SHOW_CAPS]);
    let two = caps(&["CAP_CHOWN", "CAP_KILL"]);
    p.capabilities = Some(Capabilities {
        bounding: two.clone(),
        effective: two.clone(),
        permitted: two,
        ..Default::default()
    });
    let o = run(p, b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "CapInh:\t0000000000000000\nCapPrm:\t0000000000000021\nCapEff:\t0000000000000021\n\
         CapBnd:\t0000000000000021\nCapAmb:\t0000000000000000\n"
    );
}

#[test]
fn ambient_capabilities_survive_the_uid_switch_and_exec() {
    require_root!();
    let mut p = spec(&["sh", "-c", SHOW_CAPS]);
    p.uid = 1000;
    p.gid = 1000;
    let two = caps(&["CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    p.capabilities = Some(Capabilities {
        bounding: two.clone(),
        effective: two.clone(),
        permitted: two.clone(),
        inheritable: two,
        ambient: caps(&["CAP_KILL"]),
    });
    let o = run(p, b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    // After execve by a non-root user only the ambient set stays effective.
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "CapInh:\t0000000000000420\nCapPrm:\t0000000000000020\nCapEff:\t0000000000000020\n\
         CapBnd:\t0000000000000420\nCapAmb:\t0000000000000020\n"
    );
}

#[test]
fn unknown_capability_is_start_failed_naming_it() {
    require_root!();
    let mut p = spec(&["true"]);
    p.capabilities = Some(Capabilities {
        bounding: caps(&["CAP_KILL", "CAP_NOT_A_THING"]),
        ..Default::default()
    });
    let o = run(p, b"", |_| {});
    let (code, msg) = o.start_failed.unwrap();
    assert_eq!(code, 1);
    assert!(msg.contains("CAP_NOT_A_THING"), "{msg}");
}

#[test]
fn sysctls_are_written_in_the_container() {
    require_root!();
    let linux = LinuxSpec {
        sysctl: [
            ("kernel.shmmax".to_string(), "123456789".to_string()),
            ("net.ipv4.ip_forward".to_string(), "1".to_string()),
        ]
        .into(),
        ..Default::default()
    };
    let p = spec(&[
        "cat",
        "/proc/sys/kernel/shmmax",
        "/proc/sys/net/ipv4/ip_forward",
    ]);
    let o = run_with(p, linux, vec![], b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "123456789\n1\n");
}

#[test]
fn masked_paths_read_empty_and_missing_ones_are_skipped() {
    require_root!();
    let linux = LinuxSpec {
        masked_paths: vec!["/etc/passwd".into(), "/proc/sys".into(), "/nope".into()],
        ..Default::default()
    };
    let script = "wc -c < /etc/passwd; ls /proc/sys | wc -l; \
                  echo x > /proc/sys/f 2>/dev/null && echo writable || echo refused";
    let o = run_with(spec(&["sh", "-c", script]), linux, vec![], b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "0\n0\nrefused\n");
}

#[test]
fn linux_devices_are_made_with_their_type_numbers_mode_and_owner() {
    require_root!();
    let dev = |path: &str, kind, major, minor, mode, uid| runvm_protocol::DeviceSpec {
        path: path.into(),
        kind,
        major,
        minor,
        mode,
        uid,
        gid: uid + 1,
    };
    let linux = LinuxSpec {
        devices: vec![
            dev("/dev/test1", 'c', 10, 229, 0o666, 0),
            dev("/dev/sub/test2", 'b', 8, 3, 0o640, 1000),
            dev("/dev/test3", 'p', 0, 0, 0o600, 0),
        ],
        ..Default::default()
    };
    let script = "busybox stat -c '%n %F %t:%T %a %u:%g' /dev/test1 /dev/sub/test2 /dev/test3";
    let o = run_with(spec(&["sh", "-c", script]), linux, vec![], b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "/dev/test1 character special file a:e5 666 0:1\n\
         /dev/sub/test2 block special file 8:3 640 1000:1001\n\
         /dev/test3 fifo 0:0 600 0:1\n"
    );
}

#[test]
fn readonly_paths_refuse_writes_and_keep_their_flags() {
    require_root!();
    let linux = LinuxSpec {
        readonly_paths: vec!["/tmp".into(), "/proc/sys".into(), "/nope".into()],
        ..Default::default()
    };
    let script = "echo x > /tmp/f 2>/dev/null && echo writable || echo refused; \
                  echo x > /work/f && echo work-writable; \
                  grep ' /proc/sys ' /proc/mounts | cut -d' ' -f4";
    let o = run_with(spec(&["sh", "-c", script]), linux, vec![], b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["refused", "work-writable"], "{out}");
    let opts: Vec<&str> = lines[2].split(',').collect();
    for o in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(opts.contains(&o), "{out}");
    }
}

fn mnt(dest: &str, fstype: &str, options: &str) -> MountSpec {
    MountSpec {
        destination: dest.into(),
        fstype: fstype.into(),
        source: fstype.into(),
        options: options
            .split(',')
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect(),
        ..Default::default()
    }
}

/// What Docker puts in `mounts` (less its bind mounts), plus a sized tmpfs.
fn docker_mounts() -> Vec<MountSpec> {
    vec![
        mnt("/proc", "proc", "nosuid,noexec,nodev"),
        mnt("/dev", "tmpfs", "nosuid,strictatime,mode=755,size=65536k"),
        mnt(
            "/dev/pts",
            "devpts",
            "nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5",
        ),
        mnt("/sys", "sysfs", "nosuid,noexec,nodev,ro"),
        mnt("/sys/fs/cgroup", "cgroup", "ro,nosuid,noexec,nodev"),
        mnt("/dev/mqueue", "mqueue", "nosuid,noexec,nodev"),
        mnt(
            "/dev/shm",
            "tmpfs",
            "noexec,nosuid,nodev,mode=1777,size=67108864",
        ),
        mnt("/work/scratch", "tmpfs", "nosuid,nodev,size=1m,mode=1770"),
    ]
}

#[test]
fn spec_mounts_are_made_with_their_options() {
    require_root!();
    let script =
        "grep -E ' /(work/scratch|sys|dev/shm|sys/fs/cgroup) ' /proc/mounts | cut -d' ' -f2-4; \
                  ls /dev/null /dev/pts/ptmx /dev/mqueue >/dev/null && echo dev-ok";
    let o = run_with(
        spec(&["sh", "-c", script]),
        LinuxSpec::default(),
        docker_mounts(),
        b"",
        |_| {},
    );
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&"/sys sysfs ro,nosuid,nodev,noexec,relatime"),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("/sys/fs/cgroup cgroup2 ro,nosuid,nodev,noexec")),
        "{out}"
    );
    assert!(
        lines.contains(&"/dev/shm tmpfs rw,nosuid,nodev,noexec,relatime,size=65536k"),
        "{out}"
    );
    assert!(
        lines.contains(&"/work/scratch tmpfs rw,nosuid,nodev,relatime,size=1024k,mode=1770"),
        "{out}"
    );
    assert_eq!(lines.last(), Some(&"dev-ok"), "{out}");
}

#[test]
fn a_bind_option_on_another_mount_type_is_refused() {
    require_root!();
    let mut m = docker_mounts();
    m.push(mnt("/data", "tmpfs", "rbind"));
    let o = run_with(spec(&["true"]), LinuxSpec::default(), m, b"", |_| {});
    let (code, msg) = o.start_failed.unwrap();
    assert_eq!(code, 1);
    assert!(
        msg.contains("/data") && msg.contains("\"tmpfs\" with a bind option"),
        "{msg}"
    );
}

/// Everything a default `docker run` config asks for (less its bind mounts), together.
#[test]
fn docker_default_settings_apply_together() {
    require_root!();
    let docker_caps = caps(&[
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ]);
    let mut p = spec(&[
        "sh",
        "-c",
        "grep -E '^Cap(Eff|Bnd)' /proc/self/status; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; \
         wc -c < /proc/timer_list; ls /sys/firmware | wc -l; \
         echo 1 > /proc/sys/net/ipv4/ip_forward 2>/dev/null && echo writable || echo refused; \
         set -- $(ps -e -o pid); echo $#",
    ]);
    p.capabilities = Some(Capabilities {
        bounding: docker_caps.clone(),
        effective: docker_caps.clone(),
        permitted: docker_caps,
        ..Default::default()
    });
    // Docker asks for 1048576; this test host may not allow raising the hard limit.
    p.rlimits = vec![Rlimit {
        kind: "RLIMIT_NOFILE".into(),
        soft: 1024,
        hard: 1024,
    }];
    let linux = LinuxSpec {
        sysctl: [(
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "0".to_string(),
        )]
        .into(),
        masked_paths: [
            "/proc/asound",
            "/proc/acpi",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware",
            "/sys/devices/virtual/powercap",
        ]
        .map(String::from)
        .to_vec(),
        readonly_paths: [
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let o = run_with(p, linux, docker_mounts(), b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        // ps -e: its header, sh and ps; nothing of init. (Not `ps | wc -l`: wc may not
        // exist yet when ps reads /proc.)
        "CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\n0\n0\n0\nrefused\n3\n",
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn home_comes_from_passwd_and_umask_from_the_spec() {
    require_root!();
    let script = "echo $HOME; umask; busybox touch /tmp/f; busybox stat -c %a /tmp/f";
    let mut p = spec(&["sh", "-c", script]);
    p.env = vec!["PATH=/usr/bin:/bin".into()];
    let o = run(p.clone(), b"", |_| {});
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/root\n0022\n644\n");
    p.umask = Some(0o077);
    let o = run(p.clone(), b"", |_| {});
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/root\n0077\n600\n");
    // A uid without a passwd entry gets "/".
    let mut q = spec(&["sh", "-c", "echo $HOME"]);
    q.env = vec!["PATH=/usr/bin:/bin".into()];
    q.uid = 4242;
    let o = run(q, b"", |_| {});
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/\n");
    // A HOME in the spec is kept.
    p.env.push("HOME=/work".into());
    let o = run(p, b"", |_| {});
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("/work\n"));
}

/// A filter for x86_64 that fails `mkdir` with EPERM (or kills, with `kill`) and allows
/// everything else; another architecture is killed.
fn deny_mkdir(kill: bool) -> runvm_protocol::SeccompProgram {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let ret = if kill { 0 } else { 0x0005_0000 | 1 };
    // (code, jt, jf, k): ld arch; jeq x86_64; kill; ld nr; jeq mkdir; ret; ret allow.
    let insns: [(u16, u8, u8, u32); 7] = [
        (0x20, 0, 0, 4),
        (0x15, 1, 0, AUDIT_ARCH_X86_64),
        (0x06, 0, 0, 0),
        (0x20, 0, 0, 0),
        (0x15, 0, 1, libc::SYS_mkdir as u32),
        (0x06, 0, 0, ret),
        (0x06, 0, 0, 0x7fff_0000),
    ];
    let mut filter = Vec::new();
    for (code, jt, jf, k) in insns {
        filter.extend_from_slice(&code.to_ne_bytes());
        filter.extend_from_slice(&[jt, jf]);
        filter.extend_from_slice(&k.to_ne_bytes());
    }
    runvm_protocol::SeccompProgram { filter, flags: 0 }
}

#[test]
fn the_seccomp_filter_applies_with_and_without_no_new_privs() {
    require_root!();
    for nnp in [false, true] {
        let mut p = spec(&[
            "sh",
            "-c",
            "busybox mkdir /tmp/x; echo rc=$?; grep Seccomp: /proc/self/status",
        ]);
        p.no_new_privileges = nnp;
        p.uid = 1000;
        p.capabilities = Some(Capabilities::default());
        p.seccomp = Some(deny_mkdir(false));
        let o = run(p, b"", |_| {});
        assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "rc=1\nSeccomp:\t2\n",
            "nnp {nnp}"
        );
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"),
            "{o:?}"
        );
    }
    // The kill action: the main process dies of SIGSYS.
    let mut p = spec(&["busybox", "mkdir", "/tmp/x"]);
    p.seccomp = Some(deny_mkdir(true));
    let o = run(p, b"", |_| {});
    assert_eq!(o.exited, Some(ExitStatus::Signaled(libc::SIGSYS)), "{o:?}");
    // A malformed program is a start failure that says so.
    let mut p = spec(&["true"]);
    p.seccomp = Some(runvm_protocol::SeccompProgram {
        filter: vec![0; 7],
        flags: 0,
    });
    let o = run(p, b"", |_| {});
    let (code, message) = o.start_failed.expect("start failed");
    assert_eq!(code, 1);
    assert!(message.contains("seccomp"), "{message}");
}

#[test]
fn a_read_only_dev_gets_its_devices_first_as_under_runc() {
    require_root!();
    let mounts = vec![
        mnt("/proc", "proc", ""),
        mnt(
            "/dev",
            "tmpfs",
            "nosuid,strictatime,mode=755,size=65536k,ro",
        ),
    ];
    let o = run_with(
        spec(&[
            "sh",
            "-c",
            "echo x > /dev/null && echo null-ok; (echo > /dev/new) 2>/dev/null || echo dev-ro",
        ]),
        LinuxSpec::default(),
        mounts,
        b"",
        |_| {},
    );
    assert_eq!(o.exited, Some(ExitStatus::Exited(0)), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "null-ok\ndev-ro\n");
}

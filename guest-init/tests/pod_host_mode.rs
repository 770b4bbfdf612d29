//! Member containers (one VM per pod, `--network container:`) driven through the real
//! guest-init binary in its host test mode, as `host_mode.rs` drives the main container:
//! this test plays the host, sends `Run` for the main container (the pod's sandbox) and
//! then `AddContainer` for members whose roots are busybox trees of their own in the
//! directories standing in for further virtio-fs shares (`<dir>/virtiofs/<tag>/root`).
//!
//! Needs root, `unshare` and a static busybox, as `host_mode.rs`. The limits test also
//! needs a cgroup2 mount on this host (it makes a cgroup for the test under it and hands
//! it to init as `RUNVM_INIT_CGROUP`).

mod common;

use common::{accept, BUSYBOX};
use runvm_protocol::spec::{DeviceRule, DeviceRuleKind};
use runvm_protocol::{
    read_frame, write_frame, ExitStatus, GuestMessage, HostMessage, LinuxSpec, MountSpec,
    NewContainer, ProcessSpec, Resources, RootfsSpec, SharedNamespaces, StreamHeader,
    OUTPUT_STREAM_FD,
};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use tempfile::TempDir;

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ps", "sleep", "hostname", "ls", "head", "true", "grep",
];

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let unshare = Command::new("unshare").arg("--version").output().is_ok();
    assert!(
        root && unshare && Path::new(BUSYBOX).exists(),
        "this test needs root, unshare and {BUSYBOX}; `cargo xtask test` (as root) sets \
         everything up"
    );
}

fn spec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into(), "HOME=/".into()],
        cwd: "/".into(),
        ..Default::default()
    }
}

/// An `AddContainer` of a member whose root is the directory `root` of share `tag`.
struct Add {
    container: u32,
    process: u32,
    tag: &'static str,
    root: &'static str,
    spec: ProcessSpec,
    linux: LinuxSpec,
    share: SharedNamespaces,
    hostname: Option<&'static str>,
    mounts: Vec<MountSpec>,
    /// The platform device of a share in a spare slot (checked, not bound, here).
    device: Option<&'static str>,
}

impl Add {
    /// Root `root`, no namespace shared, no limits, no hostname.
    fn new(container: u32, process: u32, tag: &'static str, args: &[&str]) -> Self {
        Self {
            container,
            process,
            tag,
            root: "root",
            spec: spec(args),
            linux: LinuxSpec::default(),
            share: SharedNamespaces::default(),
            hostname: None,
            mounts: vec![],
            device: None,
        }
    }
}

/// A busybox root for a member under `<dir>/virtiofs/<tag>/root`, with `/member-file`.
fn member_share(dir: &Path, tag: &str) {
    let root = dir.join("virtiofs").join(tag).join("root");
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("member-file"), format!("member of {tag}\n")).unwrap();
}

/// A cgroup of this test's own under the host's cgroup2 mount, removed (with what init
/// made in it) on drop.
struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    fn new(name: &str) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = mountinfo
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.split_whitespace().next()? == "cgroup2")
                    .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .expect("this test needs a cgroup2 mount on the host");
        let dir = mount.join(format!("runvm-pod-test-{}-{name}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        Self { dir }
    }

    fn has_controller(&self, name: &str) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| c == name)
    }
}

impl Drop for TestCgroup {
    /// Kills what a failed test left running in the cgroups init made, then removes them.
    fn drop(&mut self) {
        let children: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        for dir in children.iter().chain([&self.dir]) {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            for _ in 0..200 {
                match std::fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    _ => break,
                }
            }
        }
    }
}

/// A running init whose main container (hostname `podbox`, a `/main-file` in its root)
/// was started.
struct Pod {
    scratch: TempDir,
    child: Child,
    ctl: UnixStream,
    streams: UnixListener,
    main: Vec<UnixStream>,
}

impl Pod {
    fn start(main: ProcessSpec, cgroup: Option<&TestCgroup>) -> Self {
        let scratch = common::busybox_scratch(&["proc", "sys", "dev", "tmp"], APPLETS);
        std::fs::write(common::root_dir(scratch.path()).join("main-file"), "main\n").unwrap();
        let ctl_l = UnixListener::bind(scratch.path().join("1024")).unwrap();
        let streams = UnixListener::bind(scratch.path().join("1025")).unwrap();
        let mut cmd = common::init_command(scratch.path(), &["--ipc", "--net"]);
        cmd.env("RUNVM_INIT_DEBUG", "1");
        if let Some(cg) = cgroup {
            cmd.env("RUNVM_INIT_CGROUP", &cg.dir);
        }
        let mut child = cmd.spawn().unwrap();
        let mut ctl = accept(&ctl_l, &mut child);
        common::expect_hello(&mut ctl);
        write_frame(
            &mut ctl,
            &HostMessage::Run {
                rootfs: RootfsSpec::default(),
                hostname: Some("podbox".into()),
                process: main,
                linux: LinuxSpec::default(),
                mounts: vec![],
                network: Default::default(),
            },
        )
        .unwrap();
        let mut pod = Self {
            scratch,
            child,
            ctl,
            streams,
            main: vec![],
        };
        pod.main = pod.accept_streams(0);
        match pod.recv() {
            GuestMessage::Started { process: 0, .. } => {}
            m => panic!("expected Started, got {m:?}"),
        }
        pod
    }

    fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// Every `Exited` up to and with the main process's (anything else fails the test).
    fn exits_until_main(&mut self) -> Vec<(u32, ExitStatus)> {
        common::exits_until_main(&mut self.ctl)
    }

    fn recv(&mut self) -> GuestMessage {
        read_frame(&mut self.ctl).unwrap()
    }

    fn send(&mut self, m: &HostMessage) {
        write_frame(&mut self.ctl, m).unwrap();
    }

    /// stdin, stdout and stderr of `process`.
    fn accept_streams(&mut self, process: u32) -> Vec<UnixStream> {
        let mut got: [Option<UnixStream>; 2] = [None, None];
        for _ in 0..2 {
            let mut s = accept(&self.streams, &mut self.child);
            let h: StreamHeader = read_frame(&mut s).unwrap();
            assert_eq!(h.process, process);
            let i = match h.fd {
                0 => 0,
                OUTPUT_STREAM_FD => 1,
                fd => panic!("unexpected stream fd {fd}"),
            };
            got[i] = Some(s);
        }
        let [stdin, output] = got;
        let (stdout, stderr) = common::split_output(output.unwrap());
        vec![stdin.unwrap(), stdout, stderr]
    }

    /// Sends `AddContainer` of `m`; its streams once it started, or the `StartFailed`
    /// code and message.
    fn add(&mut self, m: Add) -> Result<(i32, Vec<UnixStream>), (i32, String)> {
        let process = m.process;
        self.send(&HostMessage::AddContainer(NewContainer {
            container: m.container,
            process,
            rootfs: RootfsSpec {
                share_tag: m.tag.into(),
                root: m.root.into(),
                readonly: false,
            },
            hostname: m.hostname.map(String::from),
            spec: m.spec,
            linux: m.linux,
            mounts: m.mounts,
            share: m.share,
            device: m.device.map(String::from),
        }));
        match self.recv() {
            GuestMessage::Started { process: p, pid } if p == process => {
                Ok((pid, self.accept_streams(process)))
            }
            GuestMessage::StartFailed {
                process: p,
                code,
                message,
            } if p == process => Err((code, message)),
            m => panic!("expected Started or StartFailed of {process}, got {m:?}"),
        }
    }

    /// A member from share `tag` (its directory `root`) running `args`, sharing IPC and UTS with
    /// the main container as Kubernetes has it.
    fn add_member(
        &mut self,
        container: u32,
        process: u32,
        tag: &'static str,
        args: &[&str],
    ) -> Vec<UnixStream> {
        let share = SharedNamespaces {
            pid: false,
            ipc: true,
            uts: true,
        };
        let (_, streams) = self
            .add(Add {
                share,
                ..Add::new(container, process, tag, args)
            })
            .unwrap_or_else(|e| panic!("container {container} did not start: {e:?}"));
        streams
    }

    fn exec(&mut self, container: u32, process: u32, args: &[&str]) -> Vec<UnixStream> {
        self.send(&HostMessage::Exec {
            process,
            spec: spec(args),
            container,
        });
        match self.recv() {
            GuestMessage::Started { process: p, .. } if p == process => {}
            m => panic!("expected Started of {process}, got {m:?}"),
        }
        self.accept_streams(process)
    }

    fn exit_of(&mut self, process: u32) -> ExitStatus {
        match self.recv() {
            GuestMessage::Exited {
                process: p, status, ..
            } if p == process => status,
            m => panic!("expected Exited of {process}, got {m:?}"),
        }
    }

    fn remove(&mut self, container: u32) -> Option<String> {
        self.send(&HostMessage::RemoveContainer { container });
        match self.recv() {
            GuestMessage::ContainerRemoved {
                container: c,
                error,
            } if c == container => error,
            m => panic!("expected ContainerRemoved of {container}, got {m:?}"),
        }
    }

    /// Init's mounts (its own mount namespace).
    fn mountinfo(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", self.child.id())).unwrap()
    }

    /// Fails if init has anything of member `container` left: a mount or a directory.
    fn assert_nothing_of(&self, container: u32) {
        let place = format!("/run/runvm/c{container}");
        assert!(
            !self.mountinfo().contains(&place),
            "a mount under {place} is left:\n{}",
            self.mountinfo()
        );
        let dir = self.dir().join(format!("run/runvm/c{container}"));
        assert!(!dir.exists(), "{} is left", dir.display());
    }

    /// SIGKILLs the main process, expects its exit (after `before`'s), and shuts init down.
    fn end(mut self, before: &[(u32, ExitStatus)]) {
        self.send(&HostMessage::Signal {
            process: 0,
            signal: 9,
        });
        let exits = self.exits_until_main();
        let mut want = before.to_vec();
        want.push((0, ExitStatus::Signaled(9)));
        assert_eq!(exits, want);
        self.shutdown();
    }

    /// Sends `Shutdown` and checks that init exits cleanly, leaving no mount.
    fn shutdown(mut self) {
        self.send(&HostMessage::Shutdown);
        assert!(common::wait_for_exit(&mut self.child).success());
        common::assert_no_mounts_under(self.scratch.path());
    }
}

fn read_all(mut s: UnixStream) -> String {
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    String::from_utf8_lossy(&v).into_owned()
}

fn words(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn a_member_has_its_own_root_and_pid_namespace_takes_execs_and_is_removed() {
    require_root();
    let mut pod = Pod::start(spec(&["sleep", "100"]), None);
    member_share(pod.dir(), "member1");
    let mut streams = pod
        .add_member(
            1,
            10,
            "member1",
            &[
                "sh",
                "-c",
                "cat /member-file; cat /main-file 2>/dev/null || echo no main file; \
                 echo pid $$; hostname; echo to stderr >&2; read x; exit 7",
            ],
        )
        .into_iter();
    let (mut sin, sout, serr) = (
        streams.next().unwrap(),
        streams.next().unwrap(),
        streams.next().unwrap(),
    );
    // An exec into the member sees the member's root and PID namespace.
    let exec = pod.exec(
        1,
        11,
        &[
            "sh",
            "-c",
            "cat /member-file; ls /main-file >/dev/null 2>&1 || echo no main file; ps -o pid,args",
        ],
    );
    let exec_out = read_all(exec.into_iter().nth(1).unwrap());
    assert_eq!(pod.exit_of(11), ExitStatus::Exited(0));
    let exec_lines = words(&exec_out);
    assert_eq!(
        exec_lines[..2],
        ["member of member1", "no main file"],
        "{exec_out}"
    );
    assert!(
        exec_lines
            .iter()
            .any(|l| l.starts_with("1 sh -c cat /member-file")),
        "the member's main process is PID 1 of the exec's PID namespace: {exec_out}"
    );
    assert!(
        !exec_lines.iter().any(|l| l.contains("sleep 100")),
        "the main container's processes are not in the member's PID namespace: {exec_out}"
    );
    // Its mounts are in init's place for it while it exists.
    assert!(pod.mountinfo().contains("/run/runvm/c1/root"));
    assert!(pod.mountinfo().contains("/run/runvm/c1/share"));
    // Removing a running member is refused.
    assert!(pod.remove(1).unwrap().contains("still runs"));

    sin.write_all(b"go\n").unwrap();
    assert_eq!(
        words(&read_all(sout)),
        ["member of member1", "no main file", "pid 1", "podbox"]
    );
    assert_eq!(read_all(serr), "to stderr\n");
    assert_eq!(pod.exit_of(10), ExitStatus::Exited(7));
    // An exec into a member that has ended fails.
    pod.send(&HostMessage::Exec {
        process: 12,
        spec: spec(&["true"]),
        container: 1,
    });
    match pod.recv() {
        GuestMessage::StartFailed {
            process: 12,
            message,
            ..
        } => {
            assert!(message.contains("container 1"), "{message}")
        }
        m => panic!("expected StartFailed, got {m:?}"),
    }

    assert_eq!(pod.remove(1), None);
    pod.assert_nothing_of(1);
    // The member's files are still on the host.
    assert!(pod.dir().join("virtiofs/member1/root/member-file").exists());
    assert!(pod.remove(1).unwrap().contains("no container 1"));
    pod.end(&[]);
}

#[test]
fn a_member_sharing_the_pid_namespace_is_not_pid_1_and_keeps_its_own_hostname() {
    require_root();
    let mut pod = Pod::start(spec(&["sleep", "100"]), None);
    member_share(pod.dir(), "member2");
    let share = SharedNamespaces {
        pid: true,
        ipc: true,
        uts: false,
    };
    let (_, streams) = pod
        .add(Add {
            share,
            hostname: Some("own-name"),
            ..Add::new(
                2,
                20,
                "member2",
                &["sh", "-c", "echo pid $$; hostname; ps -o pid,args"],
            )
        })
        .unwrap();
    let out = read_all(streams.into_iter().nth(1).unwrap());
    assert_eq!(pod.exit_of(20), ExitStatus::Exited(0));
    let lines = words(&out);
    assert_ne!(lines[0], "pid 1", "{out}");
    assert!(lines[0].starts_with("pid "), "{out}");
    assert_eq!(lines[1], "own-name");
    assert!(
        lines.iter().any(|l| l == "1 sleep 100"),
        "the main container's process is PID 1 of the shared namespace: {out}"
    );
    // The main container kept its hostname.
    let main_out = read_all(pod.exec(0, 21, &["hostname"]).into_iter().nth(1).unwrap());
    assert_eq!(pod.exit_of(21), ExitStatus::Exited(0));
    assert_eq!(main_out, "podbox\n");
    // A hostname cannot be set in a shared UTS namespace (as runc refuses it).
    let uts = SharedNamespaces {
        uts: true,
        ..Default::default()
    };
    let (code, message) = pod
        .add(Add {
            share: uts,
            hostname: Some("x"),
            ..Add::new(3, 30, "member2", &["true"])
        })
        .unwrap_err();
    assert_eq!(code, 1);
    assert!(message.contains("private UTS namespace"), "{message}");
    pod.assert_nothing_of(3);
    assert_eq!(pod.remove(2), None);
    pod.assert_nothing_of(2);
    pod.end(&[]);
}

#[test]
fn a_member_gets_its_own_cgroup_with_its_own_limits() {
    require_root();
    let cgroup = TestCgroup::new("limits");
    let mut pod = Pod::start(spec(&["sleep", "100"]), Some(&cgroup));
    member_share(pod.dir(), "member4");
    // Every device allowed but reading or writing /dev/zero (the device filter needs no
    // controller); pids.max too where this host's cgroup2 has the pids controller, and
    // memory.low (the reservation) where it has the memory controller.
    let pids = cgroup.has_controller("pids");
    let memory = cgroup.has_controller("memory");
    let linux = LinuxSpec {
        resources: Resources {
            devices: Some(vec![
                DeviceRule {
                    allow: true,
                    kind: DeviceRuleKind::All,
                    ..Default::default()
                },
                DeviceRule {
                    allow: false,
                    kind: DeviceRuleKind::Char,
                    major: Some(1),
                    minor: Some(5),
                    read: true,
                    write: true,
                    mknod: false,
                },
            ]),
            pids_limit: pids.then_some(42),
            memory_reservation: memory.then_some(16 << 20),
            ..Default::default()
        },
        ..Default::default()
    };
    let script = "grep ^0:: /proc/self/cgroup; \
                  head -c 1 /dev/zero >/dev/null 2>&1 && echo zero readable || echo zero denied; \
                  if [ -e /sys/fs/cgroup/pids.max ]; then cat /sys/fs/cgroup/pids.max; fi; \
                  if [ -e /sys/fs/cgroup/memory.low ]; then cat /sys/fs/cgroup/memory.low; fi; \
                  read x";
    let (pid, streams) = pod
        .add(Add {
            linux,
            hostname: Some("m4"),
            ..Add::new(4, 40, "member4", &["sh", "-c", script])
        })
        .unwrap();
    let mut streams = streams.into_iter();
    let (mut sin, sout) = (streams.next().unwrap(), streams.next().unwrap());
    // Seen from this host: the member's process is in the member's cgroup.
    let member_cg = cgroup.dir.join("c4");
    let procs = std::fs::read_to_string(member_cg.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "pid {pid} not in {}: {procs:?}",
        member_cg.display()
    );
    // The host's queries of the member: its processes, its cgroup's usage, a new limit;
    // a container the guest does not have gets nothing.
    pod.send(&HostMessage::ListProcesses {
        request: 7,
        container: 4,
    });
    let GuestMessage::Processes {
        request: 7,
        processes,
    } = pod.recv()
    else {
        panic!("no answer to ListProcesses")
    };
    // (Its shell may still be running one of its commands.)
    assert!(
        processes
            .iter()
            .any(|p| p.pid == 1 && p.cmd.starts_with("sh -c")),
        "its shell is PID 1 of its own namespace: {processes:?}"
    );
    assert!(
        !processes.iter().any(|p| p.cmd.starts_with("sleep")),
        "the main container's process is not listed: {processes:?}"
    );
    pod.send(&HostMessage::Stats {
        request: 8,
        container: 4,
    });
    let GuestMessage::Stats { request: 8, stats } = pod.recv() else {
        panic!("no answer to Stats")
    };
    if pids {
        assert!(stats.pids_current >= 1, "{stats:?}");
        assert_eq!(stats.pids_limit, Some(42), "{stats:?}");
        pod.send(&HostMessage::Update {
            request: 9,
            resources: Resources {
                pids_limit: Some(43),
                ..Default::default()
            },
            container: 4,
        });
        assert_eq!(
            pod.recv(),
            GuestMessage::Updated {
                request: 9,
                error: None
            }
        );
        let max = std::fs::read_to_string(member_cg.join("pids.max")).unwrap();
        assert_eq!(max.trim(), "43");
    }
    // Frozen and thawed (runvm pause and resume of a member); the main container is
    // not a member.
    for (request, frozen, want) in [(11, true, "1"), (12, false, "0")] {
        pod.send(&HostMessage::Freeze {
            request,
            container: 4,
            frozen,
        });
        assert_eq!(
            pod.recv(),
            GuestMessage::Updated {
                request,
                error: None
            }
        );
        let now = std::fs::read_to_string(member_cg.join("cgroup.freeze")).unwrap();
        assert_eq!(now.trim(), want);
    }
    pod.send(&HostMessage::Freeze {
        request: 13,
        container: 0,
        frozen: true,
    });
    let GuestMessage::Updated {
        request: 13,
        error: Some(_),
    } = pod.recv()
    else {
        panic!("the main container was frozen as a member")
    };
    pod.send(&HostMessage::Stats {
        request: 10,
        container: 9,
    });
    assert_eq!(
        pod.recv(),
        GuestMessage::Stats {
            request: 10,
            stats: Default::default()
        }
    );
    sin.write_all(b"\n").unwrap();
    let out = read_all(sout);
    assert_eq!(pod.exit_of(40), ExitStatus::Exited(0));
    let mut want = vec!["0::/", "zero denied"];
    if pids {
        want.push("42");
    }
    if memory {
        want.push("16777216");
    }
    assert_eq!(words(&out), want, "{out}");
    // The main container has no such rule.
    let main_out = read_all(
        pod.exec(
            0,
            41,
            &[
                "sh",
                "-c",
                "head -c 1 /dev/zero >/dev/null && echo zero readable",
            ],
        )
        .into_iter()
        .nth(1)
        .unwrap(),
    );
    assert_eq!(pod.exit_of(41), ExitStatus::Exited(0));
    assert_eq!(main_out, "zero readable\n");
    assert_eq!(pod.remove(4), None);
    assert!(!member_cg.exists(), "{} is left", member_cg.display());
    pod.assert_nothing_of(4);
    pod.end(&[]);
}

#[test]
fn a_member_binds_entries_of_its_own_share() {
    require_root();
    let mut pod = Pod::start(spec(&["sleep", "100"]), None);
    member_share(pod.dir(), "member7");
    let entry = pod.dir().join("virtiofs/member7/m0");
    std::fs::create_dir(&entry).unwrap();
    std::fs::write(entry.join("f"), "from the member's share\n").unwrap();
    // The main container's share has an entry of the same name, which must not be used.
    let main_entry = common::share_dir(pod.dir()).join("m0");
    std::fs::create_dir(&main_entry).unwrap();
    std::fs::write(main_entry.join("f"), "from the main share\n").unwrap();
    let mounts = vec![
        MountSpec {
            destination: "/proc".into(),
            fstype: "proc".into(),
            source: "proc".into(),
            ..Default::default()
        },
        MountSpec {
            destination: "/data".into(),
            fstype: "bind".into(),
            options: vec!["rbind".into(), "ro".into()],
            share: Some("m0".into()),
            ..Default::default()
        },
    ];
    let script = "cat /data/f; echo x 2>/dev/null >/data/g || echo read-only";
    let (_, streams) = pod
        .add(Add {
            mounts,
            ..Add::new(1, 10, "member7", &["sh", "-c", script])
        })
        .unwrap();
    let out = read_all(streams.into_iter().nth(1).unwrap());
    assert_eq!(pod.exit_of(10), ExitStatus::Exited(0));
    assert_eq!(words(&out), ["from the member's share", "read-only"]);
    assert!(!entry.join("g").exists());
    assert_eq!(pod.remove(1), None);
    pod.assert_nothing_of(1);
    pod.end(&[]);
}

#[test]
fn a_member_that_cannot_start_leaves_nothing() {
    require_root();
    let cgroup = TestCgroup::new("failures");
    let mut pod = Pod::start(spec(&["sleep", "100"]), Some(&cgroup));
    member_share(pod.dir(), "member5");
    // A root directory the share does not have.
    let (code, message) = pod
        .add(Add {
            root: "nosuchroot",
            ..Add::new(5, 50, "member5", &["true"])
        })
        .unwrap_err();
    assert_eq!(code, 1);
    assert!(message.contains("nosuchroot"), "{message}");
    pod.assert_nothing_of(5);
    assert!(!cgroup.dir.join("c5").exists());
    // A share tag nothing stands in for.
    let (_, message) = pod
        .add(Add::new(6, 60, "nosuchtag", &["true"]))
        .unwrap_err();
    assert!(message.contains("nosuchtag"), "{message}");
    pod.assert_nothing_of(6);
    // A command the member's root does not have: its root, share and cgroup were made,
    // and are undone.
    let (code, _) = pod
        .add(Add::new(7, 70, "member5", &["nosuchcmd"]))
        .unwrap_err();
    assert_eq!(code, 127);
    pod.assert_nothing_of(7);
    assert!(!cgroup.dir.join("c7").exists());
    // Ids that are not new.
    let (_, message) = pod.add(Add::new(0, 80, "member5", &["true"])).unwrap_err();
    assert!(message.contains("container id 0 is in use"), "{message}");
    let (_, message) = pod.add(Add::new(8, 0, "member5", &["true"])).unwrap_err();
    assert!(message.contains("process id 0 is in use"), "{message}");
    pod.assert_nothing_of(8);
    // The pod goes on: a member still starts.
    let out = read_all(
        pod.add_member(9, 90, "member5", &["cat", "/member-file"])
            .into_iter()
            .nth(1)
            .unwrap(),
    );
    assert_eq!(out, "member of member5\n");
    assert_eq!(pod.exit_of(90), ExitStatus::Exited(0));
    pod.end(&[]);
}

#[test]
fn a_member_whose_share_is_in_a_spare_slot_names_its_device_strictly() {
    require_root();
    let mut pod = Pod::start(spec(&["sleep", "100"]), None);
    member_share(pod.dir(), "member3");
    // Not a virtio-mmio platform device's name: refused before anything is made.
    for bad in ["virtio-mmio.3/../../unbind", "virtio-mmio.", "serial8250"] {
        let (code, message) = pod
            .add(Add {
                device: Some(bad),
                ..Add::new(3, 30, "member3", &["true"])
            })
            .unwrap_err();
        assert_eq!(code, 1);
        assert!(
            message.contains(bad) && message.contains("virtio-mmio.<N>"),
            "{message}"
        );
        pod.assert_nothing_of(3);
    }
    // A good name: host test mode has no device to bind; the share is mounted as usual,
    // and the member is removed as usual.
    let out = read_all(
        pod.add(Add {
            device: Some("virtio-mmio.3"),
            ..Add::new(3, 31, "member3", &["cat", "/member-file"])
        })
        .unwrap()
        .1
        .into_iter()
        .nth(1)
        .unwrap(),
    );
    assert_eq!(out, "member of member3\n");
    assert_eq!(pod.exit_of(31), ExitStatus::Exited(0));
    assert_eq!(pod.remove(3), None);
    pod.assert_nothing_of(3);
    pod.end(&[]);
}

#[test]
fn members_are_killed_and_reported_before_the_main_process_exits() {
    require_root();
    let mut pod = Pod::start(spec(&["sh", "-c", "read x; exit 3"]), None);
    member_share(pod.dir(), "member6");
    let _member = pod.add_member(1, 10, "member6", &["sleep", "100"]);
    let shared = SharedNamespaces {
        pid: true,
        ..Default::default()
    };
    let (_, _shared_member) = pod
        .add(Add {
            share: shared,
            ..Add::new(2, 20, "member6", &["sleep", "100"])
        })
        .unwrap();
    let mut main_in = pod.main.remove(0);
    main_in.write_all(b"\n").unwrap();
    let mut exits = pod.exits_until_main();
    exits[..2].sort_by_key(|(p, _)| *p);
    assert_eq!(
        exits,
        [
            (10, ExitStatus::Signaled(9)),
            (20, ExitStatus::Signaled(9)),
            (0, ExitStatus::Exited(3))
        ]
    );
    pod.shutdown();
}

//! The guest init's root filesystem and bind mounts in its host test mode
//! (`RUNVM_INIT_TEST=<dir>`, see `host_mode.rs`), where the directory
//! `<dir>/virtiofs/<tag>` stands in for the container's virtio-fs share: the root is its
//! `root` directory and the bind mounts are its other entries, live both ways; a bind of
//! a host socket is relayed to the host's socket port `<dir>/1028`. This test plays the
//! host side, writes into the share while the container runs, and looks at what the
//! container wrote there.
//!
//! Needs root, `unshare` and a static busybox (Debian's `busybox-static`).

mod common;

use common::{accept, BUSYBOX, TIMEOUT};
use runvm_protocol::{
    read_frame, write_frame, ExitStatus, GuestMessage, HostMessage, MountSpec, ProcessSpec,
    RootfsSpec, SocketRelayHeader, StreamHeader, OUTPUT_STREAM_FD,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread::JoinHandle;
use tempfile::TempDir;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    assert!(
        Path::new(BUSYBOX).exists(),
        "this test needs {BUSYBOX} (apt-get install busybox-static)"
    );
}

/// A share with a busybox root holding a few files, and the entries `m0` (a directory),
/// `m1` (a file), `m2` (a directory) and `m3` (a file) for bind mounts. Removed on drop.
fn scratch() -> TempDir {
    let scratch = common::busybox_scratch(
        &["proc", "dev", "tmp", "etc", "data"],
        &[
            "sh", "echo", "cat", "rm", "mkdir", "ln", "mkfifo", "touch", "chmod", "ls", "grep",
            "cut",
        ],
    );
    let root = common::root_dir(scratch.path());
    for (file, content) in [
        ("etc/keep", "keep\n"),
        ("etc/gone", "gone\n"),
        ("etc/hosts", "root hosts\n"),
    ] {
        std::fs::write(root.join(file), content).unwrap();
    }
    let share = common::share_dir(scratch.path());
    std::fs::create_dir(share.join("m0")).unwrap();
    std::fs::write(share.join("m0/hello"), "hello from the host\n").unwrap();
    std::fs::write(share.join("m1"), "conf line\n").unwrap();
    std::fs::create_dir(share.join("m2")).unwrap();
    std::fs::write(share.join("m2/kept"), "kept\n").unwrap();
    std::fs::write(share.join("m3"), "127.0.0.1 shared\n").unwrap();
    scratch
}

fn root_of(s: &TempDir) -> PathBuf {
    common::root_dir(s.path())
}

fn share_of(s: &TempDir) -> PathBuf {
    common::share_dir(s.path())
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

/// A bind mount of share entry `name` on `dest`.
fn share_bind(dest: &str, name: &str, options: &str) -> MountSpec {
    MountSpec {
        share: Some(name.into()),
        source: format!("/host/{name}"),
        ..mnt(dest, "bind", options)
    }
}

/// A bind mount of a host socket, relayed as `relay`, on `dest`.
fn relay_bind(dest: &str, relay: u32) -> MountSpec {
    MountSpec {
        relay: Some(relay),
        source: "/host/app.sock".into(),
        ..mnt(dest, "bind", "rbind")
    }
}

/// `/proc` and a tmpfs `/dev` first, as Docker sends them, then `more`.
fn with_basics(more: Vec<MountSpec>) -> Vec<MountSpec> {
    let mut v = vec![
        mnt("/proc", "proc", "nosuid,noexec,nodev"),
        mnt("/dev", "tmpfs", "nosuid,mode=755"),
    ];
    v.extend(more);
    v
}

/// An init that was sent `Run`, with the main process's streams.
struct Container {
    scratch: PathBuf,
    child: Child,
    ctl: UnixStream,
    stdin: UnixStream,
    stdout: BufReader<UnixStream>,
    stderr: JoinHandle<String>,
    /// The main process's pid (on this host: init runs in this PID namespace).
    pid: i32,
    /// The host side of the socket port, `<dir>/1028`.
    sockets: UnixListener,
}

/// Starts init with `rootfs` and `mounts` for `script` (run by `sh -c`) and waits for
/// `Started`; a `StartFailed` comes back as its code and message.
fn start(
    scratch: &TempDir,
    rootfs: RootfsSpec,
    mounts: Vec<MountSpec>,
    script: &str,
) -> Result<Container, (i32, String)> {
    let dir = scratch.path();
    let ctl_l = UnixListener::bind(dir.join("1024")).unwrap();
    let str_l = UnixListener::bind(dir.join("1025")).unwrap();
    let sockets = UnixListener::bind(dir.join("1028")).unwrap();
    let mut child = common::init_command(dir, &[]).spawn().unwrap();
    let mut ctl = accept(&ctl_l, &mut child);
    common::expect_hello(&mut ctl);
    let run = HostMessage::Run {
        rootfs,
        hostname: None,
        process: ProcessSpec {
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            ..Default::default()
        },
        linux: Default::default(),
        mounts,
        network: Default::default(),
    };
    write_frame(&mut ctl, &run).unwrap();
    let pid = match read_frame::<_, GuestMessage>(&mut ctl).unwrap() {
        GuestMessage::Started { process: 0, pid } => pid,
        GuestMessage::StartFailed {
            process: 0,
            code,
            message,
        } => {
            write_frame(&mut ctl, &HostMessage::Shutdown).unwrap();
            assert!(!common::wait_for_exit(&mut child).success());
            return Err((code, message));
        }
        m => panic!("expected Started, got {m:?}"),
    };
    let mut streams: Vec<(u8, UnixStream)> = (0..2)
        .map(|_| {
            let mut s = accept(&str_l, &mut child);
            let h: StreamHeader = read_frame(&mut s).unwrap();
            (h.fd, s)
        })
        .collect();
    streams.sort_by_key(|s| s.0);
    assert_eq!(
        streams[1].0, OUTPUT_STREAM_FD,
        "stdin and the output stream"
    );
    let output = streams.pop().unwrap().1;
    let stdin = streams.pop().unwrap().1;
    let (stdout, mut stderr) = common::split_output(output);
    let stderr = std::thread::spawn(move || {
        let mut v = String::new();
        let _ = stderr.read_to_string(&mut v);
        v
    });
    Ok(Container {
        scratch: dir.to_path_buf(),
        child,
        ctl,
        stdin,
        stdout: BufReader::new(stdout),
        stderr,
        pid,
        sockets,
    })
}

/// What a container left: how it exited, the rest of its stdout, its stderr.
struct Ended {
    exited: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Container {
    /// The next line of stdout, without its newline.
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        assert!(l.ends_with('\n'), "stdout ended early: {l:?}");
        l.pop();
        l
    }

    /// Lets the script go on past its `read`.
    fn go_on(&mut self) {
        self.stdin.write_all(b"go\n").unwrap();
    }

    /// A path in the main process's view of the container (through `/proc/<pid>/root`).
    fn inside(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.pid))
    }

    /// Ends stdin, collects the rest, and shuts init down (which must exit 0 and leave no
    /// mount behind).
    fn finish(self) -> Ended {
        let scratch = self.scratch.clone();
        let e = self.end();
        common::assert_no_mounts_under(&scratch);
        e
    }

    /// [`Container::finish`] without the check for mounts (for a test that has its own).
    fn end(mut self) -> Ended {
        let _ = self.stdin.shutdown(Shutdown::Write);
        let mut stdout = String::new();
        self.stdout.read_to_string(&mut stdout).unwrap();
        let stderr = self.stderr.join().unwrap();
        let exited = match read_frame::<_, GuestMessage>(&mut self.ctl).unwrap() {
            GuestMessage::Exited {
                process: 0, status, ..
            } => status,
            m => panic!("expected Exited, got {m:?} (stderr: {stderr})"),
        };
        write_frame(&mut self.ctl, &HostMessage::Shutdown).unwrap();
        assert!(common::wait_for_exit(&mut self.child).success());
        Ended {
            exited,
            stdout,
            stderr,
        }
    }
}

/// The names in `dir` and below, sorted, as `/`-separated relative paths.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if p.symlink_metadata().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn the_root_is_the_share_s_directory_live_both_ways() {
    require_root();
    let s = scratch();
    let root = root_of(&s);
    let script = "cat /etc/keep; echo new > /etc/new && rm /etc/gone && mkdir -p /data/sub && \
        ln -s /etc/new /lnk && mkfifo /fifo && echo h > /h1 && ln /h1 /h2 && chmod 4711 /h1 && \
        echo written; read go; cat /etc/from-host; ls /etc";
    let mut c = start(&s, RootfsSpec::default(), vec![], script).unwrap();
    assert_eq!(c.line(), "keep");
    assert_eq!(c.line(), "written");
    // What the container wrote is in the host directory at once, as it left it.
    assert_eq!(std::fs::read(root.join("etc/new")).unwrap(), b"new\n");
    assert!(!root.join("etc/gone").exists());
    assert!(root.join("data/sub").is_dir());
    assert_eq!(
        std::fs::read_link(root.join("lnk")).unwrap(),
        Path::new("/etc/new")
    );
    assert!(std::fs::symlink_metadata(root.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let h1 = std::fs::metadata(root.join("h1")).unwrap();
    assert_eq!(h1.mode() & 0o7777, 0o4711);
    assert_eq!(h1.nlink(), 2);
    assert_eq!(h1.ino(), std::fs::metadata(root.join("h2")).unwrap().ino());
    // And what the host writes there is seen inside at once.
    std::fs::write(root.join("etc/from-host"), "from the host\n").unwrap();
    c.go_on();
    let e = c.finish();
    assert_eq!(e.exited, ExitStatus::Exited(0), "{}", e.stderr);
    assert_eq!(e.stdout, "from the host\nfrom-host\nhosts\nkeep\nnew\n");
}

/// A tmpfs mounted on `dir` for the life of the guard (a mount of the host's inside the
/// share, as the host announces submounts).
struct Submount(PathBuf);

impl Submount {
    fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        Self(dir)
    }
}

impl Drop for Submount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_read_only_root_refuses_writes_below_every_mount_and_writes_nothing() {
    require_root();
    let s = scratch();
    let root = root_of(&s);
    let sub = Submount::new(root.join("data/sub"));
    std::fs::write(sub.0.join("in-sub"), "sub\n").unwrap();
    let before = tree(&root);
    let rootfs = RootfsSpec {
        readonly: true,
        ..Default::default()
    };
    let script = "touch /etc/x 2>&1; mkdir /newdir 2>&1; rm /etc/keep 2>&1; \
        (echo x > /data/sub/x) 2>&1; cat /etc/keep /data/sub/in-sub; \
        (echo x > /on-root) 2>&1; echo x > /dev/x && echo dev-writable";
    let c = start(&s, rootfs, with_basics(vec![]), script).unwrap();
    let e = c.end();
    let after = tree(&root);
    drop(sub);
    common::assert_no_mounts_under(s.path());
    assert_eq!(e.exited, ExitStatus::Exited(0), "{}", e.stderr);
    let lines: Vec<&str> = e.stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{}", e.stdout);
    for l in [0, 1, 2, 3, 6] {
        assert!(lines[l].contains("Read-only file system"), "{}", e.stdout);
    }
    // The container's own mounts (here its /dev) stay writable.
    assert_eq!(lines[4..6], ["keep", "sub"], "{}", e.stdout);
    assert_eq!(lines[7], "dev-writable", "{}", e.stdout);
    assert_eq!(after, before, "the read-only root was written");
}

#[test]
fn directory_and_file_binds_are_live_both_ways_and_ro_is_refused() {
    require_root();
    let s = scratch();
    let (root, share) = (root_of(&s), share_of(&s));
    let mounts = with_basics(vec![
        share_bind("/data", "m0", "rbind,rshared"),
        // Missing mount points, made as runc makes them (with their parents).
        share_bind("/etc/app/conf", "m1", "rbind"),
        share_bind("/srv/ro", "m2", "rbind,ro,nosuid,nodev,noexec,rprivate"),
        share_bind("/etc/hosts", "m3", "bind,ro"),
    ]);
    let script = "cat /data/hello /etc/app/conf /srv/ro/kept /etc/hosts; \
        echo from-guest > /data/guest-file; echo appended >> /etc/app/conf; \
        (echo x > /srv/ro/f) 2>&1; rm /srv/ro/kept 2>&1; (echo x >> /etc/hosts) 2>&1; \
        grep -E ' /(data|srv/ro|etc/hosts|etc/app/conf) ' /proc/self/mountinfo | \
          cut -d' ' -f5,6,7; \
        echo ready; read go; cat /data/from-host /etc/app/conf";
    let mut c = start(&s, RootfsSpec::default(), mounts, script).unwrap();
    let mut lines = Vec::new();
    loop {
        let l = c.line();
        if l == "ready" {
            break;
        }
        lines.push(l);
    }
    assert_eq!(
        lines[..4],
        [
            "hello from the host",
            "conf line",
            "kept",
            "127.0.0.1 shared"
        ],
        "{lines:?}"
    );
    for l in &lines[4..7] {
        assert!(l.contains("Read-only file system"), "{lines:?}");
    }
    // The guest's writes are on the host at once; the read-only ones changed nothing.
    assert_eq!(
        std::fs::read(share.join("m0/guest-file")).unwrap(),
        b"from-guest\n"
    );
    assert_eq!(
        std::fs::read(share.join("m1")).unwrap(),
        b"conf line\nappended\n"
    );
    assert_eq!(tree(&share.join("m2")), ["kept"]);
    assert_eq!(
        std::fs::read(share.join("m3")).unwrap(),
        b"127.0.0.1 shared\n"
    );
    // The mount points were made in the root: a directory, an empty file.
    assert!(root.join("srv/ro").is_dir());
    let conf = std::fs::metadata(root.join("etc/app/conf")).unwrap();
    assert!(conf.is_file() && conf.len() == 0);
    assert_eq!(conf.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read(root.join("etc/hosts")).unwrap(),
        b"root hosts\n"
    );
    // The mounts' flags and propagation (mountinfo: mount point, options, optional
    // fields; the mount of /data is shared, the others are not).
    let info = |dest: &str| {
        lines[7..]
            .iter()
            .find(|l| l.split(' ').next() == Some(dest))
            .unwrap_or_else(|| panic!("{dest} not in {lines:?}"))
            .clone()
    };
    assert!(info("/data").contains(" rw,") && info("/data").contains("shared:"));
    let ro = info("/srv/ro");
    assert!(
        ro.contains(" ro,nosuid,nodev,noexec") && !ro.contains("shared:"),
        "{ro}"
    );
    assert!(info("/etc/hosts").contains(" ro,"), "{lines:?}");
    assert!(info("/etc/app/conf").contains(" rw,"), "{lines:?}");
    // The host's writes are seen inside at once.
    std::fs::write(share.join("m0/from-host"), "from the host\n").unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(share.join("m1"))
        .unwrap()
        .write_all(b"host line\n")
        .unwrap();
    c.go_on();
    let e = c.finish();
    assert_eq!(e.exited, ExitStatus::Exited(0), "{}", e.stderr);
    assert_eq!(
        e.stdout, "from the host\nconf line\nappended\nhost line\n",
        "{}",
        e.stderr
    );
}

#[test]
fn a_destination_s_symlinks_never_lead_out_of_the_root() {
    require_root();
    let s = scratch();
    let root = root_of(&s);
    let outside = s.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    // An absolute link to a host path, and a relative one climbing out of the root.
    std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../outside", root.join("etc/climb")).unwrap();
    let mounts = with_basics(vec![
        share_bind("/abs/conf", "m1", "rbind"),
        share_bind("/etc/climb/data", "m0", "rbind"),
    ]);
    let script = "cat /abs/conf /etc/climb/data/hello";
    let c = start(&s, RootfsSpec::default(), mounts, script).unwrap();
    let e = c.finish();
    assert_eq!(e.exited, ExitStatus::Exited(0), "{}", e.stderr);
    assert_eq!(e.stdout, "conf line\nhello from the host\n");
    // Nothing was made outside; the mount points are where the links lead inside the
    // root.
    assert_eq!(tree(&outside), Vec::<String>::new());
    let abs_inside = root.join(outside.strip_prefix("/").unwrap());
    assert!(abs_inside.join("conf").is_file());
    assert!(root.join("outside/data").is_dir());
}

#[test]
fn a_bind_of_a_file_on_a_directory_fails_the_start_naming_it() {
    require_root();
    let s = scratch();
    let mounts = with_basics(vec![share_bind("/etc", "m1", "rbind")]);
    let (code, message) = start(&s, RootfsSpec::default(), mounts, "true")
        .err()
        .expect("start failed");
    assert_eq!(code, 1);
    assert!(
        message.contains("/etc") && message.contains("on a directory"),
        "{message}"
    );
}

#[test]
fn a_bind_without_share_entry_or_relay_fails_the_start() {
    require_root();
    let s = scratch();
    let mounts = with_basics(vec![mnt("/data", "bind", "rbind")]);
    let (code, message) = start(&s, RootfsSpec::default(), mounts, "true")
        .err()
        .expect("start failed");
    assert_eq!(code, 1);
    assert!(
        message.contains("/data") && message.contains("share entry"),
        "{message}"
    );
}

#[test]
fn a_missing_share_tag_fails_the_start_naming_the_tag() {
    require_root();
    let s = scratch();
    let rootfs = RootfsSpec {
        share_tag: "no-such-tag".into(),
        ..Default::default()
    };
    let (code, message) = start(&s, rootfs, vec![], "true")
        .err()
        .expect("start failed");
    assert_eq!(code, 1);
    assert!(message.contains("\"no-such-tag\""), "{message}");
    // A root directory that is not a name in the share is refused, naming it.
    let s = scratch();
    let rootfs = RootfsSpec {
        root: "../root".into(),
        ..Default::default()
    };
    let (_, message) = start(&s, rootfs, vec![], "true").err().unwrap();
    assert!(message.contains("\"../root\""), "{message}");
}

/// Accepts the relay's connection to the host's socket port and checks its header.
fn accept_relay(c: &mut Container, relay: u32) -> UnixStream {
    let mut s = accept(&c.sockets, &mut c.child);
    let h: SocketRelayHeader = read_frame(&mut s).unwrap();
    assert_eq!(h.relay, relay);
    s
}

fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    s.read_exact(&mut v).unwrap();
    v
}

fn read_rest(s: &mut UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn a_socket_bind_is_relayed_to_the_host_both_ways_with_half_close() {
    require_root();
    let s = scratch();
    let root = root_of(&s);
    let mounts = with_basics(vec![relay_bind("/var/run/app.sock", 3)]);
    let script = "[ -S /var/run/app.sock ] && echo is-a-socket; \
        busybox stat -c '%u:%g %a' /var/run/app.sock; echo ready; read go";
    let mut c = start(&s, RootfsSpec::default(), mounts, script).unwrap();
    assert_eq!(c.line(), "is-a-socket");
    assert_eq!(c.line(), "0:0 660");
    assert_eq!(c.line(), "ready");
    // The mount point in the root is an empty file, not a socket of the guest's.
    let point = std::fs::symlink_metadata(root.join("var/run/app.sock")).unwrap();
    assert!(point.is_file() && point.len() == 0);

    // A client in the container connects to the destination.
    let path = c.inside("/var/run/app.sock");
    let mut client = UnixStream::connect(&path).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut host = accept_relay(&mut c, 3);
    client.write_all(b"ping").unwrap();
    assert_eq!(read_exactly(&mut host, 4), b"ping");
    host.write_all(b"pong").unwrap();
    assert_eq!(read_exactly(&mut client, 4), b"pong");
    // The host ends its side: the client sees EOF and may still send.
    host.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_rest(&mut client), b"");
    client.write_all(b"after the host's EOF").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_rest(&mut host), b"after the host's EOF");

    // Two at once, each on its own host connection, the client ending first this time.
    let mut a = UnixStream::connect(&path).unwrap();
    let mut host_a = accept_relay(&mut c, 3);
    let mut b = UnixStream::connect(&path).unwrap();
    let mut host_b = accept_relay(&mut c, 3);
    for s in [&a, &b] {
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
    }
    a.write_all(b"A").unwrap();
    b.write_all(b"B").unwrap();
    a.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_rest(&mut host_a), b"A");
    assert_eq!(read_exactly(&mut host_b, 1), b"B");
    host_a.write_all(b"to A after its EOF").unwrap();
    drop(host_a);
    assert_eq!(read_rest(&mut a), b"to A after its EOF");
    host_b.write_all(b"to B").unwrap();
    drop(host_b);
    assert_eq!(read_rest(&mut b), b"to B");

    // The relays end with the container: the socket refuses connections.
    let relay_socket = s.path().join("run/relays/3");
    assert!(std::fs::symlink_metadata(&relay_socket)
        .unwrap()
        .file_type()
        .is_socket());
    c.go_on();
    let e = c.finish();
    assert_eq!(e.exited, ExitStatus::Exited(0), "{}", e.stderr);
    assert_eq!(e.stdout, "");
    let refused = UnixStream::connect(&relay_socket).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
}

//! The guest init's root filesystem in its host test mode (`RUNVM_INIT_TEST=<dir>`, see
//! `host_mode.rs`): a writable layer (a directory standing in for the ext4 device) whose
//! changes come back on the write-back port `<dir>/1026` after the workload exits, and
//! file bind mounts copied in. This test plays the host side and decodes what init sends.
//!
//! Needs root, `unshare` and a static busybox (Debian's `busybox-static`).

mod common;

use common::{accept, BUSYBOX};
use runvm_protocol::{
    read_frame, read_frame_limited, write_frame, ExitStatus, FileContent, GuestMessage,
    HostMessage, MountSpec, ProcessSpec, RootfsSpec, SpecialKind, StreamHeader, WritebackEntry,
    MAX_HOST_FRAME_LEN, MAX_WRITEBACK_FRAME_LEN,
};
use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use tempfile::TempDir;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    assert!(
        Path::new(BUSYBOX).exists(),
        "this test needs {BUSYBOX} (apt-get install busybox-static)"
    );
}

/// `rootfs` (a busybox tree, the read-only lower layer), `rw` (the writable layer),
/// sockets at the top. Removed on drop.
fn scratch() -> TempDir {
    let scratch = common::busybox_scratch(
        &["proc", "sys", "dev", "tmp", "etc", "data/sub"],
        &[
            "sh", "echo", "cat", "rm", "mkdir", "ln", "mkfifo", "touch", "chmod", "ls",
        ],
    );
    std::fs::create_dir_all(scratch.path().join("rw")).unwrap();
    let root = scratch.path().join("rootfs");
    for (file, content) in [
        ("etc/keep", "keep\n"),
        ("etc/gone", "gone\n"),
        ("etc/hosts", "lower hosts\n"),
        ("data/old", "old\n"),
        ("data/sub/older", "older\n"),
    ] {
        std::fs::write(root.join(file), content).unwrap();
    }
    scratch
}

/// The layers of `scratch`: its busybox tree below, and its `rw` directory as the
/// writable layer unless `readonly`.
fn layers(scratch: &TempDir, readonly: bool) -> RootfsSpec {
    RootfsSpec {
        lower_devices: vec![scratch.path().join("rootfs").display().to_string()],
        readonly,
        writable_device: (!readonly).then(|| scratch.path().join("rw").display().to_string()),
    }
}

/// What one run gave back.
struct Outcome {
    exited: ExitStatus,
    stdout: String,
    /// The write-back entries with each file's bytes (`None` without a writable layer).
    writeback: Option<Vec<(WritebackEntry, Vec<u8>)>>,
}

/// Runs `script` in init with `rootfs` and `mounts`, plays the host, and returns what it saw.
fn run(scratch: &TempDir, rootfs: RootfsSpec, mounts: Vec<MountSpec>, script: &str) -> Outcome {
    let dir = scratch.path();
    let ctl_l = UnixListener::bind(dir.join("1024")).unwrap();
    let str_l = UnixListener::bind(dir.join("1025")).unwrap();
    let wb_l = UnixListener::bind(dir.join("1026")).unwrap();
    let mut child = common::init_command(dir, &[]).spawn().unwrap();
    let mut ctl = accept(&ctl_l, &mut child);
    common::expect_hello(&mut ctl);
    let writable = rootfs.writable_device.is_some();
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
    runvm_protocol::write_frame_limited(&mut ctl, &run, MAX_HOST_FRAME_LEN).unwrap();
    let mut streams: Vec<(u8, UnixStream)> = (0..3)
        .map(|_| {
            let mut s = accept(&str_l, &mut child);
            let h: StreamHeader = read_frame(&mut s).unwrap();
            (h.fd, s)
        })
        .collect();
    streams.sort_by_key(|s| s.0);
    let mut stdout = String::new();
    streams[1].1.read_to_string(&mut stdout).unwrap();
    let mut stderr = String::new();
    streams[2].1.read_to_string(&mut stderr).unwrap();
    let exited = loop {
        match read_frame::<_, GuestMessage>(&mut ctl).unwrap() {
            GuestMessage::Started { .. } => {}
            GuestMessage::Exited {
                process: 0, status, ..
            } => break status,
            m => panic!("expected Exited, got {m:?} (stderr: {stderr})"),
        }
    };
    let writeback = writable.then(|| {
        let mut s = accept(&wb_l, &mut child);
        let mut entries = Vec::new();
        loop {
            let e: WritebackEntry = read_frame_limited(&mut s, MAX_WRITEBACK_FRAME_LEN).unwrap();
            let mut data = Vec::new();
            match &e {
                WritebackEntry::End {
                    entries: n,
                    skipped,
                } => {
                    assert_eq!(*n as usize, entries.len());
                    assert_eq!(*skipped, 0);
                    break;
                }
                WritebackEntry::File { size, .. } => {
                    data.resize(*size as usize, 0);
                    s.read_exact(&mut data).unwrap();
                }
                _ => {}
            }
            entries.push((e, data));
        }
        entries
    });
    write_frame(&mut ctl, &HostMessage::Shutdown).unwrap();
    assert!(common::wait_for_exit(&mut child).success());
    common::assert_no_mounts_under(dir);
    Outcome {
        exited,
        stdout,
        writeback,
    }
}

fn path_of(e: &WritebackEntry) -> String {
    let p = match e {
        WritebackEntry::Dir { path, .. }
        | WritebackEntry::File { path, .. }
        | WritebackEntry::Symlink { path, .. }
        | WritebackEntry::Hardlink { path, .. }
        | WritebackEntry::Special { path, .. }
        | WritebackEntry::Whiteout { path } => path,
        WritebackEntry::End { .. } => return String::new(),
    };
    String::from_utf8(p.clone()).unwrap()
}

#[test]
fn changes_of_the_writable_layer_come_back_after_exit() {
    require_root();
    let s = scratch();
    let rootfs = layers(&s, false);
    let script = "echo new > /etc/new && rm /etc/gone && rm -rf /data && mkdir /data && \
        echo fresh > /data/fresh && ln -s /etc/new /lnk && mkfifo /fifo && \
        echo h > /h1 && ln /h1 /h2 && chmod 4711 /h1 && cat /etc/keep";
    let o = run(&s, rootfs, vec![], script);
    assert_eq!(o.exited, ExitStatus::Exited(0), "{}", o.stdout);
    assert_eq!(o.stdout, "keep\n");
    let wb = o.writeback.unwrap();
    let paths: Vec<String> = wb.iter().map(|(e, _)| path_of(e)).collect();
    // A directory before its contents, names in order.
    assert_eq!(
        paths,
        [
            "data",
            "data/fresh",
            "etc",
            "etc/gone",
            "etc/new",
            "fifo",
            "h1",
            "h2",
            "lnk"
        ],
        "{wb:?}"
    );
    let find = |p: &str| &wb[paths.iter().position(|x| x == p).unwrap()];
    assert!(matches!(
        find("data").0,
        WritebackEntry::Dir { opaque: true, .. }
    ));
    assert!(matches!(
        find("etc").0,
        WritebackEntry::Dir { opaque: false, .. }
    ));
    assert!(matches!(
        find("etc/gone").0,
        WritebackEntry::Whiteout { .. }
    ));
    assert_eq!(find("etc/new").1, b"new\n");
    assert_eq!(find("data/fresh").1, b"fresh\n");
    match &find("h1").0 {
        WritebackEntry::File { meta, size, .. } => {
            assert_eq!(meta.mode, 0o4711);
            assert_eq!(*size, 2);
        }
        other => panic!("h1: {other:?}"),
    }
    assert!(
        matches!(&find("h2").0, WritebackEntry::Hardlink { target, .. } if target == b"h1"),
        "{:?}",
        find("h2")
    );
    assert!(
        matches!(&find("lnk").0, WritebackEntry::Symlink { target, .. } if target == b"/etc/new")
    );
    assert!(matches!(
        find("fifo").0,
        WritebackEntry::Special {
            kind: SpecialKind::Fifo,
            ..
        }
    ));
}

#[test]
fn file_binds_are_copied_in_ro_is_honoured_and_nothing_is_written_back() {
    require_root();
    let s = scratch();
    let rootfs = layers(&s, false);
    let bind = |dest: &str, data: &[u8], opts: &[&str]| MountSpec {
        destination: dest.into(),
        fstype: "bind".into(),
        source: "/host/path".into(),
        options: opts.iter().map(|o| o.to_string()).collect(),
        file: Some(FileContent {
            data: data.to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }),
    };
    let mounts = vec![
        MountSpec {
            destination: "/proc".into(),
            fstype: "proc".into(),
            source: "proc".into(),
            ..Default::default()
        },
        MountSpec {
            destination: "/dev".into(),
            fstype: "tmpfs".into(),
            source: "tmpfs".into(),
            ..Default::default()
        },
        bind("/etc/hosts", b"127.0.0.1 copied\n", &["rbind", "ro"]),
        bind(
            "/etc/resolv.conf",
            b"nameserver 10.0.0.1\n",
            &["rbind", "rprivate"],
        ),
    ];
    let script = "cat /etc/hosts /etc/resolv.conf; \
        (echo x >> /etc/hosts) 2>/dev/null && echo hosts-written || echo hosts-refused; \
        echo 'nameserver 9.9.9.9' > /etc/resolv.conf && cat /etc/resolv.conf";
    let o = run(&s, rootfs, mounts, script);
    assert_eq!(o.exited, ExitStatus::Exited(0), "{}", o.stdout);
    assert_eq!(
        o.stdout,
        "127.0.0.1 copied\nnameserver 10.0.0.1\nhosts-refused\nnameserver 9.9.9.9\n"
    );
    // The copies are the guest's own: only the mount point made for resolv.conf (absent
    // from the image, as runc would make it) is a change.
    let wb = o.writeback.unwrap();
    let paths: Vec<String> = wb.iter().map(|(e, _)| path_of(e)).collect();
    assert_eq!(paths, ["etc", "etc/resolv.conf"], "{wb:?}");
    assert_eq!(wb[1].1, b"", "the bind's content never lands in the layer");
}

#[test]
fn a_read_only_root_refuses_writes_and_sends_nothing() {
    require_root();
    let s = scratch();
    let rootfs = layers(&s, true);
    let o = run(&s, rootfs, vec![], "touch /etc/x 2>&1; cat /etc/keep");
    assert_eq!(o.exited, ExitStatus::Exited(0));
    assert!(
        o.stdout.contains("Read-only file system") && o.stdout.ends_with("keep\n"),
        "{}",
        o.stdout
    );
    assert!(o.writeback.is_none());
}

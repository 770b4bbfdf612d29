//! The `share-*` modes: what a guest root can try on the host's files through the
//! container's virtio-fs share (see `Mode` for each). Every attempt is noted in a report,
//! one line each, for the host test to compare with what it finds on the host.

use std::ffi::CString;
use std::fmt::Display;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::stat::{makedev, mknod, Mode as FileMode, SFlag};

use crate::{Mode, RunFiles};

/// Where the whole share is mounted.
const SHARE: &str = "/share";
/// The most opens of [`Mode::ShareOpenFlood`], and its time limit.
const FLOOD_OPENS: usize = 200_000;
const FLOOD_TIME: Duration = Duration::from_secs(20);
/// `security.capability` (VFS_CAP_REVISION_2) giving CAP_SYS_ADMIN permitted and
/// effective: magic_etc, then permitted and inheritable of the low and high words.
const FCAP_SYS_ADMIN: [u32; 5] = [0x0200_0001, 1 << 21, 0, 0, 0];

/// The lines of an attack's report, with paths relative to the share.
struct Report {
    share: PathBuf,
    lines: String,
}

impl Report {
    fn note<E: Display>(&mut self, attempt: &str, path: &Path, result: Result<(), E>) {
        let shown = path.strip_prefix(&self.share).unwrap_or(path).display();
        let outcome = match result {
            Ok(()) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        self.lines
            .push_str(&format!("{attempt} {shown}: {outcome}\n"));
    }
}

/// Mounts the share `run` names at [`SHARE`] and runs the attack of each of `modes` on
/// it, in order; returns the reports.
pub fn attack(modes: &[Mode], run: &RunFiles) -> String {
    let share = Path::new(SHARE);
    let mounted = std::fs::create_dir_all(share)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            nix::mount::mount(
                Some(run.rootfs.share_tag.as_str()),
                share,
                Some("virtiofs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|e| e.to_string())
        });
    match mounted {
        Ok(()) => modes.iter().map(|m| attack_in(share, *m, run)).collect(),
        Err(e) => format!("mount: {e}\n"),
    }
}

/// The attack of `mode` on the share at `share`; the report.
fn attack_in(share: &Path, mode: Mode, run: &RunFiles) -> String {
    let mut r = Report {
        share: share.to_path_buf(),
        lines: String::new(),
    };
    let root = share.join(&run.rootfs.root);
    match mode {
        Mode::ShareSetuid => setuid(&mut r, &root),
        Mode::ShareMknod => special_files(&mut r, &root),
        Mode::ShareChown => chown(&mut r, &root),
        Mode::ShareXattr => xattrs(&mut r, &root),
        Mode::ShareSymlink => symlinks(&mut r, &root),
        Mode::ShareHardlink => hard_links(&mut r, share, &root, run),
        Mode::ShareWriteRo => write_read_only(&mut r, share, run),
        Mode::ShareTopLevel => top_level(&mut r, share),
        Mode::ShareOpenFlood => open_flood(&mut r, &root),
        _ => {}
    }
    r.lines
}

fn io<T>(r: std::io::Result<T>) -> Result<(), String> {
    r.map(|_| ()).map_err(|e| match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).to_string(),
        None => e.to_string(),
    })
}

fn errno<T>(r: nix::Result<T>) -> Result<(), String> {
    r.map(|_| ()).map_err(|e| e.to_string())
}

/// A file with `content`, owned by `uid:gid`, with `mode`, made in steps so that each
/// step the host refuses is seen.
fn owned_file(r: &mut Report, path: &Path, content: &str, uid: u32, gid: u32, mode: u32) {
    r.note("create", path, io(std::fs::write(path, content)));
    r.note(
        &format!("chown {uid}:{gid}"),
        path,
        io(std::os::unix::fs::chown(path, Some(uid), Some(gid))),
    );
    r.note(
        &format!("chmod {mode:o}"),
        path,
        io(std::fs::set_permissions(
            path,
            std::fs::Permissions::from_mode(mode),
        )),
    );
}

fn setuid(r: &mut Report, root: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let script = "#!/bin/sh\nid\n";
    owned_file(r, &root.join("hostile-setuid"), script, 0, 0, 0o4755);
    owned_file(r, &root.join("hostile-setgid"), script, 0, 0, 0o2755);
    // The bits in the create request itself, not in a later chmod.
    let p = root.join("hostile-setuid-created");
    r.note(
        "create with mode 6755",
        &p,
        io(std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o6755)
            .open(&p)),
    );
    // Written after the chmod: the host's kernel clears the bits unless the writer has
    // CAP_FSETID.
    let p = root.join("hostile-setuid-written");
    owned_file(r, &p, script, 0, 0, 0o6755);
    r.note("append", &p, io(append(&p)));
}

fn special_files(r: &mut Report, root: &Path) {
    for (name, kind, major, minor) in [
        ("hostile-mem", SFlag::S_IFCHR, 1, 1),
        ("hostile-null", SFlag::S_IFCHR, 1, 3),
        ("hostile-sda", SFlag::S_IFBLK, 8, 0),
        ("hostile-fifo", SFlag::S_IFIFO, 0, 0),
    ] {
        let p = root.join(name);
        r.note(
            &format!("mknod {major}:{minor}"),
            &p,
            errno(mknod(
                &p,
                kind,
                FileMode::from_bits_truncate(0o666),
                makedev(major, minor),
            )),
        );
    }
    let p = root.join("hostile-socket");
    r.note(
        "bind a socket",
        &p,
        io(std::os::unix::net::UnixListener::bind(&p)),
    );
}

/// Creates `path` as `uid:gid` (the ids the guest kernel puts in the request are the
/// thread's file-system ids), then acts as root again.
fn create_as(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    use nix::unistd::{setfsgid, setfsuid, Gid, Uid};
    setfsgid(Gid::from_raw(gid));
    setfsuid(Uid::from_raw(uid));
    let made = io(std::fs::write(path, "made as another user\n"));
    setfsuid(Uid::from_raw(0));
    setfsgid(Gid::from_raw(0));
    made
}

fn chown(r: &mut Report, root: &Path) {
    owned_file(
        r,
        &root.join("hostile-chown"),
        "mine\n",
        12345,
        12345,
        0o644,
    );
    owned_file(r, &root.join("hostile-chown-root"), "root's\n", 0, 0, 0o644);
    // A directory anyone may write, and a file made in it as another user.
    let open = root.join("hostile-open");
    r.note("mkdir", &open, io(std::fs::create_dir(&open)));
    r.note(
        "chmod 777",
        &open,
        io(std::fs::set_permissions(
            &open,
            std::fs::Permissions::from_mode(0o777),
        )),
    );
    let p = open.join("hostile-made-as-12345");
    r.note("create as 12345:12345", &p, create_as(&p, 12345, 12345));
    let first = std::fs::read_dir(root).ok().and_then(|d| {
        let mut files: Vec<PathBuf> = d
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.as_bytes().starts_with(b"hostile-"))
            })
            .collect();
        files.sort();
        files.into_iter().next()
    });
    if let Some(p) = first {
        r.note(
            "chown 12345:12345",
            &p,
            io(std::os::unix::fs::chown(&p, Some(12345), Some(12345))),
        );
    }
}

fn setxattr(path: &Path, name: &str, value: &[u8]) -> Result<(), String> {
    let (Ok(p), Ok(n)) = (
        CString::new(path.as_os_str().as_bytes()),
        CString::new(name),
    ) else {
        return Err("NUL in a name".into());
    };
    // SAFETY: setxattr reads the two NUL-terminated strings and `value.len()` bytes.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(nix::errno::Errno::last().to_string());
    }
    Ok(())
}

fn xattrs(r: &mut Report, root: &Path) {
    let f = root.join("hostile-fcap");
    owned_file(r, &f, "#!/bin/sh\nid\n", 0, 0, 0o755);
    let fcap: Vec<u8> = FCAP_SYS_ADMIN
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    r.note(
        "setxattr security.capability",
        &f,
        setxattr(&f, "security.capability", &fcap),
    );
    r.note(
        "setxattr user.hostile",
        &f,
        setxattr(&f, "user.hostile", b"yes"),
    );
    let d = root.join("hostile-opaque");
    r.note("mkdir", &d, io(std::fs::create_dir(&d)));
    r.note(
        "setxattr trusted.overlay.opaque",
        &d,
        setxattr(&d, "trusted.overlay.opaque", b"y"),
    );
    r.note(
        "setxattr trusted.overlay.redirect",
        &d,
        setxattr(&d, "trusted.overlay.redirect", b"/etc"),
    );
}

fn symlinks(r: &mut Report, root: &Path) {
    for (name, target) in [
        ("hostile-abs", "/etc/shadow"),
        ("hostile-climb", "../../../../../../../../etc/shadow"),
        ("hostile-proc", "/proc/1/root/etc/shadow"),
    ] {
        let p = root.join(name);
        r.note(
            &format!("symlink to {target}"),
            &p,
            io(std::os::unix::fs::symlink(target, &p)),
        );
    }
    // A file the host reads (runvm's `ps` reads the users), replaced by a symlink that
    // climbs one level out of the root: `passwd` next to the root filesystem.
    let passwd = root.join("etc/passwd");
    r.note("unlink", &passwd, io(std::fs::remove_file(&passwd)));
    r.note(
        "symlink to ../../passwd",
        &passwd,
        io(std::os::unix::fs::symlink("../../passwd", &passwd)),
    );
}

/// A regular file to link: the entry itself, or the first file (by name) in it.
fn a_file_of(entry: &Path) -> Option<PathBuf> {
    let md = entry.symlink_metadata().ok()?;
    if md.is_file() {
        return Some(entry.to_path_buf());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(entry)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
        .collect();
    files.sort();
    files.into_iter().next()
}

fn append(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(b"hostile\n")
}

fn hard_links(r: &mut Report, share: &Path, root: &Path, run: &RunFiles) {
    let own = root.join("hostile-own");
    r.note("create", &own, io(std::fs::write(&own, "own\n")));
    for name in run.mounts.iter().filter_map(|m| m.share.as_deref()) {
        let entry = share.join(name);
        if let Some(file) = a_file_of(&entry) {
            let link = root.join(format!("hostile-link-{name}"));
            let made = io(std::fs::hard_link(&file, &link));
            let ok = made.is_ok();
            r.note(&format!("link {}", file.display()), &link, made);
            if ok {
                r.note("append through the link", &link, io(append(&link)));
            }
        }
        if entry.is_dir() {
            let link = entry.join("hostile-own-link");
            r.note(
                &format!("link {}", own.display()),
                &link,
                io(std::fs::hard_link(&own, &link)),
            );
        }
    }
}

/// The share entries the host shares read-only.
fn read_only_entries(share: &Path, run: &RunFiles) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = run
        .mounts
        .iter()
        .filter(|m| m.options.iter().any(|o| o == "ro" || o == "rro"))
        .filter_map(|m| m.share.as_deref())
        .map(|name| share.join(name))
        .collect();
    if run.rootfs.readonly {
        v.push(share.join(&run.rootfs.root));
    }
    v
}

fn write_read_only(r: &mut Report, share: &Path, run: &RunFiles) {
    for entry in read_only_entries(share, run) {
        if entry.is_dir() {
            let new = entry.join("hostile-new");
            r.note("create", &new, io(std::fs::write(&new, "new\n")));
            let dir = entry.join("hostile-dir");
            r.note("mkdir", &dir, io(std::fs::create_dir(&dir)));
        }
        let Some(file) = a_file_of(&entry) else {
            continue;
        };
        r.note("append", &file, io(append(&file)));
        r.note(
            "truncate",
            &file,
            io(std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .and_then(|f| f.set_len(0))),
        );
        r.note(
            "chmod 777",
            &file,
            io(std::fs::set_permissions(
                &file,
                std::fs::Permissions::from_mode(0o777),
            )),
        );
        r.note(
            "setxattr user.hostile",
            &file,
            setxattr(&file, "user.hostile", b"yes"),
        );
        let moved = file.with_file_name("hostile-renamed");
        let renamed = io(std::fs::rename(&file, &moved));
        let ok = renamed.is_ok();
        r.note("rename", &file, renamed);
        let gone = if ok { moved } else { file };
        r.note("unlink", &gone, io(std::fs::remove_file(&gone)));
    }
}

fn top_level(r: &mut Report, share: &Path) {
    let entries: Vec<PathBuf> = std::fs::read_dir(share)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let f = share.join("hostile-top");
    r.note("create", &f, io(std::fs::write(&f, "top\n")));
    let d = share.join("hostile-topdir");
    r.note("mkdir", &d, io(std::fs::create_dir(&d)));
    let l = share.join("hostile-toplink");
    r.note("symlink to /", &l, io(std::os::unix::fs::symlink("/", &l)));
    for e in entries {
        let Some(name) = e.file_name() else { continue };
        let moved = share.join(format!("hostile-moved-{}", name.to_string_lossy()));
        r.note("rename", &e, io(std::fs::rename(&e, &moved)));
        r.note(
            "symlink to / in place of",
            &e,
            io(std::os::unix::fs::symlink("/", &e)),
        );
    }
}

fn open_flood(r: &mut Report, root: &Path) {
    let target = root.join("hostile-flood");
    r.note("create", &target, io(std::fs::write(&target, "flood\n")));
    let limit = nix::sys::resource::Resource::RLIMIT_NOFILE;
    let want = (FLOOD_OPENS + 64) as u64;
    r.note(
        "raise the descriptor limit for",
        &target,
        errno(nix::sys::resource::setrlimit(limit, want, want)),
    );
    let started = Instant::now();
    let mut held = Vec::new();
    let mut ended: Result<(), String> = Ok(());
    while held.len() < FLOOD_OPENS && started.elapsed() < FLOOD_TIME {
        match std::fs::File::open(&target) {
            Ok(f) => held.push(f),
            Err(e) => {
                ended = io(Err::<(), _>(e));
                break;
            }
        }
    }
    r.note(&format!("open {} times", held.len()), &target, ended);
    drop(held);
    // After closing them all, the file must still open.
    r.note("open once more", &target, io(std::fs::File::open(&target)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use runvm_protocol::{MountSpec, RootfsSpec};

    /// A share like the host's: `root/` with a file, `m0/` (a directory, read-only bind)
    /// and `m1` (a file).
    fn share() -> (tempfile::TempDir, RunFiles) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("root")).unwrap();
        std::fs::write(t.path().join("root/app"), "app\n").unwrap();
        std::fs::create_dir(t.path().join("root/etc")).unwrap();
        std::fs::write(t.path().join("root/etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::write(t.path().join("passwd"), "outside\n").unwrap();
        std::fs::create_dir(t.path().join("m0")).unwrap();
        std::fs::write(t.path().join("m0/data"), "data\n").unwrap();
        std::fs::write(t.path().join("m1"), "conf\n").unwrap();
        let bind = |name: &str, options: &[&str]| MountSpec {
            destination: format!("/{name}"),
            fstype: "bind".into(),
            options: options.iter().map(|o| o.to_string()).collect(),
            share: Some(name.into()),
            ..Default::default()
        };
        let run = RunFiles {
            rootfs: RootfsSpec::default(),
            mounts: vec![bind("m0", &["rbind", "ro"]), bind("m1", &["rbind"])],
        };
        (t, run)
    }

    fn lines(report: &str) -> Vec<&str> {
        report.lines().collect()
    }

    #[test]
    fn each_attempt_is_one_line_naming_the_share_path() {
        let (t, run) = share();
        let report = attack_in(t.path(), Mode::ShareSymlink, &run);
        assert_eq!(
            lines(&report),
            [
                "symlink to /etc/shadow root/hostile-abs: ok",
                "symlink to ../../../../../../../../etc/shadow root/hostile-climb: ok",
                "symlink to /proc/1/root/etc/shadow root/hostile-proc: ok",
                "unlink root/etc/passwd: ok",
                "symlink to ../../passwd root/etc/passwd: ok",
            ]
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("root/etc/passwd")).unwrap(),
            "outside\n",
            "followed on this host, it leaves the root"
        );
        // A refusal is its errno.
        let report = attack_in(t.path(), Mode::ShareSymlink, &run);
        assert!(lines(&report)[0].ends_with("root/hostile-abs: EEXIST: File exists"));
    }

    #[test]
    fn hard_links_cross_the_entries_and_are_written_through() {
        let (t, run) = share();
        let report = attack_in(t.path(), Mode::ShareHardlink, &run);
        let p = t.path().display();
        assert_eq!(
            lines(&report),
            [
                "create root/hostile-own: ok".to_string(),
                format!("link {p}/m0/data root/hostile-link-m0: ok"),
                "append through the link root/hostile-link-m0: ok".to_string(),
                format!("link {p}/root/hostile-own m0/hostile-own-link: ok"),
                format!("link {p}/m1 root/hostile-link-m1: ok"),
                "append through the link root/hostile-link-m1: ok".to_string(),
            ]
        );
        // Here nothing stops them: the host's share must.
        assert_eq!(
            std::fs::read(t.path().join("m0/data")).unwrap(),
            b"data\nhostile\n"
        );
    }

    #[test]
    fn writes_go_to_the_read_only_entries_only() {
        let (t, run) = share();
        let report = attack_in(t.path(), Mode::ShareWriteRo, &run);
        let l = lines(&report);
        assert_eq!(l.len(), 8, "{report}");
        assert!(l.iter().all(|l| l.contains(" m0/")), "{report}");
        assert_eq!(std::fs::read(t.path().join("m1")).unwrap(), b"conf\n");
    }

    #[test]
    fn the_top_level_entries_are_moved_and_replaced() {
        let (t, run) = share();
        let report = attack_in(t.path(), Mode::ShareTopLevel, &run);
        assert!(report.contains("rename root: ok\n"), "{report}");
        assert_eq!(
            std::fs::read_link(t.path().join("m1")).unwrap(),
            Path::new("/")
        );
        assert!(t.path().join("hostile-moved-m1").is_file());
    }

    #[test]
    fn the_other_attacks_report_every_step() {
        for (mode, steps) in [
            (Mode::ShareSetuid, 11),
            (Mode::ShareMknod, 5),
            (Mode::ShareChown, 10),
            (Mode::ShareXattr, 8),
        ] {
            let (t, run) = share();
            let report = attack_in(t.path(), mode, &run);
            assert_eq!(lines(&report).len(), steps, "{mode:?}: {report}");
            assert!(
                lines(&report).iter().all(|l| l.contains(" root/")),
                "{mode:?}: {report}"
            );
        }
        let (t, run) = share();
        let report = attack_in(t.path(), Mode::ShareChown, &run);
        assert!(
            report.contains("chown 12345:12345 root/app: ok"),
            "{report}"
        );
        assert!(
            report.contains("create as 12345:12345 root/hostile-open/hostile-made-as-12345: ok"),
            "{report}"
        );
        use std::os::unix::fs::MetadataExt;
        let made =
            std::fs::metadata(t.path().join("root/hostile-open/hostile-made-as-12345")).unwrap();
        assert_eq!((made.uid(), made.gid()), (12345, 12345));

        let (t, run) = share();
        let report = attack_in(t.path(), Mode::ShareSetuid, &run);
        assert!(report.contains("create with mode 6755 root/hostile-setuid-created: ok"));
        let mode = |name: &str| {
            std::fs::metadata(t.path().join("root").join(name))
                .unwrap()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("hostile-setuid-created"), 0o6755);
        // This test runs as root, with CAP_FSETID: the write keeps the bits.
        assert_eq!(mode("hostile-setuid-written"), 0o6755);
    }
}

//! The applier against good and hostile streams: what lands below the root, and that
//! nothing outside it changes.

use super::*;
use runvm_protocol::{
    write_frame_limited, FileMeta, SpecialKind, WritebackEntry, MAX_WRITEBACK_FRAME_LEN,
};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `root/` (the container's tree) and `outside/` (must never change), removed on drop.
struct Trees {
    base: tempfile::TempDir,
}

impl Trees {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        std::fs::create_dir_all(base.join("root/etc")).unwrap();
        std::fs::create_dir_all(base.join("outside/dir")).unwrap();
        std::fs::write(base.join("root/etc/passwd"), "root\n").unwrap();
        std::fs::write(base.join("outside/secret"), "secret\n").unwrap();
        std::fs::write(base.join("outside/dir/y"), "y\n").unwrap();
        Self { base: tmp }
    }

    fn root(&self) -> PathBuf {
        self.base.path().join("root")
    }

    fn outside(&self) -> PathBuf {
        self.base.path().join("outside")
    }

    fn apply(&self, stream: &[u8]) -> Result<Report, WritebackError> {
        self.apply_limited(stream, LIMITS)
    }

    fn apply_limited(&self, stream: &[u8], limits: Limits) -> Result<Report, WritebackError> {
        let t = WritebackTarget::open(self.root(), limits, Duration::from_secs(5)).unwrap();
        let mut r = stream;
        apply_stream(t.root.as_fd(), &mut r, &limits, None)
    }

    /// Every path below `dir` with its kind and content, to compare before and after.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let md = p.symlink_metadata().unwrap();
                let what = if md.is_dir() {
                    stack.push(p.clone());
                    format!("dir {:o}", md.mode())
                } else if md.file_type().is_symlink() {
                    format!("link {:?}", std::fs::read_link(&p).unwrap())
                } else if md.is_file() {
                    format!(
                        "file {:o} {:?}",
                        md.mode(),
                        std::fs::read(&p).unwrap_or_default()
                    )
                } else {
                    format!("special {:o}", md.mode())
                };
                out.push((p, what));
            }
        }
        out.sort();
        out
    }

    fn assert_outside_unchanged(&self, before: &[(PathBuf, String)]) {
        assert_eq!(
            Self::snapshot(&self.outside()),
            before,
            "outside the root changed"
        );
    }

    /// Names in the root that look like our temporary files.
    fn temp_files(&self) -> Vec<PathBuf> {
        Self::snapshot(&self.root())
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".runvm-wb")
            })
            .collect()
    }
}

const LIMITS: Limits = Limits {
    max_file_bytes: 1 << 20,
    max_total_bytes: 4 << 20,
    max_entries: 1000,
};

fn meta(mode: u32) -> FileMeta {
    FileMeta {
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_600_000_000,
        mtime_nsec: 5,
    }
}

/// Builds a stream; `end` adds the end marker with the right count.
#[derive(Default)]
struct Stream {
    bytes: Vec<u8>,
    entries: u64,
}

impl Stream {
    fn entry(mut self, e: WritebackEntry) -> Self {
        write_frame_limited(&mut self.bytes, &e, MAX_WRITEBACK_FRAME_LEN).unwrap();
        self.entries += 1;
        self
    }

    fn file(self, path: &str, data: &[u8]) -> Self {
        let mut s = self.entry(WritebackEntry::File {
            path: path.into(),
            meta: meta(0o644),
            size: data.len() as u64,
        });
        s.bytes.extend_from_slice(data);
        s
    }

    fn dir(self, path: &str, opaque: bool) -> Self {
        self.entry(WritebackEntry::Dir {
            path: path.into(),
            meta: meta(0o755),
            opaque,
        })
    }

    fn symlink(self, path: &str, target: &str) -> Self {
        self.entry(WritebackEntry::Symlink {
            path: path.into(),
            meta: meta(0o777),
            target: target.into(),
        })
    }

    fn whiteout(self, path: &str) -> Self {
        self.entry(WritebackEntry::Whiteout { path: path.into() })
    }

    fn end(self) -> Vec<u8> {
        let n = self.entries;
        self.entry(WritebackEntry::End {
            entries: n,
            skipped: 0,
        })
        .bytes
    }
}

#[test]
fn a_good_stream_lands_as_a_diff() {
    let t = Trees::new();
    let r = t.root();
    std::fs::create_dir_all(r.join("old/sub")).unwrap();
    std::fs::write(r.join("old/sub/f"), "x").unwrap();
    std::fs::create_dir_all(r.join("opaque/keep-not")).unwrap();
    std::fs::write(r.join("opaque/gone"), "x").unwrap();
    std::fs::write(r.join("was-file"), "x").unwrap();
    std::fs::create_dir_all(r.join("was-dir/deep")).unwrap();
    std::fs::write(r.join("etc/deleted"), "x").unwrap();

    let stream = Stream::default()
        .dir("etc", false)
        .file("etc/hosts", b"127.0.0.1 new\n")
        .entry(WritebackEntry::File {
            path: b"etc/suid".to_vec(),
            meta: FileMeta {
                mode: 0o4711,
                uid: 1000,
                gid: 1000,
                mtime: 1_500_000_000,
                mtime_nsec: 123,
            },
            size: 2,
        });
    let mut stream = stream;
    stream.bytes.extend_from_slice(b"#!");
    let stream = stream
        .entry(WritebackEntry::Hardlink {
            path: b"etc/suid-link".to_vec(),
            target: b"etc/suid".to_vec(),
        })
        .whiteout("etc/deleted")
        .whiteout("old")
        .whiteout("never-existed")
        .whiteout("no/such/dir")
        .dir("opaque", true)
        .file("opaque/new", b"n")
        .symlink("was-file", "/etc/passwd")
        .dir("was-dir", false)
        .file("was-dir", b"now a file")
        .entry(WritebackEntry::Special {
            path: b"fifo".to_vec(),
            meta: meta(0o640),
            kind: SpecialKind::Fifo,
            rdev: 0,
        })
        .end();
    let rep = t.apply(&stream).unwrap();
    assert_eq!(rep.failed, 0, "{:?}", rep.errors);
    assert_eq!(
        std::fs::read(r.join("etc/hosts")).unwrap(),
        b"127.0.0.1 new\n"
    );
    assert_eq!(std::fs::read(r.join("etc/passwd")).unwrap(), b"root\n");
    let md = std::fs::metadata(r.join("etc/suid")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o4711);
    assert_eq!((md.uid(), md.gid()), (1000, 1000));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 123));
    assert_eq!(
        md.ino(),
        std::fs::metadata(r.join("etc/suid-link")).unwrap().ino()
    );
    assert!(!r.join("etc/deleted").exists());
    assert!(!r.join("old").exists());
    let mut opaque: Vec<_> = std::fs::read_dir(r.join("opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    opaque.sort();
    assert_eq!(opaque, ["new"]);
    assert_eq!(
        std::fs::read_link(r.join("was-file")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(std::fs::read(r.join("was-dir")).unwrap(), b"now a file");
    let fifo = std::fs::symlink_metadata(r.join("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o640);
    // Directory times are the guest's, set after their contents were written.
    let etc = std::fs::metadata(r.join("etc")).unwrap();
    assert_eq!((etc.mtime(), etc.mtime_nsec()), (1_600_000_000, 5));
    assert_eq!(etc.permissions().mode() & 0o7777, 0o755);
    assert!(t.temp_files().is_empty());
}

#[test]
fn escaping_paths_are_refused_and_nothing_outside_changes() {
    let t = Trees::new();
    let before = Trees::snapshot(&t.outside());
    let out = t.outside().display().to_string();
    for bad in [
        "../outside/secret",
        "etc/../../outside/secret",
        "/etc/passwd",
        &format!("{out}/secret"),
        "etc//passwd",
        "etc/./passwd",
        "etc/pass\0wd",
        "",
    ] {
        for s in [
            Stream::default().file(bad, b"pwned").end(),
            Stream::default().whiteout(bad).end(),
            Stream::default().dir(bad, true).end(),
            Stream::default().symlink(bad, "/").end(),
        ] {
            let e = t.apply(&s).unwrap_err();
            assert!(matches!(e, WritebackError::BadPath { .. }), "{bad:?}: {e}");
        }
        let s = Stream::default()
            .entry(WritebackEntry::Hardlink {
                path: b"etc/link".to_vec(),
                target: bad.as_bytes().to_vec(),
            })
            .end();
        assert!(
            matches!(t.apply(&s), Err(WritebackError::BadPath { .. })),
            "{bad:?}"
        );
    }
    let long = "a/".repeat(2100) + "b";
    let e = t
        .apply(&Stream::default().file(&long, b"x").end())
        .unwrap_err();
    assert!(matches!(e, WritebackError::BadPath { .. }), "{e}");
    let e = t
        .apply(&Stream::default().file(&"n".repeat(256), b"x").end())
        .unwrap_err();
    assert!(matches!(e, WritebackError::BadPath { .. }), "{e}");
    t.assert_outside_unchanged(&before);
    assert_eq!(
        std::fs::read(t.root().join("etc/passwd")).unwrap(),
        b"root\n"
    );
}

#[test]
fn symlinks_are_never_followed_out_of_the_root() {
    let t = Trees::new();
    let before = Trees::snapshot(&t.outside());
    let out = t.outside().display().to_string();
    // A symlink already in the host tree, and one the stream plants first.
    std::os::unix::fs::symlink(&out, t.root().join("hostlink")).unwrap();
    std::os::unix::fs::symlink("../../outside", t.root().join("etc/rel")).unwrap();
    let s = Stream::default()
        .symlink("planted", &out)
        .file("planted/secret", b"pwned")
        .file("planted/new", b"pwned")
        .file("hostlink/secret", b"pwned")
        .file("etc/rel/secret", b"pwned")
        .whiteout("hostlink/secret")
        .whiteout("planted/dir")
        .dir("planted/dir", true)
        .entry(WritebackEntry::Special {
            path: b"hostlink/fifo".to_vec(),
            meta: meta(0o644),
            kind: SpecialKind::Fifo,
            rdev: 0,
        })
        .symlink("hostlink/l", "/")
        .entry(WritebackEntry::Hardlink {
            path: b"stolen".to_vec(),
            target: b"hostlink/secret".to_vec(),
        })
        .entry(WritebackEntry::Hardlink {
            path: b"hostlink/x".to_vec(),
            target: b"etc/passwd".to_vec(),
        })
        .file("after", b"still applied")
        .end();
    let rep = t.apply(&s).unwrap();
    // Every entry through a symlink failed on its own; the rest were applied.
    assert_eq!(rep.failed, 11, "{:?}", rep.errors);
    assert_eq!(
        std::fs::read(t.root().join("after")).unwrap(),
        b"still applied"
    );
    assert!(!t.root().join("stolen").exists());
    // The planted symlink itself is a symlink in the container's tree, as under runc.
    assert!(t
        .root()
        .join("planted")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
    t.assert_outside_unchanged(&before);
    assert!(t.temp_files().is_empty());
}

#[test]
fn a_directory_entry_replaces_a_symlink_instead_of_following_it() {
    let t = Trees::new();
    let before = Trees::snapshot(&t.outside());
    std::os::unix::fs::symlink(t.outside(), t.root().join("d")).unwrap();
    let s = Stream::default()
        .dir("d", true)
        .file("d/secret", b"inside now")
        .end();
    let rep = t.apply(&s).unwrap();
    assert_eq!(rep.failed, 0, "{:?}", rep.errors);
    assert!(t.root().join("d").symlink_metadata().unwrap().is_dir());
    assert_eq!(
        std::fs::read(t.root().join("d/secret")).unwrap(),
        b"inside now"
    );
    t.assert_outside_unchanged(&before);
}

#[test]
fn oversize_entries_are_refused() {
    let t = Trees::new();
    let limits = Limits {
        max_file_bytes: 10,
        max_total_bytes: 15,
        max_entries: 3,
    };
    let e = t
        .apply_limited(&Stream::default().file("big", &[1; 11]).end(), limits)
        .unwrap_err();
    assert!(matches!(e, WritebackError::TooLarge { .. }), "{e}");
    // Over the total, counted across files.
    let s = Stream::default()
        .file("a", &[1; 10])
        .file("b", &[1; 10])
        .end();
    let e = t.apply_limited(&s, limits).unwrap_err();
    assert!(matches!(e, WritebackError::TooLarge { .. }), "{e}");
    assert!(t.root().join("a").exists() && !t.root().join("b").exists());
    // A size that claims more than the stream holds is a truncation, not an allocation.
    let s = Stream::default()
        .entry(WritebackEntry::File {
            path: b"huge".to_vec(),
            meta: meta(0o644),
            size: u64::MAX,
        })
        .end();
    let e = t.apply(&s).unwrap_err();
    assert!(matches!(e, WritebackError::TooLarge { .. }), "{e}");
    let s = Stream::default()
        .dir("1", false)
        .dir("2", false)
        .dir("3", false)
        .dir("4", false)
        .end();
    let e = t.apply_limited(&s, limits).unwrap_err();
    assert!(matches!(e, WritebackError::TooManyEntries(3)), "{e}");
    // An oversize frame.
    let mut s = (MAX_WRITEBACK_FRAME_LEN + 1).to_le_bytes().to_vec();
    s.extend_from_slice(&[b'{'; 64]);
    assert!(matches!(
        t.apply(&s),
        Err(WritebackError::Frame(FrameError::TooLarge { .. }))
    ));
    assert!(!t.root().join("huge").exists());
    assert!(t.temp_files().is_empty());
}

#[test]
fn truncated_streams_leave_whole_files_only() {
    let t = Trees::new();
    std::fs::write(t.root().join("etc/hosts"), "old\n").unwrap();
    let full = Stream::default()
        .file("first", b"complete")
        .file("etc/hosts", &[b'n'; 100])
        .end();
    // Cut everywhere: never a panic, never half a file, never a temporary file left.
    for cut in 0..full.len() {
        let r = t.apply(&full[..cut]);
        assert!(r.is_err(), "cut at {cut} accepted");
        let hosts = std::fs::read(t.root().join("etc/hosts")).unwrap();
        assert!(
            hosts == b"old\n" || hosts == [b'n'; 100],
            "cut at {cut}: half a file"
        );
        if let Ok(first) = std::fs::read(t.root().join("first")) {
            assert_eq!(first, b"complete");
        }
        assert!(t.temp_files().is_empty(), "cut at {cut}");
        std::fs::write(t.root().join("etc/hosts"), "old\n").unwrap();
        let _ = std::fs::remove_file(t.root().join("first"));
    }
    assert!(matches!(t.apply(&[]), Err(WritebackError::Truncated(0))));
    t.apply(&full).unwrap();
    // An end marker that counts differently.
    let mut s = Stream::default().file("x", b"1");
    s.entries = 5;
    assert!(matches!(
        t.apply(&s.end()),
        Err(WritebackError::Count { claimed: 5, got: 1 })
    ));
}

#[test]
fn garbage_is_an_error_never_a_panic_and_stays_inside() {
    let t = Trees::new();
    let before = Trees::snapshot(&t.outside());
    let out = t.outside().display().to_string();
    let good = Stream::default()
        .dir("etc", false)
        .file("etc/a", b"aaaa")
        .symlink("l", &out)
        .whiteout("etc/passwd")
        .entry(WritebackEntry::Special {
            path: b"dev0".to_vec(),
            meta: meta(0o600),
            kind: SpecialKind::CharDevice,
            rdev: 0,
        })
        .file("l/x", b"bbbb")
        .end();
    // Deterministic pseudo-random corruption of a valid stream.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let mut s = good.clone();
        for _ in 0..(next() % 4 + 1) {
            let i = (next() as usize) % s.len();
            s[i] = next() as u8;
        }
        let _ = t.apply(&s);
    }
    let junk: Vec<u8> = (0..4096).map(|_| next() as u8).collect();
    assert!(t.apply(&junk).is_err());
    let mut framed = 10u32.to_le_bytes().to_vec();
    framed.extend_from_slice(b"{\"Dir\":{}}");
    assert!(matches!(t.apply(&framed), Err(WritebackError::Frame(_))));
    t.assert_outside_unchanged(&before);
    // The 0:0 character device (a whiteout to overlayfs) was refused, not made.
    let rep = t.apply(&good).unwrap();
    assert_eq!(rep.failed, 2, "{:?}", rep.errors);
    assert!(!t.root().join("dev0").exists());
    t.assert_outside_unchanged(&before);
}

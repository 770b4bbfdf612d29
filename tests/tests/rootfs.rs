//! The root filesystem: changes a container makes are written back to `root.path` when it
//! stops (a plain directory, or an overlay mount's upperdir, as Docker's is), overlay
//! roots give the merged view in the guest from one cached image per image that every
//! container of it shares, `root.readonly` refuses writes, file bind mounts are copied in
//! and directory bind mounts refused. Run with `cargo xtask guest-test rootfs`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use runvm_tests::*;

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A private image cache for one test (`RUNVM_IMAGE_CACHE`).
struct Cache {
    dir: TempDir,
}

impl Cache {
    fn new() -> Self {
        Self {
            dir: TempDir::new("cache"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `runvm --root R [--log L --debug] ARGS…` with this cache.
    fn runvm(&self, root: &StateRoot, log: Option<&Path>, args: &[&str]) -> Command {
        let mut pre: Vec<String> = Vec::new();
        if let Some(l) = log {
            pre.extend(["--log".into(), l.display().to_string(), "--debug".into()]);
        }
        let mut c = Command::new(runvm_bin());
        c.arg("--root")
            .arg(root.path())
            .args(&pre)
            .args(args)
            .env("RUNVM_IMAGE_CACHE", self.path());
        c
    }

    /// `runvm run` to completion.
    fn run(&self, root: &StateRoot, bundle: &Bundle, id: &str, log: Option<&Path>) -> Output {
        let bundle = bundle.path().to_str().unwrap();
        let cmd = self.runvm(root, log, &["run", "--bundle", bundle, id]);
        output_of(cmd, Duration::from_secs(180))
    }

    /// `runvm create` with the container's stdout and stderr in files of the bundle
    /// (see [`create_with`]).
    fn create(
        &self,
        root: &StateRoot,
        bundle: &Bundle,
        id: &str,
        log: Option<&Path>,
    ) -> (Output, Option<i32>) {
        create_with(self.runvm(root, log, &[]), bundle, id)
    }

    fn cmd(&self, root: &StateRoot, args: &[&str]) -> Output {
        output_of(self.runvm(root, None, args), Duration::from_secs(120))
    }

    /// The shared images in the cache.
    fn images(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "erofs"))
            .collect();
        v.sort();
        v
    }

    /// Asserts that only images, their records and locks are in the cache: no temporary
    /// build, no mount point, no per-container scratch file, and no mount of it anywhere.
    fn assert_clean(&self) {
        for e in std::fs::read_dir(self.path()).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "scratch" {
                let left: Vec<_> = std::fs::read_dir(e.path()).unwrap().collect();
                assert!(left.is_empty(), "scratch files left: {left:?}");
                continue;
            }
            assert!(
                [".erofs", ".json", ".lock"]
                    .iter()
                    .any(|s| name.ends_with(s)),
                "left in the cache: {name}"
            );
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = self.path().display().to_string();
        assert!(
            !mounts.contains(&dir),
            "a mount of {dir} is left:\n{mounts}"
        );
    }
}

/// A copy of the busybox root filesystem that a test may change.
fn rootfs_copy() -> TempDir {
    let dir = TempDir::new("rootfs");
    let src = test_rootfs();
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{src}/."))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {src} failed");
    dir
}

/// A bundle running `sh -c script` on `rootfs` with `mounts`.
fn bundle(rootfs: &Path, script: &str, readonly: bool, mounts: serde_json::Value) -> Bundle {
    let mut config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false, "user": { "uid": 0, "gid": 0 },
            "args": ["sh", "-c", script], "env": [PATH_ENV], "cwd": "/",
        },
        "root": { "path": rootfs, "readonly": readonly },
        "hostname": "rootfs-test",
        "linux": { "namespaces": default_namespaces() },
    });
    if !mounts.is_null() {
        config["mounts"] = mounts;
    }
    Bundle::from_config(&config.to_string())
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// An overlayfs whiteout (a 0:0 character device) at `p`.
fn whiteout(p: &Path) {
    // SAFETY: mknod with a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(c(p).as_ptr(), libc::S_IFCHR | 0o600, 0) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// Marks directory `p` opaque for overlayfs.
fn opaque(p: &Path) {
    // SAFETY: setxattr with valid NUL-terminated strings and a 1-byte value.
    let rc = unsafe {
        libc::setxattr(
            c(p).as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn write(p: &Path, content: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn is_whiteout(p: &Path) -> bool {
    p.symlink_metadata()
        .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

/// An overlay mount of `lowers` (top first) with its own upper and work directories,
/// unmounted on drop, as Docker's `merged` directory is.
struct Overlay {
    dir: TempDir,
}

impl Overlay {
    fn mount(lowers: &[&Path], prepare_upper: impl FnOnce(&Path)) -> Self {
        let dir = TempDir::new("overlay");
        for d in ["diff", "work", "merged"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        prepare_upper(&dir.path().join("diff"));
        let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            dir.path().join("diff").display(),
            dir.path().join("work").display()
        );
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(dir.path().join("merged"))
            .status()
            .unwrap();
        assert!(st.success(), "mount -t overlay -o {opts} failed");
        Self { dir }
    }

    fn merged(&self) -> PathBuf {
        self.dir.path().join("merged")
    }

    fn upper(&self) -> PathBuf {
        self.dir.path().join("diff")
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.merged()).status();
    }
}

fn log_has(log: &Path, needle: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(needle)
}

const BUILT: &str = "built the shared image";

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn changes_land_in_a_plain_rootfs_and_the_next_container_sees_them() {
    let root = StateRoot::new();
    let cache = Cache::new();
    let rootfs = rootfs_copy();
    let r = rootfs.path();
    write(&r.join("srv/old/f"), "old\n");

    let b = bundle(
        r,
        "echo hello > /root/new && chmod 600 /root/new && mkdir -p /srv/d && echo x > /srv/d/f && \
         rm /etc/hostname && ln -s /root/new /root/link && rm -rf /srv/old && exit 3",
        false,
        serde_json::Value::Null,
    );
    let out = cache.run(&root, &b, "wb1", None);
    assert_eq!(
        code(&out),
        3,
        "the exit code passes through: {}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(r.join("root/new")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        std::fs::metadata(r.join("root/new"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(r.join("srv/d/f")).unwrap(), "x\n");
    assert!(!r.join("etc/hostname").exists(), "a deleted file is gone");
    assert!(!r.join("srv/old").exists(), "a deleted directory is gone");
    assert_eq!(
        std::fs::read_link(r.join("root/link")).unwrap(),
        Path::new("/root/new")
    );
    assert!(
        !is_whiteout(&r.join("etc/hostname")),
        "no whiteout in a plain directory"
    );

    // A second container of the same bundle sees the first one's changes.
    let b2 = bundle(
        r,
        "cat /root/new; test -e /etc/hostname || echo hostname-gone; readlink /root/link; rm -rf /srv",
        false,
        serde_json::Value::Null,
    );
    let out = cache.run(&root, &b2, "wb2", None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello\nhostname-gone\n/root/new\n");
    assert!(!r.join("srv").exists());

    // A container killed with SIGKILL still writes back (the guest init outlives it).
    let b3 = bundle(
        r,
        "echo killed > /root/k && echo ready && exec sleep 600",
        false,
        serde_json::Value::Null,
    );
    let (out, pid) = cache.create(&root, &b3, "wb3", None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let pid = pid.unwrap();
    assert_eq!(code(&cache.cmd(&root, &["start", "wb3"])), 0);
    b3.wait_for_stdout("ready\n", Duration::from_secs(60));
    assert_eq!(code(&cache.cmd(&root, &["kill", "wb3", "KILL"])), 0);
    assert_eq!(reap(pid, Duration::from_secs(60)), 137);
    assert_eq!(
        std::fs::read_to_string(r.join("root/k")).unwrap(),
        "killed\n"
    );
    assert_eq!(code(&cache.cmd(&root, &["delete", "wb3"])), 0);

    // `delete --force` of a running container: its changes are written back before the
    // monitor exits, which is what delete waits for.
    let b4 = bundle(
        r,
        "echo forced > /root/f && echo ready && exec sleep 600",
        false,
        serde_json::Value::Null,
    );
    let (out, pid) = cache.create(&root, &b4, "wb4", None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(code(&cache.cmd(&root, &["start", "wb4"])), 0);
    b4.wait_for_stdout("ready\n", Duration::from_secs(60));
    let out = cache.cmd(&root, &["delete", "--force", "wb4"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(r.join("root/f")).unwrap(),
        "forced\n"
    );
    reap(pid.unwrap(), Duration::from_secs(30));

    root.assert_clean(Duration::from_secs(2));
    cache.assert_clean();
    // A plain directory's images are cached by its tree's signature: each container
    // above saw the changes of the one before, so none was served a stale image.
    assert!(
        !cache.images().is_empty(),
        "the plain directory's images are in the cache"
    );
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn an_overlay_root_is_merged_shared_from_one_cached_image_and_written_back_to_its_upperdir() {
    let root = StateRoot::new();
    let cache = Cache::new();
    let logs = TempDir::new("logs");
    // Image layers: l1 (the busybox tree and more) under l2, which deletes /etc/hidden
    // and replaces /opq.
    let l1 = rootfs_copy();
    write(&l1.path().join("etc/l1"), "l1\n");
    write(&l1.path().join("etc/hidden"), "hidden\n");
    write(&l1.path().join("opq/old"), "old\n");
    write(&l1.path().join("uo/x"), "x\n");
    let l2 = TempDir::new("l2");
    write(&l2.path().join("etc/l2"), "l2\n");
    whiteout(&l2.path().join("etc/hidden"));
    write(&l2.path().join("opq/new"), "new\n");
    opaque(&l2.path().join("opq"));
    // Container 1's upper holds earlier changes: /etc/up, /etc/l1 deleted, /uo emptied.
    let c1 = Overlay::mount(&[l2.path(), l1.path()], |u| {
        write(&u.join("etc/up"), "up\n");
        whiteout(&u.join("etc/l1"));
        std::fs::create_dir(u.join("uo")).unwrap();
        opaque(&u.join("uo"));
    });
    let c2 = Overlay::mount(&[l2.path(), l1.path()], |_| {});

    let log1 = logs.path().join("c1.log");
    let b1 = bundle(
        &c1.merged(),
        "ls /opq; ls /uo; cat /etc/l2 /etc/up; for f in hidden l1; do test -e /etc/$f || echo $f-gone; done; \
         echo new > /etc/new && rm /etc/l2",
        false,
        serde_json::Value::Null,
    );
    let t = Instant::now();
    let out = cache.run(&root, &b1, "ov1", Some(&log1));
    let cold = t.elapsed();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "new\nl2\nup\nhidden-gone\nl1-gone\n");
    assert!(
        log_has(&log1, BUILT),
        "the first container builds the image"
    );
    let images = cache.images();
    assert_eq!(images.len(), 1, "{images:?}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(images[0].with_extension("json")).unwrap()).unwrap();
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap().display().to_string();
    assert_eq!(
        record["layers"],
        serde_json::json!([canon(l2.path()), canon(l1.path())]),
        "the image is of the image layers only"
    );
    let ino = std::fs::metadata(&images[0]).unwrap().ino();
    // The write-back went through the merged view: the host overlay made the upperdir
    // changes (a new file, a whiteout for the deleted lower file); the layers are as they were.
    assert_eq!(
        std::fs::read_to_string(c1.upper().join("etc/new")).unwrap(),
        "new\n"
    );
    assert!(
        is_whiteout(&c1.upper().join("etc/l2")),
        "rm of a lower file is a whiteout"
    );
    assert_eq!(
        std::fs::read_to_string(l2.path().join("etc/l2")).unwrap(),
        "l2\n"
    );
    assert!(!l1.path().join("etc/new").exists());

    // Another container of the same image: the same image file, not built again.
    let log2 = logs.path().join("c2.log");
    let b2 = bundle(
        &c2.merged(),
        "cat /etc/l1; test -e /etc/new || echo no-new; ls /uo",
        false,
        serde_json::Value::Null,
    );
    let t = Instant::now();
    let out = cache.run(&root, &b2, "ov2", Some(&log2));
    let warm = t.elapsed();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "l1\nno-new\nx\n");
    assert!(
        !log_has(&log2, BUILT),
        "the second container must reuse the image"
    );
    assert_eq!(cache.images(), images);
    assert_eq!(std::fs::metadata(&images[0]).unwrap().ino(), ino);

    // Container 1 again (docker stop + start): its earlier changes are there.
    let b3 = bundle(
        &c1.merged(),
        "cat /etc/new; test -e /etc/l2 || echo l2-gone; ls /uo; cat /etc/up",
        false,
        serde_json::Value::Null,
    );
    let out = cache.run(&root, &b3, "ov3", None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "new\nl2-gone\nup\n");
    eprintln!(
        "run of a container: {} ms with a cold image cache, {} ms warm (emulated test host)",
        cold.as_millis(),
        warm.as_millis()
    );

    root.assert_clean(Duration::from_secs(2));
    drop((c1, c2));
    cache.assert_clean();
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn twenty_parallel_creates_of_a_new_image_all_succeed_with_one_build() {
    let root = StateRoot::new();
    let cache = Cache::new();
    let logs = TempDir::new("logs");
    let l1 = rootfs_copy();
    let l2 = TempDir::new("l2");
    write(&l2.path().join("etc/parallel"), "p\n");
    let ov = Overlay::mount(&[l2.path(), l1.path()], |_| {});
    let bundles: Vec<Bundle> = (0..20)
        .map(|_| bundle(&ov.merged(), "true", false, serde_json::Value::Null))
        .collect();
    let started = Instant::now();
    let results: Vec<(Output, Option<i32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = bundles
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let (cache, root, log) = (&cache, &root, logs.path().join(format!("{i}.log")));
                s.spawn(move || cache.create(root, b, &format!("par{i}"), Some(&log)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("20 parallel creates: {} ms", started.elapsed().as_millis());
    for (i, (out, pid)) in results.iter().enumerate() {
        assert_eq!(
            code(out),
            0,
            "create {i} failed: {}",
            std::fs::read_to_string(bundles[i].path().join("stderr")).unwrap_or_default()
        );
        assert!(pid.is_some(), "create {i} wrote no pid file");
    }
    let builds = (0..20)
        .filter(|i| log_has(&logs.path().join(format!("{i}.log")), BUILT))
        .count();
    assert_eq!(builds, 1, "exactly one create builds the image");
    assert_eq!(cache.images().len(), 1);
    cache.assert_clean();
    for (i, (_, pid)) in results.iter().enumerate() {
        let out = cache.cmd(&root, &["delete", "--force", &format!("par{i}")]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        reap(pid.unwrap(), Duration::from_secs(30));
    }
    root.assert_clean(Duration::from_secs(2));
    drop(ov);
    cache.assert_clean();
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn a_read_only_root_refuses_writes() {
    let root = StateRoot::new();
    let cache = Cache::new();
    let rootfs = rootfs_copy();
    let b = bundle(
        rootfs.path(),
        "cat /etc/passwd >/dev/null && touch /etc/x",
        true,
        serde_json::Value::Null,
    );
    let out = cache.run(&root, &b, "ro", None);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );
    assert!(!rootfs.path().join("etc/x").exists());
    root.assert_clean(Duration::from_secs(2));
    cache.assert_clean();
}

#[test]
#[ignore = "boots a guest: run through `cargo xtask test`"]
fn file_binds_are_copied_in_at_start_and_directory_binds_are_refused() {
    let root = StateRoot::new();
    let cache = Cache::new();
    let rootfs = rootfs_copy();
    let host = TempDir::new("host");
    let hosts = host.path().join("hosts");
    let resolv = host.path().join("resolv.conf");
    write(&hosts, "10.1.2.3 atcreate\n");
    write(&resolv, "nameserver 10.9.9.9\n");
    let shm = host.path().join("shm");
    std::fs::create_dir(&shm).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "shm"])
        .arg(&shm)
        .status()
        .unwrap();
    assert!(st.success());
    let mounts = serde_json::json!([
        { "destination": "/proc", "type": "proc", "source": "proc" },
        { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"] },
        { "destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "nosuid", "noexec", "nodev"] },
        { "destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["rbind", "ro"] },
        { "destination": "/etc/resolv.conf", "type": "bind", "source": resolv, "options": ["rbind", "rprivate"] },
    ]);
    let b = bundle(
        rootfs.path(),
        "cat /etc/hosts /etc/resolv.conf; (echo x >> /etc/hosts) 2>/dev/null && echo hosts-written || echo hosts-ro; \
         echo 'nameserver 1.1.1.1' > /etc/resolv.conf && echo resolv-written; grep ' /dev/shm ' /proc/mounts",
        false,
        mounts,
    );
    let (out, pid) = cache.create(&root, &b, "binds", None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Docker writes these files between create and start: start's content counts.
    write(&hosts, "10.1.2.4 atstart\n");
    assert_eq!(code(&cache.cmd(&root, &["start", "binds"])), 0);
    assert_eq!(reap(pid.unwrap(), Duration::from_secs(60)), 0);
    let out = b.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "10.1.2.4 atstart",
            "nameserver 10.9.9.9",
            "hosts-ro",
            "resolv-written"
        ],
        "{out}"
    );
    assert!(
        lines[4].contains("tmpfs") && lines[4].contains("size=8192k"),
        "/dev/shm is a tmpfs of the host's size: {out}"
    );
    // Copies, not live: the host files are as they were.
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "nameserver 10.9.9.9\n"
    );
    assert_eq!(
        std::fs::read_to_string(&hosts).unwrap(),
        "10.1.2.4 atstart\n"
    );
    assert_eq!(code(&cache.cmd(&root, &["delete", "binds"])), 0);

    // A directory bind fails at create, naming it, and leaves nothing.
    let dir_bind = serde_json::json!([
        { "destination": "/data", "type": "bind", "source": host.path(), "options": ["rbind"] },
    ]);
    let b = bundle(rootfs.path(), "true", false, dir_bind);
    let (out, _) = cache.create(&root, &b, "dirbind", None);
    assert_ne!(code(&out), 0);
    let err = std::fs::read_to_string(b.path().join("stderr")).unwrap();
    assert!(
        err.contains("/data") && err.contains("not supported"),
        "{err}"
    );

    let _ = Command::new("umount").arg(&shm).status();
    root.assert_clean(Duration::from_secs(2));
    cache.assert_clean();
}

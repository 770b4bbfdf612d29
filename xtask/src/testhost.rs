//! `cargo xtask testhost -- CMD…`: the nested KVM test host. Builds (once,
//! cached) a Debian bookworm root filesystem with Docker, containerd, runc,
//! Podman and QEMU in it, boots it with QEMU (TCG with an emulated AMD CPU
//! that has SVM, or KVM where the host has real nested virtualization), runs
//! one command as root at the caller's working directory with the repository,
//! the target dir and `~/.cache/runvm` shared at the same paths over 9p, passes
//! stdout, stderr and the exit code through, and powers off.
//!
//! Also owns `cargo xtask kernel-smoke` (boot our guest kernel with qemu
//! `microvm` inside the test host) and [`microvm_peer_args`], the qemu peer
//! command the benchmarks compare runvm against.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{self, Step};

/// Packages of the test host's root filesystem (debootstrap `--include`).
pub const ROOTFS_PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "docker.io",
    "containerd",
    "runc",
    "podman",
    // podman's golang-github-containers-common depends on the virtual package
    // container-network-stack, which debootstrap does not resolve by itself.
    "containernetworking-plugins",
    "busybox-static",
    "iproute2",
    "kmod",
    "systemd-sysv",
    "udev",
    "erofs-utils",
    "e2fsprogs",
    "qemu-system-x86",
    "procps",
    "psmisc",
    "tmux",
    "curl",
    "iputils-ping",
    // `cargo xtask bench net`: TCP throughput host ⇄ container.
    "iperf3",
];
const SUITE: &str = "bookworm";
/// Size of the (sparse) root filesystem image.
const IMAGE_SIZE: &str = "8G";
/// The init script run as PID 1 of the test host. It is not baked into the
/// image: it is copied into each run's control directory, so changing it does
/// not rebuild the image.
const INIT_SCRIPT: &str = include_str!("../assets/test-host-init");
/// What the image runs as `/sbin/test-host-init`: mounts the control
/// directory (9p tag `runvmctl`, path from `runvm.ctl=`) and runs its `init`.
const BOOTSTRAP_INIT: &str = r#"#!/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
ctl=
for arg in $(cat /proc/cmdline); do
    case "$arg" in runvm.ctl=*) ctl="${arg#runvm.ctl=}" ;; esac
done
modprobe 9pnet_virtio; modprobe 9p
mkdir -p "$ctl"
if [ -n "$ctl" ] && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none runvmctl "$ctl"; then
    exec /bin/sh "$ctl/init"
fi
echo "test-host-init: cannot mount the control directory ${ctl:-(no runvm.ctl=)}" > /dev/ttyS2
echo o > /proc/sysrq-trigger
sleep 10
"#;
/// apt packages the host side needs to build and boot the test host.
const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "debootstrap", "e2fsprogs"];
const DEFAULT_TIMEOUT_SECS: u64 = 4500;
/// Seconds without output or heartbeat after which a test host counts as wedged and is killed.
const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 90;

/// A built test host, cached under `~/.cache/runvm/testhost/<key>/`.
#[derive(Debug, Clone)]
pub struct TestHostImage {
    #[allow(dead_code)] // for other xtask commands
    pub dir: PathBuf,
    /// ext4 root filesystem image (booted with `-snapshot`: never modified).
    pub image: PathBuf,
    /// Debian's kernel and initrd from the image's `/boot`.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Builds the test host image if needed and returns it.
pub fn ensure_testhost() -> Result<TestHostImage> {
    util::ensure_apt(HOST_PACKAGES)?;
    let pkgs = ROOTFS_PACKAGES.join(",");
    let key = util::short_hash(&[pkgs.as_bytes(), SUITE.as_bytes(), BOOTSTRAP_INIT.as_bytes()]);
    let base = util::cache_dir().join("testhost");
    let dir = base.join(&key);
    let img = TestHostImage {
        image: dir.join("host.img"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        dir: dir.clone(),
    };
    if img.image.is_file() && img.kernel.is_file() && img.initrd.is_file() {
        return Ok(img);
    }
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    if !crate::util::is_root() {
        bail!("building the test host image needs root (debootstrap); run as root");
    }
    let mut step = Step::new("testhost");
    let tmp = base.join(format!("{key}.tmp"));
    util::remove_dir_if_exists(&tmp)?;
    let rootfs = tmp.join("rootfs");
    std::fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;

    let mirror = util::debian_mirror(SUITE)?;
    step.phase(&format!(
        "debootstrap {SUITE} from {mirror} (a few minutes)"
    ));
    let mut last_verb = String::new();
    let mut count = 0usize;
    util::run_lines(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={pkgs}"))
            .arg(SUITE)
            .arg(&rootfs)
            .arg(&mirror),
        |line| {
            let Some(rest) = line.strip_prefix("I: ") else {
                return;
            };
            let verb = rest.split_whitespace().next().unwrap_or("").to_string();
            if verb != last_verb {
                count = 0;
                last_verb = verb;
            }
            count += 1;
            step.progress(&format!("{last_verb} ({count}): {rest}"));
        },
    )
    .with_context(|| format!("debootstrap into {} failed", rootfs.display()))?;

    step.phase("installing test-host-init and packing the ext4 image");
    let init = rootfs.join("sbin/test-host-init");
    std::fs::write(&init, BOOTSTRAP_INIT).with_context(|| format!("writing {}", init.display()))?;
    set_mode(&init, 0o755)?;
    std::fs::write(rootfs.join("etc/hostname"), "runvm-testhost\n")?;
    std::fs::write(
        rootfs.join("etc/hosts"),
        "127.0.0.1 localhost\n127.0.1.1 runvm-testhost\n::1 localhost ip6-localhost ip6-loopback\n",
    )?;
    let boot = rootfs.join("boot");
    copy_newest(&boot, "vmlinuz-", &tmp.join("vmlinuz"))?;
    copy_newest(&boot, "initrd.img-", &tmp.join("initrd.img"))?;
    // The package caches are not needed inside.
    let _ = util::remove_dir_if_exists(&rootfs.join("var/cache/apt/archives"));
    util::run_quiet(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "runvm-testhost", "-d"])
            .arg(&rootfs)
            .arg(tmp.join("host.img"))
            .arg(IMAGE_SIZE),
    )
    .context("mkfs.ext4 of the test host image failed")?;
    util::remove_dir_if_exists(&rootfs)?;
    std::fs::write(
        tmp.join("packages"),
        format!("{SUITE} {mirror}\n{}\n", ROOTFS_PACKAGES.join("\n")),
    )?;
    util::remove_dir_if_exists(&dir)?;
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))?;
    step.finish("built the test host image", &dir);
    Ok(img)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Copies the lexically last `<dir>/<prefix>*` file to `dest`.
fn copy_newest(dir: &Path, prefix: &str, dest: &Path) -> Result<()> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    let src = found.pop().with_context(|| {
        format!(
            "no {prefix}* in {} (did linux-image-amd64 install?)",
            dir.display()
        )
    })?;
    std::fs::copy(&src, dest)
        .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    Ok(())
}

/// Which accelerator the test host QEMU uses, and why.
fn choose_accel() -> (Vec<String>, String) {
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let tcg = args(&["-accel", "tcg,thread=multi", "-cpu", "EPYC,+svm"]);
    if std::env::var("RUNVM_TESTHOST_ACCEL").as_deref() == Ok("tcg") {
        return (tcg, "RUNVM_TESTHOST_ACCEL=tcg".into());
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return (
            tcg,
            "/dev/kvm is PVM (kvm_pvm loaded), which cannot run a standard kernel".into(),
        );
    }
    if !Path::new("/dev/kvm").exists() {
        return (tcg, "no /dev/kvm on this host".into());
    }
    for m in ["kvm_amd", "kvm_intel"] {
        let p = format!("/sys/module/{m}/parameters/nested");
        if let Ok(v) = std::fs::read_to_string(&p) {
            if matches!(v.trim(), "1" | "Y" | "y") {
                return (
                    args(&["-accel", "kvm", "-cpu", "host"]),
                    format!("/dev/kvm with nested virtualization ({p} = {})", v.trim()),
                );
            }
        }
    }
    (tcg, "/dev/kvm has no nested virtualization enabled".into())
}

/// QEMU `-virtfs`/`-drive` option values need commas doubled.
fn qemu_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// Single-quotes a string for POSIX sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Directories shared into the test host at the same paths.
fn share_paths(cwd: &Path) -> Vec<PathBuf> {
    let mut wanted = vec![util::repo_root(), util::target_dir(), util::cache_dir()];
    if let Ok(extra) = std::env::var("RUNVM_TESTHOST_SHARES") {
        wanted.extend(
            extra
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        );
    }
    if cwd != Path::new("/") {
        wanted.push(cwd.to_path_buf());
    }
    let wanted: Vec<PathBuf> = wanted
        .into_iter()
        .filter_map(|p| p.canonicalize().ok())
        .filter(|p| p != Path::new("/"))
        .collect();
    let mut out: Vec<PathBuf> = Vec::new();
    for p in &wanted {
        let covered = wanted.iter().any(|q| q != p && p.starts_with(q));
        if !covered && !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

fn install_signal_handlers() {
    static ONCE: Once = Once::new();
    // SAFETY: `on_signal` is async-signal-safe (one atomic store) and lives forever.
    ONCE.call_once(|| unsafe {
        let h = on_signal as *const () as libc::sighandler_t;
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    });
}

/// A pipe whose ends are close-on-exec and numbered >= 10.
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    let high = |fd: i32| -> Result<OwnedFd> {
        // SAFETY: `fd` is a pipe end this function made and owns; it is closed once,
        // after its duplicate is made.
        let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        // SAFETY: as above; nothing else holds `fd`.
        unsafe { libc::close(fd) };
        if h < 0 {
            return Err(std::io::Error::last_os_error()).context("fcntl(F_DUPFD_CLOEXEC)");
        }
        // SAFETY: `h` is a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(h) })
    };
    Ok((high(fds[0])?, high(fds[1])?))
}

/// When the test host last produced output (milliseconds since the Unix epoch), so a
/// wedged host can be told from a slow one.
static LAST_OUTPUT_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The latest of: the test host's last output, and its last heartbeat (a file the
/// test-host init touches every 10 s), in milliseconds since the Unix epoch.
fn last_sign_of_life(ctl: &Path) -> u64 {
    let beat = std::fs::metadata(ctl.join("heartbeat"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    beat.max(LAST_OUTPUT_MS.load(Ordering::SeqCst))
}

/// Writes one chunk of the test host's output to our stdout (or stderr), flushed.
fn emit(to_stderr: bool, chunk: &[u8]) -> std::io::Result<()> {
    LAST_OUTPUT_MS.store(now_ms(), Ordering::SeqCst);
    if to_stderr {
        let mut e = std::io::stderr().lock();
        e.write_all(chunk).and_then(|_| e.flush())
    } else {
        let mut o = std::io::stdout().lock();
        o.write_all(chunk).and_then(|_| o.flush())
    }
}

/// Copies everything from `r` to our stdout (or stderr), flushing each chunk
/// so long runs stream live.
fn pump(r: OwnedFd, to_stderr: bool) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(r);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if emit(to_stderr, &buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    })
}

/// Follows `path` (written by the test host through 9p) to our stdout or stderr until
/// `done` is set and everything written has been copied.
fn follow(path: PathBuf, to_stderr: bool, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut file: Option<std::fs::File> = None;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let finished = done.load(Ordering::SeqCst);
            if file.is_none() {
                file = std::fs::File::open(&path).ok();
            }
            let mut progressed = false;
            if let Some(f) = file.as_mut() {
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    progressed = true;
                    if emit(to_stderr, &buf[..n]).is_err() {
                        return;
                    }
                }
            }
            if finished && !progressed {
                return;
            }
            if !progressed {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
}

/// Removes the per-run control directory when dropped.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Why QEMU was killed.
enum KilledFor {
    /// We were interrupted (the signal is passed on as the exit code).
    Signal(i32),
    /// `RUNVM_TESTHOST_TIMEOUT` seconds passed.
    Timeout(u64),
    /// No output and no heartbeat for `RUNVM_TESTHOST_IDLE_TIMEOUT` seconds.
    Wedged(u64),
}

/// How a test host ended without its command's exit status: the root cause of
/// [`run_in_testhost`]'s error in those cases, for callers that decide on a rerun.
#[derive(Debug, thiserror::Error)]
pub enum TestHostEnd {
    #[error("test host killed after {elapsed}: timeout: no power-off after {seconds} s (RUNVM_TESTHOST_TIMEOUT)")]
    TimedOut { elapsed: String, seconds: u64 },
    #[error("test host killed after {elapsed}: no output and no heartbeat for {seconds} s: the test host is wedged (RUNVM_TESTHOST_IDLE_TIMEOUT)")]
    Wedged { elapsed: String, seconds: u64 },
    #[error("the test host stopped after {elapsed} ({status}) without reporting an exit status: the command did not finish (guest crash or power-off?). Rerun with RUNVM_TESTHOST_CONSOLE=1 to see its console.")]
    NoExitStatus { elapsed: String, status: String },
}

impl TestHostEnd {
    /// Whether running the same command again may succeed: the test host froze or died,
    /// which happens now and then under nested TCG, as opposed to a run that used up its
    /// time (it would take as long again).
    pub fn worth_a_rerun(&self) -> bool {
        !matches!(self, TestHostEnd::TimedOut { .. })
    }
}

/// Runs `argv` as root inside the test host, at the caller's current
/// directory, with `extra_env` (plus `RUNVM_*`, `RUST_LOG`, `RUST_BACKTRACE`
/// and `CI` from our environment). The command's stdout and stderr stream to
/// ours; returns its exit code. Errors if the host never reported one
/// (crash, timeout after `RUNVM_TESTHOST_TIMEOUT` seconds, default 4500).
pub fn run_in_testhost(argv: &[String], extra_env: &[(String, String)]) -> Result<i32> {
    run_in_testhost_installing(argv, extra_env, &[])
}

/// A file copied onto the test host's own disk before its command runs: `from` (a
/// path shared into the test host) to `to` (a path on the test host's root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub from: PathBuf,
    pub to: PathBuf,
}

/// The `sh` lines that copy `installs` into place, each failure ending the command with
/// status 125 and a message naming the file.
fn install_script(installs: &[Install]) -> Result<String> {
    let mut sh = String::new();
    for i in installs {
        let dir =
            i.to.parent()
                .with_context(|| format!("{} has no directory", i.to.display()))?;
        let (from, to, dir) = (
            sh_quote(&i.from.display().to_string()),
            sh_quote(&i.to.display().to_string()),
            sh_quote(&dir.display().to_string()),
        );
        sh.push_str(&format!(
            "mkdir -p {dir} && cp {from} {to} || {{ echo \"test host: cannot install {from} as {to}\" >&2; exit 125; }}\n"
        ));
    }
    Ok(sh)
}

/// [`run_in_testhost`], with `installs` copied onto the test host's own disk first.
pub fn run_in_testhost_installing(
    argv: &[String],
    extra_env: &[(String, String)],
    installs: &[Install],
) -> Result<i32> {
    if argv.is_empty() {
        bail!("no command given: use `cargo xtask testhost -- CMD [ARGS…]`");
    }
    let host = ensure_testhost()?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let cwd = cwd.canonicalize().unwrap_or(cwd);

    // Per-run control directory.
    let ctl = TempDir(std::env::temp_dir().join(format!(
        "runvm-testhost-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )));
    std::fs::create_dir_all(&ctl.0).with_context(|| format!("creating {}", ctl.0.display()))?;
    let shares = share_paths(&cwd);
    let cache_mode = std::env::var("RUNVM_TESTHOST_9P_CACHE").unwrap_or_else(|_| "mmap".into());
    let mut shares_txt = String::new();
    for (i, p) in shares.iter().enumerate() {
        shares_txt.push_str(&format!("share{i} {}\n", p.display()));
    }
    let mut env_sh = String::new();
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("RUNVM_") || matches!(k.as_str(), "RUST_LOG" | "RUST_BACKTRACE" | "CI")
        })
        .collect();
    env.extend(extra_env.iter().cloned());
    for (k, v) in &env {
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("environment variable name {k:?} cannot be passed to the test host");
        }
        env_sh.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    let cmd_sh = format!(
        "{}exec {}\n",
        install_script(installs)?,
        argv.iter()
            .map(|a| sh_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (name, text) in [
        ("shares", shares_txt.as_str()),
        ("env.sh", env_sh.as_str()),
        ("cmd.sh", cmd_sh.as_str()),
        ("cache", cache_mode.as_str()),
        ("init", INIT_SCRIPT),
        (
            "cwd",
            cwd.to_str().context("the current directory is not UTF-8")?,
        ),
    ] {
        let p = ctl.0.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }

    static ACCEL_NOTE: Once = Once::new();
    let (accel, why) = choose_accel();
    let smp = std::env::var("RUNVM_TESTHOST_SMP")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        // One vCPU by default: with two, multi-threaded TCG has wedged the whole test
        // host (silently, mid-suite) under load on this 2-core machine; with one, a full
        // 20-round boot benchmark ran clean.
        .unwrap_or(1);
    let accel: Vec<String> = accel
        .iter()
        .map(|a| {
            if smp == 1 && a == "tcg,thread=multi" {
                "tcg,thread=single".to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    ACCEL_NOTE.call_once(|| {
        eprintln!("[testhost] accelerator: {} ({why})", accel[1]);
    });

    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mem = std::env::var("RUNVM_TESTHOST_MEM").unwrap_or_else(|_| "4096".into());
    let console = std::env::var_os("RUNVM_TESTHOST_CONSOLE").is_some();
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-M", "q35"])
        .args(&accel)
        .args(["-m", &mem, "-smp", &smp.to_string()])
        .args(["-display", "none", "-nodefaults", "-no-reboot", "-snapshot"])
        .arg("-kernel")
        .arg(&host.kernel)
        .arg("-initrd")
        .arg(&host.initrd)
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio",
            qemu_escape(&host.image)
        ))
        .args(["-nic", "user,model=virtio-net-pci"])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=runvmctl,security_model=none,multidevs=remap",
            qemu_escape(&ctl.0)
        ));
    for (i, p) in shares.iter().enumerate() {
        qemu.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=share{i},security_model=none,multidevs=remap",
            qemu_escape(p)
        ));
    }
    qemu.args(["-serial", if console { "file:/dev/fd/2" } else { "null" }])
        .args(["-serial", "file:/dev/fd/3", "-serial", "file:/dev/fd/4"])
        .arg("-append")
        .arg(format!(
            "console=ttyS0 root=/dev/vda rw init=/sbin/test-host-init panic=-1 {} runvm.ctl={}",
            if console { "" } else { "quiet loglevel=0" },
            ctl.0.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (ow, ew) = (
        std::os::fd::AsRawFd::as_raw_fd(&out_w),
        std::os::fd::AsRawFd::as_raw_fd(&err_w),
    );
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, setpgid, dup2) on descriptors that stay open until the spawn.
    unsafe {
        qemu.pre_exec(move || {
            // QEMU must never outlive us.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Own process group: terminal signals reach us, and we forward them.
            libc::setpgid(0, 0);
            if libc::dup2(ow, 3) < 0 || libc::dup2(ew, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    install_signal_handlers();
    SIGNAL.store(0, Ordering::SeqCst);
    let start = Instant::now();
    let mut child = qemu
        .spawn()
        .context("cannot start qemu-system-x86_64 (is qemu-system-x86 installed?)")?;
    drop(out_w);
    drop(err_w);
    let pumps = [pump(out_r, false), pump(err_r, true)];
    let followed = Arc::new(AtomicBool::new(false));
    let followers = [
        follow(ctl.0.join("stdout"), false, followed.clone()),
        follow(ctl.0.join("stderr"), true, followed.clone()),
    ];
    let qemu_err = child.stderr.take().expect("piped stderr");
    let qemu_log = std::thread::spawn(move || {
        for line in BufReader::new(qemu_err).lines().map_while(Result::ok) {
            if !line.contains("doesn't support requested feature") {
                eprintln!("[testhost/qemu] {line}");
            }
        }
    });

    let timeout = std::env::var("RUNVM_TESTHOST_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_TIMEOUT_SECS);
    let idle_timeout = std::env::var("RUNVM_TESTHOST_IDLE_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS);
    LAST_OUTPUT_MS.store(now_ms(), Ordering::SeqCst);
    let mut killed_for: Option<KilledFor> = None;
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for qemu")? {
            break st;
        }
        if killed_for.is_none() {
            let sig = SIGNAL.load(Ordering::SeqCst);
            if sig != 0 {
                killed_for = Some(KilledFor::Signal(sig));
            } else if start.elapsed() > Duration::from_secs(timeout) {
                killed_for = Some(KilledFor::Timeout(timeout));
            } else if now_ms().saturating_sub(last_sign_of_life(&ctl.0)) > idle_timeout * 1000 {
                killed_for = Some(KilledFor::Wedged(idle_timeout));
            }
            if killed_for.is_some() {
                // SAFETY: kill of our own child, which has not been reaped yet.
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for p in pumps {
        let _ = p.join();
    }
    followed.store(true, Ordering::SeqCst);
    for f in followers {
        let _ = f.join();
    }
    let _ = qemu_log.join();
    let elapsed = util::fmt_duration(start.elapsed());

    match killed_for {
        Some(KilledFor::Signal(sig)) => {
            eprintln!("[testhost] interrupted (signal {sig}) after {elapsed}; QEMU killed");
            return Ok(128 + sig);
        }
        Some(KilledFor::Timeout(seconds)) => {
            return Err(TestHostEnd::TimedOut { elapsed, seconds }.into())
        }
        Some(KilledFor::Wedged(seconds)) => {
            return Err(TestHostEnd::Wedged { elapsed, seconds }.into())
        }
        None => {}
    }
    let exit_file = ctl.0.join("exit");
    match std::fs::read_to_string(&exit_file) {
        Ok(s) => {
            let code: i32 = s
                .trim()
                .parse()
                .with_context(|| format!("bad exit status {s:?} in {}", exit_file.display()))?;
            if std::env::var_os("RUNVM_TESTHOST_VERBOSE").is_some() {
                eprintln!("[testhost] exit {code} after {elapsed}");
            }
            Ok(code)
        }
        Err(_) => Err(TestHostEnd::NoExitStatus {
            elapsed,
            status: status.to_string(),
        }
        .into()),
    }
}

/// The qemu `microvm` command line (without the `qemu-system-x86_64` program
/// name) that boots a runvm guest kernel inside the test host: the peer the
/// benchmarks compare runvm against. Needs `/dev/kvm`; the guest must end with
/// `reboot -f` (`reboot=t` on its command line: there is no i8042 or ACPI to
/// power off with) so that `-no-reboot` ends QEMU. The console is the ISA
/// serial port on qemu's stdio. `rootfs_img` becomes a read-only
/// virtio-blk-device (virtio-mmio, announced on the command line by QEMU
/// itself), which the guest sees as `/dev/vda`.
pub fn microvm_peer_args(
    kernel: &Path,
    initramfs: &Path,
    rootfs_img: Option<&Path>,
    cmdline: &str,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "-M",
        "microvm,x-option-roms=off,rtc=off,acpi=off,isa-serial=on",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "128",
        "-smp",
        "1",
        "-L",
        "/usr/share/qemu",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push("-kernel".into());
    a.push(kernel.display().to_string());
    a.push("-initrd".into());
    a.push(initramfs.display().to_string());
    a.push("-append".into());
    a.push(cmdline.to_string());
    if let Some(img) = rootfs_img {
        a.push("-drive".into());
        a.push(format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            qemu_escape(img)
        ));
        a.push("-device".into());
        a.push("virtio-blk-device,drive=root".into());
    }
    a
}

/// Applets linked into the smoke-test initramfs.
const SMOKE_APPLETS: &[&str] = &[
    "sh", "mount", "cat", "ls", "echo", "mkdir", "reboot", "uname", "head", "grep",
];
const SMOKE_INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "guest init reached: $(uname -r)"
echo "cmdline: $(cat /proc/cmdline)"
echo "virtio devices: $(ls /sys/bus/virtio/devices)"
mkdir -p /mnt
if mount -t erofs -o ro /dev/vda /mnt; then
    echo "erofs: $(cat /mnt/hello.txt)"
else
    echo "erofs: mount failed"
fi
grep -o 'erofs\|overlay\|ext4\|cgroup2' /proc/filesystems | head -4
reboot -f
"#;

/// `cargo xtask kernel-smoke`: builds the kernel, a tiny busybox initramfs
/// and an EROFS image, and boots them three times with qemu `microvm`
/// inside the test host, printing how long each boot took.
pub fn cmd_kernel_smoke() -> Result<i32> {
    let vmlinux = crate::kernel::kernel()?;
    util::ensure_apt(&["busybox-static", "cpio", "erofs-utils"])?;
    let dir = util::cache_dir().join("smoke");
    util::remove_dir_if_exists(&dir)?;
    let root = dir.join("initramfs");
    for d in ["bin", "proc", "sys", "dev", "mnt"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (busybox-static)")?;
    for a in SMOKE_APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
    }
    std::fs::write(root.join("init"), SMOKE_INIT)?;
    set_mode(&root.join("init"), 0o755)?;
    let initramfs = dir.join("initramfs.cpio");
    util::run_quiet(
        Command::new("sh")
            .arg("-c")
            .arg("cd \"$1\" && find . | cpio -o -H newc --quiet > \"$2\"")
            .arg("sh")
            .arg(&root)
            .arg(&initramfs),
    )
    .context("packing the smoke initramfs")?;
    let erofs_src = dir.join("erofs-src");
    std::fs::create_dir_all(&erofs_src)?;
    std::fs::write(erofs_src.join("hello.txt"), "hello from an EROFS image\n")?;
    let erofs = dir.join("smoke.erofs");
    util::run_quiet(Command::new("mkfs.erofs").arg(&erofs).arg(&erofs_src))
        .context("mkfs.erofs of the smoke image")?;

    let args = microvm_peer_args(
        &vmlinux,
        &initramfs,
        Some(&erofs),
        "console=ttyS0 reboot=t panic=-1 quiet",
    );
    let qemu_cmd = format!(
        "qemu-system-x86_64 {}",
        args.iter()
            .map(|a| sh_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let script = format!(
        r#"set -e
echo "+ {qemu_cmd}"
ok=0
for i in 1 2 3; do
    t0=$(date +%s%N)
    out=$({qemu_cmd} 2>&1) || true
    t1=$(date +%s%N)
    [ $i = 1 ] && printf '%s\n' "$out"
    echo "boot $i: $(( (t1 - t0) / 1000000 )) ms"
    case "$out" in *"erofs: hello from an EROFS image"*) ok=$((ok + 1)) ;; esac
done
[ $ok = 3 ] || {{ echo "guest init not reached or EROFS not mounted in $((3 - ok)) of 3 boots" >&2; exit 1; }}
"#
    );
    let script_path = dir.join("smoke.sh");
    std::fs::write(&script_path, script)?;
    run_in_testhost(&["sh".to_string(), script_path.display().to_string()], &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The install lines copy each file into a new directory, names with quotes and
    /// spaces included, and a missing source ends the command with 125 before it runs.
    #[test]
    fn install_script_copies_files_and_stops_at_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("runvm-install-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let from = dir.join("it's a file");
        std::fs::write(&from, "bytes").unwrap();
        let to = dir.join("new dir/sub/copy");
        let run = |installs: &[Install]| {
            let script = format!("{}echo ran\n", install_script(installs).unwrap());
            Command::new("sh").arg("-c").arg(script).output().unwrap()
        };
        let out = run(&[Install {
            from: from.clone(),
            to: to.clone(),
        }]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "bytes");

        let missing = dir.join("missing");
        let out = run(&[Install {
            from: missing,
            to: dir.join("never"),
        }]);
        assert_eq!(out.status.code(), Some(125), "{out:?}");
        assert!(out.stdout.is_empty(), "the command must not run: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot install"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! `cargo xtask bench boot [--runs N]`: how long runvm takes to launch a microVM, boot
//! it to the guest init, run `true` and get out, next to qemu's `microvm` machine booting
//! **the same kernel and initramfs, with the same guest init doing the same work on the
//! same root filesystem served the same way** (virtio-fs from runvm's own virtiofsd,
//! guest RAM in a shared file on a huge-page tmpfs), measured in the same run and the same
//! place; plus the resident memory each VMM, and each side's virtiofsd, costs on top of
//! the guest's own memory.
//!
//! Where: guests boot on this host's KVM when it can (`Place::Direct`), else inside the
//! nested test host (`Place::TestHost`, TCG-emulated CPU). In the test host the outer
//! process re-invokes this same xtask binary there with `--inside`; the target dir is
//! shared at the same path, so the inside process writes its raw numbers to
//! `target/runvm/bench/boot-raw.json` and the outer process turns them into the table,
//! `bench/boot.md` and `bench/boot.json`. Times measured under TCG are emulated: only the
//! ratios against the qemu peer mean something there.
//!
//! The qemu peer plays the host side of runvm's protocol (`protocol/src/lib.rs`) itself
//! over `vhost-vsock`: it listens on vsock ports 1024 and 1025 of the (test) host, reads
//! `Hello`, sends the `Run` that runvm would send for the same bundle, accepts the stdio
//! streams, reads `Exited`, sends `Shutdown`, and QEMU exits on the guest's reset. Its
//! root filesystem is a `vhost-user-fs-device` (tag [`SHARE_TAG`]) backed by virtiofsd
//! started with runvm's flags on a directory whose [`SHARE_ROOT`] is a copy of the
//! rootfs; the peer's launch is the spawn of that virtiofsd, as runvm's `start` spawns its
//! own before the VM.
//!
//! runvm is measured twice over: booting its guest kernel (`RUNVM_BOOT=cold`, the
//! default) and restoring its VM from a warm-start template (`RUNVM_BOOT=warm`, see
//! `shim/src/template.rs`). The template is made once, by a first warm start that is not
//! counted, in a template directory private to the bench; every warm run must say
//! `"boot": "warm"` in its timings file, or the bench fails.
//!
//! Runs are interleaved (runvm cold, runvm warm, qemu, virtiofsd alone, runvm cold, …)
//! after one warm-up run of each that is not counted, so drift affects all of them alike.
//!
//! Memory: each VMM's resident memory beyond its guest's while the guest runs `sleep`,
//! and the proportional set size (PSS) of ten idle containers started one after the
//! other, warm (from one template) and cold.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use runvm_protocol::{
    RootfsSpec, CONTROL_PORT, OUTPUT_STREAM_FD, PROTOCOL_VERSION, SHARE_ROOT, SHARE_TAG,
    STREAM_PORT, VIRTIOFSD_FLAGS,
};
use serde_json::{json, Value};

use crate::guests::{GuestSetup, Place};
use crate::util::{repo_root, target_dir, Step};
use crate::{initramfs, kernel, rootfs, testhost};

/// Guest size of every benchmarked VM, both VMMs.
const VCPUS: u32 = 1;
const MEM_MIB: u64 = 128;
/// Guest CID of the qemu peer (runvm uses 3 as well).
const PEER_CID: u32 = 3;
const MAX_FRAME_LEN: u32 = 1 << 20;
/// Kernel parameters of the qemu peer: `vmm::builder::BASE_CMDLINE` (copied, keep in
/// sync) with `reboot=t` instead of `reboot=k` (microvm has no i8042 to reset through),
/// then what runvm appends without a debug console (`8250.nr_uarts=0`, `quiet`). QEMU
/// appends the `virtio_mmio.device=` entries itself. ACPI is off through the machine's
/// `acpi=off` option (see `testhost::microvm_peer_args`); the kernel is built without
/// ACPI, so an `acpi=off` kernel parameter would only land in init's environment.
const PEER_CMDLINE: &str = "reboot=t panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp \
     i8042.dumbkbd io_delay=none tsc=reliable no_timer_check cryptomgr.notests random.trust_cpu=on \
     rcupdate.rcu_expedited=1";
/// How long one boot may take before the benchmark gives up (TCG is slow).
const BOOT_DEADLINE: Duration = Duration::from_secs(120);
/// virtiofsd's flags after `--fd 3 --shared-dir DIR` beyond those runvm always gives it
/// ([`VIRTIOFSD_FLAGS`]): the file limit the monitor raises before the exec, and the
/// `--modcaps` it derives from a bundle without `process.capabilities` (it drops all six
/// it bounds).
const VIRTIOFSD_EXTRA_FLAGS: &[&str] = &[
    "--rlimit-nofile=524288",
    "--modcaps=-chown:-dac_override:-fowner:-fsetid:-mknod:-setfcap",
];
/// `VHOST_USER_GET_FEATURES` and the protocol's version flag (vhost-user spec).
const VHOST_USER_GET_FEATURES: u32 = 1;
const VHOST_USER_VERSION: u32 = 1;
const VHOST_USER_REPLY: u32 = 1 << 2;

/// `cargo xtask bench …`.
#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// runvm vs qemu `microvm` (same kernel, initramfs, rootfs): launch → init → exit, and VMM RSS.
    Boot(BootArgs),
    /// runvm vs runc: TCP throughput (iperf3) and HTTP latency host ⇄ container.
    Net(crate::bench_net::NetArgs),
    /// `docker run --rm busybox true` latency: runvm vs runc (and crun where it runs), same daemon and place.
    Docker(crate::docker::DockerArgs),
    /// create → start → wait → delete of `true`: runvm vs runc, same bundle and place.
    Cycle(crate::bench_cycle::CycleArgs),
    /// runvm vs runc: streaming write/read, small files, untar; on the root filesystem and a bind mount.
    Fs(crate::bench_fs::FsArgs),
    /// A pod's start and teardown through containerd's CRI: runvm's handler vs runc's, one containerd.
    Pod(crate::bench_pod::PodArgs),
}

#[derive(clap::Args)]
pub struct BootArgs {
    /// Counted runs of each VMM (one more warm-up run of each is not counted).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Measure only the qemu peer (while runvm cannot boot a guest); results go to
    /// `target/runvm/bench/` instead of `bench/`.
    #[arg(long)]
    peer_only: bool,
    /// Internal: measure here and write the raw numbers to `--out` (what the outer
    /// process runs inside the test host).
    #[arg(long, hide = true)]
    inside: bool,
    #[arg(long, hide = true)]
    out: Option<PathBuf>,
}

pub fn cmd_bench(cmd: BenchCmd) -> Result<i32> {
    match cmd {
        BenchCmd::Boot(a) if a.inside => {
            let out = a.out.context("--inside needs --out")?;
            let raw = measure(a.runs, a.peer_only)?;
            write_json(&out, &raw)?;
            Ok(0)
        }
        BenchCmd::Boot(a) => boot(a.runs, a.peer_only),
        BenchCmd::Net(a) => crate::bench_net::cmd(a),
        BenchCmd::Docker(a) => crate::docker::cmd_bench_docker(a),
        BenchCmd::Cycle(a) => crate::bench_cycle::cmd(a),
        BenchCmd::Fs(a) => crate::bench_fs::cmd(a),
        BenchCmd::Pod(a) => crate::bench_pod::cmd(a),
    }
}

/// The outer process: build, choose the place, measure there, report.
fn boot(runs: usize, peer_only: bool) -> Result<i32> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let (env, place) = if peer_only {
        let s = |p: PathBuf| p.display().to_string();
        let env = vec![
            ("RUNVM_KERNEL".to_string(), s(kernel::kernel()?)),
            ("RUNVM_INITRAMFS".to_string(), s(initramfs::initramfs()?)),
            (
                "RUNVM_TEST_ROOTFS".to_string(),
                s(rootfs::busybox_rootfs()?),
            ),
            (
                "RUNVM_VIRTIOFSD".to_string(),
                s(crate::virtiofsd::virtiofsd()?),
            ),
        ];
        (env, peer_place()?)
    } else {
        let setup = GuestSetup::prepare()?;
        let place = setup.choose_place()?;
        (setup.env(), place)
    };
    let dir = target_dir().join("runvm").join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let raw_path = dir.join("boot-raw.json");
    let _ = std::fs::remove_file(&raw_path);
    eprintln!(
        "[bench] {runs} runs of `true` (+1 warm-up) per VMM, {VCPUS} vCPU, {MEM_MIB} MiB, {}",
        match place {
            Place::Direct => "on this host's KVM",
            Place::TestHost => "inside the nested KVM test host (one boot of it)",
        }
    );
    let raw = match place {
        Place::Direct => {
            for (k, v) in &env {
                std::env::set_var(k, v);
            }
            measure(runs, peer_only)?
        }
        Place::TestHost => {
            let exe = std::env::current_exe().context("locating the xtask binary")?;
            let mut argv = vec![
                exe.display().to_string(),
                "bench".into(),
                "boot".into(),
                "--inside".into(),
                "--runs".into(),
                runs.to_string(),
                "--out".into(),
                raw_path.display().to_string(),
            ];
            if peer_only {
                argv.push("--peer-only".into());
            }
            // The test host gives the command a serial tty as stderr: ask `Step` for
            // plain lines instead of a spinner redrawn over the serial port.
            let mut env = env;
            env.push(("CI".into(), "1".into()));
            let code = testhost::run_in_testhost(&argv, &env)?;
            if code != 0 {
                bail!("the benchmark failed inside the test host (exit {code})");
            }
            let text = std::fs::read_to_string(&raw_path).with_context(|| {
                format!(
                    "reading {} (written inside the test host)",
                    raw_path.display()
                )
            })?;
            serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", raw_path.display()))?
        }
    };
    let report = Report::new(raw, place, peer_only);
    let out_dir = if peer_only {
        dir
    } else {
        repo_root().join("bench")
    };
    crate::util::write_results(&out_dir, "boot", &report.markdown(), &report.json())?;
    let failures = report.failures();
    if !failures.is_empty() {
        eprintln!(
            "[bench] {} measurement(s) FAILED (their rows say so in the results):",
            failures.len()
        );
        for f in &failures {
            eprintln!("[bench] FAILED: {f}");
        }
        return Ok(1);
    }
    Ok(0)
}

/// Where the qemu peer alone runs (no runvm to probe with): `RUNVM_PLACE`, else the test
/// host when this host's KVM is PVM or missing.
fn peer_place() -> Result<Place> {
    Ok(match std::env::var("RUNVM_PLACE").as_deref() {
        Ok("direct") => Place::Direct,
        Ok("testhost") => Place::TestHost,
        Ok(other) => bail!("RUNVM_PLACE={other:?}: use direct or testhost"),
        Err(_) if Path::new("/sys/module/kvm_pvm").exists() || !Path::new("/dev/kvm").exists() => {
            Place::TestHost
        }
        Err(_) => Place::Direct,
    })
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn env_path(name: &str) -> Result<PathBuf> {
    let p = PathBuf::from(std::env::var_os(name).with_context(|| format!("{name} is not set"))?);
    if !p.exists() {
        bail!("{name}={} does not exist", p.display());
    }
    Ok(p)
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// How runvm brings up a container's VM (`RUNVM_BOOT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Boot {
    /// The guest kernel boots.
    Cold,
    /// The VM is restored from the warm-start template.
    Warm,
}

impl Boot {
    /// `RUNVM_BOOT`'s value, and what the timings file's `boot` says.
    fn name(self) -> &'static str {
        match self {
            Boot::Cold => "cold",
            Boot::Warm => "warm",
        }
    }

    /// The key of this boot's runs in the raw JSON.
    fn runs_key(self) -> &'static str {
        match self {
            Boot::Cold => "runvm",
            Boot::Warm => "runvm_warm",
        }
    }
}

/// How many idle containers the PSS measurement starts (of each boot).
const IDLE_CONTAINERS: usize = 10;

/// Files every run uses, copied to a local directory (not the 9p share) first.
struct Bed {
    work: PathBuf,
    runvm: Option<PathBuf>,
    /// runvm's warm-start templates (`RUNVM_TEMPLATE_DIR`), the bench's own.
    templates: PathBuf,
    kernel: PathBuf,
    initramfs: PathBuf,
    rootfs: PathBuf,
    bundle: PathBuf,
    /// The virtiofsd both sides run (runvm through `RUNVM_VIRTIOFSD`).
    virtiofsd: PathBuf,
    /// The peer's share: `SHARE_ROOT` in it is a copy of `rootfs`.
    share: PathBuf,
    /// A tmpfs with `huge=within_size` mounted here: the peer's guest RAM file (runvm
    /// makes the same kind of tmpfs, detached, for its own).
    ram: PathBuf,
    ram_mounted: bool,
    /// The `Run` message runvm sends for `bundle` (the peer sends the same).
    run_msg: Value,
}

impl Bed {
    fn new(peer_only: bool) -> Result<Self> {
        let work = std::env::temp_dir().join(format!("runvm-bench-{}", std::process::id()));
        crate::util::remove_dir_if_exists(&work)?;
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let copy = |src: &Path, name: &str| -> Result<PathBuf> {
            let dst = work.join(name);
            crate::util::run_quiet(Command::new("cp").arg("-a").arg(src).arg(&dst))
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            Ok(dst)
        };
        let runvm = if peer_only {
            None
        } else {
            Some(copy(&env_path("RUNVM_BIN")?, "runvm")?)
        };
        let kernel = copy(&env_path("RUNVM_KERNEL")?, "vmlinux")?;
        let initramfs = copy(&env_path("RUNVM_INITRAMFS")?, "initramfs.cpio")?;
        let virtiofsd = copy(&env_path("RUNVM_VIRTIOFSD")?, "virtiofsd")?;
        let rootfs = copy(&env_path("RUNVM_TEST_ROOTFS")?, "rootfs")?;
        let share = work.join("peer-share");
        std::fs::create_dir(&share).with_context(|| format!("creating {}", share.display()))?;
        crate::util::run_quiet(
            Command::new("cp")
                .arg("-a")
                .arg(&rootfs)
                .arg(share.join(SHARE_ROOT)),
        )
        .context("copying the rootfs into the peer's share")?;
        let bundle = work.join("bundle-true");
        rootfs::write_bundle(&bundle, &rootfs, &["true"])?;
        let ram = work.join("peer-ram");
        std::fs::create_dir(&ram).with_context(|| format!("creating {}", ram.display()))?;
        let run_msg = run_message(&bundle.join("config.json"))?;
        let templates = work.join("templates");
        let mut bed = Self {
            work,
            runvm,
            templates,
            kernel,
            initramfs,
            rootfs,
            bundle,
            virtiofsd,
            share,
            ram,
            ram_mounted: false,
            run_msg,
        };
        // Room for one guest's RAM and a spare (a run's file goes when its QEMU exits).
        crate::util::run_quiet(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={}m,huge=within_size,mode=0700", 2 * MEM_MIB))
                .arg("runvm-bench-ram")
                .arg(&bed.ram),
        )
        .with_context(|| {
            format!(
                "mounting a huge-page tmpfs on {} for the peer's guest RAM (needs root)",
                bed.ram.display()
            )
        })?;
        bed.ram_mounted = true;
        Ok(bed)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if self.ram_mounted {
            let _ = Command::new("umount").arg(&self.ram).status();
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// The `HostMessage::Run` runvm builds from a bundle's config.json (`shim/src/spec.rs`,
/// `shim/src/container/mod.rs`), as its serde JSON: the root is the share's
/// [`SHARE_ROOT`] under tag [`SHARE_TAG`] (the protocol's own default `RootfsSpec`).
fn run_message(config: &Path) -> Result<Value> {
    let c: Value = serde_json::from_str(&std::fs::read_to_string(config)?)?;
    let p = &c["process"];
    let rootfs = RootfsSpec {
        readonly: c["root"]["readonly"].as_bool().unwrap_or(false),
        ..Default::default()
    };
    debug_assert_eq!(
        (rootfs.share_tag.as_str(), rootfs.root.as_str()),
        (SHARE_TAG, SHARE_ROOT)
    );
    Ok(json!({ "Run": {
        "rootfs": serde_json::to_value(&rootfs)?,
        "hostname": c["hostname"],
        "process": {
            "args": p["args"], "env": p["env"], "cwd": p["cwd"],
            "uid": p["user"]["uid"], "gid": p["user"]["gid"],
            "additional_gids": p["user"]["additionalGids"].as_array().cloned().unwrap_or_default(),
            "terminal": false,
        },
    }}))
}

/// Starts virtiofsd as runvm does: serving `share` on the listening socket `listener`,
/// handed over as its fd 3, with runvm's flags.
fn spawn_virtiofsd(bed: &Bed, listener: &UnixListener, log: &Path) -> Result<Child> {
    let mut cmd = Command::new(&bed.virtiofsd);
    cmd.args(["--fd", "3", "--shared-dir"])
        .arg(&bed.share)
        .args(VIRTIOFSD_FLAGS)
        .args(VIRTIOFSD_EXTRA_FLAGS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    let fd = listener.as_raw_fd();
    // SAFETY: runs in the child between fork and exec and makes only async-signal-safe
    // calls (dup2, fcntl) on a descriptor the parent keeps open across the spawn.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == 3 {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", bed.virtiofsd.display()))
}

/// virtiofsd started alone on the peer's share until it answers the first vhost-user
/// request (`GET_FEATURES`, the first thing a VMM asks): what both sides wait for before
/// their VM can be built. Milliseconds from the socket's creation to the answer.
fn virtiofsd_ready(bed: &Bed) -> Result<f64> {
    let sock = bed.work.join("probe.sock");
    let _ = std::fs::remove_file(&sock);
    let log = bed.work.join("probe-virtiofsd.log");
    let t0 = Instant::now();
    let listener =
        UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
    let mut child = spawn_virtiofsd(bed, &listener, &log)?;
    drop(listener);
    let answered = (|| -> Result<f64> {
        let mut s = UnixStream::connect(&sock)
            .with_context(|| format!("connecting to {}", sock.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut req = Vec::with_capacity(12);
        for w in [VHOST_USER_GET_FEATURES, VHOST_USER_VERSION, 0] {
            req.extend_from_slice(&w.to_le_bytes());
        }
        s.write_all(&req)
            .context("sending GET_FEATURES to virtiofsd")?;
        let mut reply = [0u8; 20];
        s.read_exact(&mut reply)
            .context("reading virtiofsd's answer to GET_FEATURES")?;
        let word = |i: usize| u32::from_le_bytes(reply[i..i + 4].try_into().unwrap_or_default());
        if word(0) != VHOST_USER_GET_FEATURES || word(4) & VHOST_USER_REPLY == 0 || word(8) != 8 {
            bail!("virtiofsd answered GET_FEATURES with {reply:02x?}");
        }
        Ok(ms(t0.elapsed()))
    })();
    // virtiofsd serves one connection: it ends when ours is closed (above).
    let ended = wait_child(&mut child, Duration::from_secs(30));
    let _ = std::fs::remove_file(&sock);
    let took = answered.with_context(|| format!("virtiofsd probe; its output:\n{}", tail(&log)))?;
    ended.context("virtiofsd did not exit after its only connection closed")?;
    Ok(took)
}

/// The inside process: every measurement, as raw JSON.
fn measure(runs: usize, peer_only: bool) -> Result<Value> {
    if !Path::new("/dev/kvm").exists() {
        bail!("no /dev/kvm here: guests cannot boot");
    }
    if !Path::new("/dev/vhost-vsock").exists() {
        let _ = Command::new("modprobe").arg("vhost_vsock").status();
        if !Path::new("/dev/vhost-vsock").exists() {
            bail!("no /dev/vhost-vsock (modprobe vhost_vsock): the qemu peer needs it to speak runvm's protocol");
        }
    }
    let mut step = Step::new("bench");
    step.phase("copying kernel, initramfs, rootfs and runvm to a local directory");
    let bed = Bed::new(peer_only)?;
    let peer = Peer::listen()?;

    let template = match &bed.runvm {
        Some(bin) => {
            step.phase("making the warm-start template (a first warm start, not counted)");
            let t = make_template(&bed, bin)?;
            step.phase(&format!(
                "template made: the first warm start took {:.0} ms",
                t["first_warm_start_ms"].as_f64().unwrap_or(f64::NAN)
            ));
            Some(t)
        }
        None => None,
    };

    let mut runvm_runs: Vec<Value> = Vec::new();
    let mut warm_runs: Vec<Value> = Vec::new();
    let mut qemu_runs: Vec<Value> = Vec::new();
    let mut ready_runs: Vec<f64> = Vec::new();
    let mut warmup = json!({});
    for i in 0..=runs {
        let label = if i == 0 {
            "warm-up".to_string()
        } else {
            format!("run {i}/{runs}")
        };
        let mut line = format!("{label}:");
        let (r, w) = match &bed.runvm {
            Some(bin) => {
                let r = runvm_once(&bed, bin, Boot::Cold, i, &["true"], None)?;
                line.push_str(&format!(" runvm cold {:.0} ms", r.wall_ms));
                let w = runvm_once(&bed, bin, Boot::Warm, i, &["true"], None)?;
                line.push_str(&format!(", warm {:.0} ms", w.wall_ms));
                (Some(r.json), Some(w.json))
            }
            None => (None, None),
        };
        let q = qemu_once(&bed, &peer, i, None)?;
        line.push_str(&format!(
            " qemu {:.0} ms",
            q["exit_ms"].as_f64().unwrap_or(0.0)
        ));
        let v = virtiofsd_ready(&bed)?;
        line.push_str(&format!(" virtiofsd ready {v:.0} ms"));
        step.phase(&line);
        if i == 0 {
            warmup = json!({ "runvm": r, "runvm_warm": w, "qemu": q, "virtiofsd_ready_ms": v });
        } else {
            runvm_runs.extend(r);
            warm_runs.extend(w);
            qemu_runs.push(q);
            ready_runs.push(v);
        }
    }

    let mut rss = json!({});
    let mut idle_pss = json!(null);
    // A memory measurement that fails is recorded as `{"failed": why}` and the rest go
    // on; the outer process reports the failures and exits non-zero after writing the
    // results (a timed run that fails, or comes up otherwise than asked, ends the bench).
    let mut failures: Vec<String> = Vec::new();
    let mut recorded = |what: String, result: Result<Value>| match result {
        Ok(v) => v,
        Err(e) => {
            let why = format!("{e:#}");
            eprintln!("[bench] FAILED: {what}: {why}");
            failures.push(format!("{what}: {why}"));
            json!({ "failed": why })
        }
    };
    if let Some(bin) = &bed.runvm {
        for (boot, timed) in [(Boot::Cold, &runvm_runs), (Boot::Warm, &warm_runs)] {
            let key = boot.runs_key();
            let what = format!("memory: runvm ({}) running `sleep`", boot.name());
            step.phase(&what);
            rss[key] = recorded(what, runvm_rss(&bed, bin, boot, timed));
            let what = format!(
                "memory: runvm ({}) running `sleep` after `create` and `start`",
                boot.name()
            );
            step.phase(&what);
            rss[format!("{key}_created")] = recorded(what, runvm_created_rss(&bed, bin, boot));
        }
        let mut pss = json!({});
        for boot in [Boot::Cold, Boot::Warm] {
            let what = format!(
                "memory: PSS of {IDLE_CONTAINERS} idle containers ({})",
                boot.name()
            );
            pss[boot.name()] = recorded(what, idle_containers_pss(&bed, bin, boot, &mut step));
        }
        idle_pss = pss;
    }
    step.phase("memory: qemu running `sleep`");
    let qemu_rss = qemu_rss(&bed, &peer)?;
    drop(step);

    Ok(json!({
        "inside": {
            "cpu": cpu_model(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": first_line("uname", &["-r"]),
            "qemu": first_line("qemu-system-x86_64", &["--version"]),
            "virtiofsd": first_line(&bed.virtiofsd.display().to_string(), &["--version"]),
            "shmem_enabled": std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
                .unwrap_or_default().trim().to_string(),
        },
        "runs": runs,
        "vcpus": VCPUS,
        "mem_mib": MEM_MIB,
        "peer_cmdline": PEER_CMDLINE.to_string() + " 8250.nr_uarts=0 quiet",
        "virtiofsd_flags": ([VIRTIOFSD_FLAGS, VIRTIOFSD_EXTRA_FLAGS].concat()),
        "warmup": warmup,
        "template": template,
        "runvm": runvm_runs,
        "runvm_warm": warm_runs,
        "qemu": qemu_runs,
        "virtiofsd_ready_ms": ready_runs,
        "rss": {
            "runvm": rss["runvm"], "runvm_created": rss["runvm_created"],
            "runvm_warm": rss["runvm_warm"], "runvm_warm_created": rss["runvm_warm_created"],
            "qemu": qemu_rss,
        },
        "idle_pss": idle_pss,
        "failures": failures,
    }))
}

/// Waits for `child` up to `limit`; kills it after that.
fn wait_child(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("pid {} did not finish within {limit:?}; killed", child.id());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What a failure says in a markdown table cell: its line from runvm (`runvm: …`), else
/// its first line, `|` escaped.
fn first_line_of(text: &str) -> String {
    text.lines()
        .find(|l| l.starts_with("runvm: "))
        .or_else(|| text.lines().next())
        .unwrap_or("")
        .replace('|', "\\|")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

struct RunvmRun {
    wall_ms: f64,
    json: Value,
}

/// `runvm --root <the bench's state directory>` with the VM's size, the bench's kernel,
/// initramfs and virtiofsd, and `boot` (warm: from the bench's own template directory).
fn runvm_command(bed: &Bed, bin: &Path, boot: Boot) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--root")
        .arg(bed.work.join("state"))
        .env("RUNVM_BOOT", boot.name())
        .env("RUNVM_TEMPLATE_DIR", &bed.templates)
        .env("RUNVM_VCPUS", VCPUS.to_string())
        .env("RUNVM_MEM_MIB", MEM_MIB.to_string())
        .env("RUNVM_KERNEL", &bed.kernel)
        .env("RUNVM_INITRAMFS", &bed.initramfs)
        .env("RUNVM_VIRTIOFSD", &bed.virtiofsd);
    cmd
}

/// One `runvm run` of `args` booted as `boot`; `sample` is called with runvm's pid and
/// the start instant while it runs (for the memory measurement). Fails when the timings
/// file says the VM came up otherwise than `boot` (a warm start that fell back to a cold
/// boot, say).
fn runvm_once(
    bed: &Bed,
    bin: &Path,
    boot: Boot,
    i: usize,
    args: &[&str],
    sample: Option<&mut dyn FnMut(u32, Instant) -> Result<()>>,
) -> Result<RunvmRun> {
    runvm_run(bed, bin, boot, i, args, None, sample)
}

/// [`runvm_once`], with runvm's log (`--log`) to `log` when given.
fn runvm_run(
    bed: &Bed,
    bin: &Path,
    boot: Boot,
    i: usize,
    args: &[&str],
    log: Option<&Path>,
    sample: Option<&mut dyn FnMut(u32, Instant) -> Result<()>>,
) -> Result<RunvmRun> {
    let bundle = if args == ["true"] {
        bed.bundle.clone()
    } else {
        let b = bed.work.join(format!("bundle-{}", args.join("-")));
        rootfs::write_bundle(&b, &bed.rootfs, args)?;
        b
    };
    let timings = bed.work.join("timings.json");
    let _ = std::fs::remove_file(&timings);
    let err = bed.work.join("runvm.stderr");
    let mut cmd = runvm_command(bed, bin, boot);
    if let Some(log) = log {
        cmd.arg("--log").arg(log);
    }
    let t0 = Instant::now();
    let mut child = cmd
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(format!("bench-{}-{i}", boot.name()))
        .env("RUNVM_TIMINGS_FILE", &timings)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    if let Some(f) = sample {
        if let Err(e) = f(child.id(), t0) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    }
    let status = wait_child(&mut child, BOOT_DEADLINE)?;
    let wall = t0.elapsed();
    if !status.success() {
        bail!(
            "runvm run of {args:?} ({} boot) failed ({status}):\n{}{}",
            boot.name(),
            tail(&err),
            templates_report(bed, boot)
        );
    }
    let t: Value = serde_json::from_str(
        &std::fs::read_to_string(&timings)
            .with_context(|| format!("runvm wrote no timings file ({})", timings.display()))?,
    )
    .context("parsing runvm's timings file")?;
    check_boot(bed, boot, &t["boot"], &format!("run {i} of {args:?}"), &err)?;
    let mut json = json!({ "wall_ms": ms(wall), "boot": t["boot"] });
    for k in [
        "launch_to_vmm_start_ms",
        "kernel_entry_ms",
        "init_started_ms",
        "workload_started_ms",
        "workload_exited_ms",
        "vm_exit_ms",
    ] {
        json[k] = t[k].clone();
    }
    Ok(RunvmRun {
        wall_ms: ms(wall),
        json,
    })
}

// ---------------------------------------------------------------------------------------
// The qemu peer: the host side of runvm's protocol over vhost-vsock.

fn vsock_listen(port: u32) -> Result<OwnedFd> {
    // SAFETY: plain socket syscalls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_VSOCK)");
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        if libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("binding vsock port {port}"));
        }
        if libc::listen(fd.as_raw_fd(), 16) != 0 {
            return Err(std::io::Error::last_os_error()).context("listen(AF_VSOCK)");
        }
        Ok(fd)
    }
}

/// Polls `fds` for input for up to `timeout`; returns which are readable.
fn poll_in(fds: &[i32], timeout: Duration) -> Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let t = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `p` is a valid array of pollfd of the given length.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, t) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e).context("poll");
    }
    Ok(p.iter().map(|x| x.revents != 0).collect())
}

/// Accepts one connection; errors if it does not come from the peer's CID.
fn vsock_accept(listener: &OwnedFd) -> Result<std::fs::File> {
    // SAFETY: `addr` is a sockaddr_vm buffer of the length passed.
    unsafe {
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        let fd = libc::accept4(
            listener.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_vm).cast(),
            &mut len,
            libc::SOCK_CLOEXEC,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("accept(AF_VSOCK)");
        }
        let f = std::fs::File::from(OwnedFd::from_raw_fd(fd));
        if addr.svm_cid != PEER_CID {
            bail!(
                "vsock connection from CID {} (expected the peer's {PEER_CID})",
                addr.svm_cid
            );
        }
        Ok(f)
    }
}

/// Our own frame codec, identical to `runvm_protocol::{read_frame, write_frame}`.
fn write_frame(w: &mut impl Write, v: &Value) -> Result<()> {
    let body = serde_json::to_vec(v)?;
    let mut buf = (body.len() as u32).to_le_bytes().to_vec();
    buf.extend_from_slice(&body);
    w.write_all(&buf).context("writing a frame to the guest")
}

fn read_frame(r: &mut impl Read) -> Result<Value> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .context("reading a frame from the guest")?;
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME_LEN {
        bail!("frame of {len} bytes from the guest");
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)
        .context("reading a frame from the guest")?;
    serde_json::from_slice(&body).context("malformed frame from the guest")
}

/// The host side of the protocol: listeners on the two ports, kept for every run.
struct Peer {
    control: OwnedFd,
    streams: OwnedFd,
}

impl Peer {
    fn listen() -> Result<Self> {
        Ok(Self {
            control: vsock_listen(CONTROL_PORT)?,
            streams: vsock_listen(STREAM_PORT)?,
        })
    }

    /// Drops connections left over from a previous run.
    fn drain(&self) {
        for l in [&self.control, &self.streams] {
            while poll_in(&[l.as_raw_fd()], Duration::ZERO)
                .map(|r| r[0])
                .unwrap_or(false)
            {
                if vsock_accept(l).is_err() {
                    break;
                }
            }
        }
    }
}

/// Waits until `listener` has a connection, failing if QEMU exits first or `deadline` passes.
fn accept_from(
    listener: &OwnedFd,
    other: Option<&std::fs::File>,
    child: &mut Child,
    deadline: Instant,
) -> Result<Option<std::fs::File>> {
    loop {
        let mut fds = vec![listener.as_raw_fd()];
        fds.extend(other.map(|o| o.as_raw_fd()));
        let ready = poll_in(&fds, Duration::from_millis(20))?;
        if ready[0] {
            return vsock_accept(listener).map(Some);
        }
        if ready.get(1) == Some(&true) {
            return Ok(None);
        }
        if let Some(s) = child.try_wait()? {
            bail!("QEMU exited ({s}) before the guest connected");
        }
        if Instant::now() > deadline {
            bail!("the guest did not connect within {BOOT_DEADLINE:?}");
        }
    }
}

/// Called with the pids of QEMU and of its virtiofsd once the guest reports `Started`
/// (the memory measurement).
type PidSampler<'a> = dyn FnMut(u32, u32) -> Result<()> + 'a;

/// The qemu peer's command line: `testhost::microvm_peer_args` without a disk, its RAM
/// the shared file `mem` on the bench's huge-page tmpfs (vhost-user needs shared guest
/// memory), the share behind `vhost-user-fs-device` on `socket`, and vhost-vsock.
fn peer_args(kernel: &Path, initramfs: &Path, ram: &Path, socket: &Path) -> Vec<String> {
    let mut args = testhost::microvm_peer_args(
        kernel,
        initramfs,
        None,
        &format!("{PEER_CMDLINE} 8250.nr_uarts=0 quiet"),
    );
    if let Some(i) = args.iter().position(|a| a == "-M") {
        if let Some(machine) = args.get_mut(i + 1) {
            machine.push_str(",memory-backend=mem");
        }
    }
    args.extend([
        "-object".to_string(),
        format!(
            "memory-backend-file,id=mem,size={MEM_MIB}M,mem-path={},share=on",
            ram.display()
        ),
        "-chardev".to_string(),
        format!("socket,id=share,path={}", socket.display()),
        "-device".to_string(),
        format!("vhost-user-fs-device,chardev=share,tag={SHARE_TAG}"),
        "-device".to_string(),
        format!("vhost-vsock-device,guest-cid={PEER_CID}"),
    ]);
    args
}

/// One boot of the qemu peer running `run_msg` (the bundle's `true` unless given).
/// Launch is the spawn of its virtiofsd; QEMU is spawned right after it and connects
/// while virtiofsd starts, as runvm's VMM does.
fn qemu_once(
    bed: &Bed,
    peer: &Peer,
    i: usize,
    sample: Option<(&Value, &mut PidSampler<'_>)>,
) -> Result<Value> {
    peer.drain();
    let socket = bed.work.join("peer-virtiofs.sock");
    let _ = std::fs::remove_file(&socket);
    let args = peer_args(&bed.kernel, &bed.initramfs, &bed.ram, &socket);
    let log = bed.work.join("qemu.log");
    let logf = std::fs::File::create(&log)?;
    let vlog = bed.work.join("peer-virtiofsd.log");
    let t0 = Instant::now();
    let listener =
        UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    let mut virtiofsd = spawn_virtiofsd(bed, &listener, &vlog)?;
    drop(listener);
    let spawned = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .context("starting qemu-system-x86_64");
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = virtiofsd.kill();
            let _ = virtiofsd.wait();
            return Err(e);
        }
    };
    let (run_msg, mut sample) = match sample {
        Some((m, f)) => (m, Some(f)),
        None => (&bed.run_msg, None),
    };
    let result = converse(peer, &mut child, t0, run_msg, &mut sample, virtiofsd.id());
    let result = match result {
        Ok(mut v) => match wait_child(&mut child, Duration::from_secs(30)) {
            Ok(status) if status.success() => {
                v["exit_ms"] = json!(ms(t0.elapsed()));
                Ok(v)
            }
            Ok(status) => Err(anyhow::anyhow!(
                "QEMU exited with {status} in run {i}:\n{}",
                tail(&log)
            )),
            Err(e) => Err(e.context(
                "QEMU did not exit after Shutdown (the guest should reset with reboot=t and -no-reboot)",
            )),
        },
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e.context(format!(
                "qemu peer run {i}; its output:\n{}\nvirtiofsd's:\n{}",
                tail(&log),
                tail(&vlog)
            )))
        }
    };
    // virtiofsd serves QEMU's one connection and ends with it.
    let ended = wait_child(&mut virtiofsd, Duration::from_secs(10));
    let _ = std::fs::remove_file(&socket);
    let v = result?;
    ended.with_context(|| {
        format!(
            "the peer's virtiofsd did not exit after QEMU; its output:\n{}",
            tail(&vlog)
        )
    })?;
    Ok(v)
}

fn converse(
    peer: &Peer,
    child: &mut Child,
    t0: Instant,
    run_msg: &Value,
    sample: &mut Option<&mut PidSampler<'_>>,
    virtiofsd: u32,
) -> Result<Value> {
    let deadline = t0 + BOOT_DEADLINE;
    let mut control =
        accept_from(&peer.control, None, child, deadline)?.context("no control connection")?;
    let hello = read_frame(&mut control)?;
    let hello_ms = ms(t0.elapsed());
    if hello["Hello"]["version"].as_u64() != Some(u64::from(PROTOCOL_VERSION)) {
        bail!("expected Hello version {PROTOCOL_VERSION}, got {hello}");
    }
    write_frame(&mut control, run_msg)?;
    let mut outputs: Vec<std::thread::JoinHandle<u64>> = Vec::new();
    let mut stdin_stream = None;
    let mut started_ms = None;
    let (exited_ms, status) = loop {
        if let Some(mut s) = accept_from(&peer.streams, Some(&control), child, deadline)? {
            let h = read_frame(&mut s)?;
            match h["fd"].as_u64() {
                // stdin is /dev/null, as in the runvm runs: end it at once.
                Some(0) => {
                    // SAFETY: shutdown of a socket we own.
                    unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_WR) };
                    stdin_stream = Some(s);
                }
                Some(fd) if fd == u64::from(OUTPUT_STREAM_FD) => {
                    outputs.push(std::thread::spawn(move || {
                        std::io::copy(&mut s, &mut std::io::sink()).unwrap_or(0)
                    }))
                }
                _ => bail!("unexpected stream header {h}"),
            }
            continue;
        }
        let msg = read_frame(&mut control)?;
        if msg.get("Started").is_some() {
            started_ms = Some(ms(t0.elapsed()));
            if let Some(f) = sample.as_mut() {
                f(child.id(), virtiofsd)?;
            }
        } else if let Some(e) = msg.get("Exited") {
            break (ms(t0.elapsed()), e["status"].clone());
        } else {
            bail!("unexpected message from the guest: {msg}");
        }
    };
    let end = Instant::now() + Duration::from_secs(10);
    while outputs.iter().any(|t| !t.is_finished()) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    write_frame(&mut control, &json!("Shutdown"))?;
    drop(stdin_stream);
    if status != json!({ "Exited": 0 }) {
        bail!("the workload ended with {status}");
    }
    Ok(json!({ "hello_ms": hello_ms, "started_ms": started_ms, "exited_ms": exited_ms }))
}

// ---------------------------------------------------------------------------------------
// Memory.

/// Rss sums of one process's `/proc/<pid>/smaps`, in KiB.
struct Smaps {
    total: u64,
    /// Mappings of exactly `MEM_MIB` that can be guest RAM (anonymous, or shared).
    guest: u64,
    guest_maps: usize,
    /// Every shared mapping (for virtiofsd: the guest RAM it maps from the VMM's file).
    shared: u64,
    /// Rss by what is mapped (a file's path, `[heap]`, `[stack]`, `anon`), largest first:
    /// where an overhead comes from.
    by_name: Vec<(String, u64)>,
}

fn read_smaps(pid: u32) -> Result<Smaps> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("reading /proc/{pid}/smaps"))?;
    let mut m = Smaps {
        total: 0,
        guest: 0,
        guest_maps: 0,
        shared: 0,
        by_name: Vec::new(),
    };
    let mut names: std::collections::BTreeMap<String, u64> = Default::default();
    let mut name = String::new();
    let (mut ram, mut shared, mut size) = (false, false, 0u64);
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let first = w.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: address perms offset dev inode [path].
            let perms = line.split_whitespace().nth(1).unwrap_or("");
            let inode = line.split_whitespace().nth(4).unwrap_or("1");
            let path = line.split_whitespace().nth(5).unwrap_or("");
            name = if path.is_empty() {
                "anon".into()
            } else {
                path.to_string()
            };
            // Guest RAM is a shared file on both sides now (runvm: a file on a tmpfs of
            // its own, or a memfd; the peer: a file on the bench's tmpfs); private
            // anonymous memory is still recognised, as QEMU's default RAM.
            shared = perms.ends_with('s');
            ram = (inode == "0" && (path.is_empty() || path.starts_with("[anon"))) || shared;
            size = 0;
        } else if first == "Size:" {
            size = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        } else if first == "Rss:" {
            let rss: u64 = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            m.total += rss;
            *names.entry(name.clone()).or_default() += rss;
            if shared {
                m.shared += rss;
            }
            if ram && size == MEM_MIB * 1024 {
                m.guest += rss;
                m.guest_maps += 1;
            }
        }
    }
    m.by_name = names.into_iter().filter(|(_, rss)| *rss > 0).collect();
    m.by_name.sort_by_key(|e| std::cmp::Reverse(e.1));
    Ok(m)
}

/// A VMM's memory: total Rss, the Rss of its guest-memory mapping (exactly one), and the
/// difference, its overhead.
fn smaps(pid: u32) -> Result<Value> {
    let m = read_smaps(pid)?;
    if m.guest_maps != 1 {
        bail!(
            "pid {pid}: expected one {MEM_MIB} MiB guest-memory mapping (a shared file, or anonymous), found {}",
            m.guest_maps
        );
    }
    Ok(json!({
        "rss_kib": m.total, "guest_rss_kib": m.guest, "overhead_kib": m.total - m.guest,
        "rss_kib_by_mapping": by_name_json(&m),
    }))
}

/// The largest entries of `m.by_name` (those of 64 KiB or more), largest first, as
/// `[name, KiB]` pairs.
fn by_name_json(m: &Smaps) -> Value {
    m.by_name
        .iter()
        .filter(|(_, rss)| *rss >= 64)
        .map(|(n, rss)| json!([n, rss]))
        .collect()
}

/// virtiofsd's memory: every process named `virtiofsd` among `root` and its descendants
/// (with `--sandbox namespace` it forks a worker into a new PID namespace, and the parent
/// waits for it); the guest RAM it maps from the VMM (shared mappings) is counted apart,
/// since those pages are the guest's, already counted in the VMM's.
fn virtiofsd_memory(root: u32) -> Result<Value> {
    let pids: Vec<u32> = descendants(root)
        .into_iter()
        .filter(|&p| comm(p).as_deref() == Some("virtiofsd"))
        .collect();
    if pids.is_empty() {
        bail!("no virtiofsd process under pid {root}");
    }
    let (mut total, mut shared) = (0u64, 0u64);
    let mut each = Vec::new();
    for &p in &pids {
        let m = read_smaps(p)?;
        total += m.total;
        shared += m.shared;
        each.push(json!({
            "pid": p, "rss_kib": m.total, "shared_rss_kib": m.shared,
            "rss_kib_by_mapping": by_name_json(&m),
        }));
    }
    Ok(json!({
        "processes": each,
        "rss_kib": total,
        "guest_rss_kib": shared,
        "overhead_kib": total - shared,
    }))
}

/// `(pid, comm, ppid)` of every process, from `/proc/*/stat`.
fn processes() -> Vec<(u32, String, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // "pid (comm) state ppid …"; comm may hold spaces, so split at the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map(|x| x.1).unwrap_or("");
        let Some(ppid) = rest
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u32>().ok())
        else {
            continue;
        };
        out.push((p, name.to_string(), ppid));
    }
    out
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_string())
}

/// `root` and every process below it.
fn descendants(root: u32) -> Vec<u32> {
    let all = processes();
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            all.iter()
                .filter(|(_, _, pp)| *pp == parent)
                .map(|(p, _, _)| *p),
        );
        i += 1;
    }
    out
}

/// Children of `pid` named `comm`.
fn children_named(pid: u32, comm: &str) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, name, ppid)| *ppid == pid && name == comm)
        .map(|(p, _, _)| p)
        .collect()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// runvm running `sleep`: smaps sampled one second after the workload has surely started
/// (the slowest time to workload start seen in the timed runs, plus one second; when runvm
/// reports no workload start, the slowest whole `true` run instead).
fn runvm_rss(bed: &Bed, bin: &Path, boot: Boot, runs: &[Value]) -> Result<Value> {
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let to_start: Vec<f64> = runs
        .iter()
        .map(|r| {
            let started = f(r, "wall_ms") - f(r, "vm_exit_ms") + f(r, "workload_started_ms");
            if started.is_finite() {
                started
            } else {
                f(r, "wall_ms")
            }
        })
        .collect();
    let worst = to_start
        .iter()
        .cloned()
        .filter(|x| x.is_finite())
        .fold(0.0, f64::max);
    let at = Duration::from_secs_f64(worst / 1000.0 + 1.0);
    let secs = (at.as_secs() + 3).to_string();
    let mut sampled = json!(null);
    let mut sampler = |pid: u32, t0: Instant| -> Result<()> {
        std::thread::sleep(at.saturating_sub(t0.elapsed()));
        sampled = runvm_memory(pid, t0)?;
        Ok(())
    };
    let r = runvm_once(bed, bin, boot, 9999, &["sleep", &secs], Some(&mut sampler))?;
    let ws = r.json["wall_ms"].as_f64().unwrap_or(0.0)
        - r.json["vm_exit_ms"].as_f64().unwrap_or(0.0)
        + r.json["workload_started_ms"].as_f64().unwrap_or(f64::NAN);
    sampled["workload"] = json!(format!("sleep {secs}"));
    sampled["run"] = r.json;
    // Workload start since launch is at most `ws`: sampling after it is certain.
    sampled["sampled_after_workload_start"] = if ws.is_finite() {
        json!(ws < sampled["sampled_at_ms"].as_f64().unwrap_or(0.0))
    } else {
        json!(null)
    };
    Ok(sampled)
}

/// The memory of runvm's VMM process `pid` (see [`smaps`]), of its cleanup guard and of
/// its virtiofsd, sampled now, `t0` being when the run began.
fn runvm_memory(pid: u32, t0: Instant) -> Result<Value> {
    let mut v = smaps(pid)?;
    v["sampled_at_ms"] = json!(ms(t0.elapsed()));
    let guards: Vec<Value> = children_named(pid, "runvm-guard")
        .into_iter()
        .map(|g| json!(rss_kib(g)))
        .collect();
    v["guard_rss_kib"] = json!(guards);
    v["virtiofsd"] = virtiofsd_memory(pid)?;
    Ok(v)
}

/// `runvm <args>` (create, start, kill, delete) booting as `boot`, its stderr in
/// `err`; fails when it does.
fn runvm_cli(bed: &Bed, bin: &Path, boot: Boot, args: &[&str], err: &Path) -> Result<()> {
    let status = runvm_command(bed, bin, boot)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(err)?)
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !status.success() {
        bail!("runvm {} failed ({status}):\n{}", args.join(" "), tail(err));
    }
    Ok(())
}

/// The pid of container `id` (its monitor, the VMM process), from `runvm state`.
fn container_pid(bed: &Bed, bin: &Path, id: &str) -> Result<u32> {
    let state = runvm_command(bed, bin, Boot::Cold)
        .args(["state", id])
        .output()
        .context("runvm state")?;
    let state: Value = serde_json::from_slice(&state.stdout)
        .with_context(|| format!("parsing runvm state {id}"))?;
    state["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .with_context(|| format!("runvm state {id} gave no pid"))
}

/// Containers created by the bench, killed and deleted when dropped (on failure too).
struct Containers<'a> {
    bed: &'a Bed,
    bin: &'a Path,
    ids: Vec<String>,
}

impl Drop for Containers<'_> {
    fn drop(&mut self) {
        let err = self.bed.work.join("runvm-cleanup.stderr");
        for id in &self.ids {
            let _ = runvm_cli(self.bed, self.bin, Boot::Cold, &["kill", id, "KILL"], &err);
        }
        for id in &self.ids {
            if let Err(e) = runvm_cli(
                self.bed,
                self.bin,
                Boot::Cold,
                &["delete", "--force", id],
                &err,
            ) {
                eprintln!("[bench] cleaning up container {id}: {e:#}");
            }
        }
    }
}

/// Creates and starts container `id` running `bundle`'s workload, booting as `boot`,
/// its timings file at `timings` (written when its VM ends).
fn create_and_start(
    bed: &Bed,
    bin: &Path,
    boot: Boot,
    bundle: &Path,
    id: &str,
    timings: &Path,
) -> Result<()> {
    let err = bed.work.join(format!("{id}.stderr"));
    let status = runvm_command(bed, bin, boot)
        .args(["create", "--bundle"])
        .arg(bundle)
        .arg(id)
        .env("RUNVM_TIMINGS_FILE", timings)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err)?)
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !status.success() {
        bail!(
            "runvm create {id} ({} boot) failed ({status}):\n{}{}",
            boot.name(),
            tail(&err),
            templates_report(bed, boot)
        );
    }
    // The monitor keeps `create`'s stderr (`err`): `start`'s goes to a file of its own.
    let start_err = bed.work.join(format!("{id}.start.stderr"));
    runvm_cli(bed, bin, boot, &["start", id], &start_err).map_err(|e| {
        anyhow::anyhow!(
            "starting container {id} ({} boot): {e:#}\nthe monitor's stderr:\n{}{}",
            boot.name(),
            tail(&err),
            templates_report(bed, boot)
        )
    })
}

/// After a container's VM ended: fails unless its timings file says it came up as `boot`.
fn check_container_boot(bed: &Bed, boot: Boot, id: &str, timings: &Path) -> Result<()> {
    let text = std::fs::read_to_string(timings).unwrap_or_default();
    let t: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let err = bed.work.join(format!("{id}.stderr"));
    check_boot(bed, boot, &t["boot"], &format!("container {id}"), &err)
}

/// runvm as Docker, containerd and Podman run it: `create` forks the VMM process (the
/// container's pid, which never runs the CLI's own work) and `start` returns once the
/// workload runs; smaps sampled one second after that, then the container is deleted
/// (and its timings file checked for `boot`).
fn runvm_created_rss(bed: &Bed, bin: &Path, boot: Boot) -> Result<Value> {
    let bundle = bed.work.join("bundle-created-sleep");
    rootfs::write_bundle(&bundle, &bed.rootfs, &["sleep", "60"])?;
    let id = format!("bench-created-{}", boot.name());
    let timings = bed.work.join(format!("{id}.timings.json"));
    let _ = std::fs::remove_file(&timings);
    let containers = Containers {
        bed,
        bin,
        ids: vec![id.clone()],
    };
    create_and_start(bed, bin, boot, &bundle, &id, &timings)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let pid = container_pid(bed, bin, &id)?;
    let mut v = runvm_memory(pid, t0)?;
    v["workload"] = json!("sleep 60");
    v["sampled_after_workload_start"] = json!(true);
    drop(containers);
    check_container_boot(bed, boot, &id, &timings)?;
    Ok(v)
}

/// `Pss:` of `/proc/<pid>/smaps_rollup`, in KiB: the process's resident pages, each
/// shared one divided by the number of processes that map it.
fn pss_kib(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no Pss in /proc/{pid}/smaps_rollup"))
}

/// Ten (`IDLE_CONTAINERS`) containers running `sleep 1000`, created and started one after
/// the other booting as `boot`, all alive at once: one second after the last has
/// started, the PSS of each one's monitor (the VMM process) and of its virtiofsd
/// processes, summed; then every one is killed and deleted (on failure too) and each
/// one's timings file must say it came up as `boot`.
fn idle_containers_pss(bed: &Bed, bin: &Path, boot: Boot, step: &mut Step) -> Result<Value> {
    let bundle = bed.work.join("bundle-idle-sleep");
    if !bundle.exists() {
        rootfs::write_bundle(&bundle, &bed.rootfs, &["sleep", "1000"])?;
    }
    let mut containers = Containers {
        bed,
        bin,
        ids: Vec::new(),
    };
    let mut timings = Vec::new();
    for k in 0..IDLE_CONTAINERS {
        step.phase(&format!(
            "memory: idle containers ({}): starting {}/{IDLE_CONTAINERS}",
            boot.name(),
            k + 1
        ));
        let id = format!("idle-{}-{k}", boot.name());
        let t = bed.work.join(format!("{id}.timings.json"));
        let _ = std::fs::remove_file(&t);
        containers.ids.push(id.clone());
        create_and_start(bed, bin, boot, &bundle, &id, &t)?;
        timings.push((id, t));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (mut monitors, mut virtiofsds, mut guards, mut guest) = (0u64, 0u64, 0u64, 0u64);
    let mut each = Vec::new();
    for id in &containers.ids {
        let pid = container_pid(bed, bin, id)?;
        let monitor = pss_kib(pid)?;
        let guest_rss = read_smaps(pid)?.guest;
        let mut fs = 0;
        for p in descendants(pid) {
            if comm(p).as_deref() == Some("virtiofsd") {
                fs += pss_kib(p)?;
            }
        }
        let guard: u64 = children_named(pid, "runvm-guard")
            .into_iter()
            .filter_map(|g| pss_kib(g).ok())
            .sum();
        monitors += monitor;
        virtiofsds += fs;
        guards += guard;
        guest += guest_rss;
        each.push(json!({
            "id": id, "monitor_pss_kib": monitor, "virtiofsd_pss_kib": fs,
            "guard_pss_kib": guard, "guest_rss_kib": guest_rss,
        }));
    }
    step.phase(&format!(
        "memory: idle containers ({}): {:.1} MiB PSS for {IDLE_CONTAINERS}; killing and deleting them",
        boot.name(),
        (monitors + virtiofsds) as f64 / 1024.0
    ));
    drop(containers);
    for (id, t) in &timings {
        check_container_boot(bed, boot, id, t)?;
    }
    let total = monitors + virtiofsds;
    Ok(json!({
        "containers": IDLE_CONTAINERS,
        "workload": "sleep 1000",
        "monitors_pss_kib": monitors,
        "virtiofsd_pss_kib": virtiofsds,
        "total_pss_kib": total,
        "per_container_pss_kib": total as f64 / IDLE_CONTAINERS as f64,
        "guards_pss_kib": guards,
        "guest_rss_kib": guest,
        "each": each,
    }))
}

// ---------------------------------------------------------------------------------------
// Warm start's template.

/// Fails, loudly, unless `reported` (the timings file's `boot`) is `boot`: a warm run
/// that booted cold would make the warm numbers a lie. `err` holds runvm's stderr.
fn check_boot(bed: &Bed, boot: Boot, reported: &Value, what: &str, err: &Path) -> Result<()> {
    if reported.as_str() == Some(boot.name()) {
        return Ok(());
    }
    bail!(
        "{what} was asked for a {} boot (RUNVM_BOOT={}) but its timings file says \"boot\": {reported}; \
         runvm's stderr:\n{}{}",
        boot.name(),
        boot.name(),
        tail(err),
        templates_report(bed, Boot::Warm)
    )
}

/// For a warm boot's error: what the bench's template directory holds.
fn templates_report(bed: &Bed, boot: Boot) -> String {
    if boot != Boot::Warm {
        return String::new();
    }
    let listing = Command::new("ls")
        .args(["-lsR", "--time-style=full-iso"])
        .arg(&bed.templates)
        .output()
        .map(|o| String::from_utf8_lossy(&[o.stdout, o.stderr].concat()).into_owned())
        .unwrap_or_else(|e| format!("(ls failed: {e})"));
    format!(
        "\nthe template directory {} holds:\n{}",
        bed.templates.display(),
        listing.trim_end()
    )
}

/// Makes the warm-start template: the first warm start of `true`, timed, with runvm's
/// log (which says how long making the template took) kept. The template directory
/// must hold exactly one template after it, and that start must be warm too (made, then
/// restored).
fn make_template(bed: &Bed, bin: &Path) -> Result<Value> {
    crate::util::remove_dir_if_exists(&bed.templates)?;
    let log = bed.work.join("template-run.log");
    let r = runvm_run(bed, bin, Boot::Warm, 0, &["true"], Some(&log), None)
        .context("the first warm start (which makes the template)")?;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let made_ms = template_made_ms(&log_text);
    let names: Vec<String> = std::fs::read_dir(&bed.templates)
        .with_context(|| format!("reading {}", bed.templates.display()))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let [name] = names.as_slice() else {
        bail!(
            "expected one template after the first warm start, found {names:?}{}",
            templates_report(bed, Boot::Warm)
        );
    };
    let memory = bed.templates.join(name).join("memory");
    let meta = std::fs::metadata(&memory).with_context(|| {
        format!(
            "reading {}{}",
            memory.display(),
            templates_report(bed, Boot::Warm)
        )
    })?;
    use std::os::unix::fs::MetadataExt;
    Ok(json!({
        "first_warm_start_ms": r.wall_ms,
        "made_ms": made_ms,
        "name": name,
        "memory_file_bytes": meta.len(),
        "memory_data_bytes": meta.blocks() * 512,
        "run": r.json,
    }))
}

/// How long making the template took, from runvm's log line `made the warm-start
/// template <dir> in <Duration as {:.1?}>`, in ms.
fn template_made_ms(log: &str) -> Option<f64> {
    let line = log
        .lines()
        .find(|l| l.contains("made the warm-start template"))?;
    let after = &line[line.rfind(" in ")? + 4..];
    let took: String = after
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || c.is_alphabetic())
        .collect();
    let split = took.find(|c: char| c.is_alphabetic())?;
    let (value, unit) = took.split_at(split);
    let value: f64 = value.parse().ok()?;
    let factor = match unit {
        "s" => 1000.0,
        "ms" => 1.0,
        "µs" => 1e-3,
        "ns" => 1e-6,
        _ => return None,
    };
    Some(value * factor)
}

/// qemu running `sleep 3`: smaps sampled one second after the guest reported `Started`.
fn qemu_rss(bed: &Bed, peer: &Peer) -> Result<Value> {
    let mut msg = bed.run_msg.clone();
    msg["Run"]["process"]["args"] = json!(["sleep", "3"]);
    let mut sampled = json!(null);
    let t0 = Instant::now();
    let mut sampler = |pid: u32, virtiofsd: u32| -> Result<()> {
        std::thread::sleep(Duration::from_secs(1));
        sampled = smaps(pid)?;
        sampled["virtiofsd"] = virtiofsd_memory(virtiofsd)?;
        sampled["sampled_at_ms"] = json!(ms(t0.elapsed()));
        Ok(())
    };
    let run = qemu_once(bed, peer, 9999, Some((&msg, &mut sampler)))?;
    sampled["workload"] = json!("sleep 3");
    sampled["run"] = run;
    sampled["sampled_after_workload_start"] = json!(true);
    Ok(sampled)
}

// ---------------------------------------------------------------------------------------
// The report.

/// A time in ms with one decimal, or "—" when it was not measured.
fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "—".into()
    }
}

/// `a / b` to two decimals, or "—" when either was not measured.
pub(crate) fn ratio(a: f64, b: f64) -> String {
    if (a / b).is_finite() {
        format!("{:.2}", a / b)
    } else {
        "—".into()
    }
}

/// Nearest-rank percentile.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

struct Report {
    raw: Value,
    place: Place,
    peer_only: bool,
    date: String,
    host_cpu: String,
    host_cpus: usize,
}

/// Rows of `Report::runvm_rows` and `Report::qemu_rows` the summary uses.
const RUNVM_INIT_UPPER: usize = 8;
const RUNVM_INIT_LOWER: usize = 9;
const RUNVM_EXIT: usize = 10;
const RUNVM_WORKLOAD: usize = 11;
const QEMU_INIT: usize = 4;
const QEMU_EXIT: usize = 5;
const QEMU_WORKLOAD: usize = 6;

/// A row: label and per-run values.
struct Row {
    label: String,
    values: Vec<f64>,
}

impl Report {
    fn new(raw: Value, place: Place, peer_only: bool) -> Self {
        Self {
            raw,
            place,
            peer_only,
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            host_cpu: cpu_model(),
            host_cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
        }
    }

    fn col(&self, who: &str, f: impl Fn(&Value) -> f64) -> Vec<f64> {
        self.raw[who]
            .as_array()
            .map(|a| a.iter().map(&f).collect())
            .unwrap_or_default()
    }

    /// Rows of runvm's runs booted as `boot` (for a warm start, the marks of the phases
    /// the template went through before its snapshot are absent: —).
    fn runvm_rows(&self, boot: Boot) -> Vec<Row> {
        let g = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let row = |label: &str, f: &dyn Fn(&Value) -> f64| Row {
            label: label.into(),
            values: self.col(boot.runs_key(), f),
        };
        // The order is what `RUNVM_*` indices below name.
        vec![
            row("launch → VMM start, upper bound (wall − VM exit: process start, container set-up, virtiofsd spawn; and the exit after the VM)", &|r| g(r, "wall_ms") - g(r, "vm_exit_ms")),
            if boot == Boot::Warm {
                row("runvm's own mark: process start → VMM start (config, share, virtiofsd spawn; the template loaded, its memory copied into the guest RAM file)", &|r| g(r, "launch_to_vmm_start_ms"))
            } else {
                row("runvm's own mark: process start → VMM start (config, share, virtiofsd spawn)", &|r| g(r, "launch_to_vmm_start_ms"))
            },
            if boot == Boot::Warm {
                row("VMM start → first vCPU run of the restored VM (devices, vCPU and VM state restored)", &|r| g(r, "kernel_entry_ms"))
            } else {
                row("VMM start → kernel entry (guest RAM file, devices, vhost-user handshake with virtiofsd, first vCPU run)", &|r| g(r, "kernel_entry_ms"))
            },
            if boot == Boot::Warm {
                row("first vCPU run → workload started (share and NICs put in spare slots, guest woken, `Hello`, share mounted, root bound, workload spawned)", &|r| g(r, "workload_started_ms") - g(r, "kernel_entry_ms"))
            } else {
                row("kernel entry → init started (boot-timer port)", &|r| g(r, "init_started_ms") - g(r, "kernel_entry_ms"))
            },
            row("init started → workload started (share mounted, root bound, workload spawned)", &|r| g(r, "workload_started_ms") - g(r, "init_started_ms")),
            row("workload started → exited", &|r| g(r, "workload_exited_ms") - g(r, "workload_started_ms")),
            row("workload exited → VM exit", &|r| g(r, "vm_exit_ms") - g(r, "workload_exited_ms")),
            row("VMM start → VM exit", &|r| g(r, "vm_exit_ms")),
            row("**launch → init**, upper bound", &|r| g(r, "wall_ms") - g(r, "vm_exit_ms") + g(r, "init_started_ms")),
            row("launch → init, lower bound (runvm's own mark + boot)", &|r| g(r, "launch_to_vmm_start_ms") + g(r, "init_started_ms")),
            row("**launch → exit** (wall)", &|r| g(r, "wall_ms")),
            row("**launch → workload started**, upper bound (wall − VM exit + workload started)", &|r| g(r, "wall_ms") - g(r, "vm_exit_ms") + g(r, "workload_started_ms")),
        ]
    }

    fn qemu_rows(&self) -> Vec<Row> {
        let g = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let row = |label: &str, f: &dyn Fn(&Value) -> f64| Row {
            label: label.into(),
            values: self.col("qemu", f),
        };
        // The order is what `QEMU_*` indices below name.
        vec![
            row("launch (virtiofsd spawn, then QEMU's) → `Hello` received (init up, early mounts done, vsock connected)", &|r| g(r, "hello_ms")),
            row("`Hello` → `Started` received (share mounted, root bound, workload started)", &|r| g(r, "started_ms") - g(r, "hello_ms")),
            row("`Started` → `Exited` received", &|r| g(r, "exited_ms") - g(r, "started_ms")),
            row("`Exited` → QEMU exit (Shutdown, sync, reset)", &|r| g(r, "exit_ms") - g(r, "exited_ms")),
            row("**launch → init** (`Hello`)", &|r| g(r, "hello_ms")),
            row("**launch → exit** (wall)", &|r| g(r, "exit_ms")),
            row("**launch → workload started** (`Started`)", &|r| g(r, "started_ms")),
        ]
    }

    /// What both sides wait for: virtiofsd started alone until it answers.
    fn virtiofsd_row(&self) -> Row {
        Row {
            label: "virtiofsd spawn → answer to the first vhost-user request, measured alone"
                .into(),
            values: self.raw["virtiofsd_ready_ms"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect())
                .unwrap_or_default(),
        }
    }

    fn where_measured(&self) -> String {
        let cpu = format!("{} ({} host CPUs)", self.host_cpu, self.host_cpus);
        match self.place {
            Place::Direct => format!("directly on this host's KVM; CPU {cpu}"),
            Place::TestHost => format!(
                "inside the nested KVM test host: QEMU TCG (emulated CPU \"{}\", {} vCPUs, kernel {}) on {cpu}. \
                 Times are emulated: compare the ratios, not the absolute numbers",
                self.raw["inside"]["cpu"].as_str().unwrap_or("?"),
                self.raw["inside"]["cpus"],
                self.raw["inside"]["kernel"].as_str().unwrap_or("?"),
            ),
        }
    }

    fn stats(v: &[f64]) -> (f64, f64) {
        (percentile(v, 50.0), percentile(v, 95.0))
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let runs = self.raw["runs"].as_u64().unwrap_or(0);
        let inside = &self.raw["inside"];
        s.push_str("# Boot benchmark: runvm (cold and warm) vs qemu `microvm`\n\n");
        s.push_str(&format!(
            "`cargo xtask bench boot` on {}: {runs} runs of `true` each by runvm booting cold, runvm starting warm \
             (`RUNVM_BOOT=warm`: its VM restored from a template snapshot) and qemu microvm (interleaved, after 1 uncounted warm-up run each), \
             {VCPUS} vCPU, {MEM_MIB} MiB, the same kernel, initramfs (guest init) and busybox root filesystem, served to the guest \
             over virtio-fs by the same virtiofsd with the same flags, guest RAM a shared file on a `huge=within_size` tmpfs on both sides.\n\n",
            self.date
        ));
        s.push_str(&format!("Measured {}.\n\n", self.where_measured()));
        s.push_str(&format!(
            "Peer: {} with `microvm,x-option-roms=off,rtc=off,acpi=off,isa-serial=on,memory-backend=mem`, \
             `-object memory-backend-file,id=mem,size={MEM_MIB}M,mem-path=<tmpfs huge=within_size>,share=on`, \
             `-device vhost-user-fs-device,tag={SHARE_TAG}` on a `-chardev socket` to its own virtiofsd (spawned first: the peer's launch), \
             `-device vhost-vsock-device`, kernel parameters `{}`; this benchmark plays runvm's side of the protocol over vsock. \
             virtiofsd: {} with `{}` (runvm's flags), on a directory whose `{SHARE_ROOT}` is a copy of the rootfs. \
             `shmem_enabled` here: `{}`.\n\n",
            inside["qemu"].as_str().unwrap_or("QEMU"),
            self.raw["peer_cmdline"].as_str().unwrap_or(""),
            inside["virtiofsd"].as_str().unwrap_or("virtiofsd"),
            self.raw["virtiofsd_flags"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            inside["shmem_enabled"].as_str().unwrap_or("?"),
        ));
        if self.peer_only {
            s.push_str("**Peer only** (`--peer-only`): runvm was not measured.\n\n");
        }
        let table = |s: &mut String, title: &str, rows: &[Row]| {
            s.push_str(&format!(
                "## {title}\n\n| phase | p50 ms | p95 ms |\n|---|---:|---:|\n"
            ));
            // Rows no run has a value for (a warm start's boot and init marks) are left out.
            for r in rows
                .iter()
                .filter(|r| r.values.iter().any(|v| v.is_finite()))
            {
                let (a, b) = Self::stats(&r.values);
                s.push_str(&format!("| {} | {} | {} |\n", r.label, num(a), num(b)));
            }
            s.push('\n');
        };
        let rr = self.runvm_rows(Boot::Cold);
        let wr = self.runvm_rows(Boot::Warm);
        let qr = self.qemu_rows();
        let q_init = Self::stats(&qr[QEMU_INIT].values).0;
        let q_exit = Self::stats(&qr[QEMU_EXIT].values).0;
        if !self.peer_only {
            s.push_str(&self.template_paragraph());
            s.push_str(
                "## runvm cold, runvm warm, qemu microvm\n\n\
                 | | runvm cold | runvm warm | qemu microvm | warm / cold | cold / qemu | warm / qemu |\n\
                 |---|---:|---:|---:|---:|---:|---:|\n",
            );
            for (label, index, q_index) in [
                ("launch → workload started", RUNVM_WORKLOAD, QEMU_WORKLOAD),
                ("launch → exit", RUNVM_EXIT, QEMU_EXIT),
            ] {
                for (p, name) in [(50.0, "p50"), (95.0, "p95")] {
                    let c = percentile(&rr[index].values, p);
                    let w = percentile(&wr[index].values, p);
                    let q = percentile(&qr[q_index].values, p);
                    s.push_str(&format!(
                        "| {label}, {name} | {} ms | {} ms | {} ms | {} | {} | {} |\n",
                        num(c),
                        num(w),
                        num(q),
                        ratio(w, c),
                        ratio(c, q),
                        ratio(w, q)
                    ));
                }
            }
            s.push_str(
                "\nrunvm's launch → workload started is an upper bound (wall − VM exit offset + workload-started offset: \
                 it holds the time after the VM's exit too); qemu's is the host receiving `Started`.\n\n",
            );
            s.push_str("## runvm (cold) vs qemu (p50)\n\n| | runvm | qemu microvm | runvm / qemu |\n|---|---:|---:|---:|\n");
            for (label, v, q) in [
                (
                    "launch → init (runvm: upper bound)",
                    &rr[RUNVM_INIT_UPPER].values,
                    q_init,
                ),
                (
                    "launch → init (runvm: lower bound, its own launch mark)",
                    &rr[RUNVM_INIT_LOWER].values,
                    q_init,
                ),
                ("launch → exit", &rr[RUNVM_EXIT].values, q_exit),
            ] {
                let r = Self::stats(v).0;
                s.push_str(&format!(
                    "| {label} | {} ms | {} ms | {} |\n",
                    num(r),
                    num(q),
                    ratio(r, q)
                ));
            }
            s.push('\n');
            table(
                &mut s,
                "runvm cold phases (from `RUNVM_TIMINGS_FILE`; launch = spawn of `runvm run`)",
                &rr,
            );
            table(
                &mut s,
                "runvm warm phases (restored from the template: the kernel booted and init started once, in the template, \
                 so those marks are absent; the template's load and the copy of its memory are in process start → VMM start)",
                &wr,
            );
        }
        table(
            &mut s,
            "qemu microvm phases (launch = spawn of the peer's virtiofsd, QEMU right after it)",
            &qr,
        );
        table(
            &mut s,
            "virtiofsd start (both sides pay it before their VM is built)",
            &[self.virtiofsd_row()],
        );

        s.push_str("## Memory (RSS from `/proc/<pid>/smaps` while the guest runs `sleep`)\n\n");
        s.push_str("| process | total RSS | guest memory RSS | overhead (total − guest) | other |\n|---|---:|---:|---:|---|\n");
        let mib = |v: &Value| {
            v.as_f64()
                .map(|k| format!("{:.1} MiB", k / 1024.0))
                .unwrap_or_else(|| "—".into())
        };
        for (who, label) in [
            ("runvm", "runvm VMM, cold, `runvm run`"),
            ("runvm_created", "runvm VMM, cold, after `create` + `start`"),
            ("runvm_warm", "runvm VMM, warm, `runvm run`"),
            (
                "runvm_warm_created",
                "runvm VMM, warm, after `create` + `start`",
            ),
            ("qemu", "qemu VMM"),
        ] {
            let m = &self.raw["rss"][who];
            if m.is_null() {
                continue;
            }
            if let Some(why) = m["failed"].as_str() {
                s.push_str(&format!(
                    "| {label} | **failed** | | | {} (see Failures) |\n",
                    first_line_of(why)
                ));
                continue;
            }
            let other = if who != "qemu" {
                let g: Vec<String> = m["guard_rss_kib"]
                    .as_array()
                    .map(|a| a.iter().map(&mib).collect())
                    .unwrap_or_default();
                format!(
                    "cleanup guard (`runvm-guard` child): {}",
                    if g.is_empty() {
                        "none found".into()
                    } else {
                        g.join(", ")
                    }
                )
            } else {
                "vhost-vsock kernel worker not counted".into()
            };
            let when = match m["sampled_after_workload_start"].as_bool() {
                Some(true) => "",
                Some(false) => " (**sampled before the workload surely started**)",
                None => {
                    " (workload start not reported: sampled 1 s after the slowest whole `true` run)"
                }
            };
            s.push_str(&format!(
                "| {label} (`{}`, sampled at {:.0} ms){when} | {} | {} | {} | {other} |\n",
                m["workload"].as_str().unwrap_or(""),
                m["sampled_at_ms"].as_f64().unwrap_or(f64::NAN),
                mib(&m["rss_kib"]),
                mib(&m["guest_rss_kib"]),
                mib(&m["overhead_kib"]),
            ));
        }
        for (who, label) in [
            ("runvm", "runvm cold"),
            ("runvm_warm", "runvm warm"),
            ("qemu", "qemu"),
        ] {
            let v = &self.raw["rss"][who]["virtiofsd"];
            if v.is_null() {
                continue;
            }
            let n = v["processes"].as_array().map(Vec::len).unwrap_or(0);
            s.push_str(&format!(
                "| virtiofsd of {label} (same sample) | {} | {} | {} | {n} processes (`--sandbox namespace` forks a worker); guest memory = the guest RAM it maps from the VMM's file, already in the VMM's row |\n",
                mib(&v["rss_kib"]),
                mib(&v["guest_rss_kib"]),
                mib(&v["overhead_kib"]),
            ));
        }
        s.push('\n');
        s.push_str(&self.idle_pss_table());

        s.push_str("## Targets (1 vCPU, 128 MiB)\n\n");
        if self.peer_only {
            s.push_str("- not evaluated: runvm was not measured\n");
        } else {
            let ri = Self::stats(&rr[RUNVM_INIT_UPPER].values).0;
            let re = Self::stats(&rr[RUNVM_EXIT].values).0;
            let yes = |b: bool| if b { "met" } else { "**not met**" };
            let faster = |r: f64, q: f64| {
                if (r / q).is_finite() {
                    format!("{} ({}×)", yes(r < q), ratio(r, q))
                } else {
                    "not measured (runvm reported no boot mark)".into()
                }
            };
            s.push_str(&format!(
                "- launch → init → exit faster than qemu microvm in the same place: init {}, exit {}\n",
                faster(ri, q_init),
                faster(re, q_exit)
            ));
            let hw = match self.place {
                Place::Direct if ri.is_finite() => format!("{} ({ri:.1} ms p50)", yes(ri <= 125.0)),
                Place::Direct => "not measured (runvm reported no init mark)".into(),
                Place::TestHost => "not measurable here (emulated CPU)".into(),
            };
            s.push_str(&format!("- ≤ 125 ms to init on real hardware: {hw}\n"));
            let overhead_mib = |m: &Value| m["overhead_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0;
            let rss = &self.raw["rss"];
            let (o, c, v) = (
                overhead_mib(&rss["runvm"]),
                overhead_mib(&rss["runvm_created"]),
                overhead_mib(&rss["runvm"]["virtiofsd"]),
            );
            s.push_str(&format!(
                "- VMM overhead ≤ 5 MiB, cold: after `create` + `start` (Docker's, containerd's and Podman's way) {} ({c:.1} MiB); `runvm run` {} ({o:.1} MiB: the same process did the CLI's work first, and the binary's pages that work touched stay mapped); virtiofsd, a process of its own, adds {v:.1} MiB beside it\n",
                yes(c <= 5.0),
                yes(o <= 5.0)
            ));
            s.push_str("\nIssue 16 (warm start):\n\n");
            let target = |value: f64, limit: f64, what: String| {
                if value.is_finite() {
                    format!("{} ({what})", yes(value <= limit))
                } else {
                    "not measured (see Failures)".to_string()
                }
            };
            let cold_exit_over_qemu = re / q_exit;
            s.push_str(&format!(
                "- cold launch → exit ≤ 0.8× qemu microvm: {}\n",
                target(
                    cold_exit_over_qemu,
                    0.8,
                    format!(
                        "{}×: {} ms vs {} ms p50",
                        ratio(re, q_exit),
                        num(re),
                        num(q_exit)
                    )
                )
            ));
            let cw = Self::stats(&rr[RUNVM_WORKLOAD].values).0;
            let ww = Self::stats(&wr[RUNVM_WORKLOAD].values).0;
            s.push_str(&format!(
                "- warm launch → workload started ≤ 0.25× cold: {}\n",
                target(
                    ww / cw,
                    0.25,
                    format!("{}×: {} ms vs {} ms p50", ratio(ww, cw), num(ww), num(cw))
                )
            ));
            let (wc, wo) = (
                overhead_mib(&rss["runvm_warm_created"]),
                overhead_mib(&rss["runvm_warm"]),
            );
            s.push_str(&format!(
                "- VMM overhead ≤ 5 MiB: cold after `create` + `start` {}; warm after `create` + `start` {}; \
                 (`runvm run`: cold {o:.1} MiB, warm {wo:.1} MiB)\n",
                target(c, 5.0, format!("{c:.1} MiB")),
                target(wc, 5.0, format!("{wc:.1} MiB")),
            ));
        }
        let marks = self.raw[Boot::Cold.runs_key()]
            .as_array()
            .map(|a| a.iter().any(|r| r["init_started_ms"].is_null()))
            .unwrap_or(false);
        if marks && !self.peer_only {
            s.push_str(
                "\n**runvm reported no boot-timer marks** (`init_started_ms`, `workload_started_ms`, `workload_exited_ms` are null in its \
                 timings file), so its launch → init and the phases inside the guest are missing (—).\n",
            );
        }
        let failures = self.failures();
        if !failures.is_empty() {
            s.push_str(
                "\n## Failures\n\nThese measurements failed in this run (the rest were taken):\n",
            );
            for f in &failures {
                s.push_str(&format!("\n```\n{}\n```\n", f.trim_end()));
            }
        }
        s.push_str(
            "\nNotes: runvm's phases are offsets from `Vmm::new` in its timings file; \"launch → VMM start\" is the wall time minus the VM-exit \
             offset, so it also holds the time after the VM exit (ending virtiofsd, removing the state), which makes runvm's launch → init \
             an upper bound; the lower bound starts at runvm's own launch mark (its `main`), so it leaves out the exec of the binary. \
             Both sides start virtiofsd before the VM and build the VM while it sandboxes itself: runvm's VMM connects in `Vmm::new` \
             (in VMM start → kernel entry), QEMU while it realizes the device; the \"measured alone\" row is that start on its own, \
             taken right after each pair of runs. The peer's \"init\" is the host receiving `Hello`, which the guest sends after the \
             point runvm's boot-timer mark records (init's early mounts and the vsock connection come in between): that tilts launch → \
             init slightly towards runvm, while the upper bound tilts it against runvm; launch → exit is the same work on both sides. \
             A warm start restores the template's VM (vCPU and device state, and a copy of its guest memory), fills a spare slot with the \
             container's share and wakes the guest's init, which then asks for the container as a cold-booted one does: its kernel boot and \
             init start happened once, in the template. Every warm run's timings file said `\"boot\": \"warm\"` (the bench fails otherwise). \
             Raw numbers of every run: `boot.json`.\n",
        );
        s
    }

    /// The measurements that failed (each: what, and why).
    fn failures(&self) -> Vec<String> {
        self.raw["failures"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How the warm runs' template was made, and what it holds.
    fn template_paragraph(&self) -> String {
        let t = &self.raw["template"];
        if t.is_null() {
            return String::new();
        }
        let made = match t["made_ms"].as_f64() {
            Some(m) => format!(
                "making the template (a cold boot of a VM with no container in it, then its snapshot, in a `runvm build-template` child process) took {:.1} s by runvm's log",
                m / 1000.0
            ),
            None => "runvm's log did not say how long making the template took".into(),
        };
        let mib = |k: &str| t[k].as_f64().unwrap_or(f64::NAN) / (1024.0 * 1024.0);
        format!(
            "Warm start's template: made once before the measured runs, in a template directory (`RUNVM_TEMPLATE_DIR`) private to this bench, \
             by a first warm start of `true` that is not counted: it took {} ms from launch to exit in all; {made}. The template holds \
             {:.1} MiB of guest-memory data (a sparse `memory` file of {:.0} MiB) and the VM's state.\n\n",
            num(t["first_warm_start_ms"].as_f64().unwrap_or(f64::NAN)),
            mib("memory_data_bytes"),
            mib("memory_file_bytes"),
        )
    }

    /// The PSS of ten idle containers, warm and cold.
    fn idle_pss_table(&self) -> String {
        let p = &self.raw["idle_pss"];
        if p.is_null() {
            return String::new();
        }
        let mut s = format!(
            "## PSS of {IDLE_CONTAINERS} idle containers started from one template\n\n\
             {IDLE_CONTAINERS} containers running `sleep 1000` (`runvm create` + `start`, one after the other, all alive at once), \
             the proportional set size (`Pss` of `/proc/<pid>/smaps_rollup`: a page mapped by n processes counts 1/n in each) \
             of their monitors (the VMM processes) and of their virtiofsd processes, summed, sampled 1 s after the last started; \
             the same for {IDLE_CONTAINERS} cold-booted ones beside them.\n\n\
             | {IDLE_CONTAINERS} idle containers | monitors' PSS | virtiofsds' PSS | total PSS | per container | guest RAM resident (RSS of the monitors' guest mappings; its PSS is split between each monitor and its virtiofsd, which maps it too) |\n\
             |---|---:|---:|---:|---:|---:|\n"
        );
        let mib = |v: &Value| {
            v.as_f64()
                .map(|k| format!("{:.1} MiB", k / 1024.0))
                .unwrap_or_else(|| "—".into())
        };
        for (boot, label) in [("warm", "warm, from one template"), ("cold", "cold")] {
            let v = &p[boot];
            if let Some(why) = v["failed"].as_str() {
                s.push_str(&format!(
                    "| {label} | **failed**: {} (see Failures) | | | | |\n",
                    first_line_of(why)
                ));
                continue;
            }
            s.push_str(&format!(
                "| {label} | {} | {} | {} | {} | {} |\n",
                mib(&v["monitors_pss_kib"]),
                mib(&v["virtiofsd_pss_kib"]),
                mib(&v["total_pss_kib"]),
                mib(&v["per_container_pss_kib"]),
                mib(&v["guest_rss_kib"]),
            ));
        }
        let total = |b: &str| p[b]["total_pss_kib"].as_f64().unwrap_or(f64::NAN);
        s.push_str(&format!(
            "| warm / cold | | | {} | | |\n\n",
            ratio(total("warm"), total("cold"))
        ));
        s.push_str(
            "No sharing between the warm containers' guests, honestly: a restored guest's RAM is a **copy** of the template's memory \
             in a RAM file of its own. Guest RAM must be a shared file mapping, because virtiofsd maps it too (vhost-user), so it cannot \
             be mapped copy-on-write (privately) from the template's file: virtiofsd would not see the guest's writes. A warm guest \
             starts with every page the template had touched resident; what PSS shares among the ten is only the runvm and virtiofsd \
             binaries' and libraries' pages. Each container's cleanup guard (`runvm-guard`) is not in these sums (`boot.json` has it).\n\n",
        );
        s
    }

    fn json(&self) -> Value {
        let mut v = self.raw.clone();
        v["where"] = json!({
            "place": match self.place { Place::Direct => "direct (host KVM)", Place::TestHost => "test host (nested, QEMU TCG)" },
            "date": self.date,
            "host_cpu": self.host_cpu,
            "host_cpus": self.host_cpus,
        });
        let mut summary = json!({});
        let runvm_rows = |boot: Boot| {
            if self.peer_only {
                vec![]
            } else {
                self.runvm_rows(boot)
            }
        };
        for (who, rows) in [
            ("runvm", runvm_rows(Boot::Cold)),
            ("runvm_warm", runvm_rows(Boot::Warm)),
            ("qemu", self.qemu_rows()),
            ("virtiofsd", vec![self.virtiofsd_row()]),
        ] {
            let mut m = serde_json::Map::new();
            for r in rows {
                let (a, b) = Self::stats(&r.values);
                m.insert(
                    r.label.replace("**", ""),
                    json!({ "p50_ms": a, "p95_ms": b }),
                );
            }
            summary[who] = Value::Object(m);
        }
        v["summary"] = summary;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_boots_from_the_share_with_shared_huge_page_ram() {
        let a = peer_args(
            Path::new("/k"),
            Path::new("/i"),
            Path::new("/ram"),
            Path::new("/s.sock"),
        );
        let after = |flag: &str| -> Vec<&str> {
            a.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].as_str())
                .collect()
        };
        let machine = after("-M");
        assert_eq!(machine.len(), 1, "{a:?}");
        assert!(machine[0].starts_with("microvm,"), "{a:?}");
        assert!(machine[0].ends_with(",memory-backend=mem"), "{a:?}");
        assert_eq!(
            after("-object"),
            ["memory-backend-file,id=mem,size=128M,mem-path=/ram,share=on"]
        );
        assert_eq!(after("-chardev"), ["socket,id=share,path=/s.sock"]);
        assert_eq!(
            after("-device"),
            [
                "vhost-user-fs-device,chardev=share,tag=runvm",
                "vhost-vsock-device,guest-cid=3"
            ]
        );
        // No disk: the root comes from the share only.
        assert!(after("-drive").is_empty(), "{a:?}");
        assert_eq!(after("-m"), [MEM_MIB.to_string().as_str()]);
    }

    #[test]
    fn the_template_making_time_is_read_from_runvms_log() {
        let log = "time=\"2026-12-07T10:00:00Z\" level=info msg=\"made the warm-start template /t/x in 2.5s\"\n";
        assert_eq!(template_made_ms(log), Some(2500.0));
        let log =
            "time=\"…\" level=info msg=\"made the warm-start template /t/a in b in 812.3ms\"\n";
        assert_eq!(template_made_ms(log), Some(812.3));
        assert_eq!(template_made_ms("level=warn msg=\"booting cold\""), None);
    }

    #[test]
    fn the_peer_is_sent_the_share_root_runvm_sends() {
        let dir = tempfile::tempdir().unwrap();
        rootfs::write_bundle(dir.path(), Path::new("/rootfs"), &["true"]).unwrap();
        let m = run_message(&dir.path().join("config.json")).unwrap();
        assert_eq!(
            m["Run"]["rootfs"],
            json!({ "share_tag": "runvm", "root": "root", "readonly": false })
        );
        assert_eq!(m["Run"]["process"]["args"], json!(["true"]));
        // The guest reads it as the protocol's own message.
        let msg: runvm_protocol::HostMessage = serde_json::from_value(m).unwrap();
        assert!(matches!(msg, runvm_protocol::HostMessage::Run { .. }));
    }
}

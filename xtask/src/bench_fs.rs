//! `cargo xtask bench fs [--size-mib N] [--files N] [--runs N]`: file system performance
//! of a container under runvm and under runc, in one run and the same place, with the same
//! bundle and the same files: streaming write and read of one large file (busybox `dd`),
//! creating, `stat`ing and deleting many small files, and untarring a source tree — each on
//! the container's root filesystem and on a directory bind mount. Prints p50 per runtime
//! and the runvm/runc ratio against the targets (streaming ≥ 50% of runc's throughput,
//! metadata within 3× of runc's time), writes `bench/fs.md` and `bench/fs.json`, and the
//! table into the README, beside runvm's figures from before its root filesystem moved
//! to virtio-fs ([`BASELINE`]: the EROFS image and ext4 writable layer on virtio-blk).
//!
//! What is timed: only the workload, by the container's own process
//! (`bench_fs_workload.rs`, a static binary copied into the root filesystem), so neither
//! the VM's boot nor the runtime's work counts. Each measurement is its own container:
//! `create`, then the host's page cache is dropped (so the input files are cold for
//! runc's container and for the virtiofsd serving runvm's; a VM's page cache starts empty
//! anyway), then `start`, wait, `delete`.
//!
//! Where: on this host's KVM when it can boot guests, else inside the nested test host
//! (TCG: compare the ratios only). As `bench cycle` does, the outer process builds, re-runs
//! this binary there with `--inside` and reads the raw numbers back.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::guests::Place;
use crate::util::{percentile, repo_root, run_quiet, splice_readme, target_dir, write_results};

#[cfg(test)]
#[path = "bench_fs_workload.rs"]
#[allow(dead_code)] // its `main` and argument parsing serve the standalone build
mod workload;

#[derive(clap::Args)]
pub struct FsArgs {
    /// MiB of the streaming write and read.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Small files created, `stat`ed and deleted.
    #[arg(long, default_value_t = 20_000)]
    files: u64,
    /// Measurements of each workload per runtime (the table shows their p50).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, hide = true)]
    inside: bool,
    #[arg(long, hide = true)]
    out: Option<PathBuf>,
    /// The workload program (built by the outer process).
    #[arg(long, hide = true)]
    workload: Option<PathBuf>,
}

const RUNTIMES: [&str; 2] = ["runvm", "runc"];
/// Bytes of each small file.
const SMALL_FILE_BYTES: u64 = 1024;
/// The generated source tree: leaf directories, files in each.
const TREE_TOP_DIRS: usize = 15;
const TREE_SUB_DIRS: usize = 10;
const TREE_FILES_PER_DIR: usize = 20;
/// File sizes in the tree: log-uniform between these (about 6.5 KiB on average).
const TREE_MIN_FILE: f64 = 256.0;
const TREE_MAX_FILE: f64 = 32768.0;
/// One container's whole life (boot, workload, stop) may take this long.
const RUN_DEADLINE: Duration = Duration::from_secs(20 * 60);
/// runvm's VM size, set rather than left to runvm's defaults so the table can say it.
const VM_VCPUS: u32 = 1;
const VM_MEM_MIB: u64 = 256;
/// Where the bind mount appears in the container.
const BIND_DEST: &str = "/bind";
/// runvm's figures with the EROFS root (before issue 13), kept in `bench/` for the
/// "before" columns: the raw JSON this benchmark wrote on 2026-12-06 at commit a81329a.
const BASELINE: &str = "fs-erofs-root-2026-12-06.json";
/// How the baseline's runvm served its root filesystem, for the table.
const BASELINE_DESIGN: &str = "EROFS root, 2026-12-06";

/// Where a workload's files are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Location {
    /// The container's root filesystem: inputs in `/bench-in`, outputs in `/bench-out`.
    Root,
    /// A directory bind mount at [`BIND_DEST`]: inputs in `in/`, outputs in `out/`.
    Bind,
}

impl Location {
    fn name(self) -> &'static str {
        match self {
            Location::Root => "root",
            Location::Bind => "bind",
        }
    }

    /// (input directory, output directory) inside the container.
    fn dirs(self) -> (String, String) {
        match self {
            Location::Root => ("/bench-in".into(), "/bench-out".into()),
            Location::Bind => (format!("{BIND_DEST}/in"), format!("{BIND_DEST}/out")),
        }
    }
}

/// The workloads, each one container per measurement.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    Write,
    Read,
    Files,
    Untar,
}

const WORKLOADS: [Workload; 4] = [
    Workload::Write,
    Workload::Read,
    Workload::Files,
    Workload::Untar,
];

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Write => "write",
            Workload::Read => "read",
            Workload::Files => "files",
            Workload::Untar => "untar",
        }
    }

    /// The figures its program prints (`result LABEL NS`).
    fn metrics(self) -> &'static [&'static str] {
        match self {
            Workload::Write => &["write"],
            Workload::Read => &["read"],
            Workload::Files => &["create", "stat", "delete"],
            Workload::Untar => &["untar"],
        }
    }

    /// The container's shell script. It cleans up after itself: the root filesystem is the
    /// host's directory itself under both runtimes, shared by every run.
    fn script(self, loc: Location, p: &Params) -> String {
        let (inp, out) = loc.dirs();
        let w = "/bench-in/fs-workload";
        match self {
            Workload::Write => format!(
                "{w} fstype {out} && {w} time write dd if=/dev/zero of={out}/stream bs=1M count={} conv=fsync && rm -f {out}/stream",
                p.size_mib
            ),
            Workload::Read => format!(
                "{w} fstype {inp} && {w} time read dd if={inp}/stream of=/dev/null bs=1M"
            ),
            Workload::Files => format!(
                "{w} fstype {out} && {w} files {out}/files {} {SMALL_FILE_BYTES}",
                p.files
            ),
            Workload::Untar => format!(
                "{w} fstype {out} && mkdir {out}/tree && {w} time untar sh -c 'tar -xf {inp}/src.tar -C {out}/tree && sync -f {out}/tree' && rm -rf {out}/tree"
            ),
        }
    }
}

/// The sizes of one benchmark run.
struct Params {
    size_mib: u64,
    files: u64,
    runs: usize,
}

pub fn cmd(a: FsArgs) -> Result<i32> {
    if a.size_mib == 0 || a.files == 0 || a.runs == 0 {
        bail!("--size-mib, --files and --runs must be at least 1");
    }
    let p = Params {
        size_mib: a.size_mib,
        files: a.files,
        runs: a.runs,
    };
    if a.inside {
        let out = a.out.context("--inside needs --out")?;
        let prog = a.workload.context("--inside needs --workload")?;
        let raw = measure(&p, &prog)?;
        std::fs::write(&out, serde_json::to_string_pretty(&raw)?)?;
        return Ok(0);
    }
    let prog = build_workload_program()?;
    let started = Instant::now();
    let (mut raw, place) = crate::bench_net::measure_inside(
        "fs",
        &[
            "--size-mib".into(),
            p.size_mib.to_string(),
            "--files".into(),
            p.files.to_string(),
            "--runs".into(),
            p.runs.to_string(),
            "--workload".into(),
            prog.display().to_string(),
        ],
    )?;
    raw["total_s"] = json!(started.elapsed().as_secs_f64().round());
    raw["commit"] = json!(git_commit());
    let baseline_path = repo_root().join("bench").join(BASELINE);
    let baseline: Option<Value> = match std::fs::read_to_string(&baseline_path) {
        Ok(text) => Some(
            serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", baseline_path.display()))?,
        ),
        Err(e) => {
            eprintln!(
                "[bench] no baseline {} ({e}): the table has no \"before\" columns",
                baseline_path.display()
            );
            None
        }
    };
    let md = markdown(&raw, place, baseline.as_ref());
    write_results(&repo_root().join("bench"), "fs", &md, &raw)?;
    splice_readme("bench-fs", &md.replacen("# ", "#### ", 1))?;
    Ok(0)
}

pub(crate) fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The source of the workload program, compiled on its own.
const WORKLOAD_SRC: &str = include_str!("bench_fs_workload.rs");

/// Compiles the workload program as a static binary (rustc alone: it uses std only), in
/// the target directory, which the test host shares at the same path.
fn build_workload_program() -> Result<PathBuf> {
    let dir = target_dir().join("runvm").join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let bin = dir.join("fs-workload");
    let stamp = dir.join("fs-workload.src-hash");
    let hash = crate::util::short_hash(&[WORKLOAD_SRC.as_bytes()]);
    if bin.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(hash.as_str()) {
        return Ok(bin);
    }
    let src = dir.join("fs-workload.rs");
    std::fs::write(&src, WORKLOAD_SRC).with_context(|| format!("writing {}", src.display()))?;
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    eprintln!("[bench] compiling the workload program {}", bin.display());
    run_quiet(
        Command::new(rustc)
            .args(["--edition", "2021", "-O", "--crate-name", "fs_workload"])
            .args(["-C", "target-feature=+crt-static", "-C", "strip=symbols"])
            .args(["--target", "x86_64-unknown-linux-gnu", "-o"])
            .arg(&bin)
            .arg(&src),
    )
    .context("compiling the fs benchmark's workload program")?;
    crate::initramfs::check_static(
        &std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?,
    )
    .with_context(|| format!("{} is not a static binary", bin.display()))?;
    std::fs::write(&stamp, hash)?;
    Ok(bin)
}

/// The benchmark's files on the measuring machine's disk (not a tmpfs, not the 9p share):
/// the root filesystem, the bind mount's source, the bundle and both runtimes' state.
/// Containers still there and the whole tree go on drop.
struct Bed {
    work: PathBuf,
    runvm: PathBuf,
    rootfs: PathBuf,
    bind: PathBuf,
    bundle: PathBuf,
    /// Containers created and not yet deleted: (runtime, id).
    live: Vec<(&'static str, String)>,
}

impl Bed {
    fn new(runvm: PathBuf, busybox: &Path, prog: &Path) -> Result<Self> {
        let work = PathBuf::from(format!("/var/tmp/runvm-bench-fs-{}", std::process::id()));
        crate::util::remove_dir_if_exists(&work)?;
        let bed = Bed {
            rootfs: work.join("rootfs"),
            bind: work.join("bind"),
            bundle: work.join("bundle"),
            work,
            runvm,
            live: Vec::new(),
        };
        std::fs::create_dir_all(&bed.work)
            .with_context(|| format!("creating {}", bed.work.display()))?;
        run_quiet(Command::new("cp").arg("-a").arg(busybox).arg(&bed.rootfs))
            .with_context(|| format!("copying {} to {}", busybox.display(), bed.work.display()))?;
        let tar = source_tarball();
        for dir in [
            bed.rootfs.join("bench-in"),
            bed.rootfs.join("bench-out"),
            bed.bind.join("in"),
            bed.bind.join("out"),
        ] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        for dir in [bed.rootfs.join("bench-in"), bed.bind.join("in")] {
            std::fs::write(dir.join("src.tar"), &tar.bytes)
                .with_context(|| format!("writing {}/src.tar", dir.display()))?;
        }
        let dest = bed.rootfs.join("bench-in/fs-workload");
        std::fs::copy(prog, &dest)
            .with_context(|| format!("copying {} to {}", prog.display(), dest.display()))?;
        Ok(bed)
    }

    fn state_root(&self, who: &str) -> PathBuf {
        self.work.join("state").join(who)
    }

    fn runtime(&self, who: &str) -> Command {
        let mut c = Command::new(if who == "runvm" {
            self.runvm.as_os_str()
        } else {
            "runc".as_ref()
        });
        c.arg("--root").arg(self.state_root(who));
        c.env("RUNVM_VCPUS", VM_VCPUS.to_string())
            .env("RUNVM_MEM_MIB", VM_MEM_MIB.to_string());
        c.stdin(Stdio::null());
        c
    }

    /// Writes the bundle's config for one measurement.
    fn write_config(&self, loc: Location, script: &str) -> Result<()> {
        let mut c = crate::util::runc_spec(&self.bundle)?;
        c["root"] = json!({ "path": self.rootfs, "readonly": false });
        c["process"]["args"] = json!(["sh", "-c", script]);
        if loc == Location::Bind {
            let mounts = c["mounts"]
                .as_array_mut()
                .context("runc spec wrote no mounts array")?;
            mounts.push(json!({ "destination": BIND_DEST, "type": "bind",
                "source": self.bind, "options": ["rbind", "rw"] }));
        }
        let path = self.bundle.join("config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&c)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Deletes a container whatever its state; forgets it.
    fn delete(&mut self, who: &str, id: &str) -> Result<()> {
        let mut c = self.runtime(who);
        c.args(["delete", "--force", id]);
        let r = run_quiet(&mut c);
        self.live.retain(|(w, i)| !(*w == who && i == id));
        r
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for (who, id) in std::mem::take(&mut self.live) {
            let mut c = self.runtime(who);
            c.args(["delete", "--force", &id]);
            if let Err(e) = run_quiet(&mut c) {
                eprintln!("[bench] could not delete the {who} container {id}: {e:#}");
            }
        }
        if let Err(e) = crate::util::remove_dir_if_exists(&self.work) {
            eprintln!("[bench] {e:#}");
        }
    }
}

/// What one container printed and how long it lived.
struct RunOutput {
    /// label → nanoseconds.
    results: serde_json::Map<String, Value>,
    fstype: String,
    /// create → delete, milliseconds.
    wall_ms: f64,
}

/// Drops the page cache (as root): the next reads come from the disk.
fn drop_caches() -> Result<bool> {
    if !crate::util::is_root() {
        return Ok(false);
    }
    run_quiet(&mut Command::new("sync"))?;
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("writing /proc/sys/vm/drop_caches")?;
    Ok(true)
}

/// One container: create, drop the caches, start, wait for it, delete.
fn run_once(bed: &mut Bed, who: &'static str, id: &str) -> Result<RunOutput> {
    let t0 = Instant::now();
    let out_path = bed.work.join(format!("{id}.out"));
    let err_path = bed.work.join(format!("{id}.err"));
    let pid_path = bed.work.join(format!("{id}.pid"));
    // The container's process keeps create's stdio: files, which need no reader.
    let out = std::fs::File::create(&out_path)?;
    let err = std::fs::File::create(&err_path)?;
    let mut c = bed.runtime(who);
    c.args(["create", "--bundle"])
        .arg(&bed.bundle)
        .arg("--pid-file")
        .arg(&pid_path)
        .arg(id)
        .stdout(out)
        .stderr(err);
    bed.live.push((who, id.to_string()));
    let status = c
        .status()
        .with_context(|| format!("running {who} create"))?;
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    if !status.success() {
        let text = read(&err_path);
        let _ = bed.delete(who, id);
        bail!("{who} create {id} failed ({status}): {}", text.trim());
    }
    let pid: i32 = read(&pid_path)
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", pid_path.display()))?;
    drop_caches()?;
    let mut c = bed.runtime(who);
    c.args(["start", id]);
    run_quiet(&mut c)?;
    let code = wait_exit(pid, RUN_DEADLINE).with_context(|| format!("{who} container {id}"));
    let code = match code {
        Ok(c) => c,
        Err(e) => {
            let _ = bed.delete(who, id);
            return Err(e);
        }
    };
    bed.delete(who, id)?;
    let wall_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let stdout = read(&out_path);
    if code != 0 {
        bail!(
            "the workload in the {who} container {id} exited {code}:\n{}{}",
            stdout,
            read(&err_path)
        );
    }
    let mut results = serde_json::Map::new();
    let mut fstype = String::new();
    for line in stdout.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["result", label, ns] => {
                let ns: u64 = ns.parse().with_context(|| format!("bad result {line:?}"))?;
                results.insert(label.to_string(), json!(ns));
            }
            ["fstype", _, t] => fstype = t.to_string(),
            _ => {}
        }
    }
    for f in [out_path, err_path, pid_path] {
        let _ = std::fs::remove_file(f);
    }
    Ok(RunOutput {
        results,
        fstype,
        wall_ms,
    })
}

/// Waits for our child (we are the subreaper of the container's process) to exit; its
/// exit code. Gives up after `limit`.
fn wait_exit(pid: i32, limit: Duration) -> Result<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on a pid that is our child (we are its subreaper); status is ours.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            return Ok(128 + libc::WTERMSIG(status));
        }
        if r < 0 {
            bail!("waitpid({pid}): {}", std::io::Error::last_os_error());
        }
        if Instant::now() > deadline {
            bail!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file of `mib` MiB of non-zero bytes, written and synced by the host.
fn write_input(path: &Path, mib: u64) -> Result<()> {
    let mut rng = Rng(0x5eed_f11e);
    let block: Vec<u8> = (0..1 << 20).map(|_| rng.next() as u8).collect();
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    for _ in 0..mib {
        f.write_all(&block)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    f.sync_all()?;
    Ok(())
}

/// xorshift64*: deterministic bytes for the generated files.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The generated source tree as an uncompressed ustar archive.
struct Tarball {
    bytes: Vec<u8>,
    files: usize,
    dirs: usize,
    /// Bytes of file content.
    content: u64,
}

/// A source-like tree, the same bytes every time: `src/mNN/sNN/fNN.c`, text files of
/// log-uniform sizes, mode 644 (directories 755), owned by root, one fixed mtime.
fn source_tarball() -> Tarball {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut t = Tarball {
        bytes: Vec::new(),
        files: 0,
        dirs: 0,
        content: 0,
    };
    let dir = |t: &mut Tarball, name: &str| {
        t.bytes
            .extend_from_slice(&tar_header(&format!("{name}/"), 0o755, 0, b'5'));
        t.dirs += 1;
    };
    dir(&mut t, "src");
    const TEXT: &[u8] = b"abcdefghijklmnopqrstuvwxyz_(){};=  \n";
    for m in 0..TREE_TOP_DIRS {
        dir(&mut t, &format!("src/m{m:02}"));
        for s in 0..TREE_SUB_DIRS {
            dir(&mut t, &format!("src/m{m:02}/s{s:02}"));
            for f in 0..TREE_FILES_PER_DIR {
                let size =
                    (TREE_MIN_FILE * (TREE_MAX_FILE / TREE_MIN_FILE).powf(rng.unit())) as usize;
                let name = format!("src/m{m:02}/s{s:02}/f{f:02}.c");
                t.bytes
                    .extend_from_slice(&tar_header(&name, 0o644, size as u64, b'0'));
                t.bytes
                    .extend((0..size).map(|_| TEXT[(rng.next() % TEXT.len() as u64) as usize]));
                t.bytes.resize(t.bytes.len().div_ceil(512) * 512, 0);
                t.files += 1;
                t.content += size as u64;
            }
        }
    }
    // The end of the archive: two zero blocks.
    t.bytes.resize(t.bytes.len() + 1024, 0);
    t
}

/// A ustar header block (`kind` b'0' for a file, b'5' for a directory).
fn tar_header(name: &str, mode: u32, size: u64, kind: u8) -> [u8; 512] {
    const MTIME: u64 = 1_700_000_000;
    let mut h = [0u8; 512];
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0w$o}", w = len - 1);
        h[at..at + len - 1].copy_from_slice(s.as_bytes());
    };
    assert!(name.len() <= 100, "tar name {name} is over 100 bytes");
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, MTIME);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    // The checksum counts its own field as spaces.
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// The inside process: every measurement, as raw JSON.
fn measure(p: &Params, prog: &Path) -> Result<Value> {
    let runvm = PathBuf::from(std::env::var("RUNVM_BIN").context("RUNVM_BIN")?);
    let busybox = PathBuf::from(std::env::var("RUNVM_TEST_ROOTFS").context("RUNVM_TEST_ROOTFS")?);
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
    }
    let started = Instant::now();
    let mut bed = Bed::new(runvm, &busybox, prog)?;
    let tree = source_tarball();
    let mut rows = Vec::new();
    let mut caches_dropped = true;
    for loc in [Location::Root, Location::Bind] {
        for wl in WORKLOADS {
            let t0 = Instant::now();
            // The read's input, written by the host: cold for the guest and, with the
            // page cache dropped, for runc's container too.
            let input = match (wl, loc) {
                (Workload::Read, Location::Root) => Some(bed.rootfs.join("bench-in/stream")),
                (Workload::Read, Location::Bind) => Some(bed.bind.join("in/stream")),
                _ => None,
            };
            if let Some(f) = &input {
                write_input(f, p.size_mib)?;
            }
            bed.write_config(loc, &wl.script(loc, p))?;
            let mut per: Vec<Vec<RunOutput>> = vec![vec![], vec![]];
            for i in 1..=p.runs {
                for (k, who) in RUNTIMES.iter().enumerate() {
                    let id = format!("fs-{}-{}-{i}", loc.name(), wl.name());
                    let r = run_once(&mut bed, who, &id).with_context(|| {
                        format!("{} {} run {i} under {who}", loc.name(), wl.name())
                    })?;
                    let inside: Vec<String> = r
                        .results
                        .iter()
                        .map(|(l, ns)| format!("{l} {:.0} ms", ns.as_f64().unwrap_or(0.0) / 1e6))
                        .collect();
                    eprintln!(
                        "[bench] {} {} {i}/{}: {who}: {} ({:.1} s with the container's life)",
                        loc.name(),
                        wl.name(),
                        p.runs,
                        inside.join(", "),
                        r.wall_ms / 1000.0
                    );
                    per[k].push(r);
                }
            }
            if let Some(f) = &input {
                std::fs::remove_file(f).with_context(|| format!("removing {}", f.display()))?;
            }
            caches_dropped &= crate::util::is_root();
            let mut row = json!({
                "location": loc.name(), "workload": wl.name(),
                "took_s": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            });
            for (k, who) in RUNTIMES.iter().enumerate() {
                row[*who] = summarize(&per[k], wl);
            }
            rows.push(row);
        }
    }
    drop(bed);
    let sh = crate::util::sh_stdout;
    Ok(json!({
        "params": {
            "size_mib": p.size_mib, "files": p.files, "file_bytes": SMALL_FILE_BYTES,
            "runs": p.runs, "tree_files": tree.files, "tree_dirs": tree.dirs,
            "tree_content_bytes": tree.content, "tarball_bytes": tree.bytes.len(),
        },
        "caches_dropped": caches_dropped,
        "date": sh("date -u +%Y-%m-%d"),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "nproc": sh("nproc"),
        "mem": sh("free -m | awk '/^Mem:/ {print $2}'"),
        "kernel": sh("uname -r"),
        "runc": sh("runc --version | head -1"),
        "runvm_vm": { "vcpus": VM_VCPUS, "mem_mib": VM_MEM_MIB },
        "measure_s": started.elapsed().as_secs_f64().round(),
        "rows": rows,
    }))
}

/// One runtime's measurements of one workload: per metric the milliseconds of each run
/// and their p50.
fn summarize(runs: &[RunOutput], wl: Workload) -> Value {
    let mut ms = serde_json::Map::new();
    let mut p50 = serde_json::Map::new();
    for m in wl.metrics() {
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.results.get(*m).and_then(Value::as_f64))
            .map(|ns| (ns / 1e3).round() / 1e3)
            .collect();
        p50.insert(m.to_string(), json!(percentile(&v, 0.5)));
        ms.insert(m.to_string(), json!(v));
    }
    json!({
        "status": "ok",
        "fstype": runs.first().map(|r| r.fstype.clone()).unwrap_or_default(),
        "p50_ms": p50,
        "ms": ms,
        "wall_ms": runs.iter().map(|r| r.wall_ms.round()).collect::<Vec<_>>(),
    })
}

/// What a metric row measures, for the table.
fn metric_label(m: &str, raw: &Value) -> String {
    let p = &raw["params"];
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    let files = group(n("files"));
    match m {
        "write" => format!(
            "streaming write, {} MiB (`dd bs=1M conv=fsync`)",
            n("size_mib")
        ),
        "read" => format!("streaming read, {} MiB, cold (`dd bs=1M`)", n("size_mib")),
        "create" => format!("create {files} files of {} B + syncfs", n("file_bytes")),
        "stat" => format!("`lstat` {files} files"),
        "delete" => format!("delete {files} files + syncfs"),
        "untar" => format!(
            "untar {} files, {:.1} MiB (busybox `tar -x`) + syncfs",
            group(n("tree_files")),
            n("tree_content_bytes") as f64 / 1048576.0
        ),
        _ => m.to_string(),
    }
}

/// 20000 → "20,000".
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Whether `baseline` measured with the sizes of `raw` (else its figures are not set
/// beside them).
fn same_sizes(baseline: &Value, raw: &Value) -> bool {
    [
        "size_mib",
        "files",
        "file_bytes",
        "tree_files",
        "tree_content_bytes",
    ]
    .iter()
    .all(|k| baseline["params"][k] == raw["params"][k])
}

/// The baseline's row for `location` and `workload`.
fn baseline_row<'a>(
    baseline: Option<&'a Value>,
    location: &str,
    workload: &str,
) -> Option<&'a Value> {
    baseline?["rows"]
        .as_array()?
        .iter()
        .find(|r| r["location"] == location && r["workload"] == workload)
}

fn markdown(raw: &Value, place: Place, baseline: Option<&Value>) -> String {
    let p = &raw["params"];
    let baseline = baseline.filter(|b| same_sizes(b, raw));
    let mut md = String::from("# File system benchmark: runvm vs runc\n\n");
    md.push_str(&format!(
        "Measured {} {}: {} ({} CPUs, {} MiB seen there), {}, runvm at commit {}. One bundle \
         (`runc spec`, writable root) and one root filesystem directory (busybox) for both; \
         runvm's VM has {} vCPU and {} MiB, runc's container no memory limit. p50 of {} runs each, runvm and runc alternating; each run is \
         its own container.\n\n",
        raw["date"].as_str().unwrap_or("?"),
        match place {
            Place::Direct => "on this host's KVM",
            Place::TestHost =>
                "inside the nested test host (QEMU TCG: an emulated CPU, so compare the ratios, not the absolute numbers)",
        },
        raw["cpu"].as_str().unwrap_or("?"),
        raw["nproc"].as_str().unwrap_or("?"),
        raw["mem"].as_str().unwrap_or("?"),
        raw["runc"].as_str().unwrap_or("runc"),
        raw["commit"].as_str().filter(|c| !c.is_empty()).unwrap_or("?"),
        raw["runvm_vm"]["vcpus"],
        raw["runvm_vm"]["mem_mib"],
        p["runs"],
    ));
    let with_before = baseline.is_some();
    if with_before {
        md.push_str(&format!(
            "| workload | on | runvm | runc | runvm / runc | target | file system (runvm / runc) | before: runvm ({BASELINE_DESIGN}) | before: runc | before: runvm / runc |\n\
             |---|---|---:|---:|---:|---|---|---:|---:|---:|\n"
        ));
    } else {
        md.push_str(
            "| workload | on | runvm | runc | runvm / runc | target | file system (runvm / runc) |\n\
             |---|---|---:|---:|---:|---|---|\n",
        );
    }
    let size_mib = p["size_mib"].as_f64().unwrap_or(f64::NAN);
    let empty = Vec::new();
    for row in raw["rows"].as_array().unwrap_or(&empty) {
        let wl = match row["workload"].as_str() {
            Some("write") => Workload::Write,
            Some("read") => Workload::Read,
            Some("files") => Workload::Files,
            _ => Workload::Untar,
        };
        let location = row["location"].as_str().unwrap_or("?");
        let on = match location {
            "bind" => format!("bind mount (`{BIND_DEST}`)"),
            _ => "root filesystem".into(),
        };
        let fs = |who: &str| match row[who]["fstype"].as_str() {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => "—".into(),
        };
        let before = baseline_row(baseline, location, wl.name());
        for m in wl.metrics() {
            let streaming = matches!(wl, Workload::Write | Workload::Read);
            let ms = |r: &Value, who: &str| r[who]["p50_ms"][*m].as_f64().unwrap_or(f64::NAN);
            let cell = |r: &Value, who: &str| {
                if r[who]["status"] == "refused" {
                    "refused (no virtio-fs then)".to_string()
                } else if !ms(r, who).is_finite() {
                    "—".to_string()
                } else if streaming {
                    format!("{:.1} MiB/s", size_mib / (ms(r, who) / 1000.0))
                } else {
                    format!("{:.0} ms", ms(r, who))
                }
            };
            // Throughput ratio for streaming (runvm's MiB/s over runc's), time ratio else.
            let ratio_of = |r: &Value| {
                let (a, b) = (ms(r, "runvm"), ms(r, "runc"));
                if streaming {
                    b / a
                } else {
                    a / b
                }
            };
            let ratio = ratio_of(row);
            let (ratio_cell, target) = if !ratio.is_finite() {
                ("—".to_string(), "—".to_string())
            } else if streaming {
                let met = if ratio >= 0.5 { "met" } else { "**not met**" };
                (format!("{ratio:.2}"), format!("≥ 0.50 of runc: {met}"))
            } else {
                let met = if ratio <= 3.0 { "met" } else { "**not met**" };
                (format!("{ratio:.2}"), format!("≤ 3× runc: {met}"))
            };
            md.push_str(&format!(
                "| {} | {on} | {} | {} | {ratio_cell} | {target} | {} / {} |",
                metric_label(m, raw),
                cell(row, "runvm"),
                cell(row, "runc"),
                fs("runvm"),
                fs("runc"),
            ));
            if with_before {
                match before {
                    Some(b) => {
                        let r = ratio_of(b);
                        md.push_str(&format!(
                            " {} | {} | {} |",
                            cell(b, "runvm"),
                            cell(b, "runc"),
                            if r.is_finite() {
                                format!("{r:.2}")
                            } else {
                                "—".into()
                            }
                        ));
                    }
                    None => md.push_str(" — | — | — |"),
                }
            }
            md.push('\n');
        }
    }
    md.push_str(&format!(
        "\nTargets (issue 13): streaming throughput ≥ 50% of runc's; metadata (create, stat, \
         delete, untar) within 3× of runc's time. The ratio is runvm / runc of throughput for \
         streaming and of time otherwise.\n\n\
         runvm's root filesystem and its bind mounts are the host's directories themselves, \
         served live over virtio-fs by one virtiofsd per container (`--cache auto`): what the \
         container writes is on the host at once, nothing is built at `create` or written back \
         at stop. The guest mounts the share and binds its `root` directory as the container's \
         root; the file system column is the type of the mount the workload's directory is \
         on, as the container sees it.{}\n\n\
         What is timed: only the workload, by the container's own process (a static helper \
         that runs busybox `dd`, `tar` and `sync -f`, or makes the small files itself; \
         `CLOCK_MONOTONIC` inside the container), not the VM's boot or the runtime's work at \
         `create` and stop; every workload removes what it wrote before it exits. Before each \
         `start` the host's page cache is dropped{}, so the inputs are read cold (the read's \
         {} MiB file and the tarball are written by the host); a VM starts with an empty page \
         cache. The small files are in directories of 1,000; `lstat` runs right after they \
         are made (warm). \"syncfs\" is `sync -f` on the directory's file system.\n",
        if with_before {
            format!(
                " The \"before\" columns are this benchmark's run of {} at commit {} (same \
                 sizes, same place, its own runc figures beside it), when runvm's root was an \
                 overlay of an EROFS image of the root filesystem and an ext4 writable layer on \
                 virtio-blk, written back to the host directory when the container stopped, and \
                 runvm refused directory bind mounts (`bench/{BASELINE}`).",
                baseline.and_then(|b| b["date"].as_str()).unwrap_or("?"),
                baseline.and_then(|b| b["commit"].as_str()).unwrap_or("?"),
            )
        } else {
            String::new()
        },
        if raw["caches_dropped"] == true {
            ""
        } else {
            " (it was **not**: not root)"
        },
        p["size_mib"],
    ));
    md.push_str(&format!(
        "\nWall time of each row (both runtimes, every run, with the containers' life): {}; \
         {} s in all where the guests ran, {} s for the whole command (with the builds and \
         the test host's boot).\n",
        raw["rows"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|r| format!(
                "{} {} {} s",
                r["location"].as_str().unwrap_or("?"),
                r["workload"].as_str().unwrap_or("?"),
                r["took_s"]
            ))
            .collect::<Vec<_>>()
            .join(", "),
        raw["measure_s"],
        raw["total_s"],
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_tarball_is_deterministic_and_busybox_extracts_it() {
        let t = source_tarball();
        assert_eq!(t.bytes, source_tarball().bytes, "not the same bytes twice");
        assert_eq!(t.files, TREE_TOP_DIRS * TREE_SUB_DIRS * TREE_FILES_PER_DIR);
        // About 20 MB of a few thousand files, as the benchmark says.
        assert!(
            (15 << 20..30 << 20).contains(&t.content),
            "{} bytes",
            t.content
        );
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("src.tar");
        std::fs::write(&tar, &t.bytes).unwrap();
        let out = dir.path().join("x");
        std::fs::create_dir(&out).unwrap();
        let ok = Command::new("/bin/busybox")
            .arg("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&out)
            .status()
            .expect("needs /bin/busybox (apt-get install busybox-static)");
        assert!(ok.success());
        let (mut files, mut bytes) = (0, 0);
        let mut stack = vec![out.join("src")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let md = e.metadata().unwrap();
                if md.is_dir() {
                    stack.push(e.path());
                } else {
                    files += 1;
                    bytes += md.len();
                }
            }
        }
        assert_eq!((files, bytes), (t.files, t.content));
    }

    #[test]
    fn the_files_workload_reports_three_phases_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("files");
        let r = workload::files(&target, 2500, 100).unwrap();
        let labels: Vec<&str> = r.iter().map(|(l, _)| *l).collect();
        assert_eq!(labels, ["create", "stat", "delete"]);
        assert!(r.iter().all(|(_, ns)| *ns > 0));
        assert!(!target.exists());
        // A directory that is already there is an error, not a silent reuse.
        std::fs::create_dir(&target).unwrap();
        assert!(workload::files(&target, 1, 1).is_err());
    }

    #[test]
    fn the_workload_names_the_file_system_of_a_directory() {
        // The root is on something; /proc is procfs wherever this runs.
        assert!(!workload::fstype(Path::new("/")).unwrap().is_empty());
        assert_eq!(workload::fstype(Path::new("/proc/self")).unwrap(), "proc");
        let argv = ["sh".to_string(), "-c".into(), "exit 3".into()];
        assert!(workload::time_command(&argv).is_err());
        assert!(workload::time_command(&argv[..2]).is_err());
    }

    #[test]
    fn the_table_marks_targets_and_shows_the_erofs_baseline_beside() {
        let v = |runvm: f64, runc: f64| {
            (
                json!({ "status": "ok", "fstype": "virtiofs", "p50_ms": { "write": runvm, "read": runvm, "create": runvm, "stat": runvm, "delete": runvm, "untar": runvm } }),
                json!({ "status": "ok", "fstype": "ext4", "p50_ms": { "write": runc, "read": runc, "create": runc, "stat": runc, "delete": runc, "untar": runc } }),
            )
        };
        let params = json!({ "size_mib": 256, "files": 20000, "file_bytes": 1024, "runs": 3,
                             "tree_files": 3000, "tree_content_bytes": 20971520 });
        let (slow_vm, c1) = v(3000.0, 1000.0);
        let (ok_vm, c2) = v(1500.0, 1000.0);
        let (bind_vm, c3) = v(1000.0, 900.0);
        let raw = json!({
            "params": params, "caches_dropped": true, "total_s": 60,
            "rows": [
                { "location": "root", "workload": "write", "runvm": slow_vm, "runc": c1, "took_s": 10 },
                { "location": "root", "workload": "files", "runvm": ok_vm, "runc": c2, "took_s": 10 },
                { "location": "bind", "workload": "untar", "runvm": bind_vm, "runc": c3, "took_s": 5 },
            ],
        });
        let (old_vm, old_c) = v(2000.0, 1000.0);
        let baseline = json!({
            "params": params, "date": "2026-12-06", "commit": "a81329a",
            "rows": [
                { "location": "root", "workload": "write", "runvm": old_vm, "runc": old_c },
                { "location": "bind", "workload": "untar",
                  "runvm": { "status": "refused", "error": "needs virtio-fs" },
                  "runc": { "status": "ok", "fstype": "ext4", "p50_ms": { "untar": 800.0 } } },
            ],
        });
        let md = markdown(&raw, Place::TestHost, Some(&baseline));
        // 256 MiB in 3 s against 1 s: a third of runc's throughput; before, half of it.
        assert!(md.contains("| streaming write, 256 MiB (`dd bs=1M conv=fsync`) | root filesystem | 85.3 MiB/s | 256.0 MiB/s | 0.33 | ≥ 0.50 of runc: **not met** | virtiofs / ext4 | 128.0 MiB/s | 256.0 MiB/s | 0.50 |"), "{md}");
        // A workload the baseline lacks has empty "before" cells.
        assert!(md.contains("| create 20,000 files of 1024 B + syncfs | root filesystem | 1500 ms | 1000 ms | 1.50 | ≤ 3× runc: met | virtiofs / ext4 | — | — | — |"), "{md}");
        assert!(md.contains("| untar 3,000 files, 20.0 MiB (busybox `tar -x`) + syncfs | bind mount (`/bind`) | 1000 ms | 900 ms | 1.11 | ≤ 3× runc: met | virtiofs / ext4 | refused (no virtio-fs then) | 800 ms | — |"), "{md}");
        assert!(md.contains("EROFS root, 2026-12-06"), "{md}");

        // Without a baseline, or one of other sizes, the table has no "before" columns.
        let mut other = raw.clone();
        other["params"]["size_mib"] = json!(64);
        for md in [
            markdown(&other, Place::TestHost, Some(&baseline)),
            markdown(&raw, Place::TestHost, None),
        ] {
            assert!(!md.contains("before:"), "{md}");
            assert!(
                md.contains("| ≥ 0.50 of runc: **not met** | virtiofs / ext4 |\n"),
                "{md}"
            );
        }
    }
}

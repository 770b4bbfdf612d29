//! `cargo xtask oci`: the OCI runtime-tools validation suite, run against runtimes.
//!
//! Owns getting the suite without leaving Debian's archive (the `validation/` programs are
//! only in the *source* package: trixie's, through a `deb-src` entry from which nothing is
//! installed), building it in GOPATH mode with Debian's Go libraries and runvm's stand-in
//! for `github.com/mndrix/tap-go` (`assets/oci/tap.go`), caching the build under
//! `~/.cache/runvm/oci-validation/<key>/`, and running its 58 programs against one or more
//! runtimes (runc by default): each program as root from the source root, in its own mount
//! namespace, with a timeout, its TAP results counted here. The result is a per-program
//! table in `bench/oci-validation.md` (raw numbers in `bench/oci-validation.json`).
//!
//! When a runvm binary is among the runtimes and guests only boot in the nested test host,
//! the whole run happens there (`--inside testhost`; the cache and target dirs are shared at
//! the same paths and the Go binaries are static). See `shared/reference/oci-validation.md`.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::guests::{GuestSetup, Place};
use crate::oci_expected::{self, Point, Record};
use crate::util::{self, ensure_apt, fmt_duration, remove_dir_if_exists, Step};

const SRC_PACKAGE: &str = "golang-github-opencontainers-runtime-tools";
const SRC_VERSION: &str = "0.9.0.109.ge931285-1";
const SRC_TARBALL: &str =
    "golang-github-opencontainers-runtime-tools_0.9.0.109.ge931285.orig.tar.xz";
const SRC_SHA256: &str = "203989a1ea98cf2aaced79155bbda09270b20db19b03376dde91ab12e5e6a0fe";
/// runvm's stand-in for `github.com/mndrix/tap-go` (in no Debian release).
const TAP_GO: &str = include_str!("../assets/oci/tap.go");
/// Changes to how the suite is built (part of the cache key).
const BUILD_RECIPE: &str = "gopath, runtimetest netgo+osusergo, one go build for validation/*";
/// The Go toolchain and the suite's Go dependencies, all from bookworm.
const GO_PACKAGES: &[&str] = &[
    "golang-go",
    "golang-github-opencontainers-specs-dev",
    "golang-github-opencontainers-selinux-dev",
    "golang-github-google-uuid-dev",
    "golang-github-hashicorp-go-multierror-dev",
    "golang-github-mrunalp-fileutils-dev",
    "golang-github-sirupsen-logrus-dev",
    "golang-github-urfave-cli-dev",
    "golang-gocapability-dev",
    "golang-golang-x-sys-dev",
    "golang-github-blang-semver-dev",
    "golang-github-xeipuuv-gojsonschema-dev",
    "xz-utils",
];
/// Where the trixie `deb-src` entry goes (its own file; only sources, nothing installed).
const DEB_SRC_FILE: &str = "/etc/apt/sources.list.d/runvm-trixie-src.sources";
const EXPECTED_PROGRAMS: usize = 58;

/// `cargo xtask oci` arguments.
#[derive(clap::Args, Debug, Default)]
pub struct OciArgs {
    /// A runtime to test: a command name on PATH or a path (repeatable; default: runc).
    /// The first runtime is the reference for the "differs" column.
    #[arg(long = "runtime", value_name = "NAME_OR_PATH")]
    pub runtimes: Vec<String>,
    /// Run only these programs (names as in `validation/`, e.g. `create linux_cgroups_cpus`).
    #[arg(long, value_name = "PROG", num_args = 1..)]
    pub only: Vec<String>,
    /// Seconds each program may run before it is killed.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub timeout: u64,
    /// Build the suite (if not cached) and stop.
    #[arg(long)]
    pub build_only: bool,
    /// Check runvm's results, point by point, against `xtask/oci-expected.json` and
    /// runc's in the same run (see `oci_expected`); exit 1 on a regression or an
    /// unexplained divergence (what `cargo xtask test` runs).
    #[arg(long)]
    pub check: bool,
    /// Write the results to `bench/oci-validation.{md,json}` and the README's table
    /// (tracked files; without it the results stay under `target/oci-validation/`).
    #[arg(long)]
    pub save: bool,
    /// Rewrite `xtask/oci-expected.json` from this run's runvm results (keeping every
    /// reason); review the diff before committing it.
    #[arg(long)]
    pub record: bool,
    /// Internal: already placed where the runtimes run (`direct` or `testhost`).
    #[arg(long, hide = true, value_name = "PLACE")]
    pub inside: Option<String>,
}

/// The built suite.
struct Suite {
    /// `~/.cache/runvm/oci-validation/<key>`.
    dir: PathBuf,
    /// The source root the programs run from (`./runtimetest`, `./rootfs-amd64.tar.gz`).
    root: PathBuf,
    /// `validation/<name>/<name>.t`, by name.
    programs: Vec<String>,
    /// What `go version` said at build time.
    go_version: String,
}

fn suite_dir() -> PathBuf {
    let key = util::short_hash(&[
        SRC_VERSION.as_bytes(),
        SRC_SHA256.as_bytes(),
        TAP_GO.as_bytes(),
        BUILD_RECIPE.as_bytes(),
    ]);
    util::cache_dir().join("oci-validation").join(key)
}

/// The source root inside a GOPATH rooted at `gopath`.
fn source_root(gopath: &Path) -> PathBuf {
    gopath.join("src/github.com/opencontainers/runtime-tools")
}

/// The cached suite, if it is complete.
fn load_suite(dir: &Path) -> Result<Suite> {
    let root = source_root(&dir.join("gopath"));
    let info = std::fs::read_to_string(dir.join("BUILD"))
        .with_context(|| format!("no complete suite build in {}", dir.display()))?;
    let go_version = info
        .lines()
        .find_map(|l| l.strip_prefix("go: "))
        .unwrap_or("unknown")
        .to_string();
    for f in ["runtimetest", "rootfs-amd64.tar.gz"] {
        if !root.join(f).is_file() {
            bail!(
                "{} is missing from the cached suite",
                root.join(f).display()
            );
        }
    }
    let mut programs = Vec::new();
    for e in std::fs::read_dir(root.join("validation"))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if root.join(program_path(&name)).is_file() {
            programs.push(name);
        }
    }
    programs.sort();
    if programs.len() != EXPECTED_PROGRAMS {
        eprintln!(
            "[oci] warning: {} validation programs built, the suite has {EXPECTED_PROGRAMS}",
            programs.len()
        );
    }
    Ok(Suite {
        dir: dir.to_path_buf(),
        root,
        programs,
        go_version,
    })
}

fn program_path(name: &str) -> PathBuf {
    Path::new("validation").join(name).join(format!("{name}.t"))
}

/// The suite, built first if it is not cached.
fn ensure_suite() -> Result<Suite> {
    let dir = suite_dir();
    if let Ok(s) = load_suite(&dir) {
        return Ok(s);
    }
    build_suite(&dir)?;
    load_suite(&dir)
}

/// Adds the trixie `deb-src` entry (if missing) and refreshes apt's lists for it alone.
pub(crate) fn add_trixie_deb_src() -> Result<()> {
    // The archive this machine's apt already uses for bookworm also serves trixie.
    let mirror = util::debian_mirror("bookworm")?;
    util::add_deb_src(
        DEB_SRC_FILE,
        &mirror,
        "trixie",
        "# Added by `cargo xtask oci` (runvm): trixie's source packages, to fetch the OCI\n\
         # runtime-tools validation suite. Source entries only: nothing is installed from it.\n",
    )
}

fn build_suite(dir: &Path) -> Result<()> {
    if !crate::util::is_root() {
        bail!("building the OCI validation suite needs root (apt-get); run as root");
    }
    let base = dir.parent().context("cache dir has no parent")?;
    let tmp = dir.with_extension("tmp");
    let mut step = Step::new("oci");
    step.phase("installing Go and the suite's Go libraries (bookworm packages)");
    ensure_apt(GO_PACKAGES)?;
    remove_dir_if_exists(&tmp)?;
    let download = tmp.join("download");
    std::fs::create_dir_all(&download)
        .with_context(|| format!("creating {}", download.display()))?;

    step.phase(&format!(
        "adding a deb-src entry for trixie in {DEB_SRC_FILE} (nothing is installed from it)"
    ));
    add_trixie_deb_src()?;
    step.phase(&format!(
        "apt-get source --download-only --tar-only {SRC_PACKAGE}={SRC_VERSION}"
    ));
    let tarball =
        util::apt_source_tarball(&download, SRC_PACKAGE, SRC_VERSION, SRC_TARBALL, SRC_SHA256)?;

    step.phase("unpacking the source into a GOPATH, adding the tap-go stand-in");
    let gopath = tmp.join("gopath");
    let root = source_root(&gopath);
    let org = root.parent().context("source root has no parent")?;
    std::fs::create_dir_all(org)?;
    util::run_quiet(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(org),
    )
    .context("unpacking the source tarball")?;
    let top: Vec<PathBuf> = std::fs::read_dir(org)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let [top] = top.as_slice() else {
        bail!("expected one top directory in {SRC_TARBALL}, found {top:?}");
    };
    std::fs::rename(top, &root)
        .with_context(|| format!("moving {} to {}", top.display(), root.display()))?;
    remove_dir_if_exists(&download)?;
    if !root.join("rootfs-amd64.tar.gz").is_file() {
        bail!("the source has no rootfs-amd64.tar.gz (the programs need it)");
    }
    let tap_dir = gopath.join("src/github.com/mndrix/tap-go");
    std::fs::create_dir_all(&tap_dir)?;
    std::fs::write(tap_dir.join("tap.go"), TAP_GO)?;

    let gocache = tmp.join("gocache");
    let go_version = Command::new("go")
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    step.phase(&format!("building runtimetest ({go_version})"));
    let mut n = 0usize;
    util::run_lines(
        util::go_gopath(&root, &gopath, &gocache).args([
            "build",
            "-v",
            "-tags",
            "netgo osusergo",
            "-o",
            "runtimetest",
            "./cmd/runtimetest",
        ]),
        |l| {
            n += 1;
            step.progress(&format!("{n} packages compiled: {l}"));
        },
    )
    .context("building runtimetest")?;

    let mut names = Vec::new();
    for e in std::fs::read_dir(root.join("validation"))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name != "util"
            && root
                .join("validation")
                .join(&name)
                .join(format!("{name}.go"))
                .is_file()
        {
            names.push(name);
        }
    }
    names.sort();
    step.phase(&format!(
        "building the {} validation programs (validation/*/*.go, one go build)",
        names.len()
    ));
    let bin = tmp.join("bin");
    std::fs::create_dir_all(&bin)?;
    let mut build = util::go_gopath(&root, &gopath, &gocache);
    build
        .args(["build", "-v", "-o"])
        .arg(format!("{}/", bin.display()));
    build.args(names.iter().map(|n| format!("./validation/{n}")));
    let mut n = 0usize;
    util::run_lines(&mut build, |l| {
        n += 1;
        step.progress(&format!("{n} packages compiled: {l}"));
    })
    .context("building the validation programs")?;
    for name in &names {
        let to = root.join(program_path(name));
        std::fs::rename(bin.join(name), &to)
            .with_context(|| format!("moving the {name} binary to {}", to.display()))?;
    }
    remove_dir_if_exists(&bin)?;
    remove_dir_if_exists(&gocache)?;
    std::fs::write(
        tmp.join("BUILD"),
        format!(
            "source: {SRC_PACKAGE} {SRC_VERSION} (Debian trixie source package)\n\
             sha256: {SRC_SHA256}\ngo: {go_version}\nprograms: {}\n\
             tap-go: runvm stand-in (xtask/assets/oci/tap.go)\n",
            names.len()
        ),
    )?;
    std::fs::create_dir_all(base)?;
    remove_dir_if_exists(dir)?;
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))?;
    step.finish(
        &format!("built the OCI validation suite ({} programs)", names.len()),
        dir,
    );
    Ok(())
}

/// TAP results of one program, counted from its stdout.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Counts {
    pass: usize,
    fail: usize,
    skip: usize,
    /// `not ok … # TODO`: expected failures, not counted as failures.
    todo: usize,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.pass += o.pass;
        self.fail += o.fail;
        self.skip += o.skip;
        self.todo += o.todo;
    }
}

/// The TAP directive of a result line (`# SKIP`, `# TODO`), upper-cased.
fn directive(line: &str) -> Option<String> {
    let (_, d) = line.split_once(" # ")?;
    let word = d.split_whitespace().next()?.to_ascii_uppercase();
    (word.starts_with("SKIP") || word.starts_with("TODO")).then(|| word[..4].to_string())
}

/// The top-level result lines (in order) and plans of a program's TAP output, and
/// whether it printed any TAP. Indented lines (YAML blocks, nested output) do not count.
fn parse_tap(text: &str) -> (Vec<Point>, Vec<String>, bool) {
    let mut points = Vec::new();
    let mut plans = Vec::new();
    let mut saw_tap = false;
    let is_result = |l: &str, word: &str| {
        l.strip_prefix(word)
            .is_some_and(|r| r.is_empty() || r.starts_with(' '))
    };
    for line in text.lines() {
        let line = line.trim_end();
        if is_result(line, "not ok") {
            saw_tap = true;
            points.push(match directive(line).as_deref() {
                Some("TODO") => Point::Todo,
                _ => Point::Fail,
            });
        } else if is_result(line, "ok") {
            saw_tap = true;
            points.push(match directive(line).as_deref() {
                Some("SKIP") => Point::Skip,
                _ => Point::Pass,
            });
        } else if line.starts_with("1..") {
            saw_tap = true;
            plans.push(line.to_string());
        } else if line.starts_with("TAP version") {
            saw_tap = true;
        }
    }
    (points, plans, saw_tap)
}

impl Counts {
    fn of(points: &[Point]) -> Counts {
        let n = |want: Point| points.iter().filter(|p| **p == want).count();
        Counts {
            pass: n(Point::Pass),
            fail: n(Point::Fail),
            skip: n(Point::Skip),
            todo: n(Point::Todo),
        }
    }
}

/// Points as one letter each (P, F, S, T), in order.
fn serialize_points<S: serde::Serializer>(p: &[Point], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.iter().map(|p| p.letter()).collect::<String>())
}

#[derive(Debug, Serialize)]
struct ProgramResult {
    name: String,
    #[serde(flatten)]
    counts: Counts,
    /// Every test point's result, in order.
    #[serde(serialize_with = "serialize_points")]
    points: Vec<Point>,
    /// The plan lines it printed (`1..N`; some programs print two).
    plans: Vec<String>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    no_tap: bool,
    seconds: f64,
}

impl ProgramResult {
    fn cell(&self) -> String {
        let c = &self.counts;
        let mut s = format!("{} / {} / {}", c.pass, c.fail, c.skip);
        if c.todo > 0 {
            s.push_str(&format!(" (+{} todo)", c.todo));
        }
        if let (Some(code), false) = (self.exit_code, self.no_tap) {
            if code != 0 {
                s.push_str(&format!(", exit {code}"));
            }
        }
        if self.timed_out {
            format!("timeout ({s})")
        } else if self.no_tap {
            match self.exit_code {
                Some(code) => format!("no TAP (exit {code})"),
                None => format!("no TAP (signal {})", self.signal.unwrap_or(0)),
            }
        } else {
            s
        }
    }
}

#[derive(Debug, Serialize)]
struct RuntimeResult {
    label: String,
    /// What the programs were given as `RUNTIME`.
    runtime: String,
    version: String,
    totals: Counts,
    timeouts: usize,
    no_tap: usize,
    seconds: f64,
    /// Where each program's stdout and stderr are kept.
    logs: String,
    programs: Vec<ProgramResult>,
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    machine: String,
    place: String,
    suite: String,
    suite_dir: String,
    go: String,
    timeout_seconds: u64,
    runtimes: Vec<RuntimeResult>,
}

/// Runs one program with its own process group (so a timeout kills all it started).
fn run_program(
    suite: &Suite,
    name: &str,
    runtime: &str,
    tmpdir: &Path,
    logs: &Path,
    timeout: Duration,
) -> Result<ProgramResult> {
    let out_path = logs.join(format!("{name}.stdout"));
    let out =
        File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
    let err = File::create(logs.join(format!("{name}.stderr")))?;
    let start = Instant::now();
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(program_path(name))
        .current_dir(&suite.root)
        .env("RUNTIME", runtime)
        .env("TMPDIR", tmpdir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting unshare … {name}.t (is util-linux installed?)"))?;
    let pgid = child.id() as i32;
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child
            .try_wait()
            .context("waiting for a validation program")?
        {
            break st;
        }
        let sig = util::interrupted();
        if sig != 0 || start.elapsed() > timeout {
            timed_out = sig == 0;
            // SAFETY: kill of the process group our unreaped child leads.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let st = child.wait()?;
            if sig != 0 {
                bail!("interrupted by signal {sig} while running {name}");
            }
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever the program left running in its group goes too.
    // SAFETY: a kill of a process group; at worst it no longer exists (ESRCH).
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let seconds = start.elapsed().as_secs_f64();
    let text = std::fs::read(&out_path).unwrap_or_default();
    let (points, plans, saw_tap) = parse_tap(&String::from_utf8_lossy(&text));
    use std::os::unix::process::ExitStatusExt;
    Ok(ProgramResult {
        name: name.to_string(),
        counts: Counts::of(&points),
        points,
        plans,
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        no_tap: !saw_tap,
        seconds,
    })
}

/// `cargo xtask oci`.
pub fn cmd_oci(args: OciArgs) -> Result<i32> {
    if let Some(place) = args.inside.clone() {
        // Re-invoked where the runtimes run: the suite was built by the caller.
        let suite = load_suite(&suite_dir())
            .context("the suite must be built before `--inside` (run `cargo xtask oci` outside)")?;
        return run_here(&suite, &args, &place);
    }
    let suite = ensure_suite()?;
    eprintln!("[oci] suite: {}", suite.dir.display());
    if args.build_only {
        return Ok(0);
    }
    let mut args = args;
    if args.runtimes.is_empty() {
        args.runtimes.push("runc".into());
    }
    for r in args.runtimes.iter_mut() {
        if r.contains('/') {
            let p = Path::new(r.as_str())
                .canonicalize()
                .with_context(|| format!("runtime {r} does not exist"))?;
            *r = p.display().to_string();
        }
    }
    if args.runtimes.iter().any(|r| r == "runc") {
        ensure_apt(&["runc"])?;
    }
    ensure_apt(&["util-linux"])?;
    if let Some(runvm) = args.runtimes.iter().find(|r| util::is_runvm(r)).cloned() {
        let setup = GuestSetup::prepare()?;
        let setup = GuestSetup {
            runvm: PathBuf::from(&runvm),
            ..setup
        };
        let place = setup.choose_place()?;
        let place_name = match place {
            Place::Direct => "direct",
            Place::TestHost => "testhost",
        };
        eprintln!(
            "[oci] {runvm} boots guests: running the suite {}",
            match place {
                Place::Direct => "directly on this host",
                Place::TestHost => "inside the nested test host",
            }
        );
        let mut argv = vec![
            std::env::current_exe()
                .context("cannot find the xtask binary")?
                .display()
                .to_string(),
            "oci".into(),
            "--inside".into(),
            place_name.into(),
            "--timeout".into(),
            args.timeout.to_string(),
        ];
        for (on, flag) in [
            (args.check, "--check"),
            (args.save, "--save"),
            (args.record, "--record"),
        ] {
            if on {
                argv.push(flag.into());
            }
        }
        for r in &args.runtimes {
            argv.push("--runtime".into());
            argv.push(r.clone());
        }
        if !args.only.is_empty() {
            argv.push("--only".into());
            argv.extend(args.only.iter().cloned());
        }
        return setup.run_at(place, &argv, &[]);
    }
    run_here(&suite, &args, "direct")
}

/// Runs the programs against every runtime here, prints the table and writes the reports.
fn run_here(suite: &Suite, args: &OciArgs, place: &str) -> Result<i32> {
    if !crate::util::is_root() {
        bail!("the validation suite must run as root");
    }
    let runtimes = if args.runtimes.is_empty() {
        vec!["runc".to_string()]
    } else {
        args.runtimes.clone()
    };
    let programs: Vec<String> = if args.only.is_empty() {
        suite.programs.clone()
    } else {
        let mut v = Vec::new();
        for p in &args.only {
            let p = p.trim_end_matches(".t").trim_end_matches(".go");
            let p = p.rsplit('/').next().unwrap_or(p);
            if !suite.programs.iter().any(|q| q == p) {
                bail!(
                    "no validation program {p:?}; there are: {}",
                    suite.programs.join(" ")
                );
            }
            v.push(p.to_string());
        }
        v
    };
    util::catch_interrupts();
    let tmp = util::TmpDir(std::env::temp_dir().join(format!("runvm-oci-{}", std::process::id())));
    remove_dir_if_exists(&tmp.0)?;
    std::fs::create_dir_all(&tmp.0).with_context(|| format!("creating {}", tmp.0.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // Searchable by all: containers with a user namespace (linux_uid_mappings,
        // linux_ns_nopath) reach their bundle as a mapped uid, not as root.
        std::fs::set_permissions(&tmp.0, std::fs::Permissions::from_mode(0o755))?;
    }
    let timeout = Duration::from_secs(args.timeout);
    let labels = util::runtime_labels(&runtimes);
    let mut results = Vec::new();
    for (runtime, label) in runtimes.iter().zip(&labels) {
        let version = util::runtime_version(runtime);
        let logs = util::target_dir().join("oci-validation").join(label);
        if args.only.is_empty() {
            remove_dir_if_exists(&logs)?;
        }
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let mut progress = util::Progress::new(&format!("oci/{label}"), place);
        progress.phase(&format!(
            "{} programs against {runtime} ({version}), {} s timeout each",
            programs.len(),
            args.timeout
        ));
        let start = Instant::now();
        let mut progs = Vec::new();
        let mut totals = Counts::default();
        for (i, name) in programs.iter().enumerate() {
            progress.progress(&format!("{}/{} {name}", i + 1, programs.len()));
            let r = run_program(suite, name, runtime, &tmp.0, &logs, timeout)?;
            progress.println(&format!(
                "[oci/{label}] {name}: {} ({:.1}s)",
                r.cell(),
                r.seconds
            ));
            totals.add(&r.counts);
            progs.push(r);
        }
        let seconds = start.elapsed().as_secs_f64();
        progress.finish(
            &format!(
                "{} pass, {} fail, {} skip",
                totals.pass, totals.fail, totals.skip
            ),
            &logs,
        );
        results.push(RuntimeResult {
            label: label.clone(),
            runtime: runtime.clone(),
            version,
            totals,
            timeouts: progs.iter().filter(|p| p.timed_out).count(),
            no_tap: progs.iter().filter(|p| p.no_tap).count(),
            seconds,
            logs: logs.display().to_string(),
            programs: progs,
        });
    }
    drop(tmp);
    let report = Report {
        date: util::now_utc(),
        machine: util::machine_description(place),
        place: place.to_string(),
        suite: format!("{SRC_PACKAGE} {SRC_VERSION} (Debian trixie source package)"),
        suite_dir: suite.dir.display().to_string(),
        go: suite.go_version.clone(),
        timeout_seconds: args.timeout,
        runtimes: results,
    };
    let table = markdown_table(&report);
    println!("{table}");
    let out = util::target_dir().join("oci-validation");
    std::fs::create_dir_all(&out)?;
    let json = out.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    eprintln!("[oci] raw results in {}", json.display());

    let by_program = |label: &dyn Fn(&RuntimeResult) -> bool| -> BTreeMap<String, Vec<Point>> {
        report
            .runtimes
            .iter()
            .find(|r| label(r))
            .map(|r| {
                r.programs
                    .iter()
                    .map(|p| (p.name.clone(), p.points.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let runvm = by_program(&|r| util::is_runvm(&r.runtime));
    let runc = by_program(&|r| r.label == "runc");
    if args.record {
        if !args.only.is_empty() || runvm.is_empty() {
            bail!("--record needs a full run that includes runvm (no --only)");
        }
        let old = Record::load().unwrap_or_default();
        Record::from_run(&old, &runvm, &runc).save()?;
        eprintln!(
            "[oci] wrote {}: review the diff; every UNEXPLAINED needs its reason",
            oci_expected::record_path().display()
        );
    }
    if args.save {
        if !args.only.is_empty() {
            bail!("--save needs the full suite (no --only)");
        }
        save_results(&report, &table)?;
    }
    if args.check {
        let record = Record::load()?;
        let findings = oci_expected::check(&record, &runvm, &runc);
        let path = oci_expected::record_path();
        if !findings.report("oci", &path, !args.only.is_empty(), "test point") {
            return Ok(1);
        }
    }
    Ok(0)
}

/// Writes `bench/oci-validation.{md,json}` and the README's table (`--save`).
fn save_results(report: &Report, table: &str) -> Result<()> {
    let bench = util::repo_root().join("bench");
    std::fs::create_dir_all(&bench)?;
    let md = bench.join("oci-validation.md");
    std::fs::write(&md, markdown_report(report, table))
        .with_context(|| format!("writing {}", md.display()))?;
    let json = bench.join("oci-validation.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    eprintln!("[oci] wrote {} and {}", md.display(), json.display());
    let mut readme = format!("Measured {} ({}):\n\n{table}", report.date, report.machine);
    if report.runtimes.len() > 1 {
        readme.push_str(
            "\nWhere runvm fails test points that runc passes, and why (`xtask/oci-expected.json`, \
             which `cargo xtask test` checks point by point):\n\n",
        );
        for (name, e) in Record::load()?.programs {
            if let Some(why) = e.why {
                readme.push_str(&format!("- `{name}`: {why}.\n"));
            }
        }
    }
    util::splice_readme("oci-validation", &readme)
}

fn markdown_table(report: &Report) -> String {
    let rts = &report.runtimes;
    let mut s = String::from("| program |");
    for r in rts {
        s.push_str(&format!(" {} |", r.label));
    }
    s.push_str(if rts.len() > 1 {
        " |\n|---|"
    } else {
        "\n|---|"
    });
    for _ in rts {
        s.push_str("---|");
    }
    if rts.len() > 1 {
        s.push_str("---|");
    }
    s.push('\n');
    // Rows by program name, over the union of what each runtime ran.
    let mut rows: BTreeMap<&str, Vec<Option<&ProgramResult>>> = BTreeMap::new();
    for (i, r) in rts.iter().enumerate() {
        for p in &r.programs {
            rows.entry(p.name.as_str())
                .or_insert_with(|| vec![None; rts.len()])[i] = Some(p);
        }
    }
    for (name, cells) in &rows {
        s.push_str(&format!("| {name} |"));
        for c in cells {
            s.push_str(&format!(" {} |", c.map(|p| p.cell()).unwrap_or_default()));
        }
        if rts.len() > 1 {
            let first = cells[0].map(|p| p.counts.pass).unwrap_or(0);
            let differs = cells[1..]
                .iter()
                .any(|c| c.map(|p| p.counts.pass).unwrap_or(0) < first);
            s.push_str(if differs { " differs |" } else { " |" });
        }
        s.push('\n');
    }
    s.push_str("| **total** |");
    for r in rts {
        let t = &r.totals;
        let mut cell = format!("**{} / {} / {}**", t.pass, t.fail, t.skip);
        if t.todo > 0 {
            cell.push_str(&format!(" (+{} todo)", t.todo));
        }
        if r.timeouts > 0 {
            cell.push_str(&format!(", {} timeout", r.timeouts));
        }
        if r.no_tap > 0 {
            cell.push_str(&format!(", {} no TAP", r.no_tap));
        }
        s.push_str(&format!(" {cell} |"));
    }
    if rts.len() > 1 {
        s.push_str(" |");
    }
    s.push_str("\n| wall time |");
    for r in rts {
        s.push_str(&format!(
            " {} |",
            fmt_duration(Duration::from_secs_f64(r.seconds))
        ));
    }
    if rts.len() > 1 {
        s.push_str(" |");
    }
    s.push('\n');
    s
}

fn markdown_report(report: &Report, table: &str) -> String {
    let mut s = String::from("# OCI runtime-tools validation suite\n\n");
    s.push_str("Written by `cargo xtask oci` (xtask/src/oci.rs); raw numbers in `oci-validation.json`.\n\n");
    s.push_str(&format!("- Date: {}\n", report.date));
    s.push_str(&format!("- Machine: {}\n", report.machine));
    s.push_str(&format!(
        "- Suite: {}, built with {} in GOPATH mode against bookworm's Go libraries, \
         with runvm's tap-go stand-in\n",
        report.suite, report.go
    ));
    for r in &report.runtimes {
        s.push_str(&format!("- {}: `{}` ({})\n", r.label, r.runtime, r.version));
    }
    s.push_str(&format!(
        "\nEach cell is pass / fail / skip: the program's top-level TAP `ok`, `not ok` and \
         `ok … # SKIP` lines (`not ok … # TODO` counted apart as todo). Each program ran as \
         root from the source root in its own mount namespace (`unshare -m --propagation \
         private`); \"timeout\" means it was killed after {} s, \"no TAP\" that it printed no \
         TAP at all. \"differs\" marks programs where a runtime passes fewer than the first \
         column.\n\n",
        report.timeout_seconds
    ));
    s.push_str(table);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_top_level_results_only() {
        let tap = "TAP version 13\nok 1 - a\n  ---\n  {\"stdout\": \"not ok 1\"}\n  ...\n\
                   not ok 2 - b\nok 3 # SKIP no cgroup\nok 4 # skip lower\n\
                   not ok 5 # TODO bind\nok 6 # TODO bonus\nokay\n1..6\n1..0\n";
        let (points, plans, saw) = parse_tap(tap);
        let c = Counts::of(&points);
        assert_eq!((c.pass, c.fail, c.skip, c.todo), (2, 1, 2, 1));
        use Point::*;
        assert_eq!(points, vec![Pass, Fail, Skip, Skip, Todo, Pass]);
        assert_eq!(plans, vec!["1..6", "1..0"]);
        assert!(saw);
        let (points, plans, saw) = parse_tap("failed to create\n");
        assert_eq!((points.len(), plans.len(), saw), (0, 0, false));
    }
}

//! `cargo xtask runc-bats`: runc's own integration suite, the bats files of runc 1.1.5's
//! `tests/integration/` (the runc in Debian 12), run against runc and runvm in the same place.
//!
//! Owns getting the suite without leaving Debian's archive: the source of the runc Debian 12
//! installs (`runc` 1.1.5+ds1-1+deb12u1, through a bookworm `deb-src` entry from which nothing
//! is installed; checksum pinned); building the suite's Go helpers (`recvtty`, `sd-helper`,
//! `seccompagent`) with Debian's Go the way Debian builds runc (GOPATH mode against
//! bookworm's Go libraries, offline: the `+ds1` tarball has no `vendor/`); making the two
//! root filesystem tarballs the suite would download (busybox from Debian's
//! `busybox-static`, Debian from `debootstrap`) and putting `assets/runc-bats/get-images.sh`
//! in place of the downloader; caching all that under `~/.cache/runvm/runc-bats/<key>/`.
//!
//! Then it runs each bats file as root under `script -qec` (a controlling terminal, as the
//! tty tests need) with `RUNC` set to the runtime under test, a timeout per file and a
//! watch for stalled tests (which also catches what bats's own `BATS_TEST_TIMEOUT` cannot: a
//! process outside the test, such as a `recvtty`, holding bats's output open after the last
//! test), parses bats's TAP per test, cleans up what a file left behind (containers, their
//! processes, mounts), and writes a per-file table (`bench/runc-bats.md`, raw results in
//! `bench/runc-bats.json`, with `--save`). `--check` compares runvm's results test by test
//! with `xtask/runc-bats-expected.json` and runc's in the same run (`runc_bats_expected`).
//!
//! When guests only boot in the nested test host the whole run happens there (`--inside
//! testhost`; the cache and target dirs are shared at the same paths). The test host has no
//! bats, jq or gcc: the Debian packages it lacks for the chosen files are downloaded here,
//! against its own dpkg status, and installed into its throwaway snapshot before the run.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::guests::{GuestSetup, Place};
use crate::runc_bats_expected::{self as expected, Outcome, Record, Run};
use crate::util::{self, ensure_apt, fmt_duration, remove_dir_if_exists, Step};

const SRC_PACKAGE: &str = "runc";
/// The runc Debian 12 installs (bookworm and bookworm-security carry the same version).
const SRC_VERSION: &str = "1.1.5+ds1-1+deb12u1";
const SRC_TARBALL: &str = "runc_1.1.5+ds1.orig.tar.xz";
const SRC_SHA256: &str = "e936cc563c4557178b3416aa1bb9e8231c53011beb8df67adedbfbaba4eacce7";
/// Where the bookworm `deb-src` entry goes (its own file; only sources, nothing installed).
const DEB_SRC_FILE: &str = "/etc/apt/sources.list.d/runvm-bookworm-src.sources";
/// runvm's stand-in for the suite's image downloader.
const GET_IMAGES: &str = include_str!("../assets/runc-bats/get-images.sh");
/// Changes to how the suite is built (part of the cache key).
const BUILD_RECIPE: &str = "gopath, cgo, -tags seccomp, helpers in contrib/cmd/*/; busybox-static \
    hard links in /bin; debootstrap minbase bookworm; tar.xz with ./ entries";
/// The suite's Go helpers (`contrib/cmd/<name>/<name>`, where `helpers.bash` looks).
const HELPERS: &[&str] = &["recvtty", "sd-helper", "seccompagent"];
/// Go, the helpers' Go dependencies (bookworm's packages of them), cgo's libseccomp, and
/// what the root filesystem tarballs are made with.
const BUILD_PACKAGES: &[&str] = &[
    "golang-go",
    "golang-github-cilium-ebpf-dev",
    "golang-github-containerd-console-dev",
    "golang-github-coreos-go-systemd-dev",
    "golang-github-cyphar-filepath-securejoin-dev",
    "golang-dbus-dev",
    "golang-github-moby-sys-dev",
    "golang-github-opencontainers-specs-dev",
    "golang-github-seccomp-libseccomp-golang-dev",
    "golang-github-sirupsen-logrus-dev",
    "golang-github-urfave-cli-dev",
    "golang-golang-x-sys-dev",
    "libseccomp-dev",
    "pkg-config",
    "busybox-static",
    "debootstrap",
    "xz-utils",
];
/// Debian packages the suite needs where it runs, in groups, each with the text that shows
/// a bats file needs it ("" for every file). criu makes `checkpoint.bats` run instead of
/// skipping, as in runc's own CI.
const RUN_PACKAGES: &[(&str, &[&str])] = &[
    ("", &["bats", "jq", "xz-utils"]),
    ("gcc ", &["gcc", "libc6-dev"]),
    ("requires criu", &["criu"]),
];
/// The bats files of runc 1.1.5 (a warning if the source has another number).
const EXPECTED_FILES: usize = 36;
/// How many diagnostic lines of a failed test the report keeps (the logs keep all).
const DETAIL_LINES: usize = 40;

/// `cargo xtask runc-bats` arguments.
#[derive(clap::Args, Debug, Default)]
pub struct RuncBatsArgs {
    /// A runtime to test: a command name on PATH or a path (repeatable; default: runc and
    /// the runvm the harness builds, target/release/runvm). The first is the reference.
    #[arg(long = "runtime", value_name = "NAME_OR_PATH")]
    pub runtimes: Vec<String>,
    /// Run only these bats files (`exec`, `exec.bats` or a path ending in it).
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub only: Vec<String>,
    /// Seconds each bats file may run before it is killed.
    #[arg(long, default_value_t = 1800, value_name = "SECONDS")]
    pub timeout: u64,
    /// Seconds a test may go without finishing before the harness kills the commands it
    /// runs (not bats: it records the test as failed and goes on with the next).
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub test_timeout: u64,
    /// Build the suite (if not cached) and stop.
    #[arg(long)]
    pub build_only: bool,
    /// Check runvm's results, test by test, against `xtask/runc-bats-expected.json` and
    /// runc's in the same run (see `runc_bats_expected`); exit 1 on a regression or an
    /// unexplained divergence.
    #[arg(long)]
    pub check: bool,
    /// Write the results to `bench/runc-bats.{md,json}` and the README's table (tracked
    /// files; without it the results stay under `target/runc-bats/`).
    #[arg(long)]
    pub save: bool,
    /// Rewrite `xtask/runc-bats-expected.json` from this run's results (keeping every
    /// reason, UNEXPLAINED where one is missing); review the diff before committing it.
    #[arg(long)]
    pub record: bool,
    /// Run nothing: take the results of an earlier run from its report (the
    /// `target/runc-bats/report.json` it wrote, or `bench/runc-bats.json`) for the table,
    /// `--save`, `--check` and `--record`, e.g. after writing reasons into the record.
    #[arg(long, value_name = "REPORT_JSON", conflicts_with_all = ["only", "inside", "build_only"])]
    pub from_report: Option<PathBuf>,
    /// Internal: already placed where the runtimes run (`direct` or `testhost`).
    #[arg(long, hide = true, value_name = "PLACE")]
    pub inside: Option<String>,
    /// Internal: Debian packages to install before the run (the test host's).
    #[arg(long, hide = true, value_name = "DIR")]
    pub debs: Option<PathBuf>,
}

/// The built suite.
struct Suite {
    /// `~/.cache/runvm/runc-bats/<key>`.
    dir: PathBuf,
    /// The runc source tree (`tests/integration/`, `contrib/cmd/*/`).
    root: PathBuf,
    /// The bats files, by name (`exec.bats`).
    files: Vec<String>,
    /// What `go version` said at build time.
    go_version: String,
}

impl Suite {
    fn integration(&self) -> PathBuf {
        self.root.join("tests/integration")
    }
}

fn suite_dir() -> PathBuf {
    let key = util::short_hash(&[
        SRC_VERSION.as_bytes(),
        SRC_SHA256.as_bytes(),
        GET_IMAGES.as_bytes(),
        BUILD_RECIPE.as_bytes(),
    ]);
    util::cache_dir().join("runc-bats").join(key)
}

/// The source root inside a GOPATH rooted at `gopath`.
fn source_root(gopath: &Path) -> PathBuf {
    gopath.join("src/github.com/opencontainers/runc")
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
    let integration = root.join("tests/integration");
    let mut needed: Vec<PathBuf> = HELPERS.iter().map(|h| helper_path(&root, h)).collect();
    needed.push(integration.join("testdata/busybox-amd64.tar.xz"));
    needed.push(integration.join("testdata/debian-amd64.tar.xz"));
    for f in &needed {
        if !f.is_file() {
            bail!("{} is missing from the cached suite", f.display());
        }
    }
    let mut files = Vec::new();
    for e in std::fs::read_dir(&integration)
        .with_context(|| format!("listing {}", integration.display()))?
    {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".bats") {
            files.push(name);
        }
    }
    files.sort();
    if files.len() != EXPECTED_FILES {
        eprintln!(
            "[runc-bats] warning: {} bats files in the source, runc 1.1.5 has {EXPECTED_FILES}",
            files.len()
        );
    }
    Ok(Suite {
        dir: dir.to_path_buf(),
        root,
        files,
        go_version,
    })
}

fn helper_path(root: &Path, name: &str) -> PathBuf {
    root.join("contrib/cmd").join(name).join(name)
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

fn build_suite(dir: &Path) -> Result<()> {
    if !util::is_root() {
        bail!("building runc's bats suite needs root (apt-get, debootstrap); run as root");
    }
    let base = dir.parent().context("cache dir has no parent")?;
    let tmp = dir.with_extension("tmp");
    let mut step = Step::new("runc-bats");
    step.phase("installing Go, the helpers' Go libraries, busybox-static, debootstrap");
    ensure_apt(BUILD_PACKAGES)?;
    remove_dir_if_exists(&tmp)?;
    let download = tmp.join("download");
    std::fs::create_dir_all(&download)
        .with_context(|| format!("creating {}", download.display()))?;

    step.phase(&format!(
        "adding a deb-src entry for bookworm in {DEB_SRC_FILE} (nothing is installed from it)"
    ));
    let mirror = util::debian_mirror("bookworm")?;
    util::add_deb_src(
        DEB_SRC_FILE,
        &mirror,
        "bookworm",
        "# Added by `cargo xtask runc-bats` (runvm): bookworm's source packages, to fetch\n\
         # runc's integration suite. Source entries only: nothing is installed from it.\n",
    )?;
    step.phase(&format!(
        "apt-get source --download-only --tar-only {SRC_PACKAGE}={SRC_VERSION}"
    ));
    let tarball =
        util::apt_source_tarball(&download, SRC_PACKAGE, SRC_VERSION, SRC_TARBALL, SRC_SHA256)?;

    step.phase("unpacking the source into a GOPATH");
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
    .context("unpacking the runc source tarball")?;
    let top: Vec<PathBuf> = std::fs::read_dir(org)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let [top] = top.as_slice() else {
        bail!("expected one top directory in {SRC_TARBALL}, found {top:?}");
    };
    std::fs::rename(top, &root)
        .with_context(|| format!("moving {} to {}", top.display(), root.display()))?;
    remove_dir_if_exists(&download)?;
    let integration = root.join("tests/integration");
    if !integration.join("helpers.bash").is_file() {
        bail!("the runc source has no tests/integration/helpers.bash");
    }

    let gocache = tmp.join("gocache");
    let go_version = Command::new("go")
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    step.phase(&format!(
        "building {} with {go_version} (GOPATH mode, bookworm's Go libraries, offline)",
        HELPERS.join(", ")
    ));
    let bin = tmp.join("bin");
    std::fs::create_dir_all(&bin)?;
    let mut build = util::go_gopath(&root, &gopath, &gocache);
    // seccompagent needs libseccomp through cgo, and the `seccomp` tag as runc's Makefile sets.
    build
        .env("CGO_ENABLED", "1")
        .args(["build", "-v", "-tags", "seccomp", "-o"])
        .arg(format!("{}/", bin.display()))
        .args(HELPERS.iter().map(|h| format!("./contrib/cmd/{h}")));
    let mut n = 0usize;
    util::run_lines(&mut build, |l| {
        n += 1;
        step.progress(&format!("{n} packages compiled: {l}"));
    })
    .context("building the suite's Go helpers")?;
    for h in HELPERS {
        let to = helper_path(&root, h);
        std::fs::rename(bin.join(h), &to)
            .with_context(|| format!("moving the {h} binary to {}", to.display()))?;
    }
    remove_dir_if_exists(&bin)?;
    remove_dir_if_exists(&gocache)?;

    step.phase("putting runvm's get-images.sh in place of the suite's downloader");
    let get_images = integration.join("get-images.sh");
    std::fs::write(&get_images, GET_IMAGES)
        .with_context(|| format!("writing {}", get_images.display()))?;
    set_mode(&get_images, 0o755)?;

    let testdata = integration.join("testdata");
    step.phase("making the busybox image (testdata/busybox-amd64.tar.xz) from busybox-static");
    let busybox_root = tmp.join("busybox-rootfs");
    populate_busybox(&busybox_root)?;
    pack_rootfs(&busybox_root, &testdata.join("busybox-amd64.tar.xz"))?;
    remove_dir_if_exists(&busybox_root)?;

    step.phase(&format!(
        "making the Debian image (testdata/debian-amd64.tar.xz): debootstrap minbase bookworm from {mirror}"
    ));
    let debian_root = tmp.join("debian-rootfs");
    std::fs::create_dir_all(&debian_root)?;
    let mut count = 0usize;
    util::run_lines(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg("bookworm")
            .arg(&debian_root)
            .arg(&mirror),
        |line| {
            if let Some(rest) = line.strip_prefix("I: ") {
                count += 1;
                step.progress(&format!("debootstrap ({count}): {rest}"));
            }
        },
    )
    .with_context(|| format!("debootstrap into {} failed", debian_root.display()))?;
    remove_dir_if_exists(&debian_root.join("var/cache/apt/archives"))?;
    remove_dir_if_exists(&debian_root.join("var/lib/apt/lists"))?;
    step.phase("packing the Debian image (xz)");
    pack_rootfs(&debian_root, &testdata.join("debian-amd64.tar.xz"))?;
    remove_dir_if_exists(&debian_root)?;

    let busybox = util::dpkg_version("busybox-static")?;
    std::fs::write(
        tmp.join("BUILD"),
        format!(
            "source: {SRC_PACKAGE} {SRC_VERSION} (Debian bookworm source package)\n\
             sha256: {SRC_SHA256}\ngo: {go_version}\nhelpers: {}\n\
             busybox image: busybox-static {busybox}\n\
             debian image: debootstrap --variant=minbase bookworm {mirror}\n\
             get-images.sh: runvm stand-in (xtask/assets/runc-bats/get-images.sh)\n",
            HELPERS.join(" ")
        ),
    )?;
    std::fs::create_dir_all(base)?;
    remove_dir_if_exists(dir)?;
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))?;
    step.finish("built runc's bats suite", dir);
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// A busybox root filesystem laid out as the image the suite downloads (Docker's
/// `busybox:glibc`): every applet a hard link to `/bin/busybox`, the usual users and
/// groups, `/tmp` sticky. Debian's busybox is static, so there is no `/lib`.
fn populate_busybox(root: &Path) -> Result<()> {
    for d in [
        "bin",
        "dev",
        "etc",
        "home",
        "root",
        "tmp",
        "usr/sbin",
        "var/spool/mail",
        "var/www",
    ] {
        std::fs::create_dir_all(root.join(d))
            .with_context(|| format!("creating {}", root.join(d).display()))?;
    }
    set_mode(&root.join("tmp"), 0o1777)?;
    set_mode(&root.join("root"), 0o700)?;
    let busybox = root.join("bin/busybox");
    std::fs::copy("/bin/busybox", &busybox).context("copying /bin/busybox")?;
    let out = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .context("running busybox --list")?;
    if !out.status.success() {
        bail!("busybox --list failed");
    }
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::fs::hard_link(&busybox, root.join("bin").join(applet))
            .with_context(|| format!("linking /bin/{applet}"))?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
         bin:x:2:2:bin:/bin:/bin/false\n\
         sys:x:3:3:sys:/dev:/bin/false\n\
         sync:x:4:100:sync:/bin:/bin/sync\n\
         mail:x:8:8:mail:/var/spool/mail:/bin/false\n\
         www-data:x:33:33:www-data:/var/www:/bin/false\n\
         operator:x:37:37:Operator:/var:/bin/false\n\
         nobody:x:65534:65534:nobody:/home:/bin/false\n",
    )?;
    let groups = [
        ("root", 0),
        ("daemon", 1),
        ("bin", 2),
        ("sys", 3),
        ("adm", 4),
        ("tty", 5),
        ("disk", 6),
        ("lp", 7),
        ("mail", 8),
        ("kmem", 9),
        ("wheel", 10),
        ("cdrom", 11),
        ("dialout", 18),
        ("floppy", 19),
        ("video", 28),
        ("audio", 29),
        ("tape", 32),
        ("www-data", 33),
        ("operator", 37),
        ("utmp", 43),
        ("plugdev", 46),
        ("staff", 50),
        ("lock", 54),
        ("netdev", 82),
        ("users", 100),
        ("nogroup", 65534),
    ];
    let group: String = groups
        .iter()
        .map(|(name, gid)| format!("{name}:x:{gid}:\n"))
        .collect();
    std::fs::write(root.join("etc/group"), group)?;
    Ok(())
}

/// Packs a root filesystem as the suite's images are: a `tar.xz` of `./…` entries owned by
/// root, without the contents of `/dev` (the suite excludes them when unpacking anyway).
fn pack_rootfs(root: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    util::run_quiet(
        Command::new("tar")
            .args([
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "--exclude=./dev/*",
                "-I",
                "xz -T0",
                "-cf",
            ])
            .arg(to)
            .arg("-C")
            .arg(root)
            .arg("."),
    )
    .with_context(|| format!("packing {} into {}", root.display(), to.display()))
}

/// The package groups the given bats files need (see [`RUN_PACKAGES`]).
fn needed_groups(suite: &Suite, files: &[String]) -> Vec<&'static [&'static str]> {
    let texts: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(suite.integration().join(f)).unwrap_or_default())
        .collect();
    RUN_PACKAGES
        .iter()
        .filter(|(needle, _)| texts.iter().any(|t| t.contains(needle)))
        .map(|(_, pkgs)| *pkgs)
        .collect()
}

/// Downloads (once per test host image) the `.deb`s of [`RUN_PACKAGES`] that the test host
/// lacks: apt resolves them here, against the test host's own dpkg status (read from its
/// image), so that installing a group there installs exactly what is missing. Returns
/// the directory, one subdirectory per group (named by its first package).
fn testhost_debs(suite: &Suite) -> Result<PathBuf> {
    let image = crate::testhost::ensure_testhost()?;
    let base = suite.dir.join("testhost-debs");
    std::fs::create_dir_all(&base)?;
    let status = base.join(format!("status.{}", std::process::id()));
    let _ = std::fs::remove_file(&status);
    ensure_apt(&["e2fsprogs"])?;
    util::run_quiet(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump /var/lib/dpkg/status {}", status.display()))
            .arg(&image.image),
    )
    .with_context(|| {
        format!(
            "reading the test host's dpkg status from {}",
            image.image.display()
        )
    })?;
    let status_text =
        std::fs::read(&status).with_context(|| format!("debugfs wrote no {}", status.display()))?;
    let groups = format!("{RUN_PACKAGES:?}");
    let key = util::short_hash(&[&status_text, groups.as_bytes()]);
    let dir = base.join(&key);
    if dir.join("COMPLETE").is_file() {
        let _ = std::fs::remove_file(&status);
        return Ok(dir);
    }
    let mut step = Step::new("runc-bats");
    let tmp = base.join(format!("{key}.tmp"));
    remove_dir_if_exists(&tmp)?;
    let mut listing = String::new();
    let mut updated = false;
    for (_, pkgs) in RUN_PACKAGES {
        let group = tmp.join(pkgs[0]);
        std::fs::create_dir_all(group.join("partial"))?;
        step.phase(&format!(
            "downloading what the test host needs for {} (resolved against its dpkg status)",
            pkgs.join(" ")
        ));
        let download = |step: &mut Step| {
            let mut n = 0;
            util::run_lines(
                Command::new("apt-get")
                    .args([
                        "install",
                        "--download-only",
                        "--no-install-recommends",
                        "-y",
                        "-q",
                    ])
                    .arg(format!("-o=Dir::State::status={}", status.display()))
                    .arg(format!("-o=Dir::Cache::archives={}", group.display()))
                    .arg("-o=APT::Sandbox::User=root")
                    .args(pkgs.iter())
                    .env("DEBIAN_FRONTEND", "noninteractive"),
                |l| {
                    n += 1;
                    step.progress(&format!("{n}: {l}"));
                },
            )
        };
        if download(&mut step).is_err() && !updated {
            // Stale lists name versions the archive no longer has: refresh them once.
            updated = true;
            util::run_quiet(
                Command::new("apt-get")
                    .args(["update", "-q"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
            .context("apt-get update failed")?;
        }
        download(&mut step).with_context(|| {
            format!(
                "downloading {} for the test host into {}",
                pkgs.join(" "),
                group.display()
            )
        })?;
        remove_dir_if_exists(&group.join("partial"))?;
        let _ = std::fs::remove_file(group.join("lock"));
        let debs = debs_in(&group)?;
        listing.push_str(&format!(
            "{}: {}\n",
            pkgs.join(" "),
            debs.iter()
                .filter_map(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    std::fs::write(tmp.join("COMPLETE"), listing)?;
    remove_dir_if_exists(&dir)?;
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))?;
    let _ = std::fs::remove_file(&status);
    step.finish("downloaded the test host's missing packages", &dir);
    Ok(dir)
}

fn debs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    v.sort();
    Ok(v)
}

/// Installs the downloaded packages the chosen files need (in the test host, whose root is
/// a throwaway snapshot); returns how long it took.
fn install_debs(debs: &Path, groups: &[&[&str]]) -> Result<f64> {
    let start = Instant::now();
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for pkgs in groups {
        for d in debs_in(&debs.join(pkgs[0]))? {
            let name = d
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            by_name.entry(name).or_insert(d);
        }
    }
    if by_name.is_empty() {
        return Ok(0.0);
    }
    let wanted: Vec<&str> = groups.iter().flat_map(|g| g.iter().copied()).collect();
    eprintln!(
        "[runc-bats] installing {} ({} packages with what they need) with dpkg",
        wanted.join(" "),
        by_name.len()
    );
    // `dpkg -i` of them all unpacks before it configures, so a package that pre-depends on
    // another of the set (python3-minimal on python3.11-minimal, for criu) fails the first
    // pass; the next pass (skipping what is now installed) installs it. Offline: each
    // package needed is one of these files or already installed. (apt-get, given the
    // files, wants to download what the test host's lists also name.)
    for pass in 1..=3 {
        let r = util::run_quiet(
            Command::new("dpkg")
                .args(["-i", "--skip-same-version"])
                // Documentation is not needed, and man-db's trigger is slow under TCG.
                .args([
                    "--path-exclude=/usr/share/man/*",
                    "--path-exclude=/usr/share/doc/*",
                    "--path-exclude=/usr/share/locale/*",
                ])
                .args(by_name.values())
                .env("DEBIAN_FRONTEND", "noninteractive"),
        );
        match r {
            Ok(()) => break,
            Err(e) if pass < 3 => eprintln!(
                "[runc-bats] dpkg pass {pass} left packages to install (a Pre-Depends in the set): \
                 another pass ({})",
                format!("{e:#}").lines().last().unwrap_or("")
            ),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("installing the packages in {}", debs.display()))
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "[runc-bats] packages installed in {}",
        fmt_duration(start.elapsed())
    );
    Ok(seconds)
}

/// One test's result, from bats's TAP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TestResult {
    name: String,
    outcome: Outcome,
    /// The harness killed what it ran after the per-test timeout (or bats did:
    /// `not ok … # timeout after Ns`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    timed_out: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    skip_reason: Option<String>,
    /// What bats printed about a failure (its `# ` lines), the first [`DETAIL_LINES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    detail: Vec<String>,
}

/// What bats's TAP output says: the tests in order, and the plan (`1..N`).
#[derive(Debug, Default, PartialEq, Eq)]
struct Tap {
    tests: Vec<TestResult>,
    plan: Option<usize>,
}

/// Parses bats's TAP (`--tap`), as it comes through a terminal (`\r\n`). Result lines are
/// `ok N name`, `ok N name # skip[ reason]`, `not ok N name[ # timeout after Ns]`; the
/// `# ` lines after a `not ok` are its diagnostics; other lines (output that reached the
/// terminal directly) are ignored. A repeated name gets ` (2)`, ` (3)`… appended.
fn parse_bats_tap(text: &str) -> Tap {
    let mut tap = Tap::default();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut unique = |name: &str| {
        let n = seen.entry(name.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            name.to_string()
        } else {
            format!("{name} ({n})")
        }
    };
    // After `ok`/`not ok`, the test number, then the name.
    let after_number = |rest: &str| -> Option<String> {
        let rest = rest.strip_prefix(' ')?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        Some(rest[digits..].trim_start().to_string())
    };
    let mut last_failed = false;
    for raw in text.lines() {
        let line = raw.trim_end_matches(['\r', '\n']).trim_end();
        if let Some(rest) = line.strip_prefix("not ok") {
            let Some(mut name) = after_number(rest) else {
                continue;
            };
            let mut timed_out = false;
            if let Some(i) = name.rfind(" # timeout after ") {
                timed_out = true;
                name.truncate(i);
            }
            tap.tests.push(TestResult {
                name: unique(&name),
                outcome: Outcome::Fail,
                timed_out,
                skip_reason: None,
                detail: Vec::new(),
            });
            last_failed = true;
        } else if let Some(rest) = line.strip_prefix("ok") {
            let Some(mut name) = after_number(rest) else {
                continue;
            };
            let mut skip_reason = None;
            let skip_at = name.match_indices(" # skip").map(|(i, _)| i).find(|i| {
                let after = &name[i + " # skip".len()..];
                after.is_empty() || after.starts_with(' ')
            });
            if let Some(i) = skip_at {
                skip_reason = Some(name[i + " # skip".len()..].trim().to_string());
                name.truncate(i);
            }
            tap.tests.push(TestResult {
                name: unique(&name),
                outcome: if skip_reason.is_some() {
                    Outcome::Skip
                } else {
                    Outcome::Pass
                },
                timed_out: false,
                skip_reason,
                detail: Vec::new(),
            });
            last_failed = false;
        } else if let Some(n) = line.strip_prefix("1..") {
            if let Ok(n) = n.trim().parse() {
                tap.plan = Some(n);
            }
            last_failed = false;
        } else if line == "#" || line.starts_with("# ") {
            if let (true, Some(t)) = (last_failed, tap.tests.last_mut()) {
                if t.detail.len() < DETAIL_LINES {
                    t.detail
                        .push(line.strip_prefix("# ").unwrap_or("").to_string());
                }
            }
        }
    }
    tap
}

/// Pass / fail / skip counts.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Counts {
    pass: usize,
    fail: usize,
    skip: usize,
}

impl Counts {
    fn of(tests: &[TestResult]) -> Counts {
        let n = |o: Outcome| tests.iter().filter(|t| t.outcome == o).count();
        Counts {
            pass: n(Outcome::Pass),
            fail: n(Outcome::Fail),
            skip: n(Outcome::Skip),
        }
    }
    fn add(&mut self, o: &Counts) {
        self.pass += o.pass;
        self.fail += o.fail;
        self.skip += o.skip;
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct FileResult {
    file: String,
    #[serde(flatten)]
    counts: Counts,
    /// The plan bats printed (`1..N`): fewer results than that means the file stopped early.
    plan: Option<usize>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    /// Killed after the per-file timeout.
    timed_out: bool,
    /// Containers still listed after the file ended (deleted by the harness).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    leaked_containers: Vec<String>,
    /// Processes still running in the file's private TMPDIR after it ended (killed).
    #[serde(default, skip_serializing_if = "is_zero")]
    stray_processes: usize,
    seconds: f64,
    tests: Vec<TestResult>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl FileResult {
    fn cell(&self) -> String {
        let c = &self.counts;
        let mut s = format!("{} / {} / {}", c.pass, c.fail, c.skip);
        let missing = self.plan.unwrap_or(0).saturating_sub(self.tests.len());
        if missing > 0 {
            s.push_str(&format!(", {missing} not run"));
        }
        if self.tests.is_empty() && self.plan.is_none() {
            s = match self.exit_code {
                Some(code) => format!("no TAP (exit {code})"),
                None => format!("no TAP (signal {})", self.signal.unwrap_or(0)),
            };
        }
        if self.timed_out {
            s = format!("timeout ({s})");
        }
        if !self.leaked_containers.is_empty() {
            s.push_str(&format!(", {} left", self.leaked_containers.len()));
        }
        s
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct RuntimeResult {
    label: String,
    /// What the suite was given as `RUNC`.
    runtime: String,
    version: String,
    totals: Counts,
    timeouts: usize,
    seconds: f64,
    /// Where each file's terminal output (`.tap`) and stderr are kept.
    logs: String,
    files: Vec<FileResult>,
}

impl RuntimeResult {
    fn run(&self) -> Run {
        self.files
            .iter()
            .map(|f| {
                (
                    f.file.clone(),
                    f.tests
                        .iter()
                        .map(|t| (t.name.clone(), t.outcome))
                        .collect(),
                )
            })
            .collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Report {
    date: String,
    machine: String,
    place: String,
    suite: String,
    suite_dir: String,
    go: String,
    bats: String,
    /// Installing bats, jq, gcc… in the test host before the run (0 when nothing was).
    setup_seconds: f64,
    timeout_seconds: u64,
    test_timeout_seconds: u64,
    runtimes: Vec<RuntimeResult>,
}

/// Every process under `pid` (children, their children…), from `/proc`.
fn descendants(pid: i32) -> Vec<i32> {
    let parent = process_parents();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, pp) in &parent {
            if *pp == p && !out.contains(child) {
                out.push(*child);
                frontier.push(*child);
            }
        }
    }
    out
}

/// Every process and its parent, from `/proc/*/stat`.
fn process_parents() -> Vec<(i32, i32)> {
    let mut parent: Vec<(i32, i32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parent.push((p, ppid));
            }
        }
    }
    parent
}

/// SIGKILLs `pid` and everything under it (`script` puts bats in a session of its own, so
/// a process group kill would miss it), until nothing is left.
fn kill_tree(pid: i32) {
    for _ in 0..20 {
        let mut all = descendants(pid);
        all.push(pid);
        for p in &all {
            // SAFETY: a kill of a process we started or one of its descendants; at worst
            // it no longer exists (ESRCH).
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        if descendants(pid).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a short runtime command (`list`, `delete`) with a time limit; its stdout if it ran.
fn runtime_cmd(runtime: &str, args: &[&str], limit: Duration) -> Option<String> {
    let mut child = Command::new(runtime)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                kill_tree(child.id() as i32);
                let _ = child.wait();
                return None;
            }
        }
    }
    child
        .wait_with_output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The `state` directories (`--root` of each test's runtime) under a file's TMPDIR.
fn state_dirs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if !ft.is_dir() {
            continue;
        }
        let p = e.path();
        if e.file_name() == "state" {
            out.push(p);
        } else if depth > 0 && e.file_name() != "rootfs" {
            state_dirs(&p, depth - 1, out);
        }
    }
}

/// Whether process `pid` refers to `dir`: in its command line, or as its cwd or root.
fn process_uses(pid: i32, dir: &Path) -> bool {
    let d = dir.to_string_lossy();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains(d.as_ref()) {
        return true;
    }
    ["cwd", "root"]
        .iter()
        .any(|l| std::fs::read_link(format!("/proc/{pid}/{l}")).is_ok_and(|p| p.starts_with(dir)))
}

/// Cleans up what a file left in its private TMPDIR: containers still listed (deleted with
/// the runtime, and returned), processes still using the dir (killed; counted), mounts
/// under it (lazily unmounted); then removes it.
fn clean_up_after(runtime: &str, dir: &Path) -> (Vec<String>, usize) {
    let mut leaked = Vec::new();
    let mut states = Vec::new();
    state_dirs(dir, 4, &mut states);
    for state in &states {
        let root = state.to_string_lossy().into_owned();
        let Some(list) = runtime_cmd(
            runtime,
            &["--root", &root, "list", "-q"],
            Duration::from_secs(30),
        ) else {
            continue;
        };
        for id in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
            leaked.push(id.to_string());
            runtime_cmd(
                runtime,
                &["--root", &root, "delete", "-f", id],
                Duration::from_secs(60),
            );
        }
    }
    let me = std::process::id() as i32;
    let mut stray = 0;
    for _ in 0..10 {
        let pids: Vec<i32> = std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
                    .filter(|p| *p != me && process_uses(*p, dir))
                    .collect()
            })
            .unwrap_or_default();
        if pids.is_empty() {
            break;
        }
        for p in &pids {
            stray += 1;
            // SAFETY: a kill of a process that runs in (or names) this run's private
            // TMPDIR, so one the suite started; at worst it no longer exists (ESRCH).
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount")
            .args(["-l", m])
            .stderr(Stdio::null())
            .status();
    }
    if let Err(e) = remove_dir_if_exists(dir) {
        eprintln!("[runc-bats] warning: {e:#}");
    }
    (leaked, stray)
}

/// How many test results bats has printed so far, and its plan.
fn count_results(tap: &Path) -> (usize, Option<usize>) {
    let text = std::fs::read(tap).unwrap_or_default();
    let tap = parse_bats_tap(&String::from_utf8_lossy(&text));
    (tap.tests.len(), tap.plan)
}

/// The command line of a process, its arguments joined by spaces.
fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

/// Kills what the running test executes (runtimes, `sleep`, `jq`…) but not bats: the
/// processes under a `bats-exec-test` that are not themselves bats shells, and the
/// processes outside bats that use the file's TMPDIR (`recvtty`, containers).
fn kill_test_commands(script: i32, file_tmp: &Path) {
    let is_bats = |p: i32| cmdline(p).contains("bats-core/");
    let tree = descendants(script);
    for p in &tree {
        if !cmdline(*p).contains("bats-core/bats-exec-test") {
            continue;
        }
        for c in direct_children(*p) {
            if !is_bats(c) {
                kill_tree(c);
            }
        }
    }
    let me = std::process::id() as i32;
    for (p, _) in process_parents() {
        if p != me && p != script && !tree.contains(&p) && process_uses(p, file_tmp) {
            kill_tree(p);
        }
    }
}

/// The processes whose parent is `pid`.
fn direct_children(pid: i32) -> Vec<i32> {
    process_parents()
        .into_iter()
        .filter(|(_, pp)| *pp == pid)
        .map(|(p, _)| p)
        .collect()
}

/// Runs one bats file under `script` (so it has a controlling terminal), as root, with
/// `RUNC` set, in a private TMPDIR; kills it and all it started after `timeout`.
#[allow(clippy::too_many_arguments)]
fn run_file(
    suite: &Suite,
    file: &str,
    runtime: &str,
    tmp: &Path,
    logs: &Path,
    timeout: Duration,
    test_timeout: Duration,
) -> Result<FileResult> {
    let stem = file.trim_end_matches(".bats");
    let file_tmp = tmp.join(stem);
    remove_dir_if_exists(&file_tmp)?;
    std::fs::create_dir_all(&file_tmp)
        .with_context(|| format!("creating {}", file_tmp.display()))?;
    // Searchable by all: userns tests reach their bundle as a mapped uid.
    set_mode(&file_tmp, 0o755)?;
    let out_path = logs.join(format!("{file}.tap"));
    let out =
        File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
    let err = File::create(logs.join(format!("{file}.stderr")))?;
    let bats = format!(
        "exec bats --tap --no-tempdir-cleanup '{}'",
        suite.integration().join(file).display()
    );
    let start = Instant::now();
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &bats, "/dev/null"])
        .current_dir(suite.integration())
        .env("RUNC", runtime)
        .env("TMPDIR", &file_tmp)
        // One timeout mechanism: the harness's watch for stalls (see `kill_test_commands`).
        .env_remove("BATS_TEST_TIMEOUT")
        .env_remove("RUNC_USE_SYSTEMD")
        .env_remove("ROOTLESS_FEATURES")
        .env_remove("BATS_RUN_TMPDIR")
        // A terminal whose keyboard is never touched: the pipe stays open, empty.
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .context(
            "starting script -q -e -c 'bats …' (are util-linux's script and bats installed?)",
        )?;
    let pid = child.id() as i32;
    let mut timed_out = false;
    let mut stalled: BTreeSet<usize> = BTreeSet::new();
    let (mut results_seen, mut last_result, mut last_look) = (0, Instant::now(), Instant::now());
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for bats")? {
            break st;
        }
        if last_look.elapsed() >= Duration::from_secs(1) {
            last_look = Instant::now();
            let (n, plan) = count_results(&out_path);
            // After the last result bats only waits for its output to close, which a
            // process left behind (a `recvtty` of a failed setup) can hold open.
            let limit = if plan.is_some_and(|p| n >= p) {
                Duration::from_secs(15)
            } else {
                test_timeout
            };
            if n != results_seen {
                (results_seen, last_result) = (n, Instant::now());
            } else if last_result.elapsed() > limit {
                // Test n+1 is stuck: kill what it runs, so bats fails it and goes on.
                kill_test_commands(pid, &file_tmp);
                stalled.insert(n + 1);
                last_result = Instant::now();
            }
        }
        let sig = util::interrupted();
        if sig != 0 || start.elapsed() > timeout {
            timed_out = sig == 0;
            kill_tree(pid);
            let st = child.wait()?;
            if sig != 0 {
                clean_up_after(runtime, &file_tmp);
                bail!("interrupted by signal {sig} while running {file}");
            }
            break st;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(child.stdin.take());
    kill_tree(pid);
    let seconds = start.elapsed().as_secs_f64();
    let (leaked_containers, stray_processes) = clean_up_after(runtime, &file_tmp);
    let text = std::fs::read(&out_path).unwrap_or_default();
    let mut tap = parse_bats_tap(&String::from_utf8_lossy(&text));
    for n in stalled {
        if let Some(t) = tap.tests.get_mut(n - 1) {
            t.timed_out |= t.outcome == Outcome::Fail;
        }
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(FileResult {
        file: file.to_string(),
        counts: Counts::of(&tap.tests),
        plan: tap.plan,
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        leaked_containers,
        stray_processes,
        seconds,
        tests: tap.tests,
    })
}

/// The files `--only` names (`exec`, `exec.bats`, `tests/integration/exec.bats`).
fn select_files(suite: &Suite, only: &[String]) -> Result<Vec<String>> {
    if only.is_empty() {
        return Ok(suite.files.clone());
    }
    let mut v = Vec::new();
    for o in only {
        let base = o.rsplit('/').next().unwrap_or(o);
        let name = if base.ends_with(".bats") {
            base.to_string()
        } else {
            format!("{base}.bats")
        };
        if !suite.files.contains(&name) {
            bail!(
                "no bats file {name:?} in runc's suite; there are: {}",
                suite.files.join(" ")
            );
        }
        if !v.contains(&name) {
            v.push(name);
        }
    }
    Ok(v)
}

/// `cargo xtask runc-bats`.
pub fn cmd_runc_bats(args: RuncBatsArgs) -> Result<i32> {
    if let Some(path) = &args.from_report {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the report {}", path.display()))?;
        let report: Report = serde_json::from_str(&text)
            .with_context(|| format!("parsing the report {}", path.display()))?;
        return finish(&report, &args);
    }
    if let Some(place) = args.inside.clone() {
        // Re-invoked where the runtimes run: the suite was built by the caller.
        let suite = load_suite(&suite_dir()).context(
            "the suite must be built before `--inside` (run `cargo xtask runc-bats` outside)",
        )?;
        return run_here(&suite, &args, &place);
    }
    let suite = ensure_suite()?;
    eprintln!("[runc-bats] suite: {}", suite.dir.display());
    if args.build_only {
        return Ok(0);
    }
    let files = select_files(&suite, &args.only)?;
    let mut args = args;
    let mut setup = None;
    if args.runtimes.is_empty() {
        let s = GuestSetup::prepare()?;
        args.runtimes = vec!["runc".into(), s.runvm.display().to_string()];
        setup = Some(s);
    }
    for r in args.runtimes.iter_mut() {
        if r.contains('/') {
            let p = Path::new(r.as_str())
                .canonicalize()
                .with_context(|| format!("runtime {r} does not exist"))?;
            *r = p.display().to_string();
        }
    }
    let Some(runvm) = args.runtimes.iter().find(|r| util::is_runvm(r)).cloned() else {
        ensure_run_packages(&suite, &files, &args.runtimes)?;
        return run_here(&suite, &args, "direct");
    };
    let setup = match setup {
        Some(s) => s,
        None => GuestSetup::prepare()?,
    };
    let setup = GuestSetup {
        runvm: PathBuf::from(&runvm),
        ..setup
    };
    let place = setup.choose_place()?;
    let mut argv = vec![
        std::env::current_exe()
            .context("cannot find the xtask binary")?
            .display()
            .to_string(),
        "runc-bats".into(),
        "--inside".into(),
    ];
    match place {
        Place::Direct => {
            ensure_run_packages(&suite, &files, &args.runtimes)?;
            eprintln!("[runc-bats] {runvm} boots guests here: running the suite directly");
            argv.push("direct".into());
        }
        Place::TestHost => {
            let debs = testhost_debs(&suite)?;
            eprintln!(
                "[runc-bats] {runvm} boots guests in the nested test host: running the suite there"
            );
            argv.push("testhost".into());
            argv.push("--debs".into());
            argv.push(debs.display().to_string());
        }
    }
    argv.extend([
        "--timeout".into(),
        args.timeout.to_string(),
        "--test-timeout".into(),
        args.test_timeout.to_string(),
    ]);
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
        argv.extend(files);
    }
    setup.run_at(place, &argv, &[])
}

/// Installs on this host what the chosen files need to run here.
fn ensure_run_packages(suite: &Suite, files: &[String], runtimes: &[String]) -> Result<()> {
    let mut pkgs: Vec<&str> = vec!["util-linux", "bsdutils"];
    for g in needed_groups(suite, files) {
        pkgs.extend_from_slice(g);
    }
    if runtimes.iter().any(|r| r == "runc") {
        pkgs.push("runc");
    }
    ensure_apt(&pkgs)
}

/// A runtime as a path: itself if it names one, else where `PATH` finds it.
fn on_path(runtime: &str) -> Result<String> {
    if runtime.contains('/') {
        return Ok(runtime.to_string());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(runtime))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .with_context(|| format!("runtime {runtime:?} is not on PATH"))
}

/// First line of `bats --version`.
fn bats_version() -> String {
    Command::new("bats")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the files against every runtime here, prints the table and writes the reports.
fn run_here(suite: &Suite, args: &RuncBatsArgs, place: &str) -> Result<i32> {
    if !util::is_root() {
        bail!("runc's bats suite must run as root");
    }
    let runtimes = if args.runtimes.is_empty() {
        vec!["runc".to_string()]
    } else {
        args.runtimes.clone()
    };
    // `RUNC` must be a path: helpers.bash calls "$RUNC" from within its shell function
    // named `runc`, and a bare `runc` would be that function, calling itself without end.
    let runtimes = runtimes
        .iter()
        .map(|r| on_path(r))
        .collect::<Result<Vec<String>>>()?;
    let files = select_files(suite, &args.only)?;
    let setup_seconds = match &args.debs {
        Some(debs) => install_debs(debs, &needed_groups(suite, &files))?,
        None => 0.0,
    };
    util::catch_interrupts();
    let tmp = util::TmpDir(std::env::temp_dir().join(format!("runvm-bats-{}", std::process::id())));
    remove_dir_if_exists(&tmp.0)?;
    std::fs::create_dir_all(&tmp.0).with_context(|| format!("creating {}", tmp.0.display()))?;
    set_mode(&tmp.0, 0o755)?;
    let timeout = Duration::from_secs(args.timeout);
    let labels = util::runtime_labels(&runtimes);
    let mut results = Vec::new();
    for (runtime, label) in runtimes.iter().zip(&labels) {
        let version = util::runtime_version(runtime);
        let logs = util::target_dir().join("runc-bats").join(label);
        if args.only.is_empty() {
            remove_dir_if_exists(&logs)?;
        }
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let mut progress = util::Progress::new(&format!("runc-bats/{label}"), place);
        progress.phase(&format!(
            "{} bats files against {runtime} ({version}), {} s timeout each, {} s per test",
            files.len(),
            args.timeout,
            args.test_timeout
        ));
        let start = Instant::now();
        let mut done = Vec::new();
        let mut totals = Counts::default();
        for (i, file) in files.iter().enumerate() {
            progress.progress(&format!("{}/{} {file}", i + 1, files.len()));
            let r = run_file(
                suite,
                file,
                runtime,
                &tmp.0,
                &logs,
                timeout,
                Duration::from_secs(args.test_timeout),
            )?;
            progress.println(&format!(
                "[runc-bats/{label}] {file}: {} ({})",
                r.cell(),
                fmt_duration(Duration::from_secs_f64(r.seconds))
            ));
            totals.add(&r.counts);
            done.push(r);
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
            timeouts: done.iter().filter(|f| f.timed_out).count(),
            seconds,
            logs: logs.display().to_string(),
            files: done,
        });
    }
    drop(tmp);
    let report = Report {
        date: util::now_utc(),
        machine: util::machine_description(place),
        place: place.to_string(),
        suite: format!(
            "runc {SRC_VERSION}'s tests/integration (Debian bookworm source package {SRC_TARBALL})"
        ),
        suite_dir: suite.dir.display().to_string(),
        go: suite.go_version.clone(),
        bats: bats_version(),
        setup_seconds,
        timeout_seconds: args.timeout,
        test_timeout_seconds: args.test_timeout,
        runtimes: results,
    };
    finish(&report, args)
}

/// What follows a run (or `--from-report`): the table, the reports under
/// `target/runc-bats/`, then `--record`, `--save` and `--check`.
fn finish(report: &Report, args: &RuncBatsArgs) -> Result<i32> {
    let record = Record::load().ok();
    let table = markdown_table(report);
    println!("{table}");
    let out = util::target_dir().join("runc-bats");
    std::fs::create_dir_all(&out)?;
    let json = out.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let md = out.join("report.md");
    std::fs::write(&md, markdown_report(report, &table, record.as_ref()))
        .with_context(|| format!("writing {}", md.display()))?;
    eprintln!(
        "[runc-bats] results in {} and {}",
        md.display(),
        json.display()
    );

    let runvm = report
        .runtimes
        .iter()
        .find(|r| util::is_runvm(&r.runtime))
        .map(RuntimeResult::run)
        .unwrap_or_default();
    let runc = report
        .runtimes
        .iter()
        .find(|r| r.label == "runc")
        .map(RuntimeResult::run)
        .unwrap_or_default();
    if args.record {
        if !args.only.is_empty() || runvm.is_empty() || runc.is_empty() {
            bail!("--record needs a full run of runc and runvm (no --only)");
        }
        let old = Record::load().unwrap_or_default();
        Record::from_run(&old, &runvm, &runc).save()?;
        eprintln!(
            "[runc-bats] wrote {}: review the diff; every UNEXPLAINED needs its reason",
            expected::record_path().display()
        );
    }
    if args.save {
        if !args.only.is_empty() {
            bail!("--save needs the full suite (no --only)");
        }
        save_results(report, &table)?;
    }
    if args.check {
        if runvm.is_empty() || runc.is_empty() {
            bail!("--check needs runc and runvm in the same run");
        }
        let record = Record::load()?;
        let findings = expected::check(&record, &runvm, &runc);
        let path = expected::record_path();
        if !findings.report("runc-bats", &path, !args.only.is_empty(), "test") {
            return Ok(1);
        }
    }
    Ok(0)
}

/// Writes `bench/runc-bats.{md,json}` and the README's section (`--save`).
fn save_results(report: &Report, table: &str) -> Result<()> {
    let record = Record::load().ok();
    let bench = util::repo_root().join("bench");
    std::fs::create_dir_all(&bench)?;
    let md = bench.join("runc-bats.md");
    std::fs::write(&md, markdown_report(report, table, record.as_ref()))
        .with_context(|| format!("writing {}", md.display()))?;
    let json = bench.join("runc-bats.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    eprintln!("[runc-bats] wrote {} and {}", md.display(), json.display());
    let mut readme = format!("Measured {} ({}):\n\n{table}", report.date, report.machine);
    let divergent = divergences(report, record.as_ref());
    if !divergent.is_empty() {
        let explained = divergent
            .iter()
            .filter(|d| d.why.is_some_and(expected::is_reason))
            .count();
        readme.push_str(&format!(
            "\nrunvm does not pass {} test(s) that runc passes: {explained} with a reason in \
             `xtask/runc-bats-expected.json`, {} not yet explained; the list is in \
             [bench/runc-bats.md](bench/runc-bats.md).\n",
            divergent.len(),
            divergent.len() - explained
        ));
    }
    util::splice_readme("runc-bats", &readme)
}

/// A test the first runtime (runc) passes and another does not.
struct Divergence<'a> {
    label: &'a str,
    file: &'a str,
    test: &'a TestResult,
    why: Option<&'a str>,
}

fn divergences<'a>(report: &'a Report, record: Option<&'a Record>) -> Vec<Divergence<'a>> {
    let mut out = Vec::new();
    let Some((first, rest)) = report.runtimes.split_first() else {
        return out;
    };
    let passed: BTreeSet<(&str, &str)> = first
        .files
        .iter()
        .flat_map(|f| {
            f.tests
                .iter()
                .filter(|t| t.outcome == Outcome::Pass)
                .map(move |t| (f.file.as_str(), t.name.as_str()))
        })
        .collect();
    for r in rest {
        for f in &r.files {
            for t in &f.tests {
                if t.outcome != Outcome::Pass
                    && passed.contains(&(f.file.as_str(), t.name.as_str()))
                {
                    let why = record
                        .filter(|_| util::is_runvm(&r.runtime))
                        .and_then(|rec| rec.files.get(&f.file))
                        .and_then(|e| e.why.get(&t.name))
                        .map(String::as_str);
                    out.push(Divergence {
                        label: &r.label,
                        file: &f.file,
                        test: t,
                        why,
                    });
                }
            }
        }
    }
    out
}

fn markdown_table(report: &Report) -> String {
    let rts = &report.runtimes;
    let many = rts.len() > 1;
    let mut s = String::from("| file | tests |");
    for r in rts {
        s.push_str(&format!(" {} |", r.label));
    }
    for r in rts {
        s.push_str(&format!(" {} time |", r.label));
    }
    if many {
        let others = if rts.len() == 2 {
            rts[1].label.as_str()
        } else {
            "others"
        };
        s.push_str(&format!(" {} passes, {others} not |", rts[0].label));
    }
    s.push_str("\n|---|---:|");
    for _ in rts {
        s.push_str("---|");
    }
    for _ in rts {
        s.push_str("---:|");
    }
    if many {
        s.push_str("---:|");
    }
    s.push('\n');
    let mut rows: BTreeMap<&str, Vec<Option<&FileResult>>> = BTreeMap::new();
    for (i, r) in rts.iter().enumerate() {
        for f in &r.files {
            rows.entry(f.file.as_str())
                .or_insert_with(|| vec![None; rts.len()])[i] = Some(f);
        }
    }
    let divergent = divergences(report, None);
    for (file, cells) in &rows {
        let tests = cells
            .iter()
            .flatten()
            .map(|f| f.plan.unwrap_or(0).max(f.tests.len()))
            .max()
            .unwrap_or(0);
        s.push_str(&format!("| {file} | {tests} |"));
        for c in cells {
            s.push_str(&format!(" {} |", c.map(|f| f.cell()).unwrap_or_default()));
        }
        for c in cells {
            s.push_str(&format!(
                " {} |",
                c.map(|f| fmt_duration(Duration::from_secs_f64(f.seconds)))
                    .unwrap_or_default()
            ));
        }
        if many {
            let n = divergent.iter().filter(|d| d.file == *file).count();
            if n > 0 {
                s.push_str(&format!(" {n} |"));
            } else {
                s.push_str(" |");
            }
        }
        s.push('\n');
    }
    s.push_str("| **total** | |");
    for r in rts {
        let t = &r.totals;
        let mut cell = format!("**{} / {} / {}**", t.pass, t.fail, t.skip);
        if r.timeouts > 0 {
            cell.push_str(&format!(", {} timeout", r.timeouts));
        }
        s.push_str(&format!(" {cell} |"));
    }
    for r in rts {
        s.push_str(&format!(
            " **{}** |",
            fmt_duration(Duration::from_secs_f64(r.seconds))
        ));
    }
    if many {
        s.push_str(&format!(" **{}** |", divergent.len()));
    }
    s.push('\n');
    s
}

/// The line that best says why a test failed, made safe for a Markdown code span: the
/// runtime's first error message (`runvm: …`, not a warning, info or debug line), passing
/// over "… does not exist" (the usual answer to a test's own check that a container is
/// gone) when there is another; else the last line bats printed.
fn telling_line(t: &TestResult, label: &str) -> String {
    let prefix = format!("{label}: ");
    let errors: Vec<&str> = t
        .detail
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| {
            !["warning", "info", "debug"]
                .iter()
                .any(|level| l[prefix.len()..].starts_with(level))
        })
        .collect();
    errors
        .iter()
        .find(|l| !l.ends_with("does not exist"))
        .or(errors.first())
        .copied()
        .or_else(|| {
            t.detail
                .iter()
                .map(|l| l.trim())
                .rev()
                .find(|l| !l.is_empty())
        })
        .unwrap_or("")
        .replace('`', "'")
}

fn markdown_report(report: &Report, table: &str, record: Option<&Record>) -> String {
    let mut s = String::from("# runc's integration suite (bats), runc and runvm\n\n");
    s.push_str(
        "Written by `cargo xtask runc-bats` (xtask/src/runc_bats.rs); raw results in \
         `runc-bats.json`.\n\n",
    );
    s.push_str(&format!("- Date: {}\n", report.date));
    s.push_str(&format!("- Machine: {}\n", report.machine));
    s.push_str(&format!(
        "- Suite: {}; Go helpers (recvtty, sd-helper, seccompagent) built with {} in GOPATH \
         mode against bookworm's Go libraries; busybox image from Debian's busybox-static, \
         Debian image from debootstrap (bookworm minbase; runc's suite downloads buster slim)\n",
        report.suite, report.go
    ));
    s.push_str(&format!("- bats: {}\n", report.bats));
    if report.setup_seconds > 0.0 {
        s.push_str(&format!(
            "- Installing bats, jq, gcc, criu… in the test host first took {}\n",
            fmt_duration(Duration::from_secs_f64(report.setup_seconds))
        ));
    }
    for r in &report.runtimes {
        s.push_str(&format!(
            "- {}: `{}` ({}), {} for all files\n",
            r.label,
            r.runtime,
            r.version,
            fmt_duration(Duration::from_secs_f64(r.seconds))
        ));
    }
    s.push_str(&format!(
        "\nEach cell is pass / fail / skip, from bats's TAP. Each file ran as root under \
         `script -qec` (a controlling terminal) with `RUNC` set to the runtime, its own \
         TMPDIR. A test that finished nothing for {} s had the commands it ran killed (bats \
         then fails it and goes on; `timed_out` in the JSON); a file still running after {} s \
         was killed (\"timeout\"). \"not run\": tests the plan announced that printed no \
         result; \"left\": containers still listed after the file ended (the harness \
         deleted them). The time columns are each file's wall time.\n\n",
        report.test_timeout_seconds, report.timeout_seconds
    ));
    s.push_str(table);
    let divergent = divergences(report, record);
    if !divergent.is_empty() {
        s.push_str(
            "\n## Tests runc passes and runvm does not\n\nWith runvm's error (or the last \
             line bats printed about the failure), and the reason recorded in \
             `xtask/runc-bats-expected.json` (UNEXPLAINED where there is none yet).\n\n",
        );
        for d in &divergent {
            let what = match (d.test.outcome, d.test.timed_out) {
                (Outcome::Skip, _) => "skips",
                (_, true) => "times out",
                _ => "fails",
            };
            let label = if report.runtimes.len() > 2 {
                format!("{} ", d.label)
            } else {
                String::new()
            };
            let said = match telling_line(d.test, d.label) {
                l if l.is_empty() => l,
                l => format!(" (`{l}`)"),
            };
            s.push_str(&format!(
                "- `{}` \"{}\": {label}{what}{said}; {}\n",
                d.file,
                d.test.name,
                d.why.unwrap_or(expected::UNEXPLAINED)
            ));
        }
    }
    if let Some(first) = report.runtimes.first() {
        let failed: Vec<(&str, &TestResult)> = first
            .files
            .iter()
            .flat_map(|f| {
                f.tests
                    .iter()
                    .filter(|t| t.outcome == Outcome::Fail)
                    .map(move |t| (f.file.as_str(), t))
            })
            .collect();
        if !failed.is_empty() {
            s.push_str(&format!(
                "\n## Tests {} itself fails here\n\nWith its error (or the last line bats \
                 printed about the failure).\n\n",
                first.label
            ));
            for (file, t) in failed {
                s.push_str(&format!(
                    "- `{file}` \"{}\": `{}`\n",
                    t.name,
                    telling_line(t, &first.label)
                ));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bats_tap_through_a_terminal_is_parsed_per_test() {
        let tap = "1..6\r\n\
                   ok 1 runc -h\r\n\
                   not ok 2 runc exec # fail\r\n\
                   # (in test file exec.bats, line 20)\r\n\
                   #   `[ \"$status\" -eq 0 ]' failed\r\n\
                   # runvm exec test_busybox (status=1):\r\n\
                   #\r\n\
                   stray output from a container\r\n\
                   ok 3 runc ps # skip test requires cgroups_v1\r\n\
                   ok 4 bare skip # skip\r\n\
                   not ok 5 slow one # timeout after 300s\r\n\
                   ok 6 a # skipper is not a skip\r\n\
                   # bats warning: something\r\n";
        let t = parse_bats_tap(tap);
        assert_eq!(t.plan, Some(6));
        let got: Vec<(&str, Outcome)> = t
            .tests
            .iter()
            .map(|r| (r.name.as_str(), r.outcome))
            .collect();
        use Outcome::*;
        assert_eq!(
            got,
            vec![
                ("runc -h", Pass),
                ("runc exec # fail", Fail),
                ("runc ps", Skip),
                ("bare skip", Skip),
                ("slow one", Fail),
                ("a # skipper is not a skip", Pass),
            ]
        );
        assert_eq!(
            t.tests[1].detail,
            vec![
                "(in test file exec.bats, line 20)",
                "  `[ \"$status\" -eq 0 ]' failed",
                "runvm exec test_busybox (status=1):",
                "",
            ]
        );
        assert_eq!(
            t.tests[2].skip_reason.as_deref(),
            Some("test requires cgroups_v1")
        );
        assert_eq!(t.tests[3].skip_reason.as_deref(), Some(""));
        assert!(t.tests[4].timed_out);
        // Diagnostics after a pass (bats's own warnings) belong to no test.
        assert!(t.tests[5].detail.is_empty());
        let c = Counts::of(&t.tests);
        assert_eq!((c.pass, c.fail, c.skip), (2, 2, 2));
    }

    #[test]
    fn the_telling_line_is_the_runtimes_error() {
        let t = |detail: &[&str]| TestResult {
            name: "t".into(),
            outcome: Outcome::Fail,
            timed_out: false,
            skip_reason: None,
            detail: detail.iter().map(|l| l.to_string()).collect(),
        };
        let d = t(&[
            "(in test file state.bats, line 19)",
            "runvm state ct (status=1):",
            "runvm: container \"ct\" does not exist",
            "runvm: warning: ignoring unknown key \"x\"",
            "runvm: cannot use `console` socket",
            "rmdir: failed to remove '/sys/fs/cgroup/x'",
        ]);
        assert_eq!(
            telling_line(&d, "runvm"),
            "runvm: cannot use 'console' socket"
        );
        let d = t(&[
            "runvm run ct (status=1):",
            "runvm: container \"ct\" does not exist",
            "",
        ]);
        assert_eq!(
            telling_line(&d, "runvm"),
            "runvm: container \"ct\" does not exist"
        );
        let d = t(&["  `[ \"$status\" -eq 0 ]' failed", "pipe:[21]", ""]);
        assert_eq!(telling_line(&d, "runvm"), "pipe:[21]");
        assert_eq!(telling_line(&t(&[]), "runvm"), "");
    }

    #[test]
    fn a_report_reads_back_what_it_wrote() {
        let file = FileResult {
            file: "a.bats".into(),
            counts: Counts {
                pass: 1,
                fail: 1,
                skip: 1,
            },
            plan: Some(3),
            exit_code: Some(1),
            signal: None,
            timed_out: false,
            leaked_containers: Vec::new(),
            stray_processes: 0,
            seconds: 2.5,
            tests: parse_bats_tap("ok 1 a\nnot ok 2 b\n# why\nok 3 c # skip no\n").tests,
        };
        let text = serde_json::to_string(&file).unwrap();
        let back: FileResult = serde_json::from_str(&text).unwrap();
        assert_eq!(back.tests, file.tests);
        assert_eq!(
            (back.counts.pass, back.counts.fail, back.counts.skip),
            (1, 1, 1)
        );
        assert_eq!(back.cell(), file.cell());
    }

    #[test]
    fn repeated_names_stay_apart_and_garbage_is_no_result() {
        let t = parse_bats_tap("ok 1 x\nok 2 x\nokay\nok\nnot ok\nok x\n1..two\n");
        let names: Vec<&str> = t.tests.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["x", "x (2)"]);
        assert_eq!(t.plan, None);
        assert_eq!(parse_bats_tap("").tests.len(), 0);
    }

    #[test]
    fn a_file_cell_says_what_went_wrong() {
        let mut f = FileResult {
            file: "a.bats".into(),
            counts: Counts {
                pass: 1,
                fail: 1,
                skip: 0,
            },
            plan: Some(4),
            exit_code: Some(1),
            signal: None,
            timed_out: false,
            leaked_containers: vec!["test_busybox".into()],
            stray_processes: 0,
            seconds: 1.0,
            tests: parse_bats_tap("ok 1 a\nnot ok 2 b\n").tests,
        };
        assert_eq!(f.cell(), "1 / 1 / 0, 2 not run, 1 left");
        f.timed_out = true;
        f.leaked_containers.clear();
        assert_eq!(f.cell(), "timeout (1 / 1 / 0, 2 not run)");
        f.tests.clear();
        f.plan = None;
        f.timed_out = false;
        assert_eq!(f.cell(), "no TAP (exit 1)");
    }
}

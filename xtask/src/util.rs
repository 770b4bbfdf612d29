//! Shared helpers for every `cargo xtask` command: where things are cached,
//! installing missing apt packages, running commands with useful errors, the
//! `Step` progress reporter (spinner on a terminal, plain lines in CI), and what the
//! suites run against container runtimes share (Debian source tarballs, GOPATH-mode Go
//! builds, runtime versions and labels, the machine's description).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// Prints a benchmark's table and writes it and its raw numbers to `dir/NAME.md` and
/// `dir/NAME.json`.
pub fn write_results(dir: &Path, name: &str, md: &str, json: &serde_json::Value) -> Result<()> {
    println!("{md}");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let md_path = dir.join(format!("{name}.md"));
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    let json_path = dir.join(format!("{name}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(json)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    eprintln!(
        "[bench] results: {}/{name}.md and {name}.json",
        dir.display()
    );
    Ok(())
}

/// Replaces what lies between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in README.md
/// with `content` (benchmarks and the validation table write their results there).
pub fn splice_readme(name: &str, content: &str) -> Result<()> {
    let path = repo_root().join("README.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) else {
        bail!(
            "{} has no {begin} … {end} markers: add them where the {name} results go",
            path.display()
        );
    };
    if e < b {
        bail!("{}: {end} comes before {begin}", path.display());
    }
    let new = format!(
        "{}{begin}\n{}\n{}",
        &text[..b],
        content.trim_end(),
        &text[e..]
    );
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("[readme] {name} results written to {}", path.display());
    Ok(())
}

/// The `p` quantile (0.0–1.0, nearest rank) of `v`; NaN when `v` is empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// The config `runc spec` writes in `dir` (which runvm accepts whole), for the benchmarks
/// that run one bundle under both: without a terminal, and without ambient capabilities
/// (runc 1.1's spec lists ambient capabilities that are not inheritable; runc ignores the
/// failed raise, runvm's guest init refuses it). The caller sets `root`, the process
/// and the mounts, and writes it to `dir/config.json`.
pub fn runc_spec(dir: &Path) -> Result<serde_json::Value> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("config.json");
    let _ = std::fs::remove_file(&path);
    run_quiet(Command::new("runc").arg("spec").current_dir(dir))?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut c: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    c["process"]["terminal"] = serde_json::json!(false);
    c["process"]["capabilities"]["ambient"] = serde_json::json!([]);
    Ok(c)
}

/// `$HOME/.cache/runvm`, created if missing.
pub fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let dir = home.join(".cache").join("runvm");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("warning: cannot create cache dir {}: {e}", dir.display());
    }
    dir
}

/// Where the cargo target directory is (`CARGO_TARGET_DIR` or `<repo>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                repo_root().join(p)
            }
        }
        _ => repo_root().join("target"),
    }
}

/// Version of an installed Debian package, from `dpkg-query`.
pub fn dpkg_version(package: &str) -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .with_context(|| format!("running dpkg-query for {package}"))?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || v.is_empty() {
        bail!("package {package} is not installed (dpkg-query found no version)");
    }
    Ok(v)
}

fn apt_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Makes sure the Debian packages are installed; installs the missing ones
/// with `apt-get` (running `apt-get update` once per process first).
pub fn ensure_apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !apt_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("[apt] installing missing packages: {}", missing.join(" "));
    if !crate::util::is_root() {
        bail!(
            "packages {} are missing and installing them needs root: run `sudo apt-get install -y {}` or run this command as root",
            missing.join(" "),
            missing.join(" ")
        );
    }
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        run_quiet(
            Command::new("apt-get")
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .context("apt-get update failed: check network access to the Debian mirror")?;
    }
    run_quiet(
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing apt packages {}", missing.join(" ")))?;
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    if s.len() > 300 {
        s.truncate(300);
        s.push('…');
    }
    s
}

fn status_err(cmd: &Command, status: ExitStatus, tail: &[String]) -> anyhow::Error {
    let mut msg = format!("command failed ({status}): {}", describe(cmd));
    if !tail.is_empty() {
        msg.push_str("\n--- last lines of its output ---\n");
        msg.push_str(&tail.join("\n"));
    }
    anyhow::anyhow!(msg)
}

/// Runs a command with inherited stdio; the error names the command and its status.
#[allow(dead_code)] // for other xtask commands
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        return Err(status_err(cmd, status, &[]));
    }
    Ok(())
}

/// Runs a noisy command with its output captured; on failure the error
/// carries the last 40 lines of its output.
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    run_lines(cmd, |_| {})
}

/// Runs a command, handing every line of its stdout and stderr (merged) to
/// `on_line`, e.g. to drive a progress reporter. On failure the error carries
/// the last 40 lines of output.
pub fn run_lines(cmd: &mut Command, mut on_line: impl FnMut(&str)) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    let outs: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().expect("piped stdout")),
        Box::new(child.stderr.take().expect("piped stderr")),
    ];
    for r in outs {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    drop(tx);
    let mut tail: VecDeque<String> = VecDeque::new();
    for line in rx {
        on_line(&line);
        if tail.len() == 40 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", describe(cmd)))?;
    if !status.success() {
        let tail: Vec<String> = tail.into_iter().collect();
        return Err(status_err(cmd, status, &tail));
    }
    Ok(())
}

/// Formats a duration as "1m23s" or "4.2s".
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 60.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s as u64) % 60)
    } else {
        format!("{s:.1}s")
    }
}

/// Formats a byte count as "12.3 MiB".
pub fn fmt_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// True when progress should be plain lines (not a terminal, or `CI` set).
pub fn plain_output() -> bool {
    std::env::var_os("CI").is_some() || !std::io::stderr().is_terminal()
}

/// A long-running step with progress on stderr: an indicatif spinner on a
/// terminal, rate-limited plain lines ("[kernel] compiling 120 files") otherwise.
pub struct Step {
    name: String,
    start: Instant,
    bar: Option<ProgressBar>,
    last_plain: Option<Instant>,
    last_msg: String,
}

impl Step {
    pub fn new(name: &str) -> Step {
        let bar = if plain_output() {
            None
        } else {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template("{spinner} [{prefix}] {elapsed:>4} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb.set_prefix(name.to_string());
            pb.enable_steady_tick(Duration::from_millis(120));
            Some(pb)
        };
        Step {
            name: name.to_string(),
            start: Instant::now(),
            bar,
            last_plain: None,
            last_msg: String::new(),
        }
    }

    /// A phase change ("configuring…"): always shown.
    pub fn phase(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.println(format!("[{}] {msg}", self.name));
                b.set_message(msg.to_string());
            }
            None => eprintln!("[{}] {msg}", self.name),
        }
        self.last_plain = Some(Instant::now());
        self.last_msg = msg.to_string();
    }

    /// Frequent progress ("compiling 1234 files"): on a terminal updates the
    /// spinner; in plain mode printed at most every 15 seconds.
    pub fn progress(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.set_message(msg.to_string()),
            None => {
                let due = self
                    .last_plain
                    .map(|t| t.elapsed() >= Duration::from_secs(15))
                    .unwrap_or(true);
                if due && msg != self.last_msg {
                    eprintln!("[{}] {msg}", self.name);
                    self.last_plain = Some(Instant::now());
                    self.last_msg = msg.to_string();
                }
            }
        }
    }

    /// Prints a line without disturbing the spinner.
    #[allow(dead_code)] // for other xtask commands
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    #[allow(dead_code)] // for other xtask commands
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Ends the step: prints how long it took and where the result is.
    pub fn finish(self, what: &str, path: &Path) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        eprintln!(
            "[{}] {what} in {}: {}",
            self.name,
            fmt_duration(self.start.elapsed()),
            path.display()
        );
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            if !b.is_finished() {
                b.finish_and_clear();
            }
        }
    }
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Short hex sha256 (16 chars) of the given parts, each length-prefixed.
pub fn short_hash(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Removes a directory tree if it exists (errors name the path).
pub fn remove_dir_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// The Debian archive this machine's apt configuration uses for `suite`: the `URIs:` of
/// the first deb822 stanza in `/etc/apt/sources.list.d/*.sources` that lists it, else the
/// first `deb` line for it in `/etc/apt/sources.list` or `sources.list.d/*.list`. Nothing
/// else: no built-in default, no environment override, so that what CI downloads is what
/// the machine is configured to download.
pub fn debian_mirror(suite: &str) -> Result<String> {
    let mut sources: Vec<PathBuf> = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        sources.extend(more);
    }
    for path in &sources {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let found = match path.extension().and_then(|e| e.to_str()) {
            Some("sources") => mirror_in_deb822(&text, suite),
            _ => mirror_in_one_line_format(&text, suite),
        };
        if let Some(m) = found {
            return Ok(m);
        }
    }
    bail!(
        "no Debian archive for {suite} in this machine's apt configuration \
         (/etc/apt/sources.list, /etc/apt/sources.list.d/): add one"
    )
}

fn mirror_in_deb822(text: &str, suite: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let is_deb = field("Types:").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let has_suite = field("Suites:").is_some_and(|s| s.split_whitespace().any(|s| s == suite));
        (is_deb && has_suite)
            .then(|| field("URIs:"))
            .flatten()
            .and_then(|u| u.split_whitespace().next().map(str::to_string))
    })
}

fn mirror_in_one_line_format(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|l| {
        // `deb [options] URI SUITE COMPONENTS…`
        let mut w = l.split_whitespace().peekable();
        if w.next() != Some("deb") {
            return None;
        }
        if w.peek().is_some_and(|o| o.starts_with('[')) {
            for o in w.by_ref() {
                if o.ends_with(']') {
                    break;
                }
            }
        }
        let uri = w.next()?;
        (w.next() == Some(suite)).then(|| uri.to_string())
    })
}

// Running a test suite against container runtimes (`cargo xtask oci`, `cargo xtask runc-bats`).

/// The sha256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a `deb-src` entry for `suite` from `mirror` (deb822, after the `header` comment
/// lines) to `file`, its own file under `/etc/apt/sources.list.d/` from which nothing is
/// installed, and refreshes apt's lists for that file alone.
pub fn add_deb_src(file: &str, mirror: &str, suite: &str, header: &str) -> Result<()> {
    let text = format!(
        "{header}Types: deb-src\nURIs: {mirror}\nSuites: {suite}\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    );
    if std::fs::read_to_string(file).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(file, &text).with_context(|| format!("writing {file}"))?;
    }
    run_quiet(
        Command::new("apt-get")
            .args(["update", "-q"])
            .arg(format!("-o=Dir::Etc::sourcelist={file}"))
            .args(["-o=Dir::Etc::sourceparts=-", "-o=APT::Get::List-Cleanup=0"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("apt-get update for the {suite} deb-src entry in {file} failed"))
}

/// Downloads the upstream tarball of Debian source package `package=version` into `dir`
/// (`apt-get source --download-only --tar-only`, from a `deb-src` entry) and checks that
/// it is `tarball` with sha256 `sha256`; returns its path.
pub fn apt_source_tarball(
    dir: &Path,
    package: &str,
    version: &str,
    tarball: &str,
    sha256: &str,
) -> Result<PathBuf> {
    run_quiet(
        Command::new("apt-get")
            .args(["source", "--download-only", "--tar-only", "-q"])
            // The download dir is root's: do not hand it to the _apt sandbox user.
            .arg("-o=APT::Sandbox::User=root")
            .arg(format!("{package}={version}"))
            .current_dir(dir),
    )
    .with_context(|| format!("downloading the source package {package}={version} failed"))?;
    let path = dir.join(tarball);
    let sum = sha256_file(&path)?;
    if sum != sha256 {
        bail!("{} has sha256 {sum}, expected {sha256}", path.display());
    }
    Ok(path)
}

/// A `go` command for GOPATH-mode builds in `root` (Debian's Go libraries in
/// `/usr/share/gocode` after `gopath`; offline; cgo off unless the caller turns it on).
pub fn go_gopath(root: &Path, gopath: &Path, gocache: &Path) -> Command {
    let mut c = Command::new("go");
    c.current_dir(root)
        .env("GO111MODULE", "off")
        .env("GOPATH", format!("{}:/usr/share/gocode", gopath.display()))
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", gocache)
        .env_remove("GOFLAGS");
    c
}

/// First line of `<runtime> --version` (given 10 s).
pub fn runtime_version(runtime: &str) -> String {
    let Ok(mut child) = Command::new(runtime)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return "unknown (cannot run it)".into();
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return "unknown (`--version` hung)".into();
            }
        }
    }
    let out = child.wait_with_output().map(|o| {
        let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
        if s.trim().is_empty() {
            s = String::from_utf8_lossy(&o.stderr).into_owned();
        }
        s
    });
    match out {
        Ok(s) if !s.trim().is_empty() => s.lines().next().unwrap_or("").trim().to_string(),
        _ => "unknown (`--version` printed nothing)".into(),
    }
}

/// The CPU, memory and kernel of where a suite runs, and whether that is the test host.
pub fn machine_description(place: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| kib as f64 / (1024.0 * 1024.0))
        .unwrap_or(0.0);
    let where_ = if place == "testhost" {
        "inside the nested KVM test host (QEMU, emulated CPU)"
    } else {
        "directly on this host"
    };
    format!(
        "{model}, {cpus} CPUs, {mem_gib:.0} GiB, Linux {}, {where_}",
        kernel.trim()
    )
}

/// What `sh -c COMMAND` prints, trimmed (empty if it cannot run): for the facts a
/// benchmark records about the machine.
pub fn sh_stdout(command: &str) -> String {
    Command::new("sh")
        .args(["-c", command])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The date and time, `2026-12-01 21:42 UTC`.
pub fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown date".into())
}

/// Column labels for runtimes: each one's file name, made unique.
pub fn runtime_labels(runtimes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in runtimes {
        let base = Path::new(r)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| r.clone());
        let mut label = base.clone();
        let mut i = 2;
        while out.contains(&label) {
            label = format!("{base}#{i}");
            i += 1;
        }
        out.push(label);
    }
    out
}

/// Whether a runtime (a path) is a runvm binary.
pub fn is_runvm(runtime: &str) -> bool {
    runtime.contains('/')
        && Path::new(runtime)
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with("runvm"))
}

/// Progress of a run: a [`Step`] here, plain lines inside the test host (whose stderr is
/// a serial port that looks like a terminal but only carries bytes back).
pub enum Progress {
    Step(Step),
    Plain(String, Instant),
}

impl Progress {
    pub fn new(name: &str, place: &str) -> Progress {
        if place == "testhost" {
            Progress::Plain(name.to_string(), Instant::now())
        } else {
            Progress::Step(Step::new(name))
        }
    }
    pub fn phase(&mut self, msg: &str) {
        match self {
            Progress::Step(s) => s.phase(msg),
            Progress::Plain(name, _) => eprintln!("[{name}] {msg}"),
        }
    }
    pub fn progress(&mut self, msg: &str) {
        if let Progress::Step(s) = self {
            s.progress(msg)
        }
    }
    pub fn println(&self, line: &str) {
        match self {
            Progress::Step(s) => s.println(line),
            Progress::Plain(..) => eprintln!("{line}"),
        }
    }
    pub fn finish(self, what: &str, path: &Path) {
        match self {
            Progress::Step(s) => s.finish(what, path),
            Progress::Plain(name, start) => eprintln!(
                "[{name}] {what} in {}: {}",
                fmt_duration(start.elapsed()),
                path.display()
            ),
        }
    }
}

static INTERRUPT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_interrupt(sig: libc::c_int) {
    INTERRUPT.store(sig, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM only set a flag ([`interrupted`]), so that a suite run
/// can kill what it started, clean up and stop.
pub fn catch_interrupts() {
    // SAFETY: `on_interrupt` is async-signal-safe (one atomic store) and lives forever.
    unsafe {
        let h = on_interrupt as *const () as libc::sighandler_t;
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    }
}

/// The SIGINT or SIGTERM caught since [`catch_interrupts`], or 0.
pub fn interrupted() -> i32 {
    INTERRUPT.load(Ordering::SeqCst)
}

/// A directory removed (with everything in it) when dropped: a suite run's private TMPDIR.
pub struct TmpDir(pub PathBuf);
impl Drop for TmpDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("[xtask] warning: cannot remove {}: {e}", self.0.display());
            }
        }
    }
}

/// What a check found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Each makes the check fail.
    pub failures: Vec<String>,
    /// Reported only.
    pub notes: Vec<String>,
}

impl Findings {
    /// Prints the notes and failures of a check against the record at `record` (lines
    /// tagged `[tag]`; `point` names what the suite counts, e.g. "test"); with `subset`
    /// (a run of some files only), the notes about recorded files that did not run are
    /// left out. Whether the check passed.
    pub fn report(mut self, tag: &str, record: &Path, subset: bool, point: &str) -> bool {
        if subset {
            self.notes
                .retain(|n| !n.ends_with("in the record but not run"));
        }
        for n in &self.notes {
            eprintln!("[{tag}] note: {n}");
        }
        for f in &self.failures {
            eprintln!("[{tag}] FAILED: {f}");
        }
        if !self.failures.is_empty() {
            eprintln!(
                "[{tag}] {} finding(s) against {} (and runc in this run)",
                self.failures.len(),
                record.display()
            );
            return false;
        }
        eprintln!(
            "[{tag}] every {point} is as recorded; every divergence from runc has its reason"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_labels_are_unique() {
        let l = runtime_labels(&["runc".into(), "/a/runvm".into(), "/b/runvm".into()]);
        assert_eq!(l, vec!["runc", "runvm", "runvm#2"]);
    }

    #[test]
    fn mirror_comes_from_the_apt_configuration() {
        let deb822 = "Types: deb\n# comment\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n\n\
                      Types: deb\nURIs: http://m.example/security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_in_deb822(deb822, "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(
            mirror_in_deb822(deb822, "bookworm-security").as_deref(),
            Some("http://m.example/security")
        );
        assert_eq!(mirror_in_deb822(deb822, "trixie"), None);
        let src = "Types: deb-src\nURIs: http://x/\nSuites: trixie\n";
        assert_eq!(mirror_in_deb822(src, "trixie"), None);
        let list = "# deb http://no/ bookworm main\ndeb [arch=amd64 signed-by=/k] http://m/d bookworm main\n";
        assert_eq!(
            mirror_in_one_line_format(list, "bookworm").as_deref(),
            Some("http://m/d")
        );
        assert_eq!(mirror_in_one_line_format(list, "trixie"), None);
    }
}

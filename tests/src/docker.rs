//! The Docker and Podman acceptance harness: real daemons and real CLIs driving runvm.
//!
//! A suite binary (`tests/tests/docker.rs`, `tests/tests/podman.rs`, built with
//! `harness = false`) hands its tests to [`main`], which runs them with libtest's command
//! line (`--ignored`, a name filter, `--exact`), one at a time. The first test that runs
//! sets the engine up once for the binary:
//! - Docker: a private `dockerd` (its own `--data-root`, `--exec-root`, `--pidfile`,
//!   socket, `daemon.json` registering runtime `runvm` at `$RUNVM_BIN`, and its own bridge
//!   `runvmtest0`), with its managed containerd;
//! - Podman: a private storage root and run root and `--runtime $RUNVM_BIN` (runvm's
//!   state in its default root, `/run/runvm`, as in real use);
//!
//! and imports a `busybox` image made from `$RUNVM_TEST_ROOTFS` (Debian's busybox-static;
//! no registry). After **every** test its containers are removed and the harness asserts
//! that nothing is left: no runvm monitor or guard, no virtiofsd, no containerd shim or
//! conmon, no state directory, no new mount, no tap device. When all tests are done [`main`] stops the
//! daemon, checks that no daemon process and no mount under the private directory remain,
//! removes it, and fails the binary if anything leaked, whatever the tests did.
//!
//! `RUNVM_DOCKER_RUNTIME=runc` runs the same tests against runc as a control (a failure
//! there is a harness or test bug, not a runvm one). Docker is told `--network none`
//! unless a test asks for the default bridge.

use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

/// Which container engine a suite drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Podman,
}

impl Engine {
    pub fn program(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }
}

/// One test of a suite: its name and body.
pub type TestFn = fn(&mut Harness);

/// The name of the busybox image every suite imports.
pub const BUSYBOX: &str = "busybox";
/// Default timeout of one CLI command (guests boot under TCG in the test host).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(180);
/// The bridge the private dockerd attaches its default `bridge` network to, and its address.
const BRIDGE: &str = "runvmtest0";
const BRIDGE_CIDR_DEFAULT: &str = "172.29.0.1/24";

/// The result of one command.
#[derive(Debug, Clone)]
pub struct Out {
    pub cmd: String,
    /// Exit code; 128+signo for a signal death; -1 when the harness killed it at its timeout.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    /// stdout with trailing whitespace removed.
    pub fn text(&self) -> &str {
        self.stdout.trim_end()
    }

    fn describe(&self) -> String {
        format!(
            "`{}` exited {} after {:.1}s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmd,
            if self.code == -1 {
                "(killed at the timeout)".to_string()
            } else {
                self.code.to_string()
            },
            self.elapsed.as_secs_f64(),
            tail_chars(&self.stdout, 3000),
            tail_chars(&self.stderr, 3000)
        )
    }

    /// Panics (with the command, its output and its error) unless it exited 0.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.code_is(0)
    }

    /// Panics unless it exited with `want`.
    #[track_caller]
    pub fn code_is(&self, want: i32) -> &Self {
        assert_eq!(
            self.code,
            want,
            "expected exit code {want}: {}",
            self.describe()
        );
        self
    }

    /// Panics unless stdout (trailing whitespace trimmed) is exactly `want`.
    #[track_caller]
    pub fn prints(&self, want: &str) -> &Self {
        assert_eq!(self.text(), want, "unexpected stdout: {}", self.describe());
        self
    }

    /// Panics unless it failed and its output (stderr, or stdout: `docker exec` prints
    /// runtime errors there) contains `needle`.
    #[track_caller]
    pub fn fails_with(&self, needle: &str) -> &Self {
        assert!(
            self.code != 0 && (self.stderr.contains(needle) || self.stdout.contains(needle)),
            "expected a failure mentioning {needle:?}: {}",
            self.describe()
        );
        self
    }
}

fn tail_chars(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Runs `cmd` with `stdin` (or /dev/null), capturing stdout and stderr, killing it after
/// `timeout`.
pub fn run_cmd(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Out {
    let out = run_cmd_quiet(cmd, stdin, timeout);
    log_out(&out);
    out
}

/// [`run_cmd`] without logging the command (for polling).
pub fn run_cmd_quiet(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Out {
    let shown = describe_command(&cmd);
    let start = Instant::now();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Out {
                cmd: shown,
                code: 127,
                stdout: String::new(),
                stderr: format!("cannot start: {e}"),
                elapsed: start.elapsed(),
            }
        }
    };
    let writer = child.stdin.take().map(|mut w| {
        let data = stdin.unwrap_or_default().to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        })
    });
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out_r = reader(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err_r = reader(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let mut killed = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) => {}
            Err(_) => break None,
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            killed = true;
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_r.join().unwrap_or_default();
    let stderr = err_r.join().unwrap_or_default();
    if let Some(w) = writer {
        let _ = w.join();
    }
    let code = if killed {
        -1
    } else {
        status.map(exit_code).unwrap_or(-1)
    };
    Out {
        cmd: shown,
        code,
        stdout,
        stderr,
        elapsed: start.elapsed(),
    }
}

/// An exit status as containerd and shells report it (128+signo for a signal death).
pub fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

fn describe_command(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.is_empty() || a.contains([' ', '\'', '"', '$', ';', '&', '|']) {
            s.push_str(&format!("'{}'", a.replace('\'', "'\\''")));
        } else {
            s.push_str(&a);
        }
    }
    s
}

fn log_out(out: &Out) {
    let mut line = format!(
        "    $ {} → {} ({:.1}s)",
        short(&out.cmd, 240),
        out.code,
        out.elapsed.as_secs_f64()
    );
    if out.code != 0 {
        if let Some(l) = out.stderr.lines().rev().find(|l| !l.trim().is_empty()) {
            line.push_str(&format!("\n      stderr: {}", short(l, 400)));
        }
    }
    println!("{line}");
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

/// The engine's CLI, pointed at our private daemon or storage.
#[derive(Clone, Debug)]
pub struct Cli {
    pub engine: Engine,
    /// Global arguments (`-H unix://…` for docker; storage and runtime flags for podman).
    pub global: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The runtime under test: `runvm` (Docker: its registered name) or a control (`runc`).
    pub runtime: String,
}

impl Cli {
    /// `<engine> <global…> <args…>` as a Command.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.engine.program());
        c.args(&self.global).args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// The same as a shell command line (for tmux).
    pub fn shell_line(&self, args: &[&str]) -> String {
        let mut s: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", sh_quote(v)))
            .collect();
        s.push(self.engine.program().to_string());
        s.extend(self.global.iter().map(|a| sh_quote(a)));
        s.extend(args.iter().map(|a| sh_quote(a)));
        s.join(" ")
    }

    pub fn cmd(&self, args: &[&str]) -> Out {
        run_cmd(self.command(args), None, CMD_TIMEOUT)
    }

    pub fn cmd_timeout(&self, args: &[&str], timeout: Duration) -> Out {
        run_cmd(self.command(args), None, timeout)
    }

    pub fn cmd_stdin(&self, args: &[&str], stdin: &[u8]) -> Out {
        run_cmd(self.command(args), Some(stdin), CMD_TIMEOUT)
    }

    /// The arguments that put a new container on the runtime under test, and (unless
    /// `bridge`) on `--network none`.
    pub fn container_args(&self, bridge: bool) -> Vec<String> {
        let mut v = Vec::new();
        if self.engine == Engine::Docker {
            v.push(format!("--runtime={}", self.runtime));
        }
        if !bridge {
            v.push("--network=none".into());
        }
        v
    }

    /// `verb --runtime=<rt> --network=none args…` as arguments (for [`Cli::cmd_timeout`]).
    pub fn with_runtime(&self, verb: &str, args: &[&str]) -> Vec<String> {
        self.with_container_args(verb, false, args)
    }

    fn with_container_args(&self, verb: &str, bridge: bool, args: &[&str]) -> Vec<String> {
        let mut v = vec![verb.to_string()];
        v.extend(self.container_args(bridge));
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// `run --runtime=<rt> --network=none <args…>`.
    pub fn run(&self, args: &[&str]) -> Out {
        let v = self.with_container_args("run", false, args);
        self.cmd(&v.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `run` with stdin.
    pub fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Out {
        let v = self.with_container_args("run", false, args);
        self.cmd_stdin(&v.iter().map(String::as_str).collect::<Vec<_>>(), stdin)
    }

    /// `run --runtime=<rt> <args…>` on the default bridge network.
    pub fn run_bridge(&self, args: &[&str]) -> Out {
        let v = self.with_container_args("run", true, args);
        self.cmd(&v.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `create --runtime=<rt> --network=none <args…>`.
    pub fn create(&self, args: &[&str]) -> Out {
        let v = self.with_container_args("create", false, args);
        self.cmd(&v.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `run -d …` and returns the container id (panics if it did not start).
    #[track_caller]
    pub fn run_detached(&self, args: &[&str]) -> String {
        let mut v = vec!["-d"];
        v.extend_from_slice(args);
        let out = self.run(&v);
        out.ok();
        out.text().lines().last().unwrap_or("").to_string()
    }

    /// `inspect -f FORMAT NAME`, trimmed (panics if inspect fails).
    #[track_caller]
    pub fn inspect(&self, name: &str, format: &str) -> String {
        let out = self.cmd(&["inspect", "-f", format, name]);
        out.ok();
        out.text().to_string()
    }

    /// Waits until the container's State.Status is `status`.
    #[track_caller]
    pub fn wait_status(&self, name: &str, status: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.cmd(&["inspect", "-f", "{{.State.Status}}", name]);
            let last = if out.code == 0 {
                out.text().to_string()
            } else {
                out.stderr.trim().to_string()
            };
            if last == status {
                return;
            }
            if Instant::now() > deadline {
                let logs = self.cmd(&["logs", name]);
                panic!(
                    "container {name} did not reach status {status} within {timeout:?} (last: {last}); logs: {} {}",
                    logs.stdout, logs.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Ids of all containers (running or not).
    pub fn all_containers(&self) -> Vec<String> {
        let out = self.cmd(&["ps", "-aq", "--no-trunc"]);
        out.text()
            .lines()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn required_env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| {
        format!("{name} is not set: run this suite through `cargo xtask guest-test docker` (or podman), which builds and sets everything")
    })
}

/// Everything the harness observes to tell whether a container left something behind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub mounts: Vec<String>,
    pub taps: Vec<String>,
}

impl Snapshot {
    pub fn take() -> Self {
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .collect();
        mounts.sort();
        let mut taps: Vec<String> = std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("tun_flags").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        taps.sort();
        Self { mounts, taps }
    }

    /// What `now` has that `self` (the baseline) did not.
    pub fn new_in(&self, now: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for m in &now.mounts {
            if !self.mounts.contains(m) {
                out.push(format!("mount {m}"));
            }
        }
        for t in &now.taps {
            if !self.taps.contains(t) {
                out.push(format!("tap device {t}"));
            }
        }
        out
    }
}

/// (pid, comm, cmdline) of every process but this one.
pub fn process_table() -> Vec<(i32, String, String)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let comm = std::fs::read_to_string(e.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        if comm.is_empty() && cmdline.is_empty() {
            continue;
        }
        out.push((pid, comm, cmdline));
    }
    out
}

/// runvm monitors/guards, the virtiofsd serving a container's files, containerd shims
/// and conmons: what a removed container must not leave (nor a container that has ended).
pub fn container_processes() -> Vec<String> {
    process_table()
        .into_iter()
        .filter(|(_, comm, cmd)| {
            matches!(
                comm.as_str(),
                "runvm" | "runvm-guard" | "virtiofsd" | "conmon"
            ) || comm.starts_with("containerd-shim")
                || cmd.contains("containerd-shim-runc")
        })
        .map(|(pid, comm, cmd)| format!("{pid} {comm}: {}", short(&cmd, 200)))
        .collect()
}

/// Processes of a daemon whose command line mentions `needle` (our private directories).
fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    process_table()
        .into_iter()
        .filter(|(_, _, cmd)| cmd.contains(needle))
        .map(|(pid, comm, cmd)| (pid, format!("{pid} {comm}: {}", short(&cmd, 200))))
        .collect()
}

/// Entries of a runtime state directory (`--root`) and its namespaces' subdirectories.
fn state_entries(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && e.file_name() == "moby" {
            out.extend(state_entries(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// A private dockerd and its managed containerd.
struct Dockerd {
    dir: PathBuf,
    exec_root: PathBuf,
    sock: PathBuf,
    child: Option<std::process::Child>,
    default_runtime: String,
}

impl Dockerd {
    fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    /// Writes daemon.json and starts dockerd, waiting until its API answers.
    fn start(&mut self, runvm: &str, default_runtime: &str) -> Result<(), String> {
        let mut runtimes = serde_json::json!({ "runvm": { "path": runvm } });
        // crun, where installed, for the benchmark's comparison.
        if let Some(crun) = find_in_path("crun") {
            runtimes["crun"] = serde_json::json!({ "path": crun });
        }
        let config = serde_json::json!({
            "runtimes": runtimes,
            "default-runtime": default_runtime,
            "bridge": BRIDGE,
            "log-level": "info",
        });
        let config_path = self.dir.join("daemon.json");
        std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap())
            .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("opening {}: {e}", self.log_path().display()))?;
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(&self.exec_root)
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", self.sock.display()))
            .arg("--config-file")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        // runvm must find its kernel and initramfs next to itself, as in real use.
        for k in [
            "RUNVM_KERNEL",
            "RUNVM_INITRAMFS",
            "RUNVM_BIN",
            "RUNVM_TEST_ROOTFS",
        ] {
            cmd.env_remove(k);
        }
        // containerd finds runvm's shim v2 (`containerd-shim-runvm-v2`, built beside
        // runvm) on its PATH, as where the two are installed together.
        if let Some(dir) = Path::new(runvm).parent() {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", dir.display()));
        }
        // Twenty guests booting at once under TCG take longer than runvm's default 60 s
        // (the variable reaches runvm through containerd and its shim).
        if std::env::var_os("RUNVM_BOOT_TIMEOUT").is_none() {
            cmd.env("RUNVM_BOOT_TIMEOUT", "600");
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start dockerd (is docker.io installed?): {e}"))?;
        self.child = Some(child);
        self.default_runtime = default_runtime.to_string();
        let start = Instant::now();
        let ping = |sock: &Path| {
            let out = Command::new("curl")
                .args(["-s", "--max-time", "5", "--unix-socket"])
                .arg(sock)
                .arg("http://localhost/_ping")
                .output();
            matches!(out, Ok(o) if o.stdout == b"OK")
        };
        loop {
            if ping(&self.sock) {
                println!(
                    "[harness] dockerd answers after {:.1}s (default runtime {default_runtime})",
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "dockerd exited ({st}) before answering; its log:\n{}",
                        self.log_tail()
                    ));
                }
            }
            if start.elapsed() > Duration::from_secs(180) {
                // Not left running behind a failed setup.
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(format!(
                    "dockerd did not answer on {} within 180 s; its log:\n{}",
                    self.sock.display(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops dockerd (SIGTERM; it stops its containers and containerd) and waits for it.
    /// Returns what went wrong.
    fn stop(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(mut child) = self.child.take() else {
            return problems;
        };
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if start.elapsed() < Duration::from_secs(120) => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    problems.push(format!(
                        "dockerd did not stop within 120 s of SIGTERM (killed); its log:\n{}",
                        self.log_tail()
                    ));
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        println!(
            "[harness] dockerd stopped after {:.1}s",
            start.elapsed().as_secs_f64()
        );
        // Its managed containerd exits with it.
        let needle = self.exec_root.display().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !processes_mentioning(&needle).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        problems
    }
}

/// The private world of one suite binary (or of `cargo xtask bench docker`): the engine
/// set up with its own directories, the busybox image imported.
pub struct World {
    engine: Engine,
    dir: PathBuf,
    runvm: String,
    cli: Cli,
    dockerd: Option<Dockerd>,
    /// Where the runtime keeps its state (its `--root`).
    state_root: PathBuf,
    baseline: Snapshot,
    images: Vec<String>,
}

impl World {
    /// Sets the engine up (for Docker: starts dockerd) and imports the busybox image.
    pub fn setup(engine: Engine) -> Result<World, String> {
        let runvm = required_env("RUNVM_BIN")?;
        let runtime = std::env::var("RUNVM_DOCKER_RUNTIME").unwrap_or_else(|_| "runvm".into());
        let base = std::env::var_os("RUNVM_DOCKER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/runvm-test"));
        let dir = base.join(format!("{}-{}", engine.program(), std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // Unix socket paths are short: the exec root lives under /run.
        let run_dir = PathBuf::from(format!("/run/runvm-test-{}", std::process::id()));
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| format!("creating {}: {e}", run_dir.display()))?;
        println!(
            "[harness] {} suite: runtime {runtime}, private directory {}",
            engine.program(),
            dir.display()
        );
        let mut world = match engine {
            Engine::Docker => {
                setup_bridge()?;
                let exec_root = run_dir.join("docker");
                let sock = run_dir.join("docker.sock");
                let cli = Cli {
                    engine,
                    global: vec!["--host".into(), format!("unix://{}", sock.display())],
                    env: vec![(
                        "DOCKER_CONFIG".into(),
                        dir.join("cli").display().to_string(),
                    )],
                    runtime: runtime.clone(),
                };
                let state_root = exec_root.join(format!("runtime-{runtime}"));
                let mut d = Dockerd {
                    dir: dir.clone(),
                    exec_root,
                    sock,
                    child: None,
                    default_runtime: String::new(),
                };
                d.start(&runvm, "runc")?;
                World {
                    engine,
                    dir: dir.clone(),
                    runvm: runvm.clone(),
                    cli,
                    dockerd: Some(d),
                    state_root,
                    baseline: Snapshot::default(),
                    images: vec![],
                }
            }
            Engine::Podman => {
                // The runtime's default state root, as in real use: podman passes
                // `--runtime-flag`s to the runtime calls it makes itself, but not to the
                // `podman container cleanup` that conmon runs when the container exits,
                // whose `delete` would then look in the default root and miss the
                // container (leaving its state directory behind).
                let state_root = PathBuf::from(if runtime == "runvm" {
                    "/run/runvm"
                } else {
                    "/run/runc"
                });
                let runtime_path = if runtime == "runvm" {
                    runvm.clone()
                } else {
                    runtime.clone()
                };
                let global = vec![
                    "--root".to_string(),
                    dir.join("storage").display().to_string(),
                    "--runroot".into(),
                    run_dir.join("podman").display().to_string(),
                    "--tmpdir".into(),
                    run_dir.join("libpod").display().to_string(),
                    "--storage-driver".into(),
                    "overlay".into(),
                    "--cgroup-manager".into(),
                    "cgroupfs".into(),
                    "--events-backend".into(),
                    "file".into(),
                    "--runtime".into(),
                    runtime_path,
                ];
                World {
                    engine,
                    dir: dir.clone(),
                    runvm: runvm.clone(),
                    cli: Cli {
                        engine,
                        global,
                        env: vec![],
                        runtime: runtime.clone(),
                    },
                    dockerd: None,
                    state_root,
                    baseline: Snapshot::default(),
                    images: vec![],
                }
            }
        };
        world.import_busybox()?;
        world.baseline = Snapshot::take();
        Ok(world)
    }

    /// Imports the busybox root filesystem as image `busybox` (cached tarball).
    fn import_busybox(&mut self) -> Result<(), String> {
        let tar = busybox_tarball()?;
        let name = match self.engine {
            Engine::Docker => "busybox:latest",
            Engine::Podman => "localhost/busybox:latest",
        };
        let out = self.cli.cmd(&["import", &tar.display().to_string(), name]);
        if out.code != 0 {
            return Err(format!(
                "importing the busybox image failed: {}",
                out.describe()
            ));
        }
        self.images.push(BUSYBOX.into());
        Ok(())
    }

    /// Removes every container; then waits (up to `grace`) until nothing of them is left,
    /// and returns what still is.
    fn clean_and_check(&mut self, grace: Duration) -> Vec<String> {
        let ids = self.cli.all_containers();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            if self.engine == Engine::Podman {
                args.push("-t0");
            }
            args.extend(ids.iter().map(String::as_str));
            self.cli.cmd(&args);
        }
        let deadline = Instant::now() + grace;
        loop {
            let mut left = Vec::new();
            let remaining = self.cli.all_containers();
            if !remaining.is_empty() {
                left.push(format!("containers not removed: {remaining:?}"));
            }
            left.extend(
                container_processes()
                    .into_iter()
                    .map(|p| format!("process {p}")),
            );
            left.extend(
                state_entries(&self.state_root)
                    .into_iter()
                    .map(|s| format!("runtime state {s}")),
            );
            left.extend(self.baseline.new_in(&Snapshot::take()));
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn cli(&self) -> &Cli {
        &self.cli
    }

    /// The end of the suite: stop the daemon, then check that nothing of it is left.
    /// Returns what was left (and has now been killed or unmounted).
    pub fn teardown(&mut self) -> Vec<String> {
        let mut problems = self.clean_and_check(Duration::from_secs(30));
        if self.engine == Engine::Podman {
            let out = self.cli.cmd(&["system", "reset", "--force"]);
            if out.code != 0 {
                problems.push(format!("podman system reset failed: {}", out.describe()));
            }
        }
        if let Some(d) = self.dockerd.as_mut() {
            problems.extend(d.stop());
        }
        let needles = [
            self.dir.display().to_string(),
            format!("/run/runvm-test-{}", std::process::id()),
        ];
        for needle in &needles {
            for (pid, p) in processes_mentioning(needle) {
                problems.push(format!("process left after the suite: {p}"));
                // SAFETY: kill(2) of a leftover process of our own daemon.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let mut mounts: Vec<String> = Snapshot::take()
            .mounts
            .into_iter()
            .filter(|m| needles.iter().any(|n| m.starts_with(n.as_str())))
            .collect();
        // The storage/data root bind-mounted onto itself by the engine is expected; the
        // engines remove it on a clean stop, but podman has no stop: unmount it quietly.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            // The engines bind-mount their storage home onto itself (dockerd: the data
            // root; podman: storage/overlay); that one is theirs, not a container's.
            let own_home =
                m.ends_with("/storage/overlay") || m == format!("{}/data", self.dir.display());
            if !own_home {
                problems.push(format!("mount left after the suite: {m}"));
            }
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        if self.engine == Engine::Docker {
            let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(format!("/run/runvm-test-{}", std::process::id()));
        problems
    }
}

/// The full path of `program` if it is on PATH.
pub fn find_in_path(program: &str) -> Option<String> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// The bridge our dockerd uses for its default `bridge` network (so it never touches a
/// `docker0` of a Docker already running on this host).
fn setup_bridge() -> Result<(), String> {
    let cidr =
        std::env::var("RUNVM_DOCKER_BRIDGE_CIDR").unwrap_or_else(|_| BRIDGE_CIDR_DEFAULT.into());
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
    for args in [
        vec!["link", "add", BRIDGE, "type", "bridge"],
        vec!["addr", "add", &cidr, "dev", BRIDGE],
        vec!["link", "set", BRIDGE, "up"],
    ] {
        let out = Command::new("ip")
            .args(&args)
            .output()
            .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(())
}

/// A tarball of `$RUNVM_TEST_ROOTFS`, cached next to it (keyed by busybox's version stamp).
pub fn busybox_tarball() -> Result<PathBuf, String> {
    let rootfs = PathBuf::from(required_env("RUNVM_TEST_ROOTFS")?);
    let stamp = std::fs::read_to_string(rootfs.join(".runvm-busybox-version")).unwrap_or_default();
    let parent = rootfs.parent().unwrap_or(Path::new("/tmp")).join("images");
    let tar = parent.join(format!(
        "busybox-{}.tar",
        stamp.trim().replace(['/', ' ', ':'], "_")
    ));
    if tar.is_file() {
        return Ok(tar);
    }
    std::fs::create_dir_all(&parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let tmp = tar.with_extension(format!("tmp{}", std::process::id()));
    let out = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args([
            "--exclude=./.runvm-busybox-version",
            "--numeric-owner",
            "-cf",
        ])
        .arg(&tmp)
        .arg(".")
        .output()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tar of {} failed: {}",
            rootfs.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::rename(&tmp, &tar).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
    Ok(tar)
}

/// What a test gets: the CLI, the runtime's name, and control over the daemon.
pub struct Harness<'a> {
    world: &'a mut World,
    /// A scratch directory for this test (removed afterwards).
    pub tmp: PathBuf,
}

impl Harness<'_> {
    pub fn cli(&self) -> &Cli {
        &self.world.cli
    }

    pub fn engine(&self) -> Engine {
        self.world.engine
    }

    /// Whether the runtime under test is runvm (not a runc control run).
    pub fn is_runvm(&self) -> bool {
        self.world.cli.runtime == "runvm"
    }

    pub fn runvm_bin(&self) -> &str {
        &self.world.runvm
    }

    /// Docker's API socket (Docker suites only).
    pub fn docker_socket(&self) -> PathBuf {
        self.world
            .dockerd
            .as_ref()
            .map(|d| d.sock.clone())
            .expect("the Docker socket exists in the Docker suite only")
    }

    /// Docker's exec root (its managed containerd's socket is `containerd/containerd.sock` there).
    pub fn docker_exec_root(&self) -> PathBuf {
        self.world
            .dockerd
            .as_ref()
            .map(|d| d.exec_root.clone())
            .expect("Docker suite only")
    }

    /// The lines of dockerd's log (with its managed containerd's) that contain `needle`.
    pub fn docker_log_lines(&self, needle: &str) -> Vec<String> {
        let d = self.world.dockerd.as_ref().expect("Docker suite only");
        std::fs::read_to_string(d.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Restarts dockerd with `default_runtime` (`runvm` for the `docker build` test). The
    /// next test gets the standard daemon (default runtime runc) back.
    pub fn restart_daemon(&mut self, default_runtime: &str) {
        let runvm = self.world.runvm.clone();
        let d = self.world.dockerd.as_mut().expect("Docker suite only");
        let problems = d.stop();
        assert!(problems.is_empty(), "stopping dockerd: {problems:?}");
        d.start(&runvm, default_runtime)
            .unwrap_or_else(|e| panic!("restarting dockerd: {e}"));
    }

    /// Builds (once per suite) image `name` from `dockerfile` (FROM the busybox image).
    pub fn image(&mut self, name: &str, dockerfile: &str) -> String {
        if self.world.images.iter().any(|i| i == name) {
            return name.to_string();
        }
        let dir = self.tmp.join(format!("build-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        let dir_s = dir.display().to_string();
        let out = match self.world.engine {
            Engine::Docker => self.world.cli.cmd(&["build", "-q", "-t", name, &dir_s]),
            Engine::Podman => self.world.cli.cmd(&[
                "build",
                "-q",
                "--pull=never",
                "--network=none",
                "-t",
                name,
                &dir_s,
            ]),
        };
        out.ok();
        self.world.images.push(name.to_string());
        name.to_string()
    }

    /// The image reference of the busybox image for this engine.
    pub fn busybox(&self) -> &'static str {
        match self.world.engine {
            Engine::Docker => "busybox",
            Engine::Podman => "localhost/busybox",
        }
    }

    /// Asserts now (not only after the test) that no container of this test left
    /// anything behind (after removing every container).
    #[track_caller]
    pub fn assert_nothing_left(&mut self) {
        let left = self.world.clean_and_check(Duration::from_secs(30));
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

static WORLD: Mutex<Option<Result<World, String>>> = Mutex::new(None);

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "test panicked".into())
}

/// Runs one test: sets the world up if needed, runs the body, removes its containers and
/// checks that nothing is left.
fn run_one(engine: Engine, name: &str, body: TestFn) -> Result<(), Failed> {
    let mut guard = WORLD.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(World::setup(engine));
    }
    let world = match guard.as_mut().unwrap() {
        Ok(w) => w,
        Err(e) => return Err(format!("harness setup failed: {e}").into()),
    };
    println!("\n[harness] ── {name} ──");
    // The standard daemon for every test.
    if let Some(d) = world.dockerd.as_mut() {
        if d.child.is_none() || d.default_runtime != "runc" {
            let problems = d.stop();
            if !problems.is_empty() {
                return Err(format!("stopping dockerd to restart it: {problems:?}").into());
            }
            if let Err(e) = d.start(&world.runvm, "runc") {
                return Err(format!("restarting dockerd: {e}").into());
            }
        }
    }
    let tmp = world.dir.join("tmp").join(name);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)
        .map_err(|e| Failed::from(format!("creating {}: {e}", tmp.display())))?;
    let start = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut h = Harness {
            world: &mut *world,
            tmp: tmp.clone(),
        };
        body(&mut h)
    }));
    let left = world.clean_and_check(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "[harness] {name}: {} in {:.1}s",
        if result.is_ok() && left.is_empty() {
            "ok"
        } else {
            "FAILED"
        },
        start.elapsed().as_secs_f64()
    );
    let mut msg = String::new();
    if let Err(e) = &result {
        msg.push_str(&panic_message(e.as_ref()));
    }
    if !left.is_empty() {
        msg.push_str(&format!(
            "\nleft behind after the test's containers were removed: {left:#?}"
        ));
    }
    if msg.is_empty() {
        Ok(())
    } else {
        Err(msg.into())
    }
}

/// The `main` of a suite binary: runs `tests` (only with `--ignored`: they need the
/// engine and guests), one at a time, then tears the engine down and checks for leaks.
pub fn main(engine: Engine, tests: &[(&'static str, TestFn)]) {
    // Started in a container as the socket client of a test (`crate::socket_client`).
    if crate::socket_client::run_if_asked() {
        return;
    }
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    // A failing test's message says what failed; a backtrace of the harness does not help.
    std::panic::set_hook(Box::new(|info| {
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        println!(
            "\n[harness] assertion failed at {loc}: {}",
            panic_message(info.payload())
        );
    }));
    let trials = tests
        .iter()
        .map(|&(name, body)| {
            Trial::test(name, move || run_one(engine, name, body)).with_ignored_flag(true)
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let mut guard = WORLD.lock().unwrap_or_else(|e| e.into_inner());
    let mut leaked = Vec::new();
    if let Some(Ok(world)) = guard.as_mut() {
        leaked = world.teardown();
    }
    if !leaked.is_empty() {
        println!(
            "[harness] the {} suite left things behind: {leaked:#?}",
            engine.program()
        );
        std::process::exit(1);
    }
    conclusion.exit();
}

/// The kernel release string embedded in a kernel image ("Linux version X ...").
pub fn kernel_release(image: &Path) -> Option<String> {
    let data = std::fs::read(image).ok()?;
    let needle = b"Linux version ";
    let pos = data.windows(needle.len()).position(|w| w == needle)?;
    let rest = &data[pos + needle.len()..];
    let end = rest.iter().position(|&b| b == b' ' || b == 0)?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

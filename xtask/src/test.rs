//! `cargo xtask test`: the README's test command, and all that CI runs. Lints, unit
//! tests, then the tests that need the runvm binary, then the guest-booting tests,
//! directly or inside the nested test host (decided by trying), in one test-host boot.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::guests::{GuestSetup, Place};
use crate::testhost::{self, TestHostEnd};
use crate::util::{ensure_apt, Step};

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Paths of the `runvm-tests` integration test executables, by test name.
fn test_executables() -> Result<Vec<(String, PathBuf)>> {
    let out = cargo()
        .args([
            "test",
            "-p",
            "runvm-tests",
            "--no-run",
            "--message-format=json",
            "--quiet",
        ])
        .output()
        .context("building the integration tests")?;
    if !out.status.success() {
        bail!(
            "building the integration tests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["kind"][0] == "test" {
            if let (Some(name), Some(exe)) =
                (v["target"]["name"].as_str(), v["executable"].as_str())
            {
                exes.push((name.to_string(), PathBuf::from(exe)));
            }
        }
    }
    Ok(exes)
}

/// What became of one stage of `cargo xtask test`.
enum Outcome {
    Passed,
    Failed,
    /// It passed on a later attempt; the note says what ended the earlier ones.
    PassedOnRerun(String),
}

impl Outcome {
    /// Passed or failed, as a stage's `ok` says.
    fn of(ok: bool) -> Self {
        if ok {
            Self::Passed
        } else {
            Self::Failed
        }
    }
}

/// Every stage's outcome and time, for the closing count and the stage table.
#[derive(Default)]
struct Tally {
    stages: Vec<(String, Outcome, Duration)>,
    /// When the stage being run began.
    began: Option<Instant>,
}

impl Tally {
    /// Marks the start of the next stage (its time runs until it is recorded).
    fn begin(&mut self) {
        self.began = Some(Instant::now());
    }

    fn record(&mut self, name: &str, outcome: Outcome) {
        let took = self.began.take().map(|t| t.elapsed()).unwrap_or_default();
        let word = match &outcome {
            Outcome::Passed => "ok".to_string(),
            Outcome::Failed => "FAILED".to_string(),
            Outcome::PassedOnRerun(why) => format!("ok on a rerun ({why})"),
        };
        eprintln!(
            "[test] {name}: {word} ({})",
            crate::util::fmt_duration(took)
        );
        self.stages.push((name.to_string(), outcome, took));
    }

    fn record_ok(&mut self, name: &str, ok: bool) {
        self.record(name, Outcome::of(ok));
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.stages.iter().filter(|(_, o, _)| f(o)).count()
    }

    /// The stage table and the closing line; the exit code.
    fn close(&self, total: Duration) -> i32 {
        use crate::util::fmt_duration;
        println!("\n| stage | result | time |\n|---|---|---|");
        for (name, outcome, took) in &self.stages {
            let result = match outcome {
                Outcome::Passed => "ok".to_string(),
                Outcome::Failed => "**FAILED**".to_string(),
                Outcome::PassedOnRerun(why) => format!("ok on a rerun ({why})"),
            };
            println!("| {name} | {result} | {} |", fmt_duration(*took));
        }
        println!("| **all** | | {} |\n", fmt_duration(total));
        let failed = self.count(|o| matches!(o, Outcome::Failed));
        let rerun = self.count(|o| matches!(o, Outcome::PassedOnRerun(_)));
        println!(
            "test suites: {} passed, {failed} failed, {rerun} passed only on a rerun, in {}",
            self.count(|o| matches!(o, Outcome::Passed)),
            fmt_duration(total),
        );
        if failed > 0 {
            let names: Vec<&str> = self
                .stages
                .iter()
                .filter(|(_, o, _)| matches!(o, Outcome::Failed))
                .map(|(n, _, _)| n.as_str())
                .collect();
            eprintln!("[test] failed: {}", names.join(", "));
            return 1;
        }
        0
    }
}

fn status_ok(cmd: &mut Command) -> Result<bool> {
    Ok(cmd
        .status()
        .with_context(|| format!("running {cmd:?}"))?
        .success())
}

/// Environment variables that size or show the test host but do not change what is
/// tested: `cargo xtask test` keeps them. Every other `RUNVM_*` knob is scrubbed.
const HARNESS_KNOBS: &[&str] = &[
    "RUNVM_TESTHOST_CONSOLE",
    "RUNVM_TESTHOST_VERBOSE",
    "RUNVM_TESTHOST_MEM",
    "RUNVM_TESTHOST_SMP",
    "RUNVM_TESTHOST_TIMEOUT",
    "RUNVM_TESTHOST_IDLE_TIMEOUT",
];

/// Removes from this process's environment (and so from everything it starts, the
/// test host included) every `RUNVM_*` variable that would change what CI tests
/// (`RUNVM_PLACE`, `RUNVM_DOCKER_RUNTIME`, `RUNVM_NO_SECCOMP`, …), saying so.
/// Runs before any thread is started.
fn scrub_environment() -> Vec<String> {
    let mut scrubbed = Vec::new();
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if k.starts_with("RUNVM_") && !HARNESS_KNOBS.contains(&k) {
            scrubbed.push(k.to_string());
        }
    }
    for k in &scrubbed {
        std::env::remove_var(k);
        eprintln!("[test] ignoring {k} from the environment: CI tests runvm as users run it");
    }
    scrubbed
}

/// Suites that were built but are in no list: they would never run.
fn unlisted_suites(built: &[(String, PathBuf)]) -> Vec<String> {
    built
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !HOST_SUITES.contains(&n.as_str()) && !GUEST_SUITES.contains(&n.as_str()))
        .collect()
}

pub fn cmd_test() -> Result<i32> {
    let started = Instant::now();
    scrub_environment();
    ensure_apt(&[
        "busybox-static",
        "erofs-utils",
        "e2fsprogs",
        "util-linux",
        "procps",
        "cpio",
        // The cli suite compares runvm's command line with runc's.
        "runc",
        // runvm links libseccomp (linux.seccomp is compiled on the host): clippy and the
        // unit tests below build it, so this comes before them.
        "libseccomp-dev",
    ])?;
    // cri-client (linted and unit-tested below) generates its code from the CRI api.proto.
    let cri_proto = crate::cri::ensure_proto()?;
    let mut t = Tally::default();

    let mut step = Step::new("test");
    step.phase("cargo fmt --check");
    t.begin();
    t.record_ok(
        "cargo fmt --check",
        status_ok(cargo().args(["fmt", "--all", "--", "--check"]))?,
    );
    step.phase("cargo clippy --all-targets -D warnings");
    t.begin();
    t.record_ok(
        "cargo clippy",
        status_ok(cargo().env("RUNVM_CRI_PROTO", &cri_proto).args([
            "clippy",
            "--quiet",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?,
    );
    step.phase("unit tests and guest-init host-mode tests (cargo test --workspace)");
    t.begin();
    t.record_ok(
        "cargo test --workspace",
        status_ok(
            cargo()
                .env("RUNVM_CRI_PROTO", &cri_proto)
                .args(["test", "--workspace"]),
        )?,
    );

    step.phase("building runvm, the guest kernel, the initramfs and the test rootfs");
    t.begin();
    let setup = GuestSetup::prepare()?;
    let exes = test_executables()?;
    let unlisted = unlisted_suites(&exes);
    if !unlisted.is_empty() {
        eprintln!(
            "[test] integration suites in no list of xtask/src/test.rs (HOST_SUITES or \
             GUEST_SUITES), so they would never run: {}",
            unlisted.join(", ")
        );
    }
    t.record_ok(
        "build, and every integration suite is listed",
        unlisted.is_empty(),
    );
    let exe = |name: &str| -> Result<String> {
        exes.iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.display().to_string())
            .with_context(|| format!("integration test {name} was not built"))
    };

    for suite in HOST_SUITES {
        step.phase(&format!("runvm {suite} tests (no guest needed)"));
        t.begin();
        let mut c = Command::new(exe(suite)?);
        c.args(["--ignored", "--test-threads=2"]).envs(setup.env());
        t.record_ok(suite, status_ok(&mut c)?);
    }

    let place = setup.choose_place()?;
    if place == Place::TestHost {
        step.phase("test host passes exit codes through (sh -c 'exit 7')");
        t.begin();
        let code = testhost::run_in_testhost(&["sh".into(), "-c".into(), "exit 7".into()], &[])?;
        t.record_ok("testhost exit code 7", code == 7);
    }
    // The OCI validation suite and then runc's bats files, against runc and runvm in the
    // same place, once each. In the test host they run in test hosts of their own beside
    // the guest suites' (each is one single-threaded QEMU: together they use both cores);
    // directly on this host they run after them, so that the guest suites' leak checks do
    // not see their containers.
    let oci_args = crate::oci::OciArgs {
        runtimes: vec!["runc".into(), setup.runvm.display().to_string()],
        timeout: 180,
        check: true,
        ..Default::default()
    };
    let run_oci = |args| timed("OCI validation suite", || crate::oci::cmd_oci(args));
    // runc's own integration suite (bats), the files that fit beside the guest suites; the
    // rest runs in `cargo xtask runc-bats`.
    let bats_args = crate::runc_bats::RuncBatsArgs {
        runtimes: vec!["runc".into(), setup.runvm.display().to_string()],
        only: CI_BATS_FILES.iter().map(|f| f.to_string()).collect(),
        timeout: 900,
        test_timeout: 180,
        check: true,
        ..Default::default()
    };
    let run_bats = |args| {
        timed("runc's integration suite", || {
            crate::runc_bats::cmd_runc_bats(args)
        })
    };
    // A Kubernetes pod through containerd's CRI plugin, under runvm's shim (one VM for
    // the pod) and runc's.
    let run_cri = || {
        timed("CRI smoke test", || {
            crate::cri::cmd_cri_smoke(crate::cri::CriSmokeArgs::default())
        })
    };
    const CRI: &str =
        "CRI smoke test: a pod of two containers under runvm's shim v2 (one VM) and runc's";
    const OCI: &str =
        "OCI validation suite (runvm passes what it passed before, and what runc passes)";
    let bats_stage = format!(
        "runc's bats files ({}): runvm passes what it passed before, and what runc passes",
        CI_BATS_FILES.len()
    );
    let guest_tests = format!("guest tests ({})", GUEST_SUITES.join(", "));
    let (guests, oci) = if place == Place::TestHost {
        step.phase(&format!(
            "guest tests ({}) and, in a second test host, the OCI validation suite, then \
             runc's bats files, then the CRI smoke test",
            GUEST_SUITES.join(", ")
        ));
        // What the second test host's suites build on this host is built first: built
        // beside the two test hosts, it took the cores their emulated CPUs run on (on a
        // fresh machine, runvm-crictl's compile overlapped Docker's twenty containers
        // stopping at once, and six of them missed Docker's deadline).
        build_beside_suites();
        std::thread::scope(|s| {
            let oci = s.spawn(|| (run_oci(oci_args), run_bats(bats_args), run_cri()));
            // All guest suites in one go (one test-host boot): each runs even if another
            // fails.
            let began = Instant::now();
            let guests = run_guest_suites(&setup, place, &exes, GUEST_SUITES, &[], &[]);
            let oci = oci.join().unwrap_or((
                (false, Duration::ZERO),
                (false, Duration::ZERO),
                (false, Duration::ZERO),
            ));
            ((guests, began.elapsed()), oci)
        })
    } else {
        step.phase(&format!("guest tests: {}", GUEST_SUITES.join(", ")));
        let began = Instant::now();
        let guests = run_guest_suites(&setup, place, &exes, GUEST_SUITES, &[], &[]);
        let guests = (guests, began.elapsed());
        step.phase("OCI validation suite (runc, then runvm)");
        let oci = run_oci(oci_args);
        step.phase("runc's integration suite (runc, then runvm)");
        let bats = run_bats(bats_args);
        step.phase("CRI smoke test (runvm's shim, then runc's)");
        (guests, (oci, bats, run_cri()))
    };
    let (oci, bats, cri) = oci;
    let (guest_run, guest_time) = guests;
    let guest_run = guest_run?;
    t.stages
        .push((guest_tests.clone(), guest_run.outcome(), guest_time));
    eprintln!("[test] {guest_tests}: {}", guest_run.describe());
    t.stages.push((OCI.to_string(), Outcome::of(oci.0), oci.1));
    t.stages.push((bats_stage, Outcome::of(bats.0), bats.1));
    t.stages.push((CRI.to_string(), Outcome::of(cri.0), cri.1));

    let left = leftover_processes();
    t.record_ok("no runvm process left on the host", left.is_empty());
    if !left.is_empty() {
        eprintln!("[test] left behind: {left:?}");
    }
    drop(step);
    Ok(t.close(started.elapsed()))
}

/// Builds what the OCI validation suite, runc's bats files and the CRI smoke test need
/// on this host. A build that fails here is only reported: its stage builds again, and
/// fails with the reason.
fn build_beside_suites() {
    let report = |what: &str, built: Result<()>| {
        if let Err(e) = built {
            eprintln!("[test] building {what} failed ({e:#}); its stage will say why");
        }
    };
    report(
        "the OCI validation suite",
        crate::oci::cmd_oci(crate::oci::OciArgs {
            build_only: true,
            ..Default::default()
        })
        .map(drop),
    );
    report(
        "runc's bats files",
        crate::runc_bats::cmd_runc_bats(crate::runc_bats::RuncBatsArgs {
            build_only: true,
            ..Default::default()
        })
        .map(drop),
    );
    report(
        "the CRI smoke test's client and images",
        crate::cri::build_crictl().and_then(|_| crate::cri::build_images().map(drop)),
    );
}

/// Runs a conformance suite (`what`, for its error line): whether it exited 0, and how
/// long it took.
fn timed(what: &str, suite: impl FnOnce() -> Result<i32>) -> (bool, Duration) {
    let began = Instant::now();
    let ok = suite().map(|code| code == 0).unwrap_or_else(|e| {
        eprintln!("[test] {what}: {e:#}");
        false
    });
    (ok, began.elapsed())
}

/// The files of runc's integration suite CI runs (against runc and runvm, checked against
/// `xtask/runc-bats-expected.json`): those about the runc CLI and the container lifecycle
/// that fit beside the guest suites. `cargo xtask runc-bats` runs them all.
pub const CI_BATS_FILES: &[&str] = &[
    "create",
    "delete",
    "exec",
    "help",
    "kill",
    "list",
    "run",
    "spec",
    "start",
    "start_detached",
    "start_hello",
    "state",
    "tty",
    "version",
    "umask",
    "cwd",
    "root",
    "mounts",
    "mounts_recursive",
    "mask",
    "no_pivot",
    "ps",
    "events",
    "seccomp",
    "debug",
];

/// The integration test binaries (in `tests/tests/`) that need the runvm binary but boot
/// no guest: they run on this host, before the guest suites.
pub const HOST_SUITES: &[&str] = &["bad_input", "features", "cli"];

/// The integration test binaries (in `tests/tests/`) that boot guests, in the order CI runs
/// them. Add a new guest suite here.
pub const GUEST_SUITES: &[&str] = &[
    "boot",
    "lifecycle",
    "exec",
    "tty",
    "share",
    "network",
    "hostile",
    "hooks",
    "process",
    "control",
    "podman",
    "docker_net",
    "docker",
    "warm",
];

/// How a run of the guest suites went.
pub struct GuestRun {
    /// The suites' exit code (0: all passed) on the last attempt.
    code: i32,
    /// Why each earlier attempt ended without an exit status (the test host froze or died).
    reruns: Vec<String>,
}

impl GuestRun {
    fn outcome(&self) -> Outcome {
        match (self.code, self.reruns.is_empty()) {
            (0, true) => Outcome::Passed,
            (0, false) => Outcome::PassedOnRerun(self.reruns.join("; ")),
            _ => Outcome::Failed,
        }
    }

    fn describe(&self) -> String {
        let mut s = if self.code == 0 {
            "every suite passed".to_string()
        } else {
            format!("a suite failed (exit {})", self.code)
        };
        for (i, why) in self.reruns.iter().enumerate() {
            s.push_str(&format!(
                "; attempt {} ended without an exit status: {why}",
                i + 1
            ));
        }
        s
    }
}

/// Runs the named guest suites, each with `--ignored --test-threads=2` plus `test_args`,
/// in one go where guests boot (one test-host boot), with `extra` in their environment.
/// Every suite runs even if another fails. A test host that froze or died without an
/// exit status ([`TestHostEnd::worth_a_rerun`]) is run once more; the reruns are in the
/// result, so that the caller's tally shows them.
fn run_guest_suites(
    setup: &GuestSetup,
    place: Place,
    exes: &[(String, PathBuf)],
    suites: &[&str],
    test_args: &[String],
    extra: &[(String, String)],
) -> Result<GuestRun> {
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        // Test arguments come through $RUNVM_TEST_ARGS (split on whitespace).
        "rc=0; for t in \"$@\"; do \"$t\" --ignored --test-threads=2 $RUNVM_TEST_ARGS || rc=1; done; exit $rc"
            .into(),
        "guest-tests".into(),
    ];
    for name in suites {
        let exe = exes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.display().to_string())
            .with_context(|| {
                format!("integration test {name} was not built (is it in tests/tests/?)")
            })?;
        argv.push(exe);
    }
    let mut env = vec![("RUNVM_TEST_ARGS".to_string(), test_args.join(" "))];
    env.extend_from_slice(extra);
    if suites.contains(&"hostile") {
        // The hostile guest init, built only for the suite that boots it.
        let hostile = crate::initramfs::hostile_initramfs()?;
        env.push((
            "RUNVM_HOSTILE_INITRAMFS".to_string(),
            hostile.display().to_string(),
        ));
    }
    const ATTEMPTS: usize = 2;
    let mut reruns = Vec::new();
    loop {
        match setup.run_at(place, &argv, &env) {
            Ok(code) => return Ok(GuestRun { code, reruns }),
            Err(e) => {
                let rerun = e
                    .downcast_ref::<TestHostEnd>()
                    .is_some_and(TestHostEnd::worth_a_rerun);
                if !rerun || reruns.len() + 1 >= ATTEMPTS {
                    return Err(e);
                }
                eprintln!(
                    "[test] {e:#}; running the guest tests again (attempt {} of {ATTEMPTS})",
                    reruns.len() + 2
                );
                reruns.push(format!("{e:#}"));
            }
        }
    }
}

/// `cargo xtask guest-test SUITE… [-- TEST-ARGS…]`: builds what guests need and runs the
/// named guest suites where guests boot (directly or in the test host), in one go.
/// TEST-ARGS go to every suite binary (a test-name filter, `--nocapture`, …).
pub fn cmd_guest_test(suites: &[String], test_args: &[String]) -> Result<i32> {
    let setup = GuestSetup::prepare()?;
    let exes = test_executables()?;
    let place = setup.choose_place()?;
    let names: Vec<&str> = if suites.is_empty() {
        GUEST_SUITES.to_vec()
    } else {
        suites.iter().map(String::as_str).collect()
    };
    // The Docker/Podman suites' knobs (RUNVM_DOCKER_RUNTIME=runc for a control run, …):
    // for this developer command only; `cargo xtask test` scrubs them.
    let knobs: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("RUNVM_DOCKER_"))
        .collect();
    let run = run_guest_suites(&setup, place, &exes, &names, test_args, &knobs)?;
    eprintln!("[test] guest tests: {}", run.describe());
    let code = run.code;

    let left = leftover_processes();
    if !left.is_empty() {
        eprintln!("[test] left behind on the host: {left:?}");
        return Ok(1);
    }
    Ok(code)
}

/// runvm processes (monitors, cleanup guards) and file-sharing daemons still alive on
/// this host.
fn leftover_processes() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if ["runvm", "runvm-guard", "virtiofsd"].contains(&comm.trim()) {
            out.push(format!("{name} {}", comm.trim()));
        }
    }
    out
}

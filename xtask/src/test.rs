//! `cargo xtask test`: the README's test command, and all that CI runs. Lints, unit
//! tests, then the tests that need the runvm binary, then the guest-booting tests,
//! directly or inside the nested test host (decided by trying), in one test-host boot.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::guests::{GuestSetup, Place};
use crate::testhost;
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

struct Tally {
    passed: Vec<String>,
    failed: Vec<String>,
}

impl Tally {
    fn record(&mut self, name: &str, ok: bool) {
        eprintln!("[test] {name}: {}", if ok { "ok" } else { "FAILED" });
        if ok {
            &mut self.passed
        } else {
            &mut self.failed
        }
        .push(name.to_string());
    }
}

fn status_ok(cmd: &mut Command) -> Result<bool> {
    Ok(cmd
        .status()
        .with_context(|| format!("running {cmd:?}"))?
        .success())
}

pub fn cmd_test() -> Result<i32> {
    ensure_apt(&[
        "busybox-static",
        "erofs-utils",
        "e2fsprogs",
        "util-linux",
        "procps",
        "cpio",
        // runvm links libseccomp (linux.seccomp is compiled on the host): clippy and the
        // unit tests below build it, so this comes before them.
        "libseccomp-dev",
    ])?;
    let mut t = Tally {
        passed: vec![],
        failed: vec![],
    };

    let mut step = Step::new("test");
    step.phase("cargo fmt --check");
    t.record(
        "cargo fmt --check",
        status_ok(cargo().args(["fmt", "--all", "--", "--check"]))?,
    );
    step.phase("cargo clippy --all-targets -D warnings");
    t.record(
        "cargo clippy",
        status_ok(cargo().args([
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
    t.record(
        "cargo test --workspace",
        status_ok(cargo().args(["test", "--workspace"]))?,
    );

    let setup = GuestSetup::prepare(false)?;
    let exes = test_executables()?;
    let exe = |name: &str| -> Result<String> {
        exes.iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.display().to_string())
            .with_context(|| format!("integration test {name} was not built"))
    };

    for suite in HOST_SUITES {
        step.phase(&format!("runvm {suite} tests (no guest needed)"));
        let mut c = Command::new(exe(suite)?);
        c.args(["--ignored", "--test-threads=2"]).envs(setup.env());
        t.record(suite, status_ok(&mut c)?);
    }

    let place = setup.choose_place()?;
    if place == Place::TestHost {
        step.phase("test host passes exit codes through (sh -c 'exit 7')");
        let code = testhost::run_in_testhost(&["sh".into(), "-c".into(), "exit 7".into()], &[])?;
        t.record("testhost exit code 7", code == 7);
    }
    // The OCI validation suite, against runc and runvm in the same place, once. In the
    // test host it runs in a test host of its own beside the guest suites' (each is one
    // single-threaded QEMU: together they use both cores); directly on this host it runs
    // after them, so that their leak checks do not see its containers.
    let oci_args = crate::oci::OciArgs {
        runtimes: vec!["runc".into(), setup.runvm.display().to_string()],
        only: vec![],
        timeout: 180,
        build_only: false,
        check: true,
        inside: None,
    };
    let run_oci = |args| {
        crate::oci::cmd_oci(args)
            .map(|code| code == 0)
            .unwrap_or_else(|e| {
                eprintln!("[test] OCI validation suite: {e:#}");
                false
            })
    };
    const OCI: &str = "OCI validation suite (runvm passes what runc passes)";
    let guest_tests = format!("guest tests ({})", GUEST_SUITES.join(", "));
    if place == Place::TestHost {
        step.phase(&format!(
            "guest tests ({}) and, in a second test host, the OCI validation suite",
            GUEST_SUITES.join(", ")
        ));
        let (ok, oci_ok) = std::thread::scope(|s| {
            let oci = s.spawn(|| run_oci(oci_args));
            // All guest suites in one go (one test-host boot): each runs even if another
            // fails.
            let ok = run_guest_suites(&setup, place, &exes, GUEST_SUITES, &[]).map(|c| c == 0);
            (ok, oci.join().unwrap_or(false))
        });
        t.record(&guest_tests, ok?);
        t.record(OCI, oci_ok);
    } else {
        step.phase(&format!("guest tests: {}", GUEST_SUITES.join(", ")));
        let ok = run_guest_suites(&setup, place, &exes, GUEST_SUITES, &[])? == 0;
        t.record(&guest_tests, ok);
        step.phase("OCI validation suite (runc, then runvm)");
        t.record(OCI, run_oci(oci_args));
    }

    let left = leftover_processes();
    t.record("no runvm process left on the host", left.is_empty());
    if !left.is_empty() {
        eprintln!("[test] left behind: {left:?}");
    }
    drop(step);
    println!(
        "test suites: {} passed, {} failed",
        t.passed.len(),
        t.failed.len()
    );
    if !t.failed.is_empty() {
        eprintln!("[test] failed: {}", t.failed.join(", "));
        return Ok(1);
    }
    Ok(0)
}

/// The integration test binaries (in `tests/tests/`) that need the runvm binary but boot
/// no guest: they run on this host, before the guest suites.
pub const HOST_SUITES: &[&str] = &["bad_input", "features"];

/// The integration test binaries (in `tests/tests/`) that boot guests, in the order CI runs
/// them. Add a new guest suite here.
pub const GUEST_SUITES: &[&str] = &[
    "boot",
    "lifecycle",
    "exec",
    "tty",
    "rootfs",
    "network",
    "hostile",
    "hooks",
    "process",
    "control",
    "podman",
    "docker_net",
    "docker",
];

/// Runs the named guest suites, each with `--ignored --test-threads=2` plus `test_args`,
/// in one go where guests boot (one test-host boot). Every suite runs even if another
/// fails; the result is 0 when all passed. A test host that dies without an exit status
/// (it freezes now and then on this machine) is retried once, and says so.
fn run_guest_suites(
    setup: &GuestSetup,
    place: Place,
    exes: &[(String, PathBuf)],
    suites: &[&str],
    test_args: &[String],
) -> Result<i32> {
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
    let mut extra = vec![("RUNVM_TEST_ARGS".to_string(), test_args.join(" "))];
    // The Docker/Podman suites' knobs (RUNVM_DOCKER_RUNTIME=runc for a control run, …).
    extra.extend(std::env::vars().filter(|(k, _)| k.starts_with("RUNVM_DOCKER_")));
    if suites.contains(&"hostile") {
        // The hostile guest init, built only for the suite that boots it.
        let hostile = crate::initramfs::hostile_initramfs()?;
        extra.push((
            "RUNVM_HOSTILE_INITRAMFS".to_string(),
            hostile.display().to_string(),
        ));
    }
    let mut result = setup.run_at(place, &argv, &extra);
    for attempt in 2..=2 {
        match &result {
            // A test failure (an exit status) is never rerun, nor a run that used up its
            // time (it would take as long again); a frozen test host is, once.
            Err(e)
                if place == Place::TestHost
                    && !format!("{e:#}").contains("RUNVM_TESTHOST_TIMEOUT") =>
            {
                eprintln!("[test] the test host ended without an exit status ({e:#}); running the guest tests again (attempt {attempt} of 2)");
                result = setup.run_at(place, &argv, &extra);
            }
            _ => break,
        }
    }
    result
}

/// `cargo xtask guest-test SUITE… [-- TEST-ARGS…]`: builds what guests need and runs the
/// named guest suites where guests boot (directly or in the test host), in one go.
/// TEST-ARGS go to every suite binary (a test-name filter, `--nocapture`, …).
pub fn cmd_guest_test(suites: &[String], test_args: &[String]) -> Result<i32> {
    let setup = GuestSetup::prepare(false)?;
    let exes = test_executables()?;
    let place = setup.choose_place()?;
    let names: Vec<&str> = if suites.is_empty() {
        GUEST_SUITES.to_vec()
    } else {
        suites.iter().map(String::as_str).collect()
    };
    let code = run_guest_suites(&setup, place, &exes, &names, test_args)?;

    let left = leftover_processes();
    if !left.is_empty() {
        eprintln!("[test] left behind on the host: {left:?}");
        return Ok(1);
    }
    Ok(code)
}

/// runvm processes (monitors, cleanup guards) still alive on this host.
fn leftover_processes() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() == "runvm" || comm.trim() == "runvm-guard" {
            out.push(format!("{name} {}", comm.trim()));
        }
    }
    out
}

//! `cargo xtask bench cycle [--runs N]`: the OCI lifecycle a container engine drives for
//! one short container — `create` (detached, `--pid-file`), `start`, wait for the
//! container's process to exit, `delete` — of `true` in a busybox bundle, for runvm and
//! for runc, alternating, in one run and the same place, with the same bundle. The
//! waiting is containerd's: this process is a child subreaper, so the container's pid
//! (runvm's monitor, runc's init) becomes its child and is reaped with `waitpid`. Prints
//! p50/p95 per step and the ratio, writes `bench/cycle.md` and `bench/cycle.json`, and
//! the table into the README.
//!
//! Where: on this host's KVM when it can boot guests, else inside the nested test host
//! (TCG: compare the ratios only). As `bench net` does, the outer process re-runs this
//! binary there with `--inside` and reads the raw numbers back from the target directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::guests::Place;
use crate::util::{percentile, repo_root, splice_readme, write_results};

#[derive(clap::Args)]
pub struct CycleArgs {
    /// Counted cycles per runtime (one warm-up cycle each is not counted).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    #[arg(long, hide = true)]
    inside: bool,
    #[arg(long, hide = true)]
    out: Option<PathBuf>,
}

const RUNTIMES: [&str; 2] = ["runvm", "runc"];
const STEPS: [&str; 5] = ["create", "start", "wait", "delete", "total"];

pub fn cmd(a: CycleArgs) -> Result<i32> {
    if a.inside {
        let out = a.out.context("--inside needs --out")?;
        let raw = measure(a.runs)?;
        std::fs::write(&out, serde_json::to_string_pretty(&raw)?)?;
        return Ok(0);
    }
    let (raw, place) =
        crate::bench_net::measure_inside("cycle", &["--runs".into(), a.runs.to_string()])?;
    let md = markdown(&raw, place);
    write_results(&repo_root().join("bench"), "cycle", &md, &raw)?;
    splice_readme("bench-cycle", &md.replacen("# ", "#### ", 1))?;
    Ok(0)
}

fn runtime_cmd(who: &str, runvm: &Path, root: &Path) -> Command {
    let mut c = match who {
        "runvm" => Command::new(runvm),
        _ => Command::new("runc"),
    };
    c.arg("--root").arg(root.join(who));
    c.stdin(Stdio::null());
    c
}

/// Runs `c` to its end. Its stdout and stderr go to a file, not a pipe: the container's
/// process (runc's init, runvm's monitor) keeps the stdio that `create` was given, so a
/// pipe would not see EOF before the container ends.
fn run_ok(mut c: Command) -> Result<()> {
    let log = tempfile_in_tmp()?;
    c.stdout(log.try_clone()?).stderr(log.try_clone()?);
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    if !status.success() {
        use std::io::{Read, Seek};
        let mut f = log;
        let mut text = String::new();
        f.rewind()?;
        f.read_to_string(&mut text)?;
        bail!("{c:?} failed: {}", text.trim());
    }
    Ok(())
}

/// An unlinked scratch file.
fn tempfile_in_tmp() -> Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!(
        "runvm-bench-cycle-log-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

/// `runc spec`'s config (which runvm accepts whole) running `true` from `rootfs`.
fn write_bundle(dir: &Path, rootfs: &Path) -> Result<()> {
    let mut c = crate::util::runc_spec(dir)?;
    c["root"] = json!({ "path": rootfs, "readonly": true });
    c["process"]["args"] = json!(["true"]);
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&c)?)?;
    Ok(())
}

/// One create → start → wait → delete; milliseconds of each step.
fn cycle(who: &str, runvm: &Path, root: &Path, bundle: &Path, id: &str) -> Result<[f64; 5]> {
    let pid_file = bundle.join(format!("{who}.pid"));
    let _ = std::fs::remove_file(&pid_file);
    let t0 = Instant::now();
    let mut c = runtime_cmd(who, runvm, root);
    c.args(["create", "--bundle"])
        .arg(bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id);
    run_ok(c)?;
    let t1 = Instant::now();
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("reading {}", pid_file.display()))?
        .trim()
        .parse()
        .context("the pid file holds no pid")?;
    let mut c = runtime_cmd(who, runvm, root);
    c.args(["start", id]);
    run_ok(c)?;
    let t2 = Instant::now();
    let mut status = 0;
    // SAFETY: waitpid on a pid that is our child (we are its subreaper); status is ours.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    if r != pid {
        bail!(
            "waitpid({pid}) of the {who} container failed: {}",
            std::io::Error::last_os_error()
        );
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("the {who} container's process did not exit 0 (wait status {status:#x})");
    }
    let t3 = Instant::now();
    let mut c = runtime_cmd(who, runvm, root);
    c.args(["delete", id]);
    run_ok(c)?;
    let t4 = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
    Ok([ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4), ms(t0, t4)])
}

fn measure(runs: usize) -> Result<Value> {
    let runvm = PathBuf::from(std::env::var("RUNVM_BIN").context("RUNVM_BIN")?);
    let rootfs = PathBuf::from(std::env::var("RUNVM_TEST_ROOTFS").context("RUNVM_TEST_ROOTFS")?);
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
    }
    let work = std::env::temp_dir().join(format!("runvm-bench-cycle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let bundle = work.join("bundle");
    write_bundle(&bundle, &rootfs)?;
    let root = work.join("state");
    let mut times: Vec<Vec<[f64; 5]>> = vec![vec![], vec![]];
    let result = (|| -> Result<()> {
        for i in 0..=runs {
            for (k, who) in RUNTIMES.iter().enumerate() {
                let id = format!("cycle-{who}-{i}");
                let t = cycle(who, &runvm, &root, &bundle, &id)
                    .with_context(|| format!("cycle {i} of {who}"))?;
                if i > 0 {
                    times[k].push(t);
                }
            }
            eprintln!("[bench] cycle {i}/{runs} done");
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result?;
    let mut results = serde_json::Map::new();
    for (k, who) in RUNTIMES.iter().enumerate() {
        let mut per = serde_json::Map::new();
        for (s, step) in STEPS.iter().enumerate() {
            let v: Vec<f64> = times[k].iter().map(|t| t[s]).collect();
            per.insert(
                step.to_string(),
                json!({ "p50": percentile(&v, 0.5), "p95": percentile(&v, 0.95), "ms": v }),
            );
        }
        results.insert(who.to_string(), Value::Object(per));
    }
    let sh = crate::util::sh_stdout;
    Ok(json!({
        "runs": runs,
        "date": sh("date -u +%Y-%m-%d"),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "nproc": sh("nproc"),
        "runc": sh("runc --version | head -1"),
        "results": results,
    }))
}

fn markdown(raw: &Value, place: Place) -> String {
    let r = &raw["results"];
    let g = |who: &str, step: &str, p: &str| r[who][step][p].as_f64().unwrap_or(f64::NAN);
    let mut md = String::from("# Lifecycle benchmark: runvm vs runc\n\n");
    md.push_str(&format!(
        "Measured {} {}: {} ({} CPUs seen there), {}. `create --pid-file` → `start` → wait \
         for the container's pid (reaped as a subreaper, as containerd's shim does) → \
         `delete`, of `true` in a busybox bundle (`runc spec`, read-only root), {} counted \
         cycles each, alternating runvm and runc.\n\n",
        raw["date"].as_str().unwrap_or("?"),
        match place {
            Place::Direct => "on this host's KVM",
            Place::TestHost =>
                "inside the nested test host (QEMU TCG: an emulated CPU, so compare the ratios, not the absolute numbers)",
        },
        raw["cpu"].as_str().unwrap_or("?"),
        raw["nproc"].as_str().unwrap_or("?"),
        raw["runc"].as_str().unwrap_or("runc"),
        raw["runs"],
    ));
    md.push_str(
        "| step | runvm p50 | runvm p95 | runc p50 | runc p95 | runvm / runc (p50) |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for step in STEPS {
        let (a, b) = (g("runvm", step, "p50"), g("runc", step, "p50"));
        md.push_str(&format!(
            "| {step} | {a:.0} ms | {:.0} ms | {b:.0} ms | {:.0} ms | {:.2} |\n",
            g("runvm", step, "p95"),
            g("runc", step, "p95"),
            a / b
        ));
    }
    md.push_str("\nTarget (issue 8): runvm's whole cycle within 3× of runc's.\n");
    md
}

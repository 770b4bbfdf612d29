//! `cargo xtask bench cycle [--runs N]`: the OCI lifecycle a container engine drives for
//! one short container — `create` (detached, `--pid-file`), `start`, wait for the
//! container's process to exit, `delete` — of `true` in a busybox bundle, for runvm
//! booting its guest cold, runvm starting warm (`RUNVM_BOOT=warm`: the VM restored from
//! a template snapshot) and runc, in turn, in one run and the same place, with the same
//! bundle. The warm start's template is made before the measured cycles (one warm cycle,
//! timed and reported, not counted) in a template directory private to the bench, and
//! each runvm cycle's timings file must say it came up as asked (`"boot"`), or the bench
//! fails. The waiting is containerd's: this process is a child subreaper, so the
//! container's pid (runvm's monitor, runc's init) becomes its child and is reaped with
//! `waitpid`. Prints p50/p95 per step and the ratios to runc, writes `bench/cycle.md`
//! and `bench/cycle.json`, and the table into the README.
//!
//! Where: on this host's KVM when it can boot guests, else inside the nested test host
//! (TCG: compare the ratios only). As `bench net` does, the outer process re-runs this
//! binary there with `--inside` and reads the raw numbers back from the target directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench::ratio;
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

/// The runtimes measured, in the order of each round: runvm cold, runvm warm, runc.
const RUNTIMES: [&str; 3] = ["runvm", "runvm-warm", "runc"];
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
    if let Some(why) = raw["warm_failure"].as_str() {
        eprintln!("[bench] FAILED: the warm runvm cycles: {why}");
        return Ok(1);
    }
    Ok(0)
}

/// `who`'s command with its own state root under `work`: runvm cold boots
/// (`RUNVM_BOOT=cold`), runvm warm starts from the templates in `work/templates`.
fn runtime_cmd(who: &str, runvm: &Path, work: &Path) -> Command {
    let mut c = match who {
        "runvm" => {
            let mut c = Command::new(runvm);
            c.env("RUNVM_BOOT", "cold");
            c
        }
        "runvm-warm" => {
            let mut c = Command::new(runvm);
            c.env("RUNVM_BOOT", "warm")
                .env("RUNVM_TEMPLATE_DIR", work.join("templates"));
            c
        }
        _ => Command::new("runc"),
    };
    c.arg("--root").arg(work.join("state").join(who));
    c.stdin(Stdio::null());
    c
}

/// How runvm was asked to bring up `who`'s VM (what its timings file must say).
fn expected_boot(who: &str) -> Option<&'static str> {
    match who {
        "runvm" => Some("cold"),
        "runvm-warm" => Some("warm"),
        _ => None,
    }
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

/// One create → start → wait → delete; milliseconds of each step. For runvm, the VM's
/// timings file (written by its monitor when the VM ends) must say it came up as asked.
fn cycle(who: &str, runvm: &Path, work: &Path, bundle: &Path, id: &str) -> Result<[f64; 5]> {
    let pid_file = bundle.join(format!("{who}.pid"));
    let _ = std::fs::remove_file(&pid_file);
    let timings = work.join(format!("{id}.timings.json"));
    let _ = std::fs::remove_file(&timings);
    let t0 = Instant::now();
    let mut c = runtime_cmd(who, runvm, work);
    c.env("RUNVM_TIMINGS_FILE", &timings);
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
    let mut c = runtime_cmd(who, runvm, work);
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
    let mut c = runtime_cmd(who, runvm, work);
    c.args(["delete", id]);
    run_ok(c)?;
    let t4 = Instant::now();
    if let Some(boot) = expected_boot(who) {
        let text = std::fs::read_to_string(&timings).unwrap_or_default();
        let t: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if t["boot"].as_str() != Some(boot) {
            bail!(
                "the {who} container {id} was asked for a {boot} boot but its timings file ({}) says \"boot\": {}{}",
                timings.display(),
                t["boot"],
                templates_report(work)
            );
        }
    }
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
    let mut times: Vec<Vec<[f64; 5]>> = vec![vec![]; RUNTIMES.len()];
    // runvm's timings file of each counted cycle (where its `start` goes).
    let mut vm_timings: Vec<Vec<Value>> = vec![vec![]; RUNTIMES.len()];
    let mut template = json!(null);
    // Warm start is new: when a warm cycle fails, the warm column stops there (its
    // failure recorded, the outer process exits non-zero after writing the results) and
    // the others go on. A cold runvm or runc cycle that fails ends the bench.
    let mut warm_failure: Option<String> = None;
    let warm_failed = |what: String, e: anyhow::Error, id: &str| -> String {
        let why = format!("{what}: {e:#}{}", templates_report(&work));
        eprintln!("[bench] FAILED: {why}");
        let mut c = runtime_cmd("runvm-warm", &runvm, &work);
        c.args(["delete", "--force", id]);
        let _ = run_ok(c);
        why
    };
    let result = (|| -> Result<()> {
        eprintln!("[bench] making the warm-start template: one warm cycle, not counted");
        match cycle("runvm-warm", &runvm, &work, &bundle, "cycle-template") {
            Ok(t) => {
                eprintln!(
                    "[bench] template made: the first warm cycle took {:.0} ms (its start, which made it, {:.0} ms)",
                    t[4], t[1]
                );
                let steps: serde_json::Map<String, Value> = STEPS
                    .iter()
                    .zip(t)
                    .map(|(step, ms)| (step.to_string(), json!(ms)))
                    .collect();
                template = json!({
                    "first_warm_cycle_ms": steps,
                    "memory_data_bytes": template_data_bytes(&work),
                });
            }
            Err(e) => {
                warm_failure = Some(warm_failed(
                    "the first warm cycle (which makes the template)".into(),
                    e,
                    "cycle-template",
                ))
            }
        }
        for i in 0..=runs {
            let mut line = format!("[bench] cycle {i}/{runs}");
            for (k, who) in RUNTIMES.iter().enumerate() {
                if *who == "runvm-warm" && warm_failure.is_some() {
                    line.push_str(&format!(" {who} (failed)"));
                    continue;
                }
                let id = format!("cycle-{who}-{i}");
                let t = match cycle(who, &runvm, &work, &bundle, &id) {
                    Ok(t) => t,
                    Err(e) if *who == "runvm-warm" => {
                        warm_failure = Some(warm_failed(format!("cycle {i} of {who}"), e, &id));
                        continue;
                    }
                    Err(e) => return Err(e.context(format!("cycle {i} of {who}"))),
                };
                line.push_str(&format!(" {who} {:.0} ms", t[4]));
                if i > 0 {
                    times[k].push(t);
                    if expected_boot(who).is_some() {
                        let path = work.join(format!("{id}.timings.json"));
                        let text = std::fs::read_to_string(&path).unwrap_or_default();
                        vm_timings[k].push(serde_json::from_str(&text).unwrap_or(Value::Null));
                    }
                }
            }
            eprintln!(
                "{line}{}",
                if i == 0 {
                    " (warm-up, not counted)"
                } else {
                    ""
                }
            );
        }
        Ok(())
    })();
    if result.is_err() {
        eprintln!("[bench] {}", templates_report(&work).trim_start());
    }
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
        if expected_boot(who).is_some() {
            per.insert("vm_timings".into(), json!(vm_timings[k]));
        }
        results.insert(who.to_string(), Value::Object(per));
    }
    let sh = crate::util::sh_stdout;
    Ok(json!({
        "runs": runs,
        "template": template,
        "date": sh("date -u +%Y-%m-%d"),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "nproc": sh("nproc"),
        "runc": sh("runc --version | head -1"),
        "results": results,
        "warm_failure": warm_failure,
    }))
}

/// The bytes of guest-memory data the bench's template holds (its sparse `memory`
/// file's allocated blocks), if there is one template.
fn template_data_bytes(work: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dirs: Vec<PathBuf> = std::fs::read_dir(work.join("templates"))
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    match dirs.as_slice() {
        [dir] => Some(std::fs::metadata(dir.join("memory")).ok()?.blocks() * 512),
        _ => None,
    }
}

/// What the bench's template directory holds (for an error about a warm start).
fn templates_report(work: &Path) -> String {
    let dir = work.join("templates");
    let listing = Command::new("ls")
        .args(["-lsR", "--time-style=full-iso"])
        .arg(&dir)
        .output()
        .map(|o| String::from_utf8_lossy(&[o.stdout, o.stderr].concat()).into_owned())
        .unwrap_or_else(|e| format!("(ls failed: {e})"));
    format!(
        "\nthe template directory {} holds:\n{}",
        dir.display(),
        listing.trim_end()
    )
}

fn markdown(raw: &Value, place: Place) -> String {
    let r = &raw["results"];
    let g = |who: &str, step: &str, p: &str| r[who][step][p].as_f64().unwrap_or(f64::NAN);
    let mut md = String::from("# Lifecycle benchmark: runvm (cold and warm) vs runc\n\n");
    md.push_str(&format!(
        "Measured {} {}: {} ({} CPUs seen there), {}. `create --pid-file` → `start` → wait \
         for the container's pid (reaped as a subreaper, as containerd's shim does) → \
         `delete`, of `true` in a busybox bundle (`runc spec`, read-only root), {} counted \
         cycles each (after 1 uncounted warm-up cycle each), in turn: runvm booting its guest \
         kernel (cold), runvm starting warm (`RUNVM_BOOT=warm`: the VM restored from a template \
         snapshot), runc.\n\n",
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
    let first = &raw["template"]["first_warm_cycle_ms"];
    if let Some(total) = first["total"].as_f64() {
        md.push_str(&format!(
            "The warm start's template was made before the measured cycles, in a template \
             directory private to the bench, by one warm cycle that is not counted: {total:.0} ms \
             in all, {:.0} ms of it in `start` (runvm's VM comes up at `start`: there the \
             template was made, by a cold boot and a snapshot in a `runvm build-template` child, \
             then restored). The template holds {:.1} MiB of guest-memory data (the VM has \
             runvm's default memory size), which each warm start copies. Every runvm cycle's \
             timings file said it came up as asked (`\"boot\": \"cold\"` or `\"warm\"`); the \
             bench fails otherwise.\n\n",
            first["start"].as_f64().unwrap_or(f64::NAN),
            raw["template"]["memory_data_bytes"]
                .as_f64()
                .unwrap_or(f64::NAN)
                / (1024.0 * 1024.0),
        ));
    }
    md.push_str(
        "| step | runvm cold p50 | p95 | runvm warm p50 | p95 | runc p50 | p95 | cold / runc (p50) | warm / runc (p50) | warm / cold (p50) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for step in STEPS {
        let (c, w, b) = (
            g("runvm", step, "p50"),
            g("runvm-warm", step, "p50"),
            g("runc", step, "p50"),
        );
        md.push_str(&format!(
            "| {step} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            millis(c),
            millis(g("runvm", step, "p95")),
            millis(w),
            millis(g("runvm-warm", step, "p95")),
            millis(b),
            millis(g("runc", step, "p95")),
            ratio(c, b),
            ratio(w, b),
            ratio(w, c)
        ));
    }
    if let Some(why) = raw["warm_failure"].as_str() {
        md.push_str(&format!(
            "\n**Warm start failed** in this run, so the warm column is incomplete (— where no \
             cycle was counted):\n\n```\n{}\n```\n",
            why.trim_end()
        ));
    }
    // Where runvm's `start` goes: its VM's offsets from `Vmm::new` (timings file), and
    // the rest of the step (before the VMM: for a warm start, the template's load and copy).
    let offset = |who: &str, f: &dyn Fn(&Value) -> f64| -> Vec<f64> {
        r[who]["vm_timings"]
            .as_array()
            .map(|a| a.iter().map(f).collect())
            .unwrap_or_default()
    };
    let field = |t: &Value, k: &str| t[k].as_f64().unwrap_or(f64::NAN);
    let starts = |who: &str| -> Vec<f64> {
        r[who]["start"]["ms"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect())
            .unwrap_or_default()
    };
    let before_vmm = |who: &str| -> Vec<f64> {
        starts(who)
            .iter()
            .zip(offset(who, &|t| field(t, "workload_started_ms")))
            .map(|(s, w)| s - w)
            .collect()
    };
    let p50 = |v: Vec<f64>| {
        let v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
        percentile(&v, 0.5)
    };
    md.push_str(
        "\nWhere runvm's `start` goes (p50; from the VM's timings file, offsets from `Vmm::new`):\n\n\
         | | runvm cold | runvm warm |\n|---|---:|---:|\n",
    );
    for (label, cold, warm) in [
        (
            "`start` − VMM start → workload started: the CLI, the monitor's set-up before the VMM (warm: the template loaded, its memory copied)",
            p50(before_vmm("runvm")),
            p50(before_vmm("runvm-warm")),
        ),
        (
            "VMM start → workload started (cold: kernel boot, init, share mounted; warm: restore, wake, share mounted)",
            p50(offset("runvm", &|t| field(t, "workload_started_ms"))),
            p50(offset("runvm-warm", &|t| field(t, "workload_started_ms"))),
        ),
    ] {
        md.push_str(&format!("| {label} | {} | {} |\n", millis(cold), millis(warm)));
    }
    let total = |who: &str| g(who, "total", "p50");
    let target = |r: f64, limit: f64| {
        if !r.is_finite() {
            "not measured".to_string()
        } else if r <= limit {
            format!("met ({r:.2}×)")
        } else {
            format!("**not met** ({r:.2}×)")
        }
    };
    let (c, w, b) = (total("runvm"), total("runvm-warm"), total("runc"));
    md.push_str(&format!(
        "\nTargets: runvm's whole cycle within 3× of runc's (issue 8): cold {}; \
         warm runvm's whole cycle within 1.5× of runc's (issue 16): {}.\n",
        target(c / b, 3.0),
        target(w / b, 1.5),
    ));
    md
}

/// `v` ms, or — when it was not measured.
fn millis(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0} ms")
    } else {
        "—".into()
    }
}

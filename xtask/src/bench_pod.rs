//! `cargo xtask bench pod [--runs N]`: a Kubernetes pod's start and teardown through
//! containerd's CRI plugin, under runvm's runtime handler (`io.containerd.runvm.v2`: the
//! pod is one VM) and runc's (`io.containerd.runc.v2`), interleaved in one run with one
//! containerd.
//!
//! Start is RunPodSandbox, CreateContainer and StartContainer of one busybox container,
//! until ContainerStatus says CONTAINER_RUNNING; teardown is StopContainer,
//! RemoveContainer, StopPodSandbox and RemovePodSandbox. Every CRI call is one run of
//! `runvm-crictl`, as `cargo xtask cri-smoke` makes them, whose private containerd,
//! images and bridge network this benchmark uses. After each pod it checks that nothing
//! of it is left (shim, VM monitor, member monitor, virtiofsd, network namespace,
//! containerd container or task) and fails if something is. Prints p50/p95 per CRI call
//! and phase and the runvm / runc ratios, writes `bench/pod.md` and `bench/pod.json`, and
//! the table into the README.
//!
//! Where: always inside the nested test host (as cri-smoke: it installs containerd and
//! the CNI plugins there); the outer process re-runs this binary there with `--inside`
//! and reads the raw numbers back from the target directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cri::{self, Smoke};
use crate::util::{percentile, repo_root, splice_readme, target_dir, write_results};

#[derive(clap::Args)]
pub struct PodArgs {
    /// Counted pods per handler (one warm-up pod of each is not counted).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Internal: measure here (inside the test host) and write the raw numbers to `--out`.
    #[arg(long, hide = true)]
    inside: bool,
    #[arg(long, hide = true)]
    out: Option<PathBuf>,
    /// Internal: runvm-crictl (with `--inside`).
    #[arg(long, hide = true)]
    crictl: Option<PathBuf>,
    /// Internal: where the image archives are (with `--inside`).
    #[arg(long, hide = true)]
    images: Option<PathBuf>,
    /// Internal: the directory of runvm and containerd-shim-runvm-v2 (with `--inside`).
    #[arg(long, hide = true)]
    runvm_dir: Option<PathBuf>,
}

/// The CRI runtime handlers, in the order each round runs them.
const HANDLERS: [&str; 2] = ["runvm", "runc"];
/// What is timed: each CRI call, then the two phases and their sum.
const STEPS: [&str; 10] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "start",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
    "teardown",
    "total",
];
/// The container: a shell that ends at once on SIGTERM (so StopContainer times the stop,
/// not the grace period), sleeping meanwhile.
const CONTAINER_COMMAND: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done",
];
/// StopContainer's grace period (seconds); the container ends well before it.
const STOP_TIMEOUT: &str = "10";
/// How long what a pod leaves may take to go after RemovePodSandbox returned.
const SETTLE: Duration = Duration::from_secs(20);

pub fn cmd(a: PodArgs) -> Result<i32> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if a.inside {
        let out = a.out.context("--inside needs --out")?;
        let crictl = a.crictl.context("--inside needs --crictl")?;
        let images = a.images.context("--inside needs --images")?;
        let runvm_dir = a.runvm_dir.context("--inside needs --runvm-dir")?;
        let raw = measure(&crictl, &images, &runvm_dir, a.runs)?;
        std::fs::write(&out, serde_json::to_string_pretty(&raw)?)
            .with_context(|| format!("writing {}", out.display()))?;
        return Ok(0);
    }
    let started = Instant::now();
    let crictl = cri::build_crictl()?;
    let images = cri::build_images()?;
    let (inside, installs) = crate::guests::GuestSetup::prepare()?.in_testhost()?;
    let runvm_dir = inside
        .runvm
        .parent()
        .context("runvm's binary has no directory")?;
    let dir = target_dir().join("runvm").join("bench");
    std::fs::create_dir_all(&dir)?;
    let raw_path = dir.join("pod-raw.json");
    let _ = std::fs::remove_file(&raw_path);
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let argv: Vec<String> = vec![
        exe.display().to_string(),
        "bench".into(),
        "pod".into(),
        "--inside".into(),
        "--runs".into(),
        a.runs.to_string(),
        "--crictl".into(),
        crictl.display().to_string(),
        "--images".into(),
        images.display().to_string(),
        "--runvm-dir".into(),
        runvm_dir.display().to_string(),
        "--out".into(),
        raw_path.display().to_string(),
    ];
    eprintln!(
        "[bench] pod start and teardown through the CRI, {} pods of each handler (+1 warm-up), runvm and runc interleaved, inside the nested test host",
        a.runs
    );
    let code = crate::testhost::run_in_testhost_installing(
        &argv,
        &[("CI".into(), "1".into())],
        &installs,
    )?;
    if code != 0 {
        bail!("the pod benchmark failed (exit {code})");
    }
    let mut raw: Value = serde_json::from_str(
        &std::fs::read_to_string(&raw_path)
            .with_context(|| format!("reading {}", raw_path.display()))?,
    )?;
    raw["commit"] = json!(crate::bench_fs::git_commit());
    raw["total_s"] = json!(started.elapsed().as_secs_f64().round());
    let md = markdown(&raw);
    write_results(&repo_root().join("bench"), "pod", &md, &raw)?;
    splice_readme("bench-pod", &md.replacen("# ", "#### ", 1))?;
    Ok(0)
}

/// The ids of what the pod being measured has, for the cleanup after a failure.
#[derive(Default)]
struct Live {
    pod: Option<String>,
    containers: Vec<String>,
    /// The network namespace of the last pod (gone once it is removed).
    netns: Option<String>,
}

/// Inside the test host: one containerd, the images, then the pods; the raw numbers.
fn measure(crictl: &Path, images: &Path, runvm_dir: &Path, runs: usize) -> Result<Value> {
    let dir = cri::prepare_here("bench-pod")?;
    // Handler "runvm" for the final checks: they then look for runvm's processes too.
    let mut s = Smoke::new("bench-pod", crictl, "runvm", Some(runvm_dir), &dir);
    let mut live = Live::default();
    let started = Instant::now();
    let mut times: Vec<Vec<[f64; 10]>> = vec![vec![], vec![]];
    let mut settle: Vec<Vec<f64>> = vec![vec![], vec![]];
    let r = (|| -> Result<()> {
        let r = cri::start_containerd(&mut s);
        s.step(
            "containerd starts with the CRI plugin (handlers runvm and runc)",
            r,
        )?;
        let r = cri::version_and_status(&s);
        s.step("Version and Status", r)?;
        let r = cri::import_images(&s, images);
        s.step("images imported and seen by the CRI", r)?;
        for i in 0..=runs {
            for (k, handler) in HANDLERS.iter().enumerate() {
                let (t, settled) = pod(&s, &dir, handler, i, &mut live)
                    .with_context(|| format!("pod {i} under {handler}"))?;
                let what = if i == 0 {
                    "warm-up, not counted".to_string()
                } else {
                    format!("{i}/{runs}")
                };
                eprintln!(
                    "[bench-pod] {:>6} pod {what} under {handler}: start {:.0} ms, teardown {:.0} ms, nothing left {:.0} ms after RemovePodSandbox",
                    crate::util::fmt_duration(started.elapsed()),
                    t[3],
                    t[8],
                    settled
                );
                if i > 0 {
                    times[k].push(t);
                    settle[k].push(settled);
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = &r {
        eprintln!("[bench-pod] stopping early: {e:#}");
    }
    cri::cleanup_and_check(
        &mut s,
        live.pod.as_deref(),
        &live.containers,
        live.netns.as_deref(),
    );
    if r.is_err() || !s.failed().is_empty() {
        if let Ok(log) = std::fs::read_to_string(dir.join("containerd.log")) {
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("[bench-pod] the last lines of containerd's log:");
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("    {l}");
            }
        }
        bail!(
            "the pod benchmark failed ({}); containerd's log was {}",
            if s.failed().is_empty() {
                "see above".to_string()
            } else {
                s.failed().join(", ")
            },
            dir.join("containerd.log").display()
        );
    }
    let _ = crate::util::remove_dir_if_exists(&dir);

    let mut results = serde_json::Map::new();
    for (k, handler) in HANDLERS.iter().enumerate() {
        let mut per = serde_json::Map::new();
        for (n, step) in STEPS.iter().enumerate() {
            let v: Vec<f64> = times[k].iter().map(|t| t[n]).collect();
            per.insert(
                step.to_string(),
                json!({ "p50": percentile(&v, 0.5), "p95": percentile(&v, 0.95), "ms": v }),
            );
        }
        per.insert(
            "settle".into(),
            json!({ "p50": percentile(&settle[k], 0.5), "max": settle[k].iter().copied().fold(0.0, f64::max), "ms": settle[k] }),
        );
        results.insert(handler.to_string(), Value::Object(per));
    }
    let sh = crate::util::sh_stdout;
    Ok(json!({
        "runs": runs,
        "date": sh("date -u '+%Y-%m-%d %H:%M UTC'"),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "nproc": sh("nproc"),
        "containerd": crate::util::dpkg_version("containerd").unwrap_or_default(),
        "runc": sh("runc --version | head -1"),
        "measured_s": started.elapsed().as_secs_f64().round(),
        "results": results,
    }))
}

/// One pod under `handler`: start, check, teardown, check that nothing is left. The
/// milliseconds of each of [`STEPS`], and how long after RemovePodSandbox returned the
/// last of the pod's processes went.
fn pod(
    s: &Smoke,
    dir: &Path,
    handler: &str,
    i: usize,
    live: &mut Live,
) -> Result<([f64; 10], f64)> {
    let name = format!("bench-pod-{handler}-{i}");
    let logs = dir.join("pod-logs").join(&name);
    std::fs::create_dir_all(&logs)?;
    let pod_config = s.write_json(
        &format!("{name}.json"),
        &json!({
            "metadata": { "name": name, "namespace": "default",
                          "uid": format!("{name}-{}", std::process::id()) },
            "hostname": "bench-pod",
            "log_directory": logs.display().to_string(),
            "linux": {},
        }),
    )?;
    let container_config = s.write_json(
        "bench-container.json",
        &json!({
            "metadata": { "name": "sleep" },
            "image": { "image": cri::BUSYBOX_IMAGE },
            "command": CONTAINER_COMMAND,
            "log_path": "sleep.log",
            "linux": {},
        }),
    )?;
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;

    // Start.
    let t0 = Instant::now();
    let pod_id = s
        .crictl_ok(&["runp", "--runtime", handler, &pod_config])?
        .stdout
        .trim()
        .to_string();
    live.pod = Some(pod_id.clone());
    let t1 = Instant::now();
    let id = s
        .crictl_ok(&["create", &pod_id, &container_config, &pod_config])?
        .stdout
        .trim()
        .to_string();
    live.containers.push(id.clone());
    let t2 = Instant::now();
    s.crictl_ok(&["start", &id])?;
    s.wait_state(&id, "CONTAINER_RUNNING", 120)?;
    let t3 = Instant::now();

    // What runs (not timed).
    let v = s.crictl_ok(&["inspectp", &pod_id])?.json()?;
    if v["state"] != "SANDBOX_READY" {
        bail!("pod {pod_id} is {}, expected SANDBOX_READY", v["state"]);
    }
    let h = v["status"]["runtime_handler"].as_str().unwrap_or("");
    if h != handler {
        bail!("pod {pod_id} runs under handler {h:?}, expected {handler}");
    }
    live.netns = cri::pod_netns(&v);
    let netns = live
        .netns
        .clone()
        .context("the pod's verbose status names no network namespace path")?;
    if s.shims().is_empty() {
        bail!("no containerd shim of this containerd runs while the pod does");
    }
    let vms = cri::titled("runvm-vm ").len();
    let members = cri::titled("runvm-member ").len();
    let want = if handler == "runvm" { 1 } else { 0 };
    if vms != want || members != want {
        bail!(
            "{vms} VM monitor(s) and {members} member monitor(s) run the {handler} pod, expected {want} of each"
        );
    }

    // Teardown.
    let t4 = Instant::now();
    s.crictl_ok(&["stop", "--timeout", STOP_TIMEOUT, &id])?;
    let t5 = Instant::now();
    let v = s.crictl_ok(&["inspect", &id])?.json()?;
    let code = v["status"]["exit_code"].as_i64().unwrap_or(-1);
    if v["state"] != "CONTAINER_EXITED" || code != 0 {
        bail!(
            "the container is {} with exit code {code} after StopContainer, expected CONTAINER_EXITED and 0 (its TERM trap)",
            v["state"]
        );
    }
    let t6 = Instant::now();
    s.crictl_ok(&["rm", &id])?;
    let t7 = Instant::now();
    live.containers.clear();
    s.crictl_ok(&["stopp", &pod_id])?;
    let t8 = Instant::now();
    s.crictl_ok(&["rmp", &pod_id])?;
    let t9 = Instant::now();
    live.pod = None;

    // Nothing left (not timed): what goes in the background may take a moment.
    let settled = loop {
        let left = leftovers(s, &netns)?;
        if left.is_empty() {
            break ms(t9, Instant::now());
        }
        if t9.elapsed() > SETTLE {
            bail!(
                "{} s after RemovePodSandbox of the {handler} pod, still left: {}",
                SETTLE.as_secs(),
                left.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    let start = [ms(t0, t1), ms(t1, t2), ms(t2, t3)];
    let teardown = [ms(t4, t5), ms(t6, t7), ms(t7, t8), ms(t8, t9)];
    let (a, b): (f64, f64) = (start.iter().sum(), teardown.iter().sum());
    Ok((
        [
            start[0],
            start[1],
            start[2],
            a,
            teardown[0],
            teardown[1],
            teardown[2],
            teardown[3],
            b,
            a + b,
        ],
        settled,
    ))
}

/// What is left of a removed pod: shims, runvm's VM and member monitors and virtiofsd,
/// its network namespace, containers and tasks in containerd.
fn leftovers(s: &Smoke, netns: &str) -> Result<Vec<String>> {
    let mut left = Vec::new();
    for (pid, cmd) in s
        .shims()
        .into_iter()
        .chain(cri::titled("runvm-vm "))
        .chain(cri::titled("runvm-member "))
        .chain(cri::processes_mentioning("virtiofsd"))
    {
        left.push(format!("process {pid} {cmd:?}"));
    }
    if Path::new(netns).exists() {
        left.push(format!("network namespace {netns}"));
    }
    for what in ["containers", "tasks"] {
        let ids = s.ctr(&[what, "list", "--quiet"])?;
        if !ids.trim().is_empty() {
            left.push(format!("containerd {what} {:?}", ids.trim()));
        }
    }
    Ok(left)
}

fn markdown(raw: &Value) -> String {
    let r = &raw["results"];
    let g = |who: &str, step: &str, p: &str| r[who][step][p].as_f64().unwrap_or(f64::NAN);
    let mut md = String::from("# Pod benchmark: runvm vs runc through the CRI\n\n");
    md.push_str(&format!(
        "Measured {} inside the nested test host (QEMU TCG: an emulated CPU, so compare the \
         ratios, not the absolute numbers): {} ({} CPUs seen there), containerd {} with its \
         CRI plugin, {}, runvm at commit {}. One pod of one busybox container (a shell that \
         sleeps and exits on TERM) through containerd's CRI, under the runtime handler \
         `runvm` (`io.containerd.runvm.v2`: the pod is one VM) and `runc` \
         (`io.containerd.runc.v2`), with one containerd, {} counted pods each (after one \
         warm-up pod each), alternating runvm and runc. Each CRI call is one run of \
         `runvm-crictl`; StartContainer includes the ContainerStatus that sees \
         CONTAINER_RUNNING. Pod start = RunPodSandbox + CreateContainer + StartContainer; \
         pod teardown = StopContainer + RemoveContainer + StopPodSandbox + \
         RemovePodSandbox. After every pod nothing of it was left (shim, VM and member \
         monitors, virtiofsd, network namespace, containerd containers and tasks).\n\n",
        raw["date"].as_str().unwrap_or("?"),
        raw["cpu"].as_str().unwrap_or("?"),
        raw["nproc"].as_str().unwrap_or("?"),
        raw["containerd"].as_str().unwrap_or("?"),
        raw["runc"].as_str().unwrap_or("runc"),
        raw["commit"]
            .as_str()
            .filter(|c| !c.is_empty())
            .unwrap_or("?"),
        raw["runs"],
    ));
    md.push_str(
        "| step | runvm p50 | runvm p95 | runc p50 | runc p95 | runvm / runc (p50) | runvm / runc (p95) |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for step in STEPS {
        let label = match step {
            "start" => "**pod start**".to_string(),
            "teardown" => "**pod teardown**".to_string(),
            "total" => "**start + teardown**".to_string(),
            s => s.to_string(),
        };
        let (a50, a95) = (g("runvm", step, "p50"), g("runvm", step, "p95"));
        let (b50, b95) = (g("runc", step, "p50"), g("runc", step, "p95"));
        md.push_str(&format!(
            "| {label} | {a50:.0} ms | {a95:.0} ms | {b50:.0} ms | {b95:.0} ms | {:.2} | {:.2} |\n",
            a50 / b50,
            a95 / b95
        ));
    }
    md.push_str(&format!(
        "\nNot timed above: the check that nothing of the pod is left passed at most {:.0} ms \
         (runvm) and {:.0} ms (runc) after RemovePodSandbox returned, the check's own \
         `ctr` calls included.\n",
        g("runvm", "settle", "max"),
        g("runc", "settle", "max"),
    ));
    if let Some(s) = raw["total_s"].as_f64() {
        md.push_str(&format!(
            "\nWall time: {:.0} s measuring inside the test host, {s:.0} s for the whole \
             command (with the builds and the test host's boot).\n",
            raw["measured_s"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_has_a_row_per_step_with_ratios() {
        let mut results = serde_json::Map::new();
        for (who, ms) in [("runvm", 300.0), ("runc", 100.0)] {
            let mut per = serde_json::Map::new();
            for step in STEPS {
                per.insert(step.into(), json!({ "p50": ms, "p95": 2.0 * ms }));
            }
            per.insert("settle".into(), json!({ "p50": 5.0, "max": 7.0 }));
            results.insert(who.into(), Value::Object(per));
        }
        let raw = json!({ "runs": 3, "date": "2026-12-07 10:00 UTC", "commit": "abc1234",
                          "results": results });
        let md = markdown(&raw);
        assert!(md.starts_with("# Pod benchmark"));
        assert!(md.contains("| **pod start** | 300 ms | 600 ms | 100 ms | 200 ms | 3.00 | 3.00 |"));
        assert!(md.contains("| RemovePodSandbox |"));
        assert!(md.contains("runvm at commit abc1234"));
        assert_eq!(
            md.lines().filter(|l| l.starts_with("| ")).count(),
            STEPS.len() + 1
        );
    }
}

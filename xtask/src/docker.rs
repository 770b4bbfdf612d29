//! `cargo xtask bench docker [--runs N]`: end-to-end latency of `docker run --rm busybox
//! true`, of `docker stop -t 1` of a container whose PID 1 ignores TERM and of `docker
//! kill`, under runvm next to runc (and crun where Docker can run it), measured in one
//! run in the same place: the host when guests boot on its KVM, else the nested test host
//! (whose CPU is emulated: only the ratios mean something there).
//!
//! The daemon is the acceptance suites' own (`runvm_tests::docker::World`: a private
//! dockerd with runvm registered and a busybox image made from busybox-static), so the
//! benchmark measures exactly what the tests drive. Runs are interleaved (runc, runvm,
//! crun, runc, …) after one warm-up run of each; `run` on two networks (`--network none`
//! and the default bridge), stop and kill with `--network none`. The outer process writes `bench/docker.md` and `bench/docker.json`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use runvm_tests::docker::{find_in_path, Cli, Engine, Out, World};
use serde_json::{json, Value};

use crate::guests::{GuestSetup, Place};
use crate::util::{repo_root, target_dir};

#[derive(clap::Args)]
pub struct DockerArgs {
    /// Counted runs per runtime and network (one more warm-up run of each is not counted).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Internal: measure here and write the raw numbers to `--out`.
    #[arg(long, hide = true)]
    inside: bool,
    #[arg(long, hide = true)]
    out: Option<PathBuf>,
}

/// The networks measured: (label, `--network` value or none for the default bridge).
const NETWORKS: &[(&str, Option<&str>)] =
    &[("--network none", Some("none")), ("default bridge", None)];

pub fn cmd_bench_docker(a: DockerArgs) -> Result<i32> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if a.inside {
        let out = a.out.context("--inside needs --out")?;
        let raw = measure(a.runs)?;
        std::fs::write(&out, serde_json::to_string_pretty(&raw)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        return Ok(0);
    }
    let setup = GuestSetup::prepare()?;
    let place = setup.choose_place()?;
    let dir = target_dir().join("runvm").join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let raw_path = dir.join("docker-raw.json");
    let _ = std::fs::remove_file(&raw_path);
    let raw = match place {
        Place::Direct => {
            for (k, v) in setup.env() {
                std::env::set_var(k, v);
            }
            measure(a.runs)?
        }
        Place::TestHost => {
            let exe = std::env::current_exe().context("locating the xtask binary")?;
            let argv = vec![
                exe.display().to_string(),
                "bench".into(),
                "docker".into(),
                "--inside".into(),
                "--runs".into(),
                a.runs.to_string(),
                "--out".into(),
                raw_path.display().to_string(),
            ];
            let code = setup.run_at(place, &argv, &[("CI".into(), "1".into())])?;
            if code != 0 {
                bail!("the docker benchmark failed inside the test host (exit {code})");
            }
            let text = std::fs::read_to_string(&raw_path)
                .with_context(|| format!("reading {}", raw_path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", raw_path.display()))?
        }
    };
    crate::util::write_results(
        &repo_root().join("bench"),
        "docker",
        &markdown(&raw, place),
        &raw,
    )?;
    Ok(0)
}

/// Inside (where guests boot): start the daemon, run everything, tear it down.
fn measure(runs: usize) -> Result<Value> {
    let mut world = World::setup(Engine::Docker).map_err(|e| anyhow::anyhow!(e))?;
    let result = measure_with(&world, runs);
    let left = world.teardown();
    if !left.is_empty() {
        eprintln!("[bench] left behind by the benchmark: {left:#?}");
    }
    result
}

/// What one sample times, for one runtime.
#[derive(Clone, Copy)]
enum Case {
    /// `docker run --rm busybox true` on a network.
    Run(Option<&'static str>),
    /// `docker stop -t 1` of a container whose PID 1 ignores TERM (Docker sends TERM,
    /// waits a second, then KILL, and returns once the container has exited).
    Stop,
    /// `docker kill` of a running container (returns once it has exited).
    Kill,
}

impl Case {
    /// (operation, network) as the table shows them.
    fn labels(self) -> (&'static str, &'static str) {
        let net = |n: Option<&str>| {
            NETWORKS
                .iter()
                .find(|(_, v)| *v == n)
                .map_or("?", |(l, _)| *l)
        };
        match self {
            Self::Run(n) => ("docker run --rm busybox true", net(n)),
            Self::Stop => ("docker stop -t 1 (PID 1 ignores TERM)", net(Some("none"))),
            Self::Kill => ("docker kill", net(Some("none"))),
        }
    }

    /// Times the case under `--runtime=rt`: milliseconds, or the error's last line.
    fn sample(self, cli: &Cli, rt: &str) -> Result<f64, String> {
        let runtime = format!("--runtime={rt}");
        let checked = |out: Out| {
            if out.code == 0 {
                Ok(out)
            } else {
                Err(out
                    .stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
                    .to_string())
            }
        };
        let long = Duration::from_secs(300);
        match self {
            Self::Run(net) => {
                let network = net.map(|n| format!("--network={n}"));
                let mut args = vec!["run", "--rm", runtime.as_str()];
                args.extend(network.as_deref());
                args.extend(["busybox", "true"]);
                checked(cli.cmd_timeout(&args, long)).map(|o| o.elapsed.as_secs_f64() * 1e3)
            }
            Self::Stop | Self::Kill => {
                // PID 1 of a PID namespace ignores TERM unless it handles it: sleep does not.
                let started = checked(cli.cmd_timeout(
                    &[
                        "run",
                        "-d",
                        &runtime,
                        "--network=none",
                        "busybox",
                        "sleep",
                        "1000",
                    ],
                    long,
                ))?;
                let id = started.text().to_string();
                let verb: &[&str] = match self {
                    Self::Stop => &["stop", "-t", "1"],
                    _ => &["kill"],
                };
                let mut args = verb.to_vec();
                args.push(&id);
                let timed = checked(cli.cmd_timeout(&args, long));
                let removed = checked(cli.cmd_timeout(&["rm", "-f", &id], long));
                let ms = timed?.elapsed.as_secs_f64() * 1e3;
                removed.map(|_| ms)
            }
        }
    }
}

fn measure_with(world: &World, runs: usize) -> Result<Value> {
    let cli = world.cli();
    let mut runtimes = vec!["runc", "runvm"];
    if find_in_path("crun").is_some() {
        runtimes.push("crun");
    }
    let version = cli.cmd(&["version", "--format", "{{.Server.Version}}"]);
    let mut cases: Vec<Case> = NETWORKS.iter().map(|(_, n)| Case::Run(*n)).collect();
    cases.extend([Case::Stop, Case::Kill]);
    let mut samples: Vec<Vec<Vec<f64>>> = vec![vec![vec![]; runtimes.len()]; cases.len()];
    let mut errors: Vec<Vec<Option<String>>> = vec![vec![None; runtimes.len()]; cases.len()];
    for round in 0..=runs {
        for (c, case) in cases.iter().enumerate() {
            for (r, rt) in runtimes.iter().enumerate() {
                if errors[c][r].is_some() {
                    continue;
                }
                match case.sample(cli, rt) {
                    Ok(ms) if round > 0 => samples[c][r].push(ms),
                    Ok(_) => {}
                    Err(why) => {
                        let (op, net) = case.labels();
                        eprintln!("[bench] {rt} ({op}, {net}) failed: {why}");
                        errors[c][r] = Some(why);
                    }
                }
            }
        }
        eprintln!("[bench] round {round} of {runs} done");
    }
    let mut rows = Vec::new();
    for (c, case) in cases.iter().enumerate() {
        let (op, net) = case.labels();
        for (r, rt) in runtimes.iter().enumerate() {
            rows.push(json!({
                "operation": op,
                "network": net,
                "runtime": rt,
                "ms": samples[c][r],
                "error": errors[c][r],
            }));
        }
    }
    Ok(json!({
        "runs": runs,
        "docker": version.text(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpu": cpu_model(),
        "date": date_utc(),
        "rows": rows,
    }))
}

fn date_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// The table: p50/p95/min per runtime and network, and each p50 over runc's.
fn markdown(raw: &Value, place: Place) -> String {
    let mut md = String::from("# Docker's run, stop and kill: runvm vs runc\n\n");
    md.push_str(&format!(
        "Measured {} {}, Docker {}, {} counted runs each (after one warm-up), interleaved; CPU: {}.\n",
        raw["date"].as_str().unwrap_or("?"),
        match place {
            Place::Direct => "on this host (guests boot on its KVM)".to_string(),
            Place::TestHost => format!(
                "inside the nested KVM test host (kernel {}; TCG-emulated CPU: compare ratios, not times)",
                raw["kernel"].as_str().unwrap_or("?")
            ),
        },
        raw["docker"].as_str().unwrap_or("?"),
        raw["runs"],
        raw["cpu"].as_str().unwrap_or("?"),
    ));
    md.push_str("Produced by `cargo xtask bench docker`.\n\n");
    md.push_str(
        "| operation | network | runtime | p50 | p95 | min | p50 / runc |\n|---|---|---|---:|---:|---:|---:|\n",
    );
    let rows = raw["rows"].as_array().cloned().unwrap_or_default();
    for row in &rows {
        // Results from before the stop and kill rows have no operation.
        let op = row["operation"]
            .as_str()
            .unwrap_or("docker run --rm busybox true");
        let net = row["network"].as_str().unwrap_or("?");
        let rt = row["runtime"].as_str().unwrap_or("?");
        if let Some(err) = row["error"].as_str() {
            md.push_str(&format!(
                "| {op} | {net} | {rt} | fails: {} | | | |\n",
                err.replace('|', "\\|")
            ));
            continue;
        }
        let mut v: Vec<f64> = row["ms"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.total_cmp(b));
        let runc_p50 = rows
            .iter()
            .find(|r| {
                r["operation"] == row["operation"]
                    && r["network"] == row["network"]
                    && r["runtime"] == "runc"
            })
            .and_then(|r| r["ms"].as_array())
            .map(|a| {
                let mut s: Vec<f64> = a.iter().filter_map(Value::as_f64).collect();
                s.sort_by(|a, b| a.total_cmp(b));
                percentile(&s, 0.5)
            })
            .unwrap_or(f64::NAN);
        let p50 = percentile(&v, 0.5);
        md.push_str(&format!(
            "| {op} | {net} | {rt} | {:.0} ms | {:.0} ms | {:.0} ms | {} |\n",
            p50,
            percentile(&v, 0.95),
            v.first().copied().unwrap_or(f64::NAN),
            if runc_p50.is_nan() {
                "–".to_string()
            } else {
                format!("{:.2}", p50 / runc_p50)
            }
        ));
    }
    md.push_str(
        "\nTargets: `docker run` under 2× runc end to end (issue 5); `docker stop` and \
         `docker kill` as close to runc as the VM allows (issue 15): both return once the \
         container has exited, so they measure the whole stop path.\n",
    );
    if place == Place::TestHost {
        md.push_str(
            "\nUnder TCG every process start is emulated too: runc's several Go processes per \
             container (create, init, start, delete) cost more here than on real hardware, \
             and other jobs on the machine add noise (see p95). Treat these ratios as a \
             smoke check, not as the real-hardware figure.\n",
        );
    }
    md
}

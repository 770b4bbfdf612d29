//! `cargo xtask fuzz [--minutes N] [--cases N]`: runs the property-based fuzzing of the
//! guest-facing parsers (the `fuzz_` tests of `vmm` and `runvm-protocol`) again and again,
//! each round with `RUNVM_FUZZ_CASES` cases per property and a new `RUNVM_FUZZ_SEED`,
//! until the time is over. Prints a table per round and one at the end (target, cases
//! run, failures); a failing round's whole output is kept under `target/fuzz/`, and the
//! command exits non-zero.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::util::target_dir;

/// The packages whose unit tests hold the fuzz properties.
const PACKAGES: [&str; 2] = ["vmm", "runvm-protocol"];
/// The test-name filter that picks them.
const FILTER: &str = "fuzz_";

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// How long to fuzz, in minutes (rounds start until this is over).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Cases per property per round.
    #[arg(long, default_value_t = 100_000)]
    cases: u32,
}

/// What one property did over the rounds.
#[derive(Default, Clone, Copy)]
struct Tally {
    cases: u64,
    failures: u64,
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Builds the unit-test executables of [`PACKAGES`] in release mode; returns their crate
/// names and paths.
fn build() -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "--lib",
        "--no-run",
        "--message-format=json",
    ]);
    for p in PACKAGES {
        cmd.args(["-p", p]);
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the fuzz tests")?;
    if !out.status.success() {
        bail!("building the fuzz tests failed (see above)");
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["profile"]["test"] == true {
            if let (Some(name), Some(exe)) =
                (v["target"]["name"].as_str(), v["executable"].as_str())
            {
                let name = name.strip_prefix("runvm_").unwrap_or(name);
                exes.push((name.to_string(), PathBuf::from(exe)));
            }
        }
    }
    if exes.len() != PACKAGES.len() {
        bail!(
            "expected {} test executables, cargo built {exes:?}",
            PACKAGES.len()
        );
    }
    Ok(exes)
}

/// A seed for round `round` that no earlier invocation is likely to have used.
fn seed(round: u32) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // SplitMix64 of the clock and the round.
    let mut z = nanos ^ u64::from(round).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The results in libtest's output: test name → passed, and for a failed property the
/// cases it passed before failing (proptest's `successes: N`).
fn parse_results(output: &str) -> BTreeMap<String, (bool, Option<u64>)> {
    let mut results = BTreeMap::new();
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("test ") else {
            continue;
        };
        if let Some(name) = rest.strip_suffix(" ... ok") {
            results.insert(name.to_string(), (true, None));
        } else if let Some(name) = rest.strip_suffix(" ... FAILED") {
            results.insert(name.to_string(), (false, None));
        }
    }
    // Failure sections: `---- NAME stdout ----`, then the panic message with `successes: N`.
    let mut current: Option<String> = None;
    for line in output.lines() {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            current = Some(name.to_string());
        } else if let (Some(name), Some(n)) = (&current, line.trim().strip_prefix("successes: ")) {
            if let (Some(entry), Ok(n)) = (results.get_mut(name), n.parse::<u64>()) {
                entry.1 = Some(n);
            }
        }
    }
    results
}

/// Prints the table of `tally` (Markdown, so that it can go into the README as it is).
fn print_table(tally: &BTreeMap<String, Tally>) {
    println!("| target | cases run | failures |");
    println!("| --- | ---: | ---: |");
    for (name, t) in tally {
        println!("| `{name}` | {} | {} |", t.cases, t.failures);
    }
}

/// Runs one test executable's fuzz properties with `cases` cases from `seed`; returns
/// the properties' outcomes and the whole output.
fn run_round(
    krate: &str,
    exe: &Path,
    cases: u32,
    seed: u64,
) -> Result<(BTreeMap<String, Tally>, bool, String)> {
    let out = Command::new(exe)
        .args([FILTER, "--color", "never"])
        .env("RUNVM_FUZZ_CASES", cases.to_string())
        .env("RUNVM_FUZZ_SEED", seed.to_string())
        .env("RUST_BACKTRACE", "0")
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let results = parse_results(&output);
    let mut tally = BTreeMap::new();
    // Plain tests that share a `fuzz_tests` module (regression tests) run too, but only
    // the properties are counted.
    let properties = results.iter().filter(|(name, _)| {
        name.rsplit("::")
            .next()
            .is_some_and(|n| n.starts_with(FILTER))
    });
    for (name, (passed, successes)) in properties {
        let t = if *passed {
            Tally {
                cases: u64::from(cases),
                failures: 0,
            }
        } else {
            // The cases that passed, and the one that failed (unknown: count the one).
            Tally {
                cases: successes.unwrap_or(0) + 1,
                failures: 1,
            }
        };
        // `vmm::queue::fuzz_…`: the crate and the module of the parser.
        let short = name
            .trim_start_matches("devices::virtio::")
            .replace("fuzz_tests::", "");
        tally.insert(format!("{krate}::{short}"), t);
    }
    let ok = out.status.success() && !results.is_empty();
    Ok((tally, ok, output))
}

pub fn cmd_fuzz(args: FuzzArgs) -> Result<i32> {
    if args.minutes.is_nan() || args.minutes <= 0.0 || args.cases == 0 {
        bail!("--minutes and --cases must be positive");
    }
    let budget = Duration::from_secs_f64(args.minutes * 60.0);
    let exes = build()?;
    let log_dir = target_dir().join("fuzz");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let start = Instant::now();
    let mut total: BTreeMap<String, Tally> = BTreeMap::new();
    let mut failed_rounds = Vec::new();
    let mut round = 0u32;
    while start.elapsed() < budget {
        round += 1;
        let seed = seed(round);
        let round_start = Instant::now();
        let mut round_tally = BTreeMap::new();
        let mut round_ok = true;
        for (krate, exe) in &exes {
            let (tally, ok, output) = run_round(krate, exe, args.cases, seed)?;
            if !ok {
                round_ok = false;
                let log = log_dir.join(format!("round-{round}-{krate}.log"));
                std::fs::write(&log, format!("RUNVM_FUZZ_SEED={seed}\n{output}"))
                    .with_context(|| format!("writing {}", log.display()))?;
                println!("{output}");
                println!(
                    "round {round} failed (RUNVM_FUZZ_SEED={seed} RUNVM_FUZZ_CASES={}); output kept in {}",
                    args.cases,
                    log.display()
                );
                failed_rounds.push(log);
            }
            round_tally.extend(tally);
        }
        println!(
            "\nround {round}: seed {seed}, {:.1} s, {}",
            round_start.elapsed().as_secs_f64(),
            if round_ok { "passed" } else { "FAILED" }
        );
        print_table(&round_tally);
        for (name, t) in round_tally {
            let e = total.entry(name).or_default();
            e.cases += t.cases;
            e.failures += t.failures;
        }
    }
    println!(
        "\nfuzzing: {round} rounds in {:.1} min, {} cases per property per round",
        start.elapsed().as_secs_f64() / 60.0,
        args.cases
    );
    print_table(&total);
    if failed_rounds.is_empty() {
        Ok(0)
    } else {
        println!("\n{} failing rounds; their output:", failed_rounds.len());
        for log in &failed_rounds {
            println!("  {}", log.display());
        }
        Ok(1)
    }
}

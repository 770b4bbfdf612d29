//! `cargo xtask demo`: builds everything and runs `echo hello from a microVM` in a
//! microVM through `runvm run`, booted cold, then warm-started from a template (made by
//! the first warm start), and prints the boot timings of each.

use anyhow::{bail, Result};

use crate::guests::{GuestSetup, Place};
use crate::rootfs::write_bundle;
use crate::util::target_dir;

pub fn cmd_demo() -> Result<i32> {
    let setup = GuestSetup::prepare()?;
    let place = setup.choose_place()?;
    let dir = target_dir().join("runvm").join("demo");
    let _ = std::fs::remove_dir_all(&dir);
    write_bundle(
        &dir.join("bundle"),
        &setup.rootfs,
        &["echo", "hello from a microVM"],
    )?;
    // Three runs in one place: a cold boot, the first warm start (which makes the
    // template), and a warm start restored from it.
    let runvm = setup.runvm.display().to_string();
    let bundle = dir.join("bundle").display().to_string();
    let templates = dir.join("templates").display().to_string();
    let runs = [("cold", "cold"), ("warm-first", "warm"), ("warm", "warm")];
    let script: Vec<String> = runs
        .iter()
        .map(|(name, boot)| {
            let timings = dir.join(format!("{name}.json"));
            format!(
                "RUNVM_BOOT={boot} RUNVM_TEMPLATE_DIR={templates} RUNVM_TIMINGS_FILE={} \
                 {runvm} --root /run/runvm-demo run --bundle {bundle} demo-{name} || exit $?",
                timings.display()
            )
        })
        .collect();
    let argv: Vec<String> = vec!["sh".into(), "-c".into(), script.join("; ")];
    eprintln!(
        "[demo] {runvm} run (1 vCPU, 256 MiB) of `echo hello from a microVM` {}: booted \
         cold, then warm-started twice (the first makes the template)",
        if place == Place::Direct {
            "on this host's KVM"
        } else {
            "inside the nested KVM test host"
        }
    );
    let code = setup.run_at(place, &argv, &[])?;
    if code != 0 {
        bail!("the demo container exited with {code}");
    }
    let timings = runs
        .iter()
        .map(|(name, _)| {
            let text = std::fs::read_to_string(dir.join(format!("{name}.json")))?;
            Ok(serde_json::from_str::<serde_json::Value>(&text)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let cell = |t: &serde_json::Value, k: &str| {
        t[k].as_f64()
            .map(|v| format!("{v:9.1} ms"))
            .unwrap_or_else(|| "        —   ".into())
    };
    eprintln!("[demo] boot timings (from VMM start; the warm starts from a template):");
    eprintln!("                                      cold     warm (first)         warm");
    for (label, key) in [
        ("kernel entry (first vCPU run)", "kernel_entry_ms"),
        ("guest init started           ", "init_started_ms"),
        ("workload started             ", "workload_started_ms"),
        ("workload exited              ", "workload_exited_ms"),
        ("VM exited                    ", "vm_exit_ms"),
        ("launch -> VMM start          ", "launch_to_vmm_start_ms"),
    ] {
        let row: Vec<String> = timings.iter().map(|t| cell(t, key)).collect();
        eprintln!("  {label} {}", row.join(" "));
    }
    for (t, (name, boot)) in timings.iter().zip(runs) {
        if t["boot"] != boot {
            bail!("the {name} run was not a {boot} boot: {t}");
        }
    }
    if place == Place::TestHost {
        eprintln!("  (inside the test host the CPU is emulated by TCG: compare ratios, not absolute times; see `cargo xtask bench boot`)");
    }
    Ok(0)
}

//! `cargo xtask demo`: builds everything and runs `echo hello from a microVM` in a
//! microVM through `runvm run`, then prints the boot timings.

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
    let timings = dir.join("timings.json");
    let argv: Vec<String> = vec![
        setup.runvm.display().to_string(),
        "--root".into(),
        "/run/runvm-demo".into(),
        "run".into(),
        "--bundle".into(),
        dir.join("bundle").display().to_string(),
        "demo".into(),
    ];
    eprintln!(
        "[demo] {} run (1 vCPU, 256 MiB) of `echo hello from a microVM` {}",
        setup.runvm.display(),
        if place == Place::Direct {
            "on this host's KVM"
        } else {
            "inside the nested KVM test host"
        }
    );
    let code = setup.run_at(
        place,
        &argv,
        &[("RUNVM_TIMINGS_FILE".into(), timings.display().to_string())],
    )?;
    if code != 0 {
        bail!("the demo container exited with {code}");
    }
    let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&timings)?)?;
    let f = |k: &str| {
        t[k].as_f64()
            .map(|v| format!("{v:8.1} ms"))
            .unwrap_or_else(|| "       —".into())
    };
    eprintln!("[demo] boot timings (from VMM start):");
    eprintln!("  kernel entry (first vCPU run) {}", f("kernel_entry_ms"));
    eprintln!("  guest init started            {}", f("init_started_ms"));
    eprintln!(
        "  workload started              {}",
        f("workload_started_ms")
    );
    eprintln!(
        "  workload exited               {}",
        f("workload_exited_ms")
    );
    eprintln!("  VM exited                     {}", f("vm_exit_ms"));
    if place == Place::TestHost {
        eprintln!("  (inside the test host the CPU is emulated by TCG: compare ratios, not absolute times; see `cargo xtask bench boot`)");
    }
    Ok(0)
}

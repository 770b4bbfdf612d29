//! `cargo xtask`: developer commands for runvm: the guest kernel and initramfs builds,
//! the nested KVM test host, the demo, the test suite and the benchmarks.
//! Run `cargo xtask --help`.

mod bench;
mod bench_cycle;
mod bench_fs;
mod bench_net;
mod bench_pod;
mod cri;
mod demo;
mod docker;
mod fuzz;
mod guests;
mod initramfs;
mod kernel;
mod oci;
mod oci_expected;
mod rootfs;
mod runc_bats;
mod runc_bats_expected;
mod soak;
mod test;
mod testhost;
mod util;
mod virtiofsd;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "runvm developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build everything and run `echo hello from a microVM` in a microVM (the README's first command).
    Demo,
    /// Run every test: lints, unit tests, and the guest tests (directly or in the test host).
    Test,
    /// Run guest suites (tests/tests/NAME.rs) where guests boot, in one test-host boot:
    /// `cargo xtask guest-test [SUITE…] [-- TEST-ARGS…]` (no SUITE: all of them).
    GuestTest {
        /// Suite names; all guest suites when none is given.
        suites: Vec<String>,
        /// Arguments for every suite binary (a test-name filter, `--nocapture`).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Build the static guest init and the initramfs (target/runvm/initramfs.cpio).
    Initramfs,
    /// Build the guest kernel (cached) and print the path of its vmlinux.
    Kernel,
    /// Build virtiofsd (cached) and print the path of its binary
    /// (`RUNVM_VIRTIOFSD=$(cargo xtask virtiofsd) cargo test -p vmm --test virtio_fs`).
    Virtiofsd,
    /// Boot the guest kernel with qemu microvm inside the test host (smoke test).
    KernelSmoke,
    /// Benchmarks: `cargo xtask bench boot [--runs N]` (runvm vs qemu microvm boot times and VMM memory),
    /// `cargo xtask bench docker [--runs N]` (docker run latency, runvm vs runc).
    Bench {
        #[command(subcommand)]
        what: bench::BenchCmd,
    },
    /// Build the OCI runtime-tools validation suite (cached) and run it against runtimes:
    /// `cargo xtask oci [--runtime NAME_OR_PATH]… [--only PROG…] [--check] [--save] [--record]` (results under target/oci-validation/; `--save` writes bench/oci-validation.md).
    Oci(oci::OciArgs),
    /// Run runc's own integration suite (the bats files of runc 1.1.5, from Debian's source
    /// package; built and cached) against runc and runvm in the same place:
    /// `cargo xtask runc-bats [--only FILE…] [--check] [--save] [--record]` (results under
    /// target/runc-bats/; `--save` writes bench/runc-bats.md).
    RuncBats(runc_bats::RuncBatsArgs),
    /// Fuzz the guest-facing parsers (the `fuzz_` properties of vmm and protocol) with new
    /// seeds until the time is over: `cargo xtask fuzz [--minutes N] [--cases N]`.
    Fuzz(fuzz::FuzzArgs),
    /// Leak soak (not in CI): N create/start/kill -9 of the monitor/delete cycles, then
    /// everything runvm left is reported: `cargo xtask soak [--cycles N] [--keep-going]
    /// [--check-every K]` (report in target/runvm/soak.json; exits 1 on a failure or leftover).
    Soak(soak::SoakArgs),
    /// Build `runvm-crictl` (crate cri-client; the CRI api.proto is fetched from Debian and
    /// cached) and print its path.
    CriCrictl,
    /// Run one pod of two containers through containerd's CRI plugin with runc's shim,
    /// every call by `runvm-crictl`, inside the nested test host; a pass/fail line per step.
    CriSmoke(cri::CriSmokeArgs),
    /// Run a command as root inside the nested KVM test host: `cargo xtask testhost -- CMD…`.
    Testhost {
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result: Result<i32> = match cli.cmd {
        Cmd::Demo => demo::cmd_demo(),
        Cmd::Test => test::cmd_test(),
        Cmd::GuestTest { suites, test_args } => test::cmd_guest_test(&suites, &test_args),
        Cmd::Initramfs => initramfs::initramfs().map(|_| 0),
        Cmd::Kernel => kernel::cmd_kernel().map(|()| 0),
        Cmd::Virtiofsd => virtiofsd::virtiofsd().map(|p| {
            println!("{}", p.display());
            0
        }),
        Cmd::KernelSmoke => testhost::cmd_kernel_smoke(),
        Cmd::Bench { what } => bench::cmd_bench(what),
        Cmd::Oci(args) => oci::cmd_oci(args),
        Cmd::RuncBats(args) => runc_bats::cmd_runc_bats(args),
        Cmd::Fuzz(args) => fuzz::cmd_fuzz(args),
        Cmd::Soak(args) => soak::cmd_soak(args),
        Cmd::CriCrictl => cri::cmd_cri_crictl(),
        Cmd::CriSmoke(args) => cri::cmd_cri_smoke(args),
        Cmd::Testhost { cmd } => testhost::run_in_testhost(&cmd, &[]),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

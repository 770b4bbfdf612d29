//! `cargo xtask`: developer commands for runvm (guest kernel build, nested
//! KVM test host, …). Run `cargo xtask --help`.

mod kernel;
mod testhost;
mod util;

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
    /// Build the guest kernel (cached) and print the path of its vmlinux.
    Kernel,
    /// Boot the guest kernel with qemu microvm inside the test host (smoke test).
    KernelSmoke,
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
        Cmd::Kernel => kernel::cmd_kernel().map(|()| 0),
        Cmd::KernelSmoke => testhost::cmd_kernel_smoke(),
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

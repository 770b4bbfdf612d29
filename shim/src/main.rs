//! `runvm`: a runc-compatible OCI runtime that runs each container in its own KVM
//! microVM. This file is the command-line edge: it parses runc's command line (with
//! liboci-cli), sets up logging, dispatches, and turns errors into runc-style messages
//! and exit codes. The semantics live in `container/`, the VM side in `monitor/`.

mod assets;
mod cgroup;
mod container;
mod hooks;
mod id;
mod logging;
mod monitor;
mod mountinfo;
mod network;
mod rootfs;
mod scm;
mod seccomp;
mod sockpath;
mod spec;
mod state;

use clap::{Parser, Subcommand};
use liboci_cli::{CommonCmd, GlobalOpts, StandardCmd};

#[derive(Parser, Debug)]
#[command(
    name = "runvm",
    disable_version_flag = true,
    arg_required_else_help = true,
    about = "A runc-compatible OCI runtime that runs each container in a KVM microVM"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    /// Print the version (as `runc --version` does: version, commit, spec, libseccomp)
    #[arg(short = 'v', long = "version")]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What `runvm --version` prints: runc's lines, with runvm's own values (the language
/// line names Rust where runc names Go).
fn version_text() -> String {
    let seccomp = libseccomp::ScmpVersion::current()
        .map(|v| v.to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    format!(
        "runvm version {}\ncommit: {}\nspec: {}\nrust: {}\nlibseccomp: {seccomp}\n",
        env!("CARGO_PKG_VERSION"),
        env!("RUNVM_COMMIT"),
        hooks::OCI_VERSION,
        env!("RUNVM_RUSTC"),
    )
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Standard(Box<StandardCmd>),
    #[command(flatten)]
    Common(Box<CommonCmd>),
}

fn not_yet(verb: &str) -> anyhow::Result<i32> {
    anyhow::bail!("`runvm {verb}` is not implemented yet")
}

fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let root = cli.global.root;
    let Some(command) = cli.command else {
        // `runvm -v` (clap asks for a command otherwise).
        print!("{}", version_text());
        return Ok(0);
    };
    cgroup::SYSTEMD_CGROUP.store(
        cli.global.systemd_cgroup,
        std::sync::atomic::Ordering::Relaxed,
    );
    match command {
        Command::Standard(s) => match *s {
            StandardCmd::Create(c) => container::create::create(container::create::CreateOptions {
                id: c.container_id,
                bundle: c.bundle,
                root,
                pid_file: c.pid_file,
                console_socket: c.console_socket,
            }),
            StandardCmd::Start(s) => container::start::start(&root, &s.container_id),
            StandardCmd::State(s) => container::state::state(&root, &s.container_id),
            // --all needs nothing more: every process of the container lives in its PID
            // namespace in the VM, which goes with its PID 1.
            StandardCmd::Kill(k) => container::kill::kill(&root, &k.container_id, &k.signal),
            StandardCmd::Delete(d) => container::delete::delete(&root, &d.container_id, d.force),
        },
        Command::Common(c) => match *c {
            CommonCmd::Run(r) => {
                let opts = container::run::RunOptions {
                    id: r.container_id,
                    bundle: r.bundle,
                    root,
                    pid_file: r.pid_file,
                    console_socket: r.console_socket,
                };
                if r.detach {
                    container::run::run_detached(opts)
                } else {
                    container::run::run(opts)
                }
            }
            CommonCmd::Exec(e) => container::exec::exec(container::exec::ExecOptions {
                id: e.container_id,
                root,
                process: e.process,
                args: e.command,
                detach: e.detach,
                pid_file: e.pid_file,
                console_socket: e.console_socket,
                tty: e.tty,
                env: e.env,
                cwd: e.cwd,
                user: e.user,
                additional_gids: e.additional_gids,
                caps: e.cap,
                no_new_privs: e.no_new_privs,
            }),
            CommonCmd::Features(_) => container::features::features(),
            CommonCmd::List(l) => container::list::list(&root, &l.format, l.quiet),
            CommonCmd::Pause(p) => container::pause::pause(&root, &p.container_id),
            CommonCmd::Resume(r) => container::resume::resume(&root, &r.container_id),
            CommonCmd::Ps(p) => container::ps::ps(&root, &p.container_id, &p.format, &p.ps_options),
            CommonCmd::Events(e) => {
                container::events::events(&root, &e.container_id, e.stats, e.interval)
            }
            CommonCmd::Update(u) => {
                let unsupported = [
                    ("--blkio-weight", u.blkio_weight.is_some()),
                    ("--cpu-rt-period", u.cpu_rt_period.is_some()),
                    ("--cpu-rt-runtime", u.cpu_rt_runtime.is_some()),
                    ("--cpuset-cpus", u.cpuset_cpus.is_some()),
                    ("--cpuset-mems", u.cpuset_mems.is_some()),
                    ("--memory-reservation", u.memory_reservation.is_some()),
                    ("--memory-swap", u.memory_swap.is_some()),
                    ("--l3-cache-schema", u.l3_cache_schema.is_some()),
                    ("--mem-bw-schema", u.mem_bw_schema.is_some()),
                ]
                .into_iter()
                .filter_map(|(name, given)| given.then_some(name))
                .collect();
                container::update::update(container::update::UpdateOptions {
                    id: u.container_id,
                    root,
                    resources: u.resources,
                    memory: u.memory,
                    cpu_quota: u.cpu_quota,
                    cpu_period: u.cpu_period,
                    cpu_shares: u.cpu_share,
                    pids_limit: u.pids_limit,
                    unsupported,
                })
            }
            CommonCmd::Spec(s) => container::spec::spec(&s),
            other => not_yet(
                &format!("{other:?}")
                    .split([' ', '('])
                    .next()
                    .unwrap_or("")
                    .to_lowercase(),
            ),
        },
    }
}

/// The error and its causes on one line, each said once (our error types print their
/// source in their own message, and anyhow's chain would repeat it).
pub(crate) fn error_message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !msg.contains(&s) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&s);
        }
    }
    msg
}

/// When this process started (the launch in boot timings).
pub static LAUNCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn main() {
    LAUNCH.get_or_init(std::time::Instant::now);
    let cli = Cli::parse();
    if let Err(e) = logging::init(
        cli.global.log.as_deref(),
        cli.global.log_format.as_deref(),
        cli.global.debug,
    ) {
        eprintln!("runvm: {e}");
        std::process::exit(1);
    }
    let to_file = cli.global.log.is_some();
    match dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = error_message(&e);
            if to_file {
                log::error!("{msg}");
            }
            eprintln!("runvm: {msg}");
            // An exec'd process that could not start: runc's code for it.
            let code = e
                .downcast_ref::<container::exec::ExecFailed>()
                .map_or(1, |f| f.code);
            std::process::exit(code);
        }
    }
}
